"""Complex arithmetic for the kernels: complex64 tensors at the boundary, separate fp32 re / im inside.

Host side, :func:`real_view` turns complex64 ``[..., N]`` into the interleaved float32 ``[..., N, 2]`` view the
kernels read. Device side, the ``@triton.jit`` helpers multiply and divide re / im pairs and move tiles of
interleaved complex64 rows in and out of registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def real_view(z: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` complex64 -> ``[..., N, 2]`` float32 view (re, im interleaved), contiguous.

    Copies only when ``z`` is not already a contiguous complex64 tensor.
    """
    return torch.view_as_real(z.to(torch.complex64).contiguous())


def vandermonde_kernel64(lam: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """``K_j = Re sum_s b_s lam_s^j`` for ``j < length`` in complex128 by the materialised ``[..., N, length]``
    Vandermonde matrix (memory O(N * length) per row): the definition, for oracles and certificates.

    Args:
        lam, b: `[..., N]` complex (evaluated in complex128: lam^j in complex64 would lose ~j * 6e-8 relative).
        length: number of lags L >= 0.

    Returns:
        K `[..., L]` float64.
    """
    lam = lam.to(torch.complex128)
    j = torch.arange(length, device=lam.device)
    powers = torch.where(j == 0, torch.ones((), dtype=lam.dtype, device=lam.device), lam[..., :, None] ** j)
    return torch.einsum("...s,...sj->...j", b.to(lam.dtype), powers).real


@triton.jit
def complex_mul(ar, ai, br, bi):
    """(ar + i ai) * (br + i bi) on separate real/imaginary fp32 tensors; returns ``(re, im)``."""
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def complex_span(first_mode, n_modes, mode_stride, BLOCK_N: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """Float offsets (from a row's mode 0) and mask of modes ``[first_mode, first_mode + BLOCK_N)``, re/im
    interleaved: ``[2 * BLOCK_N]``. CONTIGUOUS (mode stride 2 floats) makes the span one run of floats, which
    the compiler reads and writes with 16-byte accesses; other strides fall back to per-element offsets."""
    flat = 2 * first_mode + tl.arange(0, 2 * BLOCK_N)
    if CONTIGUOUS:
        offsets = flat.to(tl.int64)
    else:
        offsets = (flat // 2).to(tl.int64) * mode_stride + flat % 2
    return offsets, flat < 2 * n_modes


@triton.jit
def load_complex(row_ptrs, row_mask, first_mode, n_modes, mode_stride,
                 BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """``(re, im)`` fp32 tiles ``[BLOCK_R, BLOCK_N]`` of modes ``first_mode..`` of interleaved complex64 rows.

    ``row_ptrs`` ``[BLOCK_R, 1]`` point at each row's mode 0 (real part), ``row_mask`` ``[BLOCK_R, 1]``; masked
    rows and modes ``>= n_modes`` read as 0. The row span is loaded flat and de-interleaved in registers.
    """
    offsets, mode_ok = complex_span(first_mode, n_modes, mode_stride, BLOCK_N, CONTIGUOUS)
    values = tl.load(row_ptrs + offsets[None, :], mask=row_mask & mode_ok[None, :], other=0.0)
    return tl.split(tl.reshape(values, [BLOCK_R, BLOCK_N, 2]))


@triton.jit
def store_complex(row_ptrs, row_mask, first_mode, n_modes, mode_stride, re, im,
                  BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """Store ``(re, im)`` tiles ``[BLOCK_R, BLOCK_N]`` as interleaved complex64 (the layout of :func:`load_complex`)."""
    offsets, mode_ok = complex_span(first_mode, n_modes, mode_stride, BLOCK_N, CONTIGUOUS)
    values = tl.reshape(tl.join(re, im), [BLOCK_R, 2 * BLOCK_N])
    tl.store(row_ptrs + offsets[None, :], values, mask=row_mask & mode_ok[None, :])


@triton.jit
def conj_mul(a_re, a_im, z_re, z_im):
    """``conj(a) * z`` on real/imaginary parts."""
    return a_re * z_re + a_im * z_im, a_re * z_im - a_im * z_re
