"""Fused diagonal complex SSM scan (prefill).

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

Packed sequences (``cu_seqlens``, VARLEN): x ``[1, T, D]``; the batch axis of the grid runs over the S sequences
and each program reads its sequence's span from ``cu_seqlens``, so every sequence is walked exactly as the dense
scan walks a row (the same bits). Chunks never cross a sequence: each sequence is cut into its own chunks of the
plan's length (planned from T, so no host read of ``cu_seqlens``), and programs past a sequence's last chunk exit.
Pooled (``state_indices``, POOLED): a sequence starts from its row of the pool (or zero) and its last chunk writes
its final state back to that row; a padding sequence writes zero outputs and touches no row. The dense kernels
are these with VARLEN and POOLED off (constexpr), compiled to the same token loops.

Backward (``torch.autograd``; derivation in the README): with upstream gradients ``G_t = dy_t`` plus
``dfinal`` at t = L - 1, one reverse walk per tile carries two complex states and stores nothing of the forward:

    g_t = conj(lam) g_{t+1} + G_t                   (dL/du_t)
    v_t = conj(lam) v_{t+1} + g_{t+1}               (sum over s > t of (s - t) conj(lam)^(s-t-1) G_s)
    dx_t = Re sum_modes conj(b) g_t,   db = sum_t x_t g_t,   dlam = conj(b) sum_t x_t v_t + conj(u_init) v_{-1},
    d u_init = conj(lam) g_0

(dlam and db summed over the batch rows afterwards). About 18 FP32 instructions per mode and token against the
forward's 7 (PTX counts). Chunked like the forward when the tiles leave SMs idle: the pair
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

from ..complex import conj_mul
from ..dispatch import needs_grad, registered_launcher, resolve_backend
from ..tiles import TilePolicy, cdiv, current_tiles, next_power_of_2
from . import naive
from .chunked import chunk_initial_states, chunk_plan, chunk_reverse_carries
from .contract import check_packed_scan_inputs, check_scan_inputs
from .update import mode_block_size
from .walk import (
    SCAN_WARPS,
    chunk_pointers,
    fill_tokens,
    initial_state,
    load_modes_by_channels,
    pool_slot,
    reverse_tokens,
    scan_program,
    scan_tokens,
    sequence_span,
    store_modes_by_channels,
)

BACKWARD_MODES_PER_THREAD = 8
BACKWARD_MAX_MODE_BLOCK = 256


@triton.jit(do_not_specialize=["seq_len", "chunk_len"])
def _ssm_scan_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    state_ptr,  # the initial state [B, D, N] (HAS_STATE), or the chunks' initial states [C, B, D, N] (CHUNKED)
    y_ptr,
    partial_ptr,
    final_ptr,  # out: [B, D, N] complex64 contiguous; (POOLED) the pool [P, D, N], read and written in place
    cu_ptr,  # (VARLEN) cu_seqlens [B + 1]: sequence i is tokens cu[i] .. cu[i+1] - 1 of x [1, T, D]
    index_ptr,  # (POOLED) state_indices [B] int32
    flag_ptr,  # (HAS_FLAGS) has_initial_state [B] as bytes
    batch,
    seq_len,  # L, or (VARLEN) T, the packed tokens
    chunk_len,
    n_chunks,
    n_channels,
    n_modes,
    n_mode_blocks,
    pool,
    stride_xb,
    stride_xl,
    stride_xd,
    stride_sb,  # strides of the initial state, or (POOLED) of the pool
    stride_sd,
    stride_sn,
    HAS_STATE: tl.constexpr,
    CHUNKED: tl.constexpr,
    SPLIT_MODES: tl.constexpr,
    VARLEN: tl.constexpr,
    POOLED: tl.constexpr,
    HAS_FLAGS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """(BLOCK_D channels, one batch row or sequence, one mode block, one chunk): walk the chunk's tokens, write
    y (or partial y); the sequence's last chunk writes the final state (into its pool row when POOLED)."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    # Dense rows skip the branches packed sequences need (constexpr True): their token loop compiles without them.
    if VARLEN:
        bos, length, seq_chunks = sequence_span(cu_ptr, pid_b, seq_len, chunk_len)
        out_row = bos
        partial_row = pid_n.to(tl.int64) * seq_len + bos
        in_sequence = chunk < seq_chunks  # a sequence shorter than T takes fewer chunks than planned
    else:
        bos = 0
        length = seq_len
        seq_chunks = n_chunks
        out_row = pid_b * seq_len
        partial_row = (pid_n * batch + pid_b) * seq_len
        in_sequence = True
    if in_sequence:
        start = chunk.to(tl.int64) * chunk_len
        count = tl.minimum(length - start, chunk_len)
        walk = True
        if VARLEN:
            walk = count > 0  # a zero-length sequence keeps its initial state
        x_ptrs = x_ptr + pid_b * stride_xb + (bos + start) * stride_xl + channels64 * stride_xd
        if SPLIT_MODES:
            out_ptrs = partial_ptr + (partial_row + start) * n_channels + channels64
        else:
            out_ptrs = y_ptr + (out_row + start) * n_channels + channels64
        if CHUNKED:
            init_rows = state_ptr + ((chunk * batch + pid_b) * n_channels + channels64[:, None]) * (2 * n_modes)
        if POOLED:
            slot, live, from_pool, padding = pool_slot(index_ptr, flag_ptr, pid_b, pool, HAS_FLAGS)
            pool_rows = final_ptr + slot * stride_sb + channels64[:, None] * stride_sd
            if live:
                if CHUNKED:
                    u_re, u_im = load_modes_by_channels(init_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
                else:
                    # tl.where, not &: the interpreter mistypes a scalar & a tile as an integer mask
                    # a false tile, not the literal False: triton 3.3's interpreter has no int1 constant
                    start_mask = tl.where(from_pool, row_mask, row_mask & (channels64[:, None] < 0))
                    u_re, u_im = load_modes_by_channels(pool_rows, start_mask, first, n_modes, stride_sn, BLOCK_D,
                                                        BLOCK_N)
                if walk:
                    u_re, u_im = scan_tokens(u_re, u_im, lam_re, lam_im, b_re, b_im, x_ptrs, out_ptrs, count,
                                             stride_xl, n_channels, channel_ok, True)
                if chunk == seq_chunks - 1:
                    store_modes_by_channels(pool_rows, row_mask, first, n_modes, stride_sn, u_re, u_im, BLOCK_D,
                                            BLOCK_N)
            else:
                fill_tokens(out_ptrs, tl.where(padding, 0.0, float("nan")), count, n_channels, channel_ok)
        else:
            if CHUNKED:
                u_re, u_im = load_modes_by_channels(init_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N)
            else:
                u_re, u_im = initial_state(state_ptr, pid_b, channels64, row_mask, first, n_modes, stride_sb,
                                           stride_sd, stride_sn, HAS_STATE, BLOCK_D, BLOCK_N)
            if walk:
                u_re, u_im = scan_tokens(u_re, u_im, lam_re, lam_im, b_re, b_im, x_ptrs, out_ptrs, count,
                                         stride_xl, n_channels, channel_ok, True)
            if chunk == seq_chunks - 1:
                final_rows = final_ptr + (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)
                store_modes_by_channels(final_rows, row_mask, first, n_modes, 2, u_re, u_im, BLOCK_D, BLOCK_N)


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
    cu_ptr,  # (VARLEN) cu_seqlens [B + 1]
    dx_ptr,  # out: [B, L, D] contiguous
    dx_partial_ptr,  # out (SPLIT_MODES): [n_blocks, B, L, D] fp32
    dlam_ptr,  # out: [C, B, D, N] complex64, per chunk and batch row (VARLEN: zero where a sequence has no chunk)
    db_ptr,  # out: [C, B, D, N] complex64, per chunk and batch row
    dstate_ptr,  # out (HAS_STATE): [B, D, N] complex64
    batch,
    seq_len,  # L, or (VARLEN) T, the packed tokens
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
    VARLEN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """(BLOCK_D channels, one batch row or sequence, one mode block, one chunk): walk the chunk's tokens
    backwards."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    if VARLEN:
        bos, length, seq_chunks = sequence_span(cu_ptr, pid_b, seq_len, chunk_len)
        out_row = bos
        partial_row = pid_n.to(tl.int64) * seq_len + bos
        in_sequence = chunk < seq_chunks
    else:
        bos = 0
        length = seq_len
        seq_chunks = n_chunks
        out_row = pid_b * seq_len
        partial_row = (pid_n * batch + pid_b) * seq_len
        in_sequence = True  # constexpr: the dense walk compiles without the branch
    if in_sequence:
        rows = (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)  # [B, D, N] row offsets
        chunk_rows = rows + chunk.to(tl.int64) * batch * n_channels * (2 * n_modes)  # [C, B, D, N]
        zero = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        g_re, g_im, v_re, v_im, h_re, h_im = zero, zero, zero, zero, zero, zero
        if chunk == seq_chunks - 1:  # the sequence's last token: dL/du_{L-1} starts as dfinal
            if HAS_DFINAL:
                h_re, h_im = load_modes_by_channels(dfinal_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D,
                                                    BLOCK_N)
        else:
            if CHUNKED:
                g_re, g_im = load_modes_by_channels(carry_g_ptr + chunk_rows, row_mask, first, n_modes, 2,
                                                    BLOCK_D, BLOCK_N)
                v_re, v_im = load_modes_by_channels(carry_v_ptr + chunk_rows, row_mask, first, n_modes, 2,
                                                    BLOCK_D, BLOCK_N)
                h_re, h_im = conj_mul(lam_re, lam_im, g_re, g_im)
        last, count, x_ptrs, dy_ptrs = chunk_pointers(x_ptr, dy_ptr, pid_b, bos, out_row, chunk, chunk_len,
                                                       length, n_channels, channels64, stride_xb, stride_xl,
                                                       stride_xd)
        if SPLIT_MODES:
            out_ptrs = dx_partial_ptr + (partial_row + last) * n_channels + channels64
        else:
            out_ptrs = dx_ptr + (out_row + last) * n_channels + channels64
        g_re, g_im, v_re, v_im, h_re, h_im, xg_re, xg_im, xv_re, xv_im = reverse_tokens(
            g_re, g_im, v_re, v_im, h_re, h_im, lam_re, lam_im, b_re, b_im, x_ptrs, dy_ptrs, out_ptrs, count,
            stride_xl, n_channels, channel_ok, True, NUM_STAGES)
        dlam_re, dlam_im = conj_mul(b_re, b_im, xv_re, xv_im)
        if HAS_STATE:
            if chunk == 0:
                s_re, s_im = initial_state(state_ptr, pid_b, channels64, row_mask, first, n_modes, stride_sb,
                                           stride_sd, stride_sn, HAS_STATE, BLOCK_D, BLOCK_N)
                cv_re, cv_im = conj_mul(lam_re, lam_im, v_re, v_im)  # v_{-1} = conj(lam) v_0 + g_0
                ds_re, ds_im = conj_mul(s_re, s_im, cv_re + g_re, cv_im + g_im)
                dlam_re += ds_re
                dlam_im += ds_im
                store_modes_by_channels(dstate_ptr + rows, row_mask, first, n_modes, 2, h_re, h_im, BLOCK_D,
                                        BLOCK_N)
        store_modes_by_channels(dlam_ptr + chunk_rows, row_mask, first, n_modes, 2, dlam_re, dlam_im, BLOCK_D,
                                BLOCK_N)
        store_modes_by_channels(db_ptr + chunk_rows, row_mask, first, n_modes, 2, xg_re, xg_im, BLOCK_D, BLOCK_N)


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


def scan_blocks(channels: int, modes: int, policy: TilePolicy) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_N)`` of the forward: about ``policy.scan_modes_per_thread`` modes per thread, the step's
    mode blocks."""
    return _warp_tile(channels, mode_block_size(modes), policy.scan_modes_per_thread)


def backward_blocks(channels: int, modes: int) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_N)`` of the backward: it keeps 14 fp32 values per mode (lam, b, g, v, h and the two
    accumulators) against the forward's 6, so about BACKWARD_MODES_PER_THREAD modes per thread and mode blocks
    of at most BACKWARD_MAX_MODE_BLOCK (16 modes per thread took 255 registers and spilled on sm_90)."""
    return _warp_tile(channels, min(next_power_of_2(modes), BACKWARD_MAX_MODE_BLOCK), BACKWARD_MODES_PER_THREAD)


def _scan_forward(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    state_indices: torch.Tensor | None,
    has_initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward launches of every mode: returns ``(y, final)``, final being the pool itself when pooled.

    Dense: x ``[B, L, D]``, state ``[B, D, N]`` or None. Packed: x ``[1, T, D]``, ``cu_seqlens [S+1]``, state
    ``[S, D, N]`` or None; one program row per sequence, each sequence cut into its own chunks (the plan
    is made for T tokens, so it needs no host read of ``cu_seqlens``; programs past a sequence's chunks exit).
    Pooled: state is the pool ``[P, D, N]`` and ``state_indices [S]`` picks each sequence's row.
    """
    varlen = cu_seqlens is not None
    pooled = state_indices is not None
    batch = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else x.shape[0]
    seq_len, channels = x.shape[1], x.shape[2]
    modes = lam.shape[1]
    policy = current_tiles()
    block_d, block_n = scan_blocks(channels, modes, policy)
    n_mode_blocks = cdiv(modes, block_n)
    tiles = (cdiv(channels, block_d), batch)
    n_chunks, chunk_len = chunk_plan(batch, seq_len, channels, modes, (block_d, block_n), x.device,
                                     policy) \
        if policy.scan_chunks else (1, seq_len)
    split = n_mode_blocks > 1
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if state is not None and pooled:
        final_state = state
    else:
        final_state = torch.empty((batch, channels, modes), device=x.device, dtype=torch.complex64)
    # Unused pointers get a distinct empty tensor (never an alias of an output, for torch.compile's analysis).
    unused = torch.empty(0, device=x.device, dtype=torch.float32)
    partial = torch.empty((n_mode_blocks, *x.shape), device=x.device, dtype=torch.float32) if split else unused
    state_parts = torch.view_as_real(state) if state is not None else unused
    state_strides = state_parts.stride()[:3] if state is not None else (0, 0, 0)
    lam_parts, b_parts = torch.view_as_real(lam), torch.view_as_real(b)
    # The flags go in as bytes (a bool pointer's element type differs between triton versions).
    flags = has_initial_state.view(torch.uint8) if has_initial_state is not None else None
    blocks = dict(BLOCK_D=block_d, BLOCK_N=block_n)
    scan_init = unused if pooled else state_parts
    if n_chunks > 1:
        scan_init = chunk_initial_states(x, lam, b, state, n_chunks, chunk_len, (block_d, block_n),
                                         cu_seqlens=cu_seqlens, state_indices=state_indices, flags=flags)
    wrap_triton(_ssm_scan_kernel)[(*tiles, n_mode_blocks * n_chunks)](
        x, lam_parts, b_parts, scan_init, y, partial, torch.view_as_real(final_state),
        cu_seqlens if cu_seqlens is not None else unused, state_indices if state_indices is not None else unused,
        flags if flags is not None else unused,
        batch, seq_len, chunk_len, n_chunks, channels, modes, n_mode_blocks, state.shape[0] if pooled else 0,
        0 if varlen else x.stride(0), x.stride(1), x.stride(2), *state_strides,
        HAS_STATE=state is not None and not pooled, CHUNKED=n_chunks > 1, SPLIT_MODES=split, VARLEN=varlen,
        POOLED=pooled, HAS_FLAGS=flags is not None, **blocks, num_warps=SCAN_WARPS,
    )
    if split:
        numel = y.numel()
        wrap_triton(_sum_mode_blocks_kernel)[(cdiv(numel, policy.reduce_block),)](
            partial, y, numel, n_mode_blocks, BLOCK=policy.reduce_block
        )
    return y, final_state


@registered_launcher("etsc_triton::ssm_scan", mutates_args=())
def _ssm_scan_launch(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[B, L, D]`` any strides (or packed ``[1, T, D]`` with ``cu_seqlens [S+1]``); lam/b complex64
    contiguous ``[D, N]``; state complex64 ``[B, D, N]`` (``[S, D, N]``) or None.

    Chunked over the sequence when the tile policy allows it and the tiles leave SMs idle (:mod:`.chunked`).
    """
    return _scan_forward(x, lam, b, state, cu_seqlens, None, None)


@registered_launcher("etsc_triton::ssm_scan_pooled", mutates_args={"pool"})
def _ssm_scan_pooled_launch(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    pool: torch.Tensor,
    cu_seqlens: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor | None,
) -> torch.Tensor:
    """Packed x ``[1, T, D]``, ``cu_seqlens [S+1]``; pool complex64 ``[P, D, N]`` (any strides), read at and
    written to rows ``state_indices [S]`` (int32) in place; ``has_initial_state`` bool ``[S]`` or None (all
    True). Returns y ``[1, T, D]``."""
    return _scan_forward(x, lam, b, pool, cu_seqlens, state_indices, has_initial_state)[0]


@registered_launcher("etsc_triton::ssm_scan_backward", mutates_args=())
def _ssm_scan_backward_launch(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None,
    dy: torch.Tensor,
    dfinal: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the scan: x, lam, b, state, cu_seqlens as in the forward; dy x's shape, contiguous; dfinal
    complex64 ``[B, D, N]`` (``[S, D, N]``) contiguous or None. Returns ``(dx in x.dtype, dlam [D, N], db [D, N],
    dstate)`` (complex64; dstate ``[B, D, N]``, empty without a state). Chunked like the forward when the tiles
    leave SMs idle (when the tile policy allows it)."""
    varlen = cu_seqlens is not None
    batch = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else x.shape[0]
    seq_len, channels = x.shape[1], x.shape[2]
    modes = lam.shape[1]
    policy = current_tiles()
    block_d, block_n = backward_blocks(channels, modes)
    n_mode_blocks = cdiv(modes, block_n)
    tiles = (cdiv(channels, block_d), batch)
    n_chunks, chunk_len = chunk_plan(batch, seq_len, channels, modes, (block_d, block_n), x.device,
                                     policy) \
        if policy.scan_chunks else (1, seq_len)
    split = n_mode_blocks > 1
    stages = policy.scan_backward_stages
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    per_chunk = (n_chunks, batch, channels, modes, 2)
    # A packed sequence shorter than the plan leaves its later chunks' slots of the per-chunk sums unwritten.
    alloc = torch.zeros if varlen and n_chunks > 1 else torch.empty
    dlam_parts = alloc(per_chunk, device=x.device, dtype=torch.float32)
    db_parts = alloc(per_chunk, device=x.device, dtype=torch.float32)
    dstate = torch.empty((batch, channels, modes, 2) if state is not None else (0, 2), device=x.device,
                         dtype=torch.float32)
    unused = torch.empty(0, device=x.device, dtype=torch.float32)
    partial = torch.empty((n_mode_blocks, *x.shape), device=x.device, dtype=torch.float32) if split else unused
    state_parts = torch.view_as_real(state) if state is not None else unused
    lam_parts, b_parts = torch.view_as_real(lam), torch.view_as_real(b)
    dfinal_parts = torch.view_as_real(dfinal) if dfinal is not None else unused
    blocks = dict(BLOCK_D=block_d, BLOCK_N=block_n)
    carry_g = carry_v = unused
    if n_chunks > 1:
        carry_g, carry_v = chunk_reverse_carries(x, lam, b, dy, dfinal, n_chunks, chunk_len, (block_d, block_n),
                                                 stages, cu_seqlens=cu_seqlens)
    wrap_triton(_ssm_scan_backward_kernel)[(*tiles, n_mode_blocks * n_chunks)](
        x, lam_parts, b_parts, state_parts, dy, dfinal_parts, carry_g, carry_v,
        cu_seqlens if cu_seqlens is not None else unused,
        dx, partial, dlam_parts, db_parts, dstate,
        batch, seq_len, chunk_len, n_chunks, channels, modes, n_mode_blocks,
        0 if varlen else x.stride(0), x.stride(1), x.stride(2),
        *(state_parts.stride()[:3] if state is not None else (0, 0, 0)),
        HAS_STATE=state is not None,
        HAS_DFINAL=dfinal is not None, CHUNKED=n_chunks > 1, SPLIT_MODES=split, VARLEN=varlen, **blocks,
        NUM_STAGES=stages, num_warps=SCAN_WARPS,
    )
    if split:
        numel = dx.numel()
        wrap_triton(_sum_mode_blocks_kernel)[(cdiv(numel, policy.reduce_block),)](
            partial, dx, numel, n_mode_blocks, BLOCK=policy.reduce_block
        )
    dlam = torch.view_as_complex(dlam_parts.sum((0, 1)))
    db = torch.view_as_complex(db_parts.sum((0, 1)))
    return dx, dlam, db, torch.view_as_complex(dstate)


class _SSMScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam, b, state, cu_seqlens):
        y, final_state = _ssm_scan_launch(x, lam, b, state, cu_seqlens)
        ctx.save_for_backward(x, lam, b, state, cu_seqlens)
        return y, final_state

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, lam, b, state, cu_seqlens = ctx.saved_tensors
        dy = torch.zeros(x.shape, device=x.device, dtype=x.dtype) if dy is None else dy.contiguous()
        dfinal = None if dfinal is None else dfinal.to(torch.complex64).contiguous()
        dx, dlam, db, dstate = _ssm_scan_backward_launch(x, lam, b, state, dy, dfinal, cu_seqlens)
        return dx, dlam, db, dstate if state is not None else None, None


def ssm_scan(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor | None = None,
    *,
    cu_seqlens: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    has_initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a diagonal complex SSM over a sequence (prefill); returns every output and the final state.

    ``u_t = lam * u_{t-1} + b * x_t`` and ``y_t = Re sum_s u_{t,s}`` in fp32 for every batch row and channel,
    starting from ``state`` (zero when None). The states of the intermediate tokens never go to memory. The
    update and the mode reduction are those of :func:`etsc_triton.ssm_step`: L scan tokens and L steps agree to
    fp32 rounding. Differentiable in x, lam, b and state (a reverse-scan kernel; no forward states are saved).

    Three modes (the op README maps them to vLLM's, fla's and mamba's conventions):

    - **dense**: x ``[B, L, D]``, state ``[B, D, N]`` or None; returns ``(y, final_state [B, D, N])``.
    - **packed** (``cu_seqlens``, fla's varlen / vLLM's ``query_start_loc``): x ``[1, T, D]`` holds S sequences
      back to back, sequence i being tokens ``cu_seqlens[i] .. cu_seqlens[i+1] - 1`` (zero-length sequences
      allowed); state ``[S, D, N]`` or None, read, never modified; returns ``(y [1, T, D], final [S, D, N])``.
      Differentiable like the dense scan (packed training). A dense batch is the packed one with
      ``x.reshape(1, B * L, D)`` and ``cu_seqlens = arange(0, B * L + 1, L)``.
    - **pooled** (``cu_seqlens`` and ``state_indices``, vLLM's ``cache_indices`` / mamba's
      ``state_batch_indices``): state is a pool ``[P, D, N]`` complex64. Sequence i starts from row
      ``state_indices[i]`` (from zero where ``has_initial_state[i]`` is False) and its final state is written
      back into that row in place; a negative index (vLLM's ``PAD_SLOT_ID = -1``) is a padding sequence: its
      outputs are 0 and no row is read or written. Rows no sequence names are left bit for bit. Returns
      ``(y [1, T, D], state)`` (the pool itself). Not differentiable, like :func:`etsc_triton.ssm_step`.

    ``cu_seqlens`` (rising from 0 to T) and ``state_indices`` (distinct rows ``< P``) are checked for CPU tensors
    and, with ``ETSC_TRITON_DEBUG=1``, for CUDA tensors (a host synchronisation); otherwise they are the caller's
    responsibility on CUDA, where no program reads or writes outside x, y and the pool whatever their values,
    and a sequence whose index is ``>= P`` gets NaN outputs and touches no row. No host synchronisation
    otherwise: the chunk plan is made from T, not from the sequence lengths.

    Args:
        x: inputs, ``[B, L, D]`` (packed: ``[1, T, D]``) float32 / bfloat16 / float16 (float64 accepted; computed
            in fp32), any strides (not copied).
        lam: nodes, complex ``[D, N]`` (complex64; complex128 is rounded to complex64).
        b: input weights, complex ``[D, N]``.
        state: optional initial state, complex64 ``[B, D, N]`` (packed: ``[S, D, N]``), read, never modified; or,
            with ``state_indices``, the pool ``[P, D, N]`` complex64 updated in place (any strides).
        cu_seqlens: int32 / int64 ``[S + 1]``, the packed sequences' boundaries: 0, then rising (or equal) to T.
        state_indices: int32 ``[S]``: each sequence's row of the pool; negative: a padding sequence.
        has_initial_state: bool ``[S]`` (with ``state_indices``): False starts that sequence from zero, whatever
            its row holds; None: every sequence starts from its row.
        backend: ``"auto"`` (Triton on CUDA, else the Torch reference), ``"triton"`` or ``"torch"``.

    Returns:
        ``(y, final_state)``: y x's shape in x.dtype; final_state complex64 ``[B, D, N]`` (packed: ``[S, D, N]``)
        the state after each row's (sequence's) last token, from which decoding continues with
        :func:`etsc_triton.ssm_step`; pooled: the pool itself.

    Example:
        >>> import torch, etsc_triton as et
        >>> lam = torch.full((4, 3), 0.5 + 0.5j, dtype=torch.complex64)
        >>> b = torch.ones(4, 3, dtype=torch.complex64)
        >>> y, state = et.ssm_scan(torch.ones(2, 7, 4), lam, b)
        >>> y.shape, state.shape
        (torch.Size([2, 7, 4]), torch.Size([2, 4, 3]))
        >>> cu = torch.tensor([0, 5, 5, 12])  # three sequences of 5, 0 and 7 tokens
        >>> y, final = et.ssm_scan(torch.ones(1, 12, 4), lam, b, cu_seqlens=cu)
        >>> final.shape
        torch.Size([3, 4, 3])
        >>> pool = torch.zeros(8, 4, 3, dtype=torch.complex64)
        >>> rows = torch.tensor([6, -1, 2], dtype=torch.int32)  # the second sequence is padding
        >>> y, pool = et.ssm_scan(torch.ones(1, 12, 4), lam, b, pool, cu_seqlens=cu, state_indices=rows)
        >>> bool(pool[6].abs().sum() > 0), bool(pool[0].abs().sum() == 0)
        (True, True)
    """
    if cu_seqlens is None and state_indices is None and has_initial_state is None:
        check_scan_inputs("ssm_scan", x, lam, b, state)
        which = resolve_backend("ssm_scan", backend, x, lam, b, *([state] if state is not None else []),
                                empty=x.numel() == 0)
        if which == "torch":
            y, final_state = naive.ssm_scan(x, lam, b, state)
            return y, final_state.to(torch.complex64)
        lam = lam.to(torch.complex64).contiguous()
        b = b.to(torch.complex64).contiguous()
        if state is not None:
            state = state.to(torch.complex64)
        if needs_grad(x, lam, b, state):
            return _SSMScanFunction.apply(x, lam, b, state, None)
        return _ssm_scan_launch(x, lam, b, state)
    check_packed_scan_inputs("ssm_scan", x, lam, b, state, cu_seqlens, state_indices, has_initial_state)
    pooled = state_indices is not None
    if pooled and state is not None and state.dtype != torch.complex64:
        raise TypeError(f"ssm_scan: a pool (state with state_indices) must be complex64 (it is updated in place), "
                        f"got {state.dtype}")
    tensors = [t for t in (x, lam, b, state, cu_seqlens, state_indices, has_initial_state) if t is not None]
    which = resolve_backend("ssm_scan", backend, *tensors, empty=x.numel() == 0)
    if which == "torch":
        y, final_state = naive.ssm_scan(x, lam, b, state, cu_seqlens=cu_seqlens, state_indices=state_indices,
                                        has_initial_state=has_initial_state)
        return y, final_state if pooled else final_state.to(torch.complex64)
    lam = lam.to(torch.complex64).contiguous()
    b = b.to(torch.complex64).contiguous()
    if pooled:
        return _ssm_scan_pooled_launch(x, lam, b, state, cu_seqlens, state_indices, has_initial_state), state
    if state is not None:
        state = state.to(torch.complex64)
    if needs_grad(x, lam, b, state):
        return _SSMScanFunction.apply(x, lam, b, state, cu_seqlens)
    return _ssm_scan_launch(x, lam, b, state, cu_seqlens)
