"""MemoryFormer memory layer: LSH hashing fused with the weighted table gather."""

from .gather import memory_gather, memory_layer
from .hash import lsh_hash

__all__ = ["lsh_hash", "memory_gather", "memory_layer"]
