"""Modules built on the kernels: the MemoryFormer layer and the converted Toeplitz layer."""

from .memory import MemoryLayer
from .toeplitz import ConversionReport, ToeplitzSSM

__all__ = ["MemoryLayer", "ToeplitzSSM", "ConversionReport"]
