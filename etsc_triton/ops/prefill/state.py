"""Prompt -> final SSM state of an ETSC-converted layer in O(L + m log m).

For ETSC nodes ``lam_k = gamma * w^k`` with ``w = exp(-2 pi i / m)``, ``m = n + 1``, the state after a prompt
``x_0 .. x_{L-1}`` (zero initial state) is

    u_k = b_k * sum_p gamma^p w^(k p) x_{L-1-p} = b_k * sum_{i<m} w^(k i) r_i,
    r_i = sum_{p < L, p = i mod m} gamma^p x_{L-1-p},

a length-m DFT of the gamma-weighted, reversed prompt folded modulo m. One Triton kernel reads the prompt once
and writes the folded vector ``r [B, D, m]``; ``torch.fft.rfft`` (r is real) evaluates the DFT; a gather picks
the kept modes and multiplies by ``b``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..dispatch import registered_launcher, resolve_backend, with_reference_gradient
from ..tiles import cdiv, current_tiles
from . import naive
from .contract import FN_NAME, check_prefill_inputs


@triton.jit(do_not_specialize=["seq_len", "n_wraps"])
def _fold_prompt_kernel(
    x_ptr,
    log2_gamma_ptr,
    r_ptr,
    seq_len,
    n_wraps,
    n_channels,
    period,
    stride_xb,
    stride_xl,
    stride_xd,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``r[b, d, i] = sum_{q} gamma_d^(q m + i) * x[b, L-1-(q m + i), d]`` over lags ``q m + i < L``."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    residues = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    channels = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    residue_ok = residues < period
    channel_ok = channels < n_channels
    log2_gamma = tl.load(log2_gamma_ptr + channels, mask=channel_ok, other=0.0)
    x_base = x_ptr + pid_b * stride_xb + channels.to(tl.int64)[None, :] * stride_xd
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for wrap in range(0, n_wraps):
        lags = wrap * period + residues
        lag_ok = residue_ok & (lags < seq_len)
        positions = seq_len - 1 - lags
        values = tl.load(
            x_base + positions[:, None] * stride_xl,
            mask=lag_ok[:, None] & channel_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        weights = tl.math.exp2(lags.to(tl.float32)[:, None] * log2_gamma[None, :])
        acc += weights * values
    out = r_ptr + (pid_b * n_channels + channels.to(tl.int64))[None, :] * period + residues[:, None]
    tl.store(out, acc, mask=residue_ok[:, None] & channel_ok[None, :])


@registered_launcher("etsc_triton::fold_prompt", mutates_args=())
def _fold_prompt(x: torch.Tensor, log2_gamma: torch.Tensor, period: int) -> torch.Tensor:
    """Launch the fold: x ``[B, L, D]`` (any strides, any float dtype) -> r ``[B, D, period]`` float32."""
    batch, length, channels = x.shape
    r = torch.empty((batch, channels, period), device=x.device, dtype=torch.float32)
    policy = current_tiles()
    block_m = block_d = policy.fold_block
    warps = policy.fold_warps
    grid = (cdiv(period, block_m), cdiv(channels, block_d), batch)
    wrap_triton(_fold_prompt_kernel)[grid](
        x,
        log2_gamma,
        r,
        length,
        cdiv(length, period),
        channels,
        period,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        BLOCK_M=block_m,
        BLOCK_D=block_d,
        num_warps=warps,
    )
    return r


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
    backend: str = "auto",
) -> torch.Tensor:
    """Final state of an ETSC-converted SSM after a prompt, without a scan: O(L + m log m) per channel.

    The SSM is the one :func:`etsc_triton.toeplitz_to_ssm` returns for a length-``n`` Toeplitz layer:
    nodes ``lam = gamma * exp(-2 pi i k / (n + 1))`` for the mode numbers ``k`` in ``modes``. The result
    equals the state ``ssm_scan(x, lam, b)`` returns (zero initial state); decoding continues from it with
    :func:`etsc_triton.ssm_step`.

    Args:
        x: the prompt, ``[B, L, D]`` real (float32 / bfloat16 / float16 / float64), any strides.
        b: residues, complex ``[D, N]`` (as returned by ``toeplitz_to_ssm``, folded or not, possibly
        truncated).
        n: the Toeplitz length the layer was converted from (period ``m = n + 1``).
        gamma: the decay used in the conversion: ``None`` (1), a float or a tensor ``[D]`` / scalar in (0, 1].
        modes: the mode number ``k`` in ``[1, n]`` of every column of ``b``, int ``[N]`` or ``[D, N]``;
        default ``1 .. N``, the order of ``toeplitz_to_ssm`` (use the kept indices after mode truncation).
        backend: ``"auto"`` (Triton on CUDA, else the Torch oracle), ``"triton"`` or ``"torch"``.

    Returns:
        The state ``u`` complex64 ``[B, D, N]`` (the Torch oracle returns complex128 for float64 / complex128
        inputs); differentiable in x, b and a tensor gamma (the backward differentiates the oracle).

    Example:
        >>> import torch, etsc_triton as et
        >>> from etsc_triton.ops.prefill import ssm_prefill_state
        >>> t = torch.randn(4, 15)
        >>> lam, b = et.toeplitz_to_ssm(t, 0.9)
        >>> state = ssm_prefill_state(torch.randn(2, 40, 4), b, 15, 0.9)
        >>> state.shape
        torch.Size([2, 4, 8])
    """
    gamma_t, modes_t = check_prefill_inputs(FN_NAME, x, b, n, gamma, modes)
    if resolve_backend(FN_NAME, backend, x, b, empty=x.numel() == 0 or b.numel() == 0) == "torch":
        return naive.ssm_prefill_state(x, b, n, gamma, modes=modes).to(torch.complex64)
    log2_gamma = torch.log2(gamma_t.detach()).to(torch.float32).contiguous()

    def triton_path(x, b, gamma_tensor):
        folded = _fold_prompt(x, log2_gamma, n + 1)
        return _dft_at_modes(folded, modes_t) * b.to(torch.complex64).unsqueeze(0)

    def reference_path(x, b, gamma_tensor):
        gamma_ref = gamma_tensor if gamma_tensor is not None else gamma
        return naive.ssm_prefill_state(x, b, n, gamma_ref, modes=modes).to(torch.complex64)

    gamma_tensor = gamma if isinstance(gamma, torch.Tensor) else None
    return with_reference_gradient(triton_path, reference_path, x, b, gamma_tensor)
