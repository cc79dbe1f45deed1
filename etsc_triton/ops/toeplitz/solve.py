"""Batched Vandermonde solve ``sum_s b_s lam_s^j = t_j`` (j < N) by Bjorck-Pereyra, one Triton program per system.

With unknowns indexed 0..n (n = N - 1), the solve is two sweeps of n passes each (derivation in the README):

    forward,  k = 0 .. n-1:   r_i <- r_i - lam_k r_{i-1}                             for i > k
    backward, k = n-1 .. 0:   r_i <- r_i / (lam_i - lam_{i-k-1})                     for i > k
                              r_i <- r_i - r_{i+1}                                   for k <= i < n

The nodes are taken in Leja order (``naive.leja_order``, on the host; the solution is permuted back): in
natural order the recurrences are unstable for nodes on the unit circle, in Leja order they are accurate.
O(N^2) complex flops per system, fp32 complex arithmetic. Every pass reads the whole vector from one global
buffer and writes it to the other (the output and a scratch buffer, ping-pong), with ``tl.debug_barrier()``
between passes so each pass sees the previous one's stores; 2n passes leave the result in the output buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..utils import complex_mul, interpreter_enabled, next_power_of_2, real_view, registered_launcher, resolve_backend
from . import naive
from .naive import check_solve_args, leja_order

# ----------------------------------------------------------------------------------------------- jit kernels


@triton.jit
def _complex_div(ar, ai, br, bi):
    """(ar + i ai) / (br + i bi) in fp32."""
    inv = 1.0 / (br * br + bi * bi)
    return (ar * br + ai * bi) * inv, (ai * br - ar * bi) * inv


@triton.jit
def _bjorck_pereyra_kernel(
    nodes_ptr,  # [systems, N, 2] float32
    out_ptr,  # [systems, N, 2] float32: holds t on entry, b on exit
    scratch_ptr,  # [systems, N, 2] float32
    size,
    BLOCK: tl.constexpr,
):
    base = tl.program_id(0).to(tl.int64) * size * 2
    x_ptr = nodes_ptr + base
    src = out_ptr + base
    dst = scratch_ptr + base

    for k in range(size - 1):
        xk_re = tl.load(x_ptr + 2 * k)
        xk_im = tl.load(x_ptr + 2 * k + 1)
        for start in range(0, size, BLOCK):
            i = start + tl.arange(0, BLOCK)
            ok = i < size
            has_prev = ok & (i >= 1)
            cur_re = tl.load(src + 2 * i, mask=ok, other=0.0)
            cur_im = tl.load(src + 2 * i + 1, mask=ok, other=0.0)
            prev_re = tl.load(src + 2 * i - 2, mask=has_prev, other=0.0)
            prev_im = tl.load(src + 2 * i - 1, mask=has_prev, other=0.0)
            shift_re, shift_im = complex_mul(xk_re, xk_im, prev_re, prev_im)
            update = i > k
            tl.store(dst + 2 * i, tl.where(update, cur_re - shift_re, cur_re), mask=ok)
            tl.store(dst + 2 * i + 1, tl.where(update, cur_im - shift_im, cur_im), mask=ok)
        tl.debug_barrier()
        src, dst = dst, src

    for step in range(size - 1):
        k = size - 2 - step
        for start in range(0, size, BLOCK):
            i = start + tl.arange(0, BLOCK)
            ok = i < size
            has_next = (i + 1) < size
            divide_cur = ok & (i > k)
            divide_next = has_next & (i >= k)
            cur_re = tl.load(src + 2 * i, mask=ok, other=0.0)
            cur_im = tl.load(src + 2 * i + 1, mask=ok, other=0.0)
            next_re = tl.load(src + 2 * i + 2, mask=has_next, other=0.0)
            next_im = tl.load(src + 2 * i + 3, mask=has_next, other=0.0)
            xi_re = tl.load(x_ptr + 2 * i, mask=ok, other=0.0)
            xi_im = tl.load(x_ptr + 2 * i + 1, mask=ok, other=0.0)
            xa_re = tl.load(x_ptr + 2 * (i - k - 1), mask=divide_cur, other=0.0)
            xa_im = tl.load(x_ptr + 2 * (i - k - 1) + 1, mask=divide_cur, other=0.0)
            xn_re = tl.load(x_ptr + 2 * i + 2, mask=has_next, other=0.0)
            xn_im = tl.load(x_ptr + 2 * i + 3, mask=has_next, other=0.0)
            xb_re = tl.load(x_ptr + 2 * (i - k), mask=divide_next, other=0.0)
            xb_im = tl.load(x_ptr + 2 * (i - k) + 1, mask=divide_next, other=0.0)
            # a_i = r_i / (lam_i - lam_{i-k-1}) for i > k (else r_i); a_{i+1} likewise for i + 1 > k.
            den_re = tl.where(divide_cur, xi_re - xa_re, 1.0)
            den_im = tl.where(divide_cur, xi_im - xa_im, 0.0)
            a_re, a_im = _complex_div(cur_re, cur_im, den_re, den_im)
            a_re = tl.where(divide_cur, a_re, cur_re)
            a_im = tl.where(divide_cur, a_im, cur_im)
            den_re = tl.where(divide_next, xn_re - xb_re, 1.0)
            den_im = tl.where(divide_next, xn_im - xb_im, 0.0)
            an_re, an_im = _complex_div(next_re, next_im, den_re, den_im)
            an_re = tl.where(divide_next, an_re, next_re)
            an_im = tl.where(divide_next, an_im, next_im)
            # r_i <- a_i - a_{i+1} for k <= i < n; a_n for the last; untouched below k.
            difference = has_next & (i >= k)
            new_re = tl.where(difference, a_re - an_re, a_re)
            new_im = tl.where(difference, a_im - an_im, a_im)
            tl.store(dst + 2 * i, tl.where(i >= k, new_re, cur_re), mask=ok)
            tl.store(dst + 2 * i + 1, tl.where(i >= k, new_im, cur_im), mask=ok)
        tl.debug_barrier()
        src, dst = dst, src


# ----------------------------------------------------------------------------------------------- launchers


@registered_launcher("etsc_triton::vandermonde_solve", mutates_args=())
def _vandermonde_solve_triton(lam2d: torch.Tensor, t2d: torch.Tensor) -> torch.Tensor:
    """``lam2d`` `[systems, N]` complex, ``t2d`` `[systems, N]` real or complex -> b `[systems, N]` complex64."""
    systems, size = lam2d.shape
    out = torch.empty((systems, size), dtype=torch.complex64, device=lam2d.device)
    out.copy_(t2d)
    if systems == 0 or size == 1:
        return out
    scratch = torch.empty_like(out)
    block = min(next_power_of_2(size), 64 if interpreter_enabled() else 1024)
    wrap_triton(_bjorck_pereyra_kernel)[(systems,)](
        real_view(lam2d),
        torch.view_as_real(out),
        torch.view_as_real(scratch),
        size,
        BLOCK=block,
        num_warps=4,
    )
    return out


# ----------------------------------------------------------------------------------------------- public function


def vandermonde_solve(lam, t, *, backend="auto"):
    """Solve the transposed Vandermonde systems ``sum_s b_s lam_s^j = t_j`` (0 <= j < N), batched.

    Bjorck-Pereyra, O(N^2) per system. Exact in exact arithmetic for any distinct nodes; in float32 it is
    accurate for well-spread nodes (DFT nodes, spread points on the unit circle) and loses accuracy fast for
    real or clustered nodes, whose Vandermonde matrices are exponentially ill-conditioned.

    Args:
        lam: `[..., N]` complex nodes, distinct within every system (repeats raise ``ValueError``).
        t: `[..., N]` real or complex right-hand sides.
        backend: ``"auto"`` (Triton on CUDA, else Torch), ``"triton"`` or ``"torch"``.

    Returns:
        b `[..., N]` complex64.

    Example:
        >>> import torch, etsc_triton as et
        >>> lam = torch.exp(-2j * torch.pi * torch.arange(1, 9) / 9).to(torch.complex64)
        >>> b = et.vandermonde_solve(lam, torch.randn(8))
        >>> b.shape
        torch.Size([8])
    """
    check_solve_args(lam, t)
    which = resolve_backend("vandermonde_solve", backend, lam, t)
    if which == "torch":
        rhs = t.to(torch.complex64) if t.is_complex() else t.to(torch.float32)
        return naive.vandermonde_solve(lam.to(torch.complex64), rhs)
    batch = tuple(lam.shape[:-1])
    size = lam.shape[-1]
    order = leja_order(lam).reshape(-1, size)
    nodes = torch.gather(lam.reshape(-1, size), -1, order)
    ordered = _vandermonde_solve_triton(nodes, t.reshape(-1, size))
    out = torch.empty_like(ordered).scatter_(-1, order, ordered)
    return out.reshape(*batch, size)
