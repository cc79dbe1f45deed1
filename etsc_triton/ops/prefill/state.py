"""Prompt -> final SSM state of an ETSC-converted layer in O(L + m log m).

For ETSC nodes ``lam_k = gamma * w^k`` with ``w = exp(-2 pi i / m)``, ``m = n + 1``, the state after a prompt
``x_0 .. x_{L-1}`` (zero initial state) is

    u_k = b_k * sum_p gamma^p w^(k p) x_{L-1-p} = b_k * sum_{i<m} w^(k i) r_i,
    r_i = sum_{p < L, p = i mod m} gamma^p x_{L-1-p},

a length-m DFT of the gamma-weighted, reversed prompt folded modulo m. One Triton kernel reads the prompt once
and writes the folded vector ``r [B, D, m]``; ``torch.fft.rfft`` (r is real) evaluates the DFT; a gather picks
the kept modes and multiplies by ``b``.

Packed prompts (``cu_seqlens``) fold one prompt per program row, reading its span of ``x [1, T, D]``; with
``state_indices`` a second kernel copies each prompt's state into its row of a pool (padding rows skipped), so
the pool is written without a host read of the indices.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..dispatch import registered_launcher, resolve_backend, with_reference_gradient
from ..tiles import cdiv, current_tiles, next_power_of_2
from . import naive
from .contract import FN_NAME, check_packed_prefill_inputs, check_prefill_inputs

POOL_WRITE_TILE = 1024  # floats per program of the pool write (a copy: any tile that is not tiny will do)
POOL_WRITE_BLOCK = 64  # floats of a row (32 modes, re / im interleaved) per step


@triton.jit(do_not_specialize=["seq_len", "n_wraps"])
def _fold_prompt_kernel(
    x_ptr,
    log2_gamma_ptr,
    r_ptr,
    cu_ptr,  # (VARLEN) cu_seqlens [B + 1]: prompt i is tokens cu[i] .. cu[i+1] - 1 of x [1, T, D]
    seq_len,  # L, or (VARLEN) T, the packed tokens
    n_wraps,
    n_channels,
    period,
    stride_xb,
    stride_xl,
    stride_xd,
    VARLEN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``r[b, d, i] = sum_{q} gamma_d^(q m + i) * x[b, L-1-(q m + i), d]`` over lags ``q m + i < L``."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    if VARLEN:
        # clamped to [0, T]: a malformed cu_seqlens (unchecked on CUDA) cannot send a read outside x
        bos = tl.minimum(tl.maximum(tl.load(cu_ptr + pid_b).to(tl.int64), 0), seq_len)
        length = tl.minimum(tl.maximum(tl.load(cu_ptr + pid_b + 1).to(tl.int64), bos), seq_len) - bos
        wraps = (length + period - 1) // period
    else:
        bos = 0
        length = seq_len
        wraps = n_wraps
    residues = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    residue_ok = residues < period
    channel_ok = channels < n_channels
    log2_gamma = tl.load(log2_gamma_ptr + channels, mask=channel_ok, other=0.0)
    x_base = x_ptr + pid_b * stride_xb + bos * stride_xl + channels.to(tl.int64)[None, :] * stride_xd
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for wrap in range(0, wraps):
        lags = wrap * period + residues
        lag_ok = residue_ok & (lags < length)
        positions = length - 1 - lags
        values = tl.load(
            x_base + positions[:, None] * stride_xl,
            mask=lag_ok[:, None] & channel_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        weights = tl.math.exp2(lags.to(tl.float32)[:, None] * log2_gamma[None, :])
        acc += weights * values
    out = r_ptr + (pid_b * n_channels + channels.to(tl.int64))[None, :] * period + residues[:, None]
    tl.store(out, acc, mask=residue_ok[:, None] & channel_ok[None, :])


@triton.jit
def _write_pool_rows_kernel(
    states_ptr,  # [S, D, N] complex64 contiguous, as floats
    index_ptr,  # state_indices [S] int32
    pool_ptr,  # the pool [P, D, N] complex64 (any strides), as floats
    n_channels,
    n_modes,
    pool,
    stride_pp,
    stride_pd,
    stride_pn,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """``pool[state_indices[s]] = states[s]`` for the rows of the pool; a negative index (padding) or one
    ``>= pool`` writes nothing."""
    seq = tl.program_id(0).to(tl.int64)
    channels = (tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    slot = tl.load(index_ptr + seq).to(tl.int64)
    live = (slot >= 0) & (slot < pool)
    rows_ok = tl.where(live, channels < n_channels, channels < 0)  # no literal False: triton 3.3 interpreter
    src_rows = states_ptr + (seq * n_channels + channels)[:, None] * (2 * n_modes)
    dst_rows = pool_ptr + tl.where(live, slot, 0) * stride_pp + channels[:, None] * stride_pd
    for first in range(0, 2 * n_modes, BLOCK_M):
        parts = first + tl.arange(0, BLOCK_M)  # (mode, re / im) interleaved
        mask = rows_ok[:, None] & (parts < 2 * n_modes)[None, :]
        values = tl.load(src_rows + parts[None, :], mask=mask)
        tl.store(dst_rows + (parts // 2)[None, :] * stride_pn + (parts % 2)[None, :], values, mask=mask)


@registered_launcher("etsc_triton::fold_prompt", mutates_args=())
def _fold_prompt(
    x: torch.Tensor, log2_gamma: torch.Tensor, period: int, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Launch the fold: x ``[B, L, D]`` (any strides, any float dtype) -> r ``[B, D, period]`` float32; packed
    prompts x ``[1, T, D]`` with ``cu_seqlens [S + 1]`` -> r ``[S, D, period]``."""
    varlen = cu_seqlens is not None
    batch = cu_seqlens.shape[0] - 1 if cu_seqlens is not None else x.shape[0]
    length, channels = x.shape[1], x.shape[2]
    r = torch.empty((batch, channels, period), device=x.device, dtype=torch.float32)
    policy = current_tiles()
    block_m = block_d = policy.fold_block
    warps = policy.fold_warps
    grid = (cdiv(period, block_m), cdiv(channels, block_d), batch)
    wrap_triton(_fold_prompt_kernel)[grid](
        x,
        log2_gamma,
        r,
        cu_seqlens if cu_seqlens is not None else torch.empty(0, device=x.device, dtype=torch.int32),
        length,
        cdiv(length, period),
        channels,
        period,
        0 if varlen else x.stride(0),
        x.stride(1),
        x.stride(2),
        VARLEN=varlen,
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=warps,
    )
    return r


@registered_launcher("etsc_triton::write_pool_rows", mutates_args={"pool"})
def _write_pool_rows(states: torch.Tensor, state_indices: torch.Tensor, pool: torch.Tensor) -> None:
    """``pool[state_indices[s]] = states[s]`` (states complex64 contiguous ``[S, D, N]``, pool ``[P, D, N]`` any
    strides) for the indices that name a row."""
    n_seqs, channels, modes = states.shape
    pool_parts = torch.view_as_real(pool)
    block_d = min(next_power_of_2(channels), POOL_WRITE_TILE // POOL_WRITE_BLOCK)
    wrap_triton(_write_pool_rows_kernel)[(n_seqs, cdiv(channels, block_d))](
        torch.view_as_real(states), state_indices, pool_parts, channels, modes, pool.shape[0],
        *pool_parts.stride()[:3], BLOCK_D=block_d, BLOCK_M=POOL_WRITE_BLOCK,
    )


def _dft_at_modes(r: torch.Tensor, modes: torch.Tensor) -> torch.Tensor:
    """``F[b, d, s] = sum_i r[b, d, i] w^(modes[d, s] i)`` for real r, from the half spectrum of ``rfft``.

    Modes above m/2 use ``F[k] = conj(F[m - k])`` (r is real), so unfolded mode sets work too.
    """
    period = r.shape[-1]
    spectrum = torch.fft.rfft(r, dim=-1)
    upper = modes > period // 2
    index = torch.where(upper, period - modes, modes)
    picked = torch.gather(spectrum, 2, index.unsqueeze(0).expand(r.shape[0], -1, -1))
    return torch.where(upper.unsqueeze(0), picked.conj(), picked)


def ssm_prefill_state(
    x: torch.Tensor,
    b: torch.Tensor,
    n: int,
    gamma: float | torch.Tensor | None = None,
    *,
    modes: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    state_indices: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Final state of an ETSC-converted SSM after a prompt, without a scan: O(L + m log m) per channel.

    The SSM is the one :func:`etsc_triton.toeplitz_to_ssm` returns for a length-``n`` Toeplitz layer:
    nodes ``lam = gamma * exp(-2 pi i k / (n + 1))`` for the mode numbers ``k`` in ``modes``. The result
    equals the state ``ssm_scan(x, lam, b)`` returns (zero initial state); decoding continues from it with
    :func:`etsc_triton.ssm_step`.

    Prompts of different lengths are served the way :func:`etsc_triton.ssm_scan` serves them (the op README
    maps the arguments to vLLM's and fla's): **packed**, x ``[1, T, D]`` with ``cu_seqlens [S + 1]`` (prompt i is
    tokens ``cu_seqlens[i] .. cu_seqlens[i+1] - 1``; zero-length prompts give a zero state) returns the states
    ``[S, D, N]``; **pooled**, with ``state_indices [S]`` int32, writes prompt i's state into row
    ``state_indices[i]`` of the pool ``state [P, D, N]`` in place (a negative index is padding: nothing written;
    rows no prompt names are untouched) and returns the pool. Every prompt starts from a zero state (vLLM's
    ``has_initial_state`` False). Values of ``cu_seqlens`` / ``state_indices`` are checked as ``ssm_scan`` checks
    them.

    Args:
        x: the prompt, ``[B, L, D]`` real (float32 / bfloat16 / float16 / float64), any strides; packed
            ``[1, T, D]`` with ``cu_seqlens``.
        b: residues, complex ``[D, N]`` (as returned by ``toeplitz_to_ssm``, folded or not, possibly
        truncated).
        n: the Toeplitz length the layer was converted from (period ``m = n + 1``).
        gamma: the decay used in the conversion: ``None`` (1), a float or a tensor ``[D]`` / scalar in (0, 1].
        modes: the mode number ``k`` in ``[1, n]`` of every column of ``b``, int ``[N]`` or ``[D, N]``;
        default ``1 .. N``, the order of ``toeplitz_to_ssm`` (use the kept indices after mode truncation).
        cu_seqlens: int32 / int64 ``[S + 1]``: the packed prompts' boundaries, 0 rising (or equal) to T.
        state: with ``state_indices``, the pool ``[P, D, N]`` complex64 (any strides) the states are written to.
        state_indices: int32 ``[S]``: each prompt's row of the pool, distinct; negative: padding.
        backend: ``"auto"`` (Triton on CUDA, else the Torch oracle), ``"triton"`` or ``"torch"``.

    Returns:
        The state ``u`` complex64 ``[B, D, N]`` (packed: ``[S, D, N]``; the Torch oracle returns complex128 for
        float64 / complex128 inputs); differentiable in x, b and a tensor gamma (the backward differentiates the
        oracle). Pooled: the pool, not differentiable.

    Example:
        >>> import torch, etsc_triton as et
        >>> from etsc_triton.ops.prefill import ssm_prefill_state
        >>> t = torch.randn(4, 15)
        >>> lam, b = et.toeplitz_to_ssm(t, 0.9)
        >>> state = ssm_prefill_state(torch.randn(2, 40, 4), b, 15, 0.9)
        >>> state.shape
        torch.Size([2, 4, 8])
        >>> cu = torch.tensor([0, 30, 30, 41])  # prompts of 30, 0 and 11 tokens
        >>> ssm_prefill_state(torch.randn(1, 41, 4), b, 15, 0.9, cu_seqlens=cu).shape
        torch.Size([3, 4, 8])
        >>> pool = torch.zeros(6, 4, 8, dtype=torch.complex64)
        >>> rows = torch.tensor([4, -1, 0], dtype=torch.int32)
        >>> pool = ssm_prefill_state(torch.randn(1, 41, 4), b, 15, 0.9, cu_seqlens=cu, state=pool,
        ...                          state_indices=rows)
        >>> bool(pool[4].abs().sum() > 0), bool(pool[1].abs().sum() == 0)
        (True, True)
    """
    gamma_t, modes_t = check_prefill_inputs(FN_NAME, x, b, n, gamma, modes)
    packed = cu_seqlens is not None or state is not None or state_indices is not None
    if packed:
        check_packed_prefill_inputs(FN_NAME, x, b, gamma, cu_seqlens, state, state_indices)
        if state is not None and state.dtype != torch.complex64:
            raise TypeError(f"{FN_NAME}: a pool (state with state_indices) must be complex64 (it is written in "
                            f"place), got {state.dtype}")
    layout = dict(cu_seqlens=cu_seqlens, state=state, state_indices=state_indices) if packed else {}
    tensors = [t for t in (x, b, cu_seqlens, state, state_indices) if t is not None]
    if resolve_backend(FN_NAME, backend, *tensors, empty=x.numel() == 0 or b.numel() == 0) == "torch":
        out = naive.ssm_prefill_state(x, b, n, gamma, modes=modes, **layout)
        return out if state_indices is not None else out.to(torch.complex64)
    log2_gamma = torch.log2(gamma_t.detach()).to(torch.float32).contiguous()

    def triton_path(x, b, gamma_tensor):
        folded = _fold_prompt(x, log2_gamma, n + 1, cu_seqlens)
        return _dft_at_modes(folded, modes_t) * b.to(torch.complex64).unsqueeze(0)

    if state_indices is not None:
        _write_pool_rows(triton_path(x, b, None).contiguous(), state_indices, state)
        return state

    def reference_path(x, b, gamma_tensor):
        gamma_ref = gamma_tensor if gamma_tensor is not None else gamma
        return naive.ssm_prefill_state(x, b, n, gamma_ref, modes=modes, cu_seqlens=cu_seqlens).to(torch.complex64)

    gamma_tensor = gamma if isinstance(gamma, torch.Tensor) else None
    return with_reference_gradient(triton_path, reference_path, x, b, gamma_tensor)
