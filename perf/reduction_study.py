"""``python -m perf.reduction_study``: the order-reduction accuracy study at full size (n = 2048, 32 channels per
kernel family, ranks 1..32) on whatever device is present (a CPU is enough: it is an accuracy study).

Writes ``perf/results/accuracy/reduction.csv`` and draws ``plots/accuracy/reduction.png`` (``--out DIR`` puts
both in DIR). The same rows come out of ``python -m perf --only decode`` in the GPU sweep.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from . import bench_decode, harness

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.reduction_study", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSV and the plot")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--n", type=int, default=2048)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
