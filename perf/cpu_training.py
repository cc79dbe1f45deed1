"""``python -m perf.cpu_training``: what training and decoding the application's models cost on this CPU.

In one run, side by side (so every ratio compares numbers taken under the same load):

* the machine's matrix-product rates: a 2048 x 2048 x 2048 GEMM in float32 and in bfloat16, medians;
* training steps of the shipped GLU and MemoryFormer configurations at the shipped batch (16 x 512 bytes,
  bfloat16 autocast as ``python -m etsc_triton.demo.train`` runs them): bytes per second and model FLOP/s
  (``etsc_triton.demo.train.model_flops_per_byte`` x bytes/s), as fractions of both GEMM rates;
* the memory layer's fused CPU path against ``nn.Linear`` of the same shapes (the GLU's two layers): forward at
  batch-1 decode (one token, one thread, no autograd) and forward + backward at the training batch (8192 tokens;
  Linear in float32 and under bfloat16 autocast).

Prints the figures and writes them all to ``cpu_training.json`` in ``--out``. Run it on a quiet machine: the
script reads the load average before and after and records it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import etsc_triton as et
from etsc_triton.demo.model import TNNLanguageModel
from etsc_triton.demo.scoring import torch_threads
from etsc_triton.demo.train import default_config, model_flops_per_byte

from .harness import wall_times_ms

BATCH, TOKENS_PER_WINDOW = 16, 512


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time (s) of ``fn`` over ``repeats`` calls after ``warmup``."""
    return statistics.median(wall_times_ms(fn, repeats, warmup)) / 1e3


def gemm_rates(size: int = 2048, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of a square GEMM in float32 and bfloat16."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        rates[name] = 2 * size**3 / median_seconds(lambda a=a, b=b: a @ b, repeats) / 1e9
    return rates


def training_step_rate(mixer: str, steps: int) -> dict[str, float]:
    """Median seconds per training step of the shipped configuration; bytes/s and model GFLOP/s from it."""
    torch.manual_seed(0)
    model = TNNLanguageModel(default_config(mixer))
    model.train()
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, 256, (BATCH, TOKENS_PER_WINDOW + 1))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_seconds(step, steps)
    bytes_per_second = BATCH * TOKENS_PER_WINDOW / seconds
    return {"step_s": seconds, "bytes_per_second": bytes_per_second,
            "model_gflops": model_flops_per_byte(model) * bytes_per_second / 1e9}


def layer_shapes() -> list[tuple[str, int, int]]:
    """``(name, d_in, d_out)`` of the shipped memory model's two channel-mixing layers."""
    config = default_config("memory")
    return [("glu_in", config.d_model, 2 * config.glu_hidden), ("glu_out", config.glu_hidden, config.d_model)]


def time_layer_pair(memory: torch.nn.Module, linear: torch.nn.Module, d_in: int, tokens: int,
                    repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds: the two layers at one token (forward, no autograd, one thread) and at ``tokens`` (forward +
    backward; the Linear also under bfloat16 autocast)."""
    one = torch.randn(1, d_in)
    with torch.no_grad(), torch_threads(1):
        decode = {"memory": median_seconds(lambda: memory(one), repeats * 50, warmup=50),
                  "linear_fp32": median_seconds(lambda: linear(one), repeats * 50, warmup=50)}
    x = torch.randn(tokens, d_in, requires_grad=True)

    def train(layer: torch.nn.Module, autocast: bool = False) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        y.float().sum().backward()

    batch = {"memory": median_seconds(lambda: train(memory), repeats),
             "linear_fp32": median_seconds(lambda: train(linear), repeats),
             "linear_bf16": median_seconds(lambda: train(linear, True), repeats)}
    return decode, batch


def layer_timings(tokens: int, repeats: int) -> list[dict[str, object]]:
    """The memory layer's CPU path against nn.Linear at the shipped memory model's two layer shapes."""
    code_length = default_config("memory").code_length
    rows = []
    for name, d_in, d_out in layer_shapes():
        torch.manual_seed(0)
        memory = et.nn.MemoryLayer(d_in, d_out, code_length=code_length)
        decode, batch = time_layer_pair(memory, torch.nn.Linear(d_in, d_out), d_in, tokens, repeats)
        rows.append({"layer": name, "d_in": d_in, "d_out": d_out, "decode_us": {k: v * 1e6 for k, v in decode.items()},
                     "train_ms": {k: v * 1e3 for k, v in batch.items()}})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.cpu_training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("perf/results/cpu"), help="folder for the JSON")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the batched figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    gemm = gemm_rates()
    models = {mixer: training_step_rate(mixer, args.steps) for mixer in ("glu", "memory")}
    layers = layer_timings(BATCH * TOKENS_PER_WINDOW, repeats=5)
    result = {"threads": args.threads, "gemm_gflops": gemm, "training": models, "layers": layers,
              "load_average": [load_before, os.getloadavg()[0]], "torch": torch.__version__}
    for row in models.values():
        row.update({f"fraction_of_{k}_gemm": row["model_gflops"] / v for k, v in gemm.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_training.json").write_text(json.dumps(result, indent=1))
    print(f"GEMM 2048: fp32 {gemm['fp32']:.0f} GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s "
          f"(load average {load_before:.2f} -> {result['load_average'][1]:.2f})")
    for mixer, row in models.items():
        print(f"train {mixer:>6}: {row['bytes_per_second']:,.0f} bytes/s, {row['model_gflops']:.0f} GFLOP/s = "
              f"{row['fraction_of_fp32_gemm']:.0%} of fp32 GEMM, {row['fraction_of_bf16_gemm']:.0%} of bf16 GEMM")
    for row in layers:
        decode, train = row["decode_us"], row["train_ms"]
        print(f"{row['layer']} {row['d_in']}x{row['d_out']}: decode T=1 memory {decode['memory']:.1f} us, "
              f"linear {decode['linear_fp32']:.1f} us | fwd+bwd T=8192 memory {train['memory']:.1f} ms, linear fp32 "
              f"{train['linear_fp32']:.1f} ms, bf16 {train['linear_bf16']:.1f} ms")
    print(f"written: {args.out / 'cpu_training.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
