"""MemoryFormer memory layer: LSH hashing fused with the weighted table gather."""

from .hash_gather import lsh_hash, memory_gather, memory_layer

__all__ = ["lsh_hash", "memory_gather", "memory_layer"]
