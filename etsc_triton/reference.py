"""The Torch oracles: one naive implementation per public op, with the same signature (no ``backend``).

They validate inputs exactly like the fast path and, for ``ssm_step``, mutate the state exactly as the kernel
does. They compute in the precision of their inputs, so complex128 / float64 inputs give a float64 oracle. The
oracle of each op in the one list of public ops (``ops/api.py``) is the function of the same name in the ``naive``
module beside the op's kernels; the float64 evaluations below come beside them.
"""

import importlib
from collections.abc import Callable
from typing import Any

from .ops import api
from .ops.reduce.naive import hankel_lower_bound as hankel_lower_bound
from .ops.reduce.naive import hankel_singular_values as hankel_singular_values
from .ops.reduce.naive import reduction_error as reduction_error
from .ops.toeplitz.naive import realised_kernel64 as realised_kernel64


def _oracle(name: str) -> Callable[..., Any]:
    """The oracle of public op ``name``: the function of that name in its family's ``naive`` module."""
    family = getattr(api, name).__module__.rpartition(".")[0]
    oracle: Callable[..., Any] = getattr(importlib.import_module(f"{family}.naive"), name)
    return oracle


globals().update({name: _oracle(name) for name in api.__all__})

__all__ = [*api.__all__, "realised_kernel64", "reduction_error", "hankel_singular_values", "hankel_lower_bound"]
