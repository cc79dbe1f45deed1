"""Torch oracle for the prompt -> state computation of an ETSC-converted SSM (derivation: the op README).

For ETSC nodes ``lam_k = gamma * w^k`` (``w = exp(-2 pi i / m)``, ``m = n + 1``) and a zero initial state,
the state after the prompt ``x_0 .. x_{L-1}`` is ``u_k = b_k * sum_j lam_k^(L-1-j) x_j``. The oracle is this
direct O(L * N) sum; the phase ``w^(k p)`` is taken as ``w^((k p) mod m)`` so the oracle does not drift for
long prompts.
"""

from __future__ import annotations

import math

import torch

from .contract import FN_NAME, check_packed_prefill_inputs, check_prefill_inputs


def ssm_prefill_state(
    x: torch.Tensor,
    b: torch.Tensor,
    n: int,
    gamma: float | torch.Tensor | None = None,
    *,
    modes: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Oracle of :func:`etsc_triton.ops.prefill.ssm_prefill_state`: the direct O(L * N) sum, one packed prompt
    after the other; the pool is written like the kernel writes it (the rows of live indices, nothing else).

    Computes in complex128 when ``x`` is float64 or ``b`` is complex128, else in complex64.
    """
    gamma_t, modes_t = check_prefill_inputs(FN_NAME, x, b, n, gamma, modes)
    if cu_seqlens is None and state is None and state_indices is None:
        return _prefill_state(x, b, n, gamma_t, modes_t)
    n_seqs, pool = check_packed_prefill_inputs(FN_NAME, x, b, gamma, cu_seqlens, state, state_indices)
    bounds = cu_seqlens.tolist()
    if state_indices is None:
        states = [_prefill_state(x[:, bounds[i] : bounds[i + 1]], b, n, gamma_t, modes_t) for i in range(n_seqs)]
        if not states:
            return _prefill_state(x[:, :0], b, n, gamma_t, modes_t)[:0]
        return torch.cat(states)
    for i, row in enumerate(state_indices.tolist()):
        if 0 <= row < pool:  # a negative index is padding; >= P (only reachable on CUDA) touches nothing
            state[row] = _prefill_state(x[:, bounds[i] : bounds[i + 1]], b, n, gamma_t, modes_t)[0]
    return state


def _prefill_state(
    x: torch.Tensor, b: torch.Tensor, n: int, gamma_t: torch.Tensor, modes_t: torch.Tensor
) -> torch.Tensor:
    """The direct sum for a dense batch x ``[B, L, D]`` (checked inputs): the state ``[B, D, N]``."""
    wide = x.dtype == torch.float64 or b.dtype == torch.complex128
    cdtype = torch.complex128 if wide else torch.complex64
    rdtype = torch.float64 if wide else torch.float32
    batch, length, channels = x.shape
    period = n + 1
    x_rev = x.to(rdtype).flip(1)  # x_rev[:, p] = x[:, L-1-p]: the input seen at lag p
    log_gamma = torch.log(gamma_t)[:, None, None]  # [D, 1, 1]
    total = torch.zeros(batch, channels, modes_t.shape[1], dtype=cdtype, device=x.device)
    chunk = max(1, (1 << 22) // max(1, channels * modes_t.shape[1]))
    for start in range(0, length, chunk):
        lags = torch.arange(start, min(length, start + chunk), device=x.device, dtype=torch.int64)
        phase = (modes_t[:, :, None] * lags) % period  # [D, N, P], exact integer arithmetic
        angle = (-2.0 * math.pi / period) * phase.to(torch.float64)
        power = torch.exp(log_gamma * lags.to(torch.float64)) * torch.polar(torch.ones_like(angle), angle)
        total += torch.einsum(
            "dsp,bpd->bds", power.to(cdtype), x_rev[:, start : start + lags.numel()].to(cdtype)
        )
    return total * b.to(cdtype)[None]
