"""Compile every Triton kernel of etsc_triton for an H100 (sm_90) offline and report registers, spills, smem.

    python -m perf.compile_report                 # print the markdown table
    python -m perf.compile_report --out FILE.md   # also write it to FILE.md
    python -m perf.compile_report --configs FILE.json   # skip the capture, compile configs captured before

No GPU is needed. Two steps:

1. Capture (a subprocess with ``TRITON_INTERPRET=1``): every public op runs with ``backend="triton"`` on small
   CPU inputs while ``InterpretedFunction.run`` (where ``kernel[grid](...)`` and torch's ``wrap_triton`` end)
   records each launch: the kernel, its arguments (tensor dtype and 16-byte alignment, int values, floats,
   bools) and the launch options (``num_warps``, ``num_stages``). The op modules' ``interpreter_enabled`` is
   patched to return False (not ``ops.utils``'s, which must still let CPU tensors through), so the launchers
   pick their GPU block sizes and the interpreter runs those on the small inputs.
2. Compile (this process, interpreter off, so ``@triton.jit`` gives ``JITFunction`` objects): each captured
   launch is specialised the way ``JITFunction.run`` does on a GPU (same binder: ints equal to 1 become
   constexprs, 16-divisible ints and 16-byte aligned pointers get ``tt.divisibility``), compiled with
   ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32), options=...)`` in a fresh triton cache,
   and registers / spill bytes are read from the ``ptxas -v`` log of triton's own ptxas run
   (``knobs.nvidia.dump_ptxas_log``; if absent, triton's ptxas is run on the PTX). Use triton's ptxas, not
   PATH's: triton 3.9 emits PTX 9.4, which CUDA 13.0's ptxas rejects. Shared memory: the compiled metadata.

The exit code is 1 when a kernel fails to compile (or a capture case fails), 0 otherwise. Works with triton
3.6 and 3.9 (same ``ASTSource(fn, signature, constexprs, attrs)`` API; the binder internals are used when
present, with a hand-written fallback of the same rules otherwise).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

from perf.sass_probe import hot_loop

REPO = Path(__file__).resolve().parent.parent
TARGET_ARCH = 90
OPTION_NAMES = ("num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion")

# ----------------------------------------------------------------------------------------------- capture


def _triton_type_of_dtype(dtype) -> str:
    import torch

    names = {
        torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
        torch.int32: "i32", torch.int64: "i64", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
        torch.bool: "i1",
    }
    return names.get(dtype, str(dtype))


def _describe_arg(value) -> dict:
    """A JSON description of one kernel argument, enough to rebuild an equivalent argument for the binder."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "dtype": str(value.dtype).removeprefix("torch."),
                "type": "*" + _triton_type_of_dtype(value.dtype), "align": value.data_ptr() % 16}
    if isinstance(value, bool):
        return {"kind": "bool", "value": value}
    if isinstance(value, int):
        return {"kind": "int", "value": value}
    if isinstance(value, float):
        return {"kind": "float", "value": value}
    if value is None:
        return {"kind": "none"}
    if isinstance(value, str):
        return {"kind": "str", "value": value}
    raise TypeError(f"unsupported kernel argument {type(value).__name__}")


def _dedup_key(record: dict) -> str:
    """Launches that specialise the same way share a key (ints only by the classes the binder looks at)."""
    parts = []
    for name, arg in record["args"].items():
        if arg["kind"] == "int" and name not in record["constexprs"]:
            v = arg["value"]
            cls = "one" if v == 1 else ("i64" if not -2**31 <= v < 2**31 else ("d16" if v % 16 == 0 else "i"))
            parts.append((name, "int", cls))
        elif arg["kind"] == "tensor":
            parts.append((name, arg["dtype"], arg["align"] == 0))
        elif arg["kind"] == "float":
            parts.append((name, "float"))
        else:
            parts.append((name, json.dumps(arg, sort_keys=True)))
    return json.dumps([record["module"], record["name"], parts, record["options"]], sort_keys=True, default=str)


def _install_launch_recorder(records: dict, current_case: list) -> None:
    from triton.runtime import interpreter

    original_run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        fn = self.fn
        params = inspect.signature(fn).parameters
        arg_kwargs = {k: v for k, v in kwargs.items() if k in params}
        options = {k: v for k, v in kwargs.items() if k in OPTION_NAMES}
        bound = inspect.signature(fn).bind(*args, **arg_kwargs)
        bound.apply_defaults()
        annotations = inspect.get_annotations(fn)
        constexprs = [name for name in params if "constexpr" in str(annotations.get(name, ""))]
        record = {
            "module": fn.__module__, "name": fn.__name__,
            "args": {name: _describe_arg(value) for name, value in bound.arguments.items()},
            "constexprs": constexprs, "options": options, "cases": [current_case[0]],
        }
        key = _dedup_key(record)
        if key in records:
            if current_case[0] not in records[key]["cases"]:
                records[key]["cases"].append(current_case[0])
        else:
            records[key] = record
        return original_run(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = recording_run


def _force_gpu_block_sizes() -> list[str]:
    """Make every op module (not ops.utils) believe it is not interpreted, so launchers pick GPU configs."""
    import pkgutil

    import etsc_triton.ops as ops

    patched = []
    for info in pkgutil.walk_packages(ops.__path__, prefix="etsc_triton.ops."):
        if info.name == "etsc_triton.ops.utils":
            continue
        module = importlib.import_module(info.name)
        if callable(getattr(module, "interpreter_enabled", None)):
            module.interpreter_enabled = lambda: False
            patched.append(info.name)
    return patched


def _capture_cases():
    """``(label, thunk)`` pairs driving every public op through the Triton backend with small inputs."""
    import torch

    import etsc_triton as et
    from etsc_triton.ops.ssm import scan

    tr = {"backend": "triton"}

    def randc(*shape, scale=1.0):
        return (scale * torch.randn(*shape, dtype=torch.complex64))

    def nodes(d, n, radius=0.95):
        angles = 2 * torch.pi * torch.rand(d, n)
        return (radius * torch.exp(1j * angles)).to(torch.complex64)

    cases = []

    # toeplitz_to_ssm: real/complex, compensate on/off, scalar/tensor gamma, small and large mode counts.
    for n in (63, 2048, 2100):  # 2048: aligned rows and a mode count divisible by 16 (the usual case)
        for real in (True, False):
            for compensate in (True, False):
                for gamma in (None, 0.99, "tensor"):
                    rows = 3
                    def run(n=n, real=real, compensate=compensate, gamma=gamma, rows=rows):
                        t = torch.randn(rows, n)
                        g = torch.full((rows,), 0.98) if gamma == "tensor" else gamma
                        et.toeplitz_to_ssm(t, g, real=real, compensate=compensate, **tr)
                    cases.append((f"toeplitz_to_ssm n={n} real={real} compensate={compensate} gamma={gamma}", run))

    # ssm_kernel: short / long length, few / many modes; 64-anchor programs need rows >= 2 x the SMs (2 here).
    for length, modes, rows in ((63, 16, 2), (63, 33, 2), (700, 16, 2), (700, 33, 2), (2048, 16, 2), (2048, 33, 2),
                                (4096, 64, 4)):
        def run(length=length, modes=modes, rows=rows):
            et.ssm_kernel(nodes(rows, modes), randc(rows, modes), length, **tr)
        cases.append((f"ssm_kernel L={length} N={modes} rows={rows}", run))

    # vandermonde_solve: small block and the 1024 cap; real and complex right-hand sides.
    for size in (33, 1030):
        for complex_rhs in (False, True):
            def run(size=size, complex_rhs=complex_rhs):
                lam = torch.exp(-2j * torch.pi * torch.arange(1, size + 1) / (size + 1)).to(torch.complex64)
                t = randc(size) if complex_rhs else torch.randn(size)
                et.vandermonde_solve(lam[None], t[None], **tr)
            cases.append((f"vandermonde_solve N={size} complex_rhs={complex_rhs}", run))

    # ssm_scan: N <= 512 and the split-modes path N > 512, with / without state, fp32 / bf16 x; (64, 64) and
    # (64, 256) are aligned, realistic shapes (vector widths depend on divisibility by 16).
    for channels, modes in ((5, 33), (64, 16), (64, 64), (3, 600)):
        for dtype in (torch.float32, torch.bfloat16):
            for with_state in (False, True):
                def run(channels=channels, modes=modes, dtype=dtype, with_state=with_state):
                    x = torch.randn(2, 7, channels).to(dtype)
                    state = randc(2, channels, modes) if with_state else None
                    et.ssm_scan(x, nodes(channels, modes), randc(channels, modes), state, **tr)
                cases.append((f"ssm_scan D={channels} N={modes} {dtype} state={with_state}", run))
    # The chunked scan (few programs, long sequence): chunks from 8 tokens on, so the capture stays small.
    for channels, modes in ((5, 33), (64, 64), (3, 600)):
        for dtype in (torch.float32, torch.bfloat16):
            for with_state in (False, True):
                def run(channels=channels, modes=modes, dtype=dtype, with_state=with_state):
                    x = torch.randn(1, 12, channels).to(dtype)
                    state = randc(1, channels, modes) if with_state else None
                    saved, scan.MIN_CHUNK_TOKENS = scan.MIN_CHUNK_TOKENS, 4
                    try:
                        et.ssm_scan(x, nodes(channels, modes), randc(channels, modes), state, **tr)
                    finally:
                        scan.MIN_CHUNK_TOKENS = saved
                cases.append((f"ssm_scan chunked D={channels} N={modes} {dtype} state={with_state}", run))
    # ssm_kernel's backward: short and long kernels (the block choices depend on L), few and many modes.
    for modes, length in ((16, 200), (64, 4096), (40, 63)):
        def run(modes=modes, length=length):
            lam = nodes(2, modes).requires_grad_()
            b = randc(2, modes).requires_grad_()
            et.ssm_kernel(lam, b, length, **tr).sum().backward()
        cases.append((f"ssm_kernel backward N={modes} L={length}", run))
    # The scan's backward (reverse walk): with / without an initial state, fp32 / bf16 x, one and two mode blocks.
    for channels, modes in ((5, 33), (64, 64), (3, 600)):
        for dtype in (torch.float32, torch.bfloat16):
            for with_state in (False, True):
                def run(channels=channels, modes=modes, dtype=dtype, with_state=with_state):
                    x = torch.randn(2, 7, channels).to(dtype).requires_grad_()
                    lam = nodes(channels, modes).requires_grad_()
                    state = randc(2, channels, modes).requires_grad_() if with_state else None
                    y, final = et.ssm_scan(x, lam, randc(channels, modes), state, **tr)
                    (y.float().sum() + final.abs().sum()).backward()
                cases.append((f"ssm_scan backward D={channels} N={modes} {dtype} state={with_state}", run))
    # The chunked backward (local walks, right-to-left carry, chunk walks): chunks from 8 tokens on.
    for channels, modes in ((5, 33), (64, 64), (3, 600)):
        for with_state in (False, True):
            def run(channels=channels, modes=modes, with_state=with_state):
                x = torch.randn(1, 12, channels).requires_grad_()
                state = randc(1, channels, modes).requires_grad_() if with_state else None
                saved, scan.MIN_CHUNK_TOKENS = scan.MIN_CHUNK_TOKENS, 4
                try:
                    y, final = et.ssm_scan(x, nodes(channels, modes), randc(channels, modes), state, **tr)
                    (y.sum() + final.abs().sum()).backward()
                finally:
                    scan.MIN_CHUNK_TOKENS = saved
            cases.append((f"ssm_scan chunked backward D={channels} N={modes} state={with_state}", run))

    # ssm_step: with / without state_indices, fp32 / bf16 x, small and split mode counts, aligned shapes.
    for channels, modes in ((5, 33), (64, 16), (64, 256), (3, 600)):
        for dtype in (torch.float32, torch.bfloat16):
            for indexed in (False, True):
                def run(channels=channels, modes=modes, dtype=dtype, indexed=indexed):
                    x = torch.randn(2, channels).to(dtype)
                    pool = 3 if indexed else 2
                    state = randc(pool, channels, modes)
                    idx = torch.tensor([2, -1], dtype=torch.int32) if indexed else None
                    et.ssm_step(x, nodes(channels, modes), randc(channels, modes), state, state_indices=idx, **tr)
                cases.append((f"ssm_step D={channels} N={modes} {dtype} indices={indexed}", run))

    # ssm_prefill_state: fp32 / bf16 prompt, scalar / tensor gamma.
    for dtype in (torch.float32, torch.bfloat16):
        for gamma in (None, 0.99, "tensor"):
            def run(dtype=dtype, gamma=gamma):
                n, channels = 31, 64
                _, b = et.toeplitz_to_ssm(torch.randn(channels, n), backend="torch")
                g = torch.full((channels,), 0.98) if gamma == "tensor" else gamma
                et.ssm_prefill_state(torch.randn(2, 40, channels).to(dtype), b, n, g, **tr)
            cases.append((f"ssm_prefill_state {dtype} gamma={gamma}", run))

    # lsh_hash: tau 3 / 8 / 16, both weightings, forward and backward, fp32 / bf16 z.
    for tau in (3, 8, 16):
        for weighting in ("paper", "magnitude"):
            for dtype in (torch.float32, torch.bfloat16):
                def run(tau=tau, weighting=weighting, dtype=dtype):
                    z = torch.randn(2, 5, 3, tau).to(dtype).requires_grad_(True)
                    codes, scores = et.lsh_hash(z, temperature=0.7, weighting=weighting, **tr)
                    scores.sum().backward()
                cases.append((f"lsh_hash tau={tau} {weighting} {dtype}", run))

    # memory_gather: forward + backward (scores / tables grads), deterministic or not, fp32 / bf16 tables,
    # one token (K-split path) and 64 tokens, int32 / int64 codes, with / without bias.
    num_tables, tau, d_out = 2, 4, 256
    rows = 2 ** tau
    for tokens in (1, 64):
        for table_dtype in (torch.float32, torch.bfloat16):
            for deterministic in (False, True):
                for code_dtype, with_bias in ((torch.int32, True), (torch.int64, False)):
                    def run(tokens=tokens, table_dtype=table_dtype, deterministic=deterministic,
                            code_dtype=code_dtype, with_bias=with_bias):
                        codes = torch.randint(0, rows, (tokens, num_tables), dtype=code_dtype)
                        scores = torch.rand(tokens, num_tables, requires_grad=True)
                        tables = (0.1 * torch.randn(num_tables, rows, d_out)).to(table_dtype).requires_grad_(True)
                        bias = torch.randn(d_out).to(table_dtype).requires_grad_(True) if with_bias else None
                        y = et.memory_gather(codes, scores, tables, bias, deterministic=deterministic, **tr)
                        y.float().sum().backward()
                    cases.append((f"memory_gather T={tokens} {table_dtype} det={deterministic} {code_dtype}", run))

    # memory_layer: forward only (no grad), backward through x and tables, either alone; both weightings.
    for tokens in (1, 64):
        for dtype in (torch.float32, torch.bfloat16):
            for deterministic in (False, True):
                for grads in ("none", "x+tables", "x", "tables"):
                    for weighting in ("paper", "magnitude"):
                        if grads == "none" and deterministic:
                            continue
                        def run(tokens=tokens, dtype=dtype, deterministic=deterministic, grads=grads,
                                weighting=weighting):
                            x = torch.randn(tokens, num_tables * tau).to(dtype)
                            tables = (0.1 * torch.randn(num_tables, rows, d_out)).to(dtype)
                            bias = torch.randn(d_out).to(dtype)
                            x.requires_grad_("x" in grads)
                            tables.requires_grad_("tables" in grads)
                            y = et.memory_layer(x, tables, bias, temperature=0.8, weighting=weighting,
                                                deterministic=deterministic, **tr)
                            if grads != "none":
                                y.float().sum().backward()
                        cases.append((f"memory_layer T={tokens} {dtype} det={deterministic} grads={grads} "
                                      f"{weighting}", run))
    # memory_layer at a production-like tau (8, S=256) and a narrow d_out.
    for dtype in (torch.float32, torch.bfloat16):
        def run(dtype=dtype):
            x = torch.randn(16, 2 * 8).to(dtype).requires_grad_(True)
            tables = (0.1 * torch.randn(2, 256, 48)).to(dtype).requires_grad_(True)
            et.memory_layer(x, tables, **tr).float().sum().backward()
        cases.append((f"memory_layer tau=8 d_out=48 {dtype}", run))
    return cases


def capture(out_path: str) -> int:
    """Run in the ``TRITON_INTERPRET=1`` subprocess: record every launch, write the unique ones as JSON."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("capture needs TRITON_INTERPRET=1 set before triton is imported")
    import torch

    torch.manual_seed(0)
    records: dict = {}
    current_case = ["import"]
    _install_launch_recorder(records, current_case)
    patched = _force_gpu_block_sizes()
    failures = []
    for label, thunk in _capture_cases():
        current_case[0] = label
        try:
            thunk()
        except Exception as exc:  # one failing case must not hide the others
            failures.append({"case": label, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                             "traceback": traceback.format_exc()})
    Path(out_path).write_text(json.dumps({"patched_modules": patched, "launches": list(records.values()),
                                          "capture_failures": failures}, indent=1))
    return 0


# ----------------------------------------------------------------------------------------------- compile


def _example_arg(desc: dict):
    """An argument the binder specialises exactly like the captured one (tiny CPU tensor, same alignment)."""
    import torch

    kind = desc["kind"]
    if kind == "tensor":
        dtype = getattr(torch, desc["dtype"])
        item = torch.empty((), dtype=dtype).element_size()
        base = torch.empty(64, dtype=dtype)
        shift = (desc["align"] // item) if desc["align"] else 0
        return base[shift:]
    if kind == "none":
        return None
    return desc["value"]


def _manual_specialization(fn, record: dict):
    """Fallback of ``JITFunction``'s specialisation rules (signature, constexprs, attrs) for other triton APIs."""
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        name = param.name
        desc = record["args"][name]
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[(index,)] = _example_arg(desc)
            continue
        kind = desc["kind"]
        specialize = not param.do_not_specialize
        if kind == "tensor":
            signature[name] = desc["type"]
            if desc["align"] == 0 and not getattr(param, "do_not_specialize_on_alignment", False):
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif kind == "bool":
            signature[name] = "i1"
        elif kind == "int":
            value = desc["value"]
            if specialize and value == 1:
                signature[name] = "constexpr"
                constexprs[(index,)] = 1
                continue
            signature[name] = "i32" if -2**31 <= value < 2**31 else ("u64" if value >= 2**63 else "i64")
            if specialize and value % 16 == 0 and not getattr(param, "do_not_specialize_on_alignment", False):
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif kind == "float":
            signature[name] = "fp32"
        elif kind == "none":
            signature[name] = "constexpr"
            constexprs[(index,)] = None
        else:
            raise TypeError(f"cannot specialise argument {name} of kind {kind}")
    return signature, constexprs, attrs


def _specialize(fn, record: dict, backend):
    """``(signature, constexprs, attrs)`` as ``JITFunction.run`` computes them on the GPU."""
    try:
        from triton.runtime.jit import create_function_from_signature

        binder = create_function_from_signature(fn.signature, fn.params, backend)
        args = [_example_arg(record["args"][p.name]) for p in fn.params]
        bound_args, specialization, _ = binder(*args, **record["options"])
        _, signature, constexprs, attrs = fn._pack_args(backend, dict(record["options"]), bound_args,
                                                        specialization, record["options"])
        return signature, constexprs, attrs, "binder"
    except (ImportError, AttributeError, TypeError):
        signature, constexprs, attrs = _manual_specialization(fn, record)
        return signature, constexprs, attrs, "manual"


def _ptxas_path() -> str | None:
    """The ptxas triton itself runs for this arch (it accepts the PTX version triton emits), else PATH's."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(TARGET_ARCH).path
        if path and Path(path).exists():
            return path
    except (ImportError, AttributeError, RuntimeError):
        pass
    return shutil.which("ptxas")


def _parse_ptxas_log(text: str) -> dict:
    stats = {}
    if m := re.search(r"Used (\d+) registers", text):
        stats["registers"] = int(m.group(1))
    if m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text):
        stats["spill_stores"], stats["spill_loads"] = int(m.group(1)), int(m.group(2))
    if m := re.search(r"(\d+) bytes stack frame", text):
        stats["stack"] = int(m.group(1))
    return stats


def _ptxas_stats(ptx: str, arch: str, workdir: str) -> dict:
    """Registers and spill bytes from running ``ptxas -v`` on the PTX (fallback when triton's log is missing)."""
    ptxas = _ptxas_path()
    if ptxas is None:
        return {"ptxas_error": "ptxas not found"}
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", dir=workdir, delete=False) as handle:
        handle.write(ptx)
        path = handle.name
    try:
        proc = subprocess.run([ptxas, f"-arch={arch}", "-v", path, "-o", os.devnull], capture_output=True,
                              text=True, timeout=300)
    finally:
        os.unlink(path)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        lines = text.strip().splitlines() or ["ptxas failed"]
        return {"ptxas_error": next((line for line in lines if "fatal" in line or "error" in line), lines[0])[:200]}
    return _parse_ptxas_log(text)


def _short_config(fn, signature: dict, constexprs: dict) -> tuple[str, str]:
    """``(user constexprs "A=1, B=2", notable specialisations "x_ptr:*bf16, K=1")``."""
    names = [p.name for p in fn.params]
    user = []
    specialised = []
    for path, value in sorted(constexprs.items()):
        name = names[path[0]]
        if fn.params[path[0]].is_constexpr:
            user.append(f"{name}={value}")
        else:
            specialised.append(f"{name}={value}")
    pointers = [f"{name}:{ty}" for name, ty in signature.items() if isinstance(ty, str) and ty.startswith("*")
                and ty != "*fp32"]
    return ", ".join(user), ", ".join(pointers + specialised)


def _jit_function(record: dict):
    fn = getattr(importlib.import_module(record["module"]), record["name"])
    while not hasattr(fn, "params") and hasattr(fn, "fn"):  # unwrap autotuner / heuristics
        fn = fn.fn
    return fn


def compile_kernel(record: dict):
    """Compile one captured launch for sm_90: ``(triton CompiledKernel, triton's ptxas -v log)``; raises."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    fn = _jit_function(record)
    target = GPUTarget("cuda", TARGET_ARCH, 32)
    signature, constexprs, attrs, _ = _specialize(fn, record, make_backend(target))
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    with contextlib.suppress(AttributeError):  # triton prints its own ptxas -v log: the exact numbers
        triton.knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(src, target=target, options=dict(record["options"]))
    return kernel, log.getvalue()


def compile_one(record: dict, workdir: str) -> dict:
    """Compile one captured launch for sm_90; never raises (errors go in the result)."""
    warnings.filterwarnings("ignore")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    result = {"kernel": f"{record['module']}.{record['name']}", "cases": record["cases"],
              "num_warps": record["options"].get("num_warps", 4),
              "num_stages": record["options"].get("num_stages", 3)}
    try:
        fn = _jit_function(record)
        signature, constexprs, attrs, how = _specialize(fn, record, make_backend(GPUTarget("cuda", TARGET_ARCH, 32)))
        result["config"], result["args"] = _short_config(fn, signature, constexprs)
        result["specialization"] = how
        result["key"] = json.dumps([result["kernel"], signature, sorted((list(k), repr(v)) for k, v in
                                                                        constexprs.items()),
                                    sorted((list(k), repr(v)) for k, v in attrs.items()), record["options"]])
    except Exception as exc:
        result["status"] = f"specialisation failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
        return result
    start = time.perf_counter()
    try:
        kernel, log = compile_kernel(record)
    except Exception as exc:
        message = " ".join(str(exc).split())
        result["status"] = f"{type(exc).__name__}: {message}"[:400]
        result["error_full"] = f"{type(exc).__name__}: {exc}"
        return result
    result["compile_s"] = round(time.perf_counter() - start, 2)
    metadata = kernel.metadata
    result["shared"] = getattr(metadata, "shared", None)
    result["num_warps"] = getattr(metadata, "num_warps", result["num_warps"])
    result["num_stages"] = getattr(metadata, "num_stages", result["num_stages"])
    arch = "sm_90a" if TARGET_ARCH == 90 else f"sm_{TARGET_ARCH}"
    stats = _parse_ptxas_log(log)
    result["ptxas_source"] = "triton"
    if "registers" not in stats:  # cached kernel or a triton without the log knob: run ptxas ourselves
        stats = _ptxas_stats(kernel.asm["ptx"], arch, workdir)
        result["ptxas_source"] = "ptxas -v"
    result.update(stats)
    result["global_access"] = global_access_widths(kernel.asm["ptx"])
    result["hot_loop"] = hot_loop(kernel.asm["cubin"])
    result["status"] = "OK"
    return result


def global_access_widths(ptx: str) -> str:
    """The global loads and stores in the PTX by width in bytes, e.g. ``ld 16B x4, 4B x2; st 16B x2``.

    Answers METHOD's first question without a GPU: are the streaming accesses 16 bytes wide? (A ``.v4.b32``
    access is 16 bytes, ``.v2.b32`` 8, a plain ``.b32`` 4.)
    """
    widths = {"ld": {}, "st": {}}
    pattern = r"\b(ld|st)\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b"
    for kind, vector, bits in re.findall(pattern, ptx):
        size = int(vector or 1) * int(bits) // 8
        widths[kind][size] = widths[kind].get(size, 0) + 1
    parts = []
    for kind, counts in widths.items():
        if counts:
            parts.append(f"{kind} " + ", ".join(f"{size}B x{n}" for size, n in sorted(counts.items(), reverse=True)))
    return "; ".join(parts) or "-"


def _compile_all(records: list[dict], jobs: int) -> list[dict]:
    """Compile in a fresh triton cache, so every kernel really goes through ptxas and its log is read."""
    workdir = tempfile.mkdtemp(prefix="etsc_compile_report_")
    previous_cache = os.environ.get("TRITON_CACHE_DIR")
    os.environ["TRITON_CACHE_DIR"] = os.path.join(workdir, "cache")
    try:
        if jobs <= 1:
            return [compile_one(r, workdir) for r in records]
        with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(compile_one, records, [workdir] * len(records)))
    finally:
        if previous_cache is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = previous_cache
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- report


def _cell(value) -> str:
    return "-" if value is None else str(value).replace("|", "\\|")


def _ptxas_version() -> str:
    path = _ptxas_path()
    if path is None:
        return "ptxas not found"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except OSError as exc:
        return f"{path}: {exc}"
    release = re.search(r"release ([\d.]+)", out)
    return f"{Path(path).name} {release.group(1) if release else '?'}"


def render(results: list[dict], capture: dict, elapsed: dict) -> str:
    import triton

    lines = [
        f"# Compile report: etsc_triton kernels for sm_90 (triton {triton.__version__})",
        "",
        f"{len(results)} unique launch configurations ({len(capture['launches'])} captured launches); "
        + (f"capture {elapsed['capture']:.1f} s, " if elapsed.get("capture") is not None else "capture loaded, ")
        + f"compile {elapsed['compile']:.1f} s. regs / spills: the `ptxas -v` log of triton's own ptxas run "
        f"({_ptxas_version()}), smem (bytes): the compiled metadata. "
        "`args`: pointer arguments that are not *fp32, and ints the launch specialises to constexpr 1. "
        "hot loop: the SASS instructions of the largest loop body and its three most frequent opcodes "
        "(`python -m perf.sass_probe` for one kernel at other sizes).",
        "",
        "| kernel | config | args | warps | stages | regs | spill st/ld (B) | smem (B) | global ld/st | "
        "hot loop (SASS) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        spills = (f"{r['spill_stores']}/{r['spill_loads']}" if "spill_stores" in r else "-")
        status = r["status"] if "ptxas_error" not in r else f"{r['status']} (ptxas: {r['ptxas_error']})"
        lines.append(
            f"| {_cell(r['kernel'].removeprefix('etsc_triton.ops.'))} | {_cell(r.get('config'))} | "
            f"{_cell(r.get('args') or '')} | {r['num_warps']} | {r['num_stages']} | {_cell(r.get('registers'))} | "
            f"{spills} | {_cell(r.get('shared'))} | {_cell(r.get('global_access'))} | {_cell(r.get('hot_loop'))} | "
            f"{_cell(status)} |"
        )
    flagged = [r for r in results if r.get("spill_stores") or r.get("spill_loads") or (r.get("registers") or 0) > 200]
    lines += ["", "## Spills and high register counts (> 200)", ""]
    if flagged:
        for r in flagged:
            lines.append(f"- {r['kernel']} [{r.get('config')}] [{r.get('args') or 'all *fp32'}] "
                         f"warps={r['num_warps']}: {r.get('registers')} regs, "
                         f"spill {r.get('spill_stores')}/{r.get('spill_loads')} B")
    else:
        lines.append("none")
    failures = [r for r in results if r["status"] != "OK"]
    lines += ["", "## Compile failures", ""]
    if failures:
        for r in failures:
            lines.append(f"- {r['kernel']} [{r.get('config')}] ({r['cases'][0]}): {r.get('error_full', r['status'])}")
    else:
        lines.append("none")
    lines += ["", "## Capture failures (op calls that raised in the interpreter at GPU block sizes)", ""]
    if capture["capture_failures"]:
        for f in capture["capture_failures"]:
            lines.append(f"- {f['case']}: {f['error']}")
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def run_capture_subprocess(json_path: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "perf.compile_report", "--capture", json_path]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"capture subprocess failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.compile_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the markdown report to this file too")
    parser.add_argument("--configs", help="compile the launches in this capture JSON instead of capturing")
    parser.add_argument("--save-configs", help="keep the capture JSON at this path")
    parser.add_argument("--json", help="write the per-kernel results as JSON to this path")
    parser.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel compiles")
    parser.add_argument("--capture", help=argparse.SUPPRESS)  # internal: the TRITON_INTERPRET=1 subprocess
    args = parser.parse_args(argv)
    if args.capture:
        return capture(args.capture)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the compile step needs real JITFunction objects")

    elapsed = {}
    start = time.perf_counter()
    if args.configs:
        capture_data = json.loads(Path(args.configs).read_text())
        start = None
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = args.save_configs or os.path.join(tmp, "launches.json")
            run_capture_subprocess(path)
            capture_data = json.loads(Path(path).read_text())
    elapsed["capture"] = None if start is None else time.perf_counter() - start

    start = time.perf_counter()
    results = _compile_all(capture_data["launches"], args.jobs)
    elapsed["compile"] = time.perf_counter() - start
    unique, seen = [], {}
    for r in results:  # launches that specialise identically compile to the same kernel: merge them
        key = r.get("key") or id(r)
        if key in seen:
            seen[key]["cases"].extend(c for c in r["cases"] if c not in seen[key]["cases"])
        else:
            seen[key] = r
            unique.append(r)
    unique.sort(key=lambda r: (r["kernel"], r.get("config") or "", r.get("args") or "", r["num_warps"]))

    report = render(unique, capture_data, elapsed)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    if args.json:
        Path(args.json).write_text(json.dumps(unique, indent=1, default=str))
    failed = any(r["status"] != "OK" for r in unique) or bool(capture_data["capture_failures"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
