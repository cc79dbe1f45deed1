"""The demo's CI paths: ``python -m etsc_triton.demo [--random] --quick --json`` in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run_demo(tmp_path, *flags):
    out_json = tmp_path / "demo.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "etsc_triton.demo",
            *flags,
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
        timeout=600,  # each quick run takes about 1-2 min of a shared 2-core CPU
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(out_json.read_text())


def test_random_demo_quick_json(tmp_path):
    stdout, result = _run_demo(tmp_path, "--random")
    assert "tokens identical: True" in stdout
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


def test_trained_demo_quick_json(tmp_path):
    stdout, result = _run_demo(tmp_path)
    assert "tokens identical (fft vs etsc): True" in stdout
    n = result["n"]
    assert n == 512 and result["eval_bytes"] == 4 * n
    bpb, state = result["bits_per_byte"], result["state_bytes"]
    reduced = [name for name in bpb if name.startswith("reduced_r")]
    assert len(reduced) == 1, "the quick run reduces at one tolerance"
    (reduced,) = reduced
    rank = int(reduced.removeprefix("reduced_r"))
    assert set(bpb) == set(state) == {"fft", "etsc", reduced, "truncated_r8", f"truncated_r{rank}"}
    assert 0.0 < bpb["fft"] < 8.0, "a trained model beats the uniform 8 bits per byte"
    assert bpb["truncated_r8"] > 0.0 and bpb["truncated_r8"] != bpb["fft"]
    # the exact conversion: kernel error ~1e-7 relative (float32 rounding) -> bits/byte within 1e-4 relative
    assert abs(bpb["etsc"] - bpb["fft"]) <= 1e-4 * bpb["fft"]
    assert result["etsc_vs_fft_rel"] == abs(bpb["etsc"] - bpb["fft"]) / bpb["fft"]
    layers, d = result["config"]["n_layers"], result["config"]["d_model"]
    assert state["etsc"] == layers * d * (n // 2) * 8 and state["truncated_r8"] == layers * d * 8 * 8
    assert result["tokens_identical"] is True and result["completion"]["identical"]["etsc"] is True
    # the reduced SSM: at most n/64 modes, bits/byte within 0.1% of the FFT model's, the same greedy bytes
    assert rank <= n // 64 and state[reduced] <= layers * d * rank * 8
    assert abs(bpb[reduced] - bpb["fft"]) <= 1e-3 * bpb["fft"]
    assert result["completion"]["identical"][reduced] is True
    assert result["completion"]["max_rel_logit_diff"]["etsc"] < 1e-4
    assert set(result["extrapolation"]) == {"1x", "2x", "4x"}
    assert result["extrapolation"]["1x"] == {"fft": bpb["fft"], "etsc": bpb["etsc"], reduced: bpb[reduced]}
    # fitted over 4n lags, the reduced SSM follows the FFT model's own extrapolation better than ETSC's wrap
    for scale in ("2x", "4x"):
        row = result["extrapolation"][scale]
        assert abs(row[reduced] - row["fft"]) < abs(row["etsc"] - row["fft"])
    rows = result["decode"]["rows"]
    assert set(rows) == {"fft", "tnn_cache", "etsc", reduced}
    assert rows["tnn_cache"][-1]["state_bytes"] > rows["tnn_cache"][0]["state_bytes"], "the cache grows"
    assert rows["etsc"][-1]["state_bytes"] == rows["etsc"][0]["state_bytes"] == state["etsc"], "the SSM does not"
    assert all(r["p20"] <= r["p50"] <= r["p80"] for r in sum(rows.values(), []))
    comparison = result["memory_vs_linear"]
    assert comparison["linear"]["bits_per_byte"] == bpb["fft"]
    assert comparison["memory"]["flops_per_token"]["channel_mixing"] < comparison["linear"]["flops_per_token"][
        "channel_mixing"]
    for name in ("bits_per_byte_vs_state.png", "decode_latency.png"):
        assert (tmp_path / name).stat().st_size > 10_000
