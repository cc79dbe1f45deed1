"""Weights files and training checkpoints: safetensors only, nothing is ever unpickled.

* A **weights file** (``save_model`` / ``load_model``) holds a :class:`~etsc_triton.demo.model.TNNLanguageModel`'s
  tensors (float32, or bfloat16 for the shipped ones) and, in the metadata, the JSON of its config. The shipped
  trained models are ``weights/tnn_<mixer>.safetensors`` beside their training records ``tnn_<mixer>.json``.
* A **checkpoint** (``save_checkpoint`` / ``load_checkpoint``) is one file holding everything a resumed run
  needs, so its parts cannot come from two different steps: the weights (``model.*``), the AdamW state
  (``optimizer.<i>.*`` per parameter), the data generator's state, the per-step training loss, and as plain
  JSON the step, the config, the schedule, the optimizer's hyperparameters and the validation history. A
  SHA-256 over every tensor's bytes, stored in the metadata, catches a file changed after it was written.

Writes are crash-safe: the new file is written under a temporary name, flushed to disk and renamed over the
old one (an atomic replace), and the previous checkpoint stays as ``<name>.prev`` (a hard link made before the
rename). A kill at any moment leaves a complete checkpoint behind.

Every failure to read a file is a :class:`CheckpointError` that names the file and says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .model import MIXERS, TNNConfig, TNNLanguageModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CHECKPOINT_FORMAT = "etsc_triton.demo.checkpoint/1"


class CheckpointError(ValueError):
    """A weights file or checkpoint that cannot be used; the message names the file."""


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path, keep_previous: bool) -> None:
    """Write ``path`` by temporary file + fsync + atomic rename; the old file stays as ``<path>.prev``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(temporary), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # readable like any file the user writes (safetensors makes it 0600)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    if keep_previous and path.is_file():
        previous = previous_path(path)
        previous.unlink(missing_ok=True)
        os.link(path, previous)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def previous_path(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint that ``path`` replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file, or a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a {'folder' if path.is_dir() else 'special file'})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (a write that never finished?)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    return tensors, metadata


def _config(path: Path, metadata: dict[str, str]) -> TNNConfig:
    if "config" not in metadata:
        raise CheckpointError(f"{path}: no 'config' entry in the metadata: not a weights file of this model")
    try:
        values = json.loads(metadata["config"])
        known = {f.name for f in fields(TNNConfig)}
        if not isinstance(values, dict) or set(values) - known:
            raise ValueError(f"unknown fields {sorted(set(values) - known)}" if isinstance(values, dict)
                             else "not a JSON object")
        return TNNConfig(**values)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: the 'config' metadata is not a valid TNNConfig ({error})") from None


def _model(path: Path, config: TNNConfig, state: dict[str, torch.Tensor]) -> TNNLanguageModel:
    model = TNNLanguageModel(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: the tensors do not match the config's model "
                              f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"the config's model has {tuple(expected[name].shape)}")
    model.load_state_dict({name: t.to(expected[name].dtype) for name, t in state.items()}, strict=True)
    return model


def save_model(model: TNNLanguageModel, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """Write the model's weights (cast to ``dtype`` if given, e.g. bfloat16) and its config to ``path``."""
    tensors = {name: t.detach().to(dtype or t.dtype).contiguous().cpu() for name, t in model.state_dict().items()}
    _atomic_save(tensors, {"config": json.dumps(asdict(model.config))}, Path(path), keep_previous=False)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TNNLanguageModel:
    """The model saved at ``path`` by :func:`save_model` (float32, eval mode, no gradients), on ``device``."""
    path = Path(path)
    tensors, metadata = _read(path)
    return _model(path, _config(path, metadata), tensors).to(device)


def shipped_paths(mixer: str = "glu") -> tuple[Path, Path]:
    """``(weights, training record)`` paths of the trained model shipped in the package."""
    if mixer not in MIXERS:
        raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
    return WEIGHTS_DIR / f"tnn_{mixer}.safetensors", WEIGHTS_DIR / f"tnn_{mixer}.json"


def load_shipped(mixer: str = "glu", device: str | torch.device = "cpu") -> tuple[TNNLanguageModel, dict[str, Any]]:
    """The shipped trained model and its training record."""
    weights, record = shipped_paths(mixer)
    if not weights.exists():
        raise FileNotFoundError(f"no shipped weights at {weights}: train them with "
                                f"python -m etsc_triton.demo.train --mixer {mixer} --ship")
    return load_model(weights, device), json.loads(record.read_text())


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(tensors):
        sha.update(name.encode())
        sha.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def save_checkpoint(path: str | Path, model: TNNLanguageModel, optimizer: torch.optim.Optimizer, *, step: int,
                    generator: torch.Generator, train_bpb: list[float], info: dict[str, Any]) -> None:
    """Write one consistent training checkpoint (see the module docstring) to ``path``, crash-safe.

    Args:
        step: optimizer steps taken.
        generator: the data-order generator (its state is saved).
        train_bpb: the training loss of every step so far (``step`` values).
        info: JSON-serialisable facts to keep (schedule, validation history, seconds, ...).
    """
    tensors = {f"model.{name}": t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    tensors["generator"] = generator.get_state()
    tensors["train_bpb"] = torch.tensor(train_bpb, dtype=torch.float64)
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "step": str(step),
        "config": json.dumps(asdict(model.config)),
        "optimizer": json.dumps(groups),
        "info": json.dumps(info),
        "sha256": _digest(tensors),
    }
    _atomic_save(tensors, metadata, Path(path), keep_previous=True)


def load_checkpoint(path: str | Path, optimizer_factory) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        optimizer_factory: ``model -> optimizer``, building the run's optimizer, whose state is then restored.

    Returns:
        ``{"step", "config", "model", "optimizer", "generator_state", "train_bpb", "info"}``.

    Raises:
        CheckpointError: naming the file, when it is missing, empty, truncated, not safetensors, or its parts
            disagree (tensor digest, step against the loss history or the optimizer's step counts).
    """
    path = Path(path)
    tensors, metadata = _read(path)
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint (format {metadata.get('format')!r}, "
                              f"expected {CHECKPOINT_FORMAT!r}); a weights file cannot be resumed")
    if metadata.get("sha256") != _digest(tensors):
        raise CheckpointError(f"{path}: the tensors do not match the digest written with them "
                              "(the file was changed or damaged after it was written)")
    try:
        step = int(metadata["step"])
        groups = json.loads(metadata["optimizer"])
        info = json.loads(metadata["info"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{path}: damaged metadata ({error})") from None
    config = _config(path, metadata)
    model_state = {name[len("model."):]: t for name, t in tensors.items() if name.startswith("model.")}
    model = _model(path, config, model_state)
    train_bpb = tensors.get("train_bpb", torch.zeros(0, dtype=torch.float64)).tolist()
    if len(train_bpb) != step:
        raise CheckpointError(f"{path}: its parts disagree: step {step} but {len(train_bpb)} recorded losses")
    model.train()
    model.requires_grad_(True)
    optimizer = optimizer_factory(model)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    if step > 0 and set(state) != set(range(len(params))):
        raise CheckpointError(f"{path}: its parts disagree: optimizer state for {len(state)} of "
                              f"{len(params)} parameters")
    for index, values in state.items():
        if "step" in values and int(values["step"]) != step:
            raise CheckpointError(f"{path}: its parts disagree: the weights are at step {step}, the optimizer "
                                  f"state of parameter {index} at step {int(values['step'])}")
        optimizer.state[params[index]] = {key: value.clone() for key, value in values.items()}
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"{path}: {len(groups)} optimizer parameter groups, the run has "
                              f"{len(optimizer.param_groups)}")
    for group, saved in zip(optimizer.param_groups, groups, strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    if "generator" not in tensors:
        raise CheckpointError(f"{path}: no data generator state")
    return {"step": step, "config": config, "model": model, "optimizer": optimizer,
            "generator_state": tensors["generator"], "train_bpb": train_bpb, "info": info}
