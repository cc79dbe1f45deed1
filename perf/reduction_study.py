"""``python -m perf.reduction_study``: the order-reduction accuracy study at full size (n = 2048, 32 channels per
kernel family, ranks 1..32) on whatever device is present (a CPU is enough: it is an accuracy study).

Writes ``perf/results/accuracy/reduction.csv`` and draws ``plots/accuracy/reduction.png`` (``--out DIR`` puts
both in DIR). The same rows come out of ``python -m perf --only decode`` in the GPU sweep.

``--model`` also reduces the whole GPU-size demo model (6 layers, D = 512, n = 2048, random weights: 3072
channels) with ``tol=1e-5`` and with ``rank=4``, and writes ``reduction_model.csv``: the time, the rank, the worst
channel's relative kernel error, how many channels exceed 1e-5, and whether the greedy tokens of the reduced SSM
decoder equal the FFT model's over ``n - 16`` steps after a 16-token prompt (about two minutes of CPU).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from etsc_triton.demo.model import SSMDecoder, TNNConfig, TNNLanguageModel, generate

from . import bench_decode, harness

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.reduction_study", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSV and the plot")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--model", action="store_true", help="also reduce the whole demo-size model")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = harness.Context(device=device, quick=False, floors=harness.Floors(math.nan, math.nan))
    ctx.family = bench_decode.FAMILY
    bench_decode._reduction_study(ctx, args.channels, args.n, bench_decode.REDUCTION_RANKS)
    csv = (args.out or REPO / "perf" / "results" / "accuracy") / "reduction.csv"
    harness.write_results(ctx.rows, csv)
    paths = bench_decode._plot_reduction(ctx.rows, args.out or REPO / "plots" / "accuracy")
    for row in ctx.rows:
        print(row["provider"], row["metric"], row["config"], row["x_value"], f"{row['p50']:.3g}")
    print(f"{csv}, {paths[0]}")
    if args.model:
        model_ctx = harness.Context(device=device, quick=False, floors=harness.Floors(math.nan, math.nan))
        model_ctx.family = bench_decode.FAMILY
        model_reduction(model_ctx)
        model_csv = csv.with_name("reduction_model.csv")
        harness.write_results(model_ctx.rows, model_csv)
        for row in model_ctx.rows:
            print(row["provider"], row["metric"], f"{row['p50']:.4g}")
        print(model_csv)
    return 0


def model_reduction(ctx, prompt_length: int = 16) -> None:
    """The GPU-size demo model's 6 x 512 channels reduced by ``SSMDecoder(method="reduce")`` (float64 position
    MLP, :meth:`TNNBlock.coefficients`) with ``tol=1e-5`` and with ``rank=4``; the FFT model's greedy tokens
    decoded beside them."""
    config = TNNConfig(vocab_size=256, d_model=512, n_layers=6, n=2048, rpe_hidden=64, decay=0.99)
    model = TNNLanguageModel(config).to(ctx.device)
    prompt = torch.randint(0, config.vocab_size, (1, prompt_length), generator=torch.Generator().manual_seed(0))
    prompt = prompt.to(ctx.device)
    steps = config.n - prompt_length
    fft_tokens = generate(model, prompt, steps, decoder="fft")
    lags = torch.arange(config.n, dtype=torch.float64, device=ctx.device)
    with torch.no_grad():
        exact = [block.coefficients(dtype=torch.float64) * block.decay**lags for block in model.blocks]
    cfg = {"d": config.d_model, "layers": config.n_layers, "n": config.n, "channels": config.d_model * config.n_layers}
    etsc_modes = (config.n + 1) // 2
    for name, options in (("tol1e-05", {"tol": 1e-5}), ("rank4", {"rank": 4})):
        start = time.perf_counter()
        decoder = SSMDecoder(model, method="reduce", **options)
        seconds = time.perf_counter() - start
        rank = max(layer.state_size for layer in decoder.layers)
        scales = torch.cat([kernel.abs().amax(-1) for kernel in exact])
        relative = torch.cat([layer.report.kernel_error.to(torch.float64) for layer in decoder.layers]) / scales
        bound = torch.cat([layer.report.truncation_bound.to(torch.float64) for layer in decoder.layers]) / scales
        tokens = generate(model, prompt, steps, decoder="ssm", layers=decoder.layers)
        same = int((tokens == fft_tokens).all(dim=0).long().cumprod(0).sum())
        values = {
            "convert_seconds": seconds,
            "rank": rank,
            "state_ratio_vs_etsc": etsc_modes / rank,
            "worst_relative_kernel_error": float(relative.max()),
            "worst_relative_bound": float(bound.max()),
            "channels_over_1e-5": float((relative > 1e-5).sum()),
            "tokens_identical_to_fft": float(same),
            "tokens_compared": float(steps),
        }
        for metric, value in values.items():
            ctx.value(op="model_reduction", provider=f"reduce_{name}", metric=metric, value=float(value),
                      x_name="channels", x_value=config.d_model * config.n_layers, config=cfg)


if __name__ == "__main__":
    raise SystemExit(main())
