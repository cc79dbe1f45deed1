"""etsc_triton: verified Triton kernels for Toeplitz -> SSM conversion, diagonal SSMs and MemoryFormer layers.

Every function takes ``backend="auto" | "triton" | "torch"``; ``etsc_triton.reference.<name>`` is the Torch
oracle with the same signature. See DESIGN section 2 in the README for the contract.
"""

from . import nn, reference
from .ops.lsh import lsh_hash, memory_gather, memory_layer
from .ops.prefill import ssm_prefill_state
from .ops.reduce import reduce_ssm
from .ops.ssm import ssm_scan, ssm_step
from .ops.toeplitz import ssm_kernel, toeplitz_to_ssm, vandermonde_solve

__version__ = "0.1.0"

__all__ = [
    "toeplitz_to_ssm",
    "ssm_kernel",
    "vandermonde_solve",
    "reduce_ssm",
    "ssm_scan",
    "ssm_step",
    "ssm_prefill_state",
    "lsh_hash",
    "memory_gather",
    "memory_layer",
    "nn",
    "reference",
]
