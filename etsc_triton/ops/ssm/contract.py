"""The contract of ``ssm_scan`` and ``ssm_step``: accepted inputs and the checks both paths run.

``state_indices`` values are checked on CPU tensors always and on CUDA tensors when ``ETSC_TRITON_DEBUG=1``
(the check synchronises the device).
"""

from __future__ import annotations

import torch

from ..checks import check_no_internal_overlap, check_same_device, check_tensor, debug_checks_enabled

X_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


STATE_INDEX_DTYPE = torch.int32


def _check_params(fn_name: str, lam: object, b: object, channels: int) -> int:
    """lam and b complex ``[D, N]`` with ``D == channels``; returns N."""
    check_tensor(fn_name, "lam", lam, kind="complex", ndim=2, nonempty={1: "mode"})
    check_tensor(fn_name, "b", b, kind="complex", ndim=2, allow_empty=True)
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
    check_tensor(fn_name, "state", state, kind="complex", ndim=3, allow_empty=True)
    if state.dtype != torch.complex64 and state.dtype != lam.dtype:
        raise TypeError(f"{fn_name}: state must be complex64, got {state.dtype}")


def check_scan_inputs(
    fn_name: str, x: object, lam: object, b: object, state: object
) -> tuple[int, int, int, int]:
    """Validate ``ssm_scan`` arguments; returns ``(B, L, D, N)``."""
    check_tensor(fn_name, "x", x, kind="real", dtypes=X_DTYPES, ndim=3, allow_empty=True)
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
    check_tensor(fn_name, "x", x, kind="real", dtypes=X_DTYPES, ndim=2, allow_empty=True)
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
    check_no_internal_overlap(fn_name, "state", state)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, lam, b, state)):
        raise NotImplementedError(
            f"{fn_name}: the in-place decode step is not differentiable (an input requires grad); decode under "
            "torch.no_grad() or torch.inference_mode(), and train through ssm_scan"
        )
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
