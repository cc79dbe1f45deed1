"""The GPU proof run's pipeline: ``python -m perf.proof --dry-run`` end to end on a CPU, and its bookkeeping.

The dry run's test stage runs only ``tests/test_ssm_step.py -m gpu`` (skipped without a GPU) and
``tests/test_api.py`` (perf/proof.py, ``DRY_RUN_TESTS``), so this test stays about a minute on idle cores.
"""

import csv
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from perf import proof
from perf.pytest_outcomes import outcome_of

REPO = Path(__file__).resolve().parent.parent
OUTPUT_FILES = {"summary.md", "summary.csv", "proof.log", "results.tgz"}
HEADLINE_OPS = {"toeplitz_to_ssm", "ssm_kernel", "ssm_step", "ssm_step (eager)", "ssm_scan", "memory_layer fwd",
                "memory_layer fwd_bwd", "decode_token"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU check; a GPU runs the proof itself")
def test_dry_run_runs_every_stage_and_writes_the_four_files(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # A generous budget: this checks what the stages do, not their time (another xdist worker shares the cores,
    # and the 480 s plan's caps would cut the test stage of a loaded machine).
    run = subprocess.run([sys.executable, "-m", "perf.proof", "--dry-run", "--budget", "1800", "--out",
                          str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == OUTPUT_FILES
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    stages = {r["item"]: r["met"] for r in rows if r["stage"] == "stages"}
    assert stages == {stage.name: "ok" for stage in proof.STAGES}
    configs = [r for r in rows if r["stage"] == "kernel_configs"]
    assert {r["item"] for r in configs} >= {"toeplitz_to_ssm", "ssm_kernel", "ssm_scan", "ssm_step", "memory_layer"}
    for row in configs:
        passed, total = row["ours"].split()[0].split("/")
        assert passed == total and int(total) > 0, row
    tests = {r["item"]: r["ours"] for r in rows if r["stage"] == "tests"}
    assert tests["gpu (gpu)"].startswith("0 passed, 0 failed, 0 error") and "skipped" in tests["gpu (gpu)"]
    assert int(tests["rest (not gpu)"].split()[0]) > 10 and " 0 failed, 0 error" in tests["rest (not gpu)"]
    headline = [r for r in rows if r["stage"] == "headline"]
    assert {r["item"] for r in headline} == HEADLINE_OPS
    for row in headline:
        assert float(row["ours"]) > 0 and row["baseline"] != "-" and row["ratio"].endswith("x"), row
        assert row["met"] == "n/a (CPU)" and row["target"], row
    demo = {r["item"]: r["ours"] for r in rows if r["stage"] == "demo"}
    assert demo["greedy tokens identical (ssm, tnn_cache, fft)"] == "True"
    serving = {r["item"]: r for r in rows if r["stage"] == "serving"}
    assert serving["tokens equal serving each request alone"]["ours"] == "True"
    assert float(serving["continuous batching, tokens/s"]["ours"]) > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| op | size | ours | best baseline | ratio | fraction of floor | target | met? |" in summary
    assert "DRY RUN" in summary
    with tarfile.open(tmp_path / "results.tgz") as tar:
        names = set(tar.getnames())
        results = json.load(tar.extractfile("demo.json"))
    assert {"headline.csv", "kernel_configs.csv", "demo.json", "serving.json", "tests_rest.log"} <= names
    assert len([n for n in names if n.endswith(".png")]) >= 5
    assert results["tokens_identical"] is True


def test_a_failing_stage_is_recorded_and_the_next_stage_runs(tmp_path):
    def fails(run, deadline):
        raise RuntimeError("no kernel image\nsecond line")

    stages = [proof.Stage("environment", 25, fails), proof.Stage("kernel_configs", 90, lambda run, deadline: "2/2")]
    run = proof.Proof(tmp_path, budget=10, dry_run=True, jobs=1, stages=stages)
    try:
        run.run_stage(0)
        run.run_stage(1)
    finally:
        run.close()
    assert [(s.name, s.status) for s in run.stages] == [("environment", "failed"), ("kernel_configs", "ok")]
    assert run.stages[0].note.startswith("RuntimeError: no kernel image")
    with (tmp_path / "summary.csv").open() as f:
        stages = [(r["item"], r["met"]) for r in csv.DictReader(f) if r["stage"] == "stages"]
    assert stages == [("environment", "failed"), ("kernel_configs", "ok")]
    assert "Traceback" in (tmp_path / "proof.log").read_text()
    assert tarfile.is_tarfile(tmp_path / "results.tgz")


def test_a_process_past_its_cap_is_killed(tmp_path):
    run = proof.Proof(tmp_path, budget=10, dry_run=True, jobs=1)
    try:
        started = time.monotonic()
        codes = run.run_processes([([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "slow.log"),
                                   ([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "quick.log")],
                                  deadline=time.monotonic() + 2)
    finally:
        run.close()
    assert codes == [None, 3]
    assert time.monotonic() - started < 20


def test_stage_deadlines_follow_the_plan_within_the_budget(tmp_path):
    plan = [stage.seconds for stage in proof.STAGES]
    assert sum(plan) == proof.DEFAULT_BUDGET == 480
    run = proof.Proof(tmp_path, budget=240, dry_run=True, jobs=1)
    try:
        run.started = time.monotonic()  # the plan counts from the start; set up time is not what this checks
        ends = [run.deadline_for(i) - run.started for i in range(len(plan))]
    finally:
        run.close()
    planned = [sum(plan[: i + 1]) / 2 for i in range(len(plan))]
    assert ends == pytest.approx(planned, abs=1.0)  # on time: each stage ends at its scaled cumulative plan
    assert ends[-1] <= 240


def test_budget_must_be_positive():
    with pytest.raises(SystemExit):
        proof.parse_args(["--out", "x", "--budget", "0"])


@pytest.mark.parametrize("when, outcome, expected", [
    ("setup", "passed", None), ("call", "passed", "passed"), ("call", "failed", "failed"),
    ("setup", "failed", "error"), ("setup", "skipped", "skipped"), ("teardown", "failed", "error"),
])
def test_pytest_outcomes_count_each_test_once(when, outcome, expected):
    report = SimpleNamespace(when=when, passed=outcome == "passed", failed=outcome == "failed",
                             skipped=outcome == "skipped")
    assert outcome_of(report) == expected
