"""Diagonal complex SSM decode step, state updated in place.

    u <- lam * u + b * x,    y = Re sum_s u_s       (per row of x, per channel, over N modes)

One program owns one row of x and a block of BLOCK_D channels and walks the modes in blocks of BLOCK_N (the
same mode blocks as the scan, :func:`mode_block_size`), so y is reduced inside the program and written once:
no atomics, no workspace. The state is read and written as interleaved complex64 (``[.., 2]`` float32 view).
``state_indices`` picks the state row of every row of x (continuous batching); a negative index is a padding row.

:func:`ssm_update` and :func:`mode_block_size` here are the accumulation policy the scan shares: one order of
operations for the update, one mode-block layout for the reduction. Complex tiles move through
``complex.load_complex`` / ``complex.store_complex`` (flat float spans: 16-byte accesses).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..complex import load_complex, store_complex
from ..dispatch import registered_launcher, resolve_backend
from ..tiles import cdiv, next_power_of_2
from . import naive
from .contract import check_step_inputs
from .update import mode_block_size, ssm_update

STEP_TILE = 1024
STEP_WARPS = 4


@triton.jit
def _ssm_step_kernel(
    x_ptr,
    lam_ptr,
    b_ptr,
    state_ptr,
    indices_ptr,
    y_ptr,
    n_channels,
    n_modes,
    pool,
    stride_xb,
    stride_xd,
    stride_sp,
    stride_sd,
    stride_sn,
    HAS_INDICES: tl.constexpr,
    STATE_CONTIGUOUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One row of x, BLOCK_D channels, all modes: update the state rows in place and write y once."""
    pid_d = tl.program_id(0)
    row = tl.program_id(1)
    if HAS_INDICES:
        slot = tl.load(indices_ptr + row)
    else:
        slot = row
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    slots = tl.zeros((BLOCK_D,), dtype=tl.int32) + slot
    in_pool = (slots >= 0) & (slots < pool)
    safe_slot = tl.where(in_pool, slots, 0).to(tl.int64)[:, None]
    channel_ok = channels < n_channels
    channels64 = channels.to(tl.int64)
    x = tl.load(x_ptr + row.to(tl.int64) * stride_xb + channels64 * stride_xd, mask=channel_ok, other=0.0)
    x = x.to(tl.float32)[:, None]
    state_rows = state_ptr + safe_slot * stride_sp + channels64[:, None] * stride_sd
    param_rows = channels64[:, None] * (2 * n_modes)
    row_mask = (channel_ok & in_pool)[:, None]
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for first in tl.range(0, n_modes, BLOCK_N):
        lam_re, lam_im = load_complex(lam_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        b_re, b_im = load_complex(b_ptr + param_rows, row_mask, first, n_modes, 2, BLOCK_D, BLOCK_N, True)
        u_re, u_im = load_complex(state_rows, row_mask, first, n_modes, stride_sn, BLOCK_D, BLOCK_N,
                                  STATE_CONTIGUOUS)
        u_re, u_im = ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, x)
        store_complex(state_rows, row_mask, first, n_modes, stride_sn, u_re, u_im, BLOCK_D, BLOCK_N,
                      STATE_CONTIGUOUS)
        acc += tl.sum(u_re, axis=1)
    y = tl.where(slots < 0, 0.0, tl.where(in_pool, acc, float("nan")))
    tl.store(y_ptr + row.to(tl.int64) * n_channels + channels64, y.to(y_ptr.dtype.element_ty), mask=channel_ok)


def step_blocks(channels: int, modes: int) -> tuple[int, int]:
    """``(BLOCK_D, BLOCK_N)`` of the step kernel: a tile of about STEP_TILE complex values."""
    block_n = mode_block_size(modes)
    block_d = max(1, min(next_power_of_2(channels), STEP_TILE // block_n))
    return block_d, block_n


@registered_launcher("etsc_triton::ssm_step", mutates_args={"state"})
def _ssm_step_launch(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    state_indices: torch.Tensor | None,
) -> torch.Tensor:
    """x ``[B, D]``, lam/b complex64 contiguous ``[D, N]``, state complex64 ``[P, D, N]`` (any strides)."""
    batch, channels = x.shape
    pool, _, modes = state.shape
    y = torch.empty((batch, channels), device=x.device, dtype=x.dtype)
    state_parts = torch.view_as_real(state)
    block_d, block_n = step_blocks(channels, modes)
    grid = (cdiv(channels, block_d), batch)
    wrap_triton(_ssm_step_kernel)[grid](
        x, torch.view_as_real(lam), torch.view_as_real(b), state_parts,
        state_indices if state_indices is not None else x, y,
        channels, modes, pool,
        x.stride(0), x.stride(1),
        state_parts.stride(0), state_parts.stride(1), state_parts.stride(2),
        HAS_INDICES=state_indices is not None, STATE_CONTIGUOUS=state_parts.stride(2) == 2,
        BLOCK_D=block_d, BLOCK_N=block_n, num_warps=STEP_WARPS,
    )
    return y


def ssm_step(
    x: torch.Tensor,
    lam: torch.Tensor,
    b: torch.Tensor,
    state: torch.Tensor,
    *,
    state_indices: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One decode token of a diagonal complex SSM; the state is updated in place.

    ``u = lam * u + b * x`` and ``y = Re sum_s u_s`` in fp32, for every row of x and every channel. No host
    synchronisation on CUDA (capturable in a CUDA graph). Bad input is refused before the state is touched.

    Args:
        x: the token, ``[B, D]`` float32 / bfloat16 / float16 (float64 accepted; computed in fp32), any strides.
        lam: nodes, complex ``[D, N]`` (complex64; complex128 is rounded to complex64).
        b: input weights, complex ``[D, N]``.
        state: complex64 ``[B, D, N]``, or a pool ``[P, D, N]`` with ``state_indices``; updated in place.
        state_indices: optional int32 ``[B]``: row i of x uses state row ``state_indices[i]``; a negative index
            marks a padding row (its y is 0, no state row is touched). Indices must be ``< P`` and distinct:
            checked for CPU tensors (and on CUDA with ``ETSC_TRITON_DEBUG=1``); otherwise the caller's
            responsibility on CUDA, where an index ``>= P`` gives y = NaN and touches no state.
        backend: ``"auto"`` (Triton on CUDA, else the Torch reference), ``"triton"`` or ``"torch"``.

    Returns:
        y ``[B, D]`` in x.dtype. Not differentiable: on either backend an input that requires grad (grad
        mode on) raises ``NotImplementedError``; decode under ``torch.no_grad()``.

    Example:
        >>> import torch, etsc_triton as et
        >>> lam = torch.full((4, 3), 0.5 + 0.5j, dtype=torch.complex64)
        >>> b = torch.ones(4, 3, dtype=torch.complex64)
        >>> state = torch.zeros(2, 4, 3, dtype=torch.complex64)
        >>> et.ssm_step(torch.ones(2, 4), lam, b, state).shape
        torch.Size([2, 4])
    """
    check_step_inputs("ssm_step", x, lam, b, state, state_indices)
    if state.dtype != torch.complex64:
        raise TypeError(f"ssm_step: state must be complex64 (it is updated in place), got {state.dtype}")
    which = resolve_backend("ssm_step", backend, x, lam, b, state, empty=x.numel() == 0)
    if which == "torch":
        return naive.ssm_step(x, lam, b, state, state_indices=state_indices)
    lam = lam.to(torch.complex64).contiguous()
    b = b.to(torch.complex64).contiguous()
    return _ssm_step_launch(x, lam, b, state, state_indices)
