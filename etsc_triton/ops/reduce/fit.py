"""The reduction's fitting stages on float64 kernels, batched over systems (torch; runs where the kernel lives).

kernel `[C, L]` -> leading Hankel subspace (a sketch of spread Hankel columns refined by one FFT Hankel
product, or a dense eigendecomposition for short kernels) -> ERA poles per real order -> conjugate folding into
``rank`` slots (real pole pairs merged when they do not fit) -> least-squares residues -> Levenberg-Marquardt on
poles and residues, first in l2, then iteratively reweighted towards the l1 or max error, from the ERA poles and
from a richer pole set pruned back. The complex64 rounding is ``rounding.py``, the driver (ranks, tolerance,
chunks, the certificate) ``pipeline.py``. Derivation and the reasons in this folder's README.
"""

from __future__ import annotations

import math

import torch

from .certificate import hankel_size

OVERSAMPLE = 8  # extra sketch columns of the range finder
HANKEL_PRODUCTS = 1  # FFT products with H applied to the sketch (subspace iterations; README)
DENSE_HANKEL = 96  # p at or below which the p x p Hankel matrix is decomposed densely
L2_STEPS = 6  # Levenberg-Marquardt steps on the least-squares error
REWEIGHTED_STEPS = 20  # then steps on the target norm (iteratively reweighted)
REAL_POLE = 1e-13  # |Im lam| <= REAL_POLE * |lam|: a real pole (eigenvalues of a real matrix)
STALL = 1e-3  # relative progress below which an accepted refinement step counts as stalled
DAMPING_EXIT = 1.0  # damping (on unit-norm columns) at which rejected steps have become too short to matter
STALL_STEPS = 2  # stalled accepted steps in a row after which a system leaves the batch (until the next stage)
RESOLUTION = 2.0**-22  # least-squares error <= RESOLUTION * max|K|: below what complex64 modes resolve
SECOND_START_GAP = 2.0  # l1 error / estimated Hankel bound under which the second refinement start is skipped
PRUNE_CANDIDATES = 8  # slots of least contribution tried at each pruning step
PRUNE_EXTRA = 4  # the second refinement start: ERA poles of rank + PRUNE_EXTRA slots pruned back to rank
RIDGE = 1e-10  # Tikhonov weight on the normalised columns: keeps near-collinear residues bounded


# ----------------------------------------------------------------------------------------------- subspace


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


def _orthonormal_rows(rows: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the span of ``rows [C, s, p]``, as rows."""
    return torch.linalg.qr(rows.transpose(1, 2)).Q.transpose(1, 2)


def leading_subspace(
    kernel: torch.Tensor, width: int, *, method: str = "columns", products: int | None = None
) -> torch.Tensor:
    """Orthonormal `[C, p, width]` estimate of the leading left singular vectors of the ``p x p`` Hankel
    matrices of ``kernel [C, L]`` (float64), ordered by decreasing singular value.

    ``method``: ``"columns"`` sketches H by ``width + OVERSAMPLE`` of its columns spread evenly over the
    shifts (free: they are windows of K) and refines that range by ``products`` products with H (FFT);
    ``"random"`` starts from a Gaussian sketch instead; ``"dense"`` decomposes H itself (O(p^3), reference).
    """
    channels, length = kernel.shape
    p = hankel_size(length)
    width = min(width, p)
    products = HANKEL_PRODUCTS if products is None else products
    if method == "dense" or p <= DENSE_HANKEL:
        values, vectors = torch.linalg.eigh(kernel[:, : 2 * p - 1].unfold(-1, p, 1))
        order = values.abs().argsort(dim=-1, descending=True)[:, :width]
        return torch.gather(vectors, 2, order[:, None, :].expand(-1, p, -1))
    sketch = min(p, width + OVERSAMPLE)
    if method == "columns":
        shifts = torch.linspace(0, p - 1, sketch, device=kernel.device).round().to(torch.int64)
        rows = kernel[:, : 2 * p - 1].unfold(-1, p, 1)[:, shifts]  # column c of H = K[c : c + p]
    else:
        gen = torch.Generator().manual_seed(0)
        omega = torch.randn(channels, sketch, p, generator=gen, dtype=torch.float64).to(kernel.device)
        rows = None
    if rows is None or products > 0:
        size = _fft_size(2 * p - 1)
        spectrum = torch.fft.rfft(kernel[:, : 2 * p - 1], n=size, dim=-1)
    if rows is None:
        rows = _hankel_apply(spectrum, omega, p, size)
    for _ in range(products):
        rows = _hankel_apply(spectrum, _orthonormal_rows(rows), p, size)
    # H is symmetric, so its range is spanned by the sketch rows; their leading directions from QR and the SVD
    # of the small triangular factor (a batched thin SVD of the tall matrix is several times slower)
    q, r = torch.linalg.qr(rows.transpose(1, 2))
    left, _, _ = torch.linalg.svd(r)
    return q @ left[:, :, :width]


# ----------------------------------------------------------------------------------------------- poles


def era_poles(subspace: torch.Tensor, order: int) -> torch.Tensor:
    """ERA / Kung: the shift-invariance ``U[1:] ~ U[:-1] A`` of the leading ``order`` vectors; eigenvalues of A
    (complex128 `[C, order]`)."""
    u = subspace[:, :, :order]
    upper, lower = u[:, :-1], u[:, 1:]
    gram = upper.transpose(1, 2) @ upper
    shift = torch.linalg.solve(gram, upper.transpose(1, 2) @ lower)
    return torch.linalg.eigvals(shift)


def fold_poles(poles: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conjugate folding of the poles of a real system into ``slots`` columns.

    A pair ``lam, conj(lam)`` becomes one slot holding the pole with ``Im > 0``; a real pole takes one slot of
    its own. Returns ``(lam [C, slots], is_real, is_used, fits)``: ``fits [C]`` says whether the poles needed at
    most ``slots`` slots (the rest is then unusable); unused slots hold 0.
    """
    tiny = REAL_POLE * poles.abs()
    real = poles.imag.abs() <= tiny
    keep = real | (poles.imag > tiny)
    fits = keep.sum(-1) <= slots
    order = (~keep).to(torch.int8).argsort(dim=-1, stable=True)[:, :slots]
    width = order.shape[-1]
    lam = torch.gather(poles, 1, order)
    used = torch.gather(keep, 1, order)
    is_real = torch.gather(real, 1, order) & used
    lam = torch.where(is_real, lam.real.to(lam.dtype), lam)
    lam = torch.where(used, lam, torch.zeros_like(lam))
    if width < slots:
        pad = slots - width
        lam = torch.cat([lam, lam.new_zeros(lam.shape[0], pad)], dim=1)
        used = torch.cat([used, used.new_zeros(used.shape[0], pad)], dim=1)
        is_real = torch.cat([is_real, is_real.new_zeros(is_real.shape[0], pad)], dim=1)
    return _reflect(lam), is_real, used, fits


def _reflect(lam: torch.Tensor) -> torch.Tensor:
    """ERA poles outside the unit disc mirrored inside, ``lam -> 1 / conj(lam)``: such poles mostly come from the
    noise part of the subspace, and mirrored they decay instead of being pinned to the circle (the refinement
    then moves what matters)."""
    radius = lam.abs()
    return torch.where(radius > 1, lam / radius.clamp_min(1e-300).square(), lam)


def _stabilise(lam: torch.Tensor) -> torch.Tensor:
    """Project poles outside the unit disc onto the circle."""
    radius = lam.abs()
    return torch.where(radius > 1, lam / radius.clamp_min(1e-300), lam)


def merge_real_pairs(poles: torch.Tensor, slots: int):
    """Fold one system's poles into ``slots`` by merging the closest real poles pairwise into complex slots:
    ``p1, p2 -> (p1 + p2) / 2 + i |p1 - p2| / 2``, whose conjugate pair spans ``p1^j, p2^j`` to first order in
    their distance (the refinement then moves it). None when even that does not fit."""
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
    flags = [False] * (len(upper) + len(merged)) + [True] * len(real)
    pad = slots - len(lam)
    return lam + [0j] * pad, flags + [False] * pad, [True] * len(lam) + [False] * pad


def select_poles(subspace: torch.Tensor, rank: int):
    """Candidate poles for ``rank`` slots per system: those of the largest ERA order ``k <= 2 rank`` that fold
    into ``rank`` slots, and, for systems whose order-``2 rank`` poles hold too many real ones, those poles with
    real pairs merged (:func:`merge_real_pairs`). Returns ``(lam, is_real, used)`` `[C, rank]` and the merged
    alternative ``(lam, is_real, used, has)`` (``has [C]``: an alternative exists)."""
    channels = subspace.shape[0]
    device = subspace.device
    top = min(2 * rank, subspace.shape[2], subspace.shape[1] - 1)
    lam = torch.zeros(channels, rank, dtype=torch.complex128, device=device)
    is_real = torch.zeros(channels, rank, dtype=torch.bool, device=device)
    used = torch.zeros_like(is_real)
    done = torch.zeros(channels, dtype=torch.bool, device=device)
    alt = (lam.clone(), is_real.clone(), used.clone(), torch.zeros_like(done))
    if top < 1:  # one or two lags: a real mode at lam = 0 (K^r_0 = b, zero beyond) is the best single slot
        used[:, 0] = True
        is_real[:, 0] = True
        return (lam, is_real, used), alt
    for order in range(top, 0, -1):
        poles = era_poles(subspace, order)
        cand_lam, cand_real, cand_used, fits = fold_poles(poles, rank)
        if order == top:
            for row in (~fits).nonzero()[:, 0].tolist():
                merged = merge_real_pairs(poles[row].cpu(), rank)
                if merged is not None:
                    alt[0][row] = torch.tensor(merged[0], dtype=torch.complex128)
                    alt[1][row] = torch.tensor(merged[1])
                    alt[2][row] = torch.tensor(merged[2])
                    alt[3][row] = True
        take = fits & ~done
        lam = torch.where(take[:, None], cand_lam, lam)
        is_real = torch.where(take[:, None], cand_real, is_real)
        used = torch.where(take[:, None], cand_used, used)
        done |= take
        if bool(done.all()):
            break
    return (lam, is_real, used), (_reflect(alt[0]), *alt[1:])


# ----------------------------------------------------------------------------------------------- residues


def powers(lam: torch.Tensor, length: int) -> torch.Tensor:
    """``lam^j`` for ``j < length``: complex128 `[C, length, r]`, as ``lam^(a B) * lam^c`` (``j = a B + c``,
    ``B ~ sqrt(length)``) with both factors in polar form (angle reduced mod 2 pi): one complex product per
    entry instead of an exp and a polar per entry."""
    block = max(1, math.isqrt(length))
    anchors = -(-length // block)

    def polar_powers(exponents):  # [E] float64 -> [C, E, r]
        e = exponents[None, :, None]
        log_mag = torch.log(lam.abs()).clamp_min(-1e30)[:, None, :]
        phase = torch.remainder(torch.angle(lam)[:, None, :] * e, 2 * math.pi)
        return torch.polar(torch.exp(log_mag * e), phase)

    steps = torch.arange(block, dtype=torch.float64, device=lam.device)
    outer = polar_powers(steps[:anchors] * block if anchors <= block else
                         torch.arange(anchors, dtype=torch.float64, device=lam.device) * block)
    inner = polar_powers(steps)
    table = outer[:, :, None, :] * inner[:, None, :, :]  # [C, A, B, r]
    return table.reshape(lam.shape[0], anchors * block, lam.shape[1])[:, :length]


def _weighted_lstsq(columns: torch.Tensor, target: torch.Tensor, sqrt_weight: torch.Tensor | None,
                    damping: torch.Tensor | float) -> torch.Tensor:
    """``argmin ||W^1/2 (target - columns x)||^2 + damping ||D x||^2`` with D the column norms (columns of
    zeros get x = 0). columns `[C, L, m]`, target `[C, L]`, damping a float or `[C]`. QR of the augmented
    matrix: no normal equations (the squared condition number would cost half the digits)."""
    if sqrt_weight is not None:
        columns = columns * sqrt_weight[:, :, None]
        target = target * sqrt_weight
    norms = columns.norm(dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    scaled = columns / norms[:, None, :]
    m = columns.shape[2]
    damping = torch.as_tensor(damping, dtype=columns.dtype, device=columns.device)
    eye = torch.eye(m, dtype=columns.dtype, device=columns.device)
    reg = torch.sqrt(damping + RIDGE**2).reshape(-1, 1, 1) * eye
    augmented = torch.cat([scaled, reg.expand(columns.shape[0], m, m)], dim=1)
    rhs = torch.cat([target, target.new_zeros(target.shape[0], m)], dim=1)
    q, r = torch.linalg.qr(augmented)
    solution = torch.linalg.solve_triangular(r, (q.transpose(1, 2) @ rhs[:, :, None]), upper=True)[:, :, 0]
    return solution / norms


def _basis(lam: torch.Tensor, is_real: torch.Tensor, used: torch.Tensor, length: int):
    """Real columns ``Re lam^j`` and ``Im lam^j`` (zero where not a free parameter): `[C, L, 2r]`."""
    pw = powers(lam, length)
    re_mask = used[:, None, :]
    im_mask = (used & ~is_real)[:, None, :]
    return torch.cat([pw.real * re_mask, pw.imag * im_mask], dim=2), pw


def fit_residues(kernel, lam, is_real, used, sqrt_weight=None) -> torch.Tensor:
    """Least-squares complex residues b `[C, r]` (folded convention: ``K_j ~ Re sum_s b_s lam_s^j``)."""
    rank = lam.shape[1]
    columns, _ = _basis(lam, is_real, used, kernel.shape[1])
    coef = _weighted_lstsq(columns, kernel, sqrt_weight, 0.0)
    # alpha Re(lam^j) + beta Im(lam^j) = Re((alpha - i beta) lam^j)
    return torch.complex(coef[:, :rank], -coef[:, rank:])


def _ls_error(kernel, lam, is_real, used) -> torch.Tensor:
    """l2 error `[C]` of the least-squares fit with these poles."""
    b = fit_residues(kernel, lam, is_real, used)
    return (kernel - model_kernel(lam, b, kernel.shape[1])).square().sum(-1)


def model_kernel(lam, b, length) -> torch.Tensor:
    """``Re sum_s b_s lam_s^j`` `[C, length]` float64 from complex128 modes (the same polar powers)."""
    return (powers(lam, length) * b[:, None, :]).real.sum(-1)


def max_error(kernel, lam, b) -> torch.Tensor:
    """float64 ``max_j |K_j - K^r_j|`` `[C]` of modes ``(lam, b)`` (complex64 or complex128)."""
    realised = model_kernel(lam.to(torch.complex128), b.to(torch.complex128), kernel.shape[1])
    return (kernel - realised).abs().amax(-1)


# ----------------------------------------------------------------------------------------------- refinement


def _norm(error: torch.Tensor, target: str) -> torch.Tensor:
    if target == "l1":
        return error.abs().sum(-1)
    if target == "max":
        return error.abs().amax(-1)
    return error.square().sum(-1)


def refine(kernel, lam, b, is_real, used, *, target: str, steps_l2=L2_STEPS, steps_target=REWEIGHTED_STEPS):
    """Levenberg-Marquardt on poles and residues jointly, l2 first, then reweighted towards ``target``
    (``"l1"``: weights ``1 / |e_j|``; ``"max"``: Lawson's multiplicative update ``w_j <- w_j |e_j|``). A step
    is kept per system only when it lowers that system's error in the norm being minimised; a system whose
    error stalls (``STALL_STEPS`` accepted steps running with less than ``STALL`` relative progress, or
    rejections up to a damping of ``DAMPING_EXIT``) leaves the batch until the next stage, so converged systems
    cost nothing."""
    length = kernel.shape[1]
    rank = lam.shape[1]
    lam, b = lam.clone(), b.clone()
    damping = torch.full((kernel.shape[0],), 1e-6, dtype=torch.float64, device=kernel.device)
    stalled = torch.zeros(kernel.shape[0], dtype=torch.int64, device=kernel.device)
    j = torch.arange(length, dtype=torch.float64, device=kernel.device)[None, :, None]
    weight = torch.ones_like(kernel)
    schedule = ["l2"] * steps_l2 + [target] * (steps_target if target != "l2" else 0)
    error = kernel - model_kernel(lam, b, length)
    active = torch.arange(kernel.shape[0], device=kernel.device)
    for stage_index, stage in enumerate(schedule):
        if stage_index > 0 and stage != schedule[stage_index - 1]:
            damping.fill_(1e-6)
            stalled.zero_()
            active = torch.arange(kernel.shape[0], device=kernel.device)
        if active.numel() == 0:
            continue
        err_a, lam_a, b_a = error[active], lam[active], b[active]
        used_a, complex_a = used[active], (used & ~is_real)[active]
        if stage == "l1":
            scale = err_a.abs().amax(-1, keepdim=True)
            weight[active] = 1.0 / err_a.abs().clamp_min(1e-6 * scale + 1e-300)
        elif stage == "max":
            w = weight[active] * err_a.abs()
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
            weight[active] = w.clamp_min(1e-8 * w.amax(-1, keepdim=True))
        pw = powers(lam_a, length)
        # derivative of lam^j: j lam^(j-1) = j lam^j / lam (lam = 0 only in unused slots, masked)
        dpw = j * pw / torch.where(lam_a.abs() > 0, lam_a, torch.ones_like(lam_a))[:, None, :]
        alpha, beta = b_a.real, -b_a.imag
        d_re = alpha[:, None, :] * dpw.real + beta[:, None, :] * dpw.imag
        d_im = -alpha[:, None, :] * dpw.imag + beta[:, None, :] * dpw.real
        mask_re = used_a[:, None, :]
        mask_im = complex_a[:, None, :]
        jac = torch.cat([pw.real * mask_re, pw.imag * mask_im, d_re * mask_re, d_im * mask_im], dim=2)
        sqrt_w = None if stage == "l2" else weight[active].sqrt()
        delta = _weighted_lstsq(jac, err_a, sqrt_w, damping[active])
        new_b = b_a + torch.complex(delta[:, :rank], -delta[:, rank : 2 * rank])
        new_lam = _stabilise(lam_a + torch.complex(delta[:, 2 * rank : 3 * rank], delta[:, 3 * rank :]))
        new_error = kernel[active] - model_kernel(new_lam, new_b, length)
        measure = "l2" if stage == "l2" else target
        old_norm, new_norm = _norm(err_a, measure), _norm(new_error, measure)
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


def prune_poles(kernel, lam, is_real, used, slots: int):
    """Greedy backward elimination: drop, one at a time, the slot whose removal (residues refitted by least
    squares) raises the l2 error least, until ``slots`` remain. Only the ``PRUNE_CANDIDATES`` slots whose modes
    contribute least to the kernel are tried (the l2 norm of ``Re b lam^j`` over the horizon). `[C, m]` ->
    `[C, slots]`."""
    channels, length = kernel.shape
    arange = torch.arange(channels, device=kernel.device)

    def without(slot):  # the three slot tables with column ``slot [C]`` removed in each row
        kept = torch.ones_like(used)
        kept[arange, slot] = False
        return [x[kept].reshape(channels, -1) for x in (lam, is_real, used)]

    while lam.shape[1] > slots:
        b = fit_residues(kernel, lam, is_real, used)
        contribution = (powers(lam, length) * b[:, None, :]).real.square().sum(1)
        contribution = torch.where(used, contribution, torch.full_like(contribution, -1.0))
        candidates = contribution.argsort(dim=1)[:, :PRUNE_CANDIDATES]
        errors = torch.stack([_ls_error(kernel, *without(candidates[:, c])) for c in range(candidates.shape[1])], 1)
        lam, is_real, used = without(candidates[arange, errors.argmin(1)])
    return lam, is_real, used


def hankel_gain(kernel, vectors) -> torch.Tensor:
    """``||H u||`` `[C]` for unit vectors ``vectors [C, p]`` (one FFT Hankel product): for the subspace's
    direction ``2 rank + 1``, an estimate of ``sigma_(2 rank + 1)``, the l1 lower bound at ``rank``."""
    p = vectors.shape[1]
    size = _fft_size(2 * p - 1)
    spectrum = torch.fft.rfft(kernel[:, : 2 * p - 1], n=size, dim=-1)
    return _hankel_apply(spectrum, vectors[:, None, :], p, size)[:, 0].norm(dim=-1)


def _refine_best(kernel, subspace, rank, start, b, target):
    """Refine the ERA start and, where it may gain, a second start: the ERA poles of ``PRUNE_EXTRA`` more slots
    pruned back to ``rank`` (under-modelled kernels: the best subset of a richer pole set often beats the poles
    of the truncated subspace); per system the one with the smaller ``target`` error. For the l1 target, systems
    whose first fit is within ``SECOND_START_GAP`` of the lower bound's estimate skip the second start (it
    cannot gain more than that). Returns ``(lam, b, is_real, used)``, ``b`` the refined float64 residues."""
    lam, is_real, used = start
    lam, b = refine(kernel, lam, b, is_real, used, target=target)
    extra = min(PRUNE_EXTRA, subspace.shape[2] // 2 - rank)
    if extra <= 0:
        return lam, b, is_real, used
    length = kernel.shape[1]
    first = _norm(kernel - model_kernel(lam, b, length), target)
    rows = torch.arange(kernel.shape[0], device=kernel.device)
    if target == "l1":
        rows = (first > SECOND_START_GAP * hankel_gain(kernel, subspace[:, :, 2 * rank])).nonzero()[:, 0]
        if rows.numel() == 0:
            return lam, b, is_real, used
    kernel_s, subspace_s = kernel[rows], subspace[rows]
    (wide, wide_real, wide_used), _ = select_poles(subspace_s, rank + extra)
    lam2, real2, used2 = prune_poles(kernel_s, wide, wide_real, wide_used, rank)
    lam2, b2 = refine(kernel_s, lam2, fit_residues(kernel_s, lam2, real2, used2), real2, used2, target=target)
    pick = (_norm(kernel_s - model_kernel(lam2, b2, length), target) < first[rows])[:, None]
    lam[rows] = torch.where(pick, lam2, lam[rows])
    b[rows] = torch.where(pick, b2, b[rows])
    is_real[rows] = torch.where(pick, real2, is_real[rows])
    used[rows] = torch.where(pick, used2, used[rows])
    return lam, b, is_real, used
