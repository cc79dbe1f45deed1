"""``python -m etsc_triton.demo.train``: train the byte-level TNN language model on the Python standard library.

Data: :mod:`etsc_triton.demo.data` (the running Python's stdlib sources, split by a hash of the file path). Each
step draws ``--batch`` random windows of ``n + 1`` bytes from the train stream (a seeded generator) and minimises
the next-byte cross-entropy with AdamW: linear warm-up, cosine decay to a tenth of the peak rate at ``--steps``,
gradient clipping at 1. The schedule depends on the step alone, so a run is the same however it is split into
sittings. ``--precision bf16`` (the default) runs the matrix products in bfloat16 (``torch.autocast``; the
weights, the optimizer and the convolutions stay float32): on CPUs with bfloat16 matrix units (AMX) a GEMM runs
about 6x faster than in float32 (``python -m perf.cpu_training``); ``fp32`` is the portable choice. Validation: bits per byte on fixed val windows.

Checkpoints go to ``--out``/``checkpoint.safetensors`` every ``--checkpoint-every`` steps, at the end, when this
invocation's ``--minutes`` run out and on SIGINT / SIGTERM (Ctrl-C saves, then exits): one crash-safe file with
the weights, the optimizer, the step and the data generator (:mod:`etsc_triton.demo.checkpoint`).
``--resume`` continues from it: the same steps give the same weights, bit for bit, as an uninterrupted run with
the same thread count. At the end the run writes ``model.safetensors`` and ``record.json`` (the training record:
losses, throughput, and with ``--test`` the bits per byte on the whole test split beside the baselines on the
same bytes); ``--ship`` copies the weights (bfloat16) and the record into ``etsc_triton/demo/weights/``.

    python -m etsc_triton.demo.train --test --ship                    # the shipped Linear (GLU) model
    python -m etsc_triton.demo.train --mixer memory --test --ship     # the MemoryFormer variant, same bytes
    python -m etsc_triton.demo.train --resume --test --ship           # continue an interrupted run
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..nn.memory import MemoryLayer
from .baselines import baselines
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_model, shipped_paths
from .data import eval_windows, load_split, split_files, split_record, stdlib_root
from .model import MIXERS, TNNConfig, TNNLanguageModel
from .scoring import LN2, bits_per_byte, stream_bits_per_byte

CHECKPOINT = "checkpoint.safetensors"
PRECISIONS = ("bf16", "fp32")
# What a resumed run must share with the run it continues (the rest: threads, budget, output, may change).
SCHEDULE = ("mixer", "steps", "batch", "lr", "warmup", "weight_decay", "seed", "precision", "size")


def default_config(mixer: str = "glu") -> TNNConfig:
    """The shipped models: 6 layers, D = 192, n = 512, position MLP on ``j / n`` and ``log(1 + j)``.

    ``"glu"``: GLU channel mixing of hidden width 384 (about 2.1M parameters). ``"memory"``: the GLU's two linear
    layers replaced by MemoryFormer layers hashing 4 bits per table, hidden width 352: 4.4 times fewer
    channel-mixing FLOPs per token than the GLU, in tables of about 4.9M parameters.
    """
    common = dict(vocab_size=256, d_model=192, n_layers=6, n=512, rpe_hidden=32, decay=0.99, rpe_inputs="log_linear")
    if mixer == "memory":
        return TNNConfig(**common, glu_hidden=352, mixer="memory", code_length=4)
    return TNNConfig(**common)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m etsc_triton.demo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixer", choices=MIXERS, default="glu", help="channel mixing: GLU or memory layers")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps (the schedule's length)")
    parser.add_argument("--batch", type=int, default=16, help="windows of n + 1 bytes per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16", help="matrix products in bf16 or fp32")
    parser.add_argument("--minutes", type=float, default=None,
                        help="this invocation's wall-clock budget: checkpoint and stop after it (resume later)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--val-windows", type=int, default=16, help="val windows of n + 1 bytes")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between validations")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default checkpoints/<mixer>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--test", action="store_true",
                        help="at the end, score the whole test split and the baselines on it (a few minutes)")
    parser.add_argument("--ship", action="store_true", help="copy the final weights into etsc_triton/demo/weights/")
    parser.add_argument("--ship-partial", action="store_true",
                        help="with --ship: ship even when --minutes stops the run before --steps (the record's "
                             "steps and target_steps say how far it got; resuming later continues the schedule)")
    parser.add_argument("--size", default=None,
                        help="override model sizes, e.g. d_model=32,n_layers=1,n=64 (tests)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "threads", "val_windows", "eval_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.ship_partial and not args.ship:
        parser.error("--ship-partial needs --ship")
    if args.minutes is not None and not args.minutes > 0:
        parser.error("--minutes must be > 0")
    return args


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to ``args.lr``, then cosine decay to ``args.lr / 10`` at ``args.steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min((step - args.warmup) / max(args.steps - args.warmup, 1), 1.0)
    return args.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def model_config(args: argparse.Namespace) -> TNNConfig:
    """The default config of ``args.mixer`` with ``--size`` overrides and ``--seed``."""
    fields = asdict(default_config(args.mixer))
    if args.size:
        for item in args.size.split(","):
            key, _, value = item.partition("=")
            if key not in fields:
                raise ValueError(f"--size: unknown field {key!r}; fields: {sorted(fields)}")
            kind = type(fields[key]) if fields[key] is not None else int
            fields[key] = value if kind is str else kind(value)
    return TNNConfig(**{**fields, "seed": args.seed})


def make_optimizer(model: TNNLanguageModel, args: argparse.Namespace) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)


def model_flops_per_byte(model: TNNLanguageModel) -> float:
    """Training FLOPs per byte (forward and backward).

    A weight used once per byte costs 6 FLOPs (2 forward, 4 backward): 6 x the parameters of every dense layer. A
    memory layer touches only the K rows its codes pick, ``2 K d_out`` FLOPs per pass, and three passes of that
    (forward, score gradient, table gradient), not its table size. The FFT convolutions: per channel and layer,
    two real FFTs of 2n points and a complex product forward, twice that backward, counted as
    ``3 x 3 x 2.5 x 2n log2(2n) / n`` per byte.
    """
    config = model.config
    memory_layers = [m for m in model.modules() if isinstance(m, MemoryLayer)]
    table_params = {id(m.tables) for m in memory_layers}
    dense = sum(p.numel() for p in model.parameters() if id(p) not in table_params)
    gathers = sum(3 * 2 * m.num_tables * m.out_features for m in memory_layers)
    size = 2 * config.n
    conv = 3 * 3 * 2.5 * size * math.log2(size) / config.n * config.d_model * config.n_layers
    return 6 * dense + gathers + conv


class _Stop:
    """SIGINT / SIGTERM set a flag the loop reads after each step (the step and its checkpoint complete); a
    second signal gets the default behaviour."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _schedule(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in SCHEDULE}


def _resume(out: Path, args: argparse.Namespace, config: TNNConfig):
    path = out / CHECKPOINT
    for partial in out.glob(f".{CHECKPOINT}.tmp-*"):  # a write a kill interrupted: never renamed, never read
        partial.unlink()
    state = load_checkpoint(path, lambda model: make_optimizer(model, args))
    if state["config"] != config:
        raise CheckpointError(f"{path}: the checkpoint's config {state['config']} differs from this run's {config}")
    saved = state["info"].get("schedule", {})
    changed = {k: (saved.get(k), v) for k, v in _schedule(args).items() if saved.get(k) != v}
    if changed:
        raise CheckpointError(f"{path}: --resume must keep the run's schedule; changed (checkpoint, now): {changed}")
    return state


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) training; return the training record (also written to ``out/record.json``)."""
    torch.set_num_threads(args.threads)
    out = args.out or Path("checkpoints") / args.mixer
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(args)
    train_tokens = load_split("train")
    val = eval_windows(load_split("val"), args.val_windows, config.n + 1)
    generator = torch.Generator().manual_seed(args.seed)
    if args.resume:
        state = _resume(out, args, config)
        model, optimizer, step = state["model"], state["optimizer"], state["step"]
        generator.set_state(state["generator_state"])
        train_bpb, info = state["train_bpb"], state["info"]
    else:
        model = TNNLanguageModel(config)
        model.train()
        model.requires_grad_(True)
        optimizer = make_optimizer(model, args)
        step, train_bpb = 0, []
        info = {"schedule": _schedule(args), "val": [], "seconds": 0.0, "sittings": []}
    bytes_per_step = args.batch * config.n
    flops_per_byte = model_flops_per_byte(model)
    high = train_tokens.numel() - config.n - 1
    sitting = {"from_step": step, "threads": args.threads, "seconds": 0.0}
    info["sittings"].append(sitting)
    start = time.perf_counter()
    base_seconds = info["seconds"]

    def checkpoint() -> None:
        sitting.update(to_step=step, seconds=round(time.perf_counter() - start, 1))
        info["seconds"] = round(base_seconds + sitting["seconds"], 1)
        save_checkpoint(out / CHECKPOINT, model, optimizer, step=step, generator=generator, train_bpb=train_bpb,
                        info=info)

    autocast = args.precision == "bf16"
    stopped_by = None
    bar = tqdm(total=args.steps, initial=step, disable=args.quiet, unit="step", dynamic_ncols=True)
    with _Stop() as stop:
        while step < args.steps:
            offsets = torch.randint(0, high, (args.batch,), generator=generator)
            batch = torch.stack([train_tokens[o : o + config.n + 1] for o in offsets.tolist()]).long()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, args)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            train_bpb.append(loss.item() / LN2)
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss_bpb=f"{train_bpb[-1]:.3f}",
                            bytes_s=f"{(step - sitting['from_step']) * bytes_per_step / elapsed:.0f}")
            if step % args.eval_every == 0 or step == args.steps:
                info["val"].append([step, bits_per_byte(model, val)])
                bar.write(f"step {step}: val {info['val'][-1][1]:.4f} bits/byte")
            out_of_time = args.minutes is not None and elapsed >= args.minutes * 60
            if stop.signal is not None:
                stopped_by = signal.Signals(stop.signal).name
            elif out_of_time:
                stopped_by = f"the {args.minutes:g}-minute budget"
            if step % args.checkpoint_every == 0 or step == args.steps or stopped_by:
                checkpoint()
            if stopped_by:
                if stop.signal is None:
                    bar.write(f"stopped by {stopped_by} at step {step}; checkpoint {out / CHECKPOINT} "
                              "(continue with --resume)")
                break
        bar.close()
        if step == 0:
            checkpoint()
        record = training_record(model, args, info, train_bpb, step, flops_per_byte)
        finished = step == args.steps and stop.signal is None  # a signal after the last step skips the extras
        finished = finished or (args.ship_partial and stop.signal is None)
        if finished:
            save_model(model, out / "model.safetensors")
            if args.test:
                record.update(test_evaluation(shipped_copy(model)))
        (out / "record.json").write_text(json.dumps(record, indent=1))
        if finished and args.ship:
            ship(out, model, record, args.mixer)
    if stop.signal is not None:
        print(f"stopped by {signal.Signals(stop.signal).name} at step {step}; checkpoint {out / CHECKPOINT}",
              file=sys.stderr)
        raise SystemExit(128 + stop.signal)
    return record


def training_record(model: TNNLanguageModel, args: argparse.Namespace, info: dict[str, Any],
                    train_bpb: list[float], step: int, flops_per_byte: float) -> dict[str, Any]:
    """The facts of a run: config, schedule, data, losses, time and throughput."""
    config = model.config
    bytes_seen = step * args.batch * config.n
    recent = train_bpb[-100:]
    sittings = info["sittings"]
    timed = [s for s in sittings if s.get("to_step", s["from_step"]) > s["from_step"]]
    rates = [(s["to_step"] - s["from_step"]) * args.batch * config.n / s["seconds"] for s in timed if s["seconds"]]
    data = split_record()
    return {
        "command": "python -m etsc_triton.demo.train " + " ".join(_command_args(args)),
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "schedule": info["schedule"],
        "steps": step,
        "target_steps": args.steps,
        "bytes_seen": bytes_seen,
        "epochs": bytes_seen / data["splits"]["train"]["bytes"],
        "seconds": info["seconds"],
        "sittings": sittings,
        "bytes_per_second": rates,
        "model_flops_per_byte": flops_per_byte,
        "final_train_bpb": sum(recent) / len(recent) if recent else None,
        "val_history": info["val"],
        "val_bpb": info["val"][-1][1] if info["val"] else None,
        "val_windows": args.val_windows,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "data": data,
    }


def _command_args(args: argparse.Namespace) -> list[str]:
    """The flags that define the run (the schedule), as a reproducing command line."""
    words = []
    for name in SCHEDULE:
        value = getattr(args, name)
        if value is not None:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return words


SHIPPED_DTYPE = torch.bfloat16  # half the bytes in the wheel; the test figures are measured on these weights


def shipped_copy(model: TNNLanguageModel) -> TNNLanguageModel:
    """A float32 copy of the model with its weights rounded to the shipped dtype, in eval mode."""
    copy = TNNLanguageModel(model.config)
    copy.load_state_dict({k: v.detach().to(SHIPPED_DTYPE).float() for k, v in model.state_dict().items()})
    return copy


def test_evaluation(model: TNNLanguageModel) -> dict[str, Any]:
    """Bits per byte of ``model`` (float32 arithmetic) on the whole test split (every byte scored once, stride
    n/2) and the baselines on the same bytes."""
    scored = stream_bits_per_byte(model, load_split("test"))
    return {
        "test_bpb": scored["bits_per_byte"],
        "test_scoring": {**{k: v for k, v in scored.items() if k != "bits_per_byte"},
                         "weights": str(SHIPPED_DTYPE).removeprefix("torch."), "arithmetic": "float32"},
        "baselines": baselines(stdlib_root(), split_files("test")),
    }


def ship(out: Path, model: TNNLanguageModel, record: dict[str, Any], mixer: str) -> None:
    """The final weights in the shipped dtype and the record into the package."""
    weights, record_path = shipped_paths(mixer)
    save_model(model, weights, dtype=SHIPPED_DTYPE)
    record_path.write_text(json.dumps(record, indent=1))


def format_training_table(records: dict[str, dict[str, Any]]) -> str:
    """The shipped runs side by side, from their training records (the application README quotes this)."""
    def bpb(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = ["| model | parameters | steps / schedule | bytes seen | wall time (sittings) | bytes/s per sitting | "
             "val bits/byte by step | test bits/byte |", "|---|---|---|---|---|---|---|---|"]
    for name, r in records.items():
        rates = ", ".join(f"{rate / 1000:.1f}K" for rate in r["bytes_per_second"])
        history = ", ".join(f"{step}: {value:.3f}" for step, value in r["val_history"] if step % 1000 == 0
                            or step == r["val_history"][-1][0])
        lines.append(f"| {name} | {r['parameters']:,} | {r['steps']} / {r['target_steps']} | "
                     f"{r['bytes_seen'] / 1e6:.1f} MB ({r['epochs']:.2f} epochs) | {r['seconds'] / 60:.0f} min "
                     f"({len(r['sittings'])}) | {rates} | {history} | {bpb(r.get('test_bpb'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        record = train(args)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    line = (f"{record['steps']} of {record['target_steps']} steps, {record['seconds']:.0f} s in all; "
            f"train {record['final_train_bpb']:.4f}")
    if record["val_bpb"] is not None:
        line += f", val {record['val_bpb']:.4f}"
    if "test_bpb" in record:
        line += f", test {record['test_bpb']:.4f}"
    print(line + f" bits/byte; {record['parameters']} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
