"""Timing, the two floors, and the long-format results file shared by every bench module.

On a GPU each point is timed with CUDA events through ``triton.testing.do_bench`` (median and the 20th / 80th
percentiles) after warm-up; on a CPU (``--quick``) a wall-clock timer stands in, so the pipeline is exercised
but the numbers mean nothing. The floors are measured once per run on the machine itself: the device copy
bandwidth (bytes read + written per second) and the fp32 matrix-product rate.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from etsc_triton.demo.devices import device_slug

L2_ROTATION_BYTES = 64 << 20  # more than the H100's 50 MB L2
MAX_COPIES = 16

COLUMNS = ["op", "provider", "mode", "metric", "unit", "x_name", "x_value", "p50", "p20", "p80", "floor", "config",
           "gpu", "torch", "triton", "commit", "time"]


def git_commit() -> str:
    """The short hash of the checkout's HEAD, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Floors:
    """Measured ceilings of the machine: copy bandwidth (GB/s, read + write, device memory), fp32 FMA rate
    (TFLOP/s) and the L2-resident copy bandwidth (GB/s, read + write; NaN when not measured)."""

    copy_gbps: float
    fp32_tflops: float
    l2_gbps: float = float("nan")

    def time_ms(self, nbytes: float | None, flops: float | None, l2_bytes: float | None = None) -> float | None:
        """The floor in ms for moving ``nbytes`` through device memory, ``l2_bytes`` through L2 (data re-read
        from the cache, e.g. gathered table rows) and doing ``flops``: the largest of the three times."""
        per_second = ((nbytes, self.copy_gbps * 1e9), (l2_bytes, self.l2_gbps * 1e9), (flops, self.fp32_tflops * 1e12))
        times = [amount / rate * 1e3 for amount, rate in per_second if amount and math.isfinite(rate)]
        return max(times) if times else None


L2_PROBE_BYTES = 8 << 20  # source and destination together 16 MB: resident in the H100's 50 MB L2
L2_PROBE_REPEATS = 200


def measure_l2_copy_gbps(device: str) -> float:
    """Read + write bandwidth of a copy whose source and destination stay in L2 (no flush between copies,
    unlike ``do_bench``): the ceiling for data a kernel re-reads from the cache. Median of 5 timed batches."""
    src = torch.randn(L2_PROBE_BYTES // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(20):
        dst.copy_(src)
    samples = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(L2_PROBE_REPEATS):
            dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(2 * L2_PROBE_BYTES * L2_PROBE_REPEATS / (start.elapsed_time(end) * 1e-3) / 1e9)
    return statistics.median(samples)


def measure_floors(device: str) -> Floors:
    """Measure copy bandwidth with a large device-to-device copy, the fp32 rate with a large SGEMM and the L2
    bandwidth with a small repeated copy. On a CPU: a 16 MB ``copy_`` and a 256^3 matmul by wall clock, stand-ins
    from which the pipeline computes fractions the same way (they are not claims about anything)."""
    if device != "cuda":
        src, a = torch.randn(4 << 20), torch.randn(256, 256)
        dst = torch.empty_like(src)
        copy_ms, matmul_ms = (min(wall_times_ms(fn, reps=5)) for fn in (lambda: dst.copy_(src), lambda: a @ a))
        return Floors(copy_gbps=2 * src.numel() * 4 / copy_ms / 1e6, fp32_tflops=2 * 256**3 / matmul_ms / 1e9)
    import triton.testing

    n_bytes = 1 << 30
    buffers = [torch.empty(n_bytes // 4, device=device, dtype=torch.float32).normal_() for _ in range(2)]
    ms = triton.testing.do_bench(lambda: buffers[1].copy_(buffers[0]), warmup=50, rep=300, return_mode="median")
    copy_gbps = 2 * n_bytes / (ms * 1e-3) / 1e9
    buffers.clear()
    size = 8192
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return Floors(copy_gbps=copy_gbps, fp32_tflops=2 * size**3 / (ms * 1e-3) / 1e12,
                  l2_gbps=measure_l2_copy_gbps(device))


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 on the CPU; inf for a shape mismatch or a NaN that
    ``expected`` has not (an overflow, an unwritten output); integer tensors: 0 when equal, inf otherwise."""
    if not (expected.is_floating_point() or expected.is_complex()):
        return 0.0 if torch.equal(actual.cpu().to(expected.dtype), expected) else math.inf
    wide = torch.complex128 if expected.is_complex() or actual.is_complex() else torch.float64
    a, e = actual.detach().to("cpu", wide), expected.detach().to("cpu", wide)
    if a.shape != e.shape or (torch.isnan(a).any() and not torch.isnan(e).any()):
        return math.inf
    denom = torch.linalg.vector_norm(e).item()
    return torch.linalg.vector_norm(a - e).item() / (denom if denom > 0 else 1.0)


def random_ssm(channels: int, modes: int, device: str, *, min_radius: float = 0.5, seed: int = 0):
    """Stable random diagonal SSM parameters ``(lam, b)``, complex64 ``[D, N]``: ``min_radius <= |lam| < 1``,
    uniform phases, ``b ~ CN(0, 1/N)``. Their values do not change the timings, only the accuracy figures."""
    gen = torch.Generator().manual_seed(seed)
    radius = min_radius + (1 - min_radius) * torch.rand(channels, modes, generator=gen)
    angle = 2 * math.pi * torch.rand(channels, modes, generator=gen)
    lam = torch.polar(radius.clamp_max(1 - 1e-6), angle).to(torch.complex64)
    b = torch.randn(channels, modes, generator=gen, dtype=torch.complex64) / math.sqrt(modes)
    return lam.to(device), b.to(device)


def capture_cuda_graph(fn: Callable[[], object]) -> Callable[[], None]:
    """Record ``fn`` (one decode-sized call) in a CUDA graph and return its ``replay``: what a decode server
    runs, with no host work per call. ``fn`` runs twice first on a side stream (Triton compiles there, outside
    the capture); outputs it allocates live in the graph's private pool."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def wall_times_ms(fn: Callable[[], object], reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock ms of ``reps`` calls of ``fn`` after ``warmup`` calls (the CPU's timer)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def gradients(fn: Callable[..., object], inputs: Sequence[torch.Tensor], grad_output: torch.Tensor):
    """Forward and backward: the gradients of ``<fn(*inputs), grad_output>`` with respect to fresh leaf copies of
    ``inputs`` (of the first output when ``fn`` returns a tuple)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return torch.autograd.grad(out[0] if isinstance(out, tuple) else out, leaves, grad_output)


class BudgetExhausted(Exception):
    """Raised by :meth:`Context.time` once the run's time budget is spent: the family stops there, the rows
    recorded so far are kept."""


FATAL_MARKERS = ("CUDA error", "illegal memory access", "device-side assert", "unspecified launch failure")


def is_fatal(error: BaseException) -> bool:
    """True for errors after which the CUDA context is unusable (every later launch fails too): these stop the
    run instead of being recorded as one failed point."""
    return any(marker in str(error) for marker in FATAL_MARKERS)


@dataclass
class Context:
    """What a bench module's ``run(ctx)`` receives; see perf/README.md.

    ``deadline`` (a ``time.monotonic()`` value, or None) is the run's time budget: a point that would start
    after it raises :class:`BudgetExhausted` instead (``python -m perf --budget SECONDS``), so a remote command
    with a hard time limit still brings back its results and plots.

    A point whose call raises (out of memory, a compile error, a provider torch refuses) is recorded as a
    ``failed`` row and listed in ``failures``; the sweep goes on. Errors that leave the CUDA context unusable
    (:func:`is_fatal`) are raised.
    """

    device: str
    quick: bool
    floors: Floors
    rows: list[dict] = field(default_factory=list)
    family: str = ""
    progress: Callable[[str], None] = lambda msg: None
    deadline: float | None = None
    failures: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._meta = {"gpu": device_slug(self.device), "torch": torch.__version__,
                      "triton": __import__("triton").__version__, "commit": git_commit(),
                      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"

    def copies(self, nbytes: float) -> int:
        """How many input sets to rotate over (``args=``) so that one pass over them leaves the L2 cache.

        1 on a CPU. On a GPU ``ceil(L2_ROTATION_BYTES / nbytes)``, at most ``MAX_COPIES``: inputs that fit in
        L2 would otherwise be timed from the cache.
        """
        if not self.on_gpu:
            return 1
        return int(min(MAX_COPIES, max(1, math.ceil(L2_ROTATION_BYTES / max(nbytes, 1)))))

    def sizes(self, *, quick: Sequence, full: Sequence) -> Sequence:
        """The sweep for this run: ``quick`` values under ``--quick``, else ``full``."""
        return quick if self.quick else full

    def _row(self, op, provider, mode, metric, unit, x_name, x_value, p50, p20, p80, floor, config) -> dict:
        row = dict(op=op, provider=provider, mode=mode, metric=metric, unit=unit, x_name=x_name, x_value=x_value,
                   p50=p50, p20=p20, p80=p80, floor=floor, config=json.dumps(config or {}, sort_keys=True),
                   **self._meta)
        self.rows.append(row)
        return row

    def time(self, *, op: str, provider: str, x_name: str, x_value: float, fn: Callable,
             args: Sequence[tuple] | None = None, config: dict | None = None, mode: str = "fwd",
             bytes: float | None = None, flops: float | None = None, l2_bytes: float | None = None) -> float:
        """Time ``fn`` (median ms, rotating over ``args`` if given) and record it; returns the median (NaN when
        the call raised: the point is then recorded as ``failed``, see the class docstring).

        With ``bytes`` the achieved bandwidth (GB/s) is recorded too, with ``flops`` the achieved rate
        (TFLOP/s), with ``l2_bytes`` (bytes re-read from L2) the achieved L2 bandwidth; the time floor
        ``max(bytes / copy bandwidth, l2_bytes / L2 bandwidth, flops / FMA rate)`` goes in ``floor``.
        """
        inputs = itertools.cycle(args or [()])
        call = (lambda: fn(*next(inputs))) if args else fn
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExhausted(f"{self.family}: budget spent before {op} {provider} {x_name}={x_value}")
        self.progress(f"{self.family}: {op} {provider} {x_name}={x_value} {config or ''}")
        try:
            p20, p50, p80 = self._measure(call)
        except Exception as error:  # noqa: BLE001 - recorded, reported at the end of the run
            if is_fatal(error):
                raise
            self.record_failure(op, provider, mode, x_name, x_value, config, error)
            return math.nan
        floor_ms = self.floors.time_ms(bytes, flops, l2_bytes)
        self._row(op, provider, mode, "time", "ms", x_name, x_value, p50, p20, p80, floor_ms, config)
        for metric, unit, amount, scale, ceiling in (
                ("bandwidth", "GB/s", bytes, 1e9, self.floors.copy_gbps),
                ("l2_bandwidth", "GB/s", l2_bytes, 1e9, self.floors.l2_gbps),
                ("rate", "TFLOP/s", flops, 1e12, self.floors.fp32_tflops)):
            if amount:  # p50, p20, p80 of the rate: the slow end of the time is the low end of the rate
                rates = [amount / (t * 1e-3) / scale for t in (p50, p80, p20)]
                self._row(op, provider, mode, metric, unit, x_name, x_value, *rates, ceiling, config)
        return p50

    def _measure(self, call: Callable[[], object]) -> tuple[float, float, float]:
        """(p20, p50, p80) in ms: CUDA events through ``do_bench`` on a GPU, a wall clock on a CPU."""
        if self.on_gpu:
            import triton.testing

            return tuple(triton.testing.do_bench(call, warmup=25, rep=100, quantiles=[0.2, 0.5, 0.8]))
        times = wall_times_ms(call, reps=3)
        return min(times), statistics.median(times), max(times)

    def record_failure(self, op, provider, mode, x_name, x_value, config, error: BaseException) -> None:
        """A ``failed`` row (the error's first line in ``config["error"]``) and a line in ``failures``."""
        lines = str(error).strip().splitlines()
        message = f"{type(error).__name__}: {lines[0] if lines else ''}"
        if isinstance(error, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        self._row(op, provider, mode, "failed", "", x_name, x_value, None, None, None, None,
                  {**(config or {}), "error": message[:300]})
        self.failures.append(f"{self.family}: {op} {provider} {mode} {x_name}={x_value} {config or ''}: "
                             f"{message[:300]}")

    def value(self, *, op: str, provider: str, metric: str, value: float, x_name: str, x_value: float,
              unit: str = "", config: dict | None = None, mode: str = "fwd") -> None:
        """Record a measured value that is not a time (an error, a memory size, a per-token latency...)."""
        self._row(op, provider, mode, metric, unit, x_name, x_value, value, value, value, None, config)


def run_family(ctx: Context, family: str, run: Callable[[Context], object]) -> str:
    """Run one family's points (``run(ctx)``, as ``ctx.family``): returns ``""`` when it finished, else why it
    stopped, ``"cut at the cap: ..."`` (the budget) or the error (errors that leave the CUDA context unusable are
    raised: nothing after them could run)."""
    ctx.family = family
    try:
        run(ctx)
        return ""
    except BudgetExhausted as stop:
        return f"cut at the cap: {stop}"
    except Exception as error:  # noqa: BLE001 - reported; the next family still runs
        if is_fatal(error):
            raise
        traceback.print_exc()
        return f"{family} stopped by {type(error).__name__}: {str(error).strip()[:300]}"


def write_results(rows: list[dict], path: Path) -> None:
    """Write the long-format results (one row per op / provider / metric / point) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in COLUMNS})


def read_results(path: Path) -> list[dict]:
    """Read a results CSV back; numeric columns become floats (empty -> None)."""
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            for key in ("x_value", "p50", "p20", "p80", "floor"):
                row[key] = float(row[key]) if row[key] not in ("", "None") else None
            rows.append(row)
    return rows


def progress_printer(budget_s: float | None = None) -> Callable[[str], None]:
    """A one-line progress display on stderr: ``[  12 |   35 s] family: op provider x=...``; with a time budget
    (``--budget``) the elapsed time reads against it, ``[  12 |   35/200 s]``, which is where a budgeted sweep
    is (the number of points a sweep will reach is not known before it runs)."""
    points = itertools.count(1)
    start = time.perf_counter()
    of_budget = f"/{budget_s:.0f}" if budget_s is not None else ""
    end = "\r" if sys.stderr.isatty() else "\n"

    def show(message: str) -> None:
        elapsed = time.perf_counter() - start
        sys.stderr.write(f"[{next(points):4d} | {elapsed:5.0f}{of_budget} s] {message[:100]:<100}{end}")
        sys.stderr.flush()

    return show
