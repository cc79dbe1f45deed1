"""The reduction pipeline on a float64 kernel, batched over systems (torch; runs where the kernel lives).

kernel `[C, L]` -> leading Hankel subspace (a sketch of spread Hankel columns refined by one FFT Hankel
product, or a dense eigendecomposition for short kernels) -> ERA poles per real order -> conjugate folding into
``rank`` slots (real pole pairs merged when they do not fit) -> least-squares residues -> Levenberg-Marquardt on
poles and residues, first in l2, then iteratively reweighted towards the l1 or max error -> complex64 rounding
of the poles, residues refitted to the rounded poles, rounded -> the certified bound. Derivation and the
reasons in this folder's README.
"""

from __future__ import annotations

import math

import torch

from .certificate import certify, evaluation_margin, hankel_size
from .contract import MAX_RANK

OVERSAMPLE = 8  # extra sketch columns of the range finder
HANKEL_PRODUCTS = 1  # FFT products with H applied to the sketch (subspace iterations; README)
DENSE_HANKEL = 96  # p at or below which the p x p Hankel matrix is decomposed densely
CHUNK_BYTES = 1 << 28  # working set per channel chunk (complex128 powers and the Jacobian)
L2_STEPS = 6  # Levenberg-Marquardt steps on the least-squares error
REWEIGHTED_STEPS = 10  # then steps on the target norm (iteratively reweighted)
REAL_POLE = 1e-13  # |Im lam| <= REAL_POLE * |lam|: a real pole (eigenvalues of a real matrix)
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
    is kept per system only when it lowers that system's error in the norm being minimised."""
    length = kernel.shape[1]
    rank = lam.shape[1]
    damping = torch.full((kernel.shape[0],), 1e-6, dtype=torch.float64, device=kernel.device)
    j = torch.arange(length, dtype=torch.float64, device=kernel.device)[None, :, None]
    complex_slot = used & ~is_real
    weight = torch.ones_like(kernel)
    schedule = ["l2"] * steps_l2 + [target] * (steps_target if target != "l2" else 0)
    error = kernel - model_kernel(lam, b, length)
    for stage_index, stage in enumerate(schedule):
        if stage == "l1":
            scale = error.abs().amax(-1, keepdim=True)
            weight = 1.0 / error.abs().clamp_min(1e-6 * scale + 1e-300)
        elif stage == "max":
            weight = weight * error.abs()
            weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-300)
            weight = weight.clamp_min(1e-8 * weight.amax(-1, keepdim=True))
        if stage_index > 0 and stage != schedule[stage_index - 1]:
            damping.fill_(1e-6)
        pw = powers(lam, length)
        # derivative of lam^j: j lam^(j-1) = j lam^j / lam (lam = 0 only in unused slots, masked)
        dpw = j * pw / torch.where(lam.abs() > 0, lam, torch.ones_like(lam))[:, None, :]
        alpha, beta = b.real, -b.imag
        d_re = alpha[:, None, :] * dpw.real + beta[:, None, :] * dpw.imag
        d_im = -alpha[:, None, :] * dpw.imag + beta[:, None, :] * dpw.real
        mask_re = used[:, None, :]
        mask_im = complex_slot[:, None, :]
        jac = torch.cat([pw.real * mask_re, pw.imag * mask_im, d_re * mask_re, d_im * mask_im], dim=2)
        sqrt_w = None if stage == "l2" else weight.sqrt()
        delta = _weighted_lstsq(jac, error, sqrt_w, damping)
        new_b = b + torch.complex(delta[:, :rank], -delta[:, rank : 2 * rank])
        new_lam = _stabilise(lam + torch.complex(delta[:, 2 * rank : 3 * rank], delta[:, 3 * rank :]))
        new_error = kernel - model_kernel(new_lam, new_b, length)
        measure = "l2" if stage == "l2" else target
        better = _norm(new_error, measure) < _norm(error, measure)
        lam = torch.where(better[:, None], new_lam, lam)
        b = torch.where(better[:, None], new_b, b)
        error = torch.where(better[:, None], new_error, error)
        damping = torch.where(better, damping / 4, damping * 8).clamp(1e-12, 1e6)
    return lam, b


# ----------------------------------------------------------------------------------------------- rounding


def round_modes(kernel, lam, is_real, used):
    """complex64 modes: the poles rounded (pulled inside the unit disc if rounding pushed them out), then the
    residues refitted in float64 to the rounded poles (which compensates most of the poles' rounding) and
    rounded. Returns complex64 ``(lam, b)`` and their complex128 values."""
    lam32 = lam.to(torch.complex64)
    outside = lam32.to(torch.complex128).abs() > 1
    lam32 = torch.where(outside, (lam * (1 - 2.0**-22)).to(torch.complex64), lam32)
    lam64 = lam32.to(torch.complex128)
    refit = fit_residues(kernel, lam64, is_real, used)
    b32 = torch.where(used, refit, torch.zeros_like(refit)).to(torch.complex64)
    return lam32, b32


def _chunks(channels: int, length: int, rank: int):
    per_channel = 16 * length * (6 * rank + 8) + 8 * length * 8 * rank
    size = max(1, min(channels, CHUNK_BYTES // max(per_channel, 1)))
    for start in range(0, channels, size):
        yield slice(start, min(channels, start + size))


def fit_rank(kernel, subspace, rank, *, refine_target):
    """Fit ``rank`` folded modes to every kernel: complex64 ``(lam, b)`` `[C, rank]`."""
    (lam, is_real, used), (alt_lam, alt_real, alt_used, has_alt) = select_poles(subspace, rank)
    if bool(has_alt.any()):  # keep, per system, the candidate with the smaller least-squares error
        rows = has_alt.nonzero()[:, 0]
        err = _ls_error(kernel[rows], lam[rows], is_real[rows], used[rows])
        err_alt = _ls_error(kernel[rows], alt_lam[rows], alt_real[rows], alt_used[rows])
        pick = (err_alt < err)[:, None]
        lam[rows] = torch.where(pick, alt_lam[rows], lam[rows])
        is_real[rows] = torch.where(pick, alt_real[rows], is_real[rows])
        used[rows] = torch.where(pick, alt_used[rows], used[rows])
    if refine_target is not None:
        b = fit_residues(kernel, lam, is_real, used)
        lam, _ = refine(kernel, lam, b, is_real, used, target=refine_target)
    return round_modes(kernel, lam, is_real, used)


def certified_bound(kernel, kernel_margin, lam32, b32) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``max_j |K_j - K^r_j|`` of the returned complex64 modes and its float32 certified bound."""
    lam64, b64 = lam32.to(torch.complex128), b32.to(torch.complex128)
    length = kernel.shape[-1]
    error = (kernel - model_kernel(lam64, b64, length)).abs().amax(-1)
    margin = kernel_margin + evaluation_margin(b64.abs().sum(-1), length)
    return error, certify(error, margin)


# ----------------------------------------------------------------------------------------------- driver


def reduce_kernel(
    kernel, rank, tol, *, b_total, exact=None, subspace="columns", refine=True, target="l1", fn_name="reduce_ssm"
):
    """Reduce float64 kernels ``[..., L]`` to ``rank`` folded modes (or the smallest rank meeting ``tol``).

    Args:
        kernel: `[..., L]` float64, the kernel to approximate over lags ``0 .. L-1``.
        rank: folded modes, or None with ``tol``.
        tol: relative tolerance ``bound <= tol * max_j |K_j|`` in every system, or None.
        b_total: `[...]` float64 scale of the kernel's own float64 evaluation error (``sum |b|`` of the original
            modes, or ``max |K|`` for taps), for the certificate's margin.
        exact: ``(lam, b)`` complex128 `[..., N]` of the original system (used as is when ``rank >= N``).
        subspace: ``"random"`` (range finder, FFT products) or ``"dense"`` (reference).
        refine: run the Levenberg-Marquardt refinement.
        target: the norm the reweighted refinement aims at, ``"l1"`` or ``"max"``.
        fn_name: the public function named in errors.

    Returns:
        ``(lam_r, b_r, bound)``: complex64 `[..., rank]` (twice), float32 `[...]`.
    """
    batch = kernel.shape[:-1]
    length = kernel.shape[-1]
    flat = kernel.reshape(-1, length)
    channels = flat.shape[0]
    margin = evaluation_margin(b_total.reshape(-1).to(torch.float64), length)
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
        scale = kernel_part.abs().amax(-1)
        exact_part = None if exact_flat is None else (exact_flat[0][part], exact_flat[1][part])
        best = _reduce_chunk(kernel_part, margin[part], exact_part, ranks, cap, tol, scale, subspace,
                             target if refine else None)
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
    final = rank if tol is None else int(rank_out.max())
    lam_r = lam_out[:, :final].reshape(*batch, final)
    b_r = b_out[:, :final].reshape(*batch, final)
    return lam_r, b_r, bound_out.reshape(batch)


def _exact_modes(lam64, b64):
    """The original modes in complex64, poles kept inside the unit disc."""
    lam32 = _stabilise(lam64).to(torch.complex64)
    outside = lam32.to(torch.complex128).abs() > 1
    lam32 = torch.where(outside, (lam64 * (1 - 2.0**-22)).to(torch.complex64), lam32)
    return lam32, b64.to(torch.complex64)


def _fit_and_certify(kernel, margin, subspace, rank, refine_target, threshold):
    """Fit and certify ``rank`` modes. Under a tolerance (``threshold [C]``) the plain ERA + least-squares fit
    comes first and only the systems it leaves above the threshold are refined, towards the max error (the
    certified quantity); otherwise every system is refined towards ``refine_target``."""
    if threshold is None:
        lam32, b32 = fit_rank(kernel, subspace, rank, refine_target=refine_target)
        return lam32, b32, certified_bound(kernel, margin, lam32, b32)[1]
    lam32, b32 = fit_rank(kernel, subspace, rank, refine_target=None)
    bound = certified_bound(kernel, margin, lam32, b32)[1]
    missed = (bound.to(torch.float64) > threshold).nonzero()[:, 0]
    if refine_target is None or missed.numel() == 0:
        return lam32, b32, bound
    lam_ref, b_ref = fit_rank(kernel[missed], subspace[missed], rank, refine_target="max")
    bound_ref = certified_bound(kernel[missed], margin[missed], lam_ref, b_ref)[1]
    better = bound_ref < bound[missed]
    lam32[missed] = torch.where(better[:, None], lam_ref, lam32[missed])
    b32[missed] = torch.where(better[:, None], b_ref, b32[missed])
    bound[missed] = torch.where(better, bound_ref, bound[missed])
    return lam32, b32, bound


def _reduce_chunk(kernel, margin, exact, ranks, cap, tol, scale, subspace_kind, refine_target):
    """One chunk of systems: for ``tol``, ranks ascend and only the systems that missed it are refitted; a system
    keeps the first fit that meets it (its unused slots stay zero: lam = b = 0)."""
    channels = kernel.shape[0]
    device = kernel.device
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
            lam32, b32 = _exact_modes(exact[0][rows], exact[1][rows])
            bound = certified_bound(kernel[rows], margin[rows], lam32, b32)[1]
        else:
            if 2 * r > width:  # under tol the sketch widens in powers of two, so ascending ranks share it
                width = 2 * r if tol is None else 1 << max(3, (2 * r - 1).bit_length())
                subspace = leading_subspace(kernel, width, method=subspace_kind)
            lam32, b32, bound = _fit_and_certify(kernel[rows], margin[rows], subspace[rows], r, refine_target,
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
