"""Torch oracles of the MemoryFormer memory layer (its derivation: the op README).

The oracles compute in the precision of their inputs (at least float32), so float64 inputs give a float64
evaluation that the tests differentiate with ``torch.autograd``. Gradients at ``z = 0`` follow torch's
``abs`` (``sign(0) = 0``): the Triton backward makes the same choice.
"""

from __future__ import annotations

import torch

from .contract import compute_dtype, validate_gather, validate_hash, validate_layer


def _hash(z: torch.Tensor, temperature: float, weighting: str) -> tuple[torch.Tensor, torch.Tensor]:
    tau = z.shape[-1]
    z = z.to(compute_dtype(z))
    bit_values = 2 ** torch.arange(tau - 1, -1, -1, device=z.device, dtype=torch.int64)
    codes = ((z >= 0).to(torch.int64) * bit_values).sum(-1).to(torch.int32)
    magnitude = z.abs()
    scores = torch.sigmoid(2 * magnitude / temperature).prod(-1)
    if weighting == "magnitude":
        scores = magnitude.sum(-1) * scores
    return codes, scores


def _gather(codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None):
    dtype = compute_dtype(scores, tables, bias)
    scores = scores.to(dtype)
    y = torch.zeros(*codes.shape[:-1], tables.shape[-1], dtype=dtype, device=tables.device)
    for k in range(tables.shape[0]):
        y = y + scores[..., k, None] * tables[k].to(dtype)[codes[..., k].long()]
    if bias is not None:
        y = y + bias.to(dtype)
    return y


def lsh_hash(
    z: torch.Tensor, *, temperature: float = 1.0, weighting: str = "paper"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle of :func:`etsc_triton.lsh_hash`: codes ``int32 [..., K]`` and scores ``[..., K]``.

    Scores are float32, or float64 when ``z`` is float64.
    """
    validate_hash("lsh_hash", z, temperature, weighting)
    return _hash(z, temperature, weighting)


def memory_gather(
    codes: torch.Tensor,
    scores: torch.Tensor,
    tables: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    deterministic: bool = False,
) -> torch.Tensor:
    """Oracle of :func:`etsc_triton.memory_gather`: ``y = sum_k scores_k * tables[k, codes_k] + bias``.

    ``deterministic`` is accepted for signature parity (the oracle is deterministic). Returns ``tables.dtype``
    (float64 when any input is float64).
    """
    validate_gather("memory_gather", codes, scores, tables, bias)
    y = _gather(codes, scores, tables, bias)
    return y.to(torch.float64 if y.dtype == torch.float64 else tables.dtype)


def memory_layer(
    x: torch.Tensor,
    tables: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    weighting: str = "paper",
    deterministic: bool = False,
) -> torch.Tensor:
    """Oracle of :func:`etsc_triton.memory_layer`: hash ``x`` in chunks of tau, gather, weight, sum, add bias.

    Returns ``x.dtype`` (float64 when any input is float64).
    """
    num_tables, tau, _, _ = validate_layer("memory_layer", x, tables, bias, temperature, weighting)
    z = x.reshape(*x.shape[:-1], num_tables, tau)
    codes, scores = _hash(z, temperature, weighting)
    y = _gather(codes, scores, tables, bias)
    return y.to(torch.float64 if y.dtype == torch.float64 else x.dtype)
