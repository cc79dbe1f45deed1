"""The chunked scan: split a long sequence into C chunks when (B, D, N) alone leave the GPU idle.

Forward, three launches, each program's work still sequential:

1. local states: chunk c < C - 1 scans its T tokens from zero, without y: ``v_c = sum_t lam^(T-1-t) b x_t``;
2. carry, one program per tile: ``s_0 = state``, ``s_{c+1} = lam^T s_c + v_c`` (lam^T from complex128),
   stored in place of v_c as chunk c's initial state;
3. the scan itself (:mod:`.scan`), one program per (tile, chunk), from s_c; the last chunk writes the final state.

It does about twice the recurrence work for C times the parallelism. Its y and final state differ from the
sequential scan by fp32 rounding (the carry re-associates the sum), not bit for bit.

Packed sequences: every sequence is cut into its own chunks (the plan's chunk length, planned from the packed
token count T); a sequence's carry starts from its own initial state (or its pool row) and never enters another
sequence, and the workspaces hold ``[C, S, ...]`` slots of which a sequence uses its first ``ceil(L_i / T_c)``.

Backward: the pair (v, g) of the reverse walk obeys ``(v, g)_t = M (v, g)_{t+1} + (0, G_t)`` with
``M = [[conj(lam), 1], [0, conj(lam)]]``, so: local reverse walks of chunks 1 .. C-1 from zero, a right-to-left
carry with ``M^T = [[c^T, T c^(T-1)], [0, c^T]]`` (c = conj(lam), powers from complex128), then every chunk's
walk from its entering (g, v) (:mod:`.scan`), with dlam and db accumulated per chunk and summed afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..complex import complex_mul, load_complex, store_complex
from ..tiles import TilePolicy, cdiv, sm_count
from .walk import (
    SCAN_WARPS,
    channel_tile,
    chunk_pointers,
    load_modes_by_channels,
    pool_slot,
    reverse_tokens,
    scan_program,
    scan_tokens,
    sequence_span,
    store_modes_by_channels,
)

# Chunking: below this many programs per SM the sequence is split (one warp per program; ~150 registers per
# thread allow ~13 warps per SM); chunks hold at least the policy's scan_min_chunk_tokens and number at most
# MAX_CHUNKS.
CHUNK_TARGET_PER_SM = 8




MAX_CHUNKS = 128


@triton.jit(do_not_specialize=["n_tokens", "chunk_len"])
def _chunk_local_state_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    local_ptr,  # out: [C, B, D, N] complex64; chunks 0 .. C-2 of every row (of every sequence) written
    cu_ptr,  # (VARLEN) cu_seqlens [B + 1]
    batch,
    n_tokens,  # (VARLEN) T, the packed tokens
    chunk_len,
    n_channels,
    n_modes,
    n_mode_blocks,
    stride_xb,
    stride_xl,
    stride_xd,
    VARLEN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Phase 1: the state a full chunk (chunk_len tokens) reaches from zero, no y."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    bos = 0
    carried = True
    if VARLEN:
        bos, _, seq_chunks = sequence_span(cu_ptr, pid_b, n_tokens, chunk_len)
        carried = chunk < seq_chunks - 1  # only a sequence's chunks before its last one are carried
    if carried:
        u_re = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        u_im = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        x_ptrs = x_ptr + pid_b * stride_xb + (bos + chunk.to(tl.int64) * chunk_len) * stride_xl \
            + channels64 * stride_xd
        u_re, u_im = scan_tokens(u_re, u_im, lam_re, lam_im, b_re, b_im, x_ptrs, x_ptrs, chunk_len, stride_xl,
                                 n_channels, channel_ok, False)
        rows = local_ptr + ((chunk * batch + pid_b) * n_channels + channels64[:, None]) * (2 * n_modes)
        store_modes_by_channels(rows, row_mask, first, n_modes, 2, u_re, u_im, BLOCK_D, BLOCK_N)


@triton.jit(do_not_specialize=["n_tokens", "chunk_len"])
def _chunk_carry_kernel(
    lam_pow_ptr,  # [D, N] complex64: lam ** chunk_len
    state_ptr,  # the initial state [B, D, N] (HAS_STATE), or the pool [P, D, N] (POOLED)
    chunk_ptr,  # in: local states of chunks 0 .. C-2; out: initial states of chunks 0 .. C-1; [C, B, D, N]
    cu_ptr,  # (VARLEN) cu_seqlens [B + 1]
    index_ptr,  # (POOLED) state_indices [B]
    flag_ptr,  # (HAS_FLAGS) has_initial_state [B] as bytes
    batch,
    n_tokens,
    chunk_len,
    n_chunks,
    n_channels,
    n_modes,
    pool,
    stride_sb,
    stride_sd,
    stride_sn,
    HAS_STATE: tl.constexpr,
    VARLEN: tl.constexpr,
    POOLED: tl.constexpr,
    HAS_FLAGS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Phase 2: ``s_0 = state``, ``s_{c+1} = lam^T s_c + v_c``, each s_c written over v_c (then s_{C-1}).
    Elementwise, so its tiles are ``[BLOCK_D, BLOCK_N]`` read and written as contiguous complex spans."""
    pid_b = tl.program_id(1).to(tl.int64)
    first = tl.program_id(2) * BLOCK_N
    channel_ok, row_mask, channels64 = channel_tile(n_channels, BLOCK_D)
    seq_chunks = n_chunks
    if VARLEN:
        _, _, seq_chunks = sequence_span(cu_ptr, pid_b, n_tokens, chunk_len)
    param_rows = channels64[:, None] * (2 * n_modes)
    pow_re, pow_im = load_complex(lam_pow_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
    if POOLED:
        slot, _, from_pool, _ = pool_slot(index_ptr, flag_ptr, pid_b, pool, HAS_FLAGS)
        state_rows = state_ptr + slot * stride_sb + channels64[:, None] * stride_sd
        start_mask = tl.where(from_pool, row_mask, row_mask & (channels64[:, None] < 0))  # a false tile: see scan.py
        s_re, s_im = load_complex(state_rows, start_mask, first, n_modes, stride_sn, BLOCK_D, BLOCK_N, False)
    elif HAS_STATE:
        state_rows = state_ptr + pid_b * stride_sb + channels64[:, None] * stride_sd
        s_re, s_im = load_complex(state_rows, row_mask, first, n_modes, stride_sn, BLOCK_D, BLOCK_N, False)
    else:
        s_re = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        s_im = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    rows = chunk_ptr + (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)
    chunk_stride = batch * n_channels * 2 * n_modes
    for _ in range(seq_chunks - 1):
        v_re, v_im = load_complex(rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        store_complex(rows, row_mask, first, n_modes, 2, s_re, s_im, BLOCK_D, BLOCK_N, True)
        carried_re, carried_im = complex_mul(pow_re, pow_im, s_re, s_im)
        s_re = carried_re + v_re
        s_im = carried_im + v_im
        rows += chunk_stride
    store_complex(rows, row_mask, first, n_modes, 2, s_re, s_im, BLOCK_D, BLOCK_N, True)


@triton.jit(do_not_specialize=["seq_len", "chunk_len"])
def _chunk_backward_local_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    dy_ptr,
    dfinal_ptr,
    carry_g_ptr,  # out: [C, B, D, N] complex64; chunks 1 .. C-1: g at the chunk's first token from zero
    carry_v_ptr,  # out: likewise for v
    cu_ptr,  # (VARLEN) cu_seqlens [B + 1]
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
    HAS_DFINAL: tl.constexpr,
    VARLEN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Backward phase 1: chunk c + 1 walked from a zero entering state (dfinal for the last chunk), no dx."""
    pid_b, pid_n, chunk, first, channel_ok, row_mask, channels64, lam_re, lam_im, b_re, b_im = scan_program(
        lam_ptr, b_ptr, n_channels, n_modes, n_mode_blocks, BLOCK_D, BLOCK_N)
    chunk = chunk + 1  # chunk 0's own contribution is never carried
    if VARLEN:
        bos, length, seq_chunks = sequence_span(cu_ptr, pid_b, seq_len, chunk_len)
        out_row = bos
        in_sequence = chunk < seq_chunks
    else:
        bos = 0
        length = seq_len
        seq_chunks = n_chunks
        out_row = pid_b * seq_len
        in_sequence = True  # constexpr: no branch on dense rows
    if in_sequence:
        rows = (pid_b * n_channels + channels64[:, None]) * (2 * n_modes)
        zero = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        h_re, h_im = zero, zero
        if HAS_DFINAL:
            if chunk == seq_chunks - 1:
                h_re, h_im = load_modes_by_channels(dfinal_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D,
                                                    BLOCK_N)
        last, count, x_ptrs, dy_ptrs = chunk_pointers(x_ptr, dy_ptr, pid_b, bos, out_row, chunk, chunk_len,
                                                       length, n_channels, channels64, stride_xb, stride_xl,
                                                       stride_xd)
        g_re, g_im, v_re, v_im, _, _, _, _, _, _ = reverse_tokens(
            zero, zero, zero, zero, h_re, h_im, lam_re, lam_im, b_re, b_im, x_ptrs, dy_ptrs, x_ptrs, count,
            stride_xl, n_channels, channel_ok, False, NUM_STAGES)
        chunk_rows = rows + chunk.to(tl.int64) * batch * n_channels * (2 * n_modes)
        store_modes_by_channels(carry_g_ptr + chunk_rows, row_mask, first, n_modes, 2, g_re, g_im, BLOCK_D,
                                BLOCK_N)
        store_modes_by_channels(carry_v_ptr + chunk_rows, row_mask, first, n_modes, 2, v_re, v_im, BLOCK_D,
                                BLOCK_N)


@triton.jit(do_not_specialize=["n_tokens", "chunk_len"])
def _chunk_backward_carry_kernel(
    propagate_ptr,  # [D, N] complex64: P = conj(lam)^T
    lag_weight_ptr,  # [D, N] complex64: Q = T conj(lam)^(T-1)
    carry_g_ptr,  # in: local (g, v) of chunks 1 .. C-1; out: (g, v) entering chunks 0 .. C-2 from the right
    carry_v_ptr,
    cu_ptr,  # (VARLEN) cu_seqlens [B + 1]
    batch,
    n_tokens,
    chunk_len,
    n_chunks,
    n_channels,
    n_modes,
    VARLEN: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Backward phase 2, right to left: (g, v) at the start of chunk c is ``(P g_in, P v_in + Q g_in)`` plus the
    chunk's local part, and it is what enters chunk c - 1."""
    pid_b = tl.program_id(1).to(tl.int64)
    first = tl.program_id(2) * BLOCK_N
    channel_ok, row_mask, channels64 = channel_tile(n_channels, BLOCK_D)
    seq_chunks = n_chunks
    carried = True  # constexpr on dense rows: every row has the planned chunks
    if VARLEN:
        _, _, seq_chunks = sequence_span(cu_ptr, pid_b, n_tokens, chunk_len)
        carried = seq_chunks > 1
    if carried:
        param_rows = channels64[:, None] * (2 * n_modes)
        p_re, p_im = load_complex(propagate_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        q_re, q_im = load_complex(lag_weight_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        chunk_stride = batch * n_channels * 2 * n_modes
        rows = (pid_b * n_channels + channels64[:, None]) * (2 * n_modes) + (seq_chunks - 1) * chunk_stride
        g_re, g_im = load_complex(carry_g_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        v_re, v_im = load_complex(carry_v_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        for _ in range(seq_chunks - 2):
            rows -= chunk_stride
            local_g_re, local_g_im = load_complex(carry_g_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D,
                                                  BLOCK_N, True)
            local_v_re, local_v_im = load_complex(carry_v_ptr + rows, row_mask, first, n_modes, 2, BLOCK_D,
                                                  BLOCK_N, True)
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


def chunk_count(programs: int, seq_len: int, device: torch.device, policy: TilePolicy) -> int:
    """How many sequence chunks the scan uses: 1 unless the (batch, channel, mode) programs leave SMs idle."""
    target = CHUNK_TARGET_PER_SM * sm_count(device, policy)
    min_tokens = policy.scan_min_chunk_tokens
    if programs >= target or seq_len < 2 * min_tokens:
        return 1
    return min(cdiv(target, programs), seq_len // min_tokens, MAX_CHUNKS)


def chunk_plan(batch: int, seq_len: int, channels: int, modes: int, blocks: tuple[int, int],
               device: torch.device, policy: TilePolicy) -> tuple[int, int]:
    """``(n_chunks, chunk_len)`` for a scan (or its backward) tiled by ``blocks`` = ``(BLOCK_D, BLOCK_N)``:
    every chunk but the last holds ``chunk_len`` tokens; ``(1, seq_len)`` when the tiles fill the GPU."""
    block_d, block_n = blocks
    count = chunk_count(cdiv(channels, block_d) * batch * cdiv(modes, block_n), seq_len, device, policy)
    chunk_len = cdiv(seq_len, count)
    return cdiv(seq_len, chunk_len), chunk_len


def chunk_initial_states(x: torch.Tensor, lam: torch.Tensor, b: torch.Tensor, state: torch.Tensor | None,
                         n_chunks: int, chunk_len: int, blocks: tuple[int, int], *,
                         cu_seqlens: torch.Tensor | None = None, state_indices: torch.Tensor | None = None,
                         flags: torch.Tensor | None = None) -> torch.Tensor:
    """Forward phases 1 and 2: the state every chunk starts from, float32 ``[C, B, D, N, 2]`` (complex64 parts).

    Args:
        x: ``[B, L, D]`` any strides, or packed ``[1, T, D]`` with ``cu_seqlens [B + 1]`` (each sequence is cut
            into chunks of ``chunk_len`` tokens; slots past a sequence's chunks are left unwritten); lam, b:
            complex64 contiguous ``[D, N]``; state: complex64 ``[B, D, N]`` or None (zero), or with
            ``state_indices [B]`` a pool ``[P, D, N]`` read at those rows (zero where ``flags [B]``, bytes, is 0,
            or the index is not a row); ``blocks``: the scan's ``(BLOCK_D, BLOCK_N)``.
    """
    batch = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    tokens, channels = x.shape[1], x.shape[2]
    modes = lam.shape[1]
    block_d, block_n = blocks
    n_mode_blocks = cdiv(modes, block_n)
    tiles = (cdiv(channels, block_d), batch)
    chunk_states = torch.empty((n_chunks, batch, channels, modes, 2), device=x.device, dtype=torch.float32)
    # Absent tensors get distinct empty ones (never an alias of an output, for torch.compile's analysis).
    unused = torch.empty(0, device=x.device, dtype=torch.int32)
    varlen = cu_seqlens is not None
    wrap_triton(_chunk_local_state_kernel)[(*tiles, n_mode_blocks * (n_chunks - 1))](
        x, torch.view_as_real(lam), torch.view_as_real(b), chunk_states,
        cu_seqlens if varlen else unused, batch, tokens, chunk_len, channels, modes,
        n_mode_blocks, 0 if varlen else x.stride(0), x.stride(1), x.stride(2), VARLEN=varlen, BLOCK_D=block_d,
        BLOCK_N=block_n, num_warps=SCAN_WARPS,
    )
    lam_pow = torch.view_as_real((lam.to(torch.complex128) ** chunk_len).to(torch.complex64))
    state_parts = torch.view_as_real(state) if state is not None else torch.empty(0, device=x.device)
    state_strides = state_parts.stride()[:3] if state is not None else (0, 0, 0)
    pooled = state_indices is not None
    wrap_triton(_chunk_carry_kernel)[(*tiles, n_mode_blocks)](
        lam_pow, state_parts, chunk_states, cu_seqlens if varlen else unused,
        state_indices if pooled else unused, flags if flags is not None else unused,
        batch, tokens, chunk_len, n_chunks, channels, modes, state.shape[0] if pooled else 0, *state_strides,
        HAS_STATE=state is not None and not pooled, VARLEN=varlen, POOLED=pooled, HAS_FLAGS=flags is not None,
        BLOCK_D=block_d, BLOCK_N=block_n, num_warps=SCAN_WARPS,
    )
    return chunk_states


def chunk_reverse_carries(x: torch.Tensor, lam: torch.Tensor, b: torch.Tensor, dy: torch.Tensor,
                          dfinal: torch.Tensor | None, n_chunks: int, chunk_len: int, blocks: tuple[int, int],
                          stages: int, *, cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward phases 1 and 2: the ``(g, v)`` entering every chunk from the right, each float32
    ``[C, B, D, N, 2]``.

    Args:
        x: ``[B, L, D]`` any strides, or packed ``[1, T, D]`` with ``cu_seqlens [B + 1]``; lam, b: complex64
            contiguous ``[D, N]``; dy: x's shape, contiguous; dfinal: complex64 ``[B, D, N]`` contiguous or None;
            ``blocks``: the backward's ``(BLOCK_D, BLOCK_N)``; ``stages``: ``num_stages`` of the reverse token
            loop.
    """
    varlen = cu_seqlens is not None
    batch = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    seq_len, channels = x.shape[1], x.shape[2]
    modes = lam.shape[1]
    block_d, block_n = blocks
    n_mode_blocks = cdiv(modes, block_n)
    tiles = (cdiv(channels, block_d), batch)
    per_chunk = (n_chunks, batch, channels, modes, 2)
    carry_g = torch.empty(per_chunk, device=x.device, dtype=torch.float32)
    carry_v = torch.empty(per_chunk, device=x.device, dtype=torch.float32)
    dfinal_parts = torch.view_as_real(dfinal) if dfinal is not None else torch.empty(0, device=x.device)
    cu = cu_seqlens if varlen else torch.empty(0, device=x.device, dtype=torch.int32)
    wrap_triton(_chunk_backward_local_kernel)[(*tiles, n_mode_blocks * (n_chunks - 1))](
        x, torch.view_as_real(lam), torch.view_as_real(b), dy, dfinal_parts, carry_g, carry_v, cu,
        batch, seq_len, chunk_len, n_chunks, channels, modes, n_mode_blocks,
        0 if varlen else x.stride(0), x.stride(1), x.stride(2),
        HAS_DFINAL=dfinal is not None, VARLEN=varlen, BLOCK_D=block_d, BLOCK_N=block_n, NUM_STAGES=stages,
        num_warps=SCAN_WARPS,
    )
    nodes = lam.to(torch.complex128)
    propagate = torch.view_as_real((nodes ** chunk_len).conj().to(torch.complex64))
    lag_weight = torch.view_as_real((chunk_len * nodes ** (chunk_len - 1)).conj().to(torch.complex64))
    wrap_triton(_chunk_backward_carry_kernel)[(*tiles, n_mode_blocks)](
        propagate, lag_weight, carry_g, carry_v, cu, batch, seq_len, chunk_len, n_chunks, channels, modes,
        VARLEN=varlen, BLOCK_D=block_d, BLOCK_N=block_n, num_warps=SCAN_WARPS,
    )
    return carry_g, carry_v
