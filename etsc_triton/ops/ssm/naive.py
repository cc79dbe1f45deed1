"""Torch oracles of the diagonal complex SSM (the contract and its checks: ``contract.py``).

    u_t = lam * u_{t-1} + b * x_t        (elementwise over the N modes of every channel d)
    y_t = Re sum_s u_{t,s}

The update is written on real and imaginary parts in one fixed order of operations, the one the Triton kernels
use (:func:`ssm_update`):

    u_re' = (lam_re * u_re - lam_im * u_im) + b_re * x
    u_im' = (lam_re * u_im + lam_im * u_re) + b_im * x

so :func:`ssm_step` mutates the state exactly as the kernel does (on CPU the interpreter reproduces the state
bit for bit). The oracles compute in the precision of their inputs: complex128 / float64 inputs give a float64
evaluation, complex64 a float32 one.
"""

from __future__ import annotations

import torch

from .contract import check_packed_scan_inputs, check_scan_inputs, check_step_inputs


def _real_dtype(*tensors: torch.Tensor) -> torch.dtype:
    wide = any(t.dtype in (torch.complex128, torch.float64) for t in tensors)
    return torch.float64 if wide else torch.float32


def ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, x):
    """One token: ``lam * u + b * x`` on real/imaginary parts, in the kernels' order of operations."""
    new_re = (lam_re * u_re - lam_im * u_im) + b_re * x
    new_im = (lam_re * u_im + lam_im * u_re) + b_im * x
    return new_re, new_im


def _parts(z: torch.Tensor, real_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    complex_dtype = torch.complex128 if real_dtype == torch.float64 else torch.complex64
    parts = torch.view_as_real(z.to(complex_dtype))
    return parts[..., 0], parts[..., 1]


def _walk(
    xs: torch.Tensor, lam_re, lam_im, b_re, b_im, u_re: torch.Tensor, u_im: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scan ``xs [B, L, D]`` (the working precision) from ``(u_re, u_im) [B, D, N]``; returns ``(y, u_re, u_im)``."""
    y = torch.zeros(xs.shape, dtype=xs.dtype, device=xs.device)
    for t in range(xs.shape[1]):
        u_re, u_im = ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, xs[:, t, :, None])
        y[:, t] = u_re.sum(-1)
    return y, u_re, u_im


def ssm_scan(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    cu_seqlens: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    has_initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scan: a Python loop over the tokens (and the packed sequences). Same contract as
    :func:`etsc_triton.ssm_scan`.

    Returns ``(y in x.dtype, final_state)``; the state is complex128 when any input is float64 / complex128,
    else complex64. The initial state is never modified. Pooled (``state_indices``): the pool is updated in
    place exactly as the kernel does (the sequential kernel's update, so the same bits in the interpreter), in
    the pool's precision; a sequence whose index is ``>= P`` (only reachable on CUDA without
    ``ETSC_TRITON_DEBUG=1``) gets NaN outputs and touches nothing.
    """
    if cu_seqlens is None and state_indices is None and has_initial_state is None:
        batch, _, channels, modes = check_scan_inputs("ssm_scan", x, lam, b, state)
        rdt = _real_dtype(x, lam, b, *([state] if state is not None else []))
        lam_re, lam_im = _parts(lam, rdt)
        b_re, b_im = _parts(b, rdt)
        if state is None:
            u_re = torch.zeros(batch, channels, modes, dtype=rdt, device=x.device)
            u_im = torch.zeros_like(u_re)
        else:
            u_re, u_im = (p.clone() for p in _parts(state, rdt))
        y, u_re, u_im = _walk(x.to(rdt), lam_re, lam_im, b_re, b_im, u_re, u_im)
        return y.to(x.dtype), torch.complex(u_re, u_im)
    n_seqs, tokens, channels, modes, pool = check_packed_scan_inputs(
        "ssm_scan", x, lam, b, state, cu_seqlens, state_indices, has_initial_state)
    bounds = cu_seqlens.tolist()
    if state_indices is None:
        rdt = _real_dtype(x, lam, b, *([state] if state is not None else []))
    else:
        rdt = torch.float64 if state.dtype == torch.complex128 else torch.float32
    lam_re, lam_im = _parts(lam, rdt)
    b_re, b_im = _parts(b, rdt)
    xs = x.to(rdt)
    zero = torch.zeros(1, channels, modes, dtype=rdt, device=x.device)
    if state_indices is None:
        ys, finals = [xs[:, :0]], []
        for i in range(n_seqs):
            if state is None:
                u_re, u_im = zero, zero
            else:
                u_re, u_im = (p[i : i + 1].clone() for p in _parts(state, rdt))
            y_i, u_re, u_im = _walk(xs[:, bounds[i] : bounds[i + 1]], lam_re, lam_im, b_re, b_im, u_re, u_im)
            ys.append(y_i)
            finals.append(torch.complex(u_re, u_im)[0])
        final = torch.stack(finals) if finals else torch.complex(zero, zero)[:0]
        return torch.cat(ys, dim=1).to(x.dtype), final
    rows = state_indices.tolist()
    starts = [True] * n_seqs if has_initial_state is None else has_initial_state.tolist()
    pool_parts = torch.view_as_real(state)
    y = torch.zeros(1, tokens, channels, dtype=rdt, device=x.device)
    for i, row in enumerate(rows):
        first, last = bounds[i], bounds[i + 1]
        if row < 0:  # padding: zero outputs, no row read or written
            continue
        if row >= pool:
            y[:, first:last] = float("nan")
            continue
        u_re = pool_parts[row : row + 1, ..., 0].clone() if starts[i] else zero
        u_im = pool_parts[row : row + 1, ..., 1].clone() if starts[i] else zero
        y[:, first:last], u_re, u_im = _walk(xs[:, first:last], lam_re, lam_im, b_re, b_im, u_re, u_im)
        pool_parts[row] = torch.stack((u_re[0], u_im[0]), dim=-1)
    return y.to(x.dtype), state


def ssm_step(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    *,
    state_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference step: updates ``state`` in place exactly as the kernel does. Same contract as
    :func:`etsc_triton.ssm_step`.

    Rows whose ``state_indices`` entry is negative are padding: their y is 0 and no state row is touched. An
    index ``>= P`` (only reachable on CUDA without ``ETSC_TRITON_DEBUG=1``) gives y = NaN and touches nothing.
    """
    batch, channels, _, pool = check_step_inputs("ssm_step", x, lam, b, state, state_indices)
    rdt = torch.float64 if state.dtype == torch.complex128 else torch.float32
    rows = (
        torch.arange(batch, device=x.device)
        if state_indices is None
        else state_indices.to(device=x.device, dtype=torch.int64)
    )
    valid = (rows >= 0) & (rows < pool)
    lam_re, lam_im = _parts(lam, rdt)
    b_re, b_im = _parts(b, rdt)
    state_parts = torch.view_as_real(state)
    slots = rows[valid]
    u = state_parts[slots]
    new_re, new_im = ssm_update(
        u[..., 0], u[..., 1], lam_re, lam_im, b_re, b_im, x[valid].to(rdt)[..., None]
    )
    state_parts[slots] = torch.stack((new_re, new_im), dim=-1)
    y = torch.zeros(batch, channels, dtype=rdt, device=x.device)
    y[valid] = new_re.sum(-1)
    y[rows >= pool] = float("nan")
    return y.to(x.dtype)
