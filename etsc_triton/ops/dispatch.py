"""Backend dispatch and op registration: which implementation a call runs, and how launchers become ops.

Every public function validates its inputs (:mod:`.checks`), then asks :func:`resolve_backend` whether to run
the Triton kernel or the Torch reference. Launchers are registered with :func:`registered_launcher` so that
they compose with ``torch.compile``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

import torch
from torch.library import triton_op

BACKENDS = ("auto", "triton", "torch")


def interpreter_enabled() -> bool:
    """True when Triton kernels run on CPU tensors through Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(fn_name: str, backend: str, *tensors: torch.Tensor, empty: bool = False) -> str:
    """Return ``"triton"`` or ``"torch"`` for a call of ``fn_name`` on ``tensors``.

    ``"auto"`` picks Triton when every tensor is on a CUDA device and the Torch reference otherwise.
    ``"triton"`` on CPU tensors needs ``TRITON_INTERPRET=1`` set before triton was imported; tensors on any other
    device (``meta``, ...) are refused for it. ``empty=True`` (the call's result is empty: an empty batch)
    picks the reference on any backend: it returns the empty result, with autograd, and no kernel launches on
    an empty grid.
    """
    if backend not in BACKENDS:
        raise ValueError(f"{fn_name}: backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "triton" and not on_cuda:
        devices = sorted({str(t.device) for t in tensors})
        if any(t.device.type != "cpu" and not t.is_cuda for t in tensors):
            raise ValueError(
                f"{fn_name}: backend='triton' runs on CUDA tensors (or CPU tensors in Triton's interpreter), "
                f"got tensors on {devices}"
            )
        if not interpreter_enabled():
            raise ValueError(
                f"{fn_name}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing "
                f"triton to run on CPU), got tensors on {devices}"
            )
    if empty:
        return "torch"
    if backend == "auto":
        return "triton" if on_cuda else "torch"
    return backend


def registered_launcher(name: str, *, mutates_args: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Register a launcher as the custom op ``name`` (``torch.library.triton_op``) and return a caller.

    Under ``torch.compile`` the caller goes through the registered op, which is what the compiler traces. Eager
    calls run the launcher directly: the custom-op dispatch (autograd and in-place-or-view layers, argument
    normalisation) cost 12-17 us of host time per call on a development CPU (perf/NOTES.md,
    experiment 5), several times a decode step's GPU time. The op stays reachable as ``caller.op`` (and as
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
