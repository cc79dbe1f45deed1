"""Backward kernels of the memory layer and of ``memory_gather``.

- ``_gather_backward_kernel``: one program per (token block, table). It recomputes the code and score of its
  tokens from x (fused path; the forward does not store them for it) or loads them (``memory_gather``), walks
  d_out in blocks to form ``dscore = <dy, tables[k, code]>`` (an indexed inner product), turns it into ``dz``
  through the score formula (fused path) or stores it (``memory_gather``), and, in the default mode,
  scatter-adds ``score * dy`` into an fp32 ``dtables`` buffer with ``tl.atomic_add``.
- ``_dtables_segment_kernel``: the deterministic ``dtables``. The flat keys ``k * S + code`` are sorted
  (stable) by torch; program ``r`` owns table row ``r`` and reduces its segment of the sorted list in a fixed
  order, so no floating-point atomics are involved and the result is bit-identical from run to run. Rows no
  token hashed to get zeros. It needs the codes and scores, so only then does the fused forward store them.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..dispatch import registered_launcher
from ..tiles import TilePolicy, cdiv, current_tiles, next_power_of_2
from .hash import hash_tile, score_grad


@triton.jit(do_not_specialize=["T"])
def _gather_backward_kernel(
    x_ptr, codes_ptr, scores_ptr, dy_ptr, tables_ptr, dx_ptr, dscores_ptr, dtables_ptr,
    T, K, S, D, stride_x, stride_dy, inv_temperature,
    TAU: tl.constexpr, TAU_P2: tl.constexpr, HASH: tl.constexpr, MAGNITUDE: tl.constexpr,
    COMPUTE_DSCORE: tl.constexpr, ATOMIC_DTABLES: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_t = tl.program_id(0)
    k = tl.program_id(1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    t64 = t.to(tl.int64)
    if HASH:
        z, s, code, prod, score = hash_tile(x_ptr, t64 * stride_x, t_mask, k, inv_temperature, TAU, TAU_P2,
                                            MAGNITUDE)
    else:
        code = tl.load(codes_ptr + t64 * K + k, mask=t_mask, other=0).to(tl.int32)
        score = tl.load(scores_ptr + t64 * K + k, mask=t_mask, other=0.0).to(tl.float32)
    valid = t_mask & (code >= 0) & (code < S)
    row = (k * S + code).to(tl.int64) * D
    # Hashed codes are always rows of the table: with whole d-blocks the table rows need no mask, and dy only
    # a row mask: padding tokens read dy = 0, so their unpredicated atomics add exact zeros (0 * dy would be
    # NaN for a non-finite dy) and their dscore, never stored, is 0.
    UNMASKED: tl.constexpr = HASH and EVEN_D
    dy_rows = t64 * stride_dy
    products = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)  # dy * rows, reduced over d after the loop
    for d_start in range(0, D, BLOCK_D):
        d = d_start + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (d < D)[None, :]
        if UNMASKED:
            dy = tl.load(dy_ptr + dy_rows[:, None] + d[None, :], mask=t_mask[:, None], other=0.0).to(tl.float32)
        else:
            dy = tl.load(dy_ptr + dy_rows[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
        if COMPUTE_DSCORE:
            if UNMASKED:
                rows = tl.load(tables_ptr + row[:, None] + d[None, :]).to(tl.float32)
            else:
                rows = tl.load(tables_ptr + row[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
            products += dy * rows
        if ATOMIC_DTABLES:
            if UNMASKED:  # padding tokens add score * 0 (an unpredicated atomic needs no branch per row)
                tl.atomic_add(dtables_ptr + row[:, None] + d[None, :], score[:, None] * dy, sem="relaxed")
            else:
                tl.atomic_add(dtables_ptr + row[:, None] + d[None, :], score[:, None] * dy, mask=mask,
                              sem="relaxed")
    if COMPUTE_DSCORE:
        dscore = tl.sum(products, axis=1)
        if HASH:
            dz = score_grad(z, s, prod, dscore, inv_temperature, MAGNITUDE)
            j = tl.arange(0, TAU_P2)
            mask = t_mask[:, None] & (j < TAU)[None, :]
            offsets = (t64 * K * TAU)[:, None] + (k * TAU + j)[None, :]
            tl.store(dx_ptr + offsets, dz.to(dx_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(dscores_ptr + t64 * K + k, dscore.to(dscores_ptr.dtype.element_ty), mask=t_mask)


@triton.jit
def _dtables_segment_kernel(
    tokens_ptr, weights_ptr, bounds_ptr, dy_ptr, dtables_ptr, D, stride_dy,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One table row r and one d-block: ``dtables[r] = sum over its segment of weight * dy[token]``, the
    segment's (token, weight) pairs in token order; partial sums per slot, reduced once (fixed order)."""
    r = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    start = tl.load(bounds_ptr + r)
    end = tl.load(bounds_ptr + r + 1)
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for i_start in range(start, end, BLOCK_T):
        i = i_start + tl.arange(0, BLOCK_T)
        i_mask = i < end
        token = tl.load(tokens_ptr + i, mask=i_mask, other=0).to(tl.int64)
        weight = tl.load(weights_ptr + i, mask=i_mask, other=0.0)
        mask = i_mask[:, None] & d_mask[None, :]
        dy = tl.load(dy_ptr + (token * stride_dy)[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += weight[:, None] * dy
    tl.store(dtables_ptr + r.to(tl.int64) * D + d, tl.sum(acc, axis=0).to(dtables_ptr.dtype.element_ty),
             mask=d_mask)


def backward_blocks(d_out: int, element_size: int, policy: TilePolicy) -> tuple[int, int]:
    """``(BLOCK_T, BLOCK_D)`` of the backward kernels: row chunks of at most 512 bytes and
    ``policy.gather_backward_max_block_d`` values."""
    block_d = min(next_power_of_2(d_out), 512 // element_size, policy.gather_backward_max_block_d)
    return policy.gather_backward_block_t, block_d


def _dtables_deterministic(codes: torch.Tensor, scores: torch.Tensor, dy: torch.Tensor, rows: int,
                           out_dtype: torch.dtype) -> torch.Tensor:
    """Sort ``k * S + code`` (stable) and reduce each row's segment in token order: no float atomics.

    The kernel reads each segment's tokens (int32) and weights (fp32) in sorted order, gathered here by torch,
    so it does no 64-bit division by K per element."""
    num_tokens, num_tables = codes.shape
    d_out = dy.shape[1]
    key_dtype = torch.int32 if num_tables * rows < 2**31 else torch.int64
    offsets = torch.arange(num_tables, device=codes.device, dtype=key_dtype) * rows
    # An out-of-range code (possible on CUDA without ETSC_TRITON_DEBUG) sorts after every row: no segment.
    in_range = (codes >= 0) & (codes < rows)
    keys = torch.where(in_range, codes.to(key_dtype) + offsets, num_tables * rows).reshape(-1)
    sorted_keys, order = torch.sort(keys, stable=True)
    row_ids = torch.arange(num_tables * rows + 1, device=codes.device, dtype=key_dtype)
    bounds = torch.searchsorted(sorted_keys, row_ids)
    tokens = torch.div(order, num_tables, rounding_mode="floor").to(torch.int32)
    weights = scores.reshape(-1).to(torch.float32)[order]
    dtables = torch.empty(num_tables, rows, d_out, device=dy.device, dtype=out_dtype)
    block_t, block_d = backward_blocks(d_out, dtables.element_size(), current_tiles())
    grid = (num_tables * rows, cdiv(d_out, block_d))
    wrap_triton(_dtables_segment_kernel)[grid](
        tokens, weights, bounds, dy, dtables, d_out, dy.stride(0), BLOCK_T=block_t, BLOCK_D=block_d,
    )
    return dtables


def launch_gather_backward(
    x: torch.Tensor | None, codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor, dy: torch.Tensor,
    inv_temperature: float, magnitude: bool, need_input_grad: bool, need_dtables: bool, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared launcher: ``(d x or d scores, d tables)``; a gradient not asked for comes back empty.

    ``x`` given (``[T, K*tau]``, unit last stride): the fused path; the first gradient is ``dx`` (x.dtype).
    ``x`` None: ``memory_gather``, the first gradient is ``dscores`` in ``scores.dtype``. On the fused path
    ``codes`` and ``scores`` may be empty unless ``deterministic`` and ``need_dtables``.
    """
    num_tokens, num_tables = dy.shape[0], tables.shape[0]
    rows, d_out = tables.shape[1], tables.shape[2]
    tau = rows.bit_length() - 1
    hash_x = x is not None
    if hash_x:
        input_grad = torch.empty(x.shape if need_input_grad else (0,), device=x.device, dtype=x.dtype)
    else:
        input_grad = torch.empty(codes.shape if need_input_grad else (0,), device=codes.device,
                                 dtype=scores.dtype)
    atomic = need_dtables and not deterministic
    if atomic:
        dtables_acc = torch.zeros(tables.shape, device=tables.device, dtype=torch.float32)
    else:
        dtables_acc = torch.empty(0, device=tables.device, dtype=torch.float32)
    if need_input_grad or atomic:
        block_t, block_d = backward_blocks(d_out, tables.element_size(), current_tiles())
        grid = (cdiv(num_tokens, block_t), num_tables)
        wrap_triton(_gather_backward_kernel)[grid](
            x if hash_x else codes, codes, scores, dy, tables, input_grad, input_grad, dtables_acc,
            num_tokens, num_tables, rows, d_out, x.stride(0) if hash_x else 0, dy.stride(0), inv_temperature,
            TAU=tau, TAU_P2=next_power_of_2(tau), HASH=hash_x, MAGNITUDE=magnitude,
            COMPUTE_DSCORE=need_input_grad, ATOMIC_DTABLES=atomic, EVEN_D=d_out % block_d == 0,
            BLOCK_T=block_t, BLOCK_D=block_d,
        )
    if not need_dtables:
        dtables = torch.empty(0, device=tables.device, dtype=tables.dtype)
    elif deterministic:
        dtables = _dtables_deterministic(codes, scores, dy, rows, tables.dtype)
    else:
        dtables = dtables_acc if tables.dtype == torch.float32 else dtables_acc.to(tables.dtype)
    return input_grad, dtables


@registered_launcher("etsc_triton::memory_layer_backward", mutates_args=())
def memory_layer_backward(
    x: torch.Tensor, codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor, dy: torch.Tensor,
    inv_temperature: float, magnitude: bool, need_dx: bool, need_dtables: bool, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx [T, K*tau], dtables [K, S, d_out])`` of the fused layer (empty where not needed)."""
    return launch_gather_backward(x, codes, scores, tables, dy, inv_temperature, magnitude, need_dx,
                                  need_dtables, deterministic)


@registered_launcher("etsc_triton::memory_gather_backward", mutates_args=())
def memory_gather_backward(
    codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor, dy: torch.Tensor,
    need_dscores: bool, need_dtables: bool, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dscores [T, K], dtables [K, S, d_out])`` of ``memory_gather`` (empty where not needed)."""
    return launch_gather_backward(None, codes, scores, tables, dy, 1.0, False, need_dscores, need_dtables,
                                  deterministic)


