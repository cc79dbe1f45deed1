"""Capture kernel launches in Triton's interpreter and compile them for sm_90 offline.

Capture: :func:`record_launches` wraps ``InterpretedFunction.run`` (where ``kernel[grid](...)`` and torch's
``wrap_triton`` end under ``TRITON_INTERPRET=1``) and records each launch as JSON: the kernel, its arguments
(tensor dtype and 16-byte alignment, int values, floats, bools) and the launch options (``num_warps``,
``num_stages``). Which tiles the launchers pick is set by the tile policy (``use_tiles(GPU_TILES)``), so the
interpreter runs the GPU's tiles on small CPU inputs.

Compile (interpreter off, so ``@triton.jit`` gives ``JITFunction`` objects): :func:`compile_launch` specialises a
recorded launch the way ``JITFunction.run`` does on a GPU (the same binder: ints equal to 1 become constexprs,
16-divisible ints and 16-byte aligned pointers get ``tt.divisibility``) and compiles it with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``. Registers and spill bytes come from the
``ptxas -v`` log of triton's own ptxas run (``TRITON_DUMP_PTXAS_LOG``; ``TRITON_ALWAYS_COMPILE`` so that a
kernel found in the cache runs ptxas too). Triton's ptxas, not PATH's: triton 3.9 emits PTX 9.4, which CUDA
13.0's ptxas rejects. The same code works with triton 3.6 and 3.9 (same ``ASTSource`` API and binder).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

TARGET_ARCH = 90
OPTION_NAMES = ("num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion")


def describe_arg(value) -> dict:
    """A JSON description of one kernel argument, enough to rebuild one the binder specialises the same way."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "dtype": str(value.dtype).removeprefix("torch."), "align": value.data_ptr() % 16}
    if value is None:
        return {"kind": "none"}
    for kind in (bool, int, float, str):  # bool before int: True is an int too
        if isinstance(value, kind):
            return {"kind": kind.__name__, "value": value}
    raise TypeError(f"unsupported kernel argument {type(value).__name__}")


def launch_key(record: dict) -> str:
    """Launches that specialise the same way share a key (ints only by the classes the binder looks at)."""
    parts = []
    for name, arg in record["args"].items():
        if arg["kind"] == "int" and name not in record["constexprs"]:
            v = arg["value"]
            parts.append((name, "one" if v == 1 else "i64" if not -2**31 <= v < 2**31 else "d16" if v % 16 == 0
                          else "i"))
        elif arg["kind"] == "tensor":
            parts.append((name, arg["dtype"], arg["align"] == 0))
        else:
            parts.append((name, "float" if arg["kind"] == "float" else json.dumps(arg, sort_keys=True)))
    return json.dumps([record["module"], record["name"], parts, record["options"]], sort_keys=True, default=str)


class LaunchRecorder:
    """The unique launches seen while :func:`record_launches` is active, each with the cases that made it."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.case = "unlabelled"

    def add(self, fn, args: tuple, kwargs: dict) -> None:
        params = inspect.signature(fn).parameters
        bound = inspect.signature(fn).bind(*args, **{k: v for k, v in kwargs.items() if k in params})
        bound.apply_defaults()
        annotations = inspect.get_annotations(fn)
        record = {
            "module": fn.__module__, "name": fn.__name__,
            "args": {name: describe_arg(value) for name, value in bound.arguments.items()},
            "constexprs": [name for name in params if "constexpr" in str(annotations.get(name, ""))],
            "options": {k: v for k, v in kwargs.items() if k in OPTION_NAMES}, "cases": [self.case],
        }
        known = self.records.setdefault(launch_key(record), record)
        if self.case not in known["cases"]:
            known["cases"].append(self.case)

    @property
    def launches(self) -> list[dict]:
        return list(self.records.values())


@contextlib.contextmanager
def record_launches() -> Iterator[LaunchRecorder]:
    """Record every interpreted launch of the enclosed code (needs ``TRITON_INTERPRET=1`` before triton's import);
    set ``recorder.case`` to label the launches that follow."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("recording launches needs TRITON_INTERPRET=1 set before triton is imported")
    from triton.runtime import interpreter

    recorder = LaunchRecorder()
    original_run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        recorder.add(self.fn, args, kwargs)
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = recording_run
    try:
        yield recorder
    finally:
        interpreter.InterpretedFunction.run = original_run


def _example_arg(desc: dict):
    """An argument the binder specialises exactly like the captured one (tiny CPU tensor, same alignment)."""
    import torch

    if desc["kind"] == "tensor":
        base = torch.empty(64, dtype=getattr(torch, desc["dtype"]))
        return base[desc["align"] // base.element_size():]
    return desc.get("value")


def jit_function(record: dict):
    """The ``JITFunction`` of a recorded launch (autotuner / heuristics wrappers removed)."""
    fn = getattr(importlib.import_module(record["module"]), record["name"])
    while not hasattr(fn, "params") and hasattr(fn, "fn"):
        fn = fn.fn
    return fn


def specialize(fn, record: dict) -> tuple[dict, dict, dict]:
    """``(signature, constexprs, attrs)`` as ``JITFunction.run`` computes them for sm_90: triton's own binder
    (``create_function_from_signature``, then ``_pack_args``, the same in triton 3.6 and 3.9) on example
    arguments that specialise like the recorded ones."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", TARGET_ARCH, 32))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = [_example_arg(record["args"][p.name]) for p in fn.params]
    bound_args, specialization, _ = binder(*args, **record["options"])
    _, signature, constexprs, attrs = fn._pack_args(backend, dict(record["options"]), bound_args, specialization,
                                                    record["options"])
    return signature, constexprs, attrs


def short_config(fn, signature: dict, constexprs: dict) -> tuple[str, str]:
    """``(user constexprs "A=1, B=2", notable specialisations "x_ptr:*bf16, K=1")``."""
    user, specialised = [], []
    for path, value in sorted(constexprs.items()):
        param = fn.params[path[0]]
        (user if param.is_constexpr else specialised).append(f"{param.name}={value}")
    pointers = [f"{name}:{ty}" for name, ty in signature.items() if isinstance(ty, str) and ty.startswith("*")
                and ty != "*fp32"]
    return ", ".join(user), ", ".join(pointers + specialised)


def ptxas_path() -> str | None:
    """The ptxas triton itself runs for sm_90 (it accepts the PTX version triton emits), else PATH's."""
    with contextlib.suppress(ImportError, AttributeError, RuntimeError, TypeError):
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(TARGET_ARCH).path
        if path and Path(path).exists():
            return path
    return shutil.which("ptxas")


def ptxas_version() -> str:
    """``"<ptxas name> <release>"`` of :func:`ptxas_path`, for report headers."""
    path = ptxas_path()
    if path is None:
        return "ptxas not found"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    release = re.search(r"release ([\d.]+)", out)
    return f"{Path(path).name} {release.group(1) if release else '?'}"


def parse_ptxas_log(text: str) -> dict:
    """``registers``, ``spill_stores``, ``spill_loads`` (bytes) found in a ``ptxas -v`` log."""
    stats = {}
    if m := re.search(r"Used (\d+) registers", text):
        stats["registers"] = int(m.group(1))
    if m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text):
        stats["spill_stores"], stats["spill_loads"] = int(m.group(1)), int(m.group(2))
    return stats


def compile_launch(fn, signature: dict, constexprs: dict, attrs: dict, options: dict):
    """Compile a specialised launch (:func:`specialize`) for sm_90: ``(triton CompiledKernel, ptxas stats)``;
    raises on a compile error. Sets ``TRITON_ALWAYS_COMPILE`` and ``TRITON_DUMP_PTXAS_LOG`` (read by triton at
    each compile)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    os.environ.update(TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1")
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # triton prints its ptxas -v log: the exact numbers
        kernel = triton.compile(source, target=GPUTarget("cuda", TARGET_ARCH, 32), options=dict(options))
    return kernel, parse_ptxas_log(log.getvalue())


def global_access_widths(ptx: str) -> str:
    """The global loads and stores in the PTX by width in bytes, e.g. ``ld 16B x4, 4B x2; st 16B x2``
    (a ``.v4.b32`` access is 16 bytes, ``.v2.b32`` 8, a plain ``.b32`` 4): are the streaming accesses 16 bytes
    wide?"""
    widths: dict[str, dict[int, int]] = {"ld": {}, "st": {}}
    pattern = r"\b(ld|st)\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b"
    for kind, vector, bits in re.findall(pattern, ptx):
        size = int(vector or 1) * int(bits) // 8
        widths[kind][size] = widths[kind].get(size, 0) + 1
    parts = [f"{kind} " + ", ".join(f"{size}B x{n}" for size, n in sorted(counts.items(), reverse=True))
             for kind, counts in widths.items() if counts]
    return "; ".join(parts) or "-"
