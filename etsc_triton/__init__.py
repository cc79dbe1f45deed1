"""etsc_triton: verified Triton kernels for Toeplitz -> SSM conversion, diagonal SSMs and MemoryFormer layers.

Every function takes ``backend="auto" | "triton" | "torch"``; ``etsc_triton.reference.<name>`` is the Torch
oracle with the same signature. The README's API table is the contract: shapes, dtypes and errors.
"""

from . import compat

compat.check_installed()  # before the ops import torch.library.triton_op: a one-line fix, not a deep ImportError

from . import nn, reference  # noqa: E402
from .ops import api as _api  # noqa: E402
from .ops.api import *  # noqa: E402, F403 - the public ops: their one list is ops/api.py

__version__ = "0.1.0"

__all__ = [*_api.__all__, "nn", "reference"]
