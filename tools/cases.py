"""The kernel cases: one table of op calls that reaches every launch configuration the launchers pick on a GPU.

The compile report (:mod:`tools.compile_report`) compiles every case's launches for sm_90; the GPU proof
(:mod:`perf.proof_cases`) runs every case against its float64 oracle. Both run a case through :func:`evaluate`
under :func:`case_tiles` (2 SMs assumed, plus the row's changes), so the launches the report compiles are the
launches the proof checks. One builder per op turns a point of a :class:`CaseGrid` into small CPU inputs;
``sm_count()`` is 2 for CPU tensors, so small shapes already take the split-K, chunked and 64-anchor paths.
"""

from __future__ import annotations

import dataclasses
import itertools
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

import etsc_triton as et
from etsc_triton.ops.tiles import GPU_TILES, TilePolicy, use_tiles

from .sm90 import record_launches


class CaseGrid(NamedTuple):
    """``op``: a builder name of :data:`BUILDERS`; ``axes``: ``{name or (names...): values}``; ``tiles``: tile
    policy fields changed for the row; ``quick``: ``{axis: values}`` replacing long sizes in a dry run."""

    op: str
    axes: dict
    tiles: dict = {}
    quick: dict = {}


class Case(NamedTuple):
    """One point of the table: ``label`` (``"op axis=value ..."``), the grid it comes from, its axis values and
    its position in the table (the seed of its inputs)."""

    label: str
    grid: CaseGrid
    point: dict
    index: int


class Call(NamedTuple):
    """``et.<op>(*args, **kwargs)`` on CPU inputs; ``grads``: the positions of the args it differentiates."""

    op: str
    args: list
    kwargs: dict
    grads: tuple[int, ...] = ()


FP = ("fp32", "bf16")
BOTH = (False, True)
GAMMAS = (None, 0.99, "tensor")
SCAN_SIZES = ((5, 33), (64, 16), (64, 64), (3, 600))  # N <= 512 and the split-modes path N > 512
SCAN_SIZES_QUICK = ((5, 33), (8, 16), (8, 40), (3, 70))
CHUNKS_FROM_4 = {"scan_min_chunk_tokens": 4}  # the chunked scan on 12 tokens
# packed sequences: an empty one, a one-token one; packed initial states; a pool with a padding sequence and
# has_initial_state (pooled+flags)
LAYOUTS = ("packed", "packed+state", "pooled", "pooled+flags")

CASES = [
    # 2048: aligned rows and a mode count divisible by 16 (the usual case); 2100 > the solve's 1024-node cap.
    CaseGrid("toeplitz_to_ssm", {"n": (63, 2048, 2100), "real": BOTH, "compensate": BOTH, "gamma": GAMMAS},
             quick={"n": (63, 64, 70)}),
    # short / long kernels, few / many modes; 64-anchor programs need rows >= 2 x the SMs.
    CaseGrid("ssm_kernel", {("length", "modes", "rows"): ((63, 16, 2), (63, 33, 2), (700, 16, 2), (700, 33, 2),
                                                          (2048, 16, 2), (2048, 33, 2), (4096, 64, 4), (4096, 64, 2),
                                                          (200, 16, 2), (63, 40, 2))},
             quick={("length", "modes", "rows"): ((63, 16, 2), (63, 33, 2), (130, 16, 2), (130, 33, 2))}),
    CaseGrid("vandermonde_solve", {"size": (33, 1030), "complex_rhs": BOTH}, quick={"size": (9, 20)}),
    CaseGrid("ssm_scan", {("channels", "modes"): SCAN_SIZES, "dtype": FP, "state": BOTH},
             quick={("channels", "modes"): SCAN_SIZES_QUICK}),
    CaseGrid("ssm_scan", {("channels", "modes"): ((5, 33), (64, 64), (3, 600)), "dtype": FP, "state": BOTH,
                          "tokens": (12,), "batch": (1,)}, CHUNKS_FROM_4,
             quick={("channels", "modes"): ((5, 33), (8, 40), (3, 70))}),
    CaseGrid("ssm_step", {("channels", "modes"): ((5, 33), (64, 16), (64, 256), (3, 600)), "dtype": FP,
                          "indexed": BOTH}, quick={("channels", "modes"): SCAN_SIZES_QUICK}),
    CaseGrid("ssm_prefill_state", {"dtype": FP, "gamma": GAMMAS, "channels": (64,)}, quick={"channels": (8,)}),
    CaseGrid("lsh_hash", {"tau": (3, 8, 16), "weighting": ("paper", "magnitude"), "dtype": FP}),
    # one token (the K-split path) and 64; int32 codes with a bias, int64 codes without.
    CaseGrid("memory_gather", {"tokens": (1, 64), "dtype": FP, "det": BOTH,
                               ("codes", "bias"): (("int32", True), ("int64", False)), "d_out": (256,)},
             quick={"d_out": (32,)}),
    CaseGrid("memory_layer", {"tokens": (1, 64), "dtype": FP, "det": (False,), "grads": ("none",),
                              "weighting": ("paper", "magnitude"), "d_out": (256,)},
             quick={"tokens": (1, 9), "d_out": (32,)}),
    CaseGrid("memory_layer", {"tokens": (1, 64), "dtype": FP, "det": BOTH, "grads": ("x+tables+bias", "x", "tables"),
                              "weighting": ("paper", "magnitude"), "d_out": (256,)},
             quick={"tokens": (1, 9), "d_out": (32,)}),
    # a production-like tau (8, S=256) and a narrow d_out.
    CaseGrid("memory_layer", {"dtype": FP, "tau": (8,), "d_out": (48,), "tokens": (16,), "grads": ("x+tables",),
                              "bias": (False,)}, quick={"tokens": (5,)}),
    # packed sequences (cu_seqlens) and a state pool (state_indices); lengths 0, 1, 6, 5, then 0, 1, 12, 5 with the
    # 12-token sequence cut into chunks of 4 (a sequence's chunks never reach the next one)
    CaseGrid("ssm_scan", {("channels", "modes"): SCAN_SIZES, "dtype": FP, "layout": LAYOUTS},
             quick={("channels", "modes"): SCAN_SIZES_QUICK}),
    CaseGrid("ssm_scan", {("channels", "modes"): ((5, 33), (64, 16), (3, 600)), "dtype": FP, "layout": LAYOUTS,
                          "lengths": ((0, 1, 12, 5),)}, CHUNKS_FROM_4,
             quick={("channels", "modes"): ((5, 33), (8, 16), (3, 70))}),
    CaseGrid("ssm_prefill_state", {"dtype": FP, "gamma": (0.99,), "channels": (64,), "layout": ("packed", "pooled")},
             quick={"channels": (8,)}),
]


def points(grid: CaseGrid, quick: bool = False) -> Iterable[dict]:
    """Every combination of ``grid.axes`` (with ``grid.quick`` in place when ``quick``) as ``{name: value}``."""
    axes = {**grid.axes, **grid.quick} if quick else grid.axes
    for values in itertools.product(*axes.values()):
        point: dict = {}
        for name, value in zip(axes, values):
            point.update(zip(name, value) if isinstance(name, tuple) else [(name, value)])
        yield point


def label(op: str, point: dict) -> str:
    """``"ssm_scan channels=5 modes=33 dtype=fp32 state=False"``: the name a case goes by in the reports."""
    return " ".join([op, *(f"{name}={value}" for name, value in point.items())])


def cases(quick: bool = False, grids: Iterable[CaseGrid] = CASES) -> list[Case]:
    """Every case of the table, in table order."""
    table = [(grid, point) for grid in grids for point in points(grid, quick)]
    return [Case(label(grid.op, point), grid, point, index) for index, (grid, point) in enumerate(table)]


def case_tiles(case: Case, base: TilePolicy) -> TilePolicy:
    """The tile policy a case runs under: ``base`` with 2 SMs assumed (small shapes then reach the large-device
    branches on a GPU too, as they do on CPU tensors) and the row's changes."""
    return dataclasses.replace(base, assumed_sms=2, **case.grid.tiles)


def build(case: Case) -> Call:
    """The case's op call on fresh CPU inputs, seeded by the case's position in the table."""
    torch.manual_seed(case.index)
    return BUILDERS[case.grid.op](**case.point)


def evaluate(call: Call, fn: Callable[..., Any],
             convert: Callable[[torch.Tensor], torch.Tensor]) -> tuple[list, Any, tuple]:
    """Run ``fn(*args, **kwargs)`` on ``convert``-ed copies of the call's tensors and differentiate it.

    Returns:
        ``(args, result, grads)``: the converted args (an in-place op has updated them), the op's result and,
        for ``call.grads``, the gradients of ``sum_i <w_i, output_i>`` over the outputs that require grad
        (complex ones as their real view; ``w_i`` fixed random weights, the same for any ``convert``), one per
        differentiated arg (None where it is unused).
    """
    args = [convert(a) if isinstance(a, torch.Tensor) else a for a in call.args]
    kwargs = {k: convert(v) if isinstance(v, torch.Tensor) else v for k, v in call.kwargs.items()}
    for i in call.grads:
        args[i] = args[i].detach().requires_grad_()
    with torch.set_grad_enabled(bool(call.grads)):
        result = fn(*args, **kwargs)
    if not call.grads:
        return args, result, ()
    gen = torch.Generator().manual_seed(1)
    terms = []
    for out in result if isinstance(result, tuple) else (result,):
        if out.requires_grad:
            real = torch.view_as_real(out) if out.is_complex() else out
            wide = torch.float64 if real.dtype == torch.float64 else torch.float32
            weight = torch.randn(real.shape, generator=gen, dtype=torch.float64).to(real.device, wide)
            terms.append((real.to(wide) * weight).sum())
    return args, result, torch.autograd.grad(sum(terms), [args[i] for i in call.grads], allow_unused=True)


def triton_op(op: str) -> Callable[..., Any]:
    """``et.<op>`` with ``backend="triton"``."""
    return lambda *args, **kwargs: getattr(et, op)(*args, **kwargs, backend="triton")


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64}[name]


def _randc(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.complex64)


def _nodes(rows: int, modes: int, radius: float = 0.95) -> torch.Tensor:
    return (radius * torch.exp(2j * torch.pi * torch.rand(rows, modes))).to(torch.complex64)


def _gamma(gamma, rows: int):
    return torch.full((rows,), 0.98) if gamma == "tensor" else gamma


def toeplitz_to_ssm(n: int, real: bool, compensate: bool, gamma, rows: int = 3) -> Call:
    return Call("toeplitz_to_ssm", [torch.randn(rows, n), _gamma(gamma, rows)], dict(real=real, compensate=compensate))


def ssm_kernel(length: int, modes: int, rows: int) -> Call:
    return Call("ssm_kernel", [_nodes(rows, modes), _randc(rows, modes), length], {}, (0, 1))


def vandermonde_solve(size: int, complex_rhs: bool) -> Call:
    lam = torch.exp(-2j * torch.pi * torch.arange(1, size + 1) / (size + 1)).to(torch.complex64)
    return Call("vandermonde_solve", [lam[None], _randc(1, size) if complex_rhs else torch.randn(1, size)], {})


def ssm_scan(channels: int, modes: int, dtype: str, state: bool = False, tokens: int = 7, batch: int = 2,
             layout: str = "dense", lengths: tuple[int, ...] = (0, 1, 6, 5)) -> Call:
    if layout != "dense":
        return _packed_scan(channels, modes, dtype, layout, lengths)
    x = torch.randn(batch, tokens, channels).to(_dtype(dtype))
    h0 = _randc(batch, channels, modes) if state else None
    return Call("ssm_scan", [x, _nodes(channels, modes), _randc(channels, modes), h0], {},
                (0, 1, 2, 3) if state else (0, 1, 2))


def _packed_scan(channels: int, modes: int, dtype: str, layout: str, lengths: tuple[int, ...]) -> Call:
    """Packed sequences of ``lengths`` tokens (differentiated), or the same into a pool of 6 rows whose second
    sequence is padding (not differentiable: the pool is updated in place, and compared as an output)."""
    cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    x = torch.randn(1, int(cu_seqlens[-1]), channels).to(_dtype(dtype))
    lam, b = _nodes(channels, modes), _randc(channels, modes)
    if layout.startswith("pooled"):
        rows = torch.tensor([4, -1, 0, 2], dtype=torch.int32)[: len(lengths)]
        starts = torch.tensor([True, True, False, True])[: len(lengths)] if layout == "pooled+flags" else None
        return Call("ssm_scan", [x, lam, b, _randc(6, channels, modes)],
                    dict(cu_seqlens=cu_seqlens, state_indices=rows, has_initial_state=starts))
    h0 = _randc(len(lengths), channels, modes) if layout == "packed+state" else None
    return Call("ssm_scan", [x, lam, b, h0], dict(cu_seqlens=cu_seqlens), (0, 1, 2, 3) if h0 is not None else (0, 1, 2))


def ssm_step(channels: int, modes: int, dtype: str, indexed: bool) -> Call:
    pool = _randc(3 if indexed else 2, channels, modes)
    indices = torch.tensor([2, -1], dtype=torch.int32) if indexed else None
    x = torch.randn(2, channels).to(_dtype(dtype))
    return Call("ssm_step", [x, _nodes(channels, modes), _randc(channels, modes), pool], dict(state_indices=indices))


def ssm_prefill_state(dtype: str, gamma, channels: int, n: int = 31, layout: str = "dense") -> Call:
    if layout == "dense":
        prompt = torch.randn(2, 40, channels).to(_dtype(dtype))
        return Call("ssm_prefill_state", [prompt, _randc(channels, (n + 1) // 2), n, _gamma(gamma, channels)], {})
    # packed prompts of 0, 40 (folded past the period n + 1) and 5 tokens; pooled: into rows 3 and 0, one padding
    prompt = torch.randn(1, 45, channels).to(_dtype(dtype))
    kwargs = dict(cu_seqlens=torch.tensor([0, 0, 40, 45], dtype=torch.int32))
    if layout == "pooled":
        rows = torch.tensor([3, -1, 0], dtype=torch.int32)
        kwargs |= dict(state=_randc(5, channels, (n + 1) // 2), state_indices=rows)
    return Call("ssm_prefill_state", [prompt, _randc(channels, (n + 1) // 2), n, _gamma(gamma, channels)], kwargs)


def lsh_hash(tau: int, weighting: str, dtype: str) -> Call:
    z = torch.randn(2, 5, 3, tau).to(_dtype(dtype))
    return Call("lsh_hash", [z], dict(temperature=0.7, weighting=weighting), (0,))


def memory_gather(tokens: int, dtype: str, det: bool, codes: str, bias: bool, d_out: int, tables: int = 2,
                  tau: int = 4) -> Call:
    rows = 2**tau
    code_values = torch.randint(0, rows, (tokens, tables), dtype=_dtype(codes))
    table_values = (0.1 * torch.randn(tables, rows, d_out)).to(_dtype(dtype))
    bias_values = torch.randn(d_out).to(_dtype(dtype)) if bias else None
    return Call("memory_gather", [code_values, torch.rand(tokens, tables), table_values, bias_values],
                dict(deterministic=det), (1, 2, 3) if bias else (1, 2))


def memory_layer(tokens: int, dtype: str, grads: str, d_out: int, weighting: str = "paper", det: bool = False,
                 bias: bool = True, tables: int = 2, tau: int = 4) -> Call:
    x = torch.randn(tokens, tables * tau).to(_dtype(dtype))
    table_values = (0.1 * torch.randn(tables, 2**tau, d_out)).to(_dtype(dtype))
    bias_values = torch.randn(d_out).to(_dtype(dtype)) if bias else None
    differentiated = tuple(i for i, name in enumerate(("x", "tables", "bias")) if name in grads.split("+"))
    return Call("memory_layer", [x, table_values, bias_values],
                dict(temperature=0.8, weighting=weighting, deterministic=det), differentiated)


BUILDERS: dict[str, Callable[..., Call]] = {
    "toeplitz_to_ssm": toeplitz_to_ssm,
    "ssm_kernel": ssm_kernel,
    "vandermonde_solve": vandermonde_solve,
    "ssm_scan": ssm_scan,
    "ssm_step": ssm_step,
    "ssm_prefill_state": ssm_prefill_state,
    "lsh_hash": lsh_hash,
    "memory_gather": memory_gather,
    "memory_layer": memory_layer,
}


def capture(only: Iterable[str] = ()) -> dict:
    """Run every case (or those whose label contains one of ``only``) at GPU tiles in the interpreter.

    Returns:
        ``{"launches": [...], "capture_failures": [...], "cases": n}``: the unique recorded launches (see
        :mod:`tools.sm90`) and the cases that raised (one failing case does not hide the others).
    """
    only = list(only)
    selected = [case for case in cases() if not only or any(part in case.label for part in only)]
    failures = []
    with record_launches() as recorder:
        for case in selected:
            recorder.case = case.label
            try:
                with use_tiles(case_tiles(case, GPU_TILES)):
                    evaluate(build(case), triton_op(case.grid.op), torch.clone)
            except Exception as exc:
                failures.append({"case": case.label, "traceback": traceback.format_exc(),
                                 "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
    return {"launches": recorder.launches, "capture_failures": failures, "cases": len(selected)}
