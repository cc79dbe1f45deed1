"""Shared pieces of every op: backend selection, input validation, jit helpers (complex arithmetic and the
interleaved complex64 tile loads / stores).

Every public function validates its inputs with the ``check_*`` helpers below (so the Triton path and the
Torch reference refuse bad input with the same message), then asks :func:`resolve_backend` which
implementation to run.

Error messages name the argument and say what was expected and what arrived, for example
``ValueError: ssm_step: state must have shape (2, 5, 33), got (2, 5, 32)``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence

import torch
import triton
import triton.language as tl  # noqa: F401  (jit functions need triton.language visible in their module)
from torch.library import triton_op

BACKENDS = ("auto", "triton", "torch")

REAL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host code (``triton.cdiv`` costs about 1.5 us per call on triton 3.9)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``); host code, like :func:`cdiv`."""
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 2 for CPU tensors, so the interpreter exercises the
    same launch-shape decisions (split-K, chunking) at small sizes."""
    if device.type != "cuda":
        return 2
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


def interpreter_enabled() -> bool:
    """True when Triton kernels run on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_slug(device: str | torch.device) -> str:
    """A folder-friendly name of the device, e.g. ``nvidia_h100_80gb_hbm3`` for a CUDA device, ``cpu`` otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def resolve_backend(fn_name: str, backend: str, *tensors: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"torch"`` for a call of ``fn_name`` on ``tensors``.

    ``"auto"`` picks Triton when every tensor is on a CUDA device and the Torch reference otherwise.
    ``"triton"`` on CPU tensors needs ``TRITON_INTERPRET=1`` set before triton was imported.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{fn_name}: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda else "torch"
    if backend == "triton" and not on_cuda and not interpreter_enabled():
        devices = sorted({str(t.device) for t in tensors})
        raise ValueError(
            f"{fn_name}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing "
            f"triton to run on CPU), got tensors on {devices}"
        )
    return backend


def registered_launcher(name: str, *, mutates_args: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Register a launcher as the custom op ``name`` (``torch.library.triton_op``) and return a caller.

    Under ``torch.compile`` the caller goes through the registered op, which is what the compiler traces. Eager
    calls run the launcher directly: the custom-op dispatch (autograd and in-place-or-view layers, argument
    normalisation) cost 12-17 us of host time per call on the development CPU (perf/NOTES.md, experiment 5),
    several times a decode step's GPU time. The op stays reachable as ``caller.op`` (and as
    ``torch.ops.etsc_triton.<name>``).
    """

    def register(launch: Callable) -> Callable:
        op = triton_op(name, mutates_args=tuple(mutates_args))(launch)

        @functools.wraps(launch)
        def caller(*args):
            if torch.compiler.is_compiling():
                return op(*args)
            return launch(*args)

        caller.op = op
        return caller

    return register


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records a call on ``tensors`` (``None`` skipped). Without it the public functions run
    their launchers directly: an ``autograd.Function`` costs several us of host time per call."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _ReferenceGradient(torch.autograd.Function):
    """Forward by the Triton path, backward by autograd through the Torch reference of the same function."""

    @staticmethod
    def forward(ctx, fast, reference, *inputs):
        ctx.reference = reference
        ctx.save_for_backward(*inputs)
        return fast(*inputs)

    @staticmethod
    def backward(ctx, *grads):
        needed = ctx.needs_input_grad[2:]
        inputs = [x.detach().requires_grad_(need) if x is not None else None
                  for x, need in zip(ctx.saved_tensors, needed, strict=True)]
        with torch.enable_grad():
            outputs = ctx.reference(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(out, grad) for out, grad in zip(outputs, grads, strict=True)
                 if grad is not None and out.requires_grad]
        wanted = [x for x, need in zip(inputs, needed, strict=True) if need]
        found = iter(torch.autograd.grad([out for out, _ in pairs], wanted, [grad for _, grad in pairs],
                                         allow_unused=True) if pairs else [None] * len(wanted))
        return (None, None, *(next(found) if need else None for need in needed))


def with_reference_gradient(fast: Callable, reference: Callable, *inputs: torch.Tensor | None):
    """``fast(*inputs)`` (the Triton path), differentiable: when autograd records, the backward differentiates
    ``reference(*inputs)`` (the Torch oracle of the same function, which must return the same dtypes). For ops
    whose gradient is not worth a kernel of its own (one-off conversions); exact, at the reference's speed."""
    if not needs_grad(*inputs):
        return fast(*inputs)
    return _ReferenceGradient.apply(fast, reference, *inputs)


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
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{fn_name}: {name} must not be empty, got shape {tuple(t.shape)}")
    return t


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


def real_view(z: torch.Tensor) -> torch.Tensor:
    """``[..., N]`` complex64 -> ``[..., N, 2]`` float32 view (re, im interleaved), contiguous.

    Copies only when ``z`` is not already a contiguous complex64 tensor.
    """
    return torch.view_as_real(z.to(torch.complex64).contiguous())


@triton.jit
def complex_mul(ar, ai, br, bi):
    """(ar + i ai) * (br + i bi) on separate real/imaginary fp32 tensors; returns ``(re, im)``."""
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def complex_span(first_mode, n_modes, mode_stride, BLOCK_N: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """Float offsets (from a row's mode 0) and mask of modes ``[first_mode, first_mode + BLOCK_N)``, re/im
    interleaved: ``[2 * BLOCK_N]``. CONTIGUOUS (mode stride 2 floats) makes the span one run of floats, which
    the compiler reads and writes with 16-byte accesses; other strides fall back to per-element offsets."""
    flat = 2 * first_mode + tl.arange(0, 2 * BLOCK_N)
    if CONTIGUOUS:
        offsets = flat.to(tl.int64)
    else:
        offsets = (flat // 2).to(tl.int64) * mode_stride + flat % 2
    return offsets, flat < 2 * n_modes


@triton.jit
def load_complex(row_ptrs, row_mask, first_mode, n_modes, mode_stride,
                 BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """``(re, im)`` fp32 tiles ``[BLOCK_R, BLOCK_N]`` of modes ``first_mode..`` of interleaved complex64 rows.

    ``row_ptrs`` ``[BLOCK_R, 1]`` point at each row's mode 0 (real part), ``row_mask`` ``[BLOCK_R, 1]``; masked
    rows and modes ``>= n_modes`` read as 0. The row span is loaded flat and de-interleaved in registers.
    """
    offsets, mode_ok = complex_span(first_mode, n_modes, mode_stride, BLOCK_N, CONTIGUOUS)
    values = tl.load(row_ptrs + offsets[None, :], mask=row_mask & mode_ok[None, :], other=0.0)
    return tl.split(tl.reshape(values, [BLOCK_R, BLOCK_N, 2]))


@triton.jit
def store_complex(row_ptrs, row_mask, first_mode, n_modes, mode_stride, re, im,
                  BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """Store ``(re, im)`` tiles ``[BLOCK_R, BLOCK_N]`` as interleaved complex64 (the layout of :func:`load_complex`)."""
    offsets, mode_ok = complex_span(first_mode, n_modes, mode_stride, BLOCK_N, CONTIGUOUS)
    values = tl.reshape(tl.join(re, im), [BLOCK_R, 2 * BLOCK_N])
    tl.store(row_ptrs + offsets[None, :], values, mask=row_mask & mode_ok[None, :])
