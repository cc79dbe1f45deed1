"""The benchmark pipeline itself: ``python -m perf --quick`` runs, writes the results file and the plots."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perf import __main__ as perf_main
from perf import harness, plots
from perf.reduction_study import mode_truncation_study

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="the quick CPU pipeline is for machines without a GPU")
def test_quick_run_writes_results_and_plots(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, "-m", "perf", "--quick", "--out", str(tmp_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    files = sorted(tmp_path.glob("*_quick.csv"))
    assert {f.name for f in files} == {f"{family}_quick.csv" for family in perf_main.FAMILIES}
    rows = [row for f in files for row in harness.read_results(f)]
    families_seen = {row["op"] for row in rows}
    assert {"toeplitz_to_ssm", "ssm_kernel", "ssm_scan", "ssm_step", "memory_layer"} <= families_seen
    for op in ("toeplitz_to_ssm", "ssm_scan", "ssm_step", "memory_layer"):
        providers = {r["provider"] for r in rows if r["op"] == op and r["metric"] == "time"}
        assert "triton" in providers and len(providers) >= 2, (op, providers)
    times = [r for r in rows if r["metric"] == "time"]
    assert all(r["p50"] > 0 and r["p20"] <= r["p50"] <= r["p80"] for r in times)
    assert all(r["gpu"] == "cpu" and r["torch"] and r["triton"] and r["commit"] for r in rows)
    assert len(list(tmp_path.glob("*.png"))) >= 5
    assert "speedup" in run.stdout


def test_unknown_family_is_refused():
    with pytest.raises(SystemExit):
        perf_main.parse_args(["--only", "nonsense"])


def test_floor_is_the_larger_of_memory_and_compute_time():
    floors = harness.Floors(copy_gbps=1000.0, fp32_tflops=10.0)
    assert floors.time_ms(1e9, None) == pytest.approx(1.0)
    assert floors.time_ms(1e9, 1e11) == pytest.approx(10.0)
    assert floors.time_ms(None, None) is None
    assert harness.Floors(float("nan"), float("nan")).time_ms(1e9, 1e9) is None
    with_l2 = harness.Floors(copy_gbps=1000.0, fp32_tflops=10.0, l2_gbps=5000.0)
    assert with_l2.time_ms(1e9, None, l2_bytes=1e10) == pytest.approx(2.0)  # 10 GB from L2 at 5 TB/s
    assert floors.time_ms(1e9, None, l2_bytes=1e12) == pytest.approx(1.0)  # L2 not measured: ignored


def test_summary_reports_speedup_over_best_baseline(tmp_path):
    ctx = harness.Context(device="cpu", quick=True, floors=harness.Floors(1000.0, 10.0))
    for provider, ms in (("triton", 1.0), ("torch", 4.0), ("original", 3.0)):
        ctx._row("op", provider, "fwd", "time", "ms", "n", 8, ms, ms, ms, 0.5, {"d": 2})
    table = plots.summary_table(ctx.rows, ctx.floors)
    line = table.splitlines()[-1]
    assert "original 3.0000" in line and "3.00x" in line and "50%" in line
    assert plots.draw_all(ctx.rows, tmp_path)[0].exists()


def test_budget_stops_new_points_and_keeps_recorded_rows():
    ctx = harness.Context(device="cpu", quick=True, floors=harness.Floors(float("nan"), float("nan")))
    ctx.time(op="op", provider="triton", x_name="n", x_value=1, fn=lambda: None)
    ctx.deadline = 0.0  # long past
    with pytest.raises(harness.BudgetExhausted, match="budget spent before op torch n=2"):
        ctx.time(op="op", provider="torch", x_name="n", x_value=2, fn=lambda: None)
    assert [r["provider"] for r in ctx.rows] == ["triton"]


def test_failed_point_is_recorded_and_the_sweep_goes_on():
    ctx = harness.Context(device="cpu", quick=True, floors=harness.Floors(float("nan"), float("nan")))
    ctx.family = "fam"

    def refuses():
        raise RuntimeError("no kernel image for this shape\nsecond line")

    assert math.isnan(ctx.time(op="op", provider="torch", x_name="n", x_value=3, fn=refuses, config={"d": 2}))
    assert ctx.time(op="op", provider="triton", x_name="n", x_value=3, fn=lambda: None) > 0
    failed = [r for r in ctx.rows if r["metric"] == "failed"]
    assert [(r["provider"], r["x_value"]) for r in failed] == [("torch", 3)]
    assert json.loads(failed[0]["config"]) == {"d": 2, "error": "RuntimeError: no kernel image for this shape"}
    assert ctx.failures == ["fam: op torch fwd n=3 {'d': 2}: RuntimeError: no kernel image for this shape"]


def test_error_that_breaks_the_cuda_context_stops_the_run():
    ctx = harness.Context(device="cpu", quick=True, floors=harness.Floors(float("nan"), float("nan")))

    def crashes():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        ctx.time(op="op", provider="triton", x_name="n", x_value=1, fn=crashes)
    assert ctx.rows == [] and ctx.failures == []


def test_plot_only_reads_every_results_file_of_a_folder(tmp_path):
    ctx = harness.Context(device="cpu", quick=True, floors=harness.Floors(1000.0, 10.0))
    for op, file in (("op_a", "a.csv"), ("op_b", "b.csv")):
        first = len(ctx.rows)
        for provider, ms in (("triton", 1.0), ("torch", 2.0)):
            ctx._row(op, provider, "fwd", "time", "ms", "n", 8, ms, ms, ms, None, {})
            ctx._row(op, provider, "fwd", "time", "ms", "n", 16, 2 * ms, 2 * ms, 2 * ms, None, {})
        harness.write_results(ctx.rows[first:], tmp_path / file)
    assert perf_main.main(["--plot-only", str(tmp_path), "--only", "conversion"]) == 0
    assert {p.name for p in tmp_path.glob("*.png")} >= {"op_a_fwd_vs_n_all.png", "op_b_fwd_vs_n_all.png"}


def test_progress_reads_against_the_budget(capsys):
    show = harness.progress_printer(200)
    show("ssm: ssm_scan triton L=4096")
    line = capsys.readouterr().err
    assert line.startswith("[   1 |") and "/200 s] ssm: ssm_scan triton L=4096" in line


def test_mode_truncation_study_rows():
    g = torch.Generator().manual_seed(5)
    rows = mode_truncation_study(torch.randn(4, 31, generator=g), 0.95, [1, 2, 4, 8, 16])
    assert [r["rank"] for r in rows] == [1, 2, 4, 8, 16]
    assert rows[-1]["bound"] == 0 and rows[-1]["error"] < 1e-5
    for row in rows:
        assert row["error"] <= row["bound"] + 1e-5
    bounds = [r["bound"] for r in rows]
    assert bounds == sorted(bounds, reverse=True)
