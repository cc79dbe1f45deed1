"""Fused Vandermonde evaluation ``K_j = Re sum_s b_s lam_s^j`` for arbitrary complex nodes.

Four-step factorisation: write ``j = A * BL + a`` (0 <= a < BL). Then ``lam^j = lam^(A BL) lam^a`` and

    K[A BL + a] = Re sum_s C[A, s] P[s, a],   C[A, s] = b_s lam_s^(A BL),   P[s, a] = lam_s^a,

a small complex matrix product per channel. One program owns one channel and BLOCK_A anchors; it loops over
the modes in chunks of BLOCK_N, builds the C and P chunks in registers and accumulates the real part with two
fp32 ``tl.dot`` (``input_precision="ieee"``: tf32 would cost three decimal digits). The N x L matrix is never
formed: transcendentals drop from N * L to N * (L / BL + BL) per channel.

Powers are computed directly, not by repeated multiplication: the launcher passes ``log2 |lam|`` and
``angle(lam)`` in float64 (from complex128 copies of the nodes), the kernel forms ``j * angle`` in float64,
reduces it to [-pi/4, pi/4] plus quarter turns in float64, then evaluates sin/cos polynomials in float32
(:func:`_sincos_quadrant`), and ``|lam|^j = exp2(j * log2|lam|)``.
The phase error therefore stays ~1e-7 at j = 16384, where a float32 angle times j would be off by 3e-3.

Backward (``torch.autograd``): with upstream ``G_j = dL/dK_j``, ``db_s = conj(P_s)`` and
``dlam_s = conj(b_s Q_s)`` where ``P_s = sum_j G_j lam_s^j`` and ``Q_s = sum_j j G_j lam_s^(j-1) =
sum_j (j+1) G_{j+1} lam_s^j``: two polynomials evaluated at the nodes, the same four-step factorisation with
the contraction over the lags instead of the modes (``sum_A lam^(A BL) sum_a G[A BL + a] lam^a``), one
program per (channel, block of modes, polynomial).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..complex import complex_mul, real_view
from ..dispatch import needs_grad, registered_launcher, resolve_backend
from ..tiles import TilePolicy, cdiv, current_tiles, next_power_of_2, sm_count
from . import naive
from .contract import check_kernel_args


@triton.jit
def _sincos_quadrant(phase):
    """``(cos, sin)`` float32 of a float64 angle ``phase``: reduced in float64 to ``r`` in [-pi/4, pi/4] plus
    ``q`` quarter turns, then Taylor polynomials in float32 (the first neglected terms, r^11 / 11! and
    r^12 / 12!, are below 2e-9) and the quadrant's swap and signs. Replaces ``tl.cos`` / ``tl.sin``, whose
    own range reduction (and large-argument slow path) took ~70% of the kernel's
    instructions on sm_90."""
    two_over_pi = tl.full([1, 1], 0.6366197723675814, tl.float64)
    half_pi = tl.full([1, 1], 1.5707963267948966, tl.float64)
    quarter_turns = tl.floor(phase * two_over_pi + 0.5)
    r = (phase - quarter_turns * half_pi).to(tl.float32)
    quadrant = quarter_turns.to(tl.int64) & 3
    z = r * r
    sin_r = r + r * z * (-1.0 / 6 + z * (1.0 / 120 + z * (-1.0 / 5040 + z * (1.0 / 362880))))
    cos_r = 1.0 + z * (-0.5 + z * (1.0 / 24 + z * (-1.0 / 720 + z * (1.0 / 40320 + z * (-1.0 / 3628800)))))
    odd = (quadrant & 1) == 1  # cos(r + q pi/2), sin(r + q pi/2) for q = 0, 1, 2, 3
    cos_val = tl.where(odd, sin_r, cos_r)
    sin_val = tl.where(odd, cos_r, sin_r)
    cos_val = tl.where((quadrant == 1) | (quadrant == 2), -cos_val, cos_val)
    sin_val = tl.where(quadrant >= 2, -sin_val, sin_val)
    return cos_val, sin_val


@triton.jit
def _node_powers(log2_mag, angle, exponent):
    """``lam^exponent`` as (re, im) float32 from float64 ``log2|lam|``, ``angle(lam)`` and exponents.

    All three are broadcast-compatible float64 tensors. A zero node arrives with a huge negative finite
    ``log2|lam|`` (not -inf), so ``0^0 = 1`` and ``0^j = 0`` without a 0 * inf.
    """
    magnitude = tl.exp2((exponent * log2_mag).to(tl.float32))
    cos_val, sin_val = _sincos_quadrant(exponent * angle)
    return magnitude * cos_val, magnitude * sin_val


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


@triton.jit
def _evaluate_anchors(coeffs, pw_re, pw_im, anchor_re, anchor_im):
    """``sum_A lam^(A BL) sum_a coeffs[A, a] lam^a`` per node: coeffs ``[BLOCK_A, BL]`` (real), the offset powers
    ``[BL, BLOCK_N]`` and the anchor powers ``[BLOCK_A, BLOCK_N]``; returns ``(re, im)`` ``[BLOCK_N]``."""
    inner_re = tl.dot(coeffs, pw_re, input_precision="ieee")
    inner_im = tl.dot(coeffs, pw_im, input_precision="ieee")
    term_re, term_im = complex_mul(anchor_re, anchor_im, inner_re, inner_im)
    return tl.sum(term_re, axis=0), tl.sum(term_im, axis=0)


@triton.jit(do_not_specialize=["length"])
def _ssm_kernel_backward_kernel(
    log2_mag_ptr,  # [rows, modes] float64
    angle_ptr,  # [rows, modes] float64
    dk_ptr,  # [rows, length] float32 contiguous: G
    out_ptr,  # out: [2, rows, modes, 2] float32: P = sum_j G_j lam^j, then Q = sum_j (j + 1) G_{j+1} lam^j
    rows,
    modes,
    length,
    n_anchors,
    BL: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One polynomial (program_id(2): 0 for P, 1 for Q) at BLOCK_N nodes of one channel."""
    row = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    shift = tl.program_id(2)  # Q's coefficients are the lag-weighted G shifted by one
    s_ok = s < modes
    node_off = row * modes + s
    log2_mag = tl.load(log2_mag_ptr + node_off, mask=s_ok, other=0.0)[None, :]
    angle = tl.load(angle_ptr + node_off, mask=s_ok, other=0.0)[None, :]
    offset = tl.arange(0, BL)
    pw_re, pw_im = _node_powers(log2_mag, angle, offset.to(tl.float64)[:, None])  # [BL, BLOCK_N]: lam^a
    acc_re = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_im = tl.zeros([BLOCK_N], dtype=tl.float32)
    dk_row = dk_ptr + row * length
    for first in tl.range(0, n_anchors, BLOCK_A):
        anchor = first + tl.arange(0, BLOCK_A)
        lag = anchor.to(tl.int64)[:, None] * BL + offset[None, :] + shift  # [BLOCK_A, BL]
        coeffs = tl.load(dk_row + lag, mask=lag < length, other=0.0)
        coeffs = tl.where(shift == 1, coeffs * lag.to(tl.float32), coeffs)
        anchor_re, anchor_im = _node_powers(log2_mag, angle, (anchor.to(tl.int64) * BL).to(tl.float64)[:, None])
        term_re, term_im = _evaluate_anchors(coeffs, pw_re, pw_im, anchor_re, anchor_im)
        acc_re += term_re
        acc_im += term_im
    out = out_ptr + (shift * rows * modes + node_off) * 2
    tl.store(out, acc_re, mask=s_ok)
    tl.store(out + 1, acc_im, mask=s_ok)


def _kernel_blocks(modes: int, length: int, policy: TilePolicy, max_bl: int = 64,
                   max_block_a: int = 32) -> tuple[int, int, int]:
    """(BL, BLOCK_A, BLOCK_N): every tl.dot dimension >= 16; BL at most ``max_bl``; BLOCK_A is
    ``max_block_a`` once a row has that many anchors, else 32; each capped by the tile policy."""
    bl = min(64 if length >= 2048 else max(16, min(64, next_power_of_2(max(1, length) // 32))), max_bl,
             policy.kernel_max_bl)
    block_n = min(16 if modes <= 16 else 32, policy.kernel_max_block_n)
    block_a = min(max_block_a if cdiv(length, bl) >= max_block_a else 32, policy.kernel_max_block_a)
    return bl, block_a, block_n


def _forward_block_a(rows: int, length: int, device: torch.device, policy: TilePolicy) -> int:
    """64 anchors per forward program when that still leaves two programs per SM, else 32. A program evaluates
    the ``[BLOCK_N, BL]`` offset powers of its mode chunks once for all its anchors, so fewer programs per row
    repeat them: sm_90 SASS per row at N=64, L=4096, 1.08M -> 0.90M lane-instructions, 128 registers (the
    backward, whose anchor chunks share one program already, keeps 32)."""
    return 64 if rows * cdiv(length, 64 * 64) >= 2 * sm_count(device, policy) else 32


# The backward's dot contracts over BL (the forward's over BLOCK_N): BL = 64 took 128 registers and spilled
# on sm_90, BL = 32 compiles to 127 without spills.
BACKWARD_MAX_BL = 32


def _polar64(lam2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log2 |lam|, angle(lam))`` in float64, contiguous; ``log2 |0|`` is a huge negative finite number."""
    nodes = lam2d.detach().to(torch.complex128)
    log2_mag = torch.log2(nodes.abs()).clamp_min(-1e30).contiguous()  # finite for lam = 0 (NaN stays NaN)
    return log2_mag, torch.angle(nodes).contiguous()


@registered_launcher("etsc_triton::ssm_kernel", mutates_args=())
def _ssm_kernel_triton(lam2d: torch.Tensor, b2d: torch.Tensor, length: int) -> torch.Tensor:
    """``lam2d``, ``b2d`` `[rows, N]` complex -> K `[rows, length]` float32."""
    rows, modes = lam2d.shape
    out = torch.empty((rows, length), dtype=torch.float32, device=lam2d.device)
    if rows == 0 or length == 0:
        return out
    log2_mag, angle = _polar64(lam2d)
    policy = current_tiles()
    max_block_a = _forward_block_a(rows, length, lam2d.device, policy)
    bl, block_a, block_n = _kernel_blocks(modes, length, policy, max_block_a=max_block_a)
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


@registered_launcher("etsc_triton::ssm_kernel_backward", mutates_args=())
def _ssm_kernel_backward_triton(
    lam2d: torch.Tensor, b2d: torch.Tensor, dk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam2d``, ``b2d`` `[rows, N]` complex, ``dk`` `[rows, L]` float32 contiguous -> (dlam, db) complex64."""
    rows, modes = lam2d.shape
    length = dk.shape[1]
    polynomials = torch.empty((2, rows, modes), dtype=torch.complex64, device=lam2d.device)
    log2_mag, angle = _polar64(lam2d)
    bl, block_a, block_n = _kernel_blocks(modes, length, current_tiles(), BACKWARD_MAX_BL)
    wrap_triton(_ssm_kernel_backward_kernel)[(rows, cdiv(modes, block_n), 2)](
        log2_mag, angle, dk, torch.view_as_real(polynomials), rows, modes, length, cdiv(length, bl),
        BL=bl, BLOCK_A=block_a, BLOCK_N=block_n, num_warps=4,
    )
    p, q = polynomials
    return (b2d.to(torch.complex64) * q).conj(), p.conj()


class _SSMKernelFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lam2d, b2d, length):
        ctx.save_for_backward(lam2d, b2d)
        return _ssm_kernel_triton(lam2d, b2d, length)

    @staticmethod
    def backward(ctx, dk):
        lam2d, b2d = ctx.saved_tensors
        dlam, db = _ssm_kernel_backward_triton(lam2d, b2d, dk.to(torch.float32).contiguous())
        return dlam.to(lam2d.dtype), db.to(b2d.dtype), None


def ssm_kernel(lam: torch.Tensor, b: torch.Tensor, length: int, *, backend: str = "auto") -> torch.Tensor:
    """Evaluate the convolution kernel of a diagonal SSM: ``K_j = Re sum_s b_s lam_s^j``, ``0 <= j < length``.

    Works for any complex nodes (ETSC, S4D, LRU, ...); memory is O(D * length): the N x length Vandermonde
    matrix is never formed. Differentiable in lam and b (the backward evaluates two polynomials in the
    upstream gradient at the nodes, with the same factorisation).

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
    which = resolve_backend("ssm_kernel", backend, lam, b, empty=lam.numel() == 0 or length == 0)
    if which == "torch":
        return naive.ssm_kernel(lam.to(torch.complex64), b.to(torch.complex64), length)
    batch = tuple(lam.shape[:-1])
    modes = lam.shape[-1]
    lam2d, b2d = lam.reshape(-1, modes), b.reshape(-1, modes)
    if needs_grad(lam, b) and length > 0 and lam2d.shape[0] > 0:
        out = _SSMKernelFunction.apply(lam2d, b2d, length)
    else:
        out = _ssm_kernel_triton(lam2d, b2d, length)
    return out.reshape(*batch, length)
