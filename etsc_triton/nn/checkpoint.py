"""Save and load :class:`~etsc_triton.nn.tnn.TNNLanguageModel` weights as safetensors, config in the metadata.

The shipped trained models live in ``etsc_triton/weights/``: ``tnn_<mixer>.safetensors`` (float32 weights; the
``config`` metadata entry is the JSON of the :class:`~etsc_triton.nn.tnn.TNNConfig`) and ``tnn_<mixer>.json``
(the training record: steps, time, losses, data split).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .tnn import MIXERS, TNNConfig, TNNLanguageModel

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def save_model(model: TNNLanguageModel, path: str | Path) -> None:
    """Write the model's float weights and its config to ``path`` (safetensors)."""
    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(asdict(model.config))})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TNNLanguageModel:
    """The model saved at ``path`` by :func:`save_model` (eval mode, no gradients), on ``device``."""
    with safe_open(str(path), framework="pt") as handle:
        config = TNNConfig(**json.loads(handle.metadata()["config"]))
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    model = TNNLanguageModel(config)
    model.load_state_dict(tensors, strict=True)
    return model.to(device)


def shipped_paths(mixer: str = "glu") -> tuple[Path, Path]:
    """``(weights, training record)`` paths of the trained model shipped in the package."""
    if mixer not in MIXERS:
        raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
    return WEIGHTS_DIR / f"tnn_{mixer}.safetensors", WEIGHTS_DIR / f"tnn_{mixer}.json"


def load_shipped(mixer: str = "glu", device: str | torch.device = "cpu") -> tuple[TNNLanguageModel, dict[str, Any]]:
    """The shipped trained model and its training record."""
    weights, record = shipped_paths(mixer)
    if not weights.exists():
        raise FileNotFoundError(f"no shipped weights at {weights}: train them with python -m etsc_triton.train")
    return load_model(weights, device), json.loads(record.read_text())
