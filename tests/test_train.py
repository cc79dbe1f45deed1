"""The stdlib data split, the checkpoint round trip, training resumption and the shipped weights."""

import json

import pytest
import torch

from etsc_triton.data import SPLITS, eval_windows, load_split, source_files, split_files, split_of, split_record
from etsc_triton.nn.checkpoint import WEIGHTS_DIR, load_model, load_shipped, save_model
from etsc_triton.nn.tnn import SSMDecoder, TNNConfig, TNNLanguageModel
from etsc_triton.train import learning_rate, parse_args, train

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
    args = parse_args(["--steps", "100", "--warmup", "10", "--lr", "1e-3", "--minutes", "1000"])
    assert learning_rate(0, 0.0, args) == pytest.approx(1e-4)
    assert learning_rate(9, 0.0, args) == pytest.approx(1e-3)
    assert learning_rate(100, 0.0, args) == pytest.approx(1e-4)
    assert learning_rate(50, 1000 * 60, args) == pytest.approx(1e-4), "the budget ends the schedule"


def _args(out, steps, *extra):
    return parse_args(["--size", TINY, "--steps", str(steps), "--batch", "2", "--warmup", "2", "--val-windows", "2",
                       "--checkpoint-every", "2", "--minutes", "1000", "--out", str(out), "--quiet", *extra])


def test_resume_matches_an_uninterrupted_run(tmp_path):
    straight = train(_args(tmp_path / "a", 4))
    train(_args(tmp_path / "b", 2))
    resumed = train(_args(tmp_path / "b", 4, "--resume"))
    assert straight["steps"] == resumed["steps"] == 4
    a, b = load_model(tmp_path / "a" / "model.safetensors"), load_model(tmp_path / "b" / "model.safetensors")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    initial = TNNLanguageModel(a.config)
    assert not torch.equal(initial.head.weight, a.head.weight), "training must move the weights"
    assert straight["val_bpb"] == resumed["val_bpb"]
    record = json.loads((tmp_path / "b" / "record.json").read_text())
    assert record["data"]["splits"]["test"]["files"] > 0 and record["tokens"] == 4 * 2 * 31


def test_resume_refuses_another_config(tmp_path):
    train(_args(tmp_path / "c", 2))
    other = _args(tmp_path / "c", 4, "--resume")
    other.size = "d_model=8,n_layers=1,n=31,rpe_hidden=8"
    with pytest.raises(ValueError, match="differs from"):
        train(other)


def test_shipped_weights():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob("*.safetensors"))
    assert total <= 8 * 2**20
    for mixer in ("glu", "memory"):
        model, record = load_shipped(mixer)
        assert model.config.mixer == mixer and model.config.vocab_size == 256
        assert record["parameters"] == sum(p.numel() for p in model.parameters())
        assert record["val_bpb"] < 8.0, "a trained model beats the uniform 8 bits per byte"
        assert set(record["data"]["splits"]) == set(SPLITS)
