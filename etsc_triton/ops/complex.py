"""Complex arithmetic for the kernels: complex64 tensors at the boundary, separate fp32 re / im inside.

Host side, :func:`real_view` turns complex64 ``[..., N]`` into the interleaved float32 ``[..., N, 2]`` view the
kernels read. Device side, the ``@triton.jit`` helpers multiply and divide re / im pairs and move tiles of
interleaved complex64 rows in and out of registers.
"""

from __future__ import annotations

import math

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
    Vandermonde matrix of complex powers ``lam ** j`` (memory O(N * length) per row): the definition, for oracles.

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


def _polar_blocks(lam: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam^(a B)`` `[..., A, N]` and ``lam^c`` `[..., B, N]` (``j = a B + c``, ``B = isqrt(length)``), each from
    ``exp(e log|lam|)`` and the angle ``e arg(lam)`` reduced mod 2 pi (complex128)."""
    lam = lam.to(torch.complex128)
    block = max(1, math.isqrt(length))
    anchors = -(-length // block)
    log_mag = torch.log(lam.abs()).clamp_min(-1e30)[..., None, :]  # lam = 0: 0^0 = 1, 0^e = 0
    angle = torch.angle(lam)[..., None, :]

    def polar(exponents: torch.Tensor) -> torch.Tensor:
        e = exponents.to(torch.float64)[:, None]
        return torch.polar(torch.exp(log_mag * e), torch.remainder(angle * e, 2 * math.pi))

    steps = torch.arange(max(anchors, block), device=lam.device)
    return polar(steps[:anchors] * block), polar(steps[:block])


def polar_powers(lam: torch.Tensor, length: int) -> torch.Tensor:
    """``lam^j`` for ``j < length``: complex128 `[..., length, N]` from `[..., N]`, as ``lam^(a B) * lam^c`` with
    both factors in polar form (one complex product per entry, no exp per entry). Relative error per entry at
    most ``(j |log|lam|| + j pi + 8) 2^-53``: the basis of least-squares fits over a horizon."""
    outer, inner = _polar_blocks(lam, length)
    table = outer[..., :, None, :] * inner[..., None, :, :]  # [..., A, B, N]
    return table.reshape(*table.shape[:-3], -1, table.shape[-1])[..., :length, :]


def polar_kernel64(lam: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """``K_j = Re sum_s b_s lam_s^j`` for ``j < length`` in float64 by the polar powers of :func:`polar_powers`,
    without the ``N x length`` matrix: ``(b lam^(a B)) . lam^c`` as one batched product (memory O(N sqrt(length))
    per row). The certified evaluation of the order reduction.

    Args:
        lam, b: `[..., N]` complex.
        length: number of lags L >= 0.

    Returns:
        K `[..., L]` float64.
    """
    outer, inner = _polar_blocks(lam, length)
    coeff = b.to(torch.complex128)[..., None, :] * outer  # [..., A, N]
    out = (coeff @ inner.transpose(-1, -2)).real  # [..., A, B]
    return out.reshape(*out.shape[:-2], -1)[..., :length]


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
