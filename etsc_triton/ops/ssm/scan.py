"""Fused diagonal complex SSM scan (prefill) (DESIGN section 1.3).

    u_t = lam * u_{t-1} + b * x_t,    y_t = Re sum_s u_{t,s}

One program owns (batch row, BLOCK_D channels, one block of BLOCK_N modes): the state tile lives in registers
and the program walks the sequence token by token (x prefetched three tokens ahead in registers), reading
``x[b, t, d-block]`` and writing ``y[b, t, d-block]``; only the final state goes to memory. The update and the
mode blocks are those of the step (:mod:`.step`), so L scan tokens and L steps agree to fp32 rounding. Tiles
are held as ``[BLOCK_N, BLOCK_D]`` (modes in each thread's registers, channels across lanes) so the per-token
sum over modes is in-thread adds (op README).

When N needs more than one mode block (N > MAX_MODE_BLOCK), each mode block writes its partial y to an fp32
workspace ``[n_blocks, B, L, D]`` and a second kernel sums the blocks in order (deterministic, the step's order).

Chunked over the sequence when (B, D, N) alone leave the GPU idle (fewer programs than CHUNK_TARGET_PER_SM per
SM) and the sequence is long: C chunks of T tokens, three launches, each program's work still sequential:

1. local states: chunk c < C - 1 scans its T tokens from zero, without y: ``v_c = sum_t lam^(T-1-t) b x_t``;
2. carry, one program per tile: ``s_0 = state``, ``s_{c+1} = lam^T s_c + v_c`` (lam^T from float64), stored in
   place of v_c as chunk c's initial state;
3. the scan itself, one program per (tile, chunk), from s_c; the last chunk writes the final state.

It does about twice the recurrence work for C times the parallelism. Its y and final state differ from the
sequential scan by fp32 rounding (the carry re-associates the sum), not bit for bit.

Backward (``torch.autograd``; derivation in the README): with upstream gradients ``G_t = dy_t`` plus
``dfinal`` at t = L - 1, one reverse walk per tile carries two complex states and stores nothing of the forward:

    g_t = conj(lam) g_{t+1} + G_t                   (dL/du_t)
    v_t = conj(lam) v_{t+1} + g_{t+1}               (sum over s > t of (s - t) conj(lam)^(s-t-1) G_s)
    dx_t = Re sum_modes conj(b) g_t,   db = sum_t x_t g_t,   dlam = conj(b) sum_t x_t v_t + conj(u_init) v_{-1},
    d u_init = conj(lam) g_0

(dlam and db summed over the batch rows afterwards). About 18 FP32 instructions per mode and token against the
forward's 7 (PTX counts, perf/NOTES.md). Chunked like the forward when the tiles leave SMs idle: the pair
(v, g) obeys ``(v, g)_t = M (v, g)_{t+1} + (0, G_t)`` with ``M = [[conj(lam), 1], [0, conj(lam)]]``, so local
reverse walks of chunks 1 .. C-1 from zero, a right-to-left carry with ``M^T = [[c^T, T c^(T-1)], [0, c^T]]``
(c = conj(lam), powers from complex128), then every chunk's walk from its entering (g, v), with dlam and db
accumulated per chunk and summed afterwards.
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
    load_complex,
    needs_grad,
    next_power_of_2,
    registered_launcher,
    resolve_backend,
    sm_count,
    store_complex,
)
from . import naive
from .naive import check_scan_inputs
from .step import mode_block_size, ssm_update

SCAN_WARPS = 1
SCAN_MODES_PER_THREAD = 16
SCAN_STAGES = 3  # the backward's pipelined token loop (the forward prefetches in registers)
REDUCE_BLOCK = 1024
# Chunking: below this many programs per SM the sequence is split (one warp per program; ~150 registers per
# thread allow ~13 warps per SM); chunks hold at least MIN_CHUNK_TOKENS tokens and there are at most MAX_CHUNKS.
CHUNK_TARGET_PER_SM = 8
MIN_CHUNK_TOKENS = 256
MAX_CHUNKS = 128
BACKWARD_MODES_PER_THREAD = 8
BACKWARD_MAX_MODE_BLOCK = 256


@triton.jit
def _modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, BLOCK_N: tl.constexpr):
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
def _load_modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, BLOCK_D: tl.constexpr,
                            BLOCK_N: tl.constexpr):
    """``(re, im)`` fp32 tiles ``[BLOCK_N, BLOCK_D]`` of modes ``first..`` of complex channel rows; masked rows
    and modes ``>= n_modes`` read as 0. Loaded as a 1-D vector (channel fastest) and reshaped: the 2-D pointer
    tile alone left the lane placement to a tie that triton 3.6 broke towards the modes (op README). Read once
    per program, so the 4-byte accesses cost nothing that matters."""
    ptrs, mask = _modes_by_channels(row_ptrs, row_mask, first, n_modes, mode_stride, BLOCK_N)
    flat_ptrs = tl.reshape(ptrs, [BLOCK_N * BLOCK_D])
    flat_mask = tl.reshape(mask, [BLOCK_N * BLOCK_D])
    re = tl.load(flat_ptrs, mask=flat_mask, other=0.0)
    im = tl.load(flat_ptrs + 1, mask=flat_mask, other=0.0)
    return tl.reshape(re, [BLOCK_N, BLOCK_D]), tl.reshape(im, [BLOCK_N, BLOCK_D])


@triton.jit
def _store_modes_by_channels(row_ptrs, row_mask, first, n_modes, re, im, BLOCK_D: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    """Store ``[BLOCK_N, BLOCK_D]`` tiles into contiguous complex64 channel rows (the inverse of the load)."""
    ptrs, mask = _modes_by_channels(row_ptrs, row_mask, first, n_modes, 2, BLOCK_N)
    tl.store(ptrs, re, mask=mask)
    tl.store(ptrs + 1, im, mask=mask)


@triton.jit
def _scan_tokens(u_re, u_im, lam_re, lam_im, b_re, b_im, x_ptrs, out_ptrs, count, stride_xl, n_channels,
                 channel_ok, WRITE_Y: tl.constexpr):
    """Advance the state tile over ``count >= 1`` tokens (x rows ``stride_xl`` apart), writing y when WRITE_Y.

    x is prefetched three tokens ahead in registers (``x_1``, ``x_2``, ``x_3``), already in the layout the
    update broadcasts it in: one load per token, no shared-memory staging (sm_90 SASS per iteration at 8 x 64:
    142 instructions against 152 with a ``num_stages=3`` pipelined ``tl.range``; perf/NOTES.md experiment 17).
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
def _tile(n_channels, BLOCK_D: tl.constexpr):
    """This program's channels: ``(channel_ok [BLOCK_D], row_mask [BLOCK_D, 1], channels64 [BLOCK_D])``."""
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    channel_ok = channels < n_channels
    return channel_ok, channel_ok[:, None], channels.to(tl.int64)


@triton.jit
def _scan_program(lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Where a program of grid ``(channel tiles, B, mode blocks x chunks)`` works, and its lam, b tiles:
    ``(batch row, mode block, chunk, first mode, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im)``."""
    pid_b = tl.program_id(1).to(tl.int64)
    pid_n = tl.program_id(2) % n_mode_blocks
    chunk = tl.program_id(2) // n_mode_blocks
    first = pid_n * BLOCK_N
    channel_ok, row_mask, channels64 = _tile(n_channels, BLOCK_D)
    param_rows = channels64[:, None] * (2 * n_modes)
    lam_re, lam_im = _load_modes_by_channels(lam_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
    b_re, b_im = _load_modes_by_channels(b_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
    return pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im


@triton.jit
def _initial_state(state_ptr, pid_b, channels64, row_mask, first, n_modes, stride_sb, stride_sd, stride_sn,
                   HAS_STATE: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """The caller's initial state tile ``[B, D, N]`` (any strides) as ``(re, im)``, or zeros without one."""
    if HAS_STATE:
        state_rows = state_ptr + pid_b * stride_sb + channels64[:, None] * stride_sd
        u_re, u_im = _load_modes_by_channels(state_rows, row_mask, first, n_modes, stride_sn, BLOCK_D, BLOCK_N)
    else:
        u_re = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        u_im = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    return u_re, u_im


@triton.jit(do_not_specialize=["seq_len", "chunk_len"])
def _ssm_scan_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    state_ptr,  # the initial state [B, D, N] (HAS_STATE), or the chunks' initial states [C, B, D, N] (CHUNKED)
    y_ptr,
    partial_ptr,
    final_ptr,
    batch,
    seq_len,
    chunk_len,
    n_chunks,
    n_channels,
    n_modes,
    n_mode_blocks,
    stride_xb,
    stride_xl,
    stride_xd,
    stride_sb,
    stride_sd,
    stride_sn,
    HAS_STATE: tl.constexpr,
    CHUNKED: tl.constexpr,
    SPLIT_MODES: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """(BLOCK_D channels, one batch row, one mode block, one chunk): walk the chunk's tokens, write y (or
    partial y); the last chunk writes the final state."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = _scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    if CHUNKED:
        init_rows = state_ptr + ((chunk * batch + pid_b) * n_channels + channels64[:, None]) * (2 * n_modes)
        u_re, u_im = _load_modes_by_channels(init_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
    else:
        u_re, u_im = _initial_state(state_ptr, pid_b, channels64, row_mask, first, n_modes, stride_sb, stride_sd,
                                    stride_sn, HAS_STATE, BLOCK_D, BLOCK_N)
    start = chunk.to(tl.int64) * chunk_len
    count = tl.minimum(seq_len - start, chunk_len)
    x_ptrs = x_ptr + pid_b * stride_xb + start * stride_xl + channels64 * stride_xd
    if SPLIT_MODES:
        out_ptrs = partial_ptr + ((pid_n * batch + pid_b) * seq_len + start) * n_channels + channels64
    else:
        out_ptrs = y_ptr + (pid_b * seq_len + start) * n_channels + channels64
    u_re, u_im = _scan_tokens(u_re, u_im, lam_re, lam_im, b_re, b_im, x_ptrs, out_ptrs, count, stride_xl,
                              n_channels, channel_ok, True)
    if chunk == n_chunks - 1:
        final_rows = final_ptr + (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)
        _store_modes_by_channels(final_rows, row_mask, first, n_modes, u_re, u_im, BLOCK_D, BLOCK_N)


@triton.jit(do_not_specialize=["chunk_len"])
def _chunk_local_state_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    local_ptr,  # out: [C, B, D, N] complex64; chunks 0 .. C-2 written
    batch,
    chunk_len,
    n_channels,
    n_modes,
    n_mode_blocks,
    stride_xb,
    stride_xl,
    stride_xd,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Phase 1: the state a full chunk (chunk_len tokens) reaches from zero, no y."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = _scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    u_re = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    u_im = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    x_ptrs = x_ptr + pid_b * stride_xb + chunk.to(tl.int64) * chunk_len * stride_xl + channels64 * stride_xd
    u_re, u_im = _scan_tokens(u_re, u_im, lam_re, lam_im, b_re, b_im, x_ptrs, x_ptrs, chunk_len, stride_xl,
                              n_channels, channel_ok, False)
    rows = local_ptr + ((chunk * batch + pid_b) * n_channels + channels64[:, None]) * (2 * n_modes)
    _store_modes_by_channels(rows, row_mask, first, n_modes, u_re, u_im, BLOCK_D, BLOCK_N)


@triton.jit
def _chunk_carry_kernel(
    lam_pow_ptr,  # [D, N] complex64: lam ** chunk_len
    state_ptr,  # the initial state [B, D, N] (HAS_STATE)
    chunk_ptr,  # in: local states of chunks 0 .. C-2; out: initial states of chunks 0 .. C-1; [C, B, D, N]
    batch,
    n_chunks,
    n_channels,
    n_modes,
    stride_sb,
    stride_sd,
    stride_sn,
    HAS_STATE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Phase 2: ``s_0 = state``, ``s_{c+1} = lam^T s_c + v_c``, each s_c written over v_c (then s_{C-1}).
    Elementwise, so its tiles are ``[BLOCK_D, BLOCK_N]`` read and written as contiguous complex spans."""
    pid_b = tl.program_id(1).to(tl.int64)
    first = tl.program_id(2) * BLOCK_N
    channel_ok, row_mask, channels64 = _tile(n_channels, BLOCK_D)
    param_rows = channels64[:, None] * (2 * n_modes)
    pow_re, pow_im = load_complex(lam_pow_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
    if HAS_STATE:
        state_rows = state_ptr + pid_b * stride_sb + channels64[:, None] * stride_sd
        s_re, s_im = load_complex(state_rows, row_mask, first, n_modes, stride_sn, BLOCK_D, BLOCK_N, False)
    else:
        s_re = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        s_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    rows = chunk_ptr + (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)
    chunk_stride = batch * n_channels * 2 * n_modes
    for _ in range(n_chunks - 1):
        v_re, v_im = load_complex(rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        store_complex(rows, row_mask, first, n_modes, 2, s_re, s_im, BLOCK_D, BLOCK_N, True)
        carried_re, carried_im = complex_mul(pow_re, pow_im, s_re, s_im)
        s_re = carried_re + v_re
        s_im = carried_im + v_im
        rows += chunk_stride
    store_complex(rows, row_mask, first, n_modes, 2, s_re, s_im, BLOCK_D, BLOCK_N, True)


@triton.jit
def _conj_mul(a_re, a_im, z_re, z_im):
    """``conj(a) * z`` on real/imaginary parts."""
    return a_re * z_re + a_im * z_im, a_re * z_im - a_im * z_re


@triton.jit
def _reverse_tokens(g_re, g_im, v_re, v_im, h_re, h_im, lam_re, lam_im, b_re, b_im, x_ptrs, dy_ptrs, out_ptrs,
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
        cv_re, cv_im = _conj_mul(lam_re, lam_im, v_re, v_im)  # v_t = conj(lam) v_{t+1} + g_{t+1}
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
        h_re, h_im = _conj_mul(lam_re, lam_im, g_re, g_im)
        x_ptrs -= stride_xl
        dy_ptrs -= n_channels
    return g_re, g_im, v_re, v_im, h_re, h_im, xg_re, xg_im, xv_re, xv_im


@triton.jit
def _chunk_pointers(x_ptr, dy_ptr, pid_b, chunk, chunk_len, seq_len, n_channels, channels64, stride_xb,
                    stride_xl, stride_xd):
    """The last token of a chunk (int64), its token count, and the x / dy pointers at that token."""
    start = chunk.to(tl.int64) * chunk_len
    count = tl.minimum(seq_len - start, chunk_len)
    last = start + count - 1
    x_ptrs = x_ptr + pid_b * stride_xb + last * stride_xl + channels64 * stride_xd
    dy_ptrs = dy_ptr + (pid_b * seq_len + last) * n_channels + channels64
    return last, count, x_ptrs, dy_ptrs


@triton.jit(do_not_specialize=["seq_len", "chunk_len"])
def _ssm_scan_backward_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    state_ptr,  # the initial state [B, D, N] (HAS_STATE), any strides
    dy_ptr,  # [B, L, D] contiguous
    dfinal_ptr,  # [B, D, N] complex64 contiguous (HAS_DFINAL)
    carry_g_ptr,  # (CHUNKED) [C, B, D, N] complex64: g entering each chunk from the right (after its last token)
    carry_v_ptr,  # (CHUNKED) [C, B, D, N] complex64: v likewise
    dx_ptr,  # out: [B, L, D] contiguous
    dx_partial_ptr,  # out (SPLIT_MODES): [n_blocks, B, L, D] fp32
    dlam_ptr,  # out: [C, B, D, N] complex64, per chunk and batch row
    db_ptr,  # out: [C, B, D, N] complex64, per chunk and batch row
    dstate_ptr,  # out (HAS_STATE): [B, D, N] complex64
    batch,
    seq_len,
    chunk_len,
    n_chunks,
    n_channels,
    n_modes,
    n_mode_blocks,
    stride_xb,
    stride_xl,
    stride_xd,
    stride_sb,
    stride_sd,
    stride_sn,
    HAS_STATE: tl.constexpr,
    HAS_DFINAL: tl.constexpr,
    CHUNKED: tl.constexpr,
    SPLIT_MODES: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """(BLOCK_D channels, one batch row, one mode block, one chunk): walk the chunk's tokens backwards."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = _scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    rows = (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)  # [B, D, N] row offsets
    chunk_rows = rows + chunk.to(tl.int64) * batch * n_channels * (2 * n_modes)  # [C, B, D, N]
    zero = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    g_re, g_im, v_re, v_im, h_re, h_im = zero, zero, zero, zero, zero, zero
    if chunk == n_chunks - 1:  # the sequence's last token: dL/du_{L-1} starts as dfinal
        if HAS_DFINAL:
            h_re, h_im = _load_modes_by_channels(dfinal_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
    else:
        if CHUNKED:
            g_re, g_im = _load_modes_by_channels(carry_g_ptr + chunk_rows, row_mask, first, n_modes, 2, BLOCK_D,
                                                 BLOCK_N)
            v_re, v_im = _load_modes_by_channels(carry_v_ptr + chunk_rows, row_mask, first, n_modes, 2, BLOCK_D,
                                                 BLOCK_N)
            h_re, h_im = _conj_mul(lam_re, lam_im, g_re, g_im)
    last, count, x_ptrs, dy_ptrs = _chunk_pointers(x_ptr, dy_ptr, pid_b, chunk, chunk_len, seq_len, n_channels,
                                                   channels64, stride_xb, stride_xl, stride_xd)
    if SPLIT_MODES:
        out_ptrs = dx_partial_ptr + ((pid_n * batch + pid_b) * seq_len + last) * n_channels + channels64
    else:
        out_ptrs = dx_ptr + (pid_b * seq_len + last) * n_channels + channels64
    g_re, g_im, v_re, v_im, h_re, h_im, xg_re, xg_im, xv_re, xv_im = _reverse_tokens(
        g_re, g_im, v_re, v_im, h_re, h_im, lam_re, lam_im, b_re, b_im, x_ptrs, dy_ptrs, out_ptrs, count,
        stride_xl, n_channels, channel_ok, True, NUM_STAGES)
    dlam_re, dlam_im = _conj_mul(b_re, b_im, xv_re, xv_im)
    if HAS_STATE:
        if chunk == 0:
            s_re, s_im = _initial_state(state_ptr, pid_b, channels64, row_mask, first, n_modes, stride_sb,
                                        stride_sd, stride_sn, HAS_STATE, BLOCK_D, BLOCK_N)
            cv_re, cv_im = _conj_mul(lam_re, lam_im, v_re, v_im)  # v_{-1} = conj(lam) v_0 + g_0
            ds_re, ds_im = _conj_mul(s_re, s_im, cv_re + g_re, cv_im + g_im)
            dlam_re += ds_re
            dlam_im += ds_im
            _store_modes_by_channels(dstate_ptr + rows, row_mask, first, n_modes, h_re, h_im, BLOCK_D, BLOCK_N)
    _store_modes_by_channels(dlam_ptr + chunk_rows, row_mask, first, n_modes, dlam_re, dlam_im, BLOCK_D, BLOCK_N)
    _store_modes_by_channels(db_ptr + chunk_rows, row_mask, first, n_modes, xg_re, xg_im, BLOCK_D, BLOCK_N)


@triton.jit(do_not_specialize=["seq_len", "chunk_len"])
def _chunk_backward_local_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    dy_ptr,
    dfinal_ptr,
    carry_g_ptr,  # out: [C, B, D, N] complex64; chunks 1 .. C-1: g at the chunk's first token from zero
    carry_v_ptr,  # out: likewise for v
    batch,
    seq_len,
    chunk_len,
    n_chunks,
    n_channels,
    n_modes,
    n_mode_blocks,
    stride_xb,
    stride_xl,
    stride_xd,
    HAS_DFINAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Backward phase 1: chunk c + 1 walked from a zero entering state (dfinal for the last chunk), no dx."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = _scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    chunk = chunk + 1  # chunk 0's own contribution is never carried
    rows = (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)
    zero = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    h_re, h_im = zero, zero
    if HAS_DFINAL:
        if chunk == n_chunks - 1:
            h_re, h_im = _load_modes_by_channels(dfinal_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
    last, count, x_ptrs, dy_ptrs = _chunk_pointers(x_ptr, dy_ptr, pid_b, chunk, chunk_len, seq_len, n_channels,
                                                   channels64, stride_xb, stride_xl, stride_xd)
    g_re, g_im, v_re, v_im, _, _, _, _, _, _ = _reverse_tokens(
        zero, zero, zero, zero, h_re, h_im, lam_re, lam_im, b_re, b_im, x_ptrs, dy_ptrs, x_ptrs, count,
        stride_xl, n_channels, channel_ok, False, NUM_STAGES)
    chunk_rows = rows + chunk.to(tl.int64) * batch * n_channels * (2 * n_modes)
    _store_modes_by_channels(carry_g_ptr + chunk_rows, row_mask, first, n_modes, g_re, g_im, BLOCK_D, BLOCK_N)
    _store_modes_by_channels(carry_v_ptr + chunk_rows, row_mask, first, n_modes, v_re, v_im, BLOCK_D, BLOCK_N)


@triton.jit
def _chunk_backward_carry_kernel(
    propagate_ptr,  # [D, N] complex64: P = conj(lam)^T
    lag_weight_ptr,  # [D, N] complex64: Q = T conj(lam)^(T-1)
    carry_g_ptr,  # in: local (g, v) of chunks 1 .. C-1; out: (g, v) entering chunks 0 .. C-2 from the right
    carry_v_ptr,
    batch,
    n_chunks,
    n_channels,
    n_modes,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Backward phase 2, right to left: (g, v) at the start of chunk c is ``(P g_in, P v_in + Q g_in)`` plus the
    chunk's local part, and it is what enters chunk c - 1."""
    pid_b = tl.program_id(1).to(tl.int64)
    first = tl.program_id(2) * BLOCK_N
    channel_ok, row_mask, channels64 = _tile(n_channels, BLOCK_D)
    param_rows = channels64[:, None] * (2 * n_modes)
    p_re, p_im = load_complex(propagate_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
    q_re, q_im = load_complex(lag_weight_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
    chunk_stride = batch * n_channels * 2 * n_modes
    rows = (pid_b * n_channels + channels64[:, None]) * (2 * n_modes) + (n_chunks - 1) * chunk_stride
    g_re, g_im = load_complex(carry_g_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
    v_re, v_im = load_complex(carry_v_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
    for _ in range(n_chunks - 2):
        rows -= chunk_stride
        local_g_re, local_g_im = load_complex(carry_g_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        local_v_re, local_v_im = load_complex(carry_v_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        store_complex(carry_g_ptr + rows, row_mask, first, n_modes, 2, g_re, g_im, BLOCK_D, BLOCK_N, True)
        store_complex(carry_v_ptr + rows, row_mask, first, n_modes, 2, v_re, v_im, BLOCK_D, BLOCK_N, True)
        pv_re, pv_im = complex_mul(p_re, p_im, v_re, v_im)
        qg_re, qg_im = complex_mul(q_re, q_im, g_re, g_im)
        pg_re, pg_im = complex_mul(p_re, p_im, g_re, g_im)
        v_re = pv_re + qg_re + local_v_re
        v_im = pv_im + qg_im + local_v_im
        g_re = pg_re + local_g_re
        g_im = pg_im + local_g_im
    rows -= chunk_stride
    store_complex(carry_g_ptr + rows, row_mask, first, n_modes, 2, g_re, g_im, BLOCK_D, BLOCK_N, True)
    store_complex(carry_v_ptr + rows, row_mask, first, n_modes, 2, v_re, v_im, BLOCK_D, BLOCK_N, True)


@triton.jit
def _sum_mode_blocks_kernel(partial_ptr, y_ptr, numel, n_blocks, BLOCK: tl.constexpr):
    """``y = sum_k partial[k]`` over the mode blocks in ascending order (the step's order)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offsets < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(n_blocks):
        acc += tl.load(partial_ptr + k * numel + offsets, mask=ok, other=0.0)
    tl.store(y_ptr + offsets, acc.to(y_ptr.dtype.element_ty), mask=ok)


def _warp_tile(channels: int, block_n: int, modes_per_thread: int) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_N)`` of a one-warp program holding about ``modes_per_thread`` modes per thread."""
    per_program = 32 * SCAN_WARPS * modes_per_thread
    return max(1, min(32, next_power_of_2(channels), per_program // block_n)), block_n


def scan_blocks(channels: int, modes: int) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_N)`` of the forward: about SCAN_MODES_PER_THREAD modes per thread, the step's mode
    blocks."""
    return _warp_tile(channels, mode_block_size(modes), SCAN_MODES_PER_THREAD)


def backward_blocks(channels: int, modes: int) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_N)`` of the backward: it keeps 14 fp32 values per mode (lam, b, g, v, h and the two
    accumulators) against the forward's 6, so about BACKWARD_MODES_PER_THREAD modes per thread and mode blocks
    of at most BACKWARD_MAX_MODE_BLOCK (16 modes per thread took 255 registers and spilled on sm_90)."""
    return _warp_tile(channels, min(next_power_of_2(modes), BACKWARD_MAX_MODE_BLOCK), BACKWARD_MODES_PER_THREAD)


def chunk_count(programs: int, seq_len: int, device: torch.device) -> int:
    """How many sequence chunks the scan uses: 1 unless the (batch, channel, mode) programs leave SMs idle."""
    target = CHUNK_TARGET_PER_SM * sm_count(device)
    if programs >= target or seq_len < 2 * MIN_CHUNK_TOKENS:
        return 1
    return min(cdiv(target, programs), seq_len // MIN_CHUNK_TOKENS, MAX_CHUNKS)


def chunk_plan(batch: int, seq_len: int, channels: int, modes: int, blocks: tuple[int, int],
               device: torch.device) -> tuple[int, int]:
    """``(n_chunks, chunk_len)`` for a scan (or its backward) tiled by ``blocks`` = ``(BLOCK_D, BLOCK_N)``:
    every chunk but the last holds ``chunk_len`` tokens; ``(1, seq_len)`` when the tiles fill the GPU."""
    block_d, block_n = blocks
    count = chunk_count(cdiv(channels, block_d) * batch * cdiv(modes, block_n), seq_len, device)
    chunk_len = cdiv(seq_len, count)
    return cdiv(seq_len, chunk_len), chunk_len


@registered_launcher("etsc_triton::ssm_scan", mutates_args=())
def _ssm_scan_launch(
    x: torch.Tensor, lam: torch.Tensor, b: torch.Tensor, state: torch.Tensor | None, allow_chunks: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[B, L, D]`` any strides; lam/b complex64 contiguous ``[D, N]``; state complex64 ``[B, D, N]`` or None.

    ``allow_chunks=False`` forces the sequential scan (one program per tile walks all L tokens).
    """
    batch, seq_len, channels = x.shape
    modes = lam.shape[1]
    block_d, block_n = scan_blocks(channels, modes)
    n_mode_blocks = cdiv(modes, block_n)
    tiles = (cdiv(channels, block_d), batch)
    n_chunks, chunk_len = chunk_plan(batch, seq_len, channels, modes, (block_d, block_n), x.device) \
        if allow_chunks else (1, seq_len)
    split = n_mode_blocks > 1
    y = torch.empty((batch, seq_len, channels), device=x.device, dtype=x.dtype)
    final_state = torch.empty((batch, channels, modes), device=x.device, dtype=torch.complex64)
    # Unused pointers get a distinct empty tensor (never an alias of an output, for torch.compile's analysis).
    unused = torch.empty(0, device=x.device, dtype=torch.float32)
    partial_shape = (n_mode_blocks, batch, seq_len, channels)
    partial = torch.empty(partial_shape, device=x.device, dtype=torch.float32) if split else unused
    state_parts = torch.view_as_real(state) if state is not None else unused
    state_strides = state_parts.stride()[:3] if state is not None else (0, 0, 0)
    lam_parts, b_parts = torch.view_as_real(lam), torch.view_as_real(b)
    blocks = dict(BLOCK_D=block_d, BLOCK_N=block_n)
    scan_init = state_parts
    if n_chunks > 1:
        chunk_states = torch.empty((n_chunks, batch, channels, modes, 2), device=x.device, dtype=torch.float32)
        wrap_triton(_chunk_local_state_kernel)[(*tiles, n_mode_blocks * (n_chunks - 1))](
            x, lam_parts, b_parts, chunk_states, batch, chunk_len, channels, modes, n_mode_blocks,
            x.stride(0), x.stride(1), x.stride(2), **blocks, num_warps=SCAN_WARPS,
        )
        lam_pow = torch.view_as_real((lam.to(torch.complex128) ** chunk_len).to(torch.complex64))
        wrap_triton(_chunk_carry_kernel)[(*tiles, n_mode_blocks)](
            lam_pow, state_parts, chunk_states, batch, n_chunks, channels, modes, *state_strides,
            HAS_STATE=state is not None, **blocks, num_warps=SCAN_WARPS,
        )
        scan_init = chunk_states
    wrap_triton(_ssm_scan_kernel)[(*tiles, n_mode_blocks * n_chunks)](
        x, lam_parts, b_parts, scan_init, y, partial, torch.view_as_real(final_state),
        batch, seq_len, chunk_len, n_chunks, channels, modes, n_mode_blocks,
        x.stride(0), x.stride(1), x.stride(2), *state_strides,
        HAS_STATE=state is not None, CHUNKED=n_chunks > 1,
        SPLIT_MODES=split, **blocks, num_warps=SCAN_WARPS,
    )
    if split:
        numel = y.numel()
        wrap_triton(_sum_mode_blocks_kernel)[(cdiv(numel, REDUCE_BLOCK),)](
            partial, y, numel, n_mode_blocks, BLOCK=REDUCE_BLOCK
        )
    return y, final_state


@registered_launcher("etsc_triton::ssm_scan_backward", mutates_args=())
def _ssm_scan_backward_launch(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    dy: torch.Tensor,
    dfinal: torch.Tensor | None,
    allow_chunks: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the scan: x, lam, b, state as in the forward; dy ``[B, L, D]`` contiguous; dfinal complex64
    ``[B, D, N]`` contiguous or None. Returns ``(dx [B, L, D] in x.dtype, dlam [D, N], db [D, N], dstate)``
    (complex64; dstate ``[B, D, N]``, empty without a state). Chunked like the forward when the tiles leave SMs
    idle (``allow_chunks=False`` forces one reverse walk per tile)."""
    batch, seq_len, channels = x.shape
    modes = lam.shape[1]
    block_d, block_n = backward_blocks(channels, modes)
    n_mode_blocks = cdiv(modes, block_n)
    tiles = (cdiv(channels, block_d), batch)
    n_chunks, chunk_len = chunk_plan(batch, seq_len, channels, modes, (block_d, block_n), x.device) \
        if allow_chunks else (1, seq_len)
    split = n_mode_blocks > 1
    stages = 1 if interpreter_enabled() else SCAN_STAGES
    dx = torch.empty((batch, seq_len, channels), device=x.device, dtype=x.dtype)
    per_chunk = (n_chunks, batch, channels, modes, 2)
    dlam_parts = torch.empty(per_chunk, device=x.device, dtype=torch.float32)
    db_parts = torch.empty(per_chunk, device=x.device, dtype=torch.float32)
    dstate = torch.empty((batch, channels, modes, 2) if state is not None else (0, 2), device=x.device,
                         dtype=torch.float32)
    unused = torch.empty(0, device=x.device, dtype=torch.float32)
    partial = torch.empty((n_mode_blocks, batch, seq_len, channels), device=x.device, dtype=torch.float32) \
        if split else unused
    state_parts = torch.view_as_real(state) if state is not None else unused
    lam_parts, b_parts = torch.view_as_real(lam), torch.view_as_real(b)
    dfinal_parts = torch.view_as_real(dfinal) if dfinal is not None else unused
    blocks = dict(BLOCK_D=block_d, BLOCK_N=block_n)
    carry_g = carry_v = unused
    if n_chunks > 1:
        carry_g = torch.empty(per_chunk, device=x.device, dtype=torch.float32)
        carry_v = torch.empty(per_chunk, device=x.device, dtype=torch.float32)
        wrap_triton(_chunk_backward_local_kernel)[(*tiles, n_mode_blocks * (n_chunks - 1))](
            x, lam_parts, b_parts, dy, dfinal_parts, carry_g, carry_v,
            batch, seq_len, chunk_len, n_chunks, channels, modes, n_mode_blocks,
            x.stride(0), x.stride(1), x.stride(2),
            HAS_DFINAL=dfinal is not None, **blocks, NUM_STAGES=stages, num_warps=SCAN_WARPS,
        )
        nodes = lam.to(torch.complex128)
        propagate = torch.view_as_real((nodes ** chunk_len).conj().to(torch.complex64))
        lag_weight = torch.view_as_real((chunk_len * nodes ** (chunk_len - 1)).conj().to(torch.complex64))
        wrap_triton(_chunk_backward_carry_kernel)[(*tiles, n_mode_blocks)](
            propagate, lag_weight, carry_g, carry_v, batch, n_chunks, channels, modes, **blocks,
            num_warps=SCAN_WARPS,
        )
    wrap_triton(_ssm_scan_backward_kernel)[(*tiles, n_mode_blocks * n_chunks)](
        x, lam_parts, b_parts, state_parts, dy, dfinal_parts, carry_g, carry_v,
        dx, partial, dlam_parts, db_parts, dstate,
        batch, seq_len, chunk_len, n_chunks, channels, modes, n_mode_blocks,
        x.stride(0), x.stride(1), x.stride(2),
        *(state_parts.stride()[:3] if state is not None else (0, 0, 0)),
        HAS_STATE=state is not None,
        HAS_DFINAL=dfinal is not None, CHUNKED=n_chunks > 1, SPLIT_MODES=split, **blocks,
        NUM_STAGES=stages, num_warps=SCAN_WARPS,
    )
    if split:
        numel = dx.numel()
        wrap_triton(_sum_mode_blocks_kernel)[(cdiv(numel, REDUCE_BLOCK),)](
            partial, dx, numel, n_mode_blocks, BLOCK=REDUCE_BLOCK
        )
    dlam = torch.view_as_complex(dlam_parts.sum((0, 1)))
    db = torch.view_as_complex(db_parts.sum((0, 1)))
    return dx, dlam, db, torch.view_as_complex(dstate)


class _SSMScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam, b, state):
        y, final_state = _ssm_scan_launch(x, lam, b, state, True)
        ctx.save_for_backward(x, lam, b, state)
        return y, final_state

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, lam, b, state = ctx.saved_tensors
        dy = torch.zeros(x.shape, device=x.device, dtype=x.dtype) if dy is None else dy.contiguous()
        dfinal = None if dfinal is None else dfinal.to(torch.complex64).contiguous()
        dx, dlam, db, dstate = _ssm_scan_backward_launch(x, lam, b, state, dy, dfinal, True)
        return dx, dlam, db, dstate if state is not None else None


def ssm_scan(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a diagonal complex SSM over a sequence (prefill); returns every output and the final state.

    ``u_t = lam * u_{t-1} + b * x_t`` and ``y_t = Re sum_s u_{t,s}`` in fp32 for every batch row and channel,
    starting from ``state`` (zero when None). The states of the intermediate tokens never go to memory. The
    update and the mode reduction are those of :func:`etsc_triton.ssm_step`: L scan tokens and L steps agree to
    fp32 rounding. Differentiable in x, lam, b and state (a reverse-scan kernel; no forward states are saved).

    Args:
        x: inputs, ``[B, L, D]`` float32 / bfloat16 / float16 (float64 accepted; computed in fp32), any strides
            (not copied).
        lam: nodes, complex ``[D, N]`` (complex64; complex128 is rounded to complex64).
        b: input weights, complex ``[D, N]``.
        state: optional initial state, complex64 ``[B, D, N]``; read, never modified.
        backend: ``"auto"`` (Triton on CUDA, else the Torch reference), ``"triton"`` or ``"torch"``.

    Returns:
        ``(y, final_state)``: y ``[B, L, D]`` in x.dtype, final_state complex64 ``[B, D, N]`` (the state after
        the last token; decoding continues from it with :func:`etsc_triton.ssm_step`).

    Example:
        >>> import torch, etsc_triton as et
        >>> lam = torch.full((4, 3), 0.5 + 0.5j, dtype=torch.complex64)
        >>> b = torch.ones(4, 3, dtype=torch.complex64)
        >>> y, state = et.ssm_scan(torch.ones(2, 7, 4), lam, b)
        >>> y.shape, state.shape
        (torch.Size([2, 7, 4]), torch.Size([2, 4, 3]))
    """
    check_scan_inputs("ssm_scan", x, lam, b, state)
    which = resolve_backend("ssm_scan", backend, x, lam, b, *([state] if state is not None else []))
    if which == "torch":
        return naive.ssm_scan(x, lam, b, state)
    lam = lam.to(torch.complex64).contiguous()
    b = b.to(torch.complex64).contiguous()
    if state is not None:
        state = state.to(torch.complex64)
    if needs_grad(x, lam, b, state):
        return _SSMScanFunction.apply(x, lam, b, state)
    return _ssm_scan_launch(x, lam, b, state, True)
