"""Building blocks of the scan programs: channel tiles, mode tiles held modes x channels, the token walks, and
where a packed sequence lies (:func:`sequence_span`) and which pool row it owns (:func:`pool_slot`).

A scan program owns ``(BLOCK_D channels, one batch row, one mode block, one chunk)`` and keeps its state tile
in registers as ``[BLOCK_N, BLOCK_D]``: modes in each thread's registers, channels across lanes, so the
per-token sum over modes is in-thread adds. :func:`scan_tokens` walks forward (the recurrence), and
:func:`reverse_tokens` walks backward (the gradient recurrences of the op README). Every scan program is one
warp (``SCAN_WARPS``): the sequential walk has no parallelism inside a tile to share among more threads.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..complex import conj_mul
from .update import ssm_update

SCAN_WARPS = 1


@triton.jit
def modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, BLOCK_N: tl.constexpr):
    """Pointers ``[BLOCK_N, BLOCK_D]`` to the real parts of modes ``first..`` of complex channel rows, and their
    mask (``row_ptrs`` / ``row_mask`` ``[BLOCK_D, 1]``).

    Built modes x channels (real and imaginary parts are two accesses, ``mode_stride`` apart) so that each
    thread can hold its channel's modes and the scan's per-token sum over modes is in-thread adds. A flat
    complex span would put the lanes along the contiguous modes, whatever ``tl.trans`` follows (sm_90 SASS:
    40 shuffles per token at 8 x 64; op README).
    """
    modes = first + tl.arange(0, BLOCK_N)
    ptrs = tl.trans(row_ptrs) + modes.to(tl.int64)[:, None] * mode_stride
    return ptrs, tl.trans(row_mask) & (modes < n_modes)[:, None]


@triton.jit
def load_modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, BLOCK_D: tl.constexpr,
                            BLOCK_N: tl.constexpr):
    """``(re, im)`` fp32 tiles ``[BLOCK_N, BLOCK_D]`` of modes ``first..`` of complex channel rows; masked rows
    and modes ``>= n_modes`` read as 0. Loaded as a 1-D vector (channel fastest) and reshaped: the 2-D pointer
    tile alone left the lane placement to a tie that triton 3.6 broke towards the modes (op README). Read once
    per program, so the 4-byte accesses cost nothing that matters."""
    ptrs, mask = modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, BLOCK_N)
    flat_ptrs = tl.reshape(ptrs, [BLOCK_N * BLOCK_D])
    flat_mask = tl.reshape(mask, [BLOCK_N * BLOCK_D])
    re = tl.load(flat_ptrs, mask=flat_mask, other=0.0)
    im = tl.load(flat_ptrs + 1, mask=flat_mask, other=0.0)
    return tl.reshape(re, [BLOCK_N, BLOCK_D]), tl.reshape(im, [BLOCK_N, BLOCK_D])


@triton.jit
def store_modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, re, im, BLOCK_D: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    """Store ``[BLOCK_N, BLOCK_D]`` tiles into complex64 channel rows whose modes lie ``mode_stride`` floats
    apart (2: contiguous rows); the inverse of the load."""
    ptrs, mask = modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, BLOCK_N)
    tl.store(ptrs, re, mask=mask)
    tl.store(ptrs + 1, im, mask=mask)


@triton.jit
def scan_tokens(u_re, u_im, lam_re, lam_im, b_re, b_im, x_ptrs, out_ptrs, count, stride_xl, n_channels,
                 channel_ok, WRITE_Y: tl.constexpr):
    """Advance the state tile over ``count >= 1`` tokens (x rows ``stride_xl`` apart), writing y when WRITE_Y.

    x is prefetched three tokens ahead in registers (``x_1``, ``x_2``, ``x_3``), already in the layout the
    update broadcasts it in: one load per token, no shared-memory staging (sm_90 SASS per iteration at 8 x 64:
    142 instructions against 152 with a ``num_stages=3`` pipelined ``tl.range``).
    Prefetches past the last token re-read the last row (no mask to build per token).
    """
    x_row = x_ptrs[None, :]
    ok = channel_ok[None, :]
    last = count - 1 + tl.full([], 0, tl.int64)  # token offsets in 64 bits: i * stride_xl may pass 2^31
    x_1 = tl.load(x_row, mask=ok, other=0.0).to(tl.float32)
    x_2 = tl.load(x_row + tl.minimum(last, 1) * stride_xl, mask=ok, other=0.0).to(tl.float32)
    x_3 = tl.load(x_row + tl.minimum(last, 2) * stride_xl, mask=ok, other=0.0).to(tl.float32)
    for i in range(count):
        x_t = x_1
        x_1 = x_2
        x_2 = x_3
        x_3 = tl.load(x_row + tl.minimum(last, i + 3) * stride_xl, mask=ok, other=0.0).to(tl.float32)
        u_re, u_im = ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, x_t)
        if WRITE_Y:
            y_t = tl.sum(u_re, axis=0)
            tl.store(out_ptrs, y_t.to(out_ptrs.dtype.element_ty), mask=channel_ok)
            out_ptrs += n_channels
    return u_re, u_im


@triton.jit
def channel_tile(n_channels, BLOCK_D: tl.constexpr):
    """This program's channels: ``(channel_ok [BLOCK_D], row_mask [BLOCK_D, 1], channels64 [BLOCK_D])``."""
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_ok = channels < n_channels
    return channel_ok, channel_ok[:, None], channels.to(tl.int64)


@triton.jit
def scan_program(lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Where a program of grid ``(channel tiles, B, mode blocks x chunks)`` works, and its lam, b tiles:
    ``(batch row, mode block, chunk, first mode, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im)``."""
    pid_b = tl.program_id(1).to(tl.int64)
    pid_n = tl.program_id(2) % n_mode_blocks
    chunk = tl.program_id(2) // n_mode_blocks
    first = pid_n * BLOCK_N
    channel_ok, row_mask, channels64 = channel_tile(n_channels, BLOCK_D)
    param_rows = channels64[:, None] * (2 * n_modes)
    lam_re, lam_im = load_modes_by_channels(lam_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
    b_re, b_im = load_modes_by_channels(b_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
    return pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im


@triton.jit
def initial_state(state_ptr, pid_b, channels64, row_mask, first, n_modes, stride_sb, stride_sd, stride_sn,
                   HAS_STATE: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """The caller's initial state tile ``[B, D, N]`` (any strides) as ``(re, im)``, or zeros without one."""
    if HAS_STATE:
        state_rows = state_ptr + pid_b * stride_sb + channels64[:, None] * stride_sd
        u_re, u_im = load_modes_by_channels(state_rows, row_mask, first, n_modes, stride_sn, BLOCK_D, BLOCK_N)
    else:
        u_re = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        u_im = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    return u_re, u_im


@triton.jit
def reverse_tokens(g_re, g_im, v_re, v_im, h_re, h_im, lam_re, lam_im, b_re, b_im, x_ptrs, dy_ptrs, out_ptrs,
                    count, stride_xl, n_channels, channel_ok, WRITE_DX: tl.constexpr, NUM_STAGES: tl.constexpr):
    """Walk ``count`` tokens backwards from the pointers' token (module docstring): carries g (gradient reaching
    u_t), v (lag-weighted) and h = conj(lam) g_{t+1}; accumulates x g and x v; writes dx when WRITE_DX.
    Returns ``(g, v, h, xg, xv)`` as re/im pairs, g and v at the first token walked last."""
    xg_re = tl.zeros(g_re.shape, dtype=tl.float32)
    xg_im = tl.zeros(g_re.shape, dtype=tl.float32)
    xv_re = tl.zeros(g_re.shape, dtype=tl.float32)
    xv_im = tl.zeros(g_re.shape, dtype=tl.float32)
    for _ in tl.range(0, count, num_stages=NUM_STAGES):
        x_t = tl.load(x_ptrs, mask=channel_ok, other=0.0).to(tl.float32)[None, :]
        dy_t = tl.load(dy_ptrs, mask=channel_ok, other=0.0).to(tl.float32)[None, :]
        cv_re, cv_im = conj_mul(lam_re, lam_im, v_re, v_im)  # v_t = conj(lam) v_{t+1} + g_{t+1}
        v_re = cv_re + g_re
        v_im = cv_im + g_im
        g_re = h_re + dy_t  # g_t = conj(lam) g_{t+1} + dy_t (+ dfinal at t = L - 1)
        g_im = h_im
        if WRITE_DX:
            dx_t = tl.sum(b_re * g_re + b_im * g_im, axis=0)  # Re sum_s conj(b_s) g_s
            tl.store(out_ptrs, dx_t.to(out_ptrs.dtype.element_ty), mask=channel_ok)
            out_ptrs -= n_channels
        xg_re += x_t * g_re
        xg_im += x_t * g_im
        xv_re += x_t * v_re
        xv_im += x_t * v_im
        h_re, h_im = conj_mul(lam_re, lam_im, g_re, g_im)
        x_ptrs -= stride_xl
        dy_ptrs -= n_channels
    return g_re, g_im, v_re, v_im, h_re, h_im, xg_re, xg_im, xv_re, xv_im


@triton.jit
def chunk_pointers(x_ptr, dy_ptr, pid_b, bos, out_row, chunk, chunk_len, length, n_channels, channels64,
                    stride_xb, stride_xl, stride_xd):
    """The last token of a chunk (int64, counted from the sequence's first token ``bos``), its token count, and
    the x / dy pointers at that token (dy rows counted from ``out_row``, the sequence's first row of dy)."""
    start = chunk.to(tl.int64) * chunk_len
    count = tl.minimum(length - start, chunk_len)
    last = start + count - 1
    x_ptrs = x_ptr + pid_b * stride_xb + (bos + last) * stride_xl + channels64 * stride_xd
    dy_ptrs = dy_ptr + (out_row + last) * n_channels + channels64
    return last, count, x_ptrs, dy_ptrs


@triton.jit
def sequence_span(cu_ptr, seq, n_tokens, chunk_len):
    """Where sequence ``seq`` of a packed batch lies: ``(bos, length, n_chunks)``, its first token (int64), its
    token count and the chunks of ``chunk_len`` tokens it takes (at least one, so a zero-length sequence still
    has a program that writes its final state). Clamped to ``[0, n_tokens]``: a malformed ``cu_seqlens``
    (unchecked on CUDA without the debug flag) cannot make a program read or write outside x and y."""
    bos = tl.minimum(tl.maximum(tl.load(cu_ptr + seq).to(tl.int64), 0), n_tokens)
    eos = tl.minimum(tl.maximum(tl.load(cu_ptr + seq + 1).to(tl.int64), bos), n_tokens)
    length = eos - bos
    return bos, length, tl.maximum((length + chunk_len - 1) // chunk_len, 1)


@triton.jit
def pool_slot(index_ptr, flag_ptr, seq, pool, HAS_FLAGS: tl.constexpr):
    """Sequence ``seq``'s row of a state pool: ``(row, live, from_pool, padding)``: the row (int64, 0 when not
    live); whether it is a row of the pool; whether the walk starts from that row (else from zero); whether the
    sequence is padding (a negative index). An index ``>= pool`` (only reachable on CUDA without the debug
    flag) is neither live nor padding."""
    slot = tl.load(index_ptr + seq).to(tl.int64)
    live = (slot >= 0) & (slot < pool)
    from_pool = live
    if HAS_FLAGS:
        from_pool = live & (tl.load(flag_ptr + seq) != 0)
    return tl.where(live, slot, 0), live, from_pool, slot < 0


@triton.jit
def fill_tokens(out_ptrs, value, count, n_channels, channel_ok):
    """Write ``value`` as the output of ``count`` tokens (rows ``n_channels`` apart): a sequence with no pool
    row gets 0 (padding) or NaN (an index out of range) instead of a walk."""
    fill = tl.zeros(channel_ok.shape, dtype=tl.float32) + value
    for _ in range(count):
        tl.store(out_ptrs, fill.to(out_ptrs.dtype.element_ty), mask=channel_ok)
        out_ptrs += n_channels
