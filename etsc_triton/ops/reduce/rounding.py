"""complex64 rounding of fitted float64 modes: to the nearest values with the residues refitted, or by a greedy
walk over the rounding lattice where rounding dominates the error (this folder's README, steps 7 and tol)."""

from __future__ import annotations

import math

import torch

from .modal import RESOLUTION, Poles, basis, error_norm, fit_residues, max_error, stabilise, weighted_lstsq

ROUNDING_SIGNIFICANT = 1.25  # rounded / float64 max error above which the residues are refitted for the max error
ROUNDING_DOMINATED = 2.0  # rounded max error / float64 fit error above which the rounding lattice is searched
MINIMAX_STEPS = 12  # Lawson steps of the max-error residue fit to the rounded poles


def round_poles(lam: torch.Tensor) -> torch.Tensor:
    """complex128 poles to complex64 inside the closed unit disc: poles outside are projected onto the circle,
    and those that rounding put outside are pulled in by ``1 - 2^-22``."""
    lam = stabilise(lam)
    lam32 = lam.to(torch.complex64)
    outside = lam32.to(torch.complex128).abs() > 1
    return torch.where(outside, (lam * (1 - 2.0**-22)).to(torch.complex64), lam32)


def round_modes(kernel: torch.Tensor, poles: Poles,
                refined: tuple[torch.Tensor, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """complex64 modes: the poles rounded (:func:`round_poles`), then the residues refitted in float64 to the
    rounded poles (which compensates most of the poles' rounding) and rounded. ``refined = (b, target)``: the
    refinement's own residues, rounded as they are, are kept instead per system where their ``target`` error is
    smaller (a least-squares refit would undo an l1 or max refinement of the residues). Returns complex64
    ``(lam, b)`` `[C, r]`."""
    lam32 = round_poles(poles.lam)
    rounded = Poles(lam32.to(torch.complex128), poles.is_real, poles.used)
    refit = fit_residues(kernel, rounded)
    b32 = torch.where(poles.used, refit, torch.zeros_like(refit)).to(torch.complex64)
    if refined is not None:
        b_refined, target = refined
        kept = torch.where(poles.used, b_refined, torch.zeros_like(b_refined)).to(torch.complex64)
        pick = error_norm(kernel, lam32, kept, target) < error_norm(kernel, lam32, b32, target)
        b32 = torch.where(pick[:, None], kept, b32)
    return lam32, b32


def minimax_residues(kernel: torch.Tensor, poles: Poles, steps: int = MINIMAX_STEPS) -> torch.Tensor:
    """Residues complex128 `[C, r]` that lower the max error for fixed poles: Lawson's iteration (weighted least
    squares, weights ``w_j <- w_j |e_j|``), the iterate with the smallest max error per system."""
    columns, _ = basis(poles, kernel.shape[1])
    weight = torch.ones_like(kernel)
    best, best_error = None, None
    for _ in range(steps):
        coef = weighted_lstsq(columns, kernel, weight.sqrt(), 0.0)
        error = kernel - (columns @ coef[:, :, None])[:, :, 0]
        peak = error.abs().amax(-1)
        if best is None or best_error is None:
            best, best_error = coef, peak
        else:
            better = peak < best_error
            best, best_error = torch.where(better[:, None], coef, best), torch.minimum(peak, best_error)
        weight = weight * error.abs()
        weight = (weight / weight.sum(-1, keepdim=True).clamp_min(1e-300)).clamp_min(1e-12)
    assert best is not None
    r = poles.slots
    return torch.complex(best[:, :r], -best[:, r:])


def round_fit(kernel: torch.Tensor, poles: Poles, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """complex64 modes for a float64 fit: the poles rounded (:func:`round_poles`) and, per system, the residues
    with the smaller max error of the fit's own (rounded) and the least-squares ones for the rounded poles
    (refitting compensates most of the poles' rounding). Where that costs more than ``ROUNDING_SIGNIFICANT`` times
    the float64 fit's error and more than the complex64 resolution of the kernel, the max-error residues for the
    rounded poles (:func:`minimax_residues`) are tried, and where it costs more than ``ROUNDING_DOMINATED`` times,
    the lattice search of :func:`search_rounding`; each is kept where it does better. Returns complex64
    ``(lam, b)`` `[C, r]`."""
    lam32 = round_poles(poles.lam)
    rounded = Poles(lam32.to(torch.complex128), poles.is_real, poles.used)
    b32, error = _best_residues(kernel, lam32, poles.used, b, fit_residues(kernel, rounded))
    fitted = max_error(kernel, poles.lam, b)
    floor = RESOLUTION * kernel.abs().amax(-1)
    rows = ((error > ROUNDING_SIGNIFICANT * fitted) & (error > floor)).nonzero()[:, 0]
    if rows.numel() > 0:
        b_rows, error_rows = _best_residues(kernel[rows], lam32[rows], poles.used[rows], b32[rows],
                                            minimax_residues(kernel[rows], rounded.rows(rows)))
        b32[rows], error[rows] = b_rows, error_rows
    rows = ((error > ROUNDING_DOMINATED * fitted) & (error > floor)).nonzero()[:, 0]
    if rows.numel() > 0:
        lam_s, b_s = search_rounding(kernel[rows], poles.rows(rows))
        keep = max_error(kernel[rows], lam_s, b_s) < error[rows]
        lam32[rows] = torch.where(keep[:, None], lam_s, lam32[rows])
        b32[rows] = torch.where(keep[:, None], b_s, b32[rows])
    return lam32, b32


def _best_residues(kernel: torch.Tensor, lam32: torch.Tensor, used: torch.Tensor,
                   *candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per system, the candidate residues (complex128 or complex64 `[C, r]`, rounded to complex64) with the
    smallest max error for the poles ``lam32``, and that error."""
    best, best_error = None, None
    for candidate in candidates:
        c32 = torch.where(used, candidate.to(torch.complex128), 0).to(torch.complex64)
        c_error = max_error(kernel, lam32, c32)
        if best is None or best_error is None:
            best, best_error = c32, c_error
        else:
            better = c_error < best_error
            best, best_error = torch.where(better[:, None], c32, best), torch.minimum(c_error, best_error)
    assert best is not None and best_error is not None
    return best, best_error


def _float32_brackets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two float32 neighbours ``lo <= x <= hi`` of float64 values (equal when x is a float32 value)."""
    x32 = x.to(torch.float32)
    lo = torch.where(x32.to(torch.float64) <= x, x32, torch.nextafter(x32, torch.full_like(x32, -math.inf)))
    hi = torch.where(lo.to(torch.float64) == x, lo, torch.nextafter(lo, torch.full_like(lo, math.inf)))
    return lo, hi


def _lattice_candidates(z: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
    """The complex64 values around complex128 ``z [C]``: the four corners of its float32 cell (two when the
    slot is real)."""
    re_lo, re_hi = _float32_brackets(z.real)
    im_lo, im_hi = _float32_brackets(z.imag)
    zero = torch.zeros_like(im_lo)
    return [torch.complex(re, torch.where(real, zero, im)) for re in (re_lo, re_hi) for im in (im_lo, im_hi)]


def search_rounding(kernel: torch.Tensor, poles: Poles, threshold: torch.Tensor | None = None,
                    refined: tuple[torch.Tensor, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """complex64 modes by a greedy walk over the rounding lattice, for systems whose nearest rounding costs more
    than the fit (clustered poles with large cancelling residues amplify a pole's rounding by ``j |b|``): slot by
    slot, the pole takes the corner of its float32 cell that, with the residues refitted, gives the smallest max
    error; then each residue takes its best corner. Only systems whose nearest rounding at least doubles the
    float64 fit's max error (and, given a ``threshold [C]``, whose fit is below it) are searched, and the
    result is kept where it beats the nearest rounding (``refined``: as in :func:`round_modes`).
    Returns complex64 ``(lam, b)`` `[C, r]`."""
    nearest = round_modes(kernel, poles, refined)
    nearest_error = max_error(kernel, *nearest)
    fit_error = max_error(kernel, poles.lam, fit_residues(kernel, poles))
    dominated = nearest_error > ROUNDING_DOMINATED * fit_error
    if threshold is not None:  # rounding cannot bring a fit below the threshold it is above in float64
        dominated &= fit_error <= threshold
    dominated = dominated.nonzero()[:, 0]
    if dominated.numel() == 0:
        return nearest
    kernel, poles = kernel[dominated], poles.rows(dominated)
    used, is_real = poles.used, poles.is_real
    rows = torch.arange(kernel.shape[0], device=kernel.device)
    current = poles.lam.clone()
    for slot in range(poles.slots):
        errors, options = [], []
        for corner in _lattice_candidates(poles.lam[:, slot], is_real[:, slot]):
            trial = current.clone()
            trial[:, slot] = corner.to(torch.complex128)
            b = fit_residues(kernel, Poles(trial, is_real, used))
            error = max_error(kernel, trial.to(torch.complex64), torch.where(used, b, 0).to(torch.complex64))
            # a corner outside the unit disc is no candidate (the corner towards 0 of a pole inside is inside)
            errors.append(torch.where(corner.to(torch.complex128).abs() > 1, math.inf, error))
            options.append(trial[:, slot])
        best = torch.stack(errors, 1).argmin(1)
        current[:, slot] = torch.stack(options, 1)[rows, best]
    lam32 = current.to(torch.complex64)
    b64 = fit_residues(kernel, Poles(current, is_real, used))
    b32 = torch.where(used, b64, 0).to(torch.complex64)
    for slot in range(poles.slots):
        errors, options = [], []
        for corner in _lattice_candidates(b64[:, slot], is_real[:, slot] | ~used[:, slot]):
            trial = b32.clone()
            trial[:, slot] = torch.where(used[:, slot], corner, 0)
            errors.append(max_error(kernel, lam32, trial))
            options.append(trial[:, slot])
        best = torch.stack(errors, 1).argmin(1)
        b32[:, slot] = torch.stack(options, 1)[rows, best]
    lam_out, b_out = nearest[0].clone(), nearest[1].clone()
    keep = (max_error(kernel, lam32, b32) < nearest_error[dominated])[:, None]
    lam_out[dominated] = torch.where(keep, lam32, lam_out[dominated])
    b_out[dominated] = torch.where(keep, b32, b_out[dominated])
    return lam_out, b_out
