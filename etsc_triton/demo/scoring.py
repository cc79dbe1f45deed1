"""How the application scores a model and times a decoder: bits per byte on windows, on a whole token stream,
and per-token decode latency. One copy of each, used by training, the main job and the benchmarks."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from .model import TNNLanguageModel

LN2 = math.log(2.0)
# Decode steps of these models are chains of tiny ops: on two threads each op waits for the other core, and beside
# other work that wait dominates (a 3 ms ETSC step measured 100 ms next to a CPU hog, 3.2 ms on one thread).
DECODE_THREADS = 1
# The main job's other sections are small too (the reduction's float64 fits: one layer of the demo model took 49 s
# on two threads of a loaded 2-core machine, 1.1 s on one): the job runs on one thread unless told otherwise.
JOB_THREADS = 1


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block on ``count`` torch CPU threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a host timer sees the work it times."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def bits_per_byte(model: TNNLanguageModel, windows: torch.Tensor, length: int | None = None,
                  kernels: list[torch.Tensor] | None = None, batch: int = 8) -> float:
    """Mean next-byte cross-entropy in bits over ``windows [W, M + 1]`` cut into chunks of ``length`` bytes.

    ``length`` defaults to ``M`` (every window is one chunk) and must divide it. Every byte of every chunk is
    predicted from the bytes before it in its chunk; ``kernels`` (``[D, >= length]`` per block) replace the
    model's own. The log-softmax and the sum run in float64: a float32 sum of many terms would round away the
    1e-7 differences the main job compares.
    """
    span = windows.shape[1] - 1
    length = span if length is None else length
    if span % length:
        raise ValueError(f"bits_per_byte: length {length} must divide the window span {span}")
    chunks = torch.cat([windows[:, i : i + length + 1] for i in range(0, span, length)])
    kernels = kernels or model.kernels(length)
    was_training = model.training
    model.eval()
    total = 0.0
    for part in chunks.split(batch):
        logits = model(part[:, :-1], kernels)
        total += float(F.cross_entropy(logits.flatten(0, 1).double(), part[:, 1:].flatten(), reduction="sum"))
    model.train(was_training)
    return total / (chunks.shape[0] * length) / LN2


def stream_windows(total: int, n: int) -> list[tuple[int, int]]:
    """``(start, first_scored)`` for windows of ``n + 1`` tokens over a stream of ``total`` tokens, stride
    ``n / 2``: the first window scores its n targets, every later one only the targets no earlier window scored
    (its second half), so each token from index 1 on is scored once, with at least ``n / 2`` tokens of context
    (but the first ``n``). The last window is moved back to end at the stream's end."""
    if total < 2:
        raise ValueError(f"stream_windows: the stream has {total} tokens, fewer than 2")
    n = min(n, total - 1)
    stride = max(1, n // 2)
    windows, scored = [], 1  # target index from which nothing is scored yet
    start = 0
    while scored < total:
        start = min(start, total - 1 - n)
        windows.append((start, scored))
        scored = start + n + 1
        start += stride
    return windows


@torch.no_grad()
def stream_bits_per_byte(model: TNNLanguageModel, tokens: torch.Tensor, batch: int = 16) -> dict[str, Any]:
    """Bits per byte of a whole token stream ``tokens [T]`` (uint8 or int64), every byte from the second on
    scored once with its context: windows of the model's ``n`` with stride ``n / 2`` (:func:`stream_windows`).

    Returns ``{"bits_per_byte", "bytes_scored", "window", "stride"}``.
    """
    n = model.config.n
    tokens = tokens.to(torch.int64)
    plan = stream_windows(tokens.numel(), n)
    width = min(n, tokens.numel() - 1)
    kernels = model.kernels(width)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for first in range(0, len(plan), batch):
        part = plan[first : first + batch]
        rows = torch.stack([tokens[s : s + width + 1] for s, _ in part])
        logits = model(rows[:, :-1], kernels)
        losses = F.cross_entropy(logits.flatten(0, 1).double(), rows[:, 1:].flatten(), reduction="none")
        losses = losses.view(len(part), width)
        for row, (start, scored) in enumerate(part):
            keep = losses[row, scored - start - 1 :]
            total += float(keep.sum())
            count += keep.numel()
    model.train(was_training)
    return {"bits_per_byte": total / count / LN2, "bytes_scored": count, "window": width, "stride": max(1, width // 2)}


def percentiles(times: list[float]) -> dict[str, float]:
    """p20 / median / p80 in milliseconds of times in seconds."""
    if len(times) == 1:
        return {"p20": times[0] * 1e3, "p50": times[0] * 1e3, "p80": times[0] * 1e3}
    q = statistics.quantiles(times, n=10, method="inclusive")
    return {"p20": q[1] * 1e3, "p50": statistics.median(times) * 1e3, "p80": q[7] * 1e3}


@torch.no_grad()
def time_decoder(decoder: Any, prompt: torch.Tensor, timed: int) -> dict[str, float]:
    """Prefill ``prompt [B, P]``, decode one warm-up token, then ``timed`` greedy tokens timed one by one.

    Each token is timed alone, so a busy machine's outliers show in the spread instead of the median. Returns
    ``{"p20", "p50", "p80"}`` (ms per token), ``"state_bytes"`` (what the decoder holds for the sequence) and, on
    CUDA, ``"peak_bytes"``: device memory allocated at the peak of the timed tokens beyond what was allocated
    before them (None on CPU).
    """
    device = prompt.device
    logits = decoder.step(decoder.prefill(prompt).argmax(-1))
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(timed):
        sync(device)
        start = time.perf_counter()
        logits = decoder.step(logits.argmax(-1))
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) - before if device.type == "cuda" else None
    return {**percentiles(times), "state_bytes": decoder.state_bytes(), "peak_bytes": peak}
