"""``python -m etsc_triton.demo``: the main job. Serve a Toeplitz language model in constant time per token, exactly.

By default it runs on the trained byte-level models shipped in the package (:mod:`etsc_triton.demo.trained`:
where the model stands against gzip, xz and count models; bits per byte of the FFT model, the exact ETSC SSM,
order-reduced and truncated SSMs on the stdlib's test split; extrapolation; decode latency; completions;
MemoryFormer against Linear), in under 2 minutes on a 2-core CPU. ``--random`` runs the random-weight timing demo
(:mod:`etsc_triton.demo.random_demo`) at any size, GPU-sized on CUDA.

    python -m etsc_triton.demo                              # the trained models
    python -m etsc_triton.demo --quick --json out.json      # the trained models, a few test bytes (seconds)
    python -m etsc_triton.demo --random                     # random weights: GPU if present, else CPU-sized
    python -m etsc_triton.demo --random --quick --json out.json --out plots/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import random_demo, trained
from .devices import device_slug
from .scoring import JOB_THREADS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m etsc_triton.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few test bytes / a tiny random model (seconds)")
    parser.add_argument("--random", action="store_true",
                        help="the random-weight timing demo (GPU-sized on CUDA) instead of the trained models")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON to this path")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the plots (default: demo_plots/<device>/ in the current folder)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="model and prompt seed (--random)")
    parser.add_argument("--threads", type=int, default=JOB_THREADS,
                        help=f"torch CPU threads (default {JOB_THREADS}: the job's ops are small, and on a busy "
                             "machine two contended threads made them up to 45x slower; decode rows run on one)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def _finish(results: dict[str, Any], json_path: Path | None) -> int:
    """Write ``--json`` when asked; the exit status says whether the greedy tokens agreed."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
        print(f"json: {json_path}")
    return 0 if results["tokens_identical"] else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"running on {args.threads} CPU thread{'s' if args.threads > 1 else ''} (--threads)")
    if args.random:
        results = random_demo.run(quick=args.quick, device=args.device, seed=args.seed)
        print(random_demo.format_table(results))
        paths = [random_demo.plot(results, args.out or Path("demo_plots") / device_slug(results["device"]))]
    else:
        results = trained.run(quick=args.quick, device=args.device)
        print(trained.format_report(results))
        paths = trained.plot(results, args.out or Path("demo_plots") / device_slug(results["device"]) / "trained")
    for path in paths:
        print(f"plot: {path}")
    return _finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
