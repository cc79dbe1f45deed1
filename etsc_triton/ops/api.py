"""The public ops, in the API table's order: ``__all__`` here is the one list of them.

The package's top level exports exactly these names, :mod:`etsc_triton.ops` re-exports them beside the contract
pieces the layers above build on, and :mod:`etsc_triton.reference` exports the oracle of each: the function of the
same name in the ``naive`` module of the op's family (``ops/<family>/naive.py``).
"""

from .lsh import lsh_hash, memory_gather, memory_layer
from .prefill import ssm_prefill_state
from .reduce import reduce_ssm, reduce_toeplitz
from .ssm import ssm_scan, ssm_step
from .toeplitz import ssm_kernel, toeplitz_to_ssm, vandermonde_solve

__all__ = [
    "toeplitz_to_ssm",
    "ssm_kernel",
    "vandermonde_solve",
    "reduce_ssm",
    "reduce_toeplitz",
    "ssm_scan",
    "ssm_step",
    "ssm_prefill_state",
    "lsh_hash",
    "memory_gather",
    "memory_layer",
]
