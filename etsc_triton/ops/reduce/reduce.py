"""Order reduction of diagonal SSMs with a certified kernel error (public entry points).

The pipeline (``fit.py``) is torch on float64, batched over systems: it runs on the device of its inputs
(a GPU when they live on one). No Triton kernel: its heavy parts are batched FFTs, QR factorisations and small
eigenproblems that cuFFT / cuSOLVER already do well (README).
"""

from __future__ import annotations

import torch

from ..dispatch import resolve_backend
from .certificate import modal_kernel
from .contract import FN_NAME, check_rank_tol, check_reduce_args
from .pipeline import reduce_kernel


def reduce_ssm(
    lam: torch.Tensor,
    b: torch.Tensor,
    rank: int | None = None,
    *,
    length: int,
    tol: float | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        tol: instead of ``rank``: the smallest rank whose bound is ``<= tol * max_j |K_j|`` in every system
            (systems that meet it at a lower rank keep that fit, padded with unused modes). Raises
            ``ValueError`` when no rank up to 64 (or N) meets it.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``: validated like every op; all run the same torch
            pipeline on the inputs' device.

    Returns:
        ``(lam_r, b_r, bound)``: complex64 `[..., rank]` with ``|lam_r| <= 1``, and float32 `[...]`
        ``bound >= max_(j < length) |K_j - K^r_j|``, the error of the returned complex64 modes evaluated in
        float64 and rounded up by a margin covering that evaluation's own rounding.

    Example:
        >>> import torch, etsc_triton as et
        >>> lam = torch.tensor([[0.9 + 0.1j, 0.5 + 0j, 0.7 - 0.3j]])
        >>> b = torch.tensor([[1.0 + 0.5j, 0.2 + 0j, 1e-7 + 0j]])
        >>> lam_r, b_r, bound = et.reduce_ssm(lam, b, 2, length=100)
        >>> lam_r.shape, bool(bound < 1e-5)
        (torch.Size([1, 2]), True)
    """
    rank, length, tol = check_reduce_args(lam, b, rank, length, tol)
    resolve_backend(FN_NAME, backend, lam, b)
    lam64, b64 = lam.detach().to(torch.complex128), b.detach().to(torch.complex128)
    kernel = modal_kernel(lam64, b64, length)
    return reduce_kernel(kernel, rank, tol, b_total=b64.abs().sum(-1), exact=(lam64, b64))


def taps_kernel(t: torch.Tensor, gamma, length: int) -> torch.Tensor:
    """``gamma^j t_j`` for ``j < length`` in float64 `[..., length]` (gamma a float or a tensor of
    ``t.shape[:-1]``)."""
    t64 = t.detach().to(torch.float64)[..., :length]
    lags = torch.arange(length, dtype=torch.float64, device=t.device)
    gamma64 = torch.as_tensor(gamma, dtype=torch.float64, device=t.device)
    return t64 * gamma64[..., None] ** lags


def reduce_taps(fn_name, t, gamma, real, rank, tol, length, *, subspace="columns", refine=True):
    """The reduction of ``toeplitz_to_ssm(t, gamma, rank=|tol=, length=)``: fitted straight to the taps'
    kernel ``gamma^j t_j``, no ETSC modes formed. ``t`` and ``gamma`` already checked (gamma a float or a tensor
    of ``t.shape[:-1]``)."""
    if not real:
        raise ValueError(f"{fn_name}: rank / tol / length need real=True (the reduction returns folded modes)")
    if rank is None and tol is None:
        raise ValueError(f"{fn_name}: length is the horizon of a reduction: give rank or tol with it")
    rank, tol = check_rank_tol(fn_name, rank, tol)
    n = t.shape[-1]
    if length is None:
        length = n
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"{fn_name}: length must be an int, got {type(length).__name__}")
    if not 1 <= length <= n:
        raise ValueError(
            f"{fn_name}: length must lie in [1, n] = [1, {n}] (the taps define lags < n), got {length}"
        )
    kernel = taps_kernel(t, gamma, length)
    scale = t.detach().to(torch.float64)[..., :length].abs().amax(-1)
    return reduce_kernel(kernel, rank, tol, b_total=scale, subspace=subspace, refine=refine, fn_name=fn_name)
