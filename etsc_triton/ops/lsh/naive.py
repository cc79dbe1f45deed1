"""Torch oracles of the MemoryFormer memory layer (DESIGN 1.4) and the input validation both paths share.

The oracles compute in the precision of their inputs (at least float32), so float64 inputs give a float64
evaluation that the tests differentiate with ``torch.autograd``. Gradients at ``z = 0`` follow torch's
``abs`` (``sign(0) = 0``): the Triton backward makes the same choice.
"""

from __future__ import annotations

import math
import os

import torch

from ..utils import REAL_FLOAT_DTYPES, check_same_device, check_tensor

WEIGHTINGS = ("paper", "magnitude")
MAX_CODE_LENGTH = 16
CODE_DTYPES = (torch.int32, torch.int64)


def debug_checks_enabled() -> bool:
    """True when ``ETSC_TRITON_DEBUG=1``: codes on CUDA are then range-checked too (one device sync)."""
    return os.environ.get("ETSC_TRITON_DEBUG", "0") == "1"


def check_temperature_weighting(fn_name: str, temperature: object, weighting: object) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{fn_name}: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{fn_name}: temperature must be a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{fn_name}: temperature must be a finite number > 0, got {temperature}")


def _check_code_length(fn_name: str, what: str, tau: int) -> None:
    if not 1 <= tau <= MAX_CODE_LENGTH:
        raise ValueError(f"{fn_name}: {what} must be between 1 and {MAX_CODE_LENGTH}, got {tau}")


def _check_tables_bias(fn_name: str, tables: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int, int]:
    check_tensor(fn_name, "tables", tables, kind="real", ndim=3)
    num_tables, rows, d_out = tables.shape
    if rows & (rows - 1):
        raise ValueError(f"{fn_name}: tables.shape[1] must be a power of two (2^tau), got {rows}")
    if bias is not None:
        check_tensor(fn_name, "bias", bias, kind="real", ndim=1)
        if bias.shape[0] != d_out:
            raise ValueError(f"{fn_name}: bias must have shape ({d_out},), got {tuple(bias.shape)}")
    return num_tables, rows, d_out


def validate_hash(fn_name: str, z: object, temperature: object, weighting: object) -> tuple[int, int]:
    """Check ``lsh_hash`` arguments; return ``(K, tau)``."""
    check_temperature_weighting(fn_name, temperature, weighting)
    check_tensor(fn_name, "z", z, kind="real", min_ndim=2)
    _check_code_length(fn_name, "tau = z.shape[-1]", z.shape[-1])
    return z.shape[-2], z.shape[-1]


def validate_gather(
    fn_name: str, codes: object, scores: object, tables: object, bias: object
) -> tuple[int, int, int]:
    """Check ``memory_gather`` arguments; return ``(K, S, d_out)``; codes range-checked on CPU (or debug)."""
    check_tensor(fn_name, "codes", codes, dtypes=CODE_DTYPES, min_ndim=1)
    check_tensor(fn_name, "scores", scores, kind="real", min_ndim=1)
    num_tables, rows, d_out = _check_tables_bias(fn_name, tables, bias)
    check_same_device(fn_name, codes=codes, scores=scores, tables=tables, bias=bias)
    if scores.shape != codes.shape:
        raise ValueError(
            f"{fn_name}: scores must have the shape of codes {tuple(codes.shape)}, got {tuple(scores.shape)}"
        )
    if codes.shape[-1] != num_tables:
        raise ValueError(
            f"{fn_name}: codes.shape[-1] must equal the number of tables {num_tables}, got {codes.shape[-1]}"
        )
    if not codes.is_cuda or debug_checks_enabled():
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= rows:
            raise ValueError(f"{fn_name}: codes must lie in [0, {rows}), got values in [{low}, {high}]")
    return num_tables, rows, d_out


def validate_layer(
    fn_name: str, x: object, tables: object, bias: object, temperature: object, weighting: object
) -> tuple[int, int, int, int]:
    """Check ``memory_layer`` arguments; return ``(K, tau, S, d_out)``."""
    check_temperature_weighting(fn_name, temperature, weighting)
    check_tensor(fn_name, "x", x, kind="real", min_ndim=1)
    num_tables, rows, d_out = _check_tables_bias(fn_name, tables, bias)
    check_same_device(fn_name, x=x, tables=tables, bias=bias)
    tau = rows.bit_length() - 1
    _check_code_length(fn_name, "tau = log2(tables.shape[1])", tau)
    if x.shape[-1] != num_tables * tau:
        raise ValueError(
            f"{fn_name}: x.shape[-1] must be K * tau = {num_tables} * {tau} = {num_tables * tau} "
            f"(tables {tuple(tables.shape)}), got {x.shape[-1]}"
        )
    return num_tables, tau, rows, d_out


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype in REAL_FLOAT_DTYPES:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _hash(z: torch.Tensor, temperature: float, weighting: str) -> tuple[torch.Tensor, torch.Tensor]:
    tau = z.shape[-1]
    z = z.to(_compute_dtype(z))
    bit_values = 2 ** torch.arange(tau - 1, -1, -1, device=z.device, dtype=torch.int64)
    codes = ((z >= 0).to(torch.int64) * bit_values).sum(-1).to(torch.int32)
    magnitude = z.abs()
    scores = torch.sigmoid(2 * magnitude / temperature).prod(-1)
    if weighting == "magnitude":
        scores = magnitude.sum(-1) * scores
    return codes, scores


def _gather(codes: torch.Tensor, scores: torch.Tensor, tables: torch.Tensor, bias: torch.Tensor | None):
    dtype = _compute_dtype(scores, tables, bias)
    scores = scores.to(dtype)
    y = torch.zeros(*codes.shape[:-1], tables.shape[-1], dtype=dtype, device=tables.device)
    for k in range(tables.shape[0]):
        y = y + scores[..., k, None] * tables[k].to(dtype)[codes[..., k].long()]
    if bias is not None:
        y = y + bias.to(dtype)
    return y


def lsh_hash(z, *, temperature=1.0, weighting="paper"):
    """Oracle of :func:`etsc_triton.lsh_hash`: codes ``int32 [..., K]`` and scores ``[..., K]``.

    Scores are float32, or float64 when ``z`` is float64.
    """
    validate_hash("lsh_hash", z, temperature, weighting)
    return _hash(z, temperature, weighting)


def memory_gather(codes, scores, tables, bias=None, *, deterministic=False):
    """Oracle of :func:`etsc_triton.memory_gather`: ``y = sum_k scores_k * tables[k, codes_k] + bias``.

    ``deterministic`` is accepted for signature parity (the oracle is deterministic). Returns ``tables.dtype``
    (float64 when any input is float64).
    """
    validate_gather("memory_gather", codes, scores, tables, bias)
    y = _gather(codes, scores, tables, bias)
    return y.to(torch.float64 if y.dtype == torch.float64 else tables.dtype)


def memory_layer(x, tables, bias=None, *, temperature=1.0, weighting="paper", deterministic=False):
    """Oracle of :func:`etsc_triton.memory_layer`: hash ``x`` in chunks of tau, gather, weight, sum, add bias.

    Returns ``x.dtype`` (float64 when any input is float64).
    """
    num_tables, tau, _, _ = validate_layer("memory_layer", x, tables, bias, temperature, weighting)
    z = x.reshape(*x.shape[:-1], num_tables, tau)
    codes, scores = _hash(z, temperature, weighting)
    y = _gather(codes, scores, tables, bias)
    return y.to(torch.float64 if y.dtype == torch.float64 else x.dtype)
