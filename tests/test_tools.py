"""The static tools: the case table, launches captured at the GPU's tiles, one compiled for sm_90, PTX widths.

The capture runs two cases in a ``TRITON_INTERPRET=1`` child (as the report does); the compile step builds the
memory-layer forward's launch for sm_90 and is skipped where triton ships no ptxas.
"""

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from etsc_triton.ops.tiles import GPU_TILES, INTERPRETER_TILES
from tools import sm90
from tools.cases import BUILDERS, CASES, cases, points
from tools.compile_report import compile_one, run_capture_subprocess

REPO = Path(__file__).resolve().parent.parent
MEMORY_CASE = "memory_layer tokens=64 dtype=fp32 det=False grads=none weighting=paper d_out=256"
CHUNKED_CASE = "ssm_scan channels=5 modes=33 dtype=fp32 state=False tokens=12 batch=1"


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    path = tmp_path_factory.mktemp("capture") / "launches.json"
    run_capture_subprocess(str(path), [MEMORY_CASE, CHUNKED_CASE])
    return json.loads(path.read_text())


def _constexprs(launch: dict) -> dict:
    return {name: launch["args"][name].get("value") for name in launch["constexprs"]}


@pytest.mark.parametrize("quick", [False, True])
def test_case_table_points_fit_their_builders(quick):
    for grid in CASES:
        signature = inspect.signature(BUILDERS[grid.op])
        assert set(grid.quick) <= set(grid.axes), "a quick size replaces an axis of the grid"
        for point in points(grid, quick):
            signature.bind(**point)  # a misspelt axis raises TypeError here, not in the middle of a capture
        dataclasses.replace(GPU_TILES, **grid.tiles)  # the row's tile changes name real policy fields
    labels = [case.label for case in cases(quick)]
    assert len(labels) == len(set(labels)), "two cases share a label: --only and --case could not tell them apart"
    assert set(BUILDERS) == {grid.op for grid in CASES}
    assert len(cases(True)) == len(cases(False)) - 6  # the dry run keeps every case but the 6 extra kernel sizes


def test_capture_uses_gpu_tiles(captured):
    assert captured["capture_failures"] == []
    assert captured["cases"] == 2
    by_name = {}
    for launch in captured["launches"]:
        by_name.setdefault(launch["name"], []).append(launch)
    assert GPU_TILES.gather_max_block_d != INTERPRETER_TILES.gather_max_block_d
    forward = by_name["_memory_forward_kernel"]
    assert [_constexprs(launch)["BLOCK_D"] for launch in forward] == [GPU_TILES.gather_max_block_d]
    assert forward[0]["cases"] == [MEMORY_CASE]
    # The row's scan_min_chunk_tokens=4 reached the launchers: 12 tokens are chunked, forward and backward.
    assert {"_chunk_local_state_kernel", "_chunk_carry_kernel", "_chunk_backward_local_kernel"} <= set(by_name)
    backward = by_name["_ssm_scan_backward_kernel"]
    assert {_constexprs(launch)["NUM_STAGES"] for launch in backward} == {GPU_TILES.scan_backward_stages}
    assert all(launch["cases"] == [CHUNKED_CASE] for launch in backward)


def test_compile_step_builds_sm90_kernels(captured, tmp_path):
    if sm90.ptxas_path() is None:
        pytest.skip("no ptxas in the triton wheel or on PATH")
    memory = [launch for launch in captured["launches"] if launch["name"] == "_memory_forward_kernel"]
    configs, results = tmp_path / "memory.json", tmp_path / "results.json"
    configs.write_text(json.dumps({"launches": memory, "capture_failures": []}))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run([sys.executable, "-m", "tools.compile_report", "--configs", str(configs), "--jobs", "1",
                          "--json", str(results)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(results.read_text())
    assert {row["kernel"].rsplit(".", 1)[1] for row in rows} == {launch["name"] for launch in memory}
    for row in rows:
        assert row["status"] == "OK"
        assert row["registers"] > 0 and row["spill_stores"] >= 0
    forward = next(row for row in rows if row["kernel"].endswith("_memory_forward_kernel"))
    assert f"BLOCK_D={GPU_TILES.gather_max_block_d}" in forward["config"]
    assert "| lsh.gather._memory_forward_kernel | " in run.stdout


def test_compile_one_reports_an_unknown_kernel_instead_of_raising():
    record = {"module": "etsc_triton.ops.lsh.gather", "name": "_no_such_kernel", "args": {}, "constexprs": [],
              "options": {}, "cases": ["made up"]}
    assert compile_one(record)["status"].startswith("specialisation failed: AttributeError")


def test_global_access_widths_count_loads_and_stores_by_bytes():
    ptx = "\n".join(["ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];", "ld.global.nc.b32 %r5, [%rd2];",
                     "ld.global.v4.b32 {%r6, %r7, %r8, %r9}, [%rd3];", "st.global.v2.f32 [%rd4], {%f1, %f2};",
                     "ld.shared.b32 %r10, [%r11];"])
    assert sm90.global_access_widths(ptx) == "ld 16B x2, 4B x1; st 8B x1"
    assert sm90.global_access_widths("") == "-"
