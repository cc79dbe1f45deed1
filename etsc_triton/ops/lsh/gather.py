"""MemoryFormer memory layer: LSH hashing fused with the weighted table gather; ``memory_gather`` and
``memory_layer``.

Forward (``_memory_forward_kernel``): the grid is (token blocks, d_out blocks, K-splits). A program walks its
share of the K tables; for each it loads the ``[BLOCK_T, tau]`` chunk of x, hashes it in registers (code and
score; z is never written), gathers ``tables[k, code, d-block]`` and accumulates ``score * row`` in fp32. With
few tokens the K tables are split across programs (so one decode token does not walk 128 tables in one
program); the partial sums go to a ``[K_SPLIT, T, d_out]`` fp32 workspace that ``_split_reduce_kernel``
sums in a fixed order: the forward is deterministic in every configuration. The same kernel serves
``memory_gather`` (codes and scores loaded instead of computed). The hash helpers are in ``hash.py``, the
backward kernels in ``backward.py``.

In training, the fused forward writes the codes and scores only when the backward will read them: the
deterministic ``dtables`` sorts tokens by code. The atomic backward rehashes x instead (it reads x anyway for
``dx``, and x costs one pass over ``T x K x tau`` values against storing and reloading ``T x K`` pairs).
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..dispatch import needs_grad, registered_launcher, resolve_backend
from ..tiles import TilePolicy, cdiv, current_tiles, next_power_of_2, sm_count
from . import naive
from .backward import memory_gather_backward, memory_layer_backward
from .contract import validate_gather, validate_layer
from .cpu import memory_gather_cpu, memory_layer_cpu
from .hash import hash_tile, rows_2d


@triton.jit(do_not_specialize=["T"])
def _memory_forward_kernel(
    x_ptr, codes_ptr, scores_ptr, tables_ptr, bias_ptr, out_ptr,
    T, K, S, D, stride_x, tables_per_split, inv_temperature,
    TAU: tl.constexpr, TAU_P2: tl.constexpr, HASH: tl.constexpr, MAGNITUDE: tl.constexpr,
    WRITE_CODES: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_k = tl.program_id(2)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < T
    t64 = t.to(tl.int64)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    side_mask = t_mask & ((t * 0 + pid_d) == 0)
    k_start = pid_k * tables_per_split
    k_end = tl.minimum(k_start + tables_per_split, K)
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for k in range(k_start, k_end):
        if HASH:
            z, s, code, prod, score = hash_tile(x_ptr, t64 * stride_x, t_mask, k, inv_temperature, TAU,
                                                TAU_P2, MAGNITUDE)
            if WRITE_CODES:
                tl.store(codes_ptr + t64 * K + k, code, mask=side_mask)
                tl.store(scores_ptr + t64 * K + k, score, mask=side_mask)
        else:
            code = tl.load(codes_ptr + t64 * K + k, mask=t_mask, other=0).to(tl.int32)
            score = tl.load(scores_ptr + t64 * K + k, mask=t_mask, other=0.0).to(tl.float32)
        row = (k * S + code).to(tl.int64) * D
        if HASH and EVEN_D:  # a hashed code is always a row of the table (padding tokens' rows are not stored)
            rows = tl.load(tables_ptr + row[:, None] + d[None, :]).to(tl.float32)
        else:
            valid = t_mask & (code >= 0) & (code < S)
            mask = valid[:, None] & d_mask[None, :]
            rows = tl.load(tables_ptr + row[:, None] + d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += score[:, None] * rows
    out_mask = t_mask[:, None] & d_mask[None, :]
    if SPLIT:
        offsets = ((pid_k * T + t64) * D)[:, None] + d[None, :]
        tl.store(out_ptr + offsets, acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + (t64 * D)[:, None] + d[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _split_reduce_kernel(workspace_ptr, bias_ptr, out_ptr, N, D, num_splits,
                         HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for split in range(0, num_splits):
        acc += tl.load(workspace_ptr + split * N + i, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + i % D, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + i, acc.to(out_ptr.dtype.element_ty), mask=mask)


def forward_blocks(num_tokens: int, d_out: int, policy: TilePolicy) -> tuple[int, int, int]:
    """``(BLOCK_T, BLOCK_D, num_warps)`` of the forward.

    BLOCK_T never exceeds the tokens rounded up to a power of two, so a decode call (T = 1..16) loads no padding
    rows. A program covers up to ``policy.gather_max_block_d`` values of a row with about 32 values per thread
    (8 warps at 32 x 256): each program hashes its token tile once per table, so the wider the d-block, the
    fewer programs repeat that hash (sm_90 SASS per gathered fp32 element at T = 8192, d = 1024: 4.8
    instructions at 128 values and 4 warps, 3.6 at 256 and 8).
    """
    block_t = min(16 if num_tokens <= 16 else 32, next_power_of_2(num_tokens))
    block_d = min(next_power_of_2(d_out), policy.gather_max_block_d)
    return block_t, block_d, min(8, max(1, block_t * block_d // 1024))


def choose_k_split(num_tokens: int, num_tables: int, d_out: int, block_t: int, block_d: int,
                   device: torch.device, policy: TilePolicy) -> tuple[int, int]:
    """``(num_splits, tables_per_split)``: split the K tables across programs when tokens leave SMs idle.

    Aims at about four programs per SM (two SMs are assumed in the interpreter).
    """
    sms = sm_count(device, policy)
    base = cdiv(num_tokens, block_t) * cdiv(d_out, block_d)
    if base >= 2 * sms:
        return 1, num_tables
    tables_per_split = cdiv(num_tables, min(num_tables, cdiv(4 * sms, base)))
    return cdiv(num_tables, tables_per_split), tables_per_split


def _launch_forward(x, codes, scores, tables, bias, inv_temperature, magnitude, write_codes, out_dtype):
    """Run the forward kernel (and the split reduction); ``x`` None means codes/scores are inputs."""
    hash_x = x is not None
    num_tokens, num_tables = codes.shape if not hash_x else (x.shape[0], tables.shape[0])
    rows, d_out = tables.shape[1], tables.shape[2]
    tau = rows.bit_length() - 1
    device = tables.device
    out = torch.empty(num_tokens, d_out, device=device, dtype=out_dtype)
    policy = current_tiles()
    block_t, block_d, num_warps = forward_blocks(num_tokens, d_out, policy)
    num_splits, tables_per_split = choose_k_split(num_tokens, num_tables, d_out, block_t, block_d, device,
                                                  policy)
    split = num_splits > 1
    target = torch.empty(num_splits, num_tokens, d_out, device=device, dtype=torch.float32) if split else out
    grid = (cdiv(num_tokens, block_t), cdiv(d_out, block_d), num_splits)
    wrap_triton(_memory_forward_kernel)[grid](
        x if hash_x else codes, codes, scores, tables, bias if bias is not None else tables, target,
        num_tokens, num_tables, rows, d_out, x.stride(0) if hash_x else 0, tables_per_split, inv_temperature,
        TAU=tau, TAU_P2=next_power_of_2(tau), HASH=hash_x, MAGNITUDE=magnitude,
        WRITE_CODES=write_codes, HAS_BIAS=bias is not None, SPLIT=split, EVEN_D=d_out % block_d == 0,
        BLOCK_T=block_t, BLOCK_D=block_d, num_warps=num_warps,
    )
    if split:
        numel = num_tokens * d_out
        block = policy.reduce_block
        wrap_triton(_split_reduce_kernel)[(cdiv(numel, block),)](
            target, bias if bias is not None else target, out, numel, d_out, num_splits,
            HAS_BIAS=bias is not None, BLOCK=block,
        )
    return out


@registered_launcher("etsc_triton::memory_layer_forward", mutates_args=())
def memory_layer_forward(
    x: torch.Tensor, tables: torch.Tensor, bias: Optional[torch.Tensor], inv_temperature: float,  # noqa: UP045
    magnitude: bool, write_codes: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y [T, d_out] in x.dtype, codes int32 [T, K], scores fp32 [T, K])``, the last two maybe empty."""
    num_tokens, num_tables = x.shape[0], tables.shape[0]
    side_shape = (num_tokens, num_tables) if write_codes else (0,)
    codes = torch.empty(side_shape, device=x.device, dtype=torch.int32)
    scores = torch.empty(side_shape, device=x.device, dtype=torch.float32)
    y = _launch_forward(x, codes, scores, tables, bias, inv_temperature, magnitude, write_codes, x.dtype)
    return y, codes, scores


@registered_launcher("etsc_triton::memory_gather_forward", mutates_args=())
def memory_gather_forward(codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor,
                          bias: Optional[torch.Tensor]) -> torch.Tensor:  # noqa: UP045
    """``y [T, d_out]`` in ``tables.dtype`` from codes ``[T, K]`` and scores ``[T, K]`` (contiguous)."""
    return _launch_forward(None, codes, scores, tables, bias, 1.0, False, False, tables.dtype)


class _MemoryGatherFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, codes, scores, tables, bias, deterministic):
        y = memory_gather_forward(codes, scores, tables, bias)
        ctx.save_for_backward(codes, scores, tables)
        ctx.deterministic = deterministic
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        codes, scores, tables = ctx.saved_tensors
        need_scores, need_tables, need_bias = ctx.needs_input_grad[1:4]
        dy = dy.contiguous()
        dscores, dtables = memory_gather_backward(codes, scores, tables, dy, need_scores, need_tables,
                                                  ctx.deterministic)
        dbias = dy.sum(0, dtype=torch.float32).to(ctx.bias_dtype) if need_bias else None
        return (None, dscores if need_scores else None, dtables if need_tables else None, dbias, None)


class _MemoryLayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, tables, bias, inv_temperature, magnitude, deterministic, store_codes):
        y, codes, scores = memory_layer_forward(x2d, tables, bias, inv_temperature, magnitude, store_codes)
        ctx.save_for_backward(x2d, codes, scores, tables)
        ctx.layer_args = (inv_temperature, magnitude)
        ctx.deterministic = deterministic
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x2d, codes, scores, tables = ctx.saved_tensors
        need_x, need_tables, need_bias = ctx.needs_input_grad[:3]
        dy = dy.contiguous()
        dx, dtables = memory_layer_backward(x2d, codes, scores, tables, dy, *ctx.layer_args, need_x,
                                            need_tables, ctx.deterministic)
        dbias = dy.sum(0, dtype=torch.float32).to(ctx.bias_dtype) if need_bias else None
        return (dx if need_x else None, dtables if need_tables else None, dbias, None, None, None, None)


def _fused_cpu(backend: str, tensors: list[torch.Tensor]) -> bool:
    """``backend="auto"`` on CPU tensors runs the fused CPU path (``cpu.py``); ``"torch"`` keeps the oracle."""
    return backend == "auto" and all(t.device.type == "cpu" for t in tensors)


def memory_gather(
    codes: torch.Tensor,
    scores: torch.Tensor,
    tables: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    deterministic: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Weighted gather-add: ``y = sum_k scores[..., k] * tables[k, codes[..., k]] + bias``.

    Differentiable in ``scores``, ``tables`` and ``bias`` (fp32 accumulation). Codes out of range raise on CPU
    tensors; on CUDA they are checked only with ``ETSC_TRITON_DEBUG=1`` (otherwise an out-of-range code is
    masked and contributes nothing).

    Args:
        codes: int32 or int64 `[..., K]` in ``[0, S)``.
        scores: real float `[..., K]`.
        tables: `[K, S, d_out]` float32 / bfloat16 / float16, S a power of two.
        bias: optional `[d_out]`.
        deterministic: backward without floating-point atomics (bit-identical from run to run).
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        y `[..., d_out]` in ``tables.dtype``.

    Example:
        >>> tables = torch.arange(8.0).reshape(2, 2, 2)
        >>> memory_gather(torch.tensor([[1, 0]]), torch.tensor([[1.0, 0.5]]), tables).tolist()
        [[4.0, 5.5]]
    """
    num_tables, _, d_out = validate_gather("memory_gather", codes, scores, tables, bias)
    tensors = [t for t in (codes, scores, tables, bias) if t is not None]
    lead = codes.shape[:-1]
    if resolve_backend("memory_gather", backend, *tensors, empty=codes.numel() == 0) == "torch":
        if not _fused_cpu(backend, tensors):
            y = naive.memory_gather(codes, scores, tables, bias, deterministic=deterministic)
            return y.to(tables.dtype)
        y = memory_gather_cpu(codes.reshape(-1, num_tables), scores.reshape(-1, num_tables), tables, bias)
        return y.reshape(*lead, d_out).to(tables.dtype)
    args = (codes.reshape(-1, num_tables).contiguous(), scores.reshape(-1, num_tables).contiguous(),
            tables.contiguous(), None if bias is None else bias.contiguous())
    if not needs_grad(*tensors):
        return memory_gather_forward(*args).reshape(*lead, d_out)
    return _MemoryGatherFunction.apply(*args, deterministic).reshape(*lead, d_out)


def memory_layer(
    x: torch.Tensor,
    tables: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    weighting: str = "paper",
    deterministic: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """MemoryFormer memory layer: hash x in K chunks of tau, gather one row per table, weight, sum, add bias.

    One fused forward kernel (z is never written). Backward: ``dtables`` by scatter-add (``tl.atomic_add``
    into fp32, or with ``deterministic=True`` a sort-and-segment reduction, bit-identical from run to run),
    ``dscore`` by indexed inner products, ``dx`` through the scores (``sign(0) = 0``).

    Args:
        x: `[..., K * tau]` real float.
        tables: `[K, 2^tau, d_out]` float32 / bfloat16 / float16, tau in 1..16.
        bias: optional `[d_out]`.
        temperature: float > 0 (divides ``|z|`` inside the sigmoids of both weightings).
        weighting: ``"paper"`` or ``"magnitude"``, see :func:`lsh_hash`.
        deterministic: backward without floating-point atomics.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        y `[..., d_out]` in ``x.dtype`` (accumulated in fp32).

    Example:
        >>> x = torch.randn(4, 16)
        >>> tables = 0.02 * torch.randn(2, 256, 32)
        >>> memory_layer(x, tables).shape
        torch.Size([4, 32])
    """
    num_tables, tau, _, d_out = validate_layer("memory_layer", x, tables, bias, temperature, weighting)
    tensors = [t for t in (x, tables, bias) if t is not None]
    lead = x.shape[:-1]
    if resolve_backend("memory_layer", backend, *tensors, empty=x.numel() == 0) == "torch":
        if not _fused_cpu(backend, tensors):
            return naive.memory_layer(x, tables, bias, temperature=temperature, weighting=weighting,
                                      deterministic=deterministic)
        y = memory_layer_cpu(x.reshape(-1, num_tables * tau), tables, bias, 1.0 / temperature,
                             weighting == "magnitude")
        return y.reshape(*lead, d_out).to(torch.float64 if y.dtype == torch.float64 else x.dtype)
    bias = None if bias is None else bias.contiguous()
    args = (rows_2d(x, num_tables * tau), tables.contiguous(), bias, 1.0 / temperature, weighting == "magnitude")
    if not needs_grad(*tensors):
        y, _, _ = memory_layer_forward(*args, False)
        return y.reshape(*lead, d_out)
    store_codes = deterministic and needs_grad(tables)  # only the deterministic dtables reads them
    y = _MemoryLayerFunction.apply(*args, deterministic, store_codes)
    return y.reshape(*lead, d_out)
