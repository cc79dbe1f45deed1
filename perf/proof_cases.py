"""Every kernel configuration once, at a small size, against its Torch oracle (forward and backward).

The proof's second stage (``python -m perf.proof``). Each case calls one public op with ``backend="triton"`` on
the device and its oracle (``etsc_triton.reference``) on the CPU in float64 / complex128 from the same inputs,
then differentiates ``sum(w * outputs)`` (``w`` fixed random weights) through both and compares every output
and every gradient by relative 2-norm error. The shapes and options are the ones the offline compile report
captures (``tools/cases.py``: small and large mode counts, aligned and odd sizes, fp32 and bf16,
optional state / indices / bias, deterministic or not, the chunked scan and the K-split memory layer), so every
kernel configuration the launchers pick on a GPU is compiled and run here once before anything is timed.

Two launch choices are pinned while the cases run, through the tile policy (``etsc_triton.ops.tiles``), as in
that capture: the launchers assume 2 SMs (``assumed_sms``: the chunked scan, the split-K memory layer and the
64-anchor Vandermonde programs are then reached at small sizes) and the scan chunks from 8 tokens on
(``scan_min_chunk_tokens=4``) in the cases named ``chunked``.

Tolerances (relative 2-norm error against float64, each with its measured worst case below): fp32 outputs
``FP32_TOL``, fp32 gradients ``FP32_GRAD_TOL``, bf16 ``BF16_TOL`` / ``BF16_GRAD_TOL``. On a GPU an fp32
``tl.dot`` runs in tf32 unless told otherwise: the only one (``ssm_kernel``, forward and backward) asks for
``input_precision="ieee"``, and ``KERNEL_TOL`` is set so that a tf32 product (about 1e-4 to 1e-3 relative) fails
on purpose. The oracle runs on the CPU, so no tf32 enters the reference.

    python -m perf.proof_cases --shard 0/4 --out part0.json   # what the proof runs, one process per shard
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from etsc_triton.ops.tiles import TilePolicy, current_tiles, use_tiles

FP32_TOL = 1e-5  # fp32 outputs: measured <= 1.8e-6 in the interpreter (vandermonde_solve N=20); GPU sum orders
FP32_GRAD_TOL = 1e-4  # fp32 gradients (reverse walks, atomic scatter-adds in any order): measured <= 6.6e-7
KERNEL_TOL = 1e-5  # ssm_kernel forward and backward (measured <= 1.6e-7): a tf32 tl.dot (~1e-4..1e-3) fails it
VANDERMONDE_TOL = 1e-3  # fp32 recurrences, error ~ N ulps: measured 2.3e-4 at N = 1030 (GPU blocks)
BF16_TOL = 2e-2  # bf16 outputs rounded once (2^-8; a full 2^-7 ulp in the interpreter): measured <= 4.5e-3
BF16_GRAD_TOL = 6e-2  # gradients fed by the bf16-rounded output gradient, summed with cancellation: <= 2.3e-2


@dataclass
class Case:
    """One launch configuration: ``op`` with ``args`` / ``kwargs`` (CPU tensors), gradients for the args
    named in ``grads`` (indices), ``outputs_of`` picks the compared outputs from the op's return (and the
    mutated args, for ssm_step)."""

    label: str
    op: str
    args: list
    kwargs: dict = field(default_factory=dict)
    grads: tuple[int, ...] = ()
    tol: float = FP32_TOL
    grad_tol: float = FP32_GRAD_TOL
    chunked: bool = False
    outputs_of: Callable | None = None


def _complex(gen, *shape, scale=1.0):
    return (scale * torch.randn(*shape, 2, generator=gen)).view(torch.complex64).reshape(shape) / math.sqrt(2)


def _nodes(gen, d, n, radius=0.95):
    """Stable nodes: ``|lam| = radius``, random phases, complex64 ``[d, n]``."""
    angles = 2 * math.pi * torch.rand(d, n, generator=gen)
    return torch.polar(torch.full((d, n), radius), angles).to(torch.complex64)


def _grad_tol(tol: float) -> float:
    return BF16_GRAD_TOL if tol == BF16_TOL else FP32_GRAD_TOL


def _step_outputs(result, args):
    return (result, args[3])


def _realised_outputs(result, args):
    """lam and the realised kernel ``K_j = Re sum_s b_s lam_s^j`` (float64, ``j < n``) instead of b: the
    compensated b absorbs the complex64 rounding of lam, so it differs from the exact-node oracle's by design
    (measured 2.8e-5 at n = 2100) while the kernel it realises does not."""
    from etsc_triton.reference import realised_kernel64

    lam, b = result
    return (lam, realised_kernel64(lam.detach().cpu(), b.detach().cpu(), args[0].shape[-1]))


def build_cases(dry_run: bool) -> list[Case]:
    """The case list; ``dry_run`` shrinks the few long sizes (the interpreter on a CPU runs them) and keeps every
    combination of options, so a typo in any case shows up in the dry run."""
    gen = torch.Generator().manual_seed(0)
    cases: list[Case] = []

    # toeplitz_to_ssm: odd / aligned / non-aligned n; real or complex modes, compensated or not, gamma kinds.
    for n in (63, 64, 70) if dry_run else (63, 2048, 2100):
        for real in (True, False):
            for compensate in (True, False):
                for gamma in (None, 0.99, "tensor"):
                    t = torch.randn(3, n, generator=gen)
                    g = torch.full((3,), 0.98) if gamma == "tensor" else gamma
                    cases.append(Case(f"toeplitz_to_ssm n={n} real={real} compensate={compensate} gamma={gamma}",
                                      "toeplitz_to_ssm", [t, g], dict(real=real, compensate=compensate),
                                      outputs_of=_realised_outputs if compensate else None))

    # ssm_kernel forward and backward: short / long kernels, few / many modes (block choices depend on L, N).
    kernel_sizes = ((63, 16, 2), (63, 33, 2), (130, 16, 2), (130, 33, 2)) if dry_run else \
        ((63, 16, 2), (63, 33, 2), (700, 16, 2), (700, 33, 2), (2048, 16, 2), (2048, 33, 2), (4096, 64, 4),
         (4096, 64, 2), (200, 16, 2), (63, 40, 2))
    for length, modes, rows in kernel_sizes:
        cases.append(Case(f"ssm_kernel L={length} N={modes} rows={rows}", "ssm_kernel",
                          [_nodes(gen, rows, modes), _complex(gen, rows, modes), length], grads=(0, 1),
                          tol=KERNEL_TOL, grad_tol=KERNEL_TOL))

    # vandermonde_solve: one block and the block cap; real and complex right-hand sides.
    for size in (9, 20) if dry_run else (33, 1030):
        for complex_rhs in (False, True):
            lam = torch.exp(-2j * math.pi * torch.arange(1, size + 1) / (size + 1)).to(torch.complex64)[None]
            t = _complex(gen, 1, size) if complex_rhs else torch.randn(1, size, generator=gen)
            cases.append(Case(f"vandermonde_solve N={size} complex_rhs={complex_rhs}", "vandermonde_solve",
                              [lam, t], tol=VANDERMONDE_TOL))

    # ssm_scan forward + backward: N <= 512 and the split-modes path N > 512, with / without state, fp32 / bf16
    # x, sequential and chunked.
    for chunked in (False, True):
        for channels, modes in ((5, 33), (8, 16), (8, 40), (3, 70)) if dry_run else \
                ((5, 33), (64, 16), (64, 64), (3, 600)):
            if chunked and modes == 16:
                continue
            for dtype in (torch.float32, torch.bfloat16):
                for with_state in (False, True):
                    batch, length = (1, 12) if chunked else (2, 7)
                    x = torch.randn(batch, length, channels, generator=gen).to(dtype)
                    state = _complex(gen, batch, channels, modes) if with_state else None
                    tol = BF16_TOL if dtype == torch.bfloat16 else FP32_TOL
                    grads = (0, 1, 2, 3) if with_state else (0, 1, 2)
                    cases.append(Case(
                        f"ssm_scan{' chunked' if chunked else ''} D={channels} N={modes} {str(dtype)[6:]} "
                        f"state={with_state}", "ssm_scan",
                        [x, _nodes(gen, channels, modes), _complex(gen, channels, modes), state], grads=grads,
                        tol=tol, grad_tol=_grad_tol(tol), chunked=chunked))

    # ssm_step (forward only, in place): with / without state_indices, fp32 / bf16 x, small and split modes.
    for channels, modes in ((5, 33), (8, 16), (8, 40), (3, 70)) if dry_run else \
            ((5, 33), (64, 16), (64, 256), (3, 600)):
        for dtype in (torch.float32, torch.bfloat16):
            for indexed in (False, True):
                pool = 3 if indexed else 2
                idx = torch.tensor([2, -1], dtype=torch.int32) if indexed else None
                cases.append(Case(
                    f"ssm_step D={channels} N={modes} {str(dtype)[6:]} indices={indexed}", "ssm_step",
                    [torch.randn(2, channels, generator=gen).to(dtype), _nodes(gen, channels, modes),
                     _complex(gen, channels, modes), _complex(gen, pool, channels, modes)],
                    dict(state_indices=idx), tol=BF16_TOL if dtype == torch.bfloat16 else FP32_TOL,
                    outputs_of=_step_outputs))

    # ssm_prefill_state: fp32 / bf16 prompt, scalar / tensor gamma.
    for dtype in (torch.float32, torch.bfloat16):
        for gamma in (None, 0.99, "tensor"):
            n, channels = 31, 8 if dry_run else 64
            b = _complex(gen, channels, (n + 1) // 2)
            g = torch.full((channels,), 0.98) if gamma == "tensor" else gamma
            cases.append(Case(f"ssm_prefill_state {str(dtype)[6:]} gamma={gamma}", "ssm_prefill_state",
                              [torch.randn(2, 40, channels, generator=gen).to(dtype), b, n, g],
                              tol=BF16_TOL if dtype == torch.bfloat16 else FP32_TOL))

    # lsh_hash forward + backward: tau 3 / 8 / 16, both weightings, fp32 / bf16 z.
    for tau in (3, 8, 16):
        for weighting in ("paper", "magnitude"):
            for dtype in (torch.float32, torch.bfloat16):
                tol = BF16_TOL if dtype == torch.bfloat16 else FP32_TOL
                cases.append(Case(f"lsh_hash tau={tau} {weighting} {str(dtype)[6:]}", "lsh_hash",
                                  [torch.randn(2, 5, 3, tau, generator=gen).to(dtype)],
                                  dict(temperature=0.7, weighting=weighting), grads=(0,), tol=tol,
                                  grad_tol=_grad_tol(tol)))

    # memory_gather forward + backward: one token (K-split) and 64, fp32 / bf16 tables, deterministic or not,
    # int32 codes with bias / int64 codes without.
    num_tables, tau, d_out = 2, 4, 32 if dry_run else 256
    rows = 2**tau
    for tokens in (1, 64):
        for table_dtype in (torch.float32, torch.bfloat16):
            for deterministic in (False, True):
                for code_dtype, with_bias in ((torch.int32, True), (torch.int64, False)):
                    tol = BF16_TOL if table_dtype == torch.bfloat16 else FP32_TOL
                    codes = torch.randint(0, rows, (tokens, num_tables), generator=gen, dtype=code_dtype)
                    tables = (0.1 * torch.randn(num_tables, rows, d_out, generator=gen)).to(table_dtype)
                    bias = torch.randn(d_out, generator=gen).to(table_dtype) if with_bias else None
                    cases.append(Case(
                        f"memory_gather T={tokens} {str(table_dtype)[6:]} det={deterministic} "
                        f"{str(code_dtype)[6:]}", "memory_gather",
                        [codes, torch.rand(tokens, num_tables, generator=gen), tables, bias],
                        dict(deterministic=deterministic), grads=(1, 2, 3) if with_bias else (1, 2), tol=tol,
                        grad_tol=_grad_tol(tol)))

    # memory_layer: forward alone and backward through x and / or tables; both weightings; tau 4 and 8.
    for tokens in (1, 9 if dry_run else 64):
        for dtype in (torch.float32, torch.bfloat16):
            for deterministic in (False, True):
                for grads in ((), (0, 1, 2), (0,), (1,)):
                    for weighting in ("paper", "magnitude"):
                        if not grads and deterministic:
                            continue
                        tol = BF16_TOL if dtype == torch.bfloat16 else FP32_TOL
                        cases.append(Case(
                            f"memory_layer T={tokens} {str(dtype)[6:]} det={deterministic} grads={grads} {weighting}",
                            "memory_layer",
                            [torch.randn(tokens, num_tables * tau, generator=gen).to(dtype),
                             (0.1 * torch.randn(num_tables, rows, d_out, generator=gen)).to(dtype),
                             torch.randn(d_out, generator=gen).to(dtype)],
                            dict(temperature=0.8, weighting=weighting, deterministic=deterministic), grads=grads,
                            tol=tol, grad_tol=_grad_tol(tol)))
    for dtype in (torch.float32, torch.bfloat16):
        tol = BF16_TOL if dtype == torch.bfloat16 else FP32_TOL
        cases.append(Case(f"memory_layer tau=8 d_out=48 {str(dtype)[6:]}", "memory_layer",
                          [torch.randn(16 if not dry_run else 5, 16, generator=gen).to(dtype),
                           (0.1 * torch.randn(2, 256, 48, generator=gen)).to(dtype), None],
                          grads=(0, 1), tol=tol, grad_tol=_grad_tol(tol)))
    return cases


def _to64(value):
    """The oracle's copy of an input: CPU, float64 / complex128 for floating tensors, others unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_complex():
        return value.detach().to("cpu", torch.complex128)
    if value.is_floating_point():
        return value.detach().to("cpu", torch.float64)
    return value.detach().cpu()


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 on the CPU; inf when ``actual`` has NaN and
    ``expected`` not; integer tensors: 0 when equal, inf otherwise."""
    if not (expected.is_floating_point() or expected.is_complex()):
        return 0.0 if torch.equal(actual.cpu().to(expected.dtype), expected) else math.inf
    wide = torch.complex128 if expected.is_complex() or actual.is_complex() else torch.float64
    a, e = actual.detach().to("cpu", wide), expected.detach().to("cpu", wide)
    if a.shape != e.shape:
        return math.inf
    if torch.isnan(a).any() and not torch.isnan(e).any():
        return math.inf
    denom = torch.linalg.vector_norm(e).item()
    return torch.linalg.vector_norm(a - e).item() / (denom if denom > 0 else 1.0)


def _outputs(case: Case, result, args) -> tuple:
    if case.outputs_of is not None:
        return tuple(case.outputs_of(result, args))
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def _loss(outputs, weights):
    total = 0
    for out, w in zip(outputs, weights):
        if w is None:
            continue
        total = total + (torch.view_as_real(out) if out.is_complex() else out).to(w.dtype).mul(w).sum()
    return total


def run_case(case: Case, device: str, op_module, reference_module) -> dict:
    """Run one case on ``device`` and its oracle; returns ``{label, op, ok, worst, errors, error}``."""
    fast_args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in case.args]
    fast_kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.kwargs.items()}
    ref_args = [_to64(a) for a in case.args]
    ref_kwargs = {k: _to64(v) for k, v in case.kwargs.items()}
    for i in case.grads:
        fast_args[i] = fast_args[i].detach().requires_grad_()
        ref_args[i] = ref_args[i].detach().requires_grad_()
    with torch.set_grad_enabled(bool(case.grads)):
        fast = _outputs(case, getattr(op_module, case.op)(*fast_args, **fast_kwargs, backend="triton"), fast_args)
        expected = _outputs(case, getattr(reference_module, case.op)(*ref_args, **ref_kwargs), ref_args)
    errors = {}
    for index, (got, want) in enumerate(zip(fast, expected, strict=True)):
        errors[f"out{index}"] = (rel_err(got, want), case.tol)
    if case.grads:
        gen = torch.Generator().manual_seed(1)
        weights = [torch.randn((torch.view_as_real(w) if w.is_complex() else w).shape, generator=gen,
                               dtype=torch.float64)
                   if (w.is_floating_point() or w.is_complex()) and w.requires_grad else None for w in expected]
        fast_leaves = [fast_args[i] for i in case.grads]
        ref_leaves = [ref_args[i] for i in case.grads]
        got = torch.autograd.grad(_loss(fast, [None if w is None else w.to(device, torch.float32)
                                               for w in weights]), fast_leaves, allow_unused=True)
        want = torch.autograd.grad(_loss(expected, weights), ref_leaves, allow_unused=True)
        for i, g, w in zip(case.grads, got, want, strict=True):
            if w is None:
                continue
            errors[f"grad{i}"] = (math.inf, case.grad_tol) if g is None else (rel_err(g, w), case.grad_tol)
    worst = max((e / tol for e, tol in errors.values()), default=0.0)
    return {"label": case.label, "op": case.op, "ok": worst <= 1.0, "worst": worst,
            "errors": {k: e for k, (e, _) in errors.items()}, "error": ""}


def launch_choices_pinned(chunked: bool, base: TilePolicy | None = None) -> contextlib.AbstractContextManager:
    """The tile policy of the cases (``base``, default the current one): 2 SMs assumed (as in the interpreter)
    and, for ``chunked``, chunks from 8 tokens on: small shapes then reach the launchers' large-device branches."""
    policy = dataclasses.replace(base or current_tiles(), assumed_sms=2)
    if chunked:
        policy = dataclasses.replace(policy, scan_min_chunk_tokens=4)
    return use_tiles(policy)


def run_shard(shard: int, shards: int, dry_run: bool, out: Path) -> int:
    """Run cases ``shard, shard + shards, ...`` and write their results (JSON lines, one per case, flushed as
    each ends, so a killed shard keeps what it finished)."""
    import etsc_triton as et

    device = "cuda" if torch.cuda.is_available() and not dry_run else "cpu"
    cases = build_cases(dry_run)[shard::shards]
    with out.open("w") as f:
        for case in cases:
            started = time.monotonic()
            try:
                with launch_choices_pinned(case.chunked):
                    result = run_case(case, device, et, et.reference)
            except Exception as error:  # noqa: BLE001 - recorded as a failed case; the shard goes on
                lines = str(error).strip().splitlines()
                result = {"label": case.label, "op": case.op, "ok": False, "worst": math.inf, "errors": {},
                          "error": f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]}
                traceback.print_exc()
                if any(m in str(error) for m in ("illegal memory access", "device-side assert", "launch failure")):
                    f.write(json.dumps({**result, "seconds": time.monotonic() - started}) + "\n")
                    return 1  # the CUDA context is gone: every later case in this process would fail too
            f.write(json.dumps({**result, "seconds": round(time.monotonic() - started, 3)}) + "\n")
            f.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.proof_cases", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard", default="0/1", help="I/N: run every N-th case from the I-th")
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpreter, the dry run's sizes")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines results file")
    args = parser.parse_args(argv)
    shard, shards = (int(v) for v in args.shard.split("/"))
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    return run_shard(shard, shards, args.dry_run, args.out)


if __name__ == "__main__":
    sys.exit(main())
