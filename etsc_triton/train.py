"""``python -m etsc_triton.train``: train the TNN byte-level language model on the Python standard library.

Data: :mod:`etsc_triton.data` (the running Python's stdlib sources, split by a hash of the file path). Each
step draws ``batch`` random windows of ``n + 1`` bytes from the train stream (a seeded generator) and minimises
the next-byte cross-entropy with AdamW (linear warm-up, cosine decay to a tenth of the peak rate, gradient
clipping at 1). Validation: bits per byte on a fixed set of evenly spaced val windows.

Checkpoints (every ``--checkpoint-every`` steps, at the end and when the ``--minutes`` budget runs out) go to
``--out``: ``model.safetensors`` (the weights, config in the metadata; :func:`etsc_triton.nn.checkpoint.load_model`
reads it), ``train_state.pt`` (optimizer state, step, data generator state, elapsed time: ``torch.save``) and
``record.json`` (the training record). ``--resume`` continues from them exactly: the same steps give the same
weights as an uninterrupted run. ``--ship`` copies the final weights and record into the package
(``etsc_triton/weights/tnn_<mixer>.safetensors`` and ``.json``), where the demo loads them.

    python -m etsc_triton.train                       # the Linear (GLU) model, about 12 minutes on 2 CPU cores
    python -m etsc_triton.train --mixer memory        # the MemoryFormer variant, same budget
    python -m etsc_triton.train --resume              # continue an interrupted run
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .data import eval_windows, load_split, split_record
from .nn.checkpoint import load_model, save_model, shipped_paths
from .nn.tnn import MIXERS, TNNConfig, TNNLanguageModel

LN2 = math.log(2.0)


def default_config(mixer: str = "glu") -> TNNConfig:
    """The shipped models' sizes: 4 layers, D = 128, n = 512 (about 0.7M parameters for ``"glu"``).

    The memory variant halves the GLU hidden width (128) and hashes 4 bits per table: its tables hold
    ``2^4 / 4 = 4`` times the parameters of the linear layers they replace (about 1.1M parameters in all).
    """
    if mixer == "memory":
        return TNNConfig(vocab_size=256, d_model=128, n_layers=4, n=512, rpe_hidden=32, decay=0.99,
                         glu_hidden=128, mixer="memory", code_length=4)
    return TNNConfig(vocab_size=256, d_model=128, n_layers=4, n=512, rpe_hidden=32, decay=0.99)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m etsc_triton.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixer", choices=MIXERS, default="glu", help="channel mixing: GLU or memory layers")
    parser.add_argument("--steps", type=int, default=450, help="optimizer steps (the schedule's length)")
    parser.add_argument("--batch", type=int, default=4, help="windows of n + 1 bytes per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=30, help="linear warm-up steps")
    parser.add_argument("--minutes", type=float, default=12.0,
                        help="wall-clock budget, counted across --resume: stop (and save) after it")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--val-windows", type=int, default=16, help="val windows of n + 1 bytes")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validations")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default checkpoints/<mixer>)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--ship", action="store_true", help="copy the final weights into etsc_triton/weights/")
    parser.add_argument("--size", default=None,
                        help="override model sizes, e.g. d_model=32,n_layers=1,n=64 (tests)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def learning_rate(step: int, elapsed_s: float, args: argparse.Namespace) -> float:
    """Linear warm-up to ``args.lr``, then cosine decay to ``args.lr / 10`` at ``args.steps`` steps or at the
    ``args.minutes`` budget, whichever comes first (so a slow machine still anneals; without the budget binding
    the schedule, and the run, depend on the step alone)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = max((step - args.warmup) / max(args.steps - args.warmup, 1), elapsed_s / (args.minutes * 60))
    return args.lr * (0.1 + 0.45 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def bits_per_byte(model: TNNLanguageModel, windows: torch.Tensor, batch: int = 8) -> float:
    """Mean next-byte cross-entropy in bits over ``windows [W, L + 1]`` (every position of every window)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in windows.split(batch):
        logits = model(chunk[:, :-1])
        total += float(F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"))
        count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / count / LN2


def _config(args: argparse.Namespace) -> TNNConfig:
    fields = asdict(default_config(args.mixer))
    if args.size:
        for item in args.size.split(","):
            key, value = item.split("=")
            if key not in fields:
                raise ValueError(f"--size: unknown field {key!r}; fields: {sorted(fields)}")
            fields[key] = type(fields[key] if fields[key] is not None else 1)(value)
    return TNNConfig(**{**fields, "seed": args.seed})


def train(args: argparse.Namespace) -> dict:
    """Run (or resume) training; return the training record (also written to ``out/record.json``)."""
    torch.set_num_threads(args.threads)
    out = args.out or Path("checkpoints") / args.mixer
    out.mkdir(parents=True, exist_ok=True)
    config = _config(args)
    train_tokens = load_split("train")
    val = eval_windows(load_split("val"), args.val_windows, config.n + 1)
    generator = torch.Generator().manual_seed(args.seed)
    if args.resume:
        model = load_model(out / "model.safetensors")
        if model.config != config:
            raise ValueError(f"--resume: the checkpoint's config {model.config} differs from {config}")
    else:
        model = TNNLanguageModel(config)
    model.train()
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01)
    step, elapsed, history = 0, 0.0, []
    if args.resume:
        state = torch.load(out / "train_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, elapsed, history = state["step"], state["elapsed_s"], state["history"]

    record = {
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "target_steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "threads": args.threads,
        "torch": torch.__version__,
        "data": split_record(),
    }

    def checkpoint() -> None:
        save_model(model, out / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "generator": generator.get_state(), "step": step,
                    "elapsed_s": elapsed, "history": history}, out / "train_state.pt")
        recent = [h["train_bpb"] for h in history[-50:]]
        record.update(steps=step, seconds=round(elapsed, 1), tokens=step * args.batch * config.n,
                      final_train_bpb=sum(recent) / len(recent) if recent else None,
                      val_bpb=bits_per_byte(model, val), val_windows=args.val_windows,
                      stopped_by_budget=step < args.steps)
        (out / "record.json").write_text(json.dumps(record, indent=1))

    high = train_tokens.numel() - config.n - 1
    bar = tqdm(total=args.steps, initial=step, disable=args.quiet, unit="step", dynamic_ncols=True)
    start = time.perf_counter() - elapsed
    while step < args.steps:
        offsets = torch.randint(0, high, (args.batch,), generator=generator)
        batch = torch.stack([train_tokens[o : o + config.n + 1] for o in offsets.tolist()]).long()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, elapsed, args)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        elapsed = time.perf_counter() - start
        loss_bpb = loss.item() / LN2
        history.append({"step": step, "train_bpb": loss_bpb, "seconds": round(elapsed, 2)})
        bar.update(1)
        bar.set_postfix(loss_bpb=f"{loss_bpb:.3f}", tok_s=f"{step * args.batch * config.n / elapsed:.0f}",
                        budget_left=f"{max(args.minutes * 60 - elapsed, 0) / 60:.1f}min")
        if step % args.eval_every == 0 and step < args.steps:
            bar.write(f"step {step}: val {bits_per_byte(model, val):.4f} bits/byte")
        out_of_time = elapsed >= args.minutes * 60
        if step % args.checkpoint_every == 0 or step == args.steps or out_of_time:
            checkpoint()
        if out_of_time:
            bar.write(f"budget of {args.minutes} min reached at step {step}")
            break
    bar.close()
    if not (out / "record.json").exists():
        checkpoint()
    record = json.loads((out / "record.json").read_text())
    if args.ship:
        weights, record_path = shipped_paths(args.mixer)
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "model.safetensors", weights)
        record_path.write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    record = train(args)
    print(f"{record['steps']} steps in {record['seconds']} s; train {record['final_train_bpb']:.4f}, "
          f"val {record['val_bpb']:.4f} bits/byte; {record['parameters']} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
