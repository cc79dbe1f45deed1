"""Torch oracles of the diagonal complex SSM (DESIGN section 1.3), and the input validation both paths share.

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

import os

import torch

from ..utils import check_same_device, check_tensor

X_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
STATE_INDEX_DTYPE = torch.int32


def debug_checks_enabled() -> bool:
    """True when ``ETSC_TRITON_DEBUG=1``: ``state_indices`` on CUDA are then range-checked too (a device sync)."""
    return os.environ.get("ETSC_TRITON_DEBUG", "0") == "1"


def _check_params(fn_name: str, lam: object, b: object, channels: int) -> int:
    """lam and b complex ``[D, N]`` with ``D == channels``; returns N."""
    check_tensor(fn_name, "lam", lam, kind="complex", ndim=2)
    check_tensor(fn_name, "b", b, kind="complex", ndim=2)
    if lam.shape[0] != channels:
        raise ValueError(
            f"{fn_name}: lam must have shape (D, N) with D = {channels} (the channels of x), "
            f"got {tuple(lam.shape)}"
        )
    if tuple(b.shape) != tuple(lam.shape):
        raise ValueError(f"{fn_name}: b must have the shape of lam {tuple(lam.shape)}, got {tuple(b.shape)}")
    return lam.shape[1]


def _check_state_dtype(fn_name: str, state: torch.Tensor, lam: torch.Tensor) -> None:
    """complex64, or complex128 for a float64 evaluation (lam complex128 too)."""
    check_tensor(fn_name, "state", state, kind="complex", ndim=3)
    if state.dtype != torch.complex64 and state.dtype != lam.dtype:
        raise TypeError(f"{fn_name}: state must be complex64, got {state.dtype}")


def check_scan_inputs(
    fn_name: str, x: object, lam: object, b: object, state: object
) -> tuple[int, int, int, int]:
    """Validate ``ssm_scan`` arguments; returns ``(B, L, D, N)``."""
    check_tensor(fn_name, "x", x, kind="real", dtypes=X_DTYPES, ndim=3)
    batch, length, channels = x.shape
    modes = _check_params(fn_name, lam, b, channels)
    if state is not None:
        _check_state_dtype(fn_name, state, lam)
        if tuple(state.shape) != (batch, channels, modes):
            raise ValueError(
                f"{fn_name}: state must have shape (B, D, N) = {(batch, channels, modes)}, "
                f"got {tuple(state.shape)}"
            )
    check_same_device(fn_name, x=x, lam=lam, b=b, state=state)
    return batch, length, channels, modes


def check_step_inputs(
    fn_name: str, x: object, lam: object, b: object, state: object, state_indices: object
) -> tuple[int, int, int, int]:
    """Validate ``ssm_step`` arguments; returns ``(B, D, N, P)`` (P = rows of the state pool)."""
    check_tensor(fn_name, "x", x, kind="real", dtypes=X_DTYPES, ndim=2)
    batch, channels = x.shape
    modes = _check_params(fn_name, lam, b, channels)
    _check_state_dtype(fn_name, state, lam)
    pool = state.shape[0]
    if state_indices is None:
        if tuple(state.shape) != (batch, channels, modes):
            raise ValueError(
                f"{fn_name}: state must have shape (B, D, N) = {(batch, channels, modes)}, "
                f"got {tuple(state.shape)}"
            )
    else:
        if tuple(state.shape[1:]) != (channels, modes):
            raise ValueError(
                f"{fn_name}: state must have shape (P, D, N) = (P, {channels}, {modes}), got {tuple(state.shape)}"
            )
        check_tensor(fn_name, "state_indices", state_indices, dtypes=(STATE_INDEX_DTYPE,), ndim=1)
        if state_indices.shape[0] != batch:
            raise ValueError(
                f"{fn_name}: state_indices must have shape (B,) = ({batch},), got {tuple(state_indices.shape)}"
            )
    check_same_device(fn_name, x=x, lam=lam, b=b, state=state, state_indices=state_indices)
    if state_indices is not None and (state_indices.device.type == "cpu" or debug_checks_enabled()):
        _check_state_indices_values(fn_name, state_indices, pool)
    return batch, channels, modes, pool


def _check_state_indices_values(fn_name: str, state_indices: torch.Tensor, pool: int) -> None:
    """Every index < P, and no state row used twice (negative = padding row, skipped)."""
    used = state_indices[state_indices >= 0]
    if used.numel() == 0:
        return
    top = int(used.max())
    if top >= pool:
        raise ValueError(
            f"{fn_name}: state_indices must be < P = {pool} (the rows of state) or negative (padding), got {top}"
        )
    if torch.unique(used).numel() != used.numel():
        raise ValueError(f"{fn_name}: state_indices must not repeat a state row (two rows would race)")


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


def ssm_scan(
    x: torch.Tensor, lam: torch.Tensor, b: torch.Tensor, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference scan: a Python loop over the tokens. Same contract as :func:`etsc_triton.ssm_scan`.

    Returns ``(y [B, L, D] in x.dtype, final_state [B, D, N])``; the state is complex128 when any input is
    float64 / complex128, else complex64. The initial state is never modified.
    """
    batch, length, channels, modes = check_scan_inputs("ssm_scan", x, lam, b, state)
    rdt = _real_dtype(x, lam, b, *([state] if state is not None else []))
    lam_re, lam_im = _parts(lam, rdt)
    b_re, b_im = _parts(b, rdt)
    if state is None:
        u_re = torch.zeros(batch, channels, modes, dtype=rdt, device=x.device)
        u_im = torch.zeros_like(u_re)
    else:
        u_re, u_im = (p.clone() for p in _parts(state, rdt))
    xs = x.to(rdt)
    y = torch.zeros(batch, length, channels, dtype=rdt, device=x.device)
    for t in range(length):
        u_re, u_im = ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, xs[:, t, :, None])
        y[:, t] = u_re.sum(-1)
    return y.to(x.dtype), torch.complex(u_re, u_im)


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
