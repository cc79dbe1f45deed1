"""The reduction's fitting stages on float64 kernels, batched over systems (torch; runs where the kernel lives).

kernel `[C, L]` -> leading Hankel subspace (a sketch of spread Hankel columns refined by one FFT Hankel
product, or a dense eigendecomposition for short kernels) -> ERA poles per real order -> conjugate folding into
``rank`` slots (real pole pairs merged when they do not fit) -> least-squares residues -> Levenberg-Marquardt on
poles and residues, first in l2, then iteratively reweighted towards the l1 or max error, from the ERA poles and
from a richer pole set pruned back. The complex64 rounding is ``rounding.py``, the driver (ranks, tolerance,
chunks, the certificate) ``pipeline.py``. Derivation and the reasons in this folder's README.
"""

from __future__ import annotations

import torch

from ..complex import polar_kernel64
from .modal import (
    RESOLUTION,
    Poles,
    basis,
    error_norm,
    fit_residues,
    hankel_size,
    norm,
    stabilise,
    weighted_lstsq,
)

OVERSAMPLE = 8  # extra sketch columns of the range finder
HANKEL_PRODUCTS = 1  # FFT products with H applied to the sketch (subspace iterations; README)
DENSE_HANKEL = 96  # p at or below which the p x p Hankel matrix is decomposed densely
L2_STEPS = 6  # Levenberg-Marquardt steps on the least-squares error
REWEIGHTED_STEPS = 20  # then steps on the target norm (iteratively reweighted)
REAL_POLE = 1e-13  # |Im lam| <= REAL_POLE * |lam|: a real pole (eigenvalues of a real matrix)
STALL = 1e-3  # relative progress below which an accepted refinement step counts as stalled
DAMPING_EXIT = 1.0  # damping (on unit-norm columns) at which rejected steps have become too short to matter
STALL_STEPS = 2  # stalled accepted steps in a row after which a system leaves the batch (until the next stage)
SECOND_START_GAP = 2.0  # l1 error / estimated Hankel bound under which the second refinement start is skipped
PRUNE_CANDIDATES = 8  # slots of least contribution tried at each pruning step
PRUNE_EXTRA = 4  # the second refinement start: ERA poles of rank + PRUNE_EXTRA slots pruned back to rank
REFINE_STAGES = ("l2", "l1", "max")  # l2 to converge, l1 for the Hankel-bound gap, max for the certified error
CHOICE = "max"  # the norm that picks between candidate fits



def _fft_size(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


def _hankel_apply(spectrum: torch.Tensor, x: torch.Tensor, p: int, size: int) -> torch.Tensor:
    """``H x`` for the ``p x p`` Hankel matrices whose rfft'd kernels are ``spectrum [C, size//2+1]``, x given
    as rows `[C, s, p]` (so the FFTs run along contiguous memory): ``(H x)_i = sum_j K_(i+j) x_j`` is entry
    ``i + p - 1`` of the convolution of K with reversed x. Returns rows `[C, s, p]`."""
    xf = torch.fft.rfft(x.flip(-1), n=size, dim=-1)
    return torch.fft.irfft(xf * spectrum[:, None, :], n=size, dim=-1)[..., p - 1 : 2 * p - 1]


def leading_subspace(kernel: torch.Tensor, width: int) -> torch.Tensor:
    """Orthonormal `[C, p, width]` estimate of the leading left singular vectors of the ``p x p`` Hankel
    matrices of ``kernel [C, L]`` (float64), ordered by decreasing singular value.

    ``width + OVERSAMPLE`` columns of H spread evenly over the shifts (free: they are windows of K) sketch its
    range, which ``HANKEL_PRODUCTS`` products with H (FFT) refine; for ``p <= DENSE_HANKEL`` H itself is
    decomposed.
    """
    p = hankel_size(kernel.shape[1])
    width = min(width, p)
    if p <= DENSE_HANKEL:
        values, vectors = torch.linalg.eigh(kernel[:, : 2 * p - 1].unfold(-1, p, 1))
        order = values.abs().argsort(dim=-1, descending=True)[:, :width]
        return torch.gather(vectors, 2, order[:, None, :].expand(-1, p, -1))
    sketch = min(p, width + OVERSAMPLE)
    shifts = torch.linspace(0, p - 1, sketch, device=kernel.device).round().to(torch.int64)
    rows = kernel[:, : 2 * p - 1].unfold(-1, p, 1)[:, shifts]  # column c of H = K[c : c + p]
    size = _fft_size(2 * p - 1)
    spectrum = torch.fft.rfft(kernel[:, : 2 * p - 1], n=size, dim=-1)
    for _ in range(HANKEL_PRODUCTS):
        rows = _hankel_apply(spectrum, torch.linalg.qr(rows.transpose(1, 2)).Q.transpose(1, 2), p, size)
    # H is symmetric, so its range is spanned by the sketch rows; their leading directions from QR and the SVD
    # of the small triangular factor (a batched thin SVD of the tall matrix is several times slower)
    q, r = torch.linalg.qr(rows.transpose(1, 2))
    left, _, _ = torch.linalg.svd(r)
    return q @ left[:, :, :width]


def era_poles(subspace: torch.Tensor, orders: list[int]) -> list[torch.Tensor]:
    """ERA / Kung per order k: the shift-invariance ``U[1:] ~ U[:-1] A`` of the leading k vectors; eigenvalues of A
    (complex128 `[C, k]`). The Gram matrices of the widest order serve every order (their leading blocks)."""
    u = subspace[:, :, : max(orders)]
    upper, lower = u[:, :-1], u[:, 1:]
    gram = upper.transpose(1, 2) @ upper
    cross = upper.transpose(1, 2) @ lower
    return [torch.linalg.eigvals(torch.linalg.solve(gram[:, :k, :k], cross[:, :k, :k])) for k in orders]


def fold_poles(poles: torch.Tensor, slots: int) -> tuple[Poles, torch.Tensor]:
    """Conjugate folding of the poles `[C, k]` of real systems into ``slots`` columns.

    A pair ``lam, conj(lam)`` becomes one slot holding the pole with ``Im > 0``; a real pole takes one slot of
    its own. Returns ``(poles, fits)``: ``fits [C]`` says whether the poles needed at most ``slots`` slots (the
    rest is then unusable); ERA poles outside the unit disc are mirrored inside (:func:`_reflect`).
    """
    tiny = REAL_POLE * poles.abs()
    real = poles.imag.abs() <= tiny
    keep = real | (poles.imag > tiny)
    fits = keep.sum(-1) <= slots
    order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)[:, :slots]
    lam = torch.gather(poles, 1, order)
    used = torch.gather(keep, 1, order)
    is_real = torch.gather(real, 1, order) & used
    lam = torch.where(is_real, lam.real.to(lam.dtype), lam)
    folded = Poles.unused(poles.shape[0], slots, poles.device)
    width = order.shape[-1]
    folded.lam[:, :width] = _reflect(torch.where(used, lam, torch.zeros_like(lam)))
    folded.is_real[:, :width], folded.used[:, :width] = is_real, used
    return folded, fits


def _reflect(lam: torch.Tensor) -> torch.Tensor:
    """ERA poles outside the unit disc mirrored inside, ``lam -> 1 / conj(lam)``: such poles mostly come from the
    noise part of the subspace, and mirrored they decay instead of being pinned to the circle (the refinement
    then moves what matters)."""
    radius = lam.abs()
    return torch.where(radius > 1, lam / radius.clamp_min(1e-300).square(), lam)


def merge_real_pairs(poles: torch.Tensor, slots: int) -> Poles | None:
    """Fold one system's poles `[k]` into ``slots`` by merging the closest real poles pairwise into complex
    slots: ``p1, p2 -> (p1 + p2) / 2 + i |p1 - p2| / 2``, whose conjugate pair spans ``p1^j, p2^j`` to first order
    in their distance (the refinement then moves it). `[1, slots]`, or None when even that does not fit."""
    tiny = REAL_POLE * poles.abs()
    upper = [complex(z) for z in poles[poles.imag > tiny].tolist()]
    real = sorted(float(z.real) for z in poles[poles.imag.abs() <= tiny])
    excess = len(upper) + len(real) - slots
    if excess > len(real) // 2:
        return None
    merged = []
    for _ in range(excess):
        gaps = [real[i + 1] - real[i] for i in range(len(real) - 1)]
        i = min(range(len(gaps)), key=gaps.__getitem__)
        merged.append(complex(0.5 * (real[i] + real[i + 1]), 0.5 * (real[i + 1] - real[i]) + 1e-6))
        real = real[:i] + real[i + 2 :]
    lam = upper + merged + real
    pad = slots - len(lam)
    flags = [False] * (len(upper) + len(merged)) + [True] * len(real) + [False] * pad
    return Poles(_reflect(torch.tensor([lam + [0j] * pad], dtype=torch.complex128)), torch.tensor([flags]),
                 torch.tensor([[True] * len(lam) + [False] * pad]))


def select_poles(subspace: torch.Tensor, rank: int) -> tuple[Poles, Poles, torch.Tensor]:
    """Candidate poles for ``rank`` slots per system: those of the largest ERA order ``k <= 2 rank`` that fold
    into ``rank`` slots, and, for systems whose order-``2 rank`` poles hold too many real ones, those poles with
    real pairs merged (:func:`merge_real_pairs`). Returns ``(poles, merged, has_merged)``, the poles `[C, rank]`,
    ``has_merged [C]`` saying where the merged alternative exists."""
    channels = subspace.shape[0]
    device = subspace.device
    top = min(2 * rank, subspace.shape[2], subspace.shape[1] - 1)
    poles = Poles.unused(channels, rank, device)
    merged = Poles.unused(channels, rank, device)
    has_merged = torch.zeros(channels, dtype=torch.bool, device=device)
    if top < 1:  # one or two lags: a real mode at lam = 0 (K^r_0 = b, zero beyond) is the best single slot
        poles.used[:, 0] = True
        poles.is_real[:, 0] = True
        return poles, merged, has_merged
    done = torch.zeros(channels, dtype=torch.bool, device=device)
    for order, candidates in zip(range(top, 0, -1), era_poles(subspace, list(range(top, 0, -1))), strict=True):
        folded, fits = fold_poles(candidates, rank)
        if order == top:
            for row in (~fits).nonzero()[:, 0].tolist():
                alternative = merge_real_pairs(candidates[row].cpu(), rank)
                if alternative is not None:
                    merged.put(torch.tensor([row], device=device), _to(alternative, device))
                    has_merged[row] = True
        take = fits & ~done
        poles = poles.where(take, folded)
        done |= take
        if bool(done.all()):
            break
    return poles, merged, has_merged


def _to(poles: Poles, device: torch.device) -> Poles:
    return Poles(poles.lam.to(device), poles.is_real.to(device), poles.used.to(device))


def ls_error(kernel: torch.Tensor, poles: Poles) -> torch.Tensor:
    """Squared l2 error `[C]` of the least-squares fit with these poles."""
    return error_norm(kernel, poles.lam, fit_residues(kernel, poles), "l2")


def refine(kernel: torch.Tensor, poles: Poles, b: torch.Tensor,
           stages: tuple[str, ...] = ("l2", "l1")) -> tuple[torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt on poles and residues jointly, stage by stage: ``L2_STEPS`` steps on the l2 error for
    ``"l2"``, ``REWEIGHTED_STEPS`` iteratively reweighted steps for ``"l1"`` (weights ``1 / |e_j|``) or ``"max"``
    (Lawson's multiplicative update ``w_j <- w_j |e_j|``). A step is kept per system only when it lowers that
    system's error in the norm being minimised; a system whose error stalls (``STALL_STEPS`` accepted steps
    running with less than ``STALL`` relative progress, or rejections up to a damping of ``DAMPING_EXIT``) leaves
    the batch until the next stage, so converged systems cost nothing. Returns the refined ``(lam, b)``
    complex128 `[C, r]` (the slots' kinds are kept)."""
    length = kernel.shape[1]
    rank = poles.slots
    lam, b = poles.lam.clone(), b.clone()
    damping = torch.full((kernel.shape[0],), 1e-6, dtype=torch.float64, device=kernel.device)
    stalled = torch.zeros(kernel.shape[0], dtype=torch.int64, device=kernel.device)
    j = torch.arange(length, dtype=torch.float64, device=kernel.device)[None, :, None]
    weight = torch.ones_like(kernel)
    schedule = [stage for stage in stages for _ in range(L2_STEPS if stage == "l2" else REWEIGHTED_STEPS)]
    error = kernel - polar_kernel64(lam, b, length)
    active = torch.arange(kernel.shape[0], device=kernel.device)
    for stage_index, stage in enumerate(schedule):
        if stage_index > 0 and stage != schedule[stage_index - 1]:
            damping.fill_(1e-6)
            stalled.zero_()
            active = torch.arange(kernel.shape[0], device=kernel.device)
        if active.numel() == 0:
            continue
        err_a, lam_a, b_a = error[active], lam[active], b[active]
        used_a, complex_a = poles.used[active], poles.is_complex[active]
        if stage == "l1":
            scale = err_a.abs().amax(-1, keepdim=True)
            weight[active] = 1.0 / err_a.abs().clamp_min(1e-6 * scale + 1e-300)
        elif stage == "max":
            w = weight[active] * err_a.abs()
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
            weight[active] = w.clamp_min(1e-8 * w.amax(-1, keepdim=True))
        columns, pw = basis(Poles(lam_a, poles.is_real[active], used_a), length)
        # derivative of lam^j: j lam^(j-1) = j lam^j / lam (lam = 0 only in unused slots, masked)
        dpw = j * pw / torch.where(lam_a.abs() > 0, lam_a, torch.ones_like(lam_a))[:, None, :]
        alpha, beta = b_a.real, -b_a.imag
        d_re = alpha[:, None, :] * dpw.real + beta[:, None, :] * dpw.imag
        d_im = -alpha[:, None, :] * dpw.imag + beta[:, None, :] * dpw.real
        jac = torch.cat([columns, d_re * used_a[:, None, :], d_im * complex_a[:, None, :]], dim=2)
        sqrt_w = None if stage == "l2" else weight[active].sqrt()
        delta = weighted_lstsq(jac, err_a, sqrt_w, damping[active])
        new_b = b_a + torch.complex(delta[:, :rank], -delta[:, rank : 2 * rank])
        new_lam = stabilise(lam_a + torch.complex(delta[:, 2 * rank : 3 * rank], delta[:, 3 * rank :]))
        new_error = kernel[active] - polar_kernel64(new_lam, new_b, length)
        old_norm, new_norm = norm(err_a, stage), norm(new_error, stage)
        better = new_norm < old_norm
        lam[active] = torch.where(better[:, None], new_lam, lam_a)
        b[active] = torch.where(better[:, None], new_b, b_a)
        error[active] = torch.where(better[:, None], new_error, err_a)
        damping[active] = torch.where(better, damping[active] / 4, damping[active] * 8).clamp(1e-12, 1e6)
        # a rejected step only raises the damping; an accepted one either progresses or counts as stalled
        count = stalled[active]
        count = torch.where(better, torch.where(new_norm < (1 - STALL) * old_norm, 0, count + 1), count)
        stalled[active] = torch.where(damping[active] >= DAMPING_EXIT, STALL_STEPS, count)
        active = active[stalled[active] < STALL_STEPS]
    return lam, b


def prune_poles(kernel: torch.Tensor, poles: Poles, slots: int) -> Poles:
    """Greedy backward elimination: drop, one at a time, the slot whose removal (residues refitted by least
    squares) raises the l2 error least, until ``slots`` remain. Only the ``PRUNE_CANDIDATES`` slots whose modes
    contribute least to the kernel are tried (the l2 norm of ``Re b lam^j`` over the horizon). `[C, m]` ->
    `[C, slots]`."""
    arange = torch.arange(kernel.shape[0], device=kernel.device)
    while poles.slots > slots:
        b = fit_residues(kernel, poles)
        _, powers = basis(poles, kernel.shape[1])
        contribution = (powers * b[:, None, :]).real.square().sum(1)
        contribution = torch.where(poles.used, contribution, torch.full_like(contribution, -1.0))
        candidates = contribution.argsort(dim=1)[:, :PRUNE_CANDIDATES]
        errors = torch.stack([ls_error(kernel, poles.without(candidates[:, c])) for c in range(candidates.shape[1])],
                             1)
        poles = poles.without(candidates[arange, errors.argmin(1)])
    return poles


def hankel_gain(kernel: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``||H u||`` `[C]` for unit vectors ``vectors [C, p]`` (one FFT Hankel product): for the subspace's
    direction ``2 rank + 1``, an estimate of ``sigma_(2 rank + 1)``, the l1 lower bound at ``rank``."""
    p = vectors.shape[1]
    size = _fft_size(2 * p - 1)
    spectrum = torch.fft.rfft(kernel[:, : 2 * p - 1], n=size, dim=-1)
    return _hankel_apply(spectrum, vectors[:, None, :], p, size)[:, 0].norm(dim=-1)


def _refine_starts(kernel: torch.Tensor, subspace: torch.Tensor, start: Poles, b: torch.Tensor) -> tuple[Poles,
                                                                                                      torch.Tensor]:
    """Refine the ERA start and, where it may gain, a second start: the ERA poles of ``PRUNE_EXTRA`` more slots
    pruned back to the rank (under-modelled kernels: the best subset of a richer pole set often beats the poles
    of the truncated subspace); per system the one with the smaller max error. Systems whose first fit has an l1
    error within ``SECOND_START_GAP`` of the lower bound's estimate skip the second start (it cannot gain more
    than that). Returns the poles and their refined float64 residues."""
    rank = start.slots
    lam, b = refine(kernel, start, b, REFINE_STAGES)
    poles = Poles(lam, start.is_real, start.used)
    extra = min(PRUNE_EXTRA, subspace.shape[2] // 2 - rank)
    if extra <= 0:
        return poles, b
    rows = (error_norm(kernel, lam, b, "l1") > SECOND_START_GAP * hankel_gain(kernel, subspace[:, :, 2 * rank]))
    rows = rows.nonzero()[:, 0]
    if rows.numel() == 0:
        return poles, b
    kernel_s = kernel[rows]
    wide, _, _ = select_poles(subspace[rows], rank + extra)
    pruned = prune_poles(kernel_s, wide, rank)
    lam2, b2 = refine(kernel_s, pruned, fit_residues(kernel_s, pruned), REFINE_STAGES)
    pick = error_norm(kernel_s, lam2, b2, CHOICE) < error_norm(kernel_s, lam[rows], b[rows], CHOICE)
    poles.put(rows, poles.rows(rows).where(pick, Poles(lam2, pruned.is_real, pruned.used)))
    b[rows] = torch.where(pick[:, None], b2, b[rows])
    return poles, b


def _era_fit(kernel: torch.Tensor, subspace: torch.Tensor, rank: int, refined: bool) -> tuple[Poles, torch.Tensor]:
    """``rank`` folded modes from the kernels' Hankel subspace: the ERA candidates of :func:`select_poles` (per
    system the one with the smaller least-squares error), their least-squares residues, and with ``refined``, for
    systems above the complex64 resolution of their kernel, the refinement of :func:`_refine_starts`."""
    poles, merged, has_merged = select_poles(subspace, rank)
    if bool(has_merged.any()):  # keep, per system, the candidate with the smaller least-squares error
        rows = has_merged.nonzero()[:, 0]
        kernel_m = kernel[rows]
        pick = ls_error(kernel_m, merged.rows(rows)) < ls_error(kernel_m, poles.rows(rows))
        poles.put(rows, poles.rows(rows).where(pick, merged.rows(rows)))
    b = fit_residues(kernel, poles)
    if not refined:
        return poles, b
    # a fit already below the complex64 resolution of the kernel gains nothing from moving the poles
    rows = (error_norm(kernel, poles.lam, b, "max") > RESOLUTION * kernel.abs().amax(-1)).nonzero()[:, 0]
    if rows.numel() > 0:
        better, b_refined = _refine_starts(kernel[rows], subspace[rows], poles.rows(rows), b[rows])
        poles.put(rows, better)
        b[rows] = b_refined
    return poles, b


def _extended_fit(kernel: torch.Tensor, previous: Poles, b: torch.Tensor) -> tuple[Poles, torch.Tensor]:
    """The previous rank's fit with one slot more: the pole of the one-slot ERA fit of its residual kernel is
    added, the residues solved by least squares, and the whole refined (systems above the complex64 resolution
    only)."""
    residual = kernel - polar_kernel64(previous.lam, b, kernel.shape[1])
    new, _, _ = select_poles(leading_subspace(residual, 2 * (1 + PRUNE_EXTRA)), 1)
    poles = Poles(torch.cat([previous.lam, new.lam], 1), torch.cat([previous.is_real, new.is_real], 1),
                  torch.cat([previous.used, new.used], 1))
    b = fit_residues(kernel, poles)
    rows = (error_norm(kernel, poles.lam, b, "max") > RESOLUTION * kernel.abs().amax(-1)).nonzero()[:, 0]
    if rows.numel() > 0:
        lam, b_refined = refine(kernel[rows], poles.rows(rows), b[rows], REFINE_STAGES)
        poles.lam[rows], b[rows] = lam, b_refined
    return poles, b


def fit_rank(kernel: torch.Tensor, subspace: torch.Tensor, rank: int, previous: tuple[Poles, torch.Tensor] | None,
             *, refined: bool = True) -> tuple[Poles, torch.Tensor]:
    """The float64 fit of ``rank`` folded modes to kernels `[C, L]`, given their Hankel subspace `[C, p, w]` and
    the fit of ``rank - 1`` modes (or None): per system the smallest max error of the ERA fit (:func:`_era_fit`),
    the previous fit extended by one slot (:func:`_extended_fit`) and the previous fit itself with an unused slot
    (so the float64 error never grows with the rank). ``refined=False``: the plain ERA + least-squares fit only
    (the cheap first candidate of a rung). Returns the poles and residues complex128 `[C, rank]`."""
    poles, b = _era_fit(kernel, subspace, rank, refined)
    if previous is None or not refined:
        return poles, b
    error = error_norm(kernel, poles.lam, b, CHOICE)
    extended, b_extended = _extended_fit(kernel, *previous)
    spare = Poles.unused(kernel.shape[0], 1, kernel.device)
    kept = Poles(*(torch.cat([x, y], 1) for x, y in zip((previous[0].lam, previous[0].is_real, previous[0].used),
                                                          (spare.lam, spare.is_real, spare.used), strict=True)))
    b_kept = torch.cat([previous[1], torch.zeros_like(previous[1][:, :1])], 1)
    for other, b_other in ((extended, b_extended), (kept, b_kept)):
        other_error = error_norm(kernel, other.lam, b_other, CHOICE)
        pick = other_error < error
        poles = poles.where(pick, other)
        b = torch.where(pick[:, None], b_other, b)
        error = torch.minimum(error, other_error)
    return poles, b
