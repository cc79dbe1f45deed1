"""Float64 Torch references for order reduction: the kernel error over a horizon, the finite-Hankel lower
bound, and a dense reduction (full Hankel SVD, ERA, least-squares residues) with the same signature as
:func:`etsc_triton.reduce_ssm`.

The input checks are in ``contract.py``, the certificate in ``certificate.py``.
"""

from __future__ import annotations

import torch

from ..checks import check_int, check_tensor
from .certificate import hankel_size, modal_kernel
from .contract import check_reduce_args
from .pipeline import reduce_kernel

# ----------------------------------------------------------------------------------------------- validation


# ----------------------------------------------------------------------------------------------- float64 pieces


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


def reduce_ssm(
    lam: torch.Tensor, b: torch.Tensor, rank: int | None = None, *, length: int, tol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense float64 reference of :func:`etsc_triton.reduce_ssm`: the kernel over the horizon, the full SVD of
    its ``p x p`` Hankel matrix, ERA on the leading left singular vectors, least-squares residues, no
    refinement. Same checks, conventions and certificate as the fast path; O(p^3) per system, so for small
    horizons only.
    """

    rank, length, tol = check_reduce_args(lam, b, rank, length, tol)
    lam64, b64 = lam.to(torch.complex128), b.to(torch.complex128)
    kernel = modal_kernel(lam64, b64, length)
    return reduce_kernel(
        kernel, rank, tol, b_total=b64.abs().sum(-1), exact=(lam64, b64), subspace="dense", refine=False
    )
