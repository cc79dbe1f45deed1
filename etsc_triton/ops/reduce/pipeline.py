"""The reduction driver: ranks (given, or walked upwards under a tolerance), channel chunks, and per rank the fit
(``fit.py``), its rounding (``rounding.py``) and the certified bound (``certificate.py``)."""

from __future__ import annotations

import math

import torch

from .certificate import certified_bound, evaluation_margin
from .contract import MAX_RANK, Reduction
from .fit import PRUNE_EXTRA, fit_poles, leading_subspace
from .modal import hankel_size
from .rounding import round_modes, round_poles, search_rounding

CHUNK_BYTES = 1 << 28  # working set per channel chunk (complex128 powers and the Jacobian)
REFINE_REACH = 100.0  # under tol, the later passes run at a rank only if every system is within this factor

# Under a tolerance, the passes a system goes through until it meets it: the plain ERA + least-squares fit, the
# same rounded by the lattice search, then the fit refined towards the max error (the certified quantity), rounded
# by the search where the rounding dominates.
TOL_PASSES: tuple[dict, ...] = (
    {"refine_target": None},
    {"refine_target": None, "rounding": "search"},
    {"refine_target": "max", "rounding": "search"},
)


def _chunks(channels: int, length: int, rank: int):
    per_channel = 16 * length * (6 * rank + 8) + 8 * length * 8 * rank
    size = max(1, min(channels, CHUNK_BYTES // max(per_channel, 1)))
    for start in range(0, channels, size):
        yield slice(start, min(channels, start + size))


def reduce_kernel(kernel: torch.Tensor, rank: int | None, tol: float | None, *, scale_terms: torch.Tensor,
                  terms: int, exact: tuple[torch.Tensor, torch.Tensor] | None = None,
                  fn_name: str = "reduce_ssm") -> Reduction:
    """Reduce float64 kernels `[..., L]` to ``rank`` folded modes (or the smallest rank meeting ``tol``).

    Args:
        kernel: `[..., L]` float64, the kernel to approximate over lags ``0 .. L-1``.
        rank: folded modes, or None with ``tol``.
        tol: relative tolerance ``bound <= tol * max_j |K_j|`` in every system, or None.
        scale_terms: `[...]` float64 sum of the magnitudes of the terms the kernel's own float64 evaluation added
            (``sum |b|`` of the original modes, ``max |t|`` for taps), and ``terms`` their number: the
            certificate's margin for the kernel.
        exact: ``(lam, b)`` complex128 `[..., N]` of the original system (used as is when ``rank >= N``).
        fn_name: the public function named in errors.

    Returns:
        :class:`Reduction`: complex64 `[..., rank]` (twice), float32 `[...]`.
    """
    batch = kernel.shape[:-1]
    length = kernel.shape[-1]
    flat = kernel.reshape(-1, length)
    channels = flat.shape[0]
    margin = evaluation_margin(scale_terms.reshape(-1).to(torch.float64), length, terms)
    n_exact = exact[0].shape[-1] if exact is not None else None
    exact_flat = None if exact is None else (exact[0].reshape(channels, -1), exact[1].reshape(channels, -1))
    if rank is not None:
        ranks, cap = [rank], rank
    else:  # beyond p/2 + 1 modes the ERA order cannot grow (p - 1 shifts); the exact modes may be fewer
        cap = min(MAX_RANK, max(hankel_size(length) // 2 + 1, n_exact or 0))
        ranks = list(range(1, cap + 1))
    lam_out = torch.zeros(channels, cap, dtype=torch.complex64, device=flat.device)
    b_out = torch.zeros_like(lam_out)
    bound_out = torch.full((channels,), math.inf, dtype=torch.float32, device=flat.device)
    rank_out = torch.zeros(channels, dtype=torch.int64, device=flat.device)
    for part in _chunks(channels, length, ranks[-1] if rank is not None else 8):
        kernel_part = flat[part]
        exact_part = None if exact_flat is None else (exact_flat[0][part], exact_flat[1][part])
        best = _reduce_chunk(kernel_part, margin[part], exact_part, ranks, cap, tol)
        lam_out[part], b_out[part], bound_out[part], rank_out[part] = best
    if tol is not None:
        scale = flat.abs().amax(-1)
        missed = bound_out.to(torch.float64) > tol * scale
        if bool(missed.any()):
            worst = float((bound_out.to(torch.float64) / scale.clamp_min(1e-300)).max())
            raise ValueError(
                f"{fn_name}: tol = {tol:g} is not met by any rank up to {cap} in every system "
                f"(best relative bound {worst:.3g}); raise tol or use the exact conversion"
            )
    final = cap if tol is None else int(rank_out.max())
    return Reduction(lam_out[:, :final].reshape(*batch, final), b_out[:, :final].reshape(*batch, final),
                     bound_out.reshape(batch))


def _fit_rank(kernel, subspace, rank, *, refine_target, rounding: str = "nearest", threshold=None):
    """Fit ``rank`` folded modes to every kernel and round them: complex64 ``(lam, b)`` `[C, rank]`.
    ``rounding="search"`` rounds by :func:`search_rounding` (for the few systems a tolerance ``threshold [C]`` is
    still missing)."""
    poles, b = fit_poles(kernel, subspace, rank, refine_target)
    refined = None if refine_target is None else (b, refine_target)
    if rounding == "search":
        return search_rounding(kernel, poles, threshold, refined=refined)
    return round_modes(kernel, poles, refined=refined)


def _fit_and_certify(kernel, margin, subspace, rank, threshold):
    """Fit and certify ``rank`` modes. Under a tolerance (``threshold [C]``) the systems go through
    ``TOL_PASSES``, each pass fitting only those still above the threshold and keeping its fit where it lowers
    the bound, while every system is within ``REFINE_REACH`` of it; otherwise every system is refined towards
    the l1 error."""
    if threshold is None:
        lam32, b32 = _fit_rank(kernel, subspace, rank, refine_target="l1")
        return lam32, b32, certified_bound(kernel, margin, lam32, b32)
    lam32, b32 = _fit_rank(kernel, subspace, rank, **TOL_PASSES[0])
    bound = certified_bound(kernel, margin, lam32, b32)
    for options in TOL_PASSES[1:]:
        # the result's rank is the largest any system needs, and a refinement or a rounding search gains a small
        # factor: with a system far above the threshold this rank is lost, and every missed system moves on
        over = bound.to(torch.float64) / threshold
        missed = (over > 1).nonzero()[:, 0]
        if missed.numel() == 0 or bool((over > REFINE_REACH).any()):
            break
        lam_new, b_new = _fit_rank(kernel[missed], subspace[missed], rank, threshold=threshold[missed], **options)
        bound_new = certified_bound(kernel[missed], margin[missed], lam_new, b_new)
        better = bound_new < bound[missed]
        lam32[missed] = torch.where(better[:, None], lam_new, lam32[missed])
        b32[missed] = torch.where(better[:, None], b_new, b32[missed])
        bound[missed] = torch.where(better, bound_new, bound[missed])
    return lam32, b32, bound


def _reduce_chunk(kernel, margin, exact, ranks, cap, tol):
    """One chunk of systems: for ``tol``, ranks ascend and only the systems that missed it are refitted; a system
    keeps the first fit that meets it (its unused slots stay zero: lam = b = 0)."""
    channels = kernel.shape[0]
    device = kernel.device
    scale = kernel.abs().amax(-1)
    lam_best = torch.zeros(channels, cap, dtype=torch.complex64, device=device)
    b_best = torch.zeros_like(lam_best)
    bound_best = torch.full((channels,), math.inf, dtype=torch.float32, device=device)
    rank_best = torch.zeros(channels, dtype=torch.int64, device=device)
    pending = torch.ones(channels, dtype=torch.bool, device=device)
    subspace, width = None, 0
    for r in ranks:
        rows = pending.nonzero()[:, 0]
        if rows.numel() == 0:
            break
        if exact is not None and r >= exact[0].shape[-1]:
            lam32, b32 = round_poles(exact[0][rows]), exact[1][rows].to(torch.complex64)
            bound = certified_bound(kernel[rows], margin[rows], lam32, b32)
        else:
            if 2 * r > width:  # under tol the sketch widens in powers of two, so ascending ranks share it
                width = 2 * (r + PRUNE_EXTRA)
                width = width if tol is None else 1 << (width - 1).bit_length()
                subspace = leading_subspace(kernel, width)
            lam32, b32, bound = _fit_and_certify(kernel[rows], margin[rows], subspace[rows], r,
                                                 None if tol is None else tol * scale[rows])
        better = bound < bound_best[rows] if tol is not None else torch.ones_like(bound, dtype=torch.bool)
        fitted = lam32.shape[1]
        padded_lam = torch.zeros(rows.numel(), cap, dtype=torch.complex64, device=device)
        padded_b = torch.zeros_like(padded_lam)
        padded_lam[:, :fitted], padded_b[:, :fitted] = lam32, b32
        lam_best[rows] = torch.where(better[:, None], padded_lam, lam_best[rows])
        b_best[rows] = torch.where(better[:, None], padded_b, b_best[rows])
        bound_best[rows] = torch.where(better, bound, bound_best[rows])
        rank_best[rows] = torch.where(better, torch.full_like(rank_best[rows], fitted), rank_best[rows])
        if tol is not None:
            pending = bound_best.to(torch.float64) > tol * scale
    return lam_best, b_best, bound_best, rank_best
