"""MemoryFormer's locality-sensitive hash: the jit helpers the forward and backward kernels share, and the
``lsh_hash`` op.

:func:`hash_tile` hashes one ``[BLOCK_T, tau]`` chunk of x in registers: the code (one bit per sign, first
element most significant) and the score. :func:`score_grad` is the score's derivative. The fused memory-layer
kernels (``gather.py``, ``backward.py``) call both, so z is never written.

Gradient of the scores (s_j = sigmoid(2 |z_j| / temperature), p = prod_j s_j, m = sum_j |z_j|):
``d log s_j / d|z_j| = (1 - s_j) * 2 / temperature``, so
``paper``:     ``dp/dz_j = sign(z_j) * p * (1 - s_j) * 2 / temperature``
``magnitude``: ``d(m p)/dz_j = sign(z_j) * (p + m * p * (1 - s_j) * 2 / temperature)``
with ``sign(0) = 0`` (torch's ``abs`` convention; the codes are piecewise constant and carry no gradient).
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..dispatch import needs_grad, registered_launcher, resolve_backend
from ..tiles import cdiv, current_tiles, next_power_of_2
from . import naive
from .contract import validate_hash


@triton.jit
def _multiply(a, b):
    return a * b


@triton.jit
def hash_tile(x_ptr, row_offsets, row_mask, k, inv_temperature, TAU: tl.constexpr, TAU_P2: tl.constexpr,
              MAGNITUDE: tl.constexpr):
    """Hash chunk ``k`` of ``BLOCK_T`` rows: returns ``(z, s, code, prod, score)`` (fp32, int32 code)."""
    j = tl.arange(0, TAU_P2)
    j_mask = j < TAU
    mask = row_mask[:, None] & j_mask[None, :]
    z = tl.load(x_ptr + row_offsets[:, None] + (k * TAU + j)[None, :], mask=mask, other=0.0).to(tl.float32)
    bit_values = tl.where(j_mask, tl.full([TAU_P2], 1, tl.int32) << tl.maximum(TAU - 1 - j, 0), 0)
    code = tl.sum(tl.where(z >= 0, bit_values[None, :], 0), axis=1)
    magnitude = tl.abs(z)
    s = tl.where(mask, tl.sigmoid(2.0 * magnitude * inv_temperature), 1.0)
    prod = tl.reduce(s, 1, _multiply)
    if MAGNITUDE:
        score = prod * tl.sum(magnitude, axis=1)
    else:
        score = prod
    return z, s, code, prod, score


@triton.jit
def hash_program_tile(z_ptr, T, K, inv_temperature, TAU: tl.constexpr, TAU_P2: tl.constexpr,
                      MAGNITUDE: tl.constexpr, BLOCK_T: tl.constexpr):
    """The hash of a program of grid ``(T / BLOCK_T, K)`` over contiguous ``z [T, K*tau]``: its token rows
    (``t64``, ``t_mask``), table ``k`` and :func:`hash_tile`'s ``(z, s, code, prod, score)``."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    k = tl.program_id(1)
    t_mask = t < T
    t64 = t.to(tl.int64)
    z, s, code, prod, score = hash_tile(z_ptr, t64 * K * TAU, t_mask, k, inv_temperature, TAU, TAU_P2,
                                        MAGNITUDE)
    return t64, t_mask, k, z, s, code, prod, score


@triton.jit
def score_grad(z, s, prod, dscore, inv_temperature, MAGNITUDE: tl.constexpr):
    """``dz [BLOCK_T, TAU_P2]`` from ``dscore [BLOCK_T]`` through the score formula (``sign(0) = 0``)."""
    sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
    dlog = (1.0 - s) * (2.0 * inv_temperature)
    if MAGNITUDE:
        magnitude = tl.sum(tl.abs(z), axis=1)
        local = prod[:, None] + (magnitude * prod)[:, None] * dlog
    else:
        local = prod[:, None] * dlog
    return dscore[:, None] * sign * local


@triton.jit(do_not_specialize=["T"])
def _lsh_hash_kernel(z_ptr, codes_ptr, scores_ptr, T, K, inv_temperature,
                     TAU: tl.constexpr, TAU_P2: tl.constexpr, MAGNITUDE: tl.constexpr, BLOCK_T: tl.constexpr):
    t64, t_mask, k, z, s, code, prod, score = hash_program_tile(z_ptr, T, K, inv_temperature, TAU, TAU_P2,
                                                                 MAGNITUDE, BLOCK_T)
    tl.store(codes_ptr + t64 * K + k, code, mask=t_mask)
    tl.store(scores_ptr + t64 * K + k, score, mask=t_mask)


@triton.jit(do_not_specialize=["T"])
def _hash_backward_kernel(z_ptr, dscores_ptr, dz_ptr, T, K, inv_temperature,
                          TAU: tl.constexpr, TAU_P2: tl.constexpr, MAGNITUDE: tl.constexpr,
                          BLOCK_T: tl.constexpr):
    t64, t_mask, k, z, s, code, prod, score = hash_program_tile(z_ptr, T, K, inv_temperature, TAU, TAU_P2,
                                                                 MAGNITUDE, BLOCK_T)
    dscore = tl.load(dscores_ptr + t64 * K + k, mask=t_mask, other=0.0).to(tl.float32)
    dz = score_grad(z, s, prod, dscore, inv_temperature, MAGNITUDE)
    j = tl.arange(0, TAU_P2)
    mask = t_mask[:, None] & (j < TAU)[None, :]
    tl.store(dz_ptr + (t64 * K * TAU)[:, None] + (k * TAU + j)[None, :], dz.to(dz_ptr.dtype.element_ty),
             mask=mask)


def rows_2d(t: torch.Tensor, width: int) -> torch.Tensor:
    """``[..., width]`` -> ``[T, width]`` with unit last stride (copies only when needed)."""
    t = t.reshape(-1, width)
    return t if t.stride(1) == 1 or width == 1 else t.contiguous()


@registered_launcher("etsc_triton::lsh_hash_forward", mutates_args=())
def lsh_hash_forward(z: torch.Tensor, num_tables: int, inv_temperature: float,
                     magnitude: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int32 [T, K], scores fp32 [T, K])`` of contiguous ``z [T, K*tau]``."""
    num_tokens = z.shape[0]
    tau = z.shape[1] // num_tables
    codes = torch.empty(num_tokens, num_tables, device=z.device, dtype=torch.int32)
    scores = torch.empty(num_tokens, num_tables, device=z.device, dtype=torch.float32)
    block_t = current_tiles().hash_block_t
    wrap_triton(_lsh_hash_kernel)[(cdiv(num_tokens, block_t), num_tables)](
        z, codes, scores, num_tokens, num_tables, inv_temperature,
        TAU=tau, TAU_P2=next_power_of_2(tau), MAGNITUDE=magnitude, BLOCK_T=block_t,
    )
    return codes, scores


@registered_launcher("etsc_triton::lsh_hash_backward", mutates_args=())
def lsh_hash_backward(z: torch.Tensor, dscores: torch.Tensor, inv_temperature: float,
                      magnitude: bool) -> torch.Tensor:
    """``dz [T, K*tau]`` from ``dscores [T, K]`` (both contiguous)."""
    num_tokens, num_tables = dscores.shape
    tau = z.shape[1] // num_tables
    dz = torch.empty(z.shape, device=z.device, dtype=z.dtype)
    block_t = current_tiles().hash_block_t
    grid = (cdiv(num_tokens, block_t), num_tables)
    wrap_triton(_hash_backward_kernel)[grid](
        z, dscores, dz, num_tokens, num_tables, inv_temperature,
        TAU=tau, TAU_P2=next_power_of_2(tau), MAGNITUDE=magnitude, BLOCK_T=block_t,
    )
    return dz


class _LshHashFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z2d, num_tables, inv_temperature, magnitude):
        codes, scores = lsh_hash_forward(z2d, num_tables, inv_temperature, magnitude)
        ctx.save_for_backward(z2d)
        ctx.hash_args = (inv_temperature, magnitude)
        ctx.mark_non_differentiable(codes)
        return codes, scores

    @staticmethod
    def backward(ctx, dcodes, dscores):
        (z2d,) = ctx.saved_tensors
        return lsh_hash_backward(z2d, dscores.contiguous(), *ctx.hash_args), None, None, None


def lsh_hash(
    z: torch.Tensor, *, temperature: float = 1.0, weighting: str = "paper", backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hash chunks of tau values to table rows and score them (MemoryFormer's locality-sensitive hash).

    ``code = sum_j [z_j >= 0] 2^(tau-1-j)`` (first element most significant, ``z = 0`` gives bit 1).
    ``weighting="paper"``: ``score = prod_j sigmoid(2 |z_j| / temperature)``; ``"magnitude"`` (the released
    MemoryFormer code): ``(sum_j |z_j|) * prod_j sigmoid(2 |z_j| / temperature)`` (temperature 1 there).

    Args:
        z: `[..., K, tau]` real float, tau in 1..16.
        temperature: float > 0.
        weighting: ``"paper"`` or ``"magnitude"``.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``(codes, scores)``: codes int32 `[..., K]` in ``[0, 2^tau)``, scores float32 `[..., K]`
        (differentiable in ``z``).

    Example:
        >>> codes, scores = lsh_hash(torch.tensor([[[1.0, -2.0, 0.0]]]))
        >>> codes.tolist()
        [[5]]
    """
    num_tables, tau = validate_hash("lsh_hash", z, temperature, weighting)
    if resolve_backend("lsh_hash", backend, z, empty=z.numel() == 0) == "torch":
        codes, scores = naive.lsh_hash(z, temperature=temperature, weighting=weighting)
        return codes, scores.to(torch.float32)
    args = (rows_2d(z, num_tables * tau).contiguous(), num_tables, 1.0 / temperature, weighting == "magnitude")
    hash_fn = _LshHashFunction.apply if needs_grad(z) else lsh_hash_forward
    codes, scores = hash_fn(*args)
    return codes.reshape(z.shape[:-1]), scores.reshape(z.shape[:-1])
