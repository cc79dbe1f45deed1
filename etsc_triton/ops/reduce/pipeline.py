"""The reduction driver: the ladder of ranks ``1, 2, ...``, at each rank in channel chunks the float64 fit
(``fit.py``), its complex64 rounding (``rounding.py``) and the certified bound (``certificate.py``), each system
keeping the best certified fit of any rank so far."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from .certificate import certified_bound, evaluation_margin
from .contract import MAX_RANK, Reduction
from .fit import PRUNE_EXTRA, REAL_POLE, fit_rank, leading_subspace
from .modal import Poles, fit_residues, hankel_size, stabilise
from .rounding import round_fit, round_poles

# residues complex128 `[C, N]` of the exact modes of the systems ``rows`` for their poles rounded to ``lam32``
ExactResidues = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CHUNK_BYTES = 1 << 28  # working set per channel chunk (complex128 powers and the Jacobian)


def _chunks(channels: int, length: int, rank: int) -> Iterator[slice]:
    per_channel = 16 * length * (6 * rank + 8) + 8 * length * 8 * rank
    size = max(1, min(channels, CHUNK_BYTES // max(per_channel, 1)))
    for start in range(0, channels, size):
        yield slice(start, min(channels, start + size))


def reduce_kernel(kernel: torch.Tensor, rank: int | None, tol: float | None, *, max_rank: int | None,
                  scale_terms: torch.Tensor, terms: int, exact: tuple[torch.Tensor, torch.Tensor] | None = None,
                  exact_residues: ExactResidues | None = None, fn_name: str = "reduce_ssm") -> Reduction:
    """Reduce float64 kernels `[..., L]` to ``rank`` folded modes, or per system to the smallest rank whose bound
    meets ``tol``.

    Every system climbs the same ladder of ranks ``1, 2, ...`` whichever is asked, and keeps at each rank the best
    certified fit of any rank so far (a larger rank's spare slots unused): so its bound never grows with the
    rank, and ``tol`` stops each system at the rank where ``rank=`` would first certify it.

    Args:
        kernel: `[..., L]` float64, the kernel to approximate over lags ``0 .. L-1``.
        rank: folded modes, or None with ``tol``.
        tol: relative tolerance ``bound <= tol * max_j |K_j|`` per system, or None.
        max_rank: with ``tol``, the highest rank climbed (and at most ``ceil(L/2) + 1``, or N: enough slots to
            interpolate every lag, or the exact modes). None: fitted ranks up to ``MAX_RANK``, then for the
            systems none of them certifies, the exact modes whatever their number N.
        scale_terms: `[...]` float64 sum of the magnitudes of the terms the kernel's own float64 evaluation added
            (``sum |b|`` of the original modes, ``max |t|`` for taps), and ``terms`` their number: the
            certificate's margin for the kernel.
        exact: ``(lam, b)`` complex128 `[..., N]` realising the kernel exactly (the input modes, or the taps'
            ETSC modes under ``tol``): their rounding is the candidate at ranks ``>= N``.
        exact_residues: ``(rows, lam32) -> b`` complex128: residues of the exact modes of the systems ``rows``
            for their poles rounded to ``lam32``, by a cheap rule of their own (the taps' ETSC modes: a
            first-order correction by one FFT); a further candidate where N > MAX_RANK.
        fn_name: the public function named in errors.

    Returns:
        :class:`Reduction`: complex64 `[..., width]` (twice), float32 `[...]`; width is ``rank``, or under ``tol``
        the largest rank a system needed (the others padded with unused slots).
    """
    batch = kernel.shape[:-1]
    length = kernel.shape[-1]
    flat = kernel.reshape(-1, length)
    channels = flat.shape[0]
    margin = evaluation_margin(scale_terms.reshape(-1).to(torch.float64), length, terms)
    exact_flat = None if exact is None else (exact[0].reshape(channels, -1), exact[1].reshape(channels, -1))
    n_exact = 0 if exact is None else exact[0].shape[-1]
    cap = MAX_RANK if max_rank is None else max_rank
    top = rank if rank is not None else min(cap, max(hankel_size(length) + 1, n_exact))
    lam = torch.zeros(channels, top, dtype=torch.complex64, device=flat.device)
    b = torch.zeros_like(lam)
    bound = torch.full((channels,), math.inf, dtype=torch.float32, device=flat.device)
    threshold = None if tol is None else tol * flat.abs().amax(-1)
    fits: tuple[Poles, torch.Tensor] | None = None  # every system's float64 fit of the previous rank
    pending = torch.arange(channels, device=flat.device)
    for r in range(1, top + 1):
        if exact_flat is not None and r >= n_exact:
            # the exact modes rounded, their residues refitted to the rounded poles where that is better; a
            # higher rung would try the same candidate again
            _keep_better(lam, b, bound, pending, *_round_exact(flat, margin, pending, exact_flat, None, threshold))
        else:
            fits = _climb(flat, margin, r, pending, fits, (lam, b, bound), threshold)
        if threshold is not None:
            pending = (bound.to(torch.float64) > threshold).nonzero()[:, 0]
        if pending.numel() == 0 or r >= n_exact > 0:
            break
    if (threshold is not None and max_rank is None and exact_flat is not None and n_exact > top
            and pending.numel() > 0):
        # no fitted rank certifies these systems: their exact modes, however many, answer the tolerance
        spare = torch.zeros(channels, n_exact - top, dtype=lam.dtype, device=lam.device)
        lam, b = torch.cat([lam, spare], 1), torch.cat([b, spare.clone()], 1)
        top = n_exact
        _keep_better(lam, b, bound, pending,
                     *_round_exact(flat, margin, pending, exact_flat, exact_residues, threshold))
        pending = (bound.to(torch.float64) > threshold).nonzero()[:, 0]
    if tol is not None and pending.numel() > 0:
        scale = flat.abs().amax(-1)
        worst = float((bound.to(torch.float64) / scale.clamp_min(1e-300)).max())
        if max_rank is None:
            raise ValueError(
                f"{fn_name}: tol = {tol:g} is not met by any rank up to {top} in every system, the exact modes "
                f"rounded to complex64 included (best relative bound {worst:.3g}): below what complex64 modes "
                "resolve of this kernel; raise tol"
            )
        raise ValueError(
            f"{fn_name}: tol = {tol:g} is not met by any rank up to {top} in every system "
            f"(best relative bound {worst:.3g}); raise tol or max_rank, or use the exact conversion"
        )
    used = (lam != 0) | (b != 0)
    last = (used * torch.arange(1, top + 1, device=used.device)).amax(-1) if channels else torch.ones(1)
    width = top if tol is None else max(1, int(last.max()))
    return Reduction(lam[:, :width].reshape(*batch, width), b[:, :width].reshape(*batch, width),
                     bound.reshape(batch))


def _round_exact(kernel: torch.Tensor, margin: torch.Tensor, rows: torch.Tensor,
                 exact: tuple[torch.Tensor, torch.Tensor], exact_residues: ExactResidues | None,
                 threshold: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact modes of the systems ``rows`` in complex64 and their certified bound: ``(lam, b, bound)``.

    Up to ``MAX_RANK`` modes, the rounding of a fit (:func:`round_fit`: residues refitted, max-error residues,
    the lattice search). Beyond, what stays cheap at a thousand modes (the lattice search walks the slots one by
    one and refits at each; the max-error residues are a dozen refits, and a refit is a QR of `[L, 2N]`): per
    system the best of the residues as they are and ``exact_residues`` (both for the nearest complex64 poles),
    and a least-squares refit only where neither meets the ``threshold``. Real poles get ``Im lam = Im b = 0``.
    """
    modes = stabilise(exact[0][rows])
    real = modes.imag.abs() <= REAL_POLE * modes.abs()
    if modes.shape[1] <= MAX_RANK:
        lam32, b32 = round_fit(kernel[rows], Poles(modes, real, torch.ones_like(real)), exact[1][rows])
        return lam32, b32, certified_bound(kernel[rows], margin[rows], lam32, b32)
    lam32 = round_poles(modes)
    lam32 = torch.where(real, lam32.real.to(lam32.dtype), lam32)
    candidates = [exact[1][rows]]
    if exact_residues is not None:
        candidates.append(exact_residues(rows, lam32))
    best: tuple[torch.Tensor, torch.Tensor] | None = None
    for candidate in candidates:
        b32 = torch.where(real, candidate.real.to(candidate.dtype), candidate).to(torch.complex64)
        bound = certified_bound(kernel[rows], margin[rows], lam32, b32)
        if best is None:
            best = (b32, bound)
        else:
            better = bound < best[1]
            best = (torch.where(better[:, None], b32, best[0]), torch.where(better, bound, best[1]))
    assert best is not None
    b32, bound = best
    missing = (torch.ones_like(bound, dtype=torch.bool) if threshold is None
               else bound.to(torch.float64) > threshold[rows]).nonzero()[:, 0]
    poles = Poles(lam32.to(torch.complex128), real, torch.ones_like(real))
    for part in _chunks(missing.numel(), kernel.shape[1], modes.shape[1]):
        chunk = missing[part]
        refit = fit_residues(kernel[rows[chunk]], poles.rows(chunk)).to(torch.complex64)
        refit_bound = certified_bound(kernel[rows[chunk]], margin[rows[chunk]], lam32[chunk], refit)
        better = refit_bound < bound[chunk]
        b32[chunk] = torch.where(better[:, None], refit, b32[chunk])
        bound[chunk] = torch.where(better, refit_bound, bound[chunk])
    return lam32, b32, bound


def _climb(kernel: torch.Tensor, margin: torch.Tensor, rank: int, rows: torch.Tensor,
           fits: tuple[Poles, torch.Tensor] | None, best: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
           threshold: torch.Tensor | None) -> tuple[Poles, torch.Tensor]:
    """One rung of the ladder for the systems ``rows``, in chunks: the plain fit of ``rank`` modes, rounded and
    certified, then the refined fit (from the Hankel subspace and the fit of ``rank - 1``), rounded and certified;
    ``best = (lam, b, bound)`` takes each where it is better (in place). Under a tolerance (``threshold [C]``)
    the refined fit is skipped where the plain one already meets it: ``rank=`` would certify it at this rung
    too, as its bound is the smaller of the two. Returns every system's float64 fit of this rank (the refined
    one where it was made; others' unused)."""
    channels, length = kernel.shape
    poles_all = Poles.unused(channels, rank, kernel.device)
    b_all = torch.zeros(channels, rank, dtype=torch.complex128, device=kernel.device)
    for part in _chunks(rows.numel(), length, rank):
        chunk = rows[part]
        subspace = leading_subspace(kernel[chunk], 2 * (rank + PRUNE_EXTRA))
        for refined in (False, True):
            if refined and threshold is not None:
                keep = best[2][chunk].to(torch.float64) > threshold[chunk]
                chunk, subspace = chunk[keep], subspace[keep]
                if chunk.numel() == 0:
                    break
            previous = None if fits is None else (fits[0].rows(chunk), fits[1][chunk])
            poles, b64 = fit_rank(kernel[chunk], subspace, rank, previous, refined=refined)
            poles_all.put(chunk, poles)
            b_all[chunk] = b64
            lam32, b32 = round_fit(kernel[chunk], poles, b64)
            _keep_better(*best, chunk, lam32, b32, certified_bound(kernel[chunk], margin[chunk], lam32, b32))
    return poles_all, b_all


def _keep_better(lam: torch.Tensor, b: torch.Tensor, bound: torch.Tensor, rows: torch.Tensor, lam_new: torch.Tensor,
                 b_new: torch.Tensor, bound_new: torch.Tensor) -> None:
    """Where ``bound_new`` is smaller, the systems ``rows`` take the new modes (their later slots unused)."""
    better = bound_new < bound[rows]
    slots = lam_new.shape[1]
    padded_lam = torch.zeros(rows.numel(), lam.shape[1], dtype=lam.dtype, device=lam.device)
    padded_b = torch.zeros_like(padded_lam)
    padded_lam[:, :slots], padded_b[:, :slots] = lam_new, b_new
    lam[rows] = torch.where(better[:, None], padded_lam, lam[rows])
    b[rows] = torch.where(better[:, None], padded_b, b[rows])
    bound[rows] = torch.where(better, bound_new, bound[rows])
