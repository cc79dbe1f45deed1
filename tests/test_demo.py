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
    assert f"plot: {tmp_path}" in stdout, "the job says where its plots went"
    n = result["n"]
    assert n == 512 and result["eval_bytes"] == 4 * n
    rows = result["conversion"]["rows"]
    bpb = result["bits_per_byte"]
    state = {name: row["state_bytes"] for name, row in rows.items()}
    reduced = [name for name in bpb if name.startswith("reduced_r")]
    assert len(reduced) == 1, "the quick run reduces at one tolerance"
    (reduced,) = reduced
    rank = int(reduced.removeprefix("reduced_r"))
    assert set(bpb) == set(state) == {"fft", "tnn_cache", "etsc", reduced, "truncated_r8", f"truncated_r{rank}"}
    assert rows[reduced]["tol"] is not None and rows[reduced]["modes"] == rank, "a reduced row says its tolerance"
    assert 0.0 < bpb["fft"] < 8.0, "a trained model beats the uniform 8 bits per byte"
    assert bpb["truncated_r8"] > 0.0 and bpb["truncated_r8"] != bpb["fft"]
    # the exact conversion: kernel error ~1e-7 relative (float32 rounding) -> bits/byte within 1e-4 relative
    assert abs(bpb["etsc"] - bpb["fft"]) <= 1e-4 * bpb["fft"]
    assert result["etsc_vs_fft_rel"] == abs(bpb["etsc"] - bpb["fft"]) / bpb["fft"]
    layers, d = result["config"]["n_layers"], result["config"]["d_model"]
    assert state["etsc"] == layers * d * (n // 2) * 8 and state["truncated_r8"] == layers * d * 8 * 8
    assert state["tnn_cache"] == layers * n * d * 4 and state["fft"] == 8 * n
    assert result["tokens_identical"] is True and result["completion"]["identical"]["etsc"] is True
    # the reduced SSM: bits/byte within 0.1% of the FFT model's, the same greedy bytes
    assert state[reduced] <= layers * d * rank * 8
    assert abs(bpb[reduced] - bpb["fft"]) <= 1e-3 * bpb["fft"]
    assert result["conversion"]["smallest_same_reduction"] == reduced
    assert result["completion"]["identical"][reduced] is True
    assert result["completion"]["max_rel_logit_diff"]["etsc"] < 1e-4
    assert set(result["extrapolation"]) == {"1x", "2x", "4x"}
    assert result["extrapolation"]["1x"] == {"fft": bpb["fft"], "etsc": bpb["etsc"], reduced: bpb[reduced]}
    # fitted over 4n lags, the reduced SSM follows the FFT model's own extrapolation better than ETSC's wrap
    for scale in ("2x", "4x"):
        row = result["extrapolation"][scale]
        assert abs(row[reduced] - row["fft"]) < abs(row["etsc"] - row["fft"])
    decode = result["decode"]
    assert decode["threads"] == 1, "decode steps are timed on one thread"
    assert result["threads"] == 1 and "running on 1 CPU thread" in stdout, "the job runs on one thread by default"
    serving = result["serving"]
    assert serving["tokens_equal_alone"] is True and serving["layers"] == reduced
    assert serving["continuous"]["generated_tokens"] == serving["one_at_a_time"]["generated_tokens"] > 0
    rows = decode["rows"]
    assert set(rows) == {"fft", "tnn_cache", "etsc", reduced}
    assert rows["tnn_cache"][-1]["state_bytes"] > rows["tnn_cache"][0]["state_bytes"], "the cache grows"
    assert rows["etsc"][-1]["state_bytes"] == rows["etsc"][0]["state_bytes"] == state["etsc"], "the SSM does not"
    assert all(r["p20"] <= r["p50"] <= r["p80"] for r in sum(rows.values(), []))
    comparison = result["memory_vs_linear"]
    assert comparison["linear"]["bits_per_byte"] == bpb["fft"]
    assert comparison["memory"]["flops_per_token"]["channel_mixing"] < comparison["linear"]["flops_per_token"][
        "channel_mixing"]
    for row in comparison.values():
        steps, target = row["train_steps"]
        assert 0 < steps <= target, "each model says how far its training run got"
    standing = result["standing"]
    assert standing["uniform"] == 8.0 and standing["here"] == bpb["fft"]
    assert set(result["test_bpb"]) == {"linear", "memory"}
    assert result["baselines"] == standing["baselines"]
    for name in ("bits_per_byte_vs_state.png", "decode_latency.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_decode_rows_run_on_the_decode_threads():
    """The thread policy is applied: every decode step of the decode section runs on DECODE_THREADS threads."""
    import torch

    from etsc_triton.demo.scoring import DECODE_THREADS
    from etsc_triton.demo.trained import decode_section

    seen = []

    class Recorder:
        def prefill(self, prompt):
            return torch.zeros(1, 4)

        def step(self, token):
            seen.append(torch.get_num_threads())
            return torch.zeros(1, 4)

        def state_bytes(self):
            return 0

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = decode_section({"recorder": lambda max_len: Recorder()}, torch.zeros(1, 8, dtype=torch.long),
                                (4, 8), timed=3)
        assert torch.get_num_threads() == 2, "the previous thread count is restored"
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {DECODE_THREADS} and result["threads"] == DECODE_THREADS == 1


def test_stored_reductions_belong_to_their_weights(tmp_path):
    """The main job adopts stored reductions only for the weights they were computed from, and the stored modes
    come back bit for bit."""
    import torch

    from etsc_triton.demo import reductions
    from etsc_triton.demo.checkpoint import save_model
    from etsc_triton.demo.model import TNNConfig, TNNLanguageModel

    model = TNNLanguageModel(TNNConfig(vocab_size=256, d_model=8, n_layers=2, n=15, rpe_hidden=8,
                                       rpe_inputs="log_linear"))
    weights, other, path = tmp_path / "w.safetensors", tmp_path / "other.safetensors", tmp_path / "r.safetensors"
    save_model(model, weights)
    save_model(TNNLanguageModel(TNNConfig(vocab_size=256, d_model=8, n_layers=2, n=15, rpe_hidden=8, seed=1)), other)
    computed = reductions.compute(model, tols=(1e-2,), jobs=1)
    reductions.save(computed, weights, path)
    stored, core_s = reductions.load(1e-2, 2, weights, path)
    assert core_s >= 0 and len(stored) == 2
    for (lam, b, bound), (lam0, b0, bound0) in zip(stored, computed[1e-2]["layers"], strict=True):
        assert torch.equal(lam, lam0) and torch.equal(b, b0) and torch.equal(bound, bound0)
    assert reductions.load(1e-2, 2, other, path) is None, "other weights: reduce live"
    assert reductions.load(1e-3, 2, weights, path) is None, "a tolerance not stored: reduce live"
    assert reductions.load(1e-2, 2, weights, tmp_path / "missing.safetensors") is None
