"""The op layer: every public op, and the contract pieces the layers above (``nn``, the demo) build on.

Each family folder holds its contract (``contract.py``: accepted inputs and the checks both paths run), its
Torch oracle (``naive.py``), its kernels and launchers, and a README with the derivation. Nothing here imports
``etsc_triton.nn``. The public ops are listed once, in :mod:`.api`.
"""

from . import api
from .api import *  # noqa: F403 - the public ops
from .checks import check_int as check_int
from .lsh.contract import MAX_CODE_LENGTH as MAX_CODE_LENGTH
from .lsh.contract import WEIGHTINGS as WEIGHTINGS
from .lsh.contract import check_temperature_weighting as check_temperature_weighting
from .toeplitz.naive import realised_kernel64 as realised_kernel64

__all__ = [*api.__all__, "MAX_CODE_LENGTH", "WEIGHTINGS", "check_int", "check_temperature_weighting",
           "realised_kernel64"]
