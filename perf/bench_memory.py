"""MemoryFormer memory layer: fused Triton hash + gather against the torch baselines and nn.Linear.

Sweep: tokens T (1 .. 32768) for d_in = d_out = d in {768, 1024, 2048}, tau = 8 (K = d / 8 tables of 256
rows), tables in fp32 and bf16, modes ``fwd`` (under ``torch.no_grad``) and ``fwd_bwd`` (gradients of x,
tables and bias). Providers:

- ``triton``: ``et.memory_layer`` (fused forward; atomic backward), ``triton_deterministic`` (sorted-segment
  backward, fwd_bwd only), ``triton_two_pass`` (fwd only: ``lsh_hash`` then ``memory_gather``, hashing once
  per token and table instead of once per d-block program);
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

import json
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

import etsc_triton as et

from .harness import capture_cuda_graph
from .plots import plt, save_loglog

FAMILY = "memory"
OP = "memory_layer"
TAU = 8
ROWS = 2**TAU
ORIGINAL_LIMIT_BYTES = 4e9
GRAPH_MAX_TOKENS = 16
# Ours -> the nn.Linear timings it is compared with in the "vs linear" plots (line style of each).
LINEAR_PAIRS = {
    "triton": (("linear_fp32", "-"), ("linear_bf16", ":")),
    "triton_cudagraph": (("linear_fp32_cudagraph", "--"),),
}


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


def _bytes(tokens: int, d: int, table_bytes: int, mode: str) -> float:
    num_tables = d // TAU
    rows_touched = num_tables * min(tokens, ROWS) * d * table_bytes
    fwd = tokens * d * 4 * 2 + rows_touched
    if mode == "fwd":
        return fwd
    return fwd + tokens * d * 4 * 2 + rows_touched + num_tables * ROWS * d * table_bytes


def _l2_bytes(tokens: int, d: int, table_bytes: int, mode: str) -> float:
    """Bytes the gather re-reads from L2: one row of d values per token and table (``T K d``); fwd_bwd reads
    them again for the score gradients and adds ``T K d`` fp32 values into d tables (read + write)."""
    rows = tokens * (d // TAU) * d
    if mode == "fwd":
        return rows * table_bytes
    return 2 * rows * table_bytes + 2 * rows * 4


def _runner(fn, leaves, mode, dy):
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn()
    else:
        def run():
            return torch.autograd.grad(fn(), leaves, dy)
    return run


def _two_pass_memory_layer(x, tables, bias, tau):
    """``lsh_hash`` once per (token, table), then ``memory_gather``: against the fused kernel, which hashes in
    every d-block program (perf/NOTES.md, experiment 10)."""
    codes, scores = et.lsh_hash(x.view(x.shape[0], -1, tau), backend="triton")
    return et.memory_gather(codes, scores, tables, bias, backend="triton")


def _works(run) -> bool:
    try:
        run()
        return True
    except (RuntimeError, NotImplementedError):
        return False


def _providers(x, x16, tables, bias, linear32, linear16, tau, mode, *, with_original, with_reference):
    """``{provider: (fn, leaves)}`` for one point; ``leaves`` are what fwd_bwd differentiates."""
    leaves = [x, tables, bias]
    providers = {
        "triton": (lambda: et.memory_layer(x, tables, bias, backend="triton"), leaves),
        "embedding_bag": (lambda: embedding_bag_memory_layer(x, tables, bias, tau), leaves),
        "linear_fp32": (lambda: linear32(x), [x, linear32.weight, linear32.bias]),
        "linear_bf16": (lambda: linear16(x16), [x16, linear16.weight, linear16.bias]),
    }
    if mode == "fwd":
        providers["triton_two_pass"] = (lambda: _two_pass_memory_layer(x, tables, bias, tau), leaves)
    if mode == "fwd_bwd":
        providers["triton_deterministic"] = (
            lambda: et.memory_layer(x, tables, bias, deterministic=True, backend="triton"), leaves)
    if with_original:
        providers["original"] = (lambda: original_memory_layer(x, tables, bias, tau), leaves)
    if with_reference:
        providers["torch"] = (lambda: et.memory_layer(x, tables, bias, backend="torch"), leaves)
    return providers


def run(ctx):
    device = ctx.device
    if ctx.quick:
        token_sweep, d_sweep, dtypes = [1, 7], [16], [torch.float32, torch.bfloat16]
    else:
        token_sweep = [1, 4, 16, 64, 256, 1024, 4096, 8192, 16384, 32768]
        d_sweep, dtypes = [1024, 768, 2048], [torch.float32, torch.bfloat16]  # the headline d first (--budget)
    tau = TAU if not ctx.quick else 4
    gen = torch.Generator(device="cpu").manual_seed(0)
    for d in d_sweep:
        num_tables, rows = d // tau, 2**tau
        for dtype in dtypes:
            tables = (0.02 * torch.randn(num_tables, rows, d, generator=gen)).to(device, dtype)
            tables.requires_grad_(True)
            bias = torch.zeros(d, device=device, requires_grad=True)
            linear32 = torch.nn.Linear(d, d, device=device)
            linear16 = torch.nn.Linear(d, d, device=device, dtype=torch.bfloat16)
            tname = "fp32" if dtype == torch.float32 else "bf16"
            config = {"d": d, "tau": tau, "tables": tname}
            for tokens in ctx.sizes(quick=token_sweep, full=token_sweep):
                x = torch.randn(tokens, d, generator=gen).to(device).requires_grad_(True)
                x16 = x.detach().to(torch.bfloat16).requires_grad_(True)
                dy = torch.randn(tokens, d, device=device)
                flops = 2 * tokens * num_tables * d
                original_bytes = tokens * num_tables * d * tables.element_size()
                for mode in ("fwd", "fwd_bwd"):
                    with_reference = d == d_sweep[0] and (ctx.quick or tokens <= 4096)
                    providers = _providers(x, x16, tables, bias, linear32, linear16, tau, mode,
                                           with_original=original_bytes <= ORIGINAL_LIMIT_BYTES,
                                           with_reference=with_reference)
                    for provider, (fn, leaves) in providers.items():
                        grad_out = dy.to(torch.bfloat16) if provider == "linear_bf16" else dy
                        call = _runner(fn, leaves, mode, grad_out)
                        if not _works(call):
                            continue
                        linear = provider.startswith("linear")
                        ctx.time(op=OP, provider=provider, mode=mode, x_name="T", x_value=tokens,
                                 config=config, fn=call, flops=2 * tokens * d * d if linear else flops,
                                 bytes=None if linear else _bytes(tokens, d, tables.element_size(), mode),
                                 l2_bytes=None if linear else _l2_bytes(tokens, d, tables.element_size(), mode))
                if ctx.on_gpu and tokens <= GRAPH_MAX_TOKENS:
                    with torch.no_grad():
                        graphed = {
                            "triton_cudagraph": capture_cuda_graph(
                                lambda x=x, w=tables, c=bias: et.memory_layer(x, w, c, backend="triton")),
                            "linear_fp32_cudagraph": capture_cuda_graph(lambda x=x, layer=linear32: layer(x)),
                        }
                    for provider, replay in graphed.items():
                        linear = provider.startswith("linear")
                        ctx.time(op=OP, provider=provider, mode="fwd", x_name="T", x_value=tokens, config=config,
                                 fn=replay, flops=2 * tokens * d * d if linear else flops,
                                 bytes=None if linear else _bytes(tokens, d, tables.element_size(), "fwd"),
                                 l2_bytes=None if linear else _l2_bytes(tokens, d, tables.element_size(), "fwd"))
                if tokens <= 8192 and d == d_sweep[0]:
                    with torch.no_grad():
                        got = et.memory_layer(x, tables, bias, backend="triton")
                        want = et.reference.memory_layer(x.double(), tables.double(), bias.double())
                    err = torch.linalg.vector_norm(got.double() - want) / torch.linalg.vector_norm(want)
                    ctx.value(op=OP, provider="triton", metric="rel_err", value=err.item(), x_name="T",
                              x_value=tokens, config=config)


def plot(rows, out_dir):
    """Where the memory layer beats nn.Linear in wall time: time(linear) / time(triton) against T, per d."""
    times = defaultdict(dict)
    for row in rows:
        if row["op"] != OP or row["metric"] != "time" or row["p50"] in (None, ""):
            continue
        config = json.loads(row["config"])
        key = (row["mode"], config["d"], config["tables"], row["provider"])
        times[key][float(row["x_value"])] = float(row["p50"])
    paths = []
    gpu = rows[0]["gpu"] if rows else "unknown"
    for mode in ("fwd", "fwd_bwd"):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        drawn = False
        for (m, d, tables, provider), ours in sorted(times.items()):
            if m != mode or provider not in LINEAR_PAIRS:
                continue
            for baseline, style in LINEAR_PAIRS[provider]:
                base = times.get((mode, d, tables, baseline), {})
                xs = sorted(set(ours) & set(base))
                if xs:
                    ours_name = "" if provider == "triton" else f" ({provider})"
                    ax.plot(xs, [base[x] / ours[x] for x in xs], ls=style, marker="o",
                            label=f"d={d}, {tables} tables{ours_name} vs {baseline}")
                    drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.axhline(1.0, color="black", lw=1)
        paths.append(save_loglog(
            fig, ax, Path(out_dir) / f"memory_layer_{mode}_vs_linear.png", xlabel="T (tokens)",
            ylabel="time(nn.Linear) / time(memory_layer)  (> 1: memory layer wins)",
            title=f"memory_layer ({mode}) against nn.Linear of the same shape\non {gpu}",
        ))
    return paths
