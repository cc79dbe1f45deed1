"""The contract of ``reduce_ssm`` and of ``toeplitz_to_ssm(..., rank=|tol=, length=)``: accepted inputs and
the checks both paths run (the fast path and the reference refuse bad input with the same message)."""

from __future__ import annotations

import math

from ..checks import check_int, check_same_device, check_shape, check_tensor

FN_NAME = "reduce_ssm"


# The most folded modes a reduction returns: the fit costs O(length * rank^2) per channel and beyond a few
# dozen modes the exact ETSC conversion (or the input itself) is the better system.
MAX_RANK = 64


def check_rank_tol(fn_name: str, rank: object, tol: object) -> tuple[int | None, float | None]:
    """Exactly one of ``rank`` (int in [1, MAX_RANK]) and ``tol`` (float > 0) must be given."""
    if (rank is None) == (tol is None):
        raise ValueError(f"{fn_name}: give exactly one of rank and tol, got rank={rank!r}, tol={tol!r}")
    if rank is not None:
        rank = check_int(fn_name, "rank", rank, minimum=1)
        if rank > MAX_RANK:
            raise ValueError(
                f"{fn_name}: rank must be <= {MAX_RANK} (use the exact ETSC conversion for larger states), "
                f"got {rank}"
            )
        return rank, None
    if isinstance(tol, bool) or not isinstance(tol, (int, float)):
        raise TypeError(f"{fn_name}: tol must be a float, got {type(tol).__name__}")
    tol = float(tol)
    if not 0.0 < tol < math.inf:
        raise ValueError(f"{fn_name}: tol must be a positive finite float, got {tol}")
    return None, tol


def check_reduce_args(lam: object, b: object, rank: object, length: object, tol: object):
    """Validate ``reduce_ssm`` arguments; return ``(rank, length, tol)``."""
    check_tensor(FN_NAME, "lam", lam, kind="complex", min_ndim=1)
    check_tensor(FN_NAME, "b", b, kind="complex", min_ndim=1)
    check_shape(FN_NAME, "b", b, lam.shape)
    check_same_device(FN_NAME, lam=lam, b=b)
    length = check_int(FN_NAME, "length", length, minimum=1)
    rank, tol = check_rank_tol(FN_NAME, rank, tol)
    return rank, length, tol
