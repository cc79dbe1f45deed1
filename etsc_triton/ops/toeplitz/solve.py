"""Batched Vandermonde solve ``sum_s b_s lam_s^j = t_j`` (j < N) by Bjorck-Pereyra, one Triton program per system.

One launch does everything for a system, in three phases separated by ``tl.debug_barrier()``:

1. Leja ordering of the nodes (the same greedy rule as ``naive.leja_order``: start at the node of largest
   modulus, then take the node maximising the sum of log-distances to those taken; float64 distances and logs).
   In natural order the recurrences are unstable for nodes on the unit circle, in Leja order they are
   accurate. The running log-distances live in a float64 scratch row; a node just taken gets ``log 0 = -inf``
   in the next pass, which is what keeps it out of every later argmax (nodes are distinct).
2. With unknowns indexed 0..n (n = N - 1) on the ordered nodes, two sweeps of n passes each (derivation in the
   README):

       forward,  k = 0 .. n-1:   r_i <- r_i - lam_k r_{i-1}                             for i > k
       backward, k = n-1 .. 0:   r_i <- r_i / (lam_i - lam_{i-k-1})                     for i > k
                                 r_i <- r_i - r_{i+1}                                   for k <= i < n

   Every pass reads the whole vector from one global buffer and writes it to the other (ping-pong); 2n passes
   leave it where it started.
3. The solution is scattered back to the original node order (``b[order[i]] = r_i``) into the output.

O(N^2) complex flops per system, fp32 complex arithmetic (the ordering in float64). The scratch rows are small
and private to the program, so they stay in L1/L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..complex import complex_mul, real_view
from ..dispatch import needs_grad, registered_launcher, resolve_backend, with_reference_gradient
from ..tiles import current_tiles, next_power_of_2
from . import naive
from .contract import check_solve_args


@triton.jit
def _complex_div(ar, ai, br, bi):
    """(ar + i ai) / (br + i bi) in fp32."""
    inv = 1.0 / (br * br + bi * bi)
    return (ar * br + ai * bi) * inv, (ai * br - ar * bi) * inv


@triton.jit
def _leja_order(
    nodes_ptr,  # this system's [N, 2] float32 nodes, original order
    ordered_ptr,  # out: [N, 2] float32 nodes in Leja order
    order_ptr,  # out: [N] int32, order[i] = original index of the i-th ordered node
    log_distance_ptr,  # scratch: [N] float64
    size,
    BLOCK: tl.constexpr,
):
    """Greedy Leja ordering of one system's nodes (phase 1 of the module docstring)."""
    best_value = tl.full([], -float("inf"), tl.float64)
    pick = tl.full([], 0, tl.int32)
    for start in range(0, size, BLOCK):  # the first node: largest modulus (first occurrence on ties)
        i = start + tl.arange(0, BLOCK)
        ok = i < size
        re = tl.load(nodes_ptr + 2 * i, mask=ok, other=0.0).to(tl.float64)
        im = tl.load(nodes_ptr + 2 * i + 1, mask=ok, other=0.0).to(tl.float64)
        modulus = tl.where(ok, tl.sqrt(re * re + im * im), -float("inf"))
        tl.store(log_distance_ptr + i, tl.zeros([BLOCK], tl.float64), mask=ok)
        block_best = tl.max(modulus, 0)
        block_pick = start + tl.argmax(modulus, 0)
        pick = tl.where(block_best > best_value, block_pick, pick)
        best_value = tl.maximum(block_best, best_value)
    for k in range(size):
        pick_re = tl.load(nodes_ptr + 2 * pick)
        pick_im = tl.load(nodes_ptr + 2 * pick + 1)
        tl.store(order_ptr + k, pick.to(tl.int32))
        tl.store(ordered_ptr + 2 * k, pick_re)
        tl.store(ordered_ptr + 2 * k + 1, pick_im)
        best_value = tl.full([], -float("inf"), tl.float64)
        for start in range(0, size, BLOCK):
            i = start + tl.arange(0, BLOCK)
            ok = i < size
            d_re = tl.load(nodes_ptr + 2 * i, mask=ok, other=0.0).to(tl.float64) - pick_re.to(tl.float64)
            d_im = tl.load(nodes_ptr + 2 * i + 1, mask=ok, other=0.0).to(tl.float64) - pick_im.to(tl.float64)
            distance = tl.sqrt(d_re * d_re + d_im * d_im)
            log_distance = tl.where(distance > 0, tl.log(tl.where(distance > 0, distance, 1.0)), -float("inf"))
            total = tl.load(log_distance_ptr + i, mask=ok, other=0.0) + log_distance
            tl.store(log_distance_ptr + i, total, mask=ok)
            total = tl.where(ok, total, -float("inf"))
            block_best = tl.max(total, 0)
            block_pick = start + tl.argmax(total, 0)
            pick = tl.where(block_best > best_value, block_pick, pick)
            best_value = tl.maximum(block_best, best_value)


@triton.jit
def _bjorck_pereyra_kernel(
    nodes_ptr,  # [systems, N, 2] float32, any order
    rhs_ptr,  # [systems, N, 2] float32: t (read)
    out_ptr,  # [systems, N, 2] float32: b, in the original node order
    work_ptr,  # scratch [systems, 3, N, 2] float32: Leja-ordered nodes, then the two ping-pong vectors
    order_ptr,  # scratch [systems, N] int32
    log_distance_ptr,  # scratch [systems, N] float64
    size,
    BLOCK: tl.constexpr,
):
    system = tl.program_id(0).to(tl.int64)
    base = system * size * 2
    x_ptr = work_ptr + 3 * base
    src = x_ptr + 2 * size
    dst = src + 2 * size
    order_row = order_ptr + system * size
    _leja_order(nodes_ptr + base, x_ptr, order_row, log_distance_ptr + system * size, size, BLOCK)
    for start in range(0, size, BLOCK):
        i = start + tl.arange(0, BLOCK)
        ok = i < size
        tl.store(src + 2 * i, tl.load(rhs_ptr + base + 2 * i, mask=ok), mask=ok)
        tl.store(src + 2 * i + 1, tl.load(rhs_ptr + base + 2 * i + 1, mask=ok), mask=ok)
    tl.debug_barrier()

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

    for start in range(0, size, BLOCK):  # b[order[i]] = r_i
        i = start + tl.arange(0, BLOCK)
        ok = i < size
        target = tl.load(order_row + i, mask=ok, other=0).to(tl.int64)
        tl.store(out_ptr + base + 2 * target, tl.load(src + 2 * i, mask=ok), mask=ok)
        tl.store(out_ptr + base + 2 * target + 1, tl.load(src + 2 * i + 1, mask=ok), mask=ok)


def solve_with_order(lam2d: torch.Tensor, t2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the kernel: ``lam2d`` `[systems, N]` complex, ``t2d`` `[systems, N]` -> (b complex64 `[systems, N]`,
    the Leja order int32 `[systems, N]` the kernel used, ``N >= 2``)."""
    systems, size = lam2d.shape
    rhs = t2d.to(torch.complex64).contiguous()
    out = torch.empty((systems, size), dtype=torch.complex64, device=lam2d.device)
    order = torch.empty((systems, size), dtype=torch.int32, device=lam2d.device)
    if systems == 0:
        return out, order
    work = torch.empty((systems, 3, size, 2), dtype=torch.float32, device=lam2d.device)
    log_distance = torch.empty((systems, size), dtype=torch.float64, device=lam2d.device)
    block = min(next_power_of_2(size), current_tiles().solve_max_block)
    wrap_triton(_bjorck_pereyra_kernel)[(systems,)](
        real_view(lam2d), torch.view_as_real(rhs), torch.view_as_real(out), work, order, log_distance, size,
        BLOCK=block, num_warps=4,
    )
    return out, order


@registered_launcher("etsc_triton::vandermonde_solve", mutates_args=())
def _vandermonde_solve_triton(lam2d: torch.Tensor, t2d: torch.Tensor) -> torch.Tensor:
    """``lam2d`` `[systems, N]` complex, ``t2d`` `[systems, N]` real or complex -> b `[systems, N]` complex64."""
    if lam2d.shape[-1] == 1:  # b_0 = t_0
        return t2d.to(torch.complex64).clone()
    return solve_with_order(lam2d, t2d)[0]


def vandermonde_solve(lam: torch.Tensor, t: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Solve the transposed Vandermonde systems ``sum_s b_s lam_s^j = t_j`` (0 <= j < N), batched.

    Bjorck-Pereyra, O(N^2) per system. Exact in exact arithmetic for any distinct nodes; in float32 it is
    accurate for well-spread nodes (DFT nodes, spread points on the unit circle) and loses accuracy fast for
    real or clustered nodes, whose Vandermonde matrices are exponentially ill-conditioned.

    Args:
        lam: `[..., N]` complex nodes, distinct within every system (repeats raise ``ValueError``).
        t: `[..., N]` real or complex right-hand sides.
        backend: ``"auto"`` (Triton on CUDA, else Torch), ``"triton"`` or ``"torch"``.

    Returns:
        b `[..., N]` complex64, differentiable in t (a lam that requires grad raises ``NotImplementedError``).

    Example:
        >>> import torch, etsc_triton as et
        >>> lam = torch.exp(-2j * torch.pi * torch.arange(1, 9) / 9).to(torch.complex64)
        >>> b = et.vandermonde_solve(lam, torch.randn(8))
        >>> b.shape
        torch.Size([8])
    """
    check_solve_args(lam, t)
    which = resolve_backend("vandermonde_solve", backend, lam, t, empty=lam.numel() == 0)
    if which == "torch":
        rhs = t.to(torch.complex64) if t.is_complex() else t.to(torch.float32)
        return naive.vandermonde_solve(lam.to(torch.complex64), rhs)
    if needs_grad(lam):
        raise NotImplementedError(
            "vandermonde_solve: gradients with respect to lam are not implemented (the nodes enter through "
            "divided differences); pass lam.detach() or call under torch.no_grad(). Gradients of t are."
        )

    def triton_path(lam, t):
        batch = tuple(lam.shape[:-1])
        size = lam.shape[-1]
        return _vandermonde_solve_triton(lam.reshape(-1, size), t.reshape(-1, size)).reshape(*batch, size)

    def reference_path(lam, t):
        rhs = t.to(torch.complex64) if t.is_complex() else t.to(torch.float32)
        return naive.vandermonde_solve(lam.to(torch.complex64), rhs).to(torch.complex64)

    return with_reference_gradient(triton_path, reference_path, lam, t)
