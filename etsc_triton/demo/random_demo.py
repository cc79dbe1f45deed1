"""``python -m etsc_triton.demo``: serve a Toeplitz language model in constant time per token, exactly.

By default the main job runs on the trained byte-level model shipped in the package (:mod:`etsc_triton.trained_demo`:
bits per byte of the FFT model, the exact ETSC SSM and truncated SSMs on the Python stdlib's test split,
extrapolation, decode latency, completions, MemoryFormer vs Linear; under 2 minutes on a 2-core CPU).

``--random`` runs the timing demo on a random-weight model of any size (the GPU-sized one on CUDA): it builds a
small TNN language model (deterministic random weights), converts every Toeplitz layer to a diagonal
SSM with ETSC, and decodes greedily with three decoders: ``fft`` (recompute the prefix by FFT each token, the
original), ``tnn_cache`` (dot product of the kernel with the cached prefix) and ``ssm`` (prefill by FFT + the
folded-DFT state, then one fused SSM step per layer; a CUDA graph on GPU). It prints per-token latency and
memory against sequence length, the speedups, the max relative difference between the SSM and FFT logits and
whether the greedy tokens are identical (checked for sequences up to the training length n, where all three
decoders compute the same kernel), and draws per-token time against sequence length into ``--out``.

Sizes: on CUDA the headline configuration (6 layers, D=512, n=2048, batch 1 and 16, lengths 64..8192); without
CUDA a CPU-sized one (2 layers, D=128, n=256, batch 1 and 4, lengths 16..1024, about a minute); ``--quick`` a
tiny one (2 layers, D=32, n=64) that finishes in seconds on any machine. On CPU the kernels run through the
Torch reference (``backend="auto"``).

    python -m etsc_triton.demo                              # the trained model
    python -m etsc_triton.demo --quick --json out.json      # the trained model, a few test bytes (seconds)
    python -m etsc_triton.demo --random                     # random weights: GPU if present, else CPU-sized
    python -m etsc_triton.demo --random --quick --json out.json --out plots/
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .devices import device_slug
from .model import DECODERS, TNNConfig, TNNLanguageModel, generate, make_decoder

PRESETS = {
    "gpu": dict(
        config=TNNConfig(vocab_size=256, d_model=512, n_layers=6, n=2048, rpe_hidden=64, decay=0.99),
        batches=[1, 16],
        lengths=[64, 128, 256, 512, 1024, 2048, 4096, 8192],
        timed_steps=20,
        check_prompt=16,
    ),
    "cpu": dict(
        config=TNNConfig(vocab_size=256, d_model=128, n_layers=2, n=256, rpe_hidden=32, decay=0.98),
        batches=[1, 4],
        lengths=[16, 32, 64, 128, 256, 512, 1024],
        timed_steps=5,
        check_prompt=8,
    ),
    "quick": dict(
        config=TNNConfig(vocab_size=64, d_model=32, n_layers=2, n=64, rpe_hidden=16, decay=0.95),
        batches=[1, 2],
        lengths=[8, 16, 32, 64, 128],
        timed_steps=3,
        check_prompt=4,
    ),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m etsc_triton.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="few test bytes / a tiny random model (seconds)")
    parser.add_argument("--random", action="store_true",
                        help="the random-weight timing demo (GPU-sized on CUDA) instead of the trained model")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON to this path")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the plots (default: plots/<device>/, trained: plots/<device>/trained/)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="model and prompt seed (--random)")
    return parser.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_decoder(model, name: str, batch: int, length: int, steps: int, seed: int) -> dict:
    """Prefill ``length - 1`` tokens, then time ``steps`` greedy tokens (after one warm-up token).

    Returns the median ms per token (each token timed alone, so a busy machine's outliers drop out), the
    decode state held (bytes: cache / SSM state / token prefix) and, on CUDA, the
    peak memory allocated during the timed tokens beyond the model's weights (MB).
    """
    device = model.embed.weight.device
    prompt = torch.randint(
        0, model.config.vocab_size, (batch, length - 1), generator=torch.Generator().manual_seed(seed)
    ).to(device)
    decoder = make_decoder(model, name, length + steps + 1)
    logits = decoder.prefill(prompt)
    logits = decoder.step(logits.argmax(-1))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        logits = decoder.step(logits.argmax(-1))
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - weights) / 2**20 if device.type == "cuda" else None
    return {"ms": statistics.median(times) * 1e3, "state_mb": decoder.state_bytes() / 2**20, "peak_mb": peak}


@torch.no_grad()
def check_identical(model, batch: int, prompt_len: int, seed: int) -> tuple[bool, float, int]:
    """Greedy generation to sequence length n with the three decoders.

    Returns ``(tokens identical, max relative logit difference ssm vs fft, generated tokens)``; the logits are
    compared at every step up to and including the first step where the tokens differ (same prefix there).
    """
    device = model.embed.weight.device
    prompt = torch.randint(
        0, model.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(seed + 1)
    ).to(device)
    steps = model.config.n - prompt_len
    out = {d: generate(model, prompt, steps, decoder=d, return_logits=True) for d in DECODERS}
    tokens_fft, logits_fft = out["fft"]
    identical = all(torch.equal(out[d][0], tokens_fft) for d in DECODERS)
    differs = (out["ssm"][0] != tokens_fft).any(0)
    upto = int(differs.nonzero()[0]) + 1 if differs.any() else steps
    ref = logits_fft[:, :upto].double()
    diff = (out["ssm"][1][:, :upto].double() - ref).norm(dim=-1) / ref.norm(dim=-1).clamp_min(1e-30)
    return identical, float(diff.max()), steps


def plot(results: dict, out_dir: Path) -> Path:
    """Per-token decode time (and memory) against sequence length, one column per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = results["batch_sizes"]
    fig, axes = plt.subplots(2, len(batches), figsize=(5.5 * len(batches), 8), squeeze=False)
    colors = {"ssm": "tab:green", "tnn_cache": "tab:orange", "fft": "tab:blue"}
    memory_key = "peak_mem_mb" if results["device"] == "cuda" else "state_mb"
    for col, batch in enumerate(batches):
        per = results["per_batch"][str(batch)]
        for row, (key, label) in enumerate([("decode_ms_per_token", "ms / token"), (memory_key, "MB")]):
            ax = axes[row][col]
            for name in DECODERS:
                ax.plot(results["lengths"], per[key][name], "o-", color=colors[name], label=name)
            ax.axvline(results["config"]["n"], color="gray", ls="--", lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("sequence length")
            ax.set_ylabel(label)
            what = "per-token decode time" if row == 0 else memory_key.replace("_", " ")
            ax.set_title(f"{what}, batch {batch}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    cfg = results["config"]
    fig.suptitle(
        f"TNN decode ({cfg['n_layers']} layers, D={cfg['d_model']}, n={cfg['n']}; dashed: n) on "
        f"{results['device_name']}: SSM (ETSC) is flat",
        fontsize=11,
    )
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "decode_latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(quick: bool = False, device: str | None = None, seed: int = 0) -> dict:
    """Build, convert, decode; return the results dictionary the JSON holds."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = PRESETS["quick" if quick else ("gpu" if device == "cuda" else "cpu")]
    config = TNNConfig(**{**asdict(preset["config"]), "seed": seed})
    model = TNNLanguageModel(config).to(device)
    lengths, batches = preset["lengths"], preset["batches"]
    results = {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device == "cuda" else "cpu",
        "config": asdict(config),
        "batch_sizes": batches,
        "lengths": lengths,
        "per_batch": {},
    }
    identical_all, max_rel = True, 0.0
    for batch in batches:
        identical, rel, generated = check_identical(model, batch, preset["check_prompt"], seed)
        identical_all &= identical
        max_rel = max(max_rel, rel)
        per = {
            "tokens_identical": identical,
            "max_rel_err": rel,
            "generated": generated,
            "decode_ms_per_token": {},
            "state_mb": {},
            "peak_mem_mb": {},
        }
        for name in DECODERS:
            rows = [
                time_decoder(model, name, batch, length, preset["timed_steps"], seed) for length in lengths
            ]
            per["decode_ms_per_token"][name] = [r["ms"] for r in rows]
            per["state_mb"][name] = [r["state_mb"] for r in rows]
            per["peak_mem_mb"][name] = [r["peak_mb"] for r in rows]
        ssm = per["decode_ms_per_token"]["ssm"]
        per["speedup_vs_ssm"] = {
            name: [o / s for o, s in zip(per["decode_ms_per_token"][name], ssm, strict=True)]
            for name in ("tnn_cache", "fft")
        }
        results["per_batch"][str(batch)] = per
    first = results["per_batch"][str(batches[0])]
    results.update(
        tokens_identical=identical_all,
        max_rel_err=max_rel,
        decode_ms_per_token=first["decode_ms_per_token"],
        state_mb=first["state_mb"],
        peak_mem_mb=first["peak_mem_mb"],
        speedup_vs_ssm=first["speedup_vs_ssm"],
    )
    return results


def format_table(results: dict) -> str:
    lines = []
    cfg = results["config"]
    lines.append(
        f"TNN: {cfg['n_layers']} layers, D={cfg['d_model']}, n={cfg['n']}, vocab={cfg['vocab_size']} "
        f"on {results['device_name']}"
    )
    mem = "peak MB" if results["device"] == "cuda" else "state MB"
    for batch in results["batch_sizes"]:
        per = results["per_batch"][str(batch)]
        lines.append("")
        lines.append(
            f"batch {batch}: greedy tokens identical (up to n={cfg['n']}, {per['generated']} generated): "
            f"{per['tokens_identical']}; max rel diff ssm vs fft logits: {per['max_rel_err']:.2e}"
        )
        header = (
            f"{'length':>7} | {'ssm ms':>8} {'cache ms':>9} {'fft ms':>9} | {'x cache':>8} {'x fft':>8} | "
            f"{mem + ' ssm':>13} {'cache':>9} {'fft':>9}"
        )
        lines.append(header)
        lines.append("-" * len(header))
        memory = per["peak_mem_mb" if results["device"] == "cuda" else "state_mb"]
        for i, length in enumerate(results["lengths"]):
            ms = {d: per["decode_ms_per_token"][d][i] for d in DECODERS}
            lines.append(
                f"{length:>7} | {ms['ssm']:>8.3f} {ms['tnn_cache']:>9.3f} {ms['fft']:>9.3f} | "
                f"{ms['tnn_cache'] / ms['ssm']:>7.1f}x {ms['fft'] / ms['ssm']:>7.1f}x | "
                f"{memory['ssm'][i]:>13.2f} {memory['tnn_cache'][i]:>9.2f} {memory['fft'][i]:>9.2f}"
            )
    lines.append("")
    lines.append(
        f"tokens identical: {results['tokens_identical']}   max rel err: {results['max_rel_err']:.2e}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    if not args.random:
        return _main_trained(args)
    results = run(quick=args.quick, device=args.device, seed=args.seed)
    print(format_table(results))
    path = plot(results, args.out or Path("plots") / device_slug(results["device"]))
    print(f"plot: {path}")
    return _finish(results, args.json)


def _main_trained(args: argparse.Namespace) -> int:
    from . import trained as trained_demo

    results = trained_demo.run(quick=args.quick, device=args.device)
    print(trained_demo.format_report(results))
    for path in trained_demo.plot(results, args.out or Path("plots") / device_slug(results["device"]) / "trained"):
        print(f"plot: {path}")
    return _finish(results, args.json)


def _finish(results: dict, json_path: Path | None) -> int:
    """Write ``--json`` when asked; the exit status says whether the greedy tokens agreed."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
        print(f"json: {json_path}")
    return 0 if results["tokens_identical"] else 1


