"""Order reduction of diagonal SSMs and of Toeplitz taps with a certified kernel error (public entry points).

The pipeline (``pipeline.py``) is torch on float64, batched over systems: it runs on the device of its inputs
(a GPU when they live on one). No Triton kernel: its heavy parts are batched FFTs, QR factorisations and small
eigenproblems that cuFFT / cuSOLVER already do well (README).
"""

from __future__ import annotations

import torch

from ..complex import polar_kernel64
from .contract import (
    FN_NAME,
    TAPS_FN_NAME,
    Reduction,
    check_backend,
    check_reduce_args,
    check_taps_args,
    etsc_modes,
    etsc_rounded_residues,
    warn_unstable,
)
from .pipeline import reduce_kernel


def reduce_ssm(
    lam: torch.Tensor,
    b: torch.Tensor,
    rank: int | None = None,
    *,
    length: int,
    tol: float | None = None,
    max_rank: int | None = None,
    backend: str = "auto",
) -> Reduction:
    """Reduce diagonal SSMs to ``rank`` folded modes, with a certified bound on the kernel error.

    The input realises ``K_j = Re sum_s b_s lam_s^j`` (conjugate-folded convention: the output of
    :func:`etsc_triton.toeplitz_to_ssm`, or S4D / LRU-style modes). The result realises ``K^r_j`` in the same
    convention with ``rank`` modes; a complex mode stands for a conjugate pair (real state dimension 2), a real
    pole takes a mode of its own (``Im lam = Im b = 0``), an unused mode is ``lam = b = 0``.

    Args:
        lam: `[..., N]` complex nodes.
        b: `[..., N]` complex weights.
        rank: folded modes to keep (1 .. 64), or None with ``tol``.
        length: the horizon: lags ``0 .. length-1`` are approximated and certified (>= 1).
        tol: instead of ``rank``: per system, the smallest rank whose bound is ``<= tol * max_j |K_j|`` (the
            rank at which ``rank=`` first certifies it); the batch is padded to the largest with unused modes
            (``Reduction.ranks``: each system's own). At ranks ``>= N`` the input modes themselves (rounded to
            complex64) are the candidate, so a tolerance they meet is always met: without ``max_rank``, a system
            that no fitted rank up to 64 certifies gets the input modes whatever N is (the result is then N
            wide). Raises ``ValueError`` only where even they miss it (a tolerance below what complex64 modes
            resolve of the kernel), or with ``max_rank`` where no rank up to it meets it.
        max_rank: with ``tol``: the highest rank tried (1 .. 64); given, the result is never wider than it.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``: validated like every op's; all three run the same
            torch pipeline on the inputs' device (there is no Triton kernel to pick).

    Every system's bound is the smallest certified at any rank up to the one asked (a larger rank never
    certifies a larger error), and its unused slots (``lam = b = 0``) say which rank that was
    (``Reduction.ranks``). Non-finite ``lam`` or ``b`` are refused; modes with
    ``|lam| > 1`` are accepted with a ``RuntimeWarning`` (the kernel over the horizon is still defined; the
    result is stable and certified over the horizon only).

    Returns:
        :class:`~etsc_triton.ops.reduce.contract.Reduction` ``(lam, b, bound)``: complex64 `[..., rank]` with
        ``|lam| <= 1``, and float32 `[...]` ``bound >= max_(j < length) |K_j - K^r_j|``, the error of the returned
        complex64 modes evaluated in float64 and rounded up by a margin covering that evaluation's own rounding.

    Example:
        >>> import torch, etsc_triton as et
        >>> lam = torch.tensor([[0.9 + 0.1j, 0.5 + 0j, 0.7 - 0.3j]])
        >>> b = torch.tensor([[1.0 + 0.5j, 0.2 + 0j, 1e-7 + 0j]])
        >>> lam_r, b_r, bound = et.reduce_ssm(lam, b, 2, length=100)
        >>> lam_r.shape, bool(bound < 1e-5)
        (torch.Size([1, 2]), True)
    """
    rank, length, tol, max_rank = check_reduce_args(lam, b, rank, length, tol, max_rank)
    check_backend(FN_NAME, backend)
    warn_unstable(FN_NAME, lam, length)
    lam64, b64 = lam.detach().to(torch.complex128), b.detach().to(torch.complex128)
    kernel = polar_kernel64(lam64, b64, length)
    return reduce_kernel(kernel, rank, tol, max_rank=max_rank, scale_terms=b64.abs().sum(-1), terms=lam.shape[-1],
                         exact=(lam64, b64))


def reduce_toeplitz(
    t: torch.Tensor,
    gamma: float | torch.Tensor | None = None,
    rank: int | None = None,
    *,
    length: int | None = None,
    tol: float | None = None,
    max_rank: int | None = None,
    backend: str = "auto",
) -> Reduction:
    """Reduce causal Toeplitz kernels ``K_j = gamma^j t_j`` to ``rank`` folded modes with a certified error: the
    order reduction of :func:`reduce_ssm` fitted straight to the taps (ETSC modes are formed only under ``tol``,
    as its last candidate).

    Args:
        t: `[..., n]` real floating taps, lag last.
        gamma: decay in (0, 1]: None (1), a float, or a real tensor broadcastable to `t.shape[:-1]`.
        rank: folded modes to keep (1 .. 64), or None with ``tol``.
        length: the horizon, lags ``0 .. length-1`` (default and at most n).
        tol: instead of ``rank``: per row, the smallest rank with ``bound <= tol * max_j |gamma^j t_j|`` (the
            rank at which ``rank=`` first certifies it; ``Reduction.ranks``: each row's own, the batch padded to
            the largest). The taps' own ETSC modes (``ceil(length / 2)`` folded DFT modes, rounded to complex64
            with a first-order correction of the residues for the poles' rounding) are the candidate at that
            rank: without ``max_rank``, a row that no fitted rank up to 64 certifies gets them however many
            they are (``ceil(length / 2)`` wide), so the tolerance always gets an answer down to what complex64
            modes resolve of the kernel.
        max_rank: with ``tol``: the highest rank tried (1 .. 64); given, the result is never wider than it and
            ``ValueError`` names the best relative bound where no rank up to it meets ``tol``.
        backend: as in :func:`reduce_ssm`.

    Returns:
        :class:`~etsc_triton.ops.reduce.contract.Reduction` ``(lam, b, bound)`` as in :func:`reduce_ssm`, the bound
        on ``max_(j < length) |K^r_j - gamma^j t_j|`` (not differentiable).

    Example:
        >>> import torch, etsc_triton as et
        >>> lags = torch.arange(200.0)
        >>> t = torch.exp(-((lags - 30.0) / 40.0) ** 2)[None]
        >>> lam, b, bound = et.reduce_toeplitz(t, 0.98, 3)
        >>> lam.shape, bool(bound < 1e-3)
        (torch.Size([1, 3]), True)
    """
    return reduce_taps(TAPS_FN_NAME, t, gamma, rank, tol, length, max_rank, backend)


def reduce_taps(fn_name: str, t: torch.Tensor, gamma: object, rank: object, tol: object, length: object,
                max_rank: object, backend: str) -> Reduction:
    """:func:`reduce_toeplitz` with its errors naming ``fn_name``."""
    gamma64, rank, length, tol, max_rank = check_taps_args(fn_name, t, gamma, rank, tol, length, max_rank)
    check_backend(fn_name, backend)
    taps = t.detach().to(torch.float64)[..., :length]
    lags = torch.arange(length, dtype=torch.float64, device=t.device)
    kernel = taps * gamma64[..., None] ** lags
    exact = None if tol is None else etsc_modes(taps, gamma64, max_rank)
    exact_residues = None
    if exact is not None:
        lam_e, b_e = (x.reshape(-1, x.shape[-1]) for x in exact)

        def exact_residues(rows: torch.Tensor, lam32: torch.Tensor) -> torch.Tensor:
            return etsc_rounded_residues(lam_e[rows], b_e[rows], lam32, length)

    return reduce_kernel(kernel, rank, tol, max_rank=max_rank, scale_terms=taps.abs().amax(-1), terms=1,
                         exact=exact, exact_residues=exact_residues, fn_name=fn_name)
