"""The random-weight timing demo (``python -m etsc_triton.demo --random``): decode cost against length, any size.

Builds a TNN language model with deterministic random weights, converts every Toeplitz layer to a diagonal SSM
with ETSC, and decodes greedily with three decoders: ``fft`` (recompute the prefix by FFT each token, the
original), ``tnn_cache`` (dot product of the kernel with the cached prefix) and ``ssm`` (prefill by FFT + the
folded-DFT state, then one fused SSM step per layer; a CUDA graph on GPU). It reports per-token latency and memory
against sequence length, the speedups, the max relative difference between the SSM and FFT logits and whether the
greedy tokens are identical (checked up to the training length n, where the three decoders compute the same
kernel), and draws per-token time against sequence length.

Sizes: on CUDA the headline configuration (6 layers, D=512, n=2048, batch 1 and 16, lengths 64..8192); without
CUDA a CPU-sized one (2 layers, D=128, n=256, batch 1 and 4, lengths 16..1024, about a minute); ``quick`` a tiny
one (2 layers, D=32, n=64) that finishes in seconds. On CPU the kernels run through their CPU paths
(``backend="auto"``) and the decode rows are timed on one thread (:data:`~etsc_triton.demo.scoring.DECODE_THREADS`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from .model import DECODERS, TNNConfig, TNNLanguageModel, generate, make_decoder
from .scoring import DECODE_THREADS, time_decoder, torch_threads

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


@torch.no_grad()
def time_length(model: TNNLanguageModel, name: str, batch: int, length: int, steps: int, seed: int) -> dict:
    """Decoder ``name`` after a random prompt of ``length - 1`` tokens: :func:`~etsc_triton.demo.scoring.time_decoder`
    of ``steps`` tokens, as the median ms per token, the state held (MB) and on CUDA the peak memory (MB)."""
    device = model.embed.weight.device
    prompt = torch.randint(
        0, model.config.vocab_size, (batch, length - 1), generator=torch.Generator().manual_seed(seed)
    ).to(device)
    timing = time_decoder(make_decoder(model, name, length + steps + 1), prompt, steps)
    peak = None if timing["peak_bytes"] is None else timing["peak_bytes"] / 2**20
    return {"ms": timing["p50"], "state_mb": timing["state_bytes"] / 2**20, "peak_mb": peak}


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
            with torch_threads(DECODE_THREADS if device == "cpu" else torch.get_num_threads()):
                rows = [time_length(model, name, batch, length, preset["timed_steps"], seed) for length in lengths]
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
