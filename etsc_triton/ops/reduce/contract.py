"""The contract of ``reduce_ssm`` and ``reduce_toeplitz``: the result record, the accepted inputs and the checks
both paths run (the fast path and the reference refuse bad input with the same message)."""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from ..checks import check_int, check_same_device, check_shape, check_tensor
from ..dispatch import BACKENDS

FN_NAME = "reduce_ssm"
TAPS_FN_NAME = "reduce_toeplitz"

# The most folded modes a reduction returns: the fit costs O(length * rank^2) per channel and beyond a few
# dozen modes the exact ETSC conversion (or the input itself) is the better system.
MAX_RANK = 64


class Reduction(NamedTuple):
    """A reduced system and its certificate.

    Attributes:
        lam: complex64 `[..., rank]` poles, ``|lam| <= 1``; a complex mode stands for a conjugate pair, a real
            pole has ``Im lam = Im b = 0``, an unused slot ``lam = b = 0``.
        b: complex64 `[..., rank]` residues.
        bound: float32 `[...]`, ``bound >= max_(j < length) |K_j - K^r_j|``.
    """

    lam: torch.Tensor
    b: torch.Tensor
    bound: torch.Tensor

    @property
    def ranks(self) -> torch.Tensor:
        """int64 `[...]`: the slots each system uses (a slot is unused exactly when ``lam = b = 0``): under
        ``tol`` the rank that met it, padded to the batch's largest."""
        return ((self.lam != 0) | (self.b != 0)).sum(-1)


def _check_rank(fn_name: str, name: str, rank: object) -> int:
    rank = check_int(fn_name, name, rank, minimum=1)
    if rank > MAX_RANK:
        raise ValueError(
            f"{fn_name}: {name} must be <= {MAX_RANK} (use the exact ETSC conversion for larger states), got {rank}"
        )
    return rank


def check_rank_tol(fn_name: str, rank: object, tol: object,
                   max_rank: object = None) -> tuple[int | None, float | None, int | None]:
    """Exactly one of ``rank`` (int in [1, MAX_RANK]) and ``tol`` (float > 0) must be given; ``max_rank`` (int in
    [1, MAX_RANK]) goes with ``tol``. Returns ``(rank, tol, max_rank)``: ``max_rank`` is ``rank`` with ``rank``,
    and None under ``tol`` without it (the default: fitted ranks up to MAX_RANK, then the exact modes whatever
    their count)."""
    if (rank is None) == (tol is None):
        raise ValueError(f"{fn_name}: give exactly one of rank and tol, got rank={rank!r}, tol={tol!r}")
    if rank is not None:
        if max_rank is not None:
            raise ValueError(f"{fn_name}: max_rank bounds the ranks tol may climb: give it with tol, not rank")
        checked = _check_rank(fn_name, "rank", rank)
        return checked, None, checked
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"{fn_name}: tol must be a float, got {type(tol).__name__}")
    tol = float(tol)
    if not 0.0 < tol < math.inf:
        raise ValueError(f"{fn_name}: tol must be a positive finite float, got {tol}")
    return None, tol, None if max_rank is None else _check_rank(fn_name, "max_rank", max_rank)


def check_finite(fn_name: str, **tensors: torch.Tensor) -> None:
    """Refuse NaN or infinite values, naming the argument and the first index (a reduction of them would fail
    deep inside a factorisation instead)."""
    for name, tensor in tensors.items():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            where = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{fn_name}: {name} must be finite, got {tensor[where].item()} at index {where}")


def warn_unstable(fn_name: str, lam: torch.Tensor, length: int) -> None:
    """Warn where ``|lam| > 1``. Accepted, because the reduction only needs the kernel over the horizon, which any
    modes define, and returns modes inside the unit disc; warned, because such a kernel grows along the horizon
    and the fit (and its bound) follows its largest lags."""
    outside = lam.abs() > 1
    if bool(outside.any()):
        where = tuple(int(i) for i in outside.nonzero()[0])
        radius = float(lam.abs().max())
        warnings.warn(f"{fn_name}: lam has modes outside the unit disc (|lam| = {radius:.6g} at most, first at index "
                      f"{where}): the kernel grows like |lam|^j over the {length} lags; the reduced modes are stable "
                      "and the bound holds over the horizon only", RuntimeWarning, stacklevel=3)


def etsc_modes(taps: torch.Tensor, gamma64: torch.Tensor,
               max_rank: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The exact ETSC modes complex128 `[..., ceil(L/2)]` of float64 taps `[..., L]` with decay ``gamma64``, when
    they fit in ``max_rank`` slots or ``max_rank`` is None (else None): they reproduce every lag of the horizon,
    so under ``tol`` they are the taps' last candidate, as the input modes are for ``reduce_ssm``."""
    if taps.numel() == 0 or (max_rank is not None and (taps.shape[-1] + 1) // 2 > max_rank):
        return None
    from ..toeplitz import naive as toeplitz_naive  # ops/toeplitz imports this package: a late import

    lam, b = toeplitz_naive.toeplitz_to_ssm(taps, gamma64)
    return lam, b


def etsc_rounded_residues(lam: torch.Tensor, b: torch.Tensor, lam32: torch.Tensor, length: int) -> torch.Tensor:
    """Residues complex128 `[..., N]` for the ETSC modes ``(lam, b)`` of :func:`etsc_modes` over ``length`` lags
    with their poles rounded to ``lam32``: ``b`` plus the first-order correction for the
    rounding (``lam32^j ~ lam^j (1 + j eps)``, the error's ETSC solve by one FFT), which leaves
    ``O((j eps)^2)`` where the plain rounding leaves ``j eps |b|``. ``O(L log L)`` per system: at a thousand
    modes a least-squares refit to the rounded poles (a QR of `[L, 2N]`) costs seconds per system and gains
    nothing measurable over it."""
    from ..toeplitz import naive as toeplitz_naive  # ops/toeplitz imports this package: a late import

    correction: torch.Tensor = toeplitz_naive.node_rounding_correction(  # type: ignore[no-untyped-call]
        b, lam, lam32, length, True)
    return b + correction


def check_backend(fn_name: str, backend: object) -> None:
    """The backend name is validated like every op's; all backends run the same torch pipeline (no Triton
    kernel to choose), so nothing else about it is checked."""
    if backend not in BACKENDS:
        raise ValueError(f"{fn_name}: backend must be one of {BACKENDS}, got {backend!r}")


def check_reduce_args(lam: object, b: object, rank: object, length: object, tol: object,
                      max_rank: object = None) -> tuple[int | None, int, float | None, int | None]:
    """Validate ``reduce_ssm`` arguments; return ``(rank, length, tol, max_rank)``."""
    lam = check_tensor(FN_NAME, "lam", lam, kind="complex", min_ndim=1)
    b = check_tensor(FN_NAME, "b", b, kind="complex", min_ndim=1)
    check_shape(FN_NAME, "b", b, lam.shape)
    check_same_device(FN_NAME, lam=lam, b=b)
    length = check_int(FN_NAME, "length", length, minimum=1)
    rank, tol, max_rank = check_rank_tol(FN_NAME, rank, tol, max_rank)
    check_finite(FN_NAME, lam=lam, b=b)
    return rank, length, tol, max_rank


def check_taps_args(fn_name: str, t: object, gamma: object, rank: object, tol: object, length: object,
                    max_rank: object = None) -> tuple[torch.Tensor, int | None, int, float | None, int | None]:
    """Validate ``reduce_toeplitz`` arguments; return ``(gamma, rank, length, tol, max_rank)`` with gamma a float64
    tensor of ``t.shape[:-1]`` and length defaulting to n."""
    t = check_tensor(fn_name, "t", t, kind="real", min_ndim=1, nonempty={-1: "lag"})
    batch = tuple(t.shape[:-1])
    if isinstance(gamma, torch.Tensor):
        check_tensor(fn_name, "gamma", gamma, kind="real", allow_empty=True)
        check_same_device(fn_name, t=t, gamma=gamma)
    elif gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float))):
        raise TypeError(f"{fn_name}: gamma must be None, a float or a tensor, got {type(gamma).__name__}")
    gamma64 = torch.as_tensor(1.0 if gamma is None else gamma, dtype=torch.float64, device=t.device)
    try:
        gamma64 = gamma64.expand(batch)
    except RuntimeError:
        raise ValueError(f"{fn_name}: gamma must be broadcastable to t.shape[:-1] = {batch}, "
                         f"got shape {tuple(gamma64.shape)}") from None
    outside = ~((gamma64 > 0) & (gamma64 <= 1))
    if bool(outside.any()):
        raise ValueError(f"{fn_name}: gamma must lie in (0, 1], got {gamma64[outside].flatten()[0].item()}")
    rank, tol, max_rank = check_rank_tol(fn_name, rank, tol, max_rank)
    n = t.shape[-1]
    if length is None:
        length = n
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"{fn_name}: length must be an int, got {type(length).__name__}")
    if not 1 <= length <= n:
        raise ValueError(
            f"{fn_name}: length must lie in [1, n] = [1, {n}] (the taps define lags < n), got {length}"
        )
    check_finite(fn_name, t=t[..., :length])
    return gamma64, rank, length, tol, max_rank
