"""Torch oracle for the prompt -> state computation of an ETSC-converted SSM (DESIGN 1.3).

For ETSC nodes ``lam_k = gamma * w^k`` (``w = exp(-2 pi i / m)``, ``m = n + 1``) and a zero initial state,
the state after the prompt ``x_0 .. x_{L-1}`` is ``u_k = b_k * sum_j lam_k^(L-1-j) x_j``. The oracle is this
direct O(L * N) sum; the phase ``w^(k p)`` is taken as ``w^((k p) mod m)`` so the oracle does not drift for
long prompts.
"""

from __future__ import annotations

import math

import torch

from ..utils import check_int, check_same_device, check_shape, check_tensor

FN_NAME = "ssm_prefill_state"


def check_prefill_inputs(
    fn_name: str,
    x: torch.Tensor,
    b: torch.Tensor,
    n: int,
    gamma: float | torch.Tensor | None,
    modes: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the arguments of ``ssm_prefill_state``; return ``(gamma [D] float64, modes [D, N] int64)``.

    Shared by the Triton path and the oracle so both refuse bad input with the same message.
    """
    check_tensor(fn_name, "x", x, kind="real", ndim=3)
    check_tensor(fn_name, "b", b, kind="complex", ndim=2)
    n = check_int(fn_name, "n", n, minimum=1)
    _, _, channels = x.shape
    if b.shape[0] != channels:
        raise ValueError(
            f"{fn_name}: b must have shape (D, N) with D = x.shape[2] = {channels}, got {tuple(b.shape)}"
        )
    n_modes = b.shape[1]
    check_same_device(
        fn_name, x=x, b=b, gamma=gamma if isinstance(gamma, torch.Tensor) else None, modes=modes
    )

    if gamma is None:
        gamma_t = torch.ones(channels, dtype=torch.float64, device=x.device)
    elif isinstance(gamma, torch.Tensor):
        check_tensor(fn_name, "gamma", gamma, kind="real")
        if gamma.dim() == 0:
            gamma_t = gamma.to(torch.float64).expand(channels)
        elif gamma.dim() == 1 and gamma.shape[0] in (1, channels):
            gamma_t = gamma.to(torch.float64).expand(channels)
        else:
            raise ValueError(
                f"{fn_name}: gamma must be a scalar or have shape ({channels},), got {tuple(gamma.shape)}"
            )
        if not bool(((gamma_t > 0) & (gamma_t <= 1)).all()):
            raise ValueError(
                f"{fn_name}: gamma must lie in (0, 1], got values in "
                f"[{gamma_t.min().item():g}, {gamma_t.max().item():g}]"
            )
    elif isinstance(gamma, (int, float)) and not isinstance(gamma, bool):
        if not 0.0 < float(gamma) <= 1.0:
            raise ValueError(f"{fn_name}: gamma must lie in (0, 1], got {gamma}")
        gamma_t = torch.full((channels,), float(gamma), dtype=torch.float64, device=x.device)
    else:
        raise TypeError(f"{fn_name}: gamma must be None, a float or a tensor, got {type(gamma).__name__}")

    if modes is None:
        if n_modes > n:
            raise ValueError(
                f"{fn_name}: b has N = {n_modes} modes but an n = {n} Toeplitz layer has at most {n}"
            )
        modes_t = torch.arange(1, n_modes + 1, device=x.device, dtype=torch.int64).expand(channels, n_modes)
    else:
        check_tensor(fn_name, "modes", modes, dtypes=(torch.int32, torch.int64))
        if modes.dim() == 1:
            check_shape(fn_name, "modes", modes, (n_modes,))
            modes_t = modes.to(torch.int64).expand(channels, n_modes)
        else:
            check_shape(fn_name, "modes", modes, (channels, n_modes))
            modes_t = modes.to(torch.int64)
        if not modes_t.is_cuda and bool(((modes_t < 1) | (modes_t > n)).any()):
            raise ValueError(
                f"{fn_name}: modes must lie in [1, n] = [1, {n}], got values in "
                f"[{modes_t.min().item()}, {modes_t.max().item()}]"
            )
    return gamma_t, modes_t


def ssm_prefill_state(
    x: torch.Tensor,
    b: torch.Tensor,
    n: int,
    gamma: float | torch.Tensor | None = None,
    *,
    modes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Oracle of :func:`etsc_triton.ops.prefill.ssm_prefill_state`: the direct O(L * N) sum.

    Computes in complex128 when ``x`` is float64 or ``b`` is complex128, else in complex64.
    """
    gamma_t, modes_t = check_prefill_inputs(FN_NAME, x, b, n, gamma, modes)
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
