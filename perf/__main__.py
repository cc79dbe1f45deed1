"""``python -m perf``: run the sweeps, write the long-format results, draw the plots.

    python -m perf                       # every family, full sizes (needs a GPU)
    python -m perf --only ssm,memory     # some families
    python -m perf --quick --out DIR     # tiny sizes on a CPU through the interpreter: tests the pipeline
    python -m perf --plot-only DIR       # redraw the plots from the results files (DIR/*.csv, or named files)
    python -m perf --budget 540          # stop starting new points after 540 s; results and plots still written

Each family writes its own results file, ``<family>.csv`` (``<family>_quick.csv`` under ``--quick``), so runs
of different families (one remote command each) never overwrite one another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import torch

FAMILIES = {
    "conversion": "perf.bench_conversion",
    "ssm": "perf.bench_ssm",
    "memory": "perf.bench_memory",
    "decode": "perf.bench_decode",
}
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes; runs on a CPU in the interpreter")
    parser.add_argument("--only", default="", help=f"comma-separated families from {sorted(FAMILIES)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: perf/results/<gpu>/ for results, plots/<gpu>/ for plots)")
    parser.add_argument("--plot-only", type=Path, nargs="+", default=None,
                        help="redraw the plots of results CSVs (files, or folders of *.csv)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds: points that would start later are skipped (the results file and the plots "
                             "are still written, after every family)")
    args = parser.parse_args(argv)
    unknown = sorted(set(filter(None, args.only.split(","))) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {sorted(FAMILIES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    from . import harness, plots

    families = [f for f in FAMILIES if not args.only or f in args.only.split(",")]
    if args.plot_only is not None:
        files = [f for path in args.plot_only for f in (sorted(path.glob("*.csv")) if path.is_dir() else [path])]
        rows = [row for f in files for row in harness.read_results(f)]
        out = args.out or (args.plot_only[0] if args.plot_only[0].is_dir() else args.plot_only[0].parent)
        paths = plots.draw_all(rows, out)
        print(f"{len(paths)} plots in {out}")
        return 0
    if device == "cpu" and not args.quick:
        print("python -m perf: full sweeps need a CUDA GPU; use --quick on a CPU", file=sys.stderr)
        return 2

    gpu = harness.device_slug(device)
    results_dir = args.out or REPO / "perf" / "results" / gpu
    plots_dir = args.out or REPO / "plots" / gpu
    floors = harness.measure_floors(device)
    deadline = None if args.budget is None else time.monotonic() + args.budget
    ctx = harness.Context(device=device, quick=args.quick, floors=floors,
                          progress=harness.progress_printer(args.budget), deadline=deadline)
    cut_short, written = [], []
    for family in families:
        module = importlib.import_module(FAMILIES[family])
        first_row, started = len(ctx.rows), time.monotonic()
        cut_short.append(harness.run_family(ctx, family, module.run))
        results = results_dir / (f"{family}_quick.csv" if args.quick else f"{family}.csv")
        harness.write_results(ctx.rows[first_row:], results)  # now: a killed run keeps what it measured
        written.append(f"{family}: {len(ctx.rows) - first_row} rows in {time.monotonic() - started:.0f} s -> "
                       f"{results}")
    paths = plots.draw_all(ctx.rows, plots_dir)
    print()
    print(plots.summary_table(ctx.rows, floors))
    print()
    print("\n".join(written))
    print(f"{len(paths)} plots -> {plots_dir}")
    for line in ctx.failures:
        print(f"failed point: {line}")
    for line in filter(None, cut_short):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
