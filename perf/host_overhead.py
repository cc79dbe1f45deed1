"""``python -m perf.host_overhead``: host (CPU) time per call of the decode-sized public functions.

A decode step moves a few MB, which the GPU does in a few microseconds; the Python between the call and the
kernel launch (validation, allocation, dispatch, Triton's launcher) can cost more than that. When the host is
slower than the GPU, CUDA-event timings (``do_bench``) measure the host, so this is measured on its own:

- on a CUDA machine: wall time per call of a loop of asynchronous calls (no synchronisation inside the loop;
  the loop is short enough that the launch queue never fills), so it includes Triton's own launcher;
- on a CPU: the same loop with ``TRITON_INTERPRET=1`` and the interpreter's kernel execution replaced by a no-op,
  so it measures everything of ours up to the launch (Triton's compiled launcher is not part of it).

Prints one row per call: median over repeats of the mean time per call, in microseconds.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

CALLS_PER_REPEAT = 200
REPEATS = 7


def _stub_interpreter() -> None:
    """On a CPU: run launchers for real but skip the interpreted kernel bodies."""
    from triton.runtime.interpreter import InterpretedFunction

    InterpretedFunction.run = lambda self, *args, **kwargs: None


def per_call_us(fn: Callable[[], object], device: str) -> float:
    """Median over REPEATS of the mean host time per call (us) of CALLS_PER_REPEAT back-to-back calls."""
    for _ in range(20):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(CALLS_PER_REPEAT):
            fn()
        samples.append((time.perf_counter() - start) / CALLS_PER_REPEAT * 1e6)
        if device == "cuda":
            torch.cuda.synchronize()
    return statistics.median(samples)


def cases(device: str) -> list[tuple[str, Callable[[], object]]]:
    """The decode-regime calls of the speed goals, at their sizes."""
    import etsc_triton as et

    lam = torch.rand(1024, 512, device=device, dtype=torch.complex64) * 0.9
    b = torch.randn(1024, 512, device=device, dtype=torch.complex64)
    state = torch.zeros(1, 1024, 512, device=device, dtype=torch.complex64)
    x = torch.randn(1, 1024, device=device)
    x_scan = torch.randn(1, 16, 1024, device=device)
    tables = 0.02 * torch.randn(128, 256, 1024, device=device)
    bias = torch.zeros(1024, device=device)
    codes = torch.randint(0, 256, (1, 128), device=device, dtype=torch.int32)
    scores = torch.rand(1, 128, device=device)
    rows = [
        ("ssm_step B=1 D=1024 N=512", lambda: et.ssm_step(x, lam, b, state, backend="triton")),
        ("ssm_scan B=1 L=16 D=1024 N=512", lambda: et.ssm_scan(x_scan, lam, b, backend="triton")),
        ("memory_layer T=1 d=1024 tau=8", lambda: et.memory_layer(x, tables, bias, backend="triton")),
        ("memory_gather T=1 K=128 d=1024", lambda: et.memory_gather(codes, scores, tables, bias, backend="triton")),
        ("torch.empty(1024) (reference point)", lambda: torch.empty(1024, device=device)),
    ]
    if device == "cuda":  # on a CPU the matmul itself runs inside the call: not a host-overhead reference
        linear = torch.nn.Linear(1024, 1024, device=device)
        rows.append(("nn.Linear 1024x1024, 1 token (reference point)", lambda: linear(x)))
    return rows


def main() -> int:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        _stub_interpreter()
    with torch.no_grad():
        rows = [(name, per_call_us(fn, device)) for name, fn in cases(device)]
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, interpreter kernels stubbed out"
    print(f"host time per call ({where}; median of {REPEATS} x {CALLS_PER_REPEAT} calls)")
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"  {name:<{width}}  {us:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
