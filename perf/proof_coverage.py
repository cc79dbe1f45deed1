"""``python -m perf.proof_coverage``: do the proof's kernel-configuration cases launch the configurations the
offline compile report compiles for sm_90?

Both lists are captured the same way, in the interpreter with the launchers' GPU block choices: the compile
report's own capture (``perf/compile_report.py``, its launch recorder and its key, which groups launches that
compile to the same binary: kernel, constexprs, dtypes, 16-byte alignment, int specialisation classes and the
launch options) and the proof's cases at their GPU sizes (``perf/proof_cases.py``). Prints the configurations
each side has that the other lacks; exit code 1 when the proof misses one the report compiles, or launches one
the report has not compiled (then the report does not vouch for it on sm_90).

    python -m perf.proof_coverage [--report-capture CAPTURE.json]   # CAPTURE.json: compile_report --save-configs

It reuses the compile report's recorder and key through import (``perf.compile_report``, or
``tools.compile_report`` where that module lives).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_report_module():
    """The compile report module, wherever it lives (``perf`` or ``tools``)."""
    for name in ("perf.compile_report", "tools.compile_report"):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError("neither perf.compile_report nor tools.compile_report is importable")


def capture_proof_launches(out_path: str) -> int:
    """In a ``TRITON_INTERPRET=1`` process: run every proof case at its GPU size with GPU block choices, record
    each launch with the compile report's recorder, write ``{"launches": [...], "failures": [...]}``."""
    import torch

    import etsc_triton as et

    from .proof_cases import build_cases, launch_choices_pinned, run_case

    report = compile_report_module()
    torch.manual_seed(0)
    records: dict = {}
    current = ["import"]
    report._install_launch_recorder(records, current)
    report._force_gpu_block_sizes()
    failures = []
    for case in build_cases(dry_run=False):
        current[0] = case.label
        try:
            with launch_choices_pinned(case.chunked):
                result = run_case(case, "cpu", et, et.reference)
            if not result["ok"]:
                failures.append({"case": case.label, "error": json.dumps(result["errors"])})
        except Exception as error:  # noqa: BLE001 - listed; the other cases still run
            failures.append({"case": case.label, "error": f"{type(error).__name__}: {error}"[:300]})
    Path(out_path).write_text(json.dumps({"launches": list(records.values()), "failures": failures}, indent=1))
    return 0


def _capture(args: list[str], json_path: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", *args, json_path], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(Path(json_path).read_text())


def describe(record: dict) -> str:
    constexprs = {k: v["value"] for k, v in record["args"].items() if k in record["constexprs"] and "value" in v}
    return f"{record['name']} {constexprs} {record['options']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.proof_coverage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-capture", type=Path, default=None,
                        help="the compile report's capture JSON (default: capture it now)")
    parser.add_argument("--capture-proof", help=argparse.SUPPRESS)  # internal: the TRITON_INTERPRET=1 process
    args = parser.parse_args(argv)
    if args.capture_proof:
        return capture_proof_launches(args.capture_proof)
    report = compile_report_module()
    with tempfile.TemporaryDirectory() as tmp:
        if args.report_capture is None:
            report_data = _capture([report.__name__, "--capture"], os.path.join(tmp, "report.json"))
        else:
            report_data = json.loads(args.report_capture.read_text())
        proof_data = _capture(["perf.proof_coverage", "--capture-proof"], os.path.join(tmp, "proof.json"))
    report_keys = {report._dedup_key(r): r for r in report_data["launches"]}
    proof_keys = {report._dedup_key(r): r for r in proof_data["launches"]}
    missing = sorted(describe(report_keys[k]) for k in report_keys.keys() - proof_keys.keys())
    extra = sorted(describe(proof_keys[k]) for k in proof_keys.keys() - report_keys.keys())
    kernels = {(r["module"], r["name"]) for r in report_keys.values()}
    proof_kernels = {(r["module"], r["name"]) for r in proof_keys.values()}
    print(f"compile report: {len(report_keys)} configurations of {len(kernels)} kernels; proof cases: "
          f"{len(proof_keys)} configurations of {len(proof_kernels)} kernels; shared: "
          f"{len(report_keys.keys() & proof_keys.keys())}")
    print(f"kernels the proof never launches: {sorted(n for _, n in kernels - proof_kernels) or 'none'}")
    for title, lines in (("compiled by the report, not launched by the proof", missing),
                         ("launched by the proof, not in the report", extra)):
        print(f"{title}: {len(lines)}")
        for line in lines:
            print(f"  {line}")
    for failure in proof_data["failures"]:
        print(f"proof case failed in the interpreter at GPU block sizes: {failure['case']}: {failure['error']}")
    return 1 if missing or extra or proof_data["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
