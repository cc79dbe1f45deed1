"""The contract of the memory-layer ops: accepted inputs, constants, and the checks both paths run.

The Triton path and the Torch reference call the same ``validate_*`` function, so they refuse bad input
with the same message. Codes out of range are checked on CPU tensors always and on CUDA tensors when
``ETSC_TRITON_DEBUG=1`` (the check synchronises the device).
"""

from __future__ import annotations

import math

import torch

from ..checks import REAL_FLOAT_DTYPES, check_same_device, check_tensor, debug_checks_enabled

WEIGHTINGS = ("paper", "magnitude")


MAX_CODE_LENGTH = 16


CODE_DTYPES = (torch.int32, torch.int64)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """The arithmetic dtype of the Torch paths: float32, or float64 when a real input is float64."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype in REAL_FLOAT_DTYPES:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


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
    check_tensor(fn_name, "z", z, kind="real", min_ndim=2, nonempty={-2: "chunk (K)", -1: "value per chunk (tau)"})
    _check_code_length(fn_name, "tau = z.shape[-1]", z.shape[-1])
    return z.shape[-2], z.shape[-1]


def validate_gather(
    fn_name: str, codes: object, scores: object, tables: object, bias: object
) -> tuple[int, int, int]:
    """Check ``memory_gather`` arguments; return ``(K, S, d_out)``; codes range-checked on CPU (or debug)."""
    check_tensor(fn_name, "codes", codes, dtypes=CODE_DTYPES, min_ndim=1, nonempty={-1: "table's code"})
    check_tensor(fn_name, "scores", scores, kind="real", min_ndim=1, allow_empty=True)
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
    if codes.numel() and codes.device.type != "meta" and (not codes.is_cuda or debug_checks_enabled()):
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= rows:
            raise ValueError(f"{fn_name}: codes must lie in [0, {rows}), got values in [{low}, {high}]")
    return num_tables, rows, d_out


def validate_layer(
    fn_name: str, x: object, tables: object, bias: object, temperature: object, weighting: object
) -> tuple[int, int, int, int]:
    """Check ``memory_layer`` arguments; return ``(K, tau, S, d_out)``."""
    check_temperature_weighting(fn_name, temperature, weighting)
    check_tensor(fn_name, "x", x, kind="real", min_ndim=1, nonempty={-1: "feature"})
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
