"""Fused Vandermonde evaluation ``K_j = Re sum_s b_s lam_s^j`` for arbitrary complex nodes (DESIGN 1.2).

Four-step factorisation: write ``j = A * BL + a`` (0 <= a < BL). Then ``lam^j = lam^(A BL) lam^a`` and

    K[A BL + a] = Re sum_s C[A, s] P[s, a],   C[A, s] = b_s lam_s^(A BL),   P[s, a] = lam_s^a,

a small complex matrix product per channel. One program owns one channel and BLOCK_A anchors; it loops over
the modes in chunks of BLOCK_N, builds the C and P chunks in registers and accumulates the real part with two
fp32 ``tl.dot`` (``input_precision="ieee"``: tf32 would cost three decimal digits). The N x L matrix is never
formed: transcendentals drop from N * L to N * (L / BL + BL) per channel.

Powers are computed directly, not by repeated multiplication: the launcher passes ``log2 |lam|`` and
``angle(lam)`` in float64 (from complex128 copies of the nodes), the kernel forms ``j * angle`` in float64,
reduces it to [-pi, pi) in float64, then takes cos/sin in float32, and ``|lam|^j = exp2(j * log2|lam|)``.
The phase error therefore stays ~1e-7 at j = 16384, where a float32 angle times j would be off by 3e-3.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..utils import (
    cdiv,
    complex_mul,
    interpreter_enabled,
    next_power_of_2,
    real_view,
    registered_launcher,
    resolve_backend,
)
from . import naive
from .naive import check_kernel_args

# ----------------------------------------------------------------------------------------------- jit kernels


@triton.jit
def _node_powers(log2_mag, angle, exponent):
    """``lam^exponent`` as (re, im) float32 from float64 ``log2|lam|``, ``angle(lam)`` and exponents.

    All three are broadcast-compatible float64 tensors. A zero node arrives with a huge negative finite
    ``log2|lam|`` (not -inf), so ``0^0 = 1`` and ``0^j = 0`` without a 0 * inf.
    """
    two_pi = tl.full([1, 1], 6.283185307179586, tl.float64)
    phase = exponent * angle
    phase = phase - two_pi * tl.floor(phase / two_pi + 0.5)
    magnitude = tl.exp2((exponent * log2_mag).to(tl.float32))
    phase32 = phase.to(tl.float32)
    return magnitude * tl.cos(phase32), magnitude * tl.sin(phase32)


@triton.jit(do_not_specialize=["length"])
def _ssm_kernel_kernel(
    log2_mag_ptr,  # [rows, modes] float64
    angle_ptr,  # [rows, modes] float64
    b_ptr,  # [rows, modes, 2] float32
    out_ptr,  # [rows, length] float32
    modes,
    length,
    BL: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    anchor = tl.program_id(1) * BLOCK_A + tl.arange(0, BLOCK_A)
    offset = tl.arange(0, BL)
    anchor_exp = (anchor.to(tl.int64) * BL).to(tl.float64)[:, None]  # [BLOCK_A, 1]
    offset_exp = offset.to(tl.float64)[None, :]  # [1, BL]

    acc = tl.zeros([BLOCK_A, BL], dtype=tl.float32)
    for start in tl.range(0, modes, BLOCK_N):
        s = start + tl.arange(0, BLOCK_N)
        s_ok = s < modes
        node_off = row * modes + s
        log2_mag = tl.load(log2_mag_ptr + node_off, mask=s_ok, other=0.0)
        angle = tl.load(angle_ptr + node_off, mask=s_ok, other=0.0)
        b_re = tl.load(b_ptr + node_off * 2, mask=s_ok, other=0.0)
        b_im = tl.load(b_ptr + node_off * 2 + 1, mask=s_ok, other=0.0)

        anchor_re, anchor_im = _node_powers(log2_mag[None, :], angle[None, :], anchor_exp)
        c_re, c_im = complex_mul(b_re[None, :], b_im[None, :], anchor_re, anchor_im)  # [BLOCK_A, BLOCK_N]
        p_re, p_im = _node_powers(log2_mag[:, None], angle[:, None], offset_exp)  # [BLOCK_N, BL]

        acc = tl.dot(c_re, p_re, acc, input_precision="ieee")
        acc = tl.dot(-c_im, p_im, acc, input_precision="ieee")

    lag = anchor.to(tl.int64)[:, None] * BL + offset[None, :]
    tl.store(out_ptr + row * length + lag, acc, mask=lag < length)


# ----------------------------------------------------------------------------------------------- launchers


def _kernel_blocks(modes: int, length: int) -> tuple[int, int, int]:
    """(BL, BLOCK_A, BLOCK_N): every tl.dot dimension >= 16."""
    if interpreter_enabled():
        return 16, 16, 16
    bl = 64 if length >= 2048 else max(16, min(64, next_power_of_2(max(1, length) // 32)))
    block_n = 16 if modes <= 16 else 32
    return bl, 32, block_n


@registered_launcher("etsc_triton::ssm_kernel", mutates_args=())
def _ssm_kernel_triton(lam2d: torch.Tensor, b2d: torch.Tensor, length: int) -> torch.Tensor:
    """``lam2d``, ``b2d`` `[rows, N]` complex -> K `[rows, length]` float32."""
    rows, modes = lam2d.shape
    out = torch.empty((rows, length), dtype=torch.float32, device=lam2d.device)
    if rows == 0 or length == 0:
        return out
    nodes = lam2d.to(torch.complex128)
    log2_mag = torch.log2(nodes.abs()).clamp_min(-1e30).contiguous()  # finite for lam = 0 (NaN stays NaN)
    angle = torch.angle(nodes).contiguous()
    bl, block_a, block_n = _kernel_blocks(modes, length)
    grid = (rows, cdiv(cdiv(length, bl), block_a))
    wrap_triton(_ssm_kernel_kernel)[grid](
        log2_mag,
        angle,
        real_view(b2d),
        out,
        modes,
        length,
        BL=bl,
        BLOCK_A=block_a,
        BLOCK_N=block_n,
        num_warps=4,
    )
    return out


# ----------------------------------------------------------------------------------------------- public function


def ssm_kernel(lam, b, length, *, backend="auto"):
    """Evaluate the convolution kernel of a diagonal SSM: ``K_j = Re sum_s b_s lam_s^j``, ``0 <= j < length``.

    Works for any complex nodes (ETSC, S4D, LRU, ...); memory is O(D * length): the N x length Vandermonde
    matrix is never formed.

    Args:
        lam: `[..., N]` complex nodes.
        b: `[..., N]` complex weights, same shape as ``lam``.
        length: number of lags L >= 0.
        backend: ``"auto"`` (Triton on CUDA, else Torch), ``"triton"`` or ``"torch"``.

    Returns:
        K `[..., L]` float32.

    Example:
        >>> import torch, etsc_triton as et
        >>> lam, b = et.toeplitz_to_ssm(torch.randn(2, 31))
        >>> et.ssm_kernel(lam, b, 31).shape
        torch.Size([2, 31])
    """
    length = check_kernel_args(lam, b, length)
    which = resolve_backend("ssm_kernel", backend, lam, b)
    if which == "torch":
        return naive.ssm_kernel(lam.to(torch.complex64), b.to(torch.complex64), length)
    batch = tuple(lam.shape[:-1])
    modes = lam.shape[-1]
    out = _ssm_kernel_triton(lam.reshape(-1, modes), b.reshape(-1, modes), length)
    return out.reshape(*batch, length)
