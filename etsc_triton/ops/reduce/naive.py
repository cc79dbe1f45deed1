"""Float64 Torch references for order reduction, dense and slow on purpose: the kernel error over a horizon, the
finite-Hankel lower bound, balanced truncation, and a dense reduction with the signatures of
:func:`etsc_triton.reduce_ssm` and :func:`etsc_triton.reduce_toeplitz`.

The dense reduction shares nothing with the fast path but the contract (``contract.py``: checks, result
record): one system at a time, the full SVD of its ``p x p`` Hankel matrix, ERA on the leading singular vectors,
residues by a dense least-squares solve, poles rounded to complex64 with the residues solved again, its own
float64 evaluation (the materialised Vandermonde matrix) and its own certificate. No refinement and no search:
the fast path must do at least as well (the tests check it does within a small factor).
"""

from __future__ import annotations

import math

import torch

from ..checks import check_int, check_tensor
from ..complex import vandermonde_kernel64
from .contract import (
    FN_NAME,
    MAX_RANK,
    TAPS_FN_NAME,
    Reduction,
    check_reduce_args,
    check_taps_args,
    etsc_modes,
)


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
    full = vandermonde_kernel64(lam, b, length)
    reduced = vandermonde_kernel64(lam_r, b_r, length)
    return (full - reduced).abs().amax(-1)


def _hankel(kernel: torch.Tensor) -> torch.Tensor:
    """The ``p x p`` Hankel matrices ``H_ij = K_(i+j)``, ``p = ceil(length / 2)``: `[..., p, p]` float64."""
    p = (kernel.shape[-1] + 1) // 2
    return kernel.to(torch.float64)[..., : 2 * p - 1].unfold(-1, p, 1)


def hankel_singular_values(kernel: torch.Tensor) -> torch.Tensor:
    """Singular values of the square Hankel matrix ``H_ij = K_(i+j)``, ``i, j < p = ceil(length / 2)``, by a
    dense float64 SVD (small sizes: the matrix is ``p x p`` per system).

    Args:
        kernel: `[..., length]` real.

    Returns:
        `[..., p]` float64, descending.
    """
    check_tensor("hankel_singular_values", "kernel", kernel, kind="real", min_ndim=1)
    return torch.linalg.svdvals(_hankel(kernel))


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


def _fold(poles: torch.Tensor, residues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfolded modes of a real system (``K_j = sum_i c_i mu_i^j``, conjugate pairs and real poles, as the
    eigenvalues of a real matrix come: a real one has imaginary part exactly 0) in the folded convention: a pair
    is its pole with ``Im > 0`` and residue ``2 c``, a real pole keeps ``Re c``."""
    upper = poles.imag > 0
    real = poles.imag == 0
    lam = torch.cat([poles[upper], poles[real]])
    b = torch.cat([2 * residues[upper], residues[real].real.to(residues.dtype)])
    return lam, b


def _era(vectors: torch.Tensor, order: int) -> torch.Tensor:
    """ERA / Kung poles of order ``order`` from the leading left singular vectors ``vectors [p, >= order]``:
    the least-squares shift ``U[:-1] A = U[1:]``, its eigenvalues."""
    u = vectors[:, :order]
    shift = torch.linalg.lstsq(u[:-1], u[1:]).solution
    return torch.linalg.eigvals(shift)


def _residues(kernel: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Least-squares residues of folded poles ``lam [r]`` (real ones get real residues) on ``kernel [L]``: a
    dense solve on the columns ``Re lam^j`` and, for complex poles, ``Im lam^j``."""
    powers = vandermonde_columns(lam, kernel.shape[-1])
    complex_pole = lam.imag != 0
    columns = torch.cat([powers.real, powers.imag[:, complex_pole]], dim=1)
    coef = torch.linalg.lstsq(columns, kernel[:, None], driver="gelsd").solution[:, 0]
    b = coef[: lam.shape[0]].to(torch.complex128)
    b[complex_pole] = torch.complex(coef[: lam.shape[0]][complex_pole], -coef[lam.shape[0] :])
    return b


def vandermonde_columns(lam: torch.Tensor, length: int) -> torch.Tensor:
    """``lam_s ** j`` `[length, r]` complex128 (complex powers: the definition)."""
    j = torch.arange(length, dtype=torch.float64, device=lam.device)
    return torch.where(j[:, None] == 0, torch.ones((), dtype=torch.complex128), lam.to(torch.complex128) ** j[:, None])


def _round_poles(lam: torch.Tensor) -> torch.Tensor:
    """Poles outside the unit disc projected onto it, rounded to complex64 (scaled by ``1 - 2^-22`` where
    rounding left the disc)."""
    lam = torch.where(lam.abs() > 1, lam / lam.abs(), lam)
    lam32 = lam.to(torch.complex64)
    return torch.where(lam32.to(torch.complex128).abs() > 1, (lam * (1 - 2.0**-22)).to(torch.complex64), lam32)


def _certified(kernel: torch.Tensor, own_margin: float, lam32: torch.Tensor, b32: torch.Tensor) -> float:
    """The float64 error of complex64 modes on ``kernel [L]``, plus the margin of both evaluations (complex powers:
    relative error ``<= (j (|log|lam|| + pi) + 8) 2^-53`` per term, ``|lam|^j j |log|lam|| <= 1/e``, and
    ``N 2^-53`` of the sum), rounded up to the next float32."""
    length = kernel.shape[-1]
    error = float((kernel - vandermonde_kernel64(lam32, b32, length)).abs().max())
    margin = own_margin + float(b32.to(torch.complex128).abs().sum()) * (4 * length + 16 + b32.shape[-1]) * 2.0**-52
    return float(torch.nextafter(torch.tensor(error + margin, dtype=torch.float32), torch.tensor(math.inf)))


def _exact_modes(kernel: torch.Tensor, own_margin: float,
                 exact: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One system's exact modes, however many, in complex64: the poles rounded, the better certified of the
    residues as they are and solved again for the rounded poles."""
    lam32 = _round_poles(exact[0])
    lam32 = torch.where(lam32.imag.abs() <= 1e-13 * lam32.abs(), lam32.real.to(lam32.dtype), lam32)
    kept = exact[1].to(torch.complex64)
    kept = torch.where(lam32.imag == 0, kept.real.to(kept.dtype), kept)
    solved = _residues(kernel, lam32.to(torch.complex128)).to(torch.complex64)
    return min(((lam32, b32, _certified(kernel, own_margin, lam32, b32)) for b32 in (kept, solved)),
               key=lambda fit: fit[2])


def _dense_ladder(kernel: torch.Tensor, own_margin: float, ranks: range, tol: float | None,
                  exact: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One system: the best certified fit over ranks ``1 .. r`` (the fit of rank k, or the best of a lower rank
    with the extra slots unused), stopping at the first rank whose bound meets ``tol * max|K|``."""
    sigma_vectors = torch.linalg.svd(_hankel(kernel)).U
    p = sigma_vectors.shape[0]
    best: tuple[torch.Tensor, torch.Tensor, float] = (torch.zeros(0, dtype=torch.complex64),
                                                      torch.zeros(0, dtype=torch.complex64), math.inf)
    for rank in ranks:
        if exact is not None and rank >= exact[0].shape[-1]:
            lam32, b32, _ = _exact_modes(kernel, own_margin, exact)
        else:
            lam = torch.zeros(1, dtype=torch.complex128)  # one or two lags: a real mode at 0
            for order in range(min(2 * rank, p - 1), 0, -1):
                folded, _ = _fold(_era(sigma_vectors, order), torch.zeros(order, dtype=torch.complex128))
                if folded.shape[0] <= rank:
                    lam = folded
                    break
            # the residues solved again for the rounded poles: that compensates most of the poles' rounding
            lam32 = _round_poles(lam)
            b32 = _residues(kernel, lam32.to(torch.complex128)).to(torch.complex64)
        bound = _certified(kernel, own_margin, lam32, b32)
        if bound < best[2]:
            best = (lam32, b32, bound)
        if tol is not None and best[2] <= tol * float(kernel.abs().max()):
            break
        if exact is not None and rank >= exact[0].shape[-1]:
            break  # a higher rank would return the same exact modes
    return best


def reduce_dense(kernel: torch.Tensor, rank: int | None, tol: float | None, max_rank: int | None,
                 own_margin: torch.Tensor, exact: tuple[torch.Tensor, torch.Tensor] | None,
                 fn_name: str) -> Reduction:
    """The dense reduction of float64 kernels `[..., L]`, one system at a time (``own_margin [...]``: the
    evaluation error of the kernel itself; ``exact``: the input modes, returned when the rank reaches them, or
    under ``tol`` without ``max_rank`` after every fitted rank up to MAX_RANK missed it, however many)."""
    batch, length = kernel.shape[:-1], kernel.shape[-1]
    flat = kernel.reshape(-1, length).to(torch.float64)
    margins = own_margin.reshape(-1).tolist()
    exact_flat = None if exact is None else [x.reshape(flat.shape[0], -1) for x in exact]
    n_exact = 0 if exact is None else exact[0].shape[-1]
    ceiling = MAX_RANK if max_rank is None else max_rank
    cap = rank if rank is not None else min(ceiling, max((length + 1) // 2 + 1, n_exact))
    scale = flat.abs().amax(-1)
    fits = []
    for c in range(flat.shape[0]):
        modes = None if exact_flat is None else (exact_flat[0][c], exact_flat[1][c])
        fit = _dense_ladder(flat[c], margins[c], range(1, cap + 1), tol, modes)
        if (tol is not None and max_rank is None and modes is not None and n_exact > cap
                and fit[2] > tol * float(scale[c])):
            beyond = _exact_modes(flat[c], margins[c], modes)
            fit = beyond if beyond[2] < fit[2] else fit
        fits.append(fit)
    bounds = torch.tensor([fit[2] for fit in fits], dtype=torch.float32)
    if tol is not None and bool((bounds.double() > tol * scale).any()):
        worst = float((bounds.double() / scale.clamp_min(1e-300)).max())
        if max_rank is None:
            raise ValueError(f"{fn_name}: tol = {tol:g} is not met by any rank up to {max(cap, n_exact)} in every "
                             f"system, the exact modes rounded to complex64 included (best relative bound "
                             f"{worst:.3g}): below what complex64 modes resolve of this kernel; raise tol")
        raise ValueError(f"{fn_name}: tol = {tol:g} is not met by any rank up to {cap} in every system "
                         f"(best relative bound {worst:.3g}); raise tol or max_rank, or use the exact conversion")
    width = cap if tol is None else max([fit[0].shape[0] for fit in fits] + [1])  # unused slots: lam = b = 0
    lam = torch.zeros(flat.shape[0], width, dtype=torch.complex64)
    b = torch.zeros_like(lam)
    for c, (lam_c, b_c, _) in enumerate(fits):
        lam[c, : lam_c.shape[0]], b[c, : b_c.shape[0]] = lam_c, b_c
    return Reduction(lam.reshape(*batch, width), b.reshape(*batch, width), bounds.reshape(batch))


def reduce_ssm(
    lam: torch.Tensor,
    b: torch.Tensor,
    rank: int | None = None,
    *,
    length: int,
    tol: float | None = None,
    max_rank: int | None = None,
) -> Reduction:
    """Dense float64 reference of :func:`etsc_triton.reduce_ssm` (module docstring): O(p^3) per system, so for
    small horizons only."""
    rank, length, tol, max_rank = check_reduce_args(lam, b, rank, length, tol, max_rank)
    lam64, b64 = lam.detach().cpu().to(torch.complex128), b.detach().cpu().to(torch.complex128)
    kernel = vandermonde_kernel64(lam64, b64, length)
    margin = b64.abs().sum(-1) * (4 * length + 16 + lam.shape[-1]) * 2.0**-52
    return reduce_dense(kernel, rank, tol, max_rank, margin, (lam64, b64), FN_NAME)


def reduce_toeplitz(
    t: torch.Tensor,
    gamma: float | torch.Tensor | None = None,
    rank: int | None = None,
    *,
    length: int | None = None,
    tol: float | None = None,
    max_rank: int | None = None,
) -> Reduction:
    """Dense float64 reference of :func:`etsc_triton.reduce_toeplitz`."""
    return reduce_taps(TAPS_FN_NAME, t, gamma, rank, tol, length, max_rank)


def reduce_taps(fn_name: str, t: torch.Tensor, gamma: object, rank: object, tol: object, length: object,
                max_rank: object) -> Reduction:
    """:func:`reduce_toeplitz` with its errors naming ``fn_name``."""
    gamma64, rank, length, tol, max_rank = check_taps_args(fn_name, t, gamma, rank, tol, length, max_rank)
    taps = t.detach().cpu().to(torch.float64)[..., :length]
    kernel = taps * gamma64.cpu()[..., None] ** torch.arange(length, dtype=torch.float64)
    # gamma^j t_j: relative error (j + 2) 2^-53 per lag
    margin = taps.abs().amax(-1) * (4 * length + 16) * 2.0**-52
    exact = None if tol is None else etsc_modes(taps, gamma64.cpu(), max_rank)
    return reduce_dense(kernel, rank, tol, max_rank, margin, exact, fn_name)


DENSE_EIGH = 512  # FIR Hankel matrices up to this size are decomposed densely (a 2048 one takes 10-50 s on 2 cores)
RITZ_RESIDUAL = 1e-12  # ||H v - lambda v|| / |lambda_1| at which a Krylov eigenpair counts as converged
RITZ_FLOOR = 1e-10  # |lambda| / |lambda_1| below which a pair is at float64 noise level: its residual is not asked


def _leading_eigenpairs(hankel: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` eigenpairs of largest ``|lambda|`` of a symmetric float64 ``[L, L]`` matrix, ordered by
    ``|lambda|``: a dense eigendecomposition for ``L <= DENSE_EIGH``, else Rayleigh-Ritz on a block Krylov space
    (full reorthogonalisation) grown until every wanted pair above ``RITZ_FLOOR |lambda_1|`` has a residual
    below ``RITZ_RESIDUAL |lambda_1|`` (or the space is the whole space)."""
    size = hankel.shape[0]
    if size <= DENSE_EIGH:
        values, vectors = torch.linalg.eigh(hankel)
    else:
        block = max(16, count + 8)
        start = torch.randn(size, block, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        basis = torch.linalg.qr(start).Q
        image = hankel @ basis
        while True:
            values, ritz = torch.linalg.eigh(basis.T @ image)
            top = values.abs().argsort(descending=True)[:count]
            values, vectors = values[top], basis @ ritz[:, top]
            residual = (image @ ritz[:, top] - vectors * values).norm(dim=0)
            largest = values.abs().max()
            converged = (residual <= RITZ_RESIDUAL * largest) | (values.abs() <= RITZ_FLOOR * largest)
            if basis.shape[1] >= size or bool(converged.all()):
                break
            fresh = image[:, -block:][:, : size - basis.shape[1]]
            for _ in range(2):  # twice: where the space is nearly exhausted one pass leaves rounding noise in it
                fresh = torch.linalg.qr(fresh - basis @ (basis.T @ fresh)).Q
            basis = torch.cat([basis, fresh], dim=1)
            image = torch.cat([image, hankel @ fresh], dim=1)
    order = values.abs().argsort(descending=True)[:count]
    return values[order], vectors[:, order]


def balanced_truncation(kernel: torch.Tensor, orders: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Balanced truncation of the FIR realisation of kernels over their horizon, per real order.

    The kernel ``K_0 .. K_(L-1)`` (zero beyond) is realised by the shift register ``x_k = A x_(k-1) + e_1 u_k``,
    ``y_k = K . x_k`` of dimension L; its controllability Gramian is I and its observability Gramian ``H^T H``
    with ``H_ij = K_(i+j)`` (``i, j < L``, zero where ``i + j >= L``), so its Hankel singular values are those of
    H. The square-root method on ``H = U S V^T`` (H is symmetric: its leading eigenpairs, ``U = W``,
    ``V = W sign(lambda)``) gives the order-k system ``A_k = S^-1/2 U^T H_1 V S^-1/2`` (``H_1`` the Hankel matrix
    of ``K_(j+1)``), ``B_k = S^1/2 V[0]``, ``C_k = K V S^-1/2`` (leading k columns), diagonalised in complex128.

    Args:
        kernel: `[C, L]` real.
        orders: the real state dimensions k wanted (each >= 1).

    Returns:
        One ``(lam, b)`` per order, complex128 `[C, slots]` in the folded convention (a conjugate pair in one
        slot, a real pole in a slot of its own), padded with unused slots ``lam = b = 0`` to the largest count
        of slots in the batch.
    """
    check_tensor("balanced_truncation", "kernel", kernel, kind="real", ndim=2)
    orders = [check_int("balanced_truncation", "order", order, minimum=1) for order in orders]
    k64 = kernel.detach().cpu().to(torch.float64)
    length = k64.shape[1]
    index = torch.arange(length)[:, None] + torch.arange(length)[None, :]
    padded = torch.cat([k64, torch.zeros_like(k64), torch.zeros_like(k64[:, :1])], dim=1)
    per_order: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in orders]
    for row, taps in zip(k64, padded, strict=True):
        values, left = _leading_eigenpairs(taps[index], min(max(orders), length))
        sigma = values.abs()
        right = left * torch.sign(values)
        shifted = taps[index + 1] @ right
        for out, order in zip(per_order, orders, strict=True):
            k = min(order, int((sigma > 0).sum()))
            inv_root = sigma[:k].rsqrt()
            a = inv_root[:, None] * (left[:, :k].T @ shifted[:, :k]) * inv_root[None, :]
            b_in = sigma[:k].sqrt() * right[0, :k]
            c_out = (row @ right[:, :k]) * inv_root
            poles, eigvectors = torch.linalg.eig(a)
            residues = (c_out.to(torch.complex128) @ eigvectors) * torch.linalg.solve(eigvectors,
                                                                                       b_in.to(torch.complex128))
            out.append(_fold(poles, residues))
    results = []
    for fits in per_order:
        slots = max(lam.shape[0] for lam, _ in fits)
        lam = torch.zeros(len(fits), slots, dtype=torch.complex128)
        b = torch.zeros_like(lam)
        for c, (lam_c, b_c) in enumerate(fits):
            lam[c, : lam_c.shape[0]], b[c, : b_c.shape[0]] = lam_c, b_c
        results.append((lam, b))
    return results
