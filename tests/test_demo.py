"""The demo's CI path: ``python -m etsc_triton.demo --quick --json`` in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_quick_json(tmp_path):
    out_json = tmp_path / "demo.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "etsc_triton.demo",
            "--quick",
            "--device",
            "cpu",
            "--json",
            str(out_json),
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tokens identical: True" in proc.stdout
    result = json.loads(out_json.read_text())
    assert result["tokens_identical"] is True
    assert 0.0 <= result["max_rel_err"] < 1e-4
    lengths = result["lengths"]
    assert lengths == sorted(lengths) and len(lengths) >= 3
    assert max(lengths) > result["config"]["n"], "the sweep must go past the training length"
    for name in ("ssm", "tnn_cache", "fft"):
        times = result["decode_ms_per_token"][name]
        assert len(times) == len(lengths) and all(t > 0 for t in times)
    for per in result["per_batch"].values():
        assert per["tokens_identical"] is True
        assert per["generated"] == result["config"]["n"] - 4
        cache = per["state_mb"]["tnn_cache"]
        assert cache[-1] > cache[0], "the TNN cache grows with length"
        ssm = per["state_mb"]["ssm"]
        assert ssm[0] == ssm[-1], "the SSM state does not"
    assert (tmp_path / "decode_latency.png").stat().st_size > 10_000
