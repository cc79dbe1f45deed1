"""The op calls whose kernel launches the compile report captures: one table row per op and grid of options.

Each :class:`CaseGrid` names an op, the axes of its grid (every combination runs; a tuple of names takes its
values together) and the tile policy fields it changes from ``GPU_TILES``. One short runner per op turns a point
of the grid into small CPU inputs and calls the op with ``backend="triton"`` (through the backward too where
the point asks for gradients). The sizes are small so the interpreter runs them quickly, yet chosen to reach
every launch-shape decision: ``sm_count()`` is 2 for CPU tensors, so a few rows already split or chunk.
"""

from __future__ import annotations

import dataclasses
import itertools
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import torch

import etsc_triton as et
from etsc_triton.ops.tiles import GPU_TILES, use_tiles

from .sm90 import record_launches


class CaseGrid(NamedTuple):
    """``op``: a runner name of :data:`RUNNERS`; ``axes``: ``{name or (names...): values}``; ``tiles``: tile
    policy fields changed from ``GPU_TILES``."""

    op: str
    axes: dict
    tiles: dict = {}


FP = ("fp32", "bf16")
SHORT_CHUNKS = {"scan_min_chunk_tokens": 4}  # chunks from 4 tokens on: the chunked scan on 12 tokens

CASES = [
    # 2048: aligned rows and a mode count divisible by 16 (the usual case); 2100 > the solve's 1024-node cap.
    CaseGrid("toeplitz_to_ssm", {"n": (63, 2048, 2100), "real": (True, False), "compensate": (True, False),
                                 "gamma": (None, 0.99, "tensor")}),
    # short / long kernels, few / many modes; 64-anchor programs need rows >= 2 x the SMs (2 here).
    CaseGrid("ssm_kernel", {("length", "modes", "rows"): ((63, 16, 2), (63, 33, 2), (700, 16, 2), (700, 33, 2),
                                                          (2048, 16, 2), (2048, 33, 2), (4096, 64, 4))}),
    # the backward at every forward size (the GPU proof differentiates them all) and three more
    CaseGrid("ssm_kernel", {("length", "modes", "rows"): ((63, 16, 2), (63, 33, 2), (700, 16, 2), (700, 33, 2),
                                                          (2048, 16, 2), (2048, 33, 2), (4096, 64, 4), (200, 16, 2),
                                                          (4096, 64, 2), (63, 40, 2)),
                            "backward": (True,)}),
    CaseGrid("vandermonde_solve", {"size": (33, 1030), "complex_rhs": (False, True)}),
    # N <= 512 and the split-modes path N > 512; (64, 64) and (64, 16) are aligned, realistic shapes.
    CaseGrid("ssm_scan", {("channels", "modes"): ((5, 33), (64, 16), (64, 64), (3, 600)), "dtype": FP,
                          "state": (False, True)}),
    CaseGrid("ssm_scan", {("channels", "modes"): ((5, 33), (64, 16), (64, 64), (3, 600)), "dtype": FP,
                          "state": (False, True), "backward": (True,)}),
    CaseGrid("ssm_scan", {("channels", "modes"): ((5, 33), (64, 64), (3, 600)), "dtype": FP,
                          "state": (False, True), "tokens": (12,), "batch": (1,)}, SHORT_CHUNKS),
    CaseGrid("ssm_scan", {("channels", "modes"): ((5, 33), (64, 64), (3, 600)), "dtype": FP,
                          "state": (False, True), "tokens": (12,), "batch": (1,), "backward": (True,)},
             SHORT_CHUNKS),
    CaseGrid("ssm_step", {("channels", "modes"): ((5, 33), (64, 16), (64, 256), (3, 600)), "dtype": FP,
                          "indexed": (False, True)}),
    CaseGrid("ssm_prefill_state", {"dtype": FP, "gamma": (None, 0.99, "tensor")}),
    CaseGrid("lsh_hash", {"tau": (3, 8, 16), "weighting": ("paper", "magnitude"), "dtype": FP}),
    # one token (the K-split path) and 64; int32 codes with a bias, int64 codes without.
    CaseGrid("memory_gather", {"tokens": (1, 64), "dtype": FP, "det": (False, True),
                               ("codes", "bias"): (("int32", True), ("int64", False))}),
    CaseGrid("memory_layer", {"tokens": (1, 64), "dtype": FP, "det": (False,), "grads": ("none",),
                              "weighting": ("paper", "magnitude")}),
    CaseGrid("memory_layer", {"tokens": (1, 64), "dtype": FP, "det": (False, True),
                              "grads": ("x+tables", "x", "tables"), "weighting": ("paper", "magnitude")}),
    # a production-like tau (8, S=256) and a narrow d_out.
    CaseGrid("memory_layer", {"dtype": FP, "tau": (8,), "d_out": (48,), "tokens": (16,), "grads": ("x+tables",),
                              "bias": (False,)}),
]


def points(grid: CaseGrid) -> Iterator[dict]:
    """Every combination of ``grid.axes`` as ``{name: value}``."""
    names = list(grid.axes)
    for values in itertools.product(*grid.axes.values()):
        point = {}
        for name, value in zip(names, values):
            point.update(zip(name, value) if isinstance(name, tuple) else [(name, value)])
        yield point


def label(op: str, point: dict) -> str:
    """``"ssm_scan channels=5 modes=33 dtype=fp32 state=False"``: the name a case goes by in the reports."""
    return " ".join([op, *(f"{name}={value}" for name, value in point.items())])


# ----------------------------------------------------------------------------------------------- runners

TRITON = {"backend": "triton"}


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64}[name]


def _randc(*shape):
    return torch.randn(*shape, dtype=torch.complex64)


def _nodes(rows: int, modes: int, radius: float = 0.95):
    return (radius * torch.exp(2j * torch.pi * torch.rand(rows, modes))).to(torch.complex64)


def _gamma(gamma, rows: int):
    return torch.full((rows,), 0.98) if gamma == "tensor" else gamma


def run_toeplitz_to_ssm(n: int, real: bool, compensate: bool, gamma, rows: int = 3) -> None:
    et.toeplitz_to_ssm(torch.randn(rows, n), _gamma(gamma, rows), real=real, compensate=compensate, **TRITON)


def run_ssm_kernel(length: int, modes: int, rows: int, backward: bool = False) -> None:
    lam, b = _nodes(rows, modes).requires_grad_(backward), _randc(rows, modes).requires_grad_(backward)
    k = et.ssm_kernel(lam, b, length, **TRITON)
    if backward:
        k.sum().backward()


def run_vandermonde_solve(size: int, complex_rhs: bool) -> None:
    lam = torch.exp(-2j * torch.pi * torch.arange(1, size + 1) / (size + 1)).to(torch.complex64)
    t = _randc(size) if complex_rhs else torch.randn(size)
    et.vandermonde_solve(lam[None], t[None], **TRITON)


def run_ssm_scan(channels: int, modes: int, dtype: str, state: bool, tokens: int = 7, batch: int = 2,
                 backward: bool = False) -> None:
    x = torch.randn(batch, tokens, channels).to(_dtype(dtype)).requires_grad_(backward)
    lam = _nodes(channels, modes).requires_grad_(backward)
    h0 = _randc(batch, channels, modes).requires_grad_(backward) if state else None
    y, final = et.ssm_scan(x, lam, _randc(channels, modes), h0, **TRITON)
    if backward:
        (y.float().sum() + final.abs().sum()).backward()


def run_ssm_step(channels: int, modes: int, dtype: str, indexed: bool) -> None:
    x = torch.randn(2, channels).to(_dtype(dtype))
    pool = _randc(3 if indexed else 2, channels, modes)
    indices = torch.tensor([2, -1], dtype=torch.int32) if indexed else None
    et.ssm_step(x, _nodes(channels, modes), _randc(channels, modes), pool, state_indices=indices, **TRITON)


def run_ssm_prefill_state(dtype: str, gamma, n: int = 31, channels: int = 64) -> None:
    _, b = et.toeplitz_to_ssm(torch.randn(channels, n), backend="torch")
    prompt = torch.randn(2, 40, channels).to(_dtype(dtype))
    et.ssm_prefill_state(prompt, b, n, _gamma(gamma, channels), **TRITON)


def run_lsh_hash(tau: int, weighting: str, dtype: str) -> None:
    z = torch.randn(2, 5, 3, tau).to(_dtype(dtype)).requires_grad_(True)
    _, scores = et.lsh_hash(z, temperature=0.7, weighting=weighting, **TRITON)
    scores.sum().backward()


def run_memory_gather(tokens: int, dtype: str, det: bool, codes: str, bias: bool, tables: int = 2, tau: int = 4,
                      d_out: int = 256) -> None:
    rows = 2 ** tau
    code_values = torch.randint(0, rows, (tokens, tables), dtype=_dtype(codes))
    scores = torch.rand(tokens, tables, requires_grad=True)
    table_values = (0.1 * torch.randn(tables, rows, d_out)).to(_dtype(dtype)).requires_grad_(True)
    bias_values = torch.randn(d_out).to(_dtype(dtype)).requires_grad_(True) if bias else None
    y = et.memory_gather(code_values, scores, table_values, bias_values, deterministic=det, **TRITON)
    y.float().sum().backward()


def run_memory_layer(tokens: int, dtype: str, grads: str, weighting: str = "paper", det: bool = False,
                     bias: bool = True, tables: int = 2, tau: int = 4, d_out: int = 256) -> None:
    x = torch.randn(tokens, tables * tau).to(_dtype(dtype)).requires_grad_("x" in grads)
    table_values = (0.1 * torch.randn(tables, 2 ** tau, d_out)).to(_dtype(dtype)).requires_grad_("tables" in grads)
    bias_values = torch.randn(d_out).to(_dtype(dtype)) if bias else None
    y = et.memory_layer(x, table_values, bias_values, temperature=0.8, weighting=weighting, deterministic=det, **TRITON)
    if grads != "none":
        y.float().sum().backward()


RUNNERS: dict[str, Callable[..., None]] = {
    "toeplitz_to_ssm": run_toeplitz_to_ssm,
    "ssm_kernel": run_ssm_kernel,
    "vandermonde_solve": run_vandermonde_solve,
    "ssm_scan": run_ssm_scan,
    "ssm_step": run_ssm_step,
    "ssm_prefill_state": run_ssm_prefill_state,
    "lsh_hash": run_lsh_hash,
    "memory_gather": run_memory_gather,
    "memory_layer": run_memory_layer,
}


# ----------------------------------------------------------------------------------------------- capture


def capture(grids: Iterable[CaseGrid] = CASES, only: Iterable[str] = ()) -> dict:
    """Run every case (or those whose label contains one of ``only``) at GPU tiles in the interpreter.

    Returns:
        ``{"launches": [...], "capture_failures": [...], "cases": n}``: the unique recorded launches (see
        :mod:`tools.sm90`) and the cases that raised (one failing case does not hide the others).
    """
    torch.manual_seed(0)
    only = list(only)
    failures, count = [], 0
    with record_launches() as recorder:
        for grid in grids:
            policy = dataclasses.replace(GPU_TILES, **grid.tiles)
            for point in points(grid):
                recorder.case = label(grid.op, point)
                if only and not any(part in recorder.case for part in only):
                    continue
                count += 1
                try:
                    with use_tiles(policy):
                        RUNNERS[grid.op](**point)
                except Exception as exc:
                    failures.append({"case": recorder.case, "traceback": traceback.format_exc(),
                                     "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
    return {"launches": recorder.launches, "capture_failures": failures, "cases": count}
