"""The stdlib data split, weights files and checkpoints, training resumption (after a budget, SIGINT and kill -9)
and the shipped weights."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from etsc_triton.demo.checkpoint import (
    WEIGHTS_DIR,
    CheckpointError,
    load_checkpoint,
    load_model,
    load_shipped,
    save_checkpoint,
    save_model,
)
from etsc_triton.demo.data import SPLITS, eval_windows, load_split, source_files, split_files, split_of, split_record
from etsc_triton.demo.model import SSMDecoder, TNNConfig, TNNLanguageModel
from etsc_triton.demo.scoring import bits_per_byte, stream_bits_per_byte, stream_windows
from etsc_triton.demo.train import CHECKPOINT, learning_rate, parse_args, train

TINY = "d_model=16,n_layers=1,n=31,rpe_hidden=8"


@pytest.fixture
def fake_stdlib(tmp_path):
    """A small tree with nested files, a non-Python file and a site-packages file (excluded)."""
    root = tmp_path / "lib"
    for i in range(40):
        path = root / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"# module {i}\nx = {i}\n".encode())
    (root / "notes.txt").write_text("not python")
    (root / "site-packages" / "foo").mkdir(parents=True)
    (root / "site-packages" / "foo" / "bar.py").write_text("installed = True\n")
    return root


def test_split_is_pinned():
    """The split of a path is a pure function of the path: these assignments hold on every machine."""
    # Pinned from sha256(path) mod 100 (train < 90 <= val < 95 <= test): a change of the rule must fail here.
    paths = ("os.py", "json/decoder.py", "asyncio/tasks.py", "ast.py", "inspect.py", "typing.py")
    assert [split_of(p) for p in paths] == ["val", "val", "train", "test", "test", "train"]
    buckets = {split_of(f"pkg/mod{i}.py") for i in range(200)}
    assert buckets == set(SPLITS)


def test_splits_partition_the_files(fake_stdlib):
    files = source_files(fake_stdlib)
    assert len(files) == 40 and all(p.endswith(".py") and "site-packages" not in p for p in files)
    parts = {s: split_files(s, fake_stdlib) for s in SPLITS}
    assert sorted(sum(parts.values(), [])) == files, "every file in exactly one split"
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not set(parts[a]) & set(parts[b]), (a, b)
    stream = load_split("train", fake_stdlib)
    expected = b"".join((fake_stdlib / p).read_bytes() for p in parts["train"])
    assert stream.dtype == torch.uint8 and bytes(stream.tolist()) == expected


def test_split_record_changes_with_the_file_list(fake_stdlib):
    before = split_record(fake_stdlib)
    assert sum(s["files"] for s in before["splits"].values()) == 40
    (fake_stdlib / "pkg0" / "new_module.py").write_text("y = 1\n")
    after = split_record(fake_stdlib)
    changed = [s for s in SPLITS if before["splits"][s]["sha256"] != after["splits"][s]["sha256"]]
    assert changed == [split_of("pkg0/new_module.py")]


def test_real_stdlib_split_has_no_leakage():
    files = source_files()
    assert len(files) > 100
    parts = {s: set(split_files(s)) for s in SPLITS}
    assert sum(len(p) for p in parts.values()) == len(files) == len(set().union(*parts.values()))
    assert 0.8 < len(parts["train"]) / len(files) < 0.97


def test_eval_windows_fixed_and_spread():
    stream = torch.arange(1000) % 256
    windows = eval_windows(stream.to(torch.uint8), 5, 33)
    assert windows.shape == (5, 33) and windows.dtype == torch.int64
    assert torch.equal(windows, eval_windows(stream.to(torch.uint8), 5, 33))
    assert int(windows[0, 0]) == 0 and int(windows[-1, -1]) == 999 % 256
    with pytest.raises(ValueError, match="fewer than length"):
        eval_windows(stream[:10].to(torch.uint8), 1, 33)


@pytest.mark.parametrize("mixer", ["glu", "memory"])
def test_checkpoint_round_trip(tmp_path, mixer):
    config = TNNConfig(vocab_size=256, d_model=16, n_layers=2, n=31, rpe_hidden=8, mixer=mixer, seed=3)
    model = TNNLanguageModel(config)
    with torch.no_grad():  # move away from the seeded init, so the load cannot pass by re-initialising
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config == config
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    tokens = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(tokens), loaded(tokens))


def test_config_and_decoder_refusals():
    with pytest.raises(ValueError, match="mixer must be one of"):
        TNNConfig(mixer="attention")
    model = TNNLanguageModel(TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8))
    with pytest.raises(ValueError, match="one layer per block"):
        SSMDecoder(model, layers=[])


def test_learning_rate_schedule():
    args = parse_args(["--steps", "100", "--warmup", "10", "--lr", "1e-3"])
    assert learning_rate(0, args) == pytest.approx(1e-4)
    assert learning_rate(9, args) == pytest.approx(1e-3)
    assert learning_rate(55, args) == pytest.approx(0.55e-3)
    assert learning_rate(100, args) == pytest.approx(1e-4)


def _flags(out, steps, *extra):
    return ["--size", TINY, "--steps", str(steps), "--batch", "2", "--warmup", "2", "--val-windows", "2",
            "--eval-every", "3", "--checkpoint-every", "2", "--threads", "1", "--out", str(out), "--quiet", *extra]


def _args(out, steps, *extra):
    return parse_args(_flags(out, steps, *extra))


def _same_weights(path_a, path_b):
    a, b = load_model(path_a), load_model(path_b)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    return a


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 8-step run: the weights every interrupted run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("straight")
    record = train(_args(out, 8))
    return out, record


def test_resume_after_the_budget_matches_an_uninterrupted_run(tmp_path, straight_run):
    straight, record = straight_run
    stopped = train(_args(tmp_path, 8, "--minutes", "1e-6"))
    assert stopped["steps"] == 1, "the budget stops after the step that used it up"
    resumed = train(_args(tmp_path, 8, "--resume", "--minutes", "1e-6"))
    assert resumed["steps"] == 2, "--minutes is this invocation's budget, not the run's"
    resumed = train(_args(tmp_path, 8, "--resume"))
    assert resumed["steps"] == record["steps"] == 8
    model = _same_weights(straight / "model.safetensors", tmp_path / "model.safetensors")
    assert not torch.equal(TNNLanguageModel(model.config).head.weight, model.head.weight), "training moves weights"
    assert resumed["val_history"] == record["val_history"] and resumed["val_bpb"] == record["val_bpb"]
    assert resumed["bytes_seen"] == 8 * 2 * 31 and len(resumed["sittings"]) == 3
    assert "stdlib" not in resumed["data"], "no machine path in the record"


def test_resume_refuses_another_config_or_schedule(tmp_path):
    train(_args(tmp_path, 2))
    other = _args(tmp_path, 4, "--resume")
    other.size = "d_model=8,n_layers=1,n=31,rpe_hidden=8"
    with pytest.raises(CheckpointError, match="differs from"):
        train(other)
    with pytest.raises(CheckpointError, match="schedule.*'lr'"):
        train(_args(tmp_path, 2, "--resume", "--lr", "1e-2"))


def _spawn(out, steps, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TRITON_INTERPRET"))}
    return subprocess.Popen([sys.executable, "-m", "etsc_triton.demo.train", *_flags(out, steps, *extra)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(out, steps):
    process = _spawn(out, steps, "--resume")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()[-2000:]


def test_kill_at_random_moments_then_resume_bit_for_bit(tmp_path, straight_run):
    """kill -9 at random moments, including while a checkpoint is being written, then --resume: every trial ends
    with the uninterrupted run's weights."""
    straight, _ = straight_run
    rng = random.Random(0)
    mid_write = 0
    for trial in range(6):
        out = tmp_path / f"trial{trial}"
        process = _spawn(out, 8, "--checkpoint-every", "1")
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).exists() and time.monotonic() < deadline:  # past the imports: steps run
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        mid_write += any(out.glob(f".{CHECKPOINT}.tmp-*"))
        _finish(out, 8)
        _same_weights(straight / "model.safetensors", out / "model.safetensors")
    assert mid_write >= 0  # how many kills hit a write varies; the next test forces one


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, straight_run, monkeypatch):
    """A write that dies after the temporary file is written but before the rename leaves the old checkpoint."""
    straight, _ = straight_run
    train(_args(tmp_path, 8, "--minutes", "1e-6"))
    before = (tmp_path / CHECKPOINT).read_bytes()
    import etsc_triton.demo.checkpoint as checkpoint_module

    def die(*args):
        raise KeyboardInterrupt("killed between write and rename")

    monkeypatch.setattr(checkpoint_module.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        train(_args(tmp_path, 8, "--resume", "--minutes", "1e-6"))
    monkeypatch.undo()
    assert list(tmp_path.glob(f".{CHECKPOINT}.tmp-*")), "the interrupted write left its temporary file"
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    train(_args(tmp_path, 8, "--resume"))
    assert not list(tmp_path.glob(f".{CHECKPOINT}.tmp-*"))
    _same_weights(straight / "model.safetensors", tmp_path / "model.safetensors")


def test_sigint_saves_a_checkpoint_and_exits(tmp_path, straight_run):
    straight, _ = straight_run
    process = _spawn(tmp_path, 8, "--checkpoint-every", "1")
    deadline = time.monotonic() + 120
    while not (tmp_path / CHECKPOINT).exists() and time.monotonic() < deadline:  # the loop runs
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err.decode()[-2000:]
    assert "stopped by SIGINT" in err.decode()
    state = load_checkpoint(tmp_path / CHECKPOINT, lambda m: torch.optim.AdamW(m.parameters()))
    assert 1 <= state["step"] <= 8
    _finish(tmp_path, 8)
    _same_weights(straight / "model.safetensors", tmp_path / "model.safetensors")


def _tiny_model():
    return TNNLanguageModel(TNNConfig(vocab_size=256, d_model=16, n_layers=1, n=31, rpe_hidden=8))


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "not_safetensors", "folder", "no_config",
                                    "bad_config", "wrong_shapes"])
def test_bad_weights_files_name_the_path(tmp_path, damage):
    path = tmp_path / "weights.safetensors"
    save_model(_tiny_model(), path)
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "not_safetensors":
        path.write_text("hello, I am a text file\n" * 10)
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    elif damage == "no_config":
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(2)}, str(path))
    elif damage == "bad_config":
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(2)}, str(path), metadata={"config": '{"d_model": "wide"}'})
    elif damage == "wrong_shapes":
        other = TNNLanguageModel(TNNConfig(vocab_size=256, d_model=16, n_layers=1, n=31, rpe_hidden=8))
        tensors = {k: torch.zeros(3) if k == "head.weight" else v for k, v in other.state_dict().items()}
        from safetensors.torch import save_file
        save_file(tensors, str(path), metadata={"config": json.dumps(other.config.__dict__)})
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)


@pytest.mark.parametrize("field, value", [("d_model", "wide"), ("n_layers", 0), ("glu_hidden", 2.5), ("decay", 1.5),
                                          ("seed", None), ("n", True)])
def test_a_bad_config_field_is_named(field, value):
    with pytest.raises(ValueError, match=f"TNNConfig: {field} must be"):
        TNNConfig(**{field: value})


def _checkpoint(tmp_path, step=2):
    train(_args(tmp_path, 4, "--minutes", "1e-6"))
    train(_args(tmp_path, 4, "--resume", "--minutes", "1e-6"))
    return tmp_path / CHECKPOINT


def _optimizer(model):
    return torch.optim.AdamW(model.parameters())


def test_damaged_checkpoints_are_refused_with_the_path(tmp_path):
    path = _checkpoint(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path}.*digest"):
        load_checkpoint(path, _optimizer)
    with pytest.raises(CheckpointError, match=str(path)):
        train(_args(tmp_path, 4, "--resume"))
    weights = tmp_path / "w.safetensors"
    save_model(_tiny_model(), weights)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(weights, _optimizer)


def test_checkpoint_parts_that_disagree_are_refused(tmp_path):
    model = _tiny_model()
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()  # the optimizer is at step 1
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, optimizer, step=3, generator=torch.Generator(), train_bpb=[1.0, 1.0, 1.0], info={})
    with pytest.raises(CheckpointError, match="parts disagree.*step 3.*step 1"):
        load_checkpoint(path, _optimizer)
    save_checkpoint(path, model, optimizer, step=1, generator=torch.Generator(), train_bpb=[1.0, 2.0], info={})
    with pytest.raises(CheckpointError, match="parts disagree.*2 recorded losses"):
        load_checkpoint(path, _optimizer)


class _Payload:
    """Unpickling this writes a marker file: a crafted checkpoint that would run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT).write_bytes(pickle.dumps({"optimizer": _Payload(str(marker))}))
    torch.save({"optimizer": _Payload(str(marker))}, out / "train_state.pt")
    with pytest.raises(CheckpointError, match=str(out / CHECKPOINT)):
        train(_args(out, 4, "--resume"))
    assert not marker.exists()
    path = tmp_path / "weights.safetensors"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


def test_stream_windows_score_every_byte_once():
    for total, n in [(2, 8), (10, 4), (100, 16), (101, 16), (1000, 64), (17, 16)]:
        scored = []
        for start, first in stream_windows(total, n):
            width = min(n, total - 1)
            assert 0 <= start and start + width <= total - 1
            scored += list(range(first, start + width + 1))
        assert scored == list(range(1, total)), (total, n)


def test_stream_bits_per_byte_agrees_with_windows():
    """With a stream of exactly one window the stream score is the window score."""
    model = _tiny_model()
    tokens = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(0))
    stream = stream_bits_per_byte(model, tokens)
    assert stream["bytes_scored"] == 31
    assert stream["bits_per_byte"] == pytest.approx(bits_per_byte(model, tokens[None].long()), rel=1e-12)


def test_ship_partial_ships_where_the_budget_stopped_and_says_so(tmp_path, monkeypatch):
    import etsc_triton.demo.train as train_module

    paths = (tmp_path / "ship" / "w.safetensors", tmp_path / "ship" / "w.json")
    paths[0].parent.mkdir()
    monkeypatch.setattr(train_module, "shipped_paths", lambda mixer: paths)
    train(_args(tmp_path / "run", 6, "--minutes", "1e-6", "--ship"))
    assert not paths[0].exists(), "a run stopped before --steps ships nothing without --ship-partial"
    train(_args(tmp_path / "run", 6, "--minutes", "1e-6", "--ship", "--ship-partial", "--resume"))
    record = json.loads(paths[1].read_text())
    assert record["steps"] == 2 and record["target_steps"] == 6
    final, shipped = load_model(tmp_path / "run" / "model.safetensors"), load_model(paths[0])
    for (name, p), q in zip(final.state_dict().items(), shipped.state_dict().values(), strict=True):
        assert torch.equal(p.bfloat16().float(), q), name  # the stopped run's weights, in the shipped dtype
    with pytest.raises(SystemExit):
        parse_args(["--ship-partial"])


def test_shipped_weights():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert total <= 16 * 10**6
    for mixer in ("glu", "memory"):
        model, record = load_shipped(mixer)
        assert model.config.mixer == mixer and model.config.vocab_size == 256
        assert record["parameters"] == sum(p.numel() for p in model.parameters())
        assert record["val_bpb"] < 8.0, "a trained model beats the uniform 8 bits per byte"
        assert set(record["data"]["splits"]) == set(SPLITS)
        assert "stdlib" not in record["data"], "no machine path in a shipped record"
        assert set(record["baselines"]) >= {"gzip_9_per_file", "xz_9e_per_file", "xz_9e_concatenated",
                                            "count_order3"}


def test_the_shipped_glu_model_meets_its_target():
    """The GLU model's run is complete and beats the order-3 count model on the whole test split."""
    _, glu = load_shipped("glu")
    assert glu["steps"] == glu["target_steps"], "the shipped GLU run is complete"
    assert glu["test_bpb"] <= 1.9 < glu["baselines"]["count_order3"] + 0.01


def _memory_run_is_partial() -> bool:
    _, memory = load_shipped("memory")
    return memory["steps"] < memory["target_steps"]


@pytest.mark.xfail(_memory_run_is_partial(), strict=True,
                   reason="the shipped MemoryFormer run is partial (786 of 6000 steps; 8% above the GLU at step 500)")
def test_the_memoryformer_model_is_within_5_percent_of_the_glu_at_equal_steps():
    """The MemoryFormer variant, trained on the same bytes in the same order with the same schedule, is within 5%
    of the GLU at equal steps: on the test split when both runs are complete, else on the validation windows at
    the last step both records validated (from 1000 steps on)."""
    _, glu = load_shipped("glu")
    _, memory = load_shipped("memory")
    same = ("steps", "batch", "lr", "warmup", "weight_decay", "seed", "precision")
    assert {k: memory["schedule"][k] for k in same} == {k: glu["schedule"][k] for k in same}
    assert memory["config"]["n"] == glu["config"]["n"]
    if memory["steps"] == memory["target_steps"]:
        assert memory["test_bpb"] <= 1.05 * glu["test_bpb"]
    else:
        glu_val, memory_val = dict(glu["val_history"]), dict(memory["val_history"])
        step = max(set(glu_val) & set(memory_val))
        assert step >= 1000, f"a partial MemoryFormer run is compared from 1000 steps on (last common: {step})"
        assert memory_val[step] <= 1.05 * glu_val[step], (step, memory_val[step], glu_val[step])


@pytest.mark.parametrize("mixer", ["glu", "memory"])
def test_held_out_windows_reproduce_the_recorded_test_figure(mixer):
    """64 chunks of 4 KiB spread over the test split (15% of it), each scored as the record scores the whole split
    (windows of n with stride n/2), land within 5% of the whole-split figure the training record holds. (16
    chunks measured 6.8% below for the GLU model, 64 chunks 0.3% above: the files differ that much.)"""
    model, record = load_shipped(mixer)
    tokens = load_split("test")
    chunks = eval_windows(tokens, 64, 4096)
    scored = [stream_bits_per_byte(model, chunk) for chunk in chunks]
    here = sum(s["bits_per_byte"] * s["bytes_scored"] for s in scored) / sum(s["bytes_scored"] for s in scored)
    assert abs(here - record["test_bpb"]) <= 0.05 * record["test_bpb"], (here, record["test_bpb"])
