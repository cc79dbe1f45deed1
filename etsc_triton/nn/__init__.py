"""Modules built on the kernels."""

from .memory import MemoryLayer

__all__ = ["MemoryLayer"]
