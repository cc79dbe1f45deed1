"""MemoryFormer memory layer: fused Triton hash + gather against the torch baselines and nn.Linear.

Sweep: tokens T (1 .. 32768) for d_in = d_out = d in {768, 1024, 2048}, tau = 8 (K = d / 8 tables of 256
rows), tables in fp32 and bf16, modes ``fwd`` (under ``torch.no_grad``) and ``fwd_bwd`` (gradients of x,
tables and bias). Providers:

- ``triton``: ``et.memory_layer`` (fused forward; atomic backward), ``triton_deterministic`` (sorted-segment
  backward, fwd_bwd only);
- ``original``: MemoryFormer's torch gather ``tables[k_index, codes] * score`` summed over K (written from
  the layer's definition; materialises ``[T, K, d]``, skipped where that passes 4 GB);
- ``embedding_bag``: ``F.embedding_bag`` over the flattened ``[K * 256, d]`` rows with ``per_sample_weights``
  (skipped where torch refuses, e.g. the bf16 per-sample-weight backward on CUDA);
- ``torch``: our reference (a loop over the K tables; d = 1024 only);
- ``linear_fp32`` / ``linear_bf16``: ``nn.Linear(d, d)`` of the same shape;
- ``triton_cudagraph`` / ``linear_fp32_cudagraph``: the forward for T <= 16 (the decode regime) replayed from a
  CUDA graph, as a decode server runs it: no host work per call (GPU only).

Bytes (for the floor): x read + y written + the distinct table rows touched, ``K * min(T, 256)`` rows (rows
shared by tokens come from L2, so this, not ``T * K`` rows, is the HBM floor); fwd_bwd adds dy, dx, the rows
again and d tables written. L2 bytes (the other floor): the ``T K`` rows gathered (fwd), twice plus the fp32
scatter-add into d tables (fwd_bwd), against the measured L2-resident copy bandwidth; rows that programs on one
SM share can come from L1 instead, so a fraction of floor above 100% means L1 reuse. FLOPs: ``2 T K d`` (the
gather's multiply-adds), ``2 T d^2`` for nn.Linear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

import etsc_triton as et

from .harness import Context, capture_cuda_graph, rel_err

FAMILY = "memory"
OP = "memory_layer"
TAU = 8
ROWS = 2**TAU
ORIGINAL_LIMIT_BYTES = 4e9
GRAPH_MAX_TOKENS = 16


def original_hash(x: torch.Tensor, num_tables: int, tau: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MemoryFormer's hashing in plain torch: sign bits -> code (first element most significant), score."""
    z = x.view(x.shape[0], num_tables, tau)
    powers = 2 ** torch.arange(tau - 1, -1, -1, device=x.device)
    codes = ((z >= 0).long() * powers).sum(-1)
    scores = torch.sigmoid(2 * z.abs()).prod(-1)
    return codes, scores


def original_memory_layer(x, tables, bias, tau):
    """MemoryFormer's torch gather: ``tables[k_index, codes]`` weighted by the scores and summed over K."""
    num_tables = tables.shape[0]
    codes, scores = original_hash(x, num_tables, tau)
    k_index = torch.arange(num_tables, device=x.device)[None, :]
    rows = tables[k_index, codes]
    return (rows * scores[..., None].to(rows.dtype)).sum(1).to(x.dtype) + bias


def embedding_bag_memory_layer(x, tables, bias, tau):
    """The same layer through ``F.embedding_bag(mode="sum", per_sample_weights=scores)``."""
    num_tables, rows, d_out = tables.shape
    codes, scores = original_hash(x, num_tables, tau)
    flat = codes + torch.arange(num_tables, device=x.device)[None, :] * rows
    y = F.embedding_bag(flat, tables.view(num_tables * rows, d_out), mode="sum",
                        per_sample_weights=scores.to(tables.dtype))
    return y.to(x.dtype) + bias


def layer_bytes(tokens: int, d: int, table_bytes: int, mode: str) -> float:
    """HBM bytes of one call (the docstring above): x, y and the distinct rows touched; fwd_bwd adds dy, dx,
    the rows again and the d tables written."""
    num_tables = d // TAU
    rows_touched = num_tables * min(tokens, ROWS) * d * table_bytes
    fwd = tokens * d * 4 * 2 + rows_touched
    if mode == "fwd":
        return fwd
    return fwd + tokens * d * 4 * 2 + rows_touched + num_tables * ROWS * d * table_bytes


def layer_l2_bytes(tokens: int, d: int, table_bytes: int, mode: str) -> float:
    """Bytes the gather re-reads from L2: one row of d values per token and table (``T K d``); fwd_bwd reads
    them again for the score gradients and adds ``T K d`` fp32 values into d tables (read + write)."""
    rows = tokens * (d // TAU) * d
    if mode == "fwd":
        return rows * table_bytes
    return 2 * rows * table_bytes + 2 * rows * 4


def layer_point(ctx: Context, d: int, tau: int, dtype: torch.dtype, tokens: int, mode: str,
                providers: Sequence[str] | None = None) -> dict[str, float]:
    """Time the layer ``x [T, d] -> [T, d]`` (``d / tau`` tables of ``2^tau`` rows in ``dtype``; ``mode`` ``fwd``
    under no_grad or ``fwd_bwd``: gradients of x, tables and bias) beside the baselines of the module docstring.

    Args:
        providers: the providers to time (default: every one that applies: ``original`` where it materialises
            at most ``ORIGINAL_LIMIT_BYTES``, ``triton_deterministic`` in fwd_bwd,
            not ``torch``); a provider torch refuses (e.g. the bf16 embedding_bag backward) is skipped.

    Returns:
        ``{provider: median ms}``.
    """
    gen = torch.Generator().manual_seed(d + tokens)
    tables = (0.02 * torch.randn(d // tau, 2**tau, d, generator=gen)).to(ctx.device, dtype).requires_grad_()
    bias = torch.zeros(d, device=ctx.device, requires_grad=True)
    x = torch.randn(tokens, d, generator=gen).to(ctx.device).requires_grad_()
    x16 = x.detach().to(torch.bfloat16).requires_grad_()
    linear32 = torch.nn.Linear(d, d, device=ctx.device)
    linear16 = torch.nn.Linear(d, d, device=ctx.device, dtype=torch.bfloat16)
    leaves = [x, tables, bias]
    calls = {
        "triton": (lambda: et.memory_layer(x, tables, bias, backend="triton"), leaves),
        "triton_deterministic": (lambda: et.memory_layer(x, tables, bias, deterministic=True, backend="triton"),
                                 leaves),
        "original": (lambda: original_memory_layer(x, tables, bias, tau), leaves),
        "embedding_bag": (lambda: embedding_bag_memory_layer(x, tables, bias, tau), leaves),
        "torch": (lambda: et.memory_layer(x, tables, bias, backend="torch"), leaves),
        "linear_fp32": (lambda: linear32(x), [x, linear32.weight, linear32.bias]),
        "linear_bf16": (lambda: linear16(x16), [x16, linear16.weight, linear16.bias]),
    }
    if providers is None:
        skip = {"torch", "triton_deterministic"} if mode == "fwd" else {"torch"}
        if tokens * (d // tau) * d * tables.element_size() > ORIGINAL_LIMIT_BYTES:
            skip.add("original")
        providers = [name for name in calls if name not in skip]
    dy = torch.randn(tokens, d, device=ctx.device)
    thunks = {}
    for provider in providers:
        fn, grad_leaves = calls[provider]
        thunk = runner(fn, grad_leaves, mode, dy.to(torch.bfloat16) if provider == "linear_bf16" else dy)
        if _works(thunk):
            thunks[provider] = thunk
    if ctx.on_gpu and mode == "fwd" and tokens <= GRAPH_MAX_TOKENS and "triton" in providers:
        with torch.no_grad():
            for name in ("triton", "linear_fp32"):
                thunks[f"{name}_cudagraph"] = capture_cuda_graph(calls[name][0])
    config = {"d": d, "tau": tau, "tables": "fp32" if dtype == torch.float32 else "bf16"}
    times = {}
    for provider, thunk in thunks.items():
        linear = provider.startswith("linear")
        times[provider] = ctx.time(
            op=OP, provider=provider, mode=mode, x_name="T", x_value=tokens, config=config, fn=thunk,
            flops=2 * tokens * d * d if linear else 2 * tokens * (d // tau) * d,
            bytes=None if linear else layer_bytes(tokens, d, tables.element_size(), mode),
            l2_bytes=None if linear else layer_l2_bytes(tokens, d, tables.element_size(), mode))
    if mode == "fwd" and "torch" in providers:
        with torch.no_grad():
            got = et.memory_layer(x, tables, bias, backend="triton")
            want = et.reference.memory_layer(x.double(), tables.double(), bias.double())
        ctx.value(op=OP, provider="triton", metric="rel_err", x_name="T", x_value=tokens, config=config,
                  value=rel_err(got, want))
    return times


def runner(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor], mode: str, dy: torch.Tensor
           ) -> Callable[[], object]:
    """A thunk for ``ctx.time``: ``fn()`` under no_grad (``fwd``), or its gradients of ``leaves`` for ``dy``."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn()
    else:
        def run():
            return torch.autograd.grad(fn(), leaves, dy)
    return run


def _works(call) -> bool:
    try:
        call()
        return True
    except (RuntimeError, NotImplementedError):
        return False


def run(ctx: Context) -> None:
    if ctx.quick:
        token_sweep, d_sweep = [1, 7], [16]
    else:  # the headline d first (--budget)
        token_sweep, d_sweep = [1, 4, 16, 64, 256, 1024, 4096, 8192, 16384, 32768], [1024, 768, 2048]
    tau = 4 if ctx.quick else TAU
    for d in d_sweep:
        for dtype in (torch.float32, torch.bfloat16):
            for tokens in token_sweep:
                for mode in ("fwd", "fwd_bwd"):
                    layer_point(ctx, d, tau, dtype, tokens, mode)
                if d == d_sweep[0] and (ctx.quick or tokens <= 4096):
                    layer_point(ctx, d, tau, dtype, tokens, "fwd", ["torch"])
                    layer_point(ctx, d, tau, dtype, tokens, "fwd_bwd", ["torch"])

