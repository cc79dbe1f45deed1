"""Modules built on the kernels: the MemoryFormer layer, the converted Toeplitz layer, the small TNN model."""

from .memory import MemoryLayer
from .tnn import TNNConfig, TNNLanguageModel, generate
from .toeplitz import ConversionReport, ToeplitzSSM

__all__ = ["MemoryLayer", "ToeplitzSSM", "ConversionReport", "TNNConfig", "TNNLanguageModel", "generate"]
