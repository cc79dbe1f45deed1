"""The op layer: every public op, and the contract pieces the layers above (``nn``, the demo) build on.

Each family folder holds its contract (``contract.py``: accepted inputs and the checks both paths run), its
Torch oracle (``naive.py``), its kernels and launchers, and a README with the derivation. Nothing here imports
``etsc_triton.nn``; the package's top level re-exports the ops from this module.
"""

from .checks import check_int
from .lsh import lsh_hash, memory_gather, memory_layer
from .lsh.contract import MAX_CODE_LENGTH, WEIGHTINGS, check_temperature_weighting
from .prefill import ssm_prefill_state
from .reduce import reduce_ssm
from .ssm import ssm_scan, ssm_step
from .toeplitz import ssm_kernel, toeplitz_to_ssm, vandermonde_solve
from .toeplitz.naive import realised_kernel64

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
    "MAX_CODE_LENGTH",
    "WEIGHTINGS",
    "check_int",
    "check_temperature_weighting",
    "realised_kernel64",
]
