"""The proof's headline table: each goal's point, timed by its bench module beside the baselines in the same run.

Each family's points run through the bench modules' public point functions (``do_bench`` medians on a GPU) and
become summary rows: op, size, ours (ms), best baseline (ms), ratio, the fraction of the floor its target names,
the target and whether it is met. ``dry_run`` runs the same points at tiny sizes on a CPU (interpreter), where
"met?" reads ``n/a (CPU)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from math import nan

import torch

from etsc_triton.demo.model import TNNLanguageModel

from . import bench_conversion, bench_decode, bench_memory, bench_ssm
from .harness import Context


def _ms(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def summary_row(ctx: Context, op: str, size: str, ours: float, baselines: dict[str, float], *, target: str,
                met: bool | None, floor_ms: float | None = None, detail: str = "") -> dict:
    """One headline row: the fastest finite baseline, ``ratio = baseline / ours``, the other baselines in
    ``detail``, ``floor_ms / ours`` as the fraction of the floor; ``met`` is judged on a GPU only."""
    finite = {name: ms for name, ms in baselines.items() if ms is not None and math.isfinite(ms)}
    best = min(finite, key=finite.__getitem__) if finite else None
    ok = bool(ours) and math.isfinite(ours)
    others = "; ".join(f"{name} {_ms(ms)} ms ({ms / ours:.2f}x)" for name, ms in finite.items() if name != best and ok)
    if not ok:
        verdict = "failed"
    elif not ctx.on_gpu:
        verdict = "n/a (CPU)"
    else:
        verdict = "-" if met is None else ("yes" if met else "no")
    return {"stage": "headline", "item": op, "size": size, "ours": _ms(ours),
            "baseline": f"{best} {_ms(finite[best])}" if best else "-",
            "ratio": f"{finite[best] / ours:.2f}x" if best and ok else "-",
            "fraction_of_floor": f"{floor_ms / ours:.0%}" if floor_ms and ok else "-",
            "target": target, "met": verdict, "detail": "; ".join(filter(None, [others, detail]))}


def conversion_points(ctx: Context, dry_run: bool) -> list[dict]:
    """toeplitz_to_ssm at n = 512 and 16384, d = 4096 against the original torch.fft pipeline (>= 2x, error no
    worse), ssm_kernel D = 1024, N = 64, L = 4096 against the materialised Vandermonde (>= 20x)."""
    rows = []
    d = 4 if dry_run else 4096
    for n in (15, 63) if dry_run else (512, 16384):
        times, errors = bench_conversion.conversion_point(ctx, n, d, ("triton", "original"))
        ours = times.pop("triton")
        rows.append(summary_row(
            ctx, "toeplitz_to_ssm", f"n={n}, d={d}", ours, times, target=">= 2x the original, error <= the original's",
            met=ours * 2 <= times["original"] and errors.get("triton", nan) <= errors.get("original", nan),
            floor_ms=ctx.floors.time_ms(bench_conversion.conversion_bytes(n, d), None),
            detail=f"rel err ours {errors.get('triton', nan):.2e}, original {errors.get('original', nan):.2e}"))
    channels, modes, length = (4, 8, 63) if dry_run else (1024, 64, 4096)
    times = bench_conversion.kernel_point(ctx, channels, modes, length, backward=False,
                                          providers=("triton", "materialised"))
    ours = times.pop("triton")
    rows.append(summary_row(ctx, "ssm_kernel", f"D={channels}, N={modes}, L={length}", ours, times,
                            target=">= 20x the materialised Vandermonde", met=ours * 20 <= times["materialised"],
                            floor_ms=ctx.floors.time_ms(None, 8 * channels * modes * length)))
    return rows


def step_points(ctx: Context, dry_run: bool) -> list[dict]:
    """ssm_step at B = 64 (>= 85% of copy bandwidth) and B = 1 (<= 8 us, CUDA graph on a GPU), D = 1024,
    N = 512, against the original eager step over all n = 2N modes."""
    rows = []
    channels, modes = (8, 16) if dry_run else (1024, 512)
    for batch in (2, 1) if dry_run else (64, 1):
        times = bench_ssm.step_point(ctx, batch, channels, modes, ("triton", "original"))
        ours, size = times.pop("triton"), f"B={batch}, D={channels}, N={modes}"
        floor_ms = ctx.floors.time_ms(bench_ssm.step_bytes(batch, channels, modes), None)
        if batch > 1:
            rows.append(summary_row(ctx, "ssm_step", size, ours, times, target=">= 85% of copy bandwidth",
                                    met=bool(floor_ms) and floor_ms >= 0.85 * ours, floor_ms=floor_ms))
            continue
        rows.append(summary_row(ctx, "ssm_step (eager)", size, ours, times, target="<= 8 us", met=ours <= 0.008,
                                floor_ms=floor_ms))
        if ctx.on_gpu:
            graphed = bench_ssm.step_graph_point(ctx, batch, channels, modes)
            rows.append(summary_row(ctx, "ssm_step (CUDA graph)", size, graphed, times, target="<= 8 us",
                                    met=graphed <= 0.008, floor_ms=floor_ms))
    return rows


def scan_points(ctx: Context, dry_run: bool) -> list[dict]:
    """ssm_scan B = 8, D = 2048, L = 4096 at N = 16 (>= 70% of the bytes floor), 64 (reported) and 256 (>= 50%
    of the FMA rate), against an FFT convolution with the realised kernel (the kernel itself not timed) and the
    original per-token loop (timed over a prefix of the tokens and scaled to L)."""
    rows = []
    batch, channels, length = (2, 8, 32) if dry_run else (8, 2048, 4096)
    sizes = (4, 8, 16) if dry_run else (16, 64, 256)
    for modes in sizes:
        times = bench_ssm.scan_point(ctx, batch, length, channels, modes, extras=False)
        ours = times.pop("triton")
        nbytes, flops = bench_ssm.scan_bytes_flops(batch, length, channels, modes)
        bytes_ms, flops_ms = ctx.floors.time_ms(nbytes, None), ctx.floors.time_ms(None, flops)
        if modes == sizes[0]:
            floor_ms, target, share = bytes_ms, ">= 70% of the bytes floor", 0.70
        elif modes == sizes[-1]:
            floor_ms, target, share = flops_ms, ">= 50% of the FMA rate", 0.50
        else:
            floor_ms, target, share = flops_ms, "- (reported)", None
        rows.append(summary_row(ctx, "ssm_scan", f"B={batch}, D={channels}, L={length}, N={modes}", ours, times,
                                target=target, met=None if share is None else bool(floor_ms) and
                                floor_ms >= share * ours, floor_ms=floor_ms,
                                detail=f"per-token loop timed over {bench_ssm.original_tokens(ctx, length)} "
                                       "tokens, scaled to L"))
    return rows


def memory_points(ctx: Context, dry_run: bool) -> list[dict]:
    """memory_layer T = 8192, d = 1024, tau = 8, fp32 and bf16 tables, forward (<= 0.35 / 0.2 ms) and forward +
    backward (<= 1.5 ms), and T = 1 (<= 10 us, and from a CUDA graph on a GPU), against MemoryFormer's torch
    gather, ``F.embedding_bag`` and nn.Linear fp32 / bf16 of the same shape."""
    rows = []
    tokens, d, tau = (7, 16, 4) if dry_run else (8192, 1024, 8)
    baselines = ("original", "embedding_bag", "linear_fp32", "linear_bf16")
    fwd_goal = {torch.float32: 0.35, torch.bfloat16: 0.2}
    for dtype in (torch.float32, torch.bfloat16):
        tname = "fp32" if dtype == torch.float32 else "bf16"
        for count, mode in ((tokens, "fwd"), (tokens, "fwd_bwd"), (1, "fwd")):
            times = bench_memory.layer_point(ctx, d, tau, dtype, count, mode, ("triton", *baselines))
            ours, graphed = times.pop("triton"), times.pop("triton_cudagraph", None)
            goal = 0.010 if count == 1 else (fwd_goal[dtype] if mode == "fwd" else 1.5)
            floor_ms = ctx.floors.time_ms(bench_memory.layer_bytes(count, d, dtype.itemsize, mode),
                                          2 * count * (d // tau) * d,
                                          bench_memory.layer_l2_bytes(count, d, dtype.itemsize, mode))
            target = f"<= {goal * 1e3:g} us" if count == 1 else f"<= {goal:g} ms"
            size = f"T={count}, d={d}, tau={tau}, {tname} tables"
            rows.append(summary_row(ctx, f"memory_layer {mode}", size, ours, {k: times.get(k) for k in baselines},
                                    target=target, met=ours <= goal, floor_ms=floor_ms,
                                    detail="floor: max(HBM bytes, L2 bytes, flops)"))
            if graphed is not None:
                rows.append(summary_row(ctx, "memory_layer fwd (CUDA graph)", size, graphed,
                                        {"linear_fp32_cudagraph": times.get("linear_fp32_cudagraph")}, target=target,
                                        met=graphed <= goal, floor_ms=floor_ms))
    return rows


def decode_points(ctx: Context, dry_run: bool) -> list[dict]:
    """Greedy decode of the demo's TNN (6 layers, D = 512, n = 2048), one token at lengths 64..8192: flat
    (<= 10% growth from the shortest to the longest) and >= 10x the TNN cache at 8192; the original ETSC eager
    decode beside it."""
    config = bench_decode.model_config(dry_run)
    lengths = [8, 40] if dry_run else [64, 256, 1024, 2048, 4096, 8192]
    times = bench_decode.decode_sweep(ctx, TNNLanguageModel(config).to(ctx.device), 1, lengths, "triton")
    short, long = lengths[0], lengths[-1]
    ours = times.pop("triton")
    growth = ours[long] / ours[short] - 1  # NaN when either failed: then "met" is no
    baselines = {name: series[long] for name, series in times.items()}
    return [summary_row(ctx, "decode_token", f"{config.n_layers} layers, D={config.d_model}, n={config.n}, "
                        f"length {long}", ours[long], baselines, target="flat (<= 10% growth), >= 10x the TNN cache",
                        met=growth <= 0.10 and baselines["tnn_cache"] >= 10 * ours[long],
                        detail=f"growth {short} -> {long}: {growth:+.0%}")]


POINTS: list[tuple[str, Callable[[Context, bool], list[dict]]]] = [
    ("conversion", conversion_points),
    ("ssm_step", step_points),
    ("ssm_scan", scan_points),
    ("memory_layer", memory_points),
    ("decode", decode_points),
]
