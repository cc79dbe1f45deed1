"""The main job on the trained model: perplexity, extrapolation, decode cost and completions of the converted TNN.

Loads the shipped byte-level TNN language model (trained on the Python standard library by
``python -m etsc_triton.train``; weights in ``etsc_triton/weights/``), converts its Toeplitz layers to diagonal
SSMs in several ways and measures, on the test split of the stdlib of the running Python:

1. bits per byte of the FFT model (the original), of the exact ETSC SSM and of DFT-mode truncations, with the
   decode state each holds;
2. extrapolation: bits per byte on windows of 1x, 2x and 4x the training length n;
3. decode latency (ms per token, p20 / median / p80 over single timed tokens) and state bytes against length;
4. a greedy code completion by every decoder, compared token by token with the FFT model's;
5. the MemoryFormer variant (``--mixer memory``) against the Linear (GLU) one.

How an SSM variant is evaluated: its converted layers' complex64 ``(lam, b)`` give the kernel they realise at
every lag (``Re sum_s b_s lam_s^j``, evaluated in float64), which the FFT path then applies; this equals running
the SSM recurrence over the window, up to summation order. The decode rows and the completion run the real
decoders (:class:`~etsc_triton.nn.tnn.SSMDecoder`: folded-DFT prefill, then one ``ssm_step`` per block per token).

The variants are the list :func:`ssm_variants` returns; a new way to convert the layers (for example an
order-reduced SSM) is one more :class:`SSMVariant` there, and every table, the JSON and the plots pick it up.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..nn.memory import MemoryLayer
from ..nn.toeplitz import ToeplitzSSM
from ..reference import realised_kernel64
from .checkpoint import load_shipped
from .data import eval_windows, load_split, split_record, stdlib_root
from .model import CacheDecoder, FFTDecoder, SSMDecoder, TNNLanguageModel

LN2 = 0.6931471805599453
# Relative spread (p80 - p20) / median above which a latency row is flagged as untrustworthy.
NOISY_SPREAD = 0.5
PROMPT = "import os\n\n\nclass Parser:\n    def __init__(self"

PRESETS = {
    # 4 windows of 4n + 1 bytes: 8 KiB of test text at n = 512, the same bytes at every length.
    "full": dict(windows=4, ranks=(8, 64), tols=(1e-3, 1e-4), lengths=(64, 512, 2048), timed=7,
                 completion=64),
    "quick": dict(windows=1, ranks=(8,), tols=(1e-4,), lengths=(32, 128), timed=3, completion=24),
}


@dataclass(frozen=True)
class SSMVariant:
    """One way to turn the model's Toeplitz layers into SSMs.

    Attributes:
        name: row label and JSON key (``"etsc"``, ``"truncated_r8"``, ...).
        convert: converts one block's :class:`~etsc_triton.nn.toeplitz.ToeplitzSSM` in place (sets its ``lam``,
            ``b``), e.g. ``lambda layer: layer.convert(rank=8)``.
        exact: claims the FFT model's outputs (its greedy tokens are expected to be identical).
        extrapolate: gets rows in the extrapolation table (2x, 4x the training length).
        decode: gets a decode-latency row and a completion.
        horizon: the converted layers hold ``horizon * n`` taps (the position MLP's kernel beyond n, which a
            reduced SSM can follow and the ETSC wrap cannot).
        taps_dtype: the dtype the position MLP is evaluated in for the taps (None: its own, float32). A reduction
            takes float64: it fits the MLP's function, not the float32 taps' rounding noise.
    """

    name: str
    convert: Callable[[ToeplitzSSM], object]
    exact: bool = False
    extrapolate: bool = False
    decode: bool = False
    horizon: int = 1
    taps_dtype: torch.dtype | None = None


def ssm_variants(tols: tuple[float, ...]) -> list[SSMVariant]:
    """The exact ETSC conversion and the order reductions (``ToeplitzSSM.convert(method="reduce", tol=...)``,
    fitted over 4n lags; named ``reduced_r<rank>`` once converted, the finest one decoded)."""
    variants = [SSMVariant("etsc", lambda layer: layer.convert(), exact=True, extrapolate=True, decode=True)]
    variants += [SSMVariant(f"reduced_tol{tol:g}", lambda layer, tol=tol: layer.convert(method="reduce", tol=tol),
                            extrapolate=True, decode=tol == min(tols), horizon=4, taps_dtype=torch.float64)
                 for tol in tols]
    return variants


def truncated_variants(ranks) -> list[SSMVariant]:
    """DFT-mode truncations (``ToeplitzSSM.convert(rank=r)``) at ``ranks``."""
    return [SSMVariant(f"truncated_r{r}", lambda layer, r=r: layer.convert(rank=r)) for r in sorted(set(ranks))]


def convert_all(model: TNNLanguageModel, tols, ranks) -> tuple[list[SSMVariant], dict[str, list[ToeplitzSSM]]]:
    """Every variant converted: the reductions renamed by the rank they reached (the largest over the layers; of
    two at one rank the later, finer tolerance is kept, decoded if either was), the truncations at the preset
    ranks and at the reductions' ranks, for the like-for-like rows."""
    variants, converted = [], {}
    for variant in ssm_variants(tols):
        layers = convert_layers(model, variant)
        if variant.name.startswith("reduced"):
            variant = replace(variant, name=f"reduced_r{max(layer.state_size for layer in layers)}")
        if variant.name in converted:  # two tolerances reached one rank: the later (finer) fit replaces it
            previous = next(i for i, v in enumerate(variants) if v.name == variant.name)
            variants[previous] = replace(variant, decode=variant.decode or variants[previous].decode)
        else:
            variants.append(variant)
        converted[variant.name] = layers
    reduced_ranks = [max(layer.state_size for layer in converted[v.name]) for v in variants
                     if v.name.startswith("reduced")]
    for variant in truncated_variants([*ranks, *reduced_ranks]):
        variants.append(variant)
        converted[variant.name] = convert_layers(model, variant)
    return variants, converted


def convert_layers(model: TNNLanguageModel, variant: SSMVariant) -> list[ToeplitzSSM]:
    """One converted :class:`ToeplitzSSM` per block of ``model``, by ``variant.convert``."""
    layers = []
    for block in model.blocks:
        layer = ToeplitzSSM(block.coefficients(variant.horizon * block.n, dtype=variant.taps_dtype), block.decay)
        variant.convert(layer)
        layers.append(layer)
    return layers


def realised_kernels(layers: list[ToeplitzSSM], length: int) -> list[torch.Tensor]:
    """The kernels ``[D, length]`` (float32) the converted layers realise at lags ``0 .. length-1``."""
    return [realised_kernel64(layer.lam, layer.b, length).float() for layer in layers]


def ssm_state_bytes(layers: list[ToeplitzSSM]) -> int:
    """Decode state of one sequence: every layer's complex64 modes."""
    return sum(layer.channels * layer.state_size * 8 for layer in layers)


@torch.no_grad()
def bits_per_byte(model: TNNLanguageModel, windows: torch.Tensor, length: int,
                  kernels: list[torch.Tensor] | None = None, batch: int = 8) -> float:
    """Bits per byte over ``windows [W, M + 1]`` cut into chunks of ``length`` (``M`` a multiple of it).

    Every byte of every chunk is predicted from the bytes before it in its chunk; ``kernels`` (``[D, >= length]``
    per block) replace the model's own (``None``: the FFT model, its position MLP evaluated at every lag).
    """
    span = windows.shape[1] - 1
    chunks = torch.cat([windows[:, i : i + length + 1] for i in range(0, span, length)])
    kernels = kernels or model.kernels(length)
    total = 0.0
    for part in chunks.split(batch):
        logits = model(part[:, :-1], kernels)
        # float64 log-softmax and sum: a float32 sum of thousands of terms would round away the 1e-7 differences
        total += float(F.cross_entropy(logits.flatten(0, 1).double(), part[:, 1:].flatten(), reduction="sum"))
    return total / (chunks.shape[0] * length) / LN2


def flops_per_token(model: TNNLanguageModel, modes: int) -> dict:
    """Multiply-adds x 2 per token of one decode step.

    ``linear``: every ``nn.Linear`` (2 in out); ``channel_mixing``: the GLU's two layers (a
    :class:`MemoryLayer` costs ``2 K out`` for the weighted sum of its K table rows plus ``5 in`` to hash and
    score); ``token_mixing``: an ETSC step with ``modes`` complex modes per channel (8 real FLOPs per mode:
    the complex multiply-add of the state and the real part of ``b * state``); ``total`` their sum.
    """

    def layer_flops(layer) -> int:
        if isinstance(layer, MemoryLayer):
            return 2 * layer.num_tables * layer.out_features + 5 * layer.in_features
        return 2 * layer.in_features * layer.out_features

    channel = sum(layer_flops(b.glu_in) + layer_flops(b.glu_out) for b in model.blocks)
    other = sum(layer_flops(b.mix_in) + layer_flops(b.mix_out) for b in model.blocks) + layer_flops(model.head)
    token = 8 * modes * model.config.d_model * model.config.n_layers
    return {"channel_mixing": channel, "other_linear": other, "token_mixing": token,
            "total": channel + other + token}


def _percentiles(times: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(times, n=10, method="inclusive")
    return q[1] * 1e3, statistics.median(times) * 1e3, q[7] * 1e3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_decoder(decoder, prompt: torch.Tensor, timed: int) -> dict:
    """Prefill ``prompt [1, P]``, one warm-up token, then ``timed`` tokens timed one by one."""
    device = prompt.device
    logits = decoder.step(decoder.prefill(prompt).argmax(-1))
    times = []
    for _ in range(timed):
        _sync(device)
        start = time.perf_counter()
        logits = decoder.step(logits.argmax(-1))
        _sync(device)
        times.append(time.perf_counter() - start)
    p20, p50, p80 = _percentiles(times)
    return {"p20": p20, "p50": p50, "p80": p80, "state_bytes": decoder.state_bytes()}


@torch.no_grad()
def greedy(decoder, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens ``[B, steps]`` and the logits that chose them ``[B, steps, V]``."""
    logits = decoder.prefill(prompt)
    tokens, all_logits = [], []
    for i in range(steps):
        all_logits.append(logits.clone())
        tokens.append(logits.argmax(-1))
        if i + 1 < steps:
            logits = decoder.step(tokens[-1])
    return torch.stack(tokens, 1), torch.stack(all_logits, 1)


def run(quick: bool = False, device: str | None = None) -> dict:
    """Every figure of the main job, as the dictionary ``--json`` writes."""
    wall = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = PRESETS["quick" if quick else "full"]
    model, record = load_shipped("glu", device)
    n = model.config.n
    here = split_record()
    test_tokens = load_split("test")
    windows = eval_windows(test_tokens, preset["windows"], 4 * n + 1).to(device)
    results = {
        "n": n,
        "config": asdict(model.config),
        "device": device.type,
        "python": here["python"],
        "stdlib": str(stdlib_root()),
        "test_split": here["splits"]["test"],
        "trained_on": {"python": record["data"]["python"], "test_sha256": record["data"]["splits"]["test"]["sha256"]},
        "same_test_split_as_training": here["splits"]["test"]["sha256"] == record["data"]["splits"]["test"]["sha256"],
        "eval_bytes": windows.shape[0] * (windows.shape[1] - 1),
        "training": {k: record[k] for k in ("parameters", "steps", "seconds", "tokens", "final_train_bpb", "val_bpb")},
    }

    sections = {"load": time.perf_counter() - wall}
    # 1. bits per byte at the training length, state per sequence and per channel.
    variants, converted = convert_all(model, preset["tols"], preset["ranks"])
    d, layers = model.config.d_model, model.config.n_layers
    bpb = {"fft": bits_per_byte(model, windows, n)}
    state_bytes = {"fft": layers * n * d * 4}  # the original's cheapest decode state: the cached inputs (tnn_cache)
    state_per_channel = {"fft": f"{n} reals (cache)"}
    for v in variants:
        bpb[v.name] = bits_per_byte(model, windows, n, realised_kernels(converted[v.name], n))
        state_bytes[v.name] = ssm_state_bytes(converted[v.name])
        state_per_channel[v.name] = f"{max(layer.state_size for layer in converted[v.name])} complex"
    results.update(bits_per_byte=bpb, state_bytes=state_bytes, state_per_channel=state_per_channel)
    results["etsc_vs_fft_rel"] = abs(bpb["etsc"] - bpb["fft"]) / bpb["fft"]
    sections["bits_per_byte"] = time.perf_counter() - wall - sum(sections.values())

    # 2. extrapolation: the same bytes in chunks of 1x, 2x, 4x n.
    extrapolation = {}
    for scale in (1, 2, 4):
        length = scale * n
        row = {"fft": bpb["fft"] if scale == 1 else bits_per_byte(model, windows, length)}
        for v in variants:
            if v.extrapolate:
                row[v.name] = bpb[v.name] if scale == 1 else bits_per_byte(
                    model, windows, length, realised_kernels(converted[v.name], length))
        extrapolation[f"{scale}x"] = row
    results["extrapolation"] = extrapolation
    sections["extrapolation"] = time.perf_counter() - wall - sum(sections.values())

    # 3. decode latency and state against length.
    decoders = [("fft", lambda max_len: FFTDecoder(model, max_len)),
                ("tnn_cache", lambda max_len: CacheDecoder(model, max_len))]
    decoders += [(v.name, lambda max_len, v=v: SSMDecoder(model, layers=converted[v.name]))
                 for v in variants if v.decode]
    prompt_source = test_tokens[: max(preset["lengths"])].long().to(device)[None]
    decode = {"lengths": list(preset["lengths"]), "timed_tokens": preset["timed"], "rows": {}}
    for name, build in decoders:
        rows = []
        for length in preset["lengths"]:
            decoder = build(length + preset["timed"] + 2)
            rows.append(time_decoder(decoder, prompt_source[:, : length - 1], preset["timed"]))
        decode["rows"][name] = rows
    spreads = [(r["p80"] - r["p20"]) / r["p50"] for rows in decode["rows"].values() for r in rows]
    decode["max_spread"] = max(spreads)
    decode["noisy"] = decode["max_spread"] > NOISY_SPREAD
    results["decode"] = decode
    sections["decode"] = time.perf_counter() - wall - sum(sections.values())

    # 4. greedy completion, every decoder against the FFT model's tokens.
    prompt = torch.tensor(list(PROMPT.encode()), device=device)[None]
    steps = preset["completion"]
    completion = {"prompt": PROMPT, "steps": steps, "text": {}, "identical": {}, "max_rel_logit_diff": {}}
    reference_tokens, reference_logits = greedy(FFTDecoder(model, prompt.shape[1] + steps), prompt, steps)
    completion["text"]["fft"] = bytes(reference_tokens[0].tolist()).decode(errors="replace")
    for name, build in decoders[2:]:
        tokens, logits = greedy(build(prompt.shape[1] + steps), prompt, steps)
        completion["text"][name] = bytes(tokens[0].tolist()).decode(errors="replace")
        completion["identical"][name] = bool(torch.equal(tokens, reference_tokens))
        ref = reference_logits.double()
        diff = (logits.double() - ref).norm(dim=-1) / ref.norm(dim=-1)
        completion["max_rel_logit_diff"][name] = float(diff.max())
    results["completion"] = completion
    exact = [v.name for v in variants if v.exact and v.decode]
    results["tokens_identical"] = all(completion["identical"][name] for name in exact)
    sections["completion"] = time.perf_counter() - wall - sum(sections.values())

    # 5. MemoryFormer variant against the Linear one.
    memory_model, memory_record = load_shipped("memory", device)
    modes = converted["etsc"][0].state_size
    comparison = {}
    for label, m, rec in (("linear", model, record), ("memory", memory_model, memory_record)):
        comparison[label] = {
            "bits_per_byte": bpb["fft"] if m is model else bits_per_byte(m, windows, n),
            "parameters": sum(p.numel() for p in m.parameters()),
            "flops_per_token": flops_per_token(m, modes),
            "train_steps": rec["steps"],
            "train_seconds": rec["seconds"],
            "val_bpb": rec["val_bpb"],
        }
    results["memory_vs_linear"] = comparison
    sections["memory_vs_linear"] = time.perf_counter() - wall - sum(sections.values())
    results["section_s"] = sections
    results["wall_s"] = time.perf_counter() - wall
    return results


def format_report(results: dict) -> str:
    """The printed tables."""
    n = results["n"]
    cfg = results["config"]
    lines = [
        f"Trained TNN byte model: {cfg['n_layers']} layers, D={cfg['d_model']}, n={n}, "
        f"{results['training']['parameters']} parameters, trained {results['training']['steps']} steps "
        f"({results['training']['seconds']:.0f} s, Python {results['trained_on']['python']} stdlib)",
        f"evaluated on the test split of Python {results['python']}'s stdlib ({results['stdlib']}): "
        f"{results['test_split']['files']} files, {results['eval_bytes']} bytes evaluated"
        + ("" if results["same_test_split_as_training"] else
           " (not the file list of the training machine's test split; no path here is a training path there)"),
        "",
        "1. bits per byte on the test split at the training length",
        f"{'model':>16} | {'bits/byte':>9} | {'rel. to fft':>11} | {'state / channel':>16} | {'state bytes':>11}",
    ]
    bpb, fft = results["bits_per_byte"], results["bits_per_byte"]["fft"]
    for name, value in bpb.items():
        lines.append(f"{name:>16} | {value:>9.5f} | {(value - fft) / fft:>+11.2e} | "
                     f"{results['state_per_channel'][name]:>17} | {results['state_bytes'][name]:>11}")
    lines.append("   (fft's state: the cached Toeplitz inputs at length n, the cheapest exact alternative)")
    lines += ["", "2. extrapolation: bits per byte on the same bytes in chunks of 1x, 2x, 4x n"]
    names = list(results["extrapolation"]["1x"])
    lines.append(f"{'chunk':>10} | " + " | ".join(f"{name:>12}" for name in names))
    for scale, row in results["extrapolation"].items():
        length = int(scale[:-1]) * n
        lines.append(f"{scale + ' ' + str(length):>10} | " + " | ".join(f"{row[name]:>12.5f}" for name in names))
    lines.append("   (beyond n the FFT model extrapolates its position MLP; ETSC realises the kernel wrapped with "
                 "period n + 1, damped)")
    decode = results["decode"]
    lines += ["", f"3. decode, batch 1: ms per token (p20 / median / p80 of {decode['timed_tokens']} tokens) "
              "and state bytes"]
    lines.append(f"{'decoder':>12} | " + " | ".join(f"{'L=' + str(length):>24}" for length in decode["lengths"]))
    for name, rows in decode["rows"].items():
        lines.append(f"{name:>12} | " + " | ".join(
            f"{r['p20']:>6.2f}/{r['p50']:>6.2f}/{r['p80']:>6.2f} {r['state_bytes']:>8}" for r in rows))
    if decode["noisy"]:
        lines.append(f"   WARNING: the machine is noisy (largest p80-p20 spread {decode['max_spread']:.0%} of the "
                     "median): do not trust these latencies")
    completion = results["completion"]
    lines += ["", f"4. greedy completion ({completion['steps']} bytes) of the prompt:", completion["prompt"]]
    for name, text in completion["text"].items():
        verdict = "" if name == "fft" else (
            f"   [identical to fft: {completion['identical'][name]}, "
            f"max rel logit diff {completion['max_rel_logit_diff'][name]:.1e}]")
        lines.append(f"--- {name}{verdict}")
        lines.append(text)
    lines += ["", "5. MemoryFormer channel mixing vs Linear (GLU), same training budget"]
    lines.append(f"{'model':>8} | {'bits/byte':>9} | {'params':>9} | {'chan.-mix FLOPs/tok':>19} | "
                 f"{'total FLOPs/tok':>15} | {'train steps':>11} | {'train s':>7}")
    for label, row in results["memory_vs_linear"].items():
        flops = row["flops_per_token"]
        lines.append(f"{label:>8} | {row['bits_per_byte']:>9.4f} | {row['parameters']:>9} | "
                     f"{flops['channel_mixing']:>19} | {flops['total']:>15} | {row['train_steps']:>11} | "
                     f"{row['train_seconds']:>7.0f}")
    lines += ["", f"tokens identical (fft vs etsc): {results['tokens_identical']}   "
              f"etsc vs fft bits/byte: {results['etsc_vs_fft_rel']:.1e} relative",
              f"wall {results['wall_s']:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in results["section_s"].items())
              + ")"]
    return "\n".join(lines)


def plot(results: dict, out_dir: Path) -> list[Path]:
    """``bits_per_byte_vs_state.png`` and ``decode_latency.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, value in results["bits_per_byte"].items():
        ax.scatter(results["state_bytes"][name], value, label=name, marker="s" if name == "fft" else "o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("decode state per sequence (bytes)")
    ax.set_ylabel("bits per byte (test split)")
    ax.set_title(f"trained TNN, n={results['n']}: accuracy vs state", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    first = out_dir / "bits_per_byte_vs_state.png"
    fig.savefig(first, dpi=120)
    plt.close(fig)

    decode = results["decode"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, rows in decode["rows"].items():
        mid = [r["p50"] for r in rows]
        err = [[r["p50"] - r["p20"] for r in rows], [r["p80"] - r["p50"] for r in rows]]
        ax.errorbar(decode["lengths"], mid, yerr=err, fmt="o-", capsize=3, label=name)
    ax.axvline(results["n"], color="gray", ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("ms / token (median, p20-p80)")
    ax.set_title(f"decode latency on {results['device']}" + (" (noisy machine)" if decode["noisy"] else ""),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    second = out_dir / "decode_latency.png"
    fig.savefig(second, dpi=120)
    plt.close(fig)
    return [first, second]

