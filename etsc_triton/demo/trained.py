"""The main job on the trained models: where they stand, what the SSM conversions keep, decode cost, completions.

Loads the byte-level TNN language models shipped in the package (trained on the Python standard library by
``python -m etsc_triton.demo.train``; weights in ``etsc_triton/demo/weights/``), converts their Toeplitz layers to
diagonal SSMs in several ways and measures, on the test split of the running Python's stdlib, one section each:

0. where the model stands: its bits per byte beside what needs no learning (uniform, count models, gzip, xz);
1. bits per byte of the FFT model (the original), the exact ETSC SSM, order reductions and DFT-mode truncations,
   with the decode state each holds;
2. extrapolation: bits per byte on chunks of 1x, 2x and 4x the training length n;
3. decode latency at batch 1 (ms per token, p20 / median / p80 of single timed tokens) and state against length;
4. a greedy completion by every decoder, compared token by token with the FFT model's;
5. the MemoryFormer variant against the Linear (GLU) one: bits per byte, FLOPs, decode speed;
6. serving many requests at once: continuous batching (packed prompts, pooled decode steps) against one request
   at a time, and whether every request's tokens equal serving it alone.

How an SSM variant is scored: its converted layers' complex64 ``(lam, b)`` give the kernel they realise at every
lag (``Re sum_s b_s lam_s^j``, evaluated in float64), which the FFT path then applies; this equals running the
SSM recurrence over the window, up to summation order. The decode rows and the completion run the real decoders
(:class:`~etsc_triton.demo.model.SSMDecoder`: folded-DFT prefill, then one ``ssm_step`` per block per token).

Threads: the decode rows time single small steps, which are latency-bound: on two threads each tiny op waits for
the other core, and on a busy machine that wait dominates (a 3 ms step measured 100 ms beside a CPU hog). They
run on ``DECODE_THREADS`` (1) thread; the command line runs the whole job on ``JOB_THREADS`` (1) unless
``--threads`` says otherwise (:mod:`etsc_triton.demo.scoring` gives the measurements).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..nn.memory import MemoryLayer
from ..nn.toeplitz import ToeplitzSSM
from ..reference import realised_kernel64
from .checkpoint import load_shipped, shipped_paths
from .data import eval_windows, load_split, split_record
from .model import CacheDecoder, FFTDecoder, SSMDecoder, TNNLanguageModel
from .reductions import HORIZON
from .reductions import load as load_reductions
from .scoring import DECODE_THREADS, bits_per_byte, time_decoder, torch_threads
from .serving import Request, throughput

# Relative spread (p80 - p20) / median above which a latency row is flagged as untrustworthy.
NOISY_SPREAD = 0.5
UNIFORM_BPB = 8.0
# Bits per byte a reduced SSM may lose against the FFT model and still count as the same model.
SAME_MODEL = 1e-3
PROMPT = "import os\n\n\nclass Parser:\n    def __init__(self"

PRESETS = {
    # 4 windows of 4n + 1 bytes: 8 KiB of test text at n = 512, the same bytes at every length.
    "full": dict(windows=4, ranks=(8, 32), tols=(1e-3, 1e-4), lengths=(64, 512, 2048), timed=9, completion=160,
                 requests=24, rows=8),
    "quick": dict(windows=1, ranks=(8,), tols=(1e-3,), lengths=(32, 128), timed=3, completion=24, requests=6,
                  rows=3),
}


@dataclass(frozen=True)
class SSMVariant:
    """One way to turn the model's Toeplitz layers into SSMs.

    Attributes:
        name: row label and JSON key (``"etsc"``, ``"truncated_r8"``, ...).
        convert: converts one block's :class:`~etsc_triton.nn.toeplitz.ToeplitzSSM` in place (sets its ``lam``,
            ``b``), e.g. ``lambda layer: layer.convert(rank=8)``.
        how: what the row is, for the report (``"exact ETSC"``, ``"reduced to tol 1e-03"``, ...).
        exact: claims the FFT model's outputs (its greedy tokens are expected to be identical).
        extrapolate: gets rows in the extrapolation table (2x, 4x the training length).
        decode: gets a decode-latency row and a completion.
        horizon: the converted layers hold ``horizon * n`` taps (the position MLP's kernel beyond n, which a
            reduced SSM can follow and the ETSC wrap cannot).
        taps_dtype: the dtype the position MLP is evaluated in for the taps (None: its own, float32). A reduction
            takes float64: it fits the MLP's function, not the float32 taps' rounding noise.
        tol: the relative kernel tolerance of a reduction (None otherwise).
        stored: per block ``(lam, b, bound)`` of this reduction computed before (:mod:`.reductions`), adopted
            instead of reducing here; None: ``convert`` runs.
        reduce_core_s: the CPU-core seconds the stored reduction took where it was computed.
    """

    name: str
    convert: Callable[[ToeplitzSSM], object]
    how: str
    exact: bool = False
    extrapolate: bool = False
    decode: bool = False
    horizon: int = 1
    taps_dtype: torch.dtype | None = None
    tol: float | None = None
    stored: list | None = None
    reduce_core_s: float | None = None


def ssm_variants(tols: tuple[float, ...], stored: dict[float, tuple[list, float]] | None = None) -> list[SSMVariant]:
    """The exact ETSC conversion and the order reductions (``ToeplitzSSM.convert(method="reduce", tol=...)``,
    fitted over 4n lags; renamed ``reduced_r<rank>`` once converted, the finest one decoded). ``stored``: per
    tolerance, the reduction computed before and its core-seconds (:func:`.reductions.load`)."""
    stored = stored or {}
    variants = [SSMVariant("etsc", lambda layer: layer.convert(), "exact ETSC (folded DFT modes)", exact=True,
                           extrapolate=True, decode=True)]
    for tol in tols:
        layers, core_s = stored.get(tol, (None, None))
        variants.append(SSMVariant(
            f"reduced_tol{tol:g}", lambda layer, tol=tol: layer.convert(method="reduce", tol=tol),
            f"order reduction, tol {tol:.0e} over {HORIZON}n lags" + (" (stored)" if layers else ""),
            extrapolate=True, decode=tol == min(tols), horizon=HORIZON, taps_dtype=torch.float64, tol=tol,
            stored=layers, reduce_core_s=core_s))
    return variants


def truncated_variants(ranks) -> list[SSMVariant]:
    """DFT-mode truncations (``ToeplitzSSM.convert(rank=r)``) at ``ranks``."""
    return [SSMVariant(f"truncated_r{r}", lambda layer, r=r: layer.convert(rank=r), f"{r} largest DFT modes kept")
            for r in sorted(set(ranks))]


def convert_layers(model: TNNLanguageModel, variant: SSMVariant) -> list[ToeplitzSSM]:
    """One converted :class:`ToeplitzSSM` per block of ``model``, by ``variant.convert``."""
    layers = []
    for i, block in enumerate(model.blocks):
        layer = ToeplitzSSM(block.coefficients(variant.horizon * block.n, dtype=variant.taps_dtype), block.decay)
        if variant.stored is not None:
            layer.adopt(*variant.stored[i])  # measures the kernel error afresh: a bound that fails shows
        else:
            variant.convert(layer)
        layers.append(layer)
    return layers


def convert_all(model: TNNLanguageModel, tols, ranks, stored: dict[float, tuple[list, float]] | None = None
                ) -> tuple[list[SSMVariant], dict[str, list[ToeplitzSSM]]]:
    """Every variant converted: the reductions renamed by the rank they reached (the largest over the layers; of
    two at one rank the finer tolerance is kept, decoded if either was), the truncations at the preset ranks and
    at the reductions' ranks, for the like-for-like rows. ``stored``: reductions computed before, by tolerance."""
    variants: list[SSMVariant] = []
    converted: dict[str, list[ToeplitzSSM]] = {}
    for variant in ssm_variants(tols, stored):
        layers = convert_layers(model, variant)
        if variant.tol is not None:
            variant = replace(variant, name=f"reduced_r{max(layer.state_size for layer in layers)}")
        same = [i for i, v in enumerate(variants) if v.name == variant.name]
        if same:  # two tolerances reached one rank: the finer fit replaces the coarser
            kept = variants[same[0]]
            finer = variant if variant.tol < kept.tol else kept
            variants[same[0]] = replace(finer, decode=variant.decode or kept.decode)
            if finer is kept:
                continue
        else:
            variants.append(variant)
        converted[variant.name] = layers
    reduced_ranks = [int(v.name.removeprefix("reduced_r")) for v in variants if v.tol is not None]
    for variant in truncated_variants([*ranks, *reduced_ranks]):
        variants.append(variant)
        converted[variant.name] = convert_layers(model, variant)
    return variants, converted


def realised_kernels(layers: list[ToeplitzSSM], length: int) -> list[torch.Tensor]:
    """The kernels ``[D, length]`` (float32) the converted layers realise at lags ``0 .. length-1``."""
    return [realised_kernel64(layer.lam, layer.b, length).float() for layer in layers]


def ssm_state_bytes(layers: list[ToeplitzSSM]) -> int:
    """Decode state of one sequence: every layer's complex64 modes."""
    return sum(layer.channels * layer.state_size * 8 for layer in layers)


def cache_state_bytes(model: TNNLanguageModel, length: int) -> int:
    """Decode state of the TNN cache for one sequence of ``length`` tokens: every block's Toeplitz inputs."""
    return model.config.n_layers * length * model.config.d_model * 4


def flops_per_token(model: TNNLanguageModel, modes: int) -> dict[str, int]:
    """Multiply-adds x 2 per token of one decode step.

    ``channel_mixing``: the GLU's two layers (a :class:`MemoryLayer` costs ``2 K out`` for the weighted sum of
    its K table rows plus ``5 in`` to hash and score, an ``nn.Linear`` ``2 in out``); ``other_linear``: the
    mixing projections and the head; ``token_mixing``: an ETSC step with ``modes`` complex modes per channel
    (8 real FLOPs per mode); ``total`` their sum.
    """

    def layer_flops(layer: torch.nn.Module) -> int:
        if isinstance(layer, MemoryLayer):
            return 2 * layer.num_tables * layer.out_features + 5 * layer.in_features
        return 2 * layer.in_features * layer.out_features

    channel = sum(layer_flops(b.glu_in) + layer_flops(b.glu_out) for b in model.blocks)
    other = sum(layer_flops(b.mix_in) + layer_flops(b.mix_out) for b in model.blocks) + layer_flops(model.head)
    token = 8 * modes * model.config.d_model * model.config.n_layers
    return {"channel_mixing": channel, "other_linear": other, "token_mixing": token,
            "total": channel + other + token}


@torch.no_grad()
def greedy(decoder: Any, prompt: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens ``[B, steps]`` and the logits that chose them ``[B, steps, V]``."""
    logits = decoder.prefill(prompt)
    tokens, all_logits = [], []
    for i in range(steps):
        all_logits.append(logits.clone())
        tokens.append(logits.argmax(-1))
        if i + 1 < steps:
            logits = decoder.step(tokens[-1])
    return torch.stack(tokens, 1), torch.stack(all_logits, 1)


def standing(record: dict[str, Any], quick_bpb: float, eval_bytes: int) -> dict[str, Any]:
    """Section 0: the model's bits per byte beside the baselines of its training record (same test bytes)."""
    return {"uniform": UNIFORM_BPB, "baselines": record.get("baselines", {}), "test_bpb": record.get("test_bpb"),
            "test_scoring": record.get("test_scoring"), "here": quick_bpb, "here_bytes": eval_bytes}


def bound_holds(layer: ToeplitzSSM) -> bool:
    """Whether a reduced layer's certified bound holds: the kernel its complex64 modes realise, evaluated in
    float64, against the float64 kernel of its taps, at every lag of the horizon."""
    error = (realised_kernel64(layer.lam, layer.b, layer.n) - layer.kernel(layer.n, tail="ssm", dtype=torch.float64))
    return bool((error.abs().amax(-1) <= layer.report.truncation_bound).all())


def conversion_section(model: TNNLanguageModel, windows: torch.Tensor, variants: list[SSMVariant],
                       converted: dict[str, list[ToeplitzSSM]]) -> dict[str, Any]:
    """Section 1: bits per byte at the training length, the state each decoder holds for one sequence of n
    tokens, and the smallest reduction that stays the same model (within ``SAME_MODEL`` relative)."""
    n = model.config.n
    fft = bits_per_byte(model, windows, n)
    rows = {"fft": {"bits_per_byte": fft, "how": "the original: FFT convolutions over the whole prefix per token",
                    "state": f"the {n} tokens (int64)", "state_bytes": 8 * n},
            "tnn_cache": {"bits_per_byte": fft, "how": "the original with its cache: one dot product per token",
                          "state": f"{n} cached inputs x D reals per layer",
                          "state_bytes": cache_state_bytes(model, n)}}
    for v in variants:
        layers = converted[v.name]
        modes = max(layer.state_size for layer in layers)
        rows[v.name] = {"bits_per_byte": bits_per_byte(model, windows, n, realised_kernels(layers, n)),
                        "how": v.how, "tol": v.tol, "modes": modes, "state": f"{modes} complex modes x D per layer",
                        "state_bytes": ssm_state_bytes(layers)}
        if v.tol is not None:
            rows[v.name].update(
                stored=v.stored is not None, reduce_core_s=v.reduce_core_s,
                channel_ranks=sorted(int(r) for layer in layers for r in layer.channel_ranks.unique()),
                bound_holds=all(bound_holds(layer) for layer in layers))
    for row in rows.values():
        row["rel_to_fft"] = (row["bits_per_byte"] - fft) / fft
    same = [name for name, row in rows.items() if row.get("tol") is not None and abs(row["rel_to_fft"]) <= SAME_MODEL]
    smallest = min(same, key=lambda name: rows[name]["state_bytes"], default=None)
    return {"rows": rows, "smallest_same_reduction": smallest, "etsc_vs_fft_rel": abs(rows["etsc"]["rel_to_fft"])}


def extrapolation_section(model: TNNLanguageModel, windows: torch.Tensor, variants: list[SSMVariant],
                          converted: dict[str, list[ToeplitzSSM]], at_n: dict[str, float]) -> dict[str, Any]:
    """Section 2: the same bytes in chunks of 1x, 2x, 4x n (``at_n``: the 1x figures, already measured)."""
    n = model.config.n
    table = {}
    for scale in (1, 2, 4):
        length = scale * n
        row = {"fft": at_n["fft"] if scale == 1 else bits_per_byte(model, windows, length)}
        for v in variants:
            if v.extrapolate:
                row[v.name] = at_n[v.name] if scale == 1 else bits_per_byte(
                    model, windows, length, realised_kernels(converted[v.name], length))
        table[f"{scale}x"] = row
    return table


def decoders_of(model: TNNLanguageModel, variants: list[SSMVariant], converted: dict[str, list[ToeplitzSSM]]
                ) -> dict[str, Callable[[int], Any]]:
    """Decoder builders by row name (``max_len -> decoder``): the FFT model, the TNN cache, every decoded SSM."""
    builders: dict[str, Callable[[int], Any]] = {
        "fft": lambda max_len: FFTDecoder(model, max_len),
        "tnn_cache": lambda max_len: CacheDecoder(model, max_len),
    }
    for v in variants:
        if v.decode:
            builders[v.name] = lambda max_len, layers=converted[v.name]: SSMDecoder(model, layers=layers)
    return builders


def decode_section(builders: dict[str, Callable[[int], Any]], prompt_source: torch.Tensor, lengths, timed: int,
                   threads: int = DECODE_THREADS) -> dict[str, Any]:
    """Section 3: per-token latency at batch 1 after a prompt of ``length - 1`` tokens, on ``threads`` threads."""
    rows = {}
    with torch_threads(threads):
        for name, build in builders.items():
            rows[name] = [time_decoder(build(length + timed + 2), prompt_source[:, : length - 1], timed)
                          for length in lengths]
    spread = max((r["p80"] - r["p20"]) / r["p50"] for row in rows.values() for r in row)
    return {"lengths": list(lengths), "timed_tokens": timed, "threads": threads, "rows": rows,
            "max_spread": spread, "noisy": spread > NOISY_SPREAD}


def completion_section(builders: dict[str, Callable[[int], Any]], prompt_text: str, steps: int,
                       device: torch.device) -> dict[str, Any]:
    """Section 4: greedy completion by every decoder, token by token against the FFT model's."""
    prompt = torch.tensor(list(prompt_text.encode()), device=device)[None]
    reference_tokens, reference_logits = greedy(builders["fft"](prompt.shape[1] + steps), prompt, steps)
    result: dict[str, Any] = {"prompt": prompt_text, "steps": steps,
                              "text": {"fft": bytes(reference_tokens[0].tolist()).decode(errors="replace")},
                              "identical": {}, "max_rel_logit_diff": {}}
    for name, build in builders.items():
        if name == "fft":
            continue
        tokens, logits = greedy(build(prompt.shape[1] + steps), prompt, steps)
        result["text"][name] = bytes(tokens[0].tolist()).decode(errors="replace")
        result["identical"][name] = bool(torch.equal(tokens, reference_tokens))
        ref = reference_logits.double()
        result["max_rel_logit_diff"][name] = float(((logits.double() - ref).norm(dim=-1) / ref.norm(dim=-1)).max())
    return result


def memory_section(models: dict[str, tuple[TNNLanguageModel, dict[str, Any]]], windows: torch.Tensor,
                   linear_bpb: float, prompt_source: torch.Tensor, length: int, timed: int) -> dict[str, Any]:
    """Section 5: the Linear (GLU) and MemoryFormer models on the same bytes, their FLOPs, and their ETSC decode
    at batch 1 (``DECODE_THREADS``) after ``length - 1`` prompt tokens."""
    table = {}
    for label, (model, record) in models.items():
        n = model.config.n
        decoder = SSMDecoder(model)
        with torch_threads(DECODE_THREADS):
            latency = time_decoder(decoder, prompt_source[:, : length - 1], timed)
        table[label] = {
            "bits_per_byte": linear_bpb if label == "linear" else bits_per_byte(model, windows, n),
            "test_bpb": record.get("test_bpb"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "flops_per_token": flops_per_token(model, decoder.layers[0].state_size),
            "decode_ms": latency,
            "train_bytes": record.get("bytes_seen"),
            "train_bytes_per_second": record.get("bytes_per_second"),
            "train_steps": [record.get("steps"), record.get("target_steps")],
        }
    return table


def test_requests(tokens: torch.Tensor, count: int, seed: int = 0) -> list[Request]:
    """``count`` requests whose prompts are 16 to 128 bytes of the test split (at random offsets) and which ask
    for 16 to 64 tokens, arriving about two per engine step."""
    gen = torch.Generator().manual_seed(seed)
    requests, arrival = [], 0.0
    for rid in range(count):
        length = int(torch.randint(16, 129, (), generator=gen))
        start = int(torch.randint(0, tokens.numel() - length, (), generator=gen))
        arrival += float(torch.empty(()).exponential_(2.0, generator=gen))
        requests.append(Request(rid, tokens[start : start + length].long(), int(torch.randint(16, 65, (),
                                generator=gen)), int(arrival)))
    return requests


def serving_section(model: TNNLanguageModel, layers: list[ToeplitzSSM], name: str, requests: list[Request],
                    rows: int) -> dict[str, Any]:
    """Section 6: the stream of ``requests`` served by continuous batching with ``rows`` pool rows, and one at a
    time, through the SSM ``layers`` (row ``name``), on ``DECODE_THREADS``; tokens compared request by request."""
    together: dict[int, torch.Tensor] = {}
    alone: dict[int, torch.Tensor] = {}
    with torch_threads(DECODE_THREADS):
        batched = throughput(model, requests, max_running=rows, prefill="scan", repeats=1, layers=layers,
                             outputs=together)
        single = throughput(model, requests, max_running=1, prefill="scan", repeats=1, layers=layers, outputs=alone)
    return {"layers": name, "requests": len(requests), "rows": rows, "continuous": batched, "one_at_a_time": single,
            "speedup": batched["tokens_per_s"] / single["tokens_per_s"],
            "tokens_equal_alone": all(torch.equal(together[r.rid], alone[r.rid]) for r in requests)}


def run(quick: bool = False, device: str | None = None) -> dict[str, Any]:
    """Every figure of the main job, as the dictionary ``--json`` writes."""
    wall = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = PRESETS["quick" if quick else "full"]
    model, record = load_shipped("glu", dev)
    memory_model = load_shipped("memory", dev)
    n = model.config.n
    here = split_record()
    test_tokens = load_split("test")
    windows = eval_windows(test_tokens, preset["windows"], 4 * n + 1).to(dev)
    prompt_source = test_tokens[: max(preset["lengths"])].long().to(dev)[None]
    sections = {"model load": time.perf_counter() - wall}

    def timed(name: str, value: Any) -> Any:
        sections[name] = time.perf_counter() - wall - sum(sections.values())
        return value

    weights = shipped_paths("glu")[0]
    stored = {tol: found for tol in preset["tols"]
              if (found := load_reductions(tol, model.config.n_layers, weights)) is not None}
    variants, converted = timed("conversions", convert_all(model, preset["tols"], preset["ranks"], stored))
    conversion = timed("bits per byte", conversion_section(model, windows, variants, converted))
    at_n = {name: row["bits_per_byte"] for name, row in conversion["rows"].items()}
    extrapolation = timed("extrapolation", extrapolation_section(model, windows, variants, converted, at_n))
    builders = decoders_of(model, variants, converted)
    decode = timed("decode", decode_section(builders, prompt_source, preset["lengths"], preset["timed"]))
    completion = timed("completion", completion_section(builders, PROMPT, preset["completion"], dev))
    memory = timed("memory vs linear", memory_section(
        {"linear": (model, record), "memory": memory_model}, windows, at_n["fft"], prompt_source,
        max(preset["lengths"]), preset["timed"]))
    served = min((v for v in variants if v.tol is not None and v.decode), key=lambda v: v.tol, default=variants[0])
    serving = timed("serving", serving_section(model, converted[served.name], served.name,
                                               test_requests(test_tokens, preset["requests"]), preset["rows"]))
    exact = [v.name for v in variants if v.exact and v.decode]
    return {
        "n": n,
        "config": asdict(model.config),
        "device": dev.type,
        "threads": torch.get_num_threads(),
        "python": here["python"],
        "test_split": here["splits"]["test"],
        "trained_on": {"python": record["data"]["python"], "test_sha256": record["data"]["splits"]["test"]["sha256"]},
        "same_test_split_as_training": here["splits"]["test"]["sha256"] == record["data"]["splits"]["test"]["sha256"],
        "eval_bytes": windows.shape[0] * (windows.shape[1] - 1),
        "training": {k: record.get(k) for k in ("parameters", "steps", "bytes_seen", "epochs", "seconds",
                                                 "final_train_bpb", "val_bpb", "test_bpb", "command")},
        "standing": standing(record, at_n["fft"], windows.shape[0] * (windows.shape[1] - 1)),
        "baselines": record.get("baselines", {}),
        "test_bpb": {"linear": record.get("test_bpb"), "memory": memory_model[1].get("test_bpb")},
        "bits_per_byte": at_n,
        "conversion": conversion,
        "etsc_vs_fft_rel": conversion["etsc_vs_fft_rel"],
        "extrapolation": extrapolation,
        "decode": decode,
        "completion": completion,
        "tokens_identical": all(completion["identical"][name] for name in exact),
        "memory_vs_linear": memory,
        "serving": serving,
        "section_s": sections,
        "wall_s": time.perf_counter() - wall,
    }


def _bytes(value: float) -> str:
    for unit, size in (("MB", 2**20), ("KB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def format_summary(results: dict[str, Any]) -> str:
    """The headline figures as the README's markdown list (the README quotes this text, and a test checks it)."""
    stand, rows = results["standing"], results["conversion"]["rows"]
    base = stand["baselines"]
    smallest = results["conversion"]["smallest_same_reduction"]
    reduced, etsc = rows[smallest], rows["etsc"]
    decode, serving = results["decode"], results["serving"]
    at = {name: decode_rows[-1]["p50"] for name, decode_rows in decode["rows"].items()}
    ssm_rows = " and ".join(f"{name} {at[name]:.1f} ms" for name in at if name not in ("fft", "tnn_cache"))
    return "\n".join([
        f"- **{stand['test_bpb']:.3f} bits per byte** on the whole test split of the standard library (gzip -9 per "
        f"file {base['gzip_9_per_file']:.3f}, xz -9e per file {base['xz_9e_per_file']:.3f}, xz -9e on the "
        f"files concatenated {base['xz_9e_concatenated']:.3f}).",
        f"- Exact ETSC conversion: the same bits per byte ({results['etsc_vs_fft_rel']:.1e} relative) and the same "
        f"greedy tokens. Order reduction: **{reduced['modes']} modes per channel** instead of {etsc['modes']} "
        f"({etsc['state_bytes'] / reduced['state_bytes']:.0f}x less state) within {SAME_MODEL:.1%} of the bits per "
        f"byte ({reduced['rel_to_fft']:+.1e} relative), every layer's certified bound holding: "
        f"{reduced['bound_holds']}.",
        f"- Decode at batch 1 on {decode['threads']} thread, {decode['lengths'][-1]} tokens in: FFT model "
        f"{at['fft']:.1f} ms per token, TNN cache {at['tnn_cache']:.1f} ms, {ssm_rows}: the SSMs' cost and state "
        "do not grow with the length.",
        f"- Serving {serving['requests']} test-split requests: continuous batching {serving['speedup']:.2f}x one "
        f"request at a time; every request's tokens equal serving it alone: {serving['tokens_equal_alone']}.",
        f"- The whole job: {results['wall_s']:.0f} s on {results['threads']} CPU thread.",
    ])


def format_report(results: dict[str, Any]) -> str:
    """The printed tables (every figure the README quotes comes from here)."""
    n, cfg, training = results["n"], results["config"], results["training"]
    stand = results["standing"]
    base = stand["baselines"]
    lines = [
        f"Trained TNN byte model (GLU channel mixing): {cfg['n_layers']} layers, D={cfg['d_model']}, n={n}, "
        f"{training['parameters']:,} parameters, trained {training['steps']} steps on "
        f"{(training['bytes_seen'] or 0) / 1e6:.0f} MB of the stdlib train split ({training['seconds'] / 60:.0f} min "
        f"of CPU training, Python {results['trained_on']['python']})",
        f"evaluated here on {results['eval_bytes']:,} bytes of the test split of Python {results['python']}'s stdlib "
        f"({results['test_split']['files']} files, {results['test_split']['bytes']:,} bytes)"
        + ("" if results["same_test_split_as_training"] else
           " (not the file list of the training machine's test split; no path here is a training path there)"),
        "",
        "0. where the model stands, bits per byte (lower is better; the baselines need no training)",
        f"{'uniform (no model)':>40} | {stand['uniform']:.3f}",
    ]
    if base:
        lines += [
            f"{'adaptive count models, order 0/1/2/3':>40} | {base['count_order0']:.3f} / {base['count_order1']:.3f} / "
            f"{base['count_order2']:.3f} / {base['count_order3']:.3f}",
            f"{'gzip -9, each file':>40} | {base['gzip_9_per_file']:.3f}",
            f"{'xz -9e, each file / concatenated':>40} | {base['xz_9e_per_file']:.3f} / "
            f"{base['xz_9e_concatenated']:.3f}",
        ]
    if stand["test_bpb"] is not None:
        lines.append(f"{'this model, the whole test split':>40} | {stand['test_bpb']:.3f}   (training record: every "
                     f"byte scored once, windows of {stand['test_scoring']['window']}, stride "
                     f"{stand['test_scoring']['stride']})")
    lines.append(f"{'this model, the bytes evaluated here':>40} | {stand['here']:.3f}")

    conversion = results["conversion"]
    lines += ["", f"1. the converted SSMs: bits per byte on the same bytes at the training length n={n}, and the "
                  "decode state each holds for one sequence of n tokens"]
    lines.append(f"{'model':>14} | {'bits/byte':>9} | {'rel. to fft':>11} | {'state bytes':>11} | how")
    for name, row in conversion["rows"].items():
        lines.append(f"{name:>14} | {row['bits_per_byte']:>9.5f} | {row['rel_to_fft']:>+11.2e} | "
                     f"{_bytes(row['state_bytes']):>11} | {row['how']}; state: {row['state']}")
    smallest = conversion["smallest_same_reduction"]
    if smallest:
        row, etsc = conversion["rows"][smallest], conversion["rows"]["etsc"]
        lines.append(f"   smallest reduction within {SAME_MODEL:.1%} of fft: {smallest} (tol {row['tol']:.0e}): "
                     f"{row['modes']} modes per channel against ETSC's {etsc['modes']} "
                     f"({etsc['state_bytes'] / row['state_bytes']:.0f}x less state)")
    else:
        lines.append(f"   no reduction here stays within {SAME_MODEL:.1%} of fft")
    for name, row in conversion["rows"].items():
        if row.get("tol") is not None:
            source = (f"stored, computed in {row['reduce_core_s']:.0f} CPU-core seconds by python -m "
                      "etsc_triton.demo.reductions" if row["stored"] else "computed here")
            lines.append(f"   {name}: channel ranks {min(row['channel_ranks'])}-{max(row['channel_ranks'])}, "
                         f"{source}; every layer's kernel error measured here within its certified bound: "
                         f"{row['bound_holds']}")

    lines += ["", "2. extrapolation: bits per byte on the same bytes in chunks of 1x, 2x, 4x n"]
    names = list(results["extrapolation"]["1x"])
    lines.append(f"{'chunk':>10} | " + " | ".join(f"{name:>12}" for name in names))
    for scale, row in results["extrapolation"].items():
        length = int(scale[:-1]) * n
        lines.append(f"{scale + ' ' + str(length):>10} | " + " | ".join(f"{row[name]:>12.5f}" for name in names))
    lines.append("   (beyond n the FFT model extrapolates its position MLP; ETSC realises the kernel wrapped with "
                 "period n + 1, damped; a reduction fitted over 4n lags follows the MLP)")

    decode = results["decode"]
    lines += ["", f"3. decode at batch 1 on {decode['threads']} thread: ms per token (p20 / median / p80 of "
              f"{decode['timed_tokens']} single tokens) and the state held, by sequence length"]
    lines.append(f"{'decoder':>14} | " + " | ".join(f"{'L=' + str(length):>29}" for length in decode["lengths"]))
    for name, rows in decode["rows"].items():
        lines.append(f"{name:>14} | " + " | ".join(
            f"{r['p20']:>6.2f}/{r['p50']:>6.2f}/{r['p80']:>6.2f} {_bytes(r['state_bytes']):>9}" for r in rows))
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

    memory = results["memory_vs_linear"]
    lines += ["", "5. MemoryFormer channel mixing against Linear (GLU), trained on the same bytes in the same order "
              "(steps: taken / the schedule's)"]
    lines.append(f"{'model':>8} | {'steps':>9} | {'bits/byte here':>14} | {'whole test':>10} | {'params':>9} | "
                 f"{'chan.-mix FLOPs/token':>21} | {'ETSC decode ms/token':>20}")
    for label, row in memory.items():
        whole = f"{row['test_bpb']:.4f}" if row["test_bpb"] is not None else "-"
        steps = "/".join("?" if s is None else str(s) for s in row.get("train_steps", [None, None]))
        lines.append(f"{label:>8} | {steps:>9} | {row['bits_per_byte']:>14.4f} | {whole:>10} | "
                     f"{row['parameters']:>9,} | {row['flops_per_token']['channel_mixing']:>21,} | "
                     f"{row['decode_ms']['p50']:>20.2f}")
    serving = results["serving"]
    lines += ["", f"6. serving {serving['requests']} requests of the test split (prompts 16-128 bytes, 16-64 new "
              f"tokens, arriving over time) through {serving['layers']}, {DECODE_THREADS} thread"]
    for label, key in (("continuous batching, " + str(serving["rows"]) + " rows", "continuous"),
                       ("one request at a time", "one_at_a_time")):
        row = serving[key]
        lines.append(f"{label:>32} | {row['tokens_per_s']:>8.1f} tokens/s | {row['steps']:>4} engine steps")
    lines.append(f"   {serving['speedup']:.2f}x; every request's tokens equal serving it alone: "
                 f"{serving['tokens_equal_alone']}")
    lines += ["", f"tokens identical (fft vs etsc): {results['tokens_identical']}   "
              f"etsc vs fft bits/byte: {results['etsc_vs_fft_rel']:.1e} relative",
              f"wall {results['wall_s']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in results["section_s"].items())
              + ")"]
    return "\n".join(lines)


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """``bits_per_byte_vs_state.png`` and ``decode_latency.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, row in results["conversion"]["rows"].items():
        ax.scatter(row["state_bytes"], row["bits_per_byte"], label=name, marker="s" if name == "fft" else "o")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("decode state per sequence of n tokens (bytes)")
    ax.set_ylabel("bits per byte (test split)")
    ax.set_title(f"trained TNN, n={results['n']}: accuracy against decode state", fontsize=10)
    first = _save(fig, ax, out_dir / "bits_per_byte_vs_state.png")

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
    ax.set_title(f"decode latency at batch 1 on {results['device']}, {decode['threads']} thread"
                 + (" (noisy machine)" if decode["noisy"] else ""), fontsize=10)
    return [first, _save(fig, ax, out_dir / "decode_latency.png")]


def _save(fig: Any, ax: Any, path: Path) -> Path:
    """Grid, legend, layout; write ``path`` and close the figure."""
    import matplotlib.pyplot as plt

    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
