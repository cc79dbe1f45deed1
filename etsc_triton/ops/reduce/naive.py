"""Float64 Torch references for order reduction: the kernel error over a horizon, the finite-Hankel lower
bound, and a dense reduction (full Hankel SVD, ERA, least-squares residues) with the same signature as
:func:`etsc_triton.reduce_ssm`.

The input checks live here too (``check_reduce_args``), so the fast path and the reference refuse bad input
with the same message.
"""

from __future__ import annotations

import math

import torch

from ..toeplitz.naive import ssm_kernel as _modal_kernel
from ..utils import check_int, check_same_device, check_shape, check_tensor

FN_NAME = "reduce_ssm"

# The most folded modes a reduction returns: the fit costs O(length * rank^2) per channel and beyond a few
# dozen modes the exact ETSC conversion (or the input itself) is the better system.
MAX_RANK = 64

# Margin of the certificate, per lag and per unit of sum |b| (+ max |K|): the float64 evaluation of
# ``Re sum_s b_s lam_s^j`` through exp(j log|lam|) and a reduced angle j*arg(lam) has a relative error of at most
# (j |log|lam|| + j pi + 8) * 2^-53 per term, and |lam|^j * j |log|lam|| <= 1/e; 4 j + 16 units of 2^-52
# cover it with room (op README).
EVALUATION_ULPS_PER_LAG = 4
EVALUATION_ULPS_FIXED = 16


# ----------------------------------------------------------------------------------------------- validation


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


# ----------------------------------------------------------------------------------------------- float64 pieces


def modal_kernel(lam: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """``K_j = Re sum_s b_s lam_s^j`` for ``j < length`` in float64: `[..., N]` -> `[..., length]`."""
    return _modal_kernel(lam.to(torch.complex128), b.to(torch.complex128), length)


def evaluation_margin(b_total: torch.Tensor, length: int) -> torch.Tensor:
    """Upper bound on the float64 evaluation error of a modal kernel with ``sum |b| = b_total`` (any shape)."""
    ulps = EVALUATION_ULPS_PER_LAG * length + EVALUATION_ULPS_FIXED
    return b_total * (ulps * 2.0**-52)


def certify(error64: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """float32 upper bound on ``error64 + margin`` (float64): rounded up, never down."""
    total = error64 + margin
    bound = total.to(torch.float32)
    low = bound.to(torch.float64) < total
    return torch.where(low, torch.nextafter(bound, torch.full_like(bound, math.inf)), bound)


def reduction_error(
    lam: torch.Tensor, b: torch.Tensor, lam_r: torch.Tensor, b_r: torch.Tensor, length: int
) -> torch.Tensor:
    """``max_{j < length} |K_j - K^r_j|`` per system, evaluated in float64 (no margin).

    Args:
        lam, b: `[..., N]` complex, the original SSM.
        lam_r, b_r: `[..., r]` complex, the reduced SSM.
        length: the horizon (>= 1).

    Returns:
        `[...]` float64.
    """
    length = check_int("reduction_error", "length", length, minimum=1)
    full = modal_kernel(lam, b, length)
    reduced = modal_kernel(lam_r, b_r, length)
    return (full - reduced).abs().amax(-1)


def hankel_size(length: int) -> int:
    """``p`` of the square ``p x p`` Hankel matrix ``H_ij = K_(i+j)`` that lags ``0 .. length-1`` fill."""
    return (length + 1) // 2


def hankel_singular_values(kernel: torch.Tensor) -> torch.Tensor:
    """Singular values of the square Hankel matrix ``H_ij = K_(i+j)``, ``i, j < p = ceil(length / 2)``, by a
    dense float64 SVD (small sizes: the matrix is ``p x p`` per system).

    Args:
        kernel: `[..., length]` real.

    Returns:
        `[..., p]` float64, descending.
    """
    check_tensor("hankel_singular_values", "kernel", kernel, kind="real", min_ndim=1)
    p = hankel_size(kernel.shape[-1])
    k = kernel.to(torch.float64)[..., : 2 * p - 1]
    hankel = k.unfold(-1, p, 1)  # [..., p, p]: row i holds K_i .. K_(i+p-1)
    return torch.linalg.svdvals(hankel)


def hankel_lower_bound(kernel: torch.Tensor, rank: int) -> torch.Tensor:
    """Lower bound on ``sum_(j < length) |K_j - K^r_j|`` over every system ``K^r`` of ``rank`` folded modes.

    A folded mode has real state dimension at most 2, so ``K^r`` has real dimension ``k <= 2 rank`` and its
    ``p x p`` Hankel matrix rank ``<= k``; the Hankel matrix of the error ``E = K - K^r`` is
    ``sum_j E_j S_j`` (``S_j`` the anti-diagonal of ones, norm <= 1), so ``||H(E)||_2 <= sum_j |E_j|``, and
    ``||H(E)||_2 >= sigma_(k+1)(H(K))`` (Eckart-Young). Returns ``sigma_(2 rank + 1)`` (0 beyond ``p``).

    Args:
        kernel: `[..., length]` real.
        rank: folded modes (>= 1).

    Returns:
        `[...]` float64.
    """
    rank = check_int("hankel_lower_bound", "rank", rank, minimum=1)
    sigma = hankel_singular_values(kernel)
    if 2 * rank >= sigma.shape[-1]:
        return torch.zeros(sigma.shape[:-1], dtype=torch.float64, device=sigma.device)
    return sigma[..., 2 * rank]


# ----------------------------------------------------------------------------------------------- the reference


def reduce_ssm(lam, b, rank=None, *, length, tol=None):
    """Dense float64 reference of :func:`etsc_triton.reduce_ssm`: the kernel over the horizon, the full SVD of
    its ``p x p`` Hankel matrix, ERA on the leading left singular vectors, least-squares residues, no
    refinement. Same checks, conventions and certificate as the fast path; O(p^3) per system, so for small
    horizons only.
    """
    from .fit import reduce_kernel  # the shared pipeline; only the subspace differs

    rank, length, tol = check_reduce_args(lam, b, rank, length, tol)
    lam64, b64 = lam.to(torch.complex128), b.to(torch.complex128)
    kernel = modal_kernel(lam64, b64, length)
    return reduce_kernel(
        kernel, rank, tol, b_total=b64.abs().sum(-1), exact=(lam64, b64), subspace="dense", refine=False
    )
