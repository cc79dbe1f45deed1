"""Input checks shared by every op: one vocabulary of error messages for the Triton path and the reference.

Error messages name the argument and say what was expected and what arrived, for example
``ValueError: ssm_step: state must have shape (2, 5, 33), got (2, 5, 32)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

import torch

REAL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def debug_checks_enabled() -> bool:
    """True when ``ETSC_TRITON_DEBUG=1``: value checks that would synchronise a GPU (codes or state indices out
    of range) then run on CUDA tensors too; on CPU tensors they always run."""
    return os.environ.get("ETSC_TRITON_DEBUG", "0") == "1"


def check_tensor(
    fn_name: str,
    name: str,
    t: object,
    *,
    kind: str | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    ndim: int | None = None,
    min_ndim: int | None = None,
    allow_empty: bool = False,
    nonempty: Mapping[int, str] | None = None,
) -> torch.Tensor:
    """Validate one tensor argument and return it.

    Args:
        fn_name: the public function's name, used in the message.
        name: the argument's name.
        t: the value to check.
        kind: ``"real"`` (a real floating dtype), ``"complex"`` (a complex dtype) or ``"float"`` (either);
            ``None`` skips the dtype-family check.
        dtypes: the exact dtypes accepted (checked after ``kind``).
        ndim: the exact number of dimensions, or ``min_ndim`` the least.
        allow_empty: accept tensors with zero elements.
        nonempty: ``{dim: what}``: these dimensions (negative indices count from the end) must hold at least one
            ``what``; the others (batch dimensions) may be empty. Implies ``allow_empty`` for the others.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn_name}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if kind == "real" and t.dtype not in REAL_FLOAT_DTYPES:
        what = "complex" if t.is_complex() else str(t.dtype)
        raise TypeError(f"{fn_name}: {name} must be a real floating tensor, got {what} ({t.dtype})")
    if kind == "complex" and t.dtype not in COMPLEX_DTYPES:
        raise TypeError(f"{fn_name}: {name} must be a complex tensor (complex64), got {t.dtype}")
    if kind == "float" and t.dtype not in REAL_FLOAT_DTYPES + COMPLEX_DTYPES:
        raise TypeError(f"{fn_name}: {name} must be a floating or complex tensor, got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{fn_name}: {name} must have dtype in ({names}), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{fn_name}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(
            f"{fn_name}: {name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}"
        )
    for dim, what in (nonempty or {}).items():
        if t.shape[dim] == 0:
            raise ValueError(
                f"{fn_name}: {name} must hold at least one {what} (dim {dim}), got shape {tuple(t.shape)}"
            )
    if not allow_empty and nonempty is None and t.numel() == 0:
        raise ValueError(f"{fn_name}: {name} must not be empty, got shape {tuple(t.shape)}")
    return t


def check_no_internal_overlap(fn_name: str, name: str, t: torch.Tensor) -> None:
    """Raise ``ValueError`` when two elements of ``t`` share memory (an ``expand``-ed or otherwise
    self-overlapping view): an in-place update of such a tensor would race on a GPU and be wrong everywhere.

    Sufficient test: with the dimensions of size > 1 sorted by stride, each stride must exceed the span of the
    dimensions before it. Every non-overlapping layout torch creates (contiguous, permuted, sliced) passes.
    """
    span = 0
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s > 1):
        if stride <= span:
            raise ValueError(
                f"{fn_name}: {name} must not overlap itself in memory (shape {tuple(t.shape)}, strides "
                f"{tuple(t.stride())}, e.g. an expand()-ed tensor): rows updated in place would race; pass a "
                f"tensor with its own storage per row (.clone())"
            )
        span += (size - 1) * stride


def check_shape(fn_name: str, name: str, t: torch.Tensor, expected: Iterable[int]) -> None:
    """Raise ``ValueError`` unless ``t.shape == expected``."""
    expected = tuple(int(s) for s in expected)
    if tuple(t.shape) != expected:
        raise ValueError(f"{fn_name}: {name} must have shape {expected}, got {tuple(t.shape)}")


def check_same_device(fn_name: str, **tensors: torch.Tensor | None) -> None:
    """Raise ``ValueError`` unless every tensor given (``None`` is skipped) lives on one device."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {str(v.device) for v in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"{fn_name}: all tensors must be on one device, got {where}")


def check_int(fn_name: str, name: str, value: object, *, minimum: int = 0) -> int:
    """Validate a Python integer argument (``bool`` is refused) that must be ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn_name}: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn_name}: {name} must be >= {minimum}, got {value}")
    return value
