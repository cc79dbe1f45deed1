"""etsc_triton: verified Triton kernels for Toeplitz -> SSM conversion, diagonal SSMs and MemoryFormer layers.

Every function takes ``backend="auto" | "triton" | "torch"``; ``etsc_triton.reference.<name>`` is the Torch
oracle with the same signature. The README's API table is the contract: shapes, dtypes and errors.
"""

from . import compat

compat.check_installed()  # before the ops import torch.library.triton_op: a one-line fix, not a deep ImportError

from . import nn, reference  # noqa: E402
from .ops import (  # noqa: E402
    lsh_hash,
    memory_gather,
    memory_layer,
    reduce_ssm,
    ssm_kernel,
    ssm_prefill_state,
    ssm_scan,
    ssm_step,
    toeplitz_to_ssm,
    vandermonde_solve,
)

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
