"""The reduction driver: the ladder of ranks ``1, 2, ...``, at each rank in channel chunks the float64 fit
(``fit.py``), its complex64 rounding (``rounding.py``) and the certified bound (``certificate.py``), each system
keeping the best certified fit of any rank so far."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .certificate import certified_bound, evaluation_margin
from .contract import Reduction
from .fit import PRUNE_EXTRA, REAL_POLE, fit_rank, leading_subspace
from .modal import Poles, hankel_size, stabilise
from .rounding import round_fit

CHUNK_BYTES = 1 << 28  # working set per channel chunk (complex128 powers and the Jacobian)


def _chunks(channels: int, length: int, rank: int) -> Iterator[slice]:
    per_channel = 16 * length * (6 * rank + 8) + 8 * length * 8 * rank
    size = max(1, min(channels, CHUNK_BYTES // max(per_channel, 1)))
    for start in range(0, channels, size):
        yield slice(start, min(channels, start + size))


def reduce_kernel(kernel: torch.Tensor, rank: int | None, tol: float | None, *, max_rank: int,
                  scale_terms: torch.Tensor, terms: int, exact: tuple[torch.Tensor, torch.Tensor] | None = None,
                  fn_name: str = "reduce_ssm") -> Reduction:
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
            interpolate every lag, or the exact modes).
        scale_terms: `[...]` float64 sum of the magnitudes of the terms the kernel's own float64 evaluation added
            (``sum |b|`` of the original modes, ``max |t|`` for taps), and ``terms`` their number: the
            certificate's margin for the kernel.
        exact: ``(lam, b)`` complex128 `[..., N]` realising the kernel exactly (the input modes, or the taps'
            ETSC modes under ``tol``): their rounding is the candidate at ranks ``>= N``.
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
    top = rank if rank is not None else min(max_rank, max(hankel_size(length) + 1, n_exact))
    lam = torch.zeros(channels, top, dtype=torch.complex64, device=flat.device)
    b = torch.zeros_like(lam)
    bound = torch.full((channels,), math.inf, dtype=torch.float32, device=flat.device)
    threshold = None if tol is None else tol * flat.abs().amax(-1)
    fits: tuple[Poles, torch.Tensor] | None = None  # every system's float64 fit of the previous rank
    pending = torch.arange(channels, device=flat.device)
    for r in range(1, top + 1):
        if exact_flat is not None and r >= n_exact:
            rows = pending
            # the exact modes rounded, their residues refitted to the rounded poles where that is better
            modes = stabilise(exact_flat[0][rows])
            real = modes.imag.abs() <= REAL_POLE * modes.abs()
            lam_r, b_r = round_fit(flat[rows], Poles(modes, real, torch.ones_like(real)), exact_flat[1][rows])
            _keep_better(lam, b, bound, rows, lam_r, b_r, certified_bound(flat[rows], margin[rows], lam_r, b_r))
        else:
            fits = _climb(flat, margin, r, pending, fits, (lam, b, bound), threshold)
        if threshold is not None:
            pending = (bound.to(torch.float64) > threshold).nonzero()[:, 0]
            if pending.numel() == 0:
                break
    if tol is not None and pending.numel() > 0:
        scale = flat.abs().amax(-1)
        worst = float((bound.to(torch.float64) / scale.clamp_min(1e-300)).max())
        raise ValueError(
            f"{fn_name}: tol = {tol:g} is not met by any rank up to {top} in every system "
            f"(best relative bound {worst:.3g}); raise tol or max_rank, or use the exact conversion"
        )
    used = (lam != 0) | (b != 0)
    last = (used * torch.arange(1, top + 1, device=used.device)).amax(-1) if channels else torch.ones(1)
    width = top if tol is None else max(1, int(last.max()))
    return Reduction(lam[:, :width].reshape(*batch, width), b[:, :width].reshape(*batch, width),
                     bound.reshape(batch))


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
