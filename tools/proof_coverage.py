"""``python -m tools.proof_coverage``: do the GPU proof's kernel-configuration cases (``perf/proof_cases.py``)
launch exactly the configurations the offline compile report compiles for sm_90 (``tools/cases.py``)?

Both lists are captured the same way, in the interpreter with the GPU tile policy, and compared by the compile
key (:func:`tools.sm90.launch_key`: kernel, constexprs, dtypes, 16-byte alignment, int specialisation classes,
launch options). Prints what each side has that the other lacks; exit code 1 when the proof misses a
configuration the report compiles, or launches one the report has not compiled (the report then does not vouch
for it on sm_90). A launcher that gains a configuration needs a case in both lists; this check says which.

    python -m tools.proof_coverage      # about 20 minutes on 2 CPU cores (both captures run every case)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def capture_proof_launches(out_path: str) -> int:
    """In a ``TRITON_INTERPRET=1`` process: run every proof case at its GPU size under the GPU tile policy and
    record each launch; write ``{"launches": [...], "failures": [...]}``."""
    import torch

    import etsc_triton as et
    from etsc_triton.ops.tiles import GPU_TILES
    from perf.proof_cases import build_cases, launch_choices_pinned, run_case

    from .sm90 import record_launches

    torch.manual_seed(0)
    failures = []
    with record_launches() as recorder:
        for case in build_cases(dry_run=False):
            recorder.case = case.label
            try:
                with launch_choices_pinned(case.chunked, GPU_TILES):
                    result = run_case(case, "cpu", et, et.reference)
                if not result["ok"]:
                    failures.append({"case": case.label, "error": json.dumps(result["errors"])})
            except Exception as error:  # noqa: BLE001 - listed; the other cases still run
                failures.append({"case": case.label, "error": f"{type(error).__name__}: {error}"[:300]})
    Path(out_path).write_text(json.dumps({"launches": recorder.launches, "failures": failures}, indent=1))
    return 0


def capture_report_launches(out_path: str) -> int:
    """In a ``TRITON_INTERPRET=1`` process: the compile report's capture (:func:`tools.cases.capture`)."""
    from .cases import capture

    result = capture()
    failures = [{"case": f["case"], "error": f["error"]} for f in result["capture_failures"]]
    Path(out_path).write_text(json.dumps({"launches": result["launches"], "failures": failures}, indent=1))
    return 0


def _capture(flag: str, json_path: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "tools.proof_coverage", flag, json_path]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{flag} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(Path(json_path).read_text())


def describe(record: dict) -> str:
    constexprs = {k: v["value"] for k, v in record["args"].items() if k in record["constexprs"] and "value" in v}
    return f"{record['name']} {constexprs} {record['options']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.proof_coverage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capture-proof", help=argparse.SUPPRESS)  # internal: the TRITON_INTERPRET=1 processes
    parser.add_argument("--capture-report", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.capture_proof:
        return capture_proof_launches(args.capture_proof)
    if args.capture_report:
        return capture_report_launches(args.capture_report)
    from .sm90 import launch_key

    with tempfile.TemporaryDirectory() as tmp:
        report_data = _capture("--capture-report", os.path.join(tmp, "report.json"))
        proof_data = _capture("--capture-proof", os.path.join(tmp, "proof.json"))
    report_keys = {launch_key(r): r for r in report_data["launches"]}
    proof_keys = {launch_key(r): r for r in proof_data["launches"]}
    missing = sorted(describe(report_keys[k]) for k in report_keys.keys() - proof_keys.keys())
    extra = sorted(describe(proof_keys[k]) for k in proof_keys.keys() - report_keys.keys())
    print(f"compile report: {len(report_keys)} configurations; proof cases: {len(proof_keys)}; shared: "
          f"{len(report_keys.keys() & proof_keys.keys())}")
    for title, lines in (("compiled by the report, not launched by the proof", missing),
                         ("launched by the proof, not in the report", extra)):
        print(f"{title}: {len(lines)}")
        for line in lines:
            print(f"  {line}")
    failures = report_data["failures"] + proof_data["failures"]
    for failure in failures:
        print(f"case failed in the interpreter at GPU tiles: {failure['case']}: {failure['error']}")
    return 1 if missing or extra or failures else 0


if __name__ == "__main__":
    sys.exit(main())
