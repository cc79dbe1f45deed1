"""Compile every Triton kernel of etsc_triton for an H100 (sm_90) offline and report registers, spills, smem.

    python -m tools.compile_report                        # print the markdown table
    python -m tools.compile_report --out FILE.md          # also write it to FILE.md
    python -m tools.compile_report --configs FILE.json    # skip the capture, compile launches captured before
    python -m tools.compile_report --only "ssm_scan" --save-configs FILE.json   # the cases whose name matches

No GPU is needed. A ``TRITON_INTERPRET=1`` subprocess captures the launches of every case of :mod:`tools.cases`
at the GPU's tiles; this process compiles each unique launch for sm_90 (:mod:`tools.sm90`; tools/README.md).
The exit code is 1 when a kernel fails to compile (or a capture case fails), 0 otherwise. Works with triton
3.6 and 3.9.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .sm90 import compile_launch, global_access_widths, jit_function, ptxas_version, short_config, specialize

REPO = Path(__file__).resolve().parent.parent


def compile_one(record: dict) -> dict:
    """Compile one captured launch for sm_90 and describe it; never raises (errors go in ``status``)."""
    warnings.filterwarnings("ignore")
    result = {"kernel": f"{record['module']}.{record['name']}", "cases": record["cases"],
              "num_warps": record["options"].get("num_warps", 4),
              "num_stages": record["options"].get("num_stages", 3)}
    try:
        fn = jit_function(record)
        signature, constexprs, attrs = specialize(fn, record)
        result["config"], result["args"] = short_config(fn, signature, constexprs)
        result["key"] = json.dumps([result["kernel"], signature, *(sorted((list(k), repr(v)) for k, v in d.items())
                                                                    for d in (constexprs, attrs)), record["options"]])
        kernel, stats = compile_launch(fn, signature, constexprs, attrs, record["options"])
    except Exception as exc:
        stage = "compile" if "key" in result else "specialisation"
        result["status"] = f"{stage} failed: {type(exc).__name__}: {' '.join(str(exc).split())}"[:400]
        return result
    metadata = kernel.metadata
    result.update(stats, shared=getattr(metadata, "shared", None), status="OK",
                  global_access=global_access_widths(kernel.asm["ptx"]),
                  num_warps=getattr(metadata, "num_warps", result["num_warps"]),
                  num_stages=getattr(metadata, "num_stages", result["num_stages"]))
    return result


def compile_all(records: list[dict], jobs: int) -> list[dict]:
    """Compile every launch (``jobs`` processes, a temporary triton cache) and merge those that specialise
    identically, sorted."""
    with tempfile.TemporaryDirectory(prefix="etsc_sm90_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # inherited by the worker processes
        if jobs <= 1:
            results = [compile_one(r) for r in records]
        else:
            with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
                results = list(pool.map(compile_one, records))
        del os.environ["TRITON_CACHE_DIR"]
    unique: dict = {}
    for r in results:
        known = unique.setdefault(r.get("key") or id(r), r)
        if known is not r:
            known["cases"].extend(c for c in r["cases"] if c not in known["cases"])
    return sorted(unique.values(), key=lambda r: (r["kernel"], r.get("config") or "", r.get("args") or "",
                                                  r["num_warps"]))


def _cell(value) -> str:
    return "-" if value is None else str(value).replace("|", "\\|")


def render(results: list[dict], capture: dict, elapsed: dict) -> str:
    """The markdown report: one row per unique configuration, then spills, compile and capture failures."""
    import triton

    captured = f"capture {elapsed['capture']:.1f} s" if elapsed.get("capture") is not None else "capture loaded"
    lines = [
        f"# Compile report: etsc_triton kernels for sm_90 (triton {triton.__version__})", "",
        f"{len(results)} unique launch configurations ({len(capture['launches'])} captured launches); {captured}, "
        f"compile {elapsed['compile']:.1f} s. regs / spills: the `ptxas -v` log of triton's own ptxas run "
        f"({ptxas_version()}), smem (bytes): the compiled metadata. `args`: pointer arguments that are not *fp32, "
        "and ints the launch specialises to constexpr 1.", "",
        "| kernel | config | args | warps | stages | regs | spill st/ld (B) | smem (B) | global ld/st | status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        spills = f"{r['spill_stores']}/{r['spill_loads']}" if "spill_stores" in r else "-"
        cells = [r["kernel"].removeprefix("etsc_triton.ops."), r.get("config"), r.get("args") or "", r["num_warps"],
                 r["num_stages"], r.get("registers"), spills, r.get("shared"), r.get("global_access"), r["status"]]
        lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    flagged = [r for r in results if r.get("spill_stores") or r.get("spill_loads") or (r.get("registers") or 0) > 200]
    lines += ["", "## Spills and high register counts (> 200)", ""]
    lines += [f"- {r['kernel']} [{r.get('config')}] [{r.get('args') or 'all *fp32'}] warps={r['num_warps']}: "
              f"{r.get('registers')} regs, spill {r.get('spill_stores')}/{r.get('spill_loads')} B"
              for r in flagged] or ["none"]
    lines += ["", "## Compile failures", ""]
    lines += [f"- {r['kernel']} [{r.get('config')}] ({r['cases'][0]}): {r['status']}"
              for r in results if r["status"] != "OK"] or ["none"]
    lines += ["", "## Capture failures (op calls that raised in the interpreter at GPU block sizes)", ""]
    lines += [f"- {f['case']}: {f['error']}" for f in capture["capture_failures"]] or ["none"]
    return "\n".join(lines) + "\n"


def run_capture_subprocess(json_path: str, only: Sequence[str] = ()) -> None:
    """Capture the launches of the cases (those matching ``only``, or all) into ``json_path``, in a child
    process with ``TRITON_INTERPRET=1`` (triton reads it once, at import)."""
    cmd = [sys.executable, "-m", "tools.compile_report", "--capture", json_path, *(f"--only={p}" for p in only)]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, TRITON_INTERPRET="1"), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"capture subprocess failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compile_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the markdown report to this file too")
    parser.add_argument("--configs", help="compile the launches in this capture JSON instead of capturing")
    parser.add_argument("--save-configs", help="keep the capture JSON at this path")
    parser.add_argument("--only", action="append", default=[],
                        help="capture only the cases whose name contains this text; repeat for more")
    parser.add_argument("--json", help="write the per-kernel results as JSON to this path")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--capture", help=argparse.SUPPRESS)  # internal: the TRITON_INTERPRET=1 child
    args = parser.parse_args(argv)
    if args.capture:
        from .cases import capture

        Path(args.capture).write_text(json.dumps(capture(only=args.only), indent=1))
        return 0
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the compile step needs real JITFunction objects")

    elapsed = {"capture": None}
    start = time.perf_counter()
    if not args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.save_configs or os.path.join(tmp, "launches.json")
            run_capture_subprocess(path, args.only)
            capture_data = json.loads(Path(path).read_text())
        elapsed["capture"], start = time.perf_counter() - start, time.perf_counter()
    else:
        capture_data = json.loads(Path(args.configs).read_text())
    results = compile_all(capture_data["launches"], args.jobs)
    elapsed["compile"] = time.perf_counter() - start
    report = render(results, capture_data, elapsed)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 1 if any(r["status"] != "OK" for r in results) or capture_data["capture_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
