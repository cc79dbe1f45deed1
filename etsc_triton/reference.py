"""The Torch oracles: one naive implementation per public op, with the same signature (no ``backend``).

They validate inputs exactly like the fast path and, for ``ssm_step``, mutate the state exactly as the kernel
does. They compute in the precision of their inputs, so complex128 / float64 inputs give a float64 oracle.
"""

from .ops.lsh.naive import lsh_hash, memory_gather, memory_layer
from .ops.prefill.naive import ssm_prefill_state
from .ops.reduce.naive import hankel_lower_bound, hankel_singular_values, reduce_ssm, reduction_error
from .ops.ssm.naive import ssm_scan, ssm_step
from .ops.toeplitz.naive import realised_kernel64, ssm_kernel, toeplitz_to_ssm, vandermonde_solve

__all__ = [
    "toeplitz_to_ssm",
    "ssm_kernel",
    "vandermonde_solve",
    "realised_kernel64",
    "reduce_ssm",
    "reduction_error",
    "hankel_singular_values",
    "hankel_lower_bound",
    "ssm_scan",
    "ssm_step",
    "ssm_prefill_state",
    "lsh_hash",
    "memory_gather",
    "memory_layer",
]
