"""The contract of ``ssm_scan`` and ``ssm_step``: accepted inputs and the checks both paths run.

``state_indices`` and ``cu_seqlens`` values are checked on CPU tensors always and on CUDA tensors when
``ETSC_TRITON_DEBUG=1`` (the check synchronises the device). The packed-layout checks
(:func:`check_cu_seqlens`, :func:`check_pool`) serve ``ssm_prefill_state`` too.
"""

from __future__ import annotations

import torch

from ..checks import check_no_internal_overlap, check_same_device, check_tensor, debug_checks_enabled

X_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


STATE_INDEX_DTYPE = torch.int32
CU_SEQLENS_DTYPES = (torch.int32, torch.int64)


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


def _check_state_indices_values(fn_name: str, state_indices: torch.Tensor, pool: int, what: str = "rows") -> None:
    """Every index < P, and no state row used twice (negative = padding, skipped)."""
    used = state_indices[state_indices >= 0]
    if used.numel() == 0:
        return
    top = int(used.max())
    if top >= pool:
        raise ValueError(
            f"{fn_name}: state_indices must be < P = {pool} (the rows of state) or negative (padding), got {top}"
        )
    if torch.unique(used).numel() != used.numel():
        raise ValueError(f"{fn_name}: state_indices must not repeat a state row (two {what} would race on it)")


def check_cu_seqlens(fn_name: str, cu_seqlens: object, tokens: int) -> int:
    """``cu_seqlens`` int32 / int64 ``[S + 1]``; its values (CPU tensors, or CUDA with ``ETSC_TRITON_DEBUG=1``)
    start at 0, never decrease and end at ``tokens``. Returns S."""
    check_tensor(fn_name, "cu_seqlens", cu_seqlens, dtypes=CU_SEQLENS_DTYPES, ndim=1)
    if cu_seqlens.device.type == "cpu" or debug_checks_enabled():
        bounds = cu_seqlens.to("cpu", torch.int64)
        if int(bounds[0]) != 0:
            raise ValueError(f"{fn_name}: cu_seqlens must start at 0, got {int(bounds[0])}")
        steps = bounds[1:] - bounds[:-1]
        if bool((steps < 0).any()):
            i = int((steps < 0).nonzero()[0])
            raise ValueError(
                f"{fn_name}: cu_seqlens must not decrease (sequence lengths >= 0), got cu_seqlens[{i}] = "
                f"{int(bounds[i])} > cu_seqlens[{i + 1}] = {int(bounds[i + 1])}"
            )
        if int(bounds[-1]) != tokens:
            raise ValueError(
                f"{fn_name}: cu_seqlens must end at T = {tokens} (the tokens of x), got {int(bounds[-1])}"
            )
    return cu_seqlens.shape[0] - 1


def check_packed_x(fn_name: str, x: object) -> tuple[int, int]:
    """Packed sequences x ``[1, T, D]``; returns ``(T, D)``."""
    check_tensor(fn_name, "x", x, kind="real", dtypes=X_DTYPES, ndim=3, allow_empty=True)
    if x.shape[0] != 1:
        raise ValueError(
            f"{fn_name}: x must be [1, T, D] with cu_seqlens (the sequences packed along dim 1), got shape "
            f"{tuple(x.shape)}"
        )
    return x.shape[1], x.shape[2]


def check_pool(fn_name: str, state: object, state_indices: object, has_initial_state: object, n_seqs: int,
               row_shape: tuple[int, int], dtype: torch.dtype) -> int:
    """A pool ``state [P, *row_shape]`` (complex64, or ``dtype`` for a float64 oracle; no self-overlap) and its
    ``state_indices`` int32 ``[S]`` (values checked like :func:`etsc_triton.ssm_step`'s) and optional
    ``has_initial_state`` bool ``[S]``; returns P."""
    if state is None:
        raise ValueError(f"{fn_name}: state_indices needs state: the pool [P, D, N] the sequences' states live in")
    check_tensor(fn_name, "state", state, kind="complex", ndim=3, allow_empty=True)
    if state.dtype != torch.complex64 and state.dtype != dtype:
        raise TypeError(f"{fn_name}: state must be complex64, got {state.dtype}")
    if tuple(state.shape[1:]) != row_shape:
        raise ValueError(
            f"{fn_name}: state must have shape (P, D, N) = (P, {row_shape[0]}, {row_shape[1]}), "
            f"got {tuple(state.shape)}"
        )
    check_tensor(fn_name, "state_indices", state_indices, dtypes=(STATE_INDEX_DTYPE,), ndim=1, allow_empty=True)
    if state_indices.shape[0] != n_seqs:
        raise ValueError(
            f"{fn_name}: state_indices must have shape (S,) = ({n_seqs},) (one row per sequence of cu_seqlens), "
            f"got {tuple(state_indices.shape)}"
        )
    if has_initial_state is not None:
        check_tensor(fn_name, "has_initial_state", has_initial_state, dtypes=(torch.bool,), ndim=1,
                     allow_empty=True)
        if has_initial_state.shape[0] != n_seqs:
            raise ValueError(
                f"{fn_name}: has_initial_state must have shape (S,) = ({n_seqs},), "
                f"got {tuple(has_initial_state.shape)}"
            )
    check_no_internal_overlap(fn_name, "state", state)
    return state.shape[0]


def check_pool_values(fn_name: str, state_indices: torch.Tensor, pool: int) -> None:
    """The values of ``state_indices`` (CPU tensors, or CUDA with ``ETSC_TRITON_DEBUG=1``): rows ``< P``, none
    named by two sequences."""
    if state_indices.device.type == "cpu" or debug_checks_enabled():
        _check_state_indices_values(fn_name, state_indices, pool, "sequences")


def check_packed_scan_inputs(
    fn_name: str,
    x: object,
    lam: object,
    b: object,
    state: object,
    cu_seqlens: object,
    state_indices: object,
    has_initial_state: object,
) -> tuple[int, int, int, int, int]:
    """Validate packed / pooled ``ssm_scan`` arguments; returns ``(S, T, D, N, P)`` (P = 0 without a pool).

    Every check runs before any kernel, so a refused call writes nothing.
    """
    if cu_seqlens is None:
        raise ValueError(f"{fn_name}: state_indices and has_initial_state need cu_seqlens (packed sequences)")
    tokens, channels = check_packed_x(fn_name, x)
    modes = _check_params(fn_name, lam, b, channels)
    n_seqs = check_cu_seqlens(fn_name, cu_seqlens, tokens)
    pool = 0
    if state_indices is None:
        if has_initial_state is not None:
            raise ValueError(
                f"{fn_name}: has_initial_state needs state_indices (a pool); packed initial states are all used"
            )
        if state is not None:
            _check_state_dtype(fn_name, state, lam)
            if tuple(state.shape) != (n_seqs, channels, modes):
                raise ValueError(
                    f"{fn_name}: state must have shape (S, D, N) = {(n_seqs, channels, modes)} (one initial state "
                    f"per sequence of cu_seqlens), got {tuple(state.shape)}"
                )
    else:
        pool = check_pool(fn_name, state, state_indices, has_initial_state, n_seqs, (channels, modes), lam.dtype)
    check_same_device(fn_name, x=x, lam=lam, b=b, state=state, cu_seqlens=cu_seqlens, state_indices=state_indices,
                      has_initial_state=has_initial_state)
    if state_indices is not None:
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, lam, b, state)):
            raise NotImplementedError(
                f"{fn_name}: the pooled scan writes its states in place and is not differentiable (an input "
                "requires grad); run it under torch.no_grad() or torch.inference_mode(), and train with the "
                "packed scan (cu_seqlens without state_indices)"
            )
        check_pool_values(fn_name, state_indices, pool)
    return n_seqs, tokens, channels, modes, pool
