"""complex64 rounding of fitted float64 modes: to the nearest values with the residues refitted, or by a greedy
walk over the rounding lattice where rounding dominates the error (this folder's README, steps 7 and tol)."""

from __future__ import annotations

import math

import torch

from .fit import _norm, fit_residues, max_error, model_kernel

ROUNDING_DOMINATED = 2.0  # rounded max error / float64 fit error above which the rounding lattice is searched


def round_poles(lam: torch.Tensor) -> torch.Tensor:
    """complex128 poles with ``|lam| <= 1`` to complex64, pulled in by ``1 - 2^-22`` where rounding put them
    outside the unit disc."""
    lam32 = lam.to(torch.complex64)
    outside = lam32.to(torch.complex128).abs() > 1
    return torch.where(outside, (lam * (1 - 2.0**-22)).to(torch.complex64), lam32)


def round_modes(kernel, lam, is_real, used, refined=None):
    """complex64 modes: the poles rounded (pulled inside the unit disc if rounding pushed them out), then the
    residues refitted in float64 to the rounded poles (which compensates most of the poles' rounding) and
    rounded. ``refined = (b, target)``: the refinement's own residues, rounded as they are, are kept instead
    per system where their ``target`` error is smaller (a least-squares refit would undo an l1 or max
    refinement of the residues). Returns complex64 ``(lam, b)``."""
    lam32 = round_poles(lam)
    lam64 = lam32.to(torch.complex128)
    refit = fit_residues(kernel, lam64, is_real, used)
    b32 = torch.where(used, refit, torch.zeros_like(refit)).to(torch.complex64)
    if refined is not None:
        b_refined, target = refined
        kept = torch.where(used, b_refined, torch.zeros_like(b_refined)).to(torch.complex64)
        length = kernel.shape[1]
        pick = (_norm(kernel - model_kernel(lam64, kept.to(torch.complex128), length), target)
                < _norm(kernel - model_kernel(lam64, b32.to(torch.complex128), length), target))
        b32 = torch.where(pick[:, None], kept, b32)
    return lam32, b32


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


def search_rounding(kernel, lam, is_real, used, threshold=None, refined=None):
    """complex64 modes by a greedy walk over the rounding lattice, for systems whose nearest rounding costs more
    than the fit (clustered poles with large cancelling residues amplify a pole's rounding by ``j |b|``): slot by
    slot, the pole takes the corner of its float32 cell that, with the residues refitted, gives the smallest max
    error; then each residue takes its best corner. Only systems whose nearest rounding at least doubles the
    float64 fit's max error (and, given a ``threshold [C]``, whose fit is below it) are searched, and the
    result is kept where it beats the nearest rounding (``refined``: as in :func:`round_modes`).
    Returns complex64 ``(lam, b)``."""
    nearest = round_modes(kernel, lam, is_real, used, refined)
    nearest_error = max_error(kernel, *nearest)
    fit_error = max_error(kernel, lam, fit_residues(kernel, lam, is_real, used))
    dominated = nearest_error > ROUNDING_DOMINATED * fit_error
    if threshold is not None:  # rounding cannot bring a fit below the threshold it is above in float64
        dominated &= fit_error <= threshold
    dominated = dominated.nonzero()[:, 0]
    if dominated.numel() == 0:
        return nearest
    kernel, lam, is_real, used = kernel[dominated], lam[dominated], is_real[dominated], used[dominated]
    rows = torch.arange(kernel.shape[0], device=kernel.device)
    current = lam.clone()
    for slot in range(lam.shape[1]):
        errors, options = [], []
        for corner in _lattice_candidates(lam[:, slot], is_real[:, slot]):
            trial = current.clone()
            trial[:, slot] = corner.to(torch.complex128)
            b = fit_residues(kernel, trial, is_real, used)
            errors.append(max_error(kernel, trial.to(torch.complex64), torch.where(used, b, 0).to(torch.complex64)))
            options.append(trial[:, slot])
        best = torch.stack(errors, 1).argmin(1)
        current[:, slot] = torch.stack(options, 1)[rows, best]
    lam32 = current.to(torch.complex64)
    b64 = fit_residues(kernel, current, is_real, used)
    b32 = torch.where(used, b64, 0).to(torch.complex64)
    for slot in range(lam.shape[1]):
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
