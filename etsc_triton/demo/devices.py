"""Folder names for results and plots by device, shared by the demo and the perf harness."""

from __future__ import annotations

import torch


def device_slug(device: str | torch.device) -> str:
    """A folder-friendly name of the device, e.g. ``nvidia_h100_80gb_hbm3`` for a CUDA device, ``cpu`` otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")
