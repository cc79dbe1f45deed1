"""``MemoryLayer``: a drop-in replacement for ``nn.Linear`` built on hashed lookup tables (MemoryFormer)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..ops import MAX_CODE_LENGTH, check_int, check_temperature_weighting, memory_layer


class MemoryLayer(nn.Module):
    """MemoryFormer memory layer: ``y = sum_k score(z_k) * tables[k, code(z_k)] + bias``
    (derivation: ``etsc_triton/ops/lsh/README.md``).

    The input is split into K chunks of ``code_length`` values; each chunk picks one row of its table by
    the signs of its values and weights it by a smooth score (:func:`etsc_triton.lsh_hash`).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        code_length: tau, the bits per hash (tables have ``2^code_length`` rows), 1..16.
        bias: learn an additive bias.
        projection: apply a learned ``nn.Linear(in_features, K * code_length, bias=False)`` before hashing
            (MemoryFormer's projection); then ``K = ceil(in_features / code_length)`` and ``in_features`` need
            not divide by ``code_length``. Without it, ``K = in_features / code_length``.
        temperature: softens the scores (divides ``|z|`` inside the sigmoids).
        weighting: ``"paper"`` or ``"magnitude"`` (the released MemoryFormer code).
        deterministic: bit-identical backward from run to run (no floating-point atomics).
        device, dtype: of the parameters.

    Attributes:
        tables: `[K, 2^code_length, out_features]`, initialised ``0.02 * randn`` as in the released code.
        bias: `[out_features]` initialised to zeros, or None.
        projection: the ``nn.Linear`` or None.
        backend: ``"auto"`` (Triton on CUDA, the Torch reference elsewhere); set ``"triton"`` to run the
            kernels on CPU through Triton's interpreter.

    Example:
        >>> layer = MemoryLayer(64, 32, code_length=8)
        >>> layer(torch.randn(5, 64)).shape
        torch.Size([5, 32])
    """

    backend: str = "auto"

    def __init__(self, in_features: int, out_features: int, code_length: int = 8, bias: bool = True,
                 projection: bool = False, temperature: float = 1.0, weighting: str = "paper",
                 deterministic: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_int("MemoryLayer", "in_features", in_features, minimum=1)
        check_int("MemoryLayer", "out_features", out_features, minimum=1)
        check_int("MemoryLayer", "code_length", code_length, minimum=1)
        if code_length > MAX_CODE_LENGTH:
            raise ValueError(f"MemoryLayer: code_length must be <= {MAX_CODE_LENGTH}, got {code_length}")
        check_temperature_weighting("MemoryLayer", temperature, weighting)
        if not projection and in_features % code_length:
            raise ValueError(
                f"MemoryLayer: in_features ({in_features}) must be divisible by code_length ({code_length}) "
                "unless projection=True"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.code_length = code_length
        self.num_tables = math.ceil(in_features / code_length)
        self.temperature = float(temperature)
        self.weighting = weighting
        self.deterministic = deterministic
        if projection:
            self.projection = nn.Linear(in_features, self.num_tables * code_length, bias=False, **factory)
        else:
            self.register_module("projection", None)
        self.tables = nn.Parameter(torch.empty(self.num_tables, 2**code_length, out_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.tables.normal_(0.0, 0.02)
            if self.bias is not None:
                self.bias.zero_()
        if self.projection is not None:
            self.projection.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            x = self.projection(x)
        return memory_layer(x, self.tables, self.bias, temperature=self.temperature, weighting=self.weighting,
                            deterministic=self.deterministic, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"code_length={self.code_length}, num_tables={self.num_tables}, bias={self.bias is not None}, "
            f"projection={self.projection is not None}, temperature={self.temperature}, "
            f"weighting={self.weighting!r}, deterministic={self.deterministic}"
        )
