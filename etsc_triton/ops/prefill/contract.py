"""The contract of ``ssm_prefill_state``: accepted inputs and the checks both paths run."""

from __future__ import annotations

import torch

from ..checks import check_int, check_same_device, check_shape, check_tensor
from ..ssm.contract import check_cu_seqlens, check_packed_x, check_pool, check_pool_values

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
    check_tensor(fn_name, "x", x, kind="real", ndim=3, allow_empty=True)
    check_tensor(fn_name, "b", b, kind="complex", ndim=2, nonempty={1: "mode"})
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


def check_packed_prefill_inputs(
    fn_name: str,
    x: torch.Tensor,
    b: torch.Tensor,
    gamma: float | torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    state: torch.Tensor | None,
    state_indices: torch.Tensor | None,
) -> tuple[int, int]:
    """The packed / pooled layout of ``ssm_prefill_state`` (after :func:`check_prefill_inputs`): x ``[1, T, D]``
    with ``cu_seqlens [S + 1]``; with ``state_indices [S]`` a pool ``state [P, D, N]``. Returns ``(S, P)`` (P = 0
    without a pool). Every check runs before any kernel, so a refused call writes nothing."""
    if cu_seqlens is None:
        raise ValueError(f"{fn_name}: state and state_indices need cu_seqlens (packed prompts)")
    tokens, channels = check_packed_x(fn_name, x)
    n_seqs = check_cu_seqlens(fn_name, cu_seqlens, tokens)
    pool = 0
    if state_indices is None:
        if state is not None:
            raise ValueError(
                f"{fn_name}: state (a pool) needs state_indices; prompts always start from a zero state"
            )
    else:
        pool = check_pool(fn_name, state, state_indices, None, n_seqs, (channels, b.shape[1]), b.dtype)
    check_same_device(fn_name, x=x, b=b, cu_seqlens=cu_seqlens, state=state, state_indices=state_indices)
    if state_indices is not None:
        inputs = (x, b, state, gamma if isinstance(gamma, torch.Tensor) else None)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            raise NotImplementedError(
                f"{fn_name}: writing states into a pool is not differentiable (an input requires grad); run it "
                "under torch.no_grad(), or differentiate the packed form (cu_seqlens without state_indices)"
            )
        check_pool_values(fn_name, state_indices, pool)
    return n_seqs, pool
