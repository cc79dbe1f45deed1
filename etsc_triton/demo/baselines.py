"""What needs no learning, on the same bytes: general-purpose compressors and adaptive count models.

A language model's bits per byte mean little alone; these say where it stands. All are measured on the files of
a split (the stdlib test split in the training record):

* ``gzip -9`` (Python's ``gzip`` module, no file name in the header) and ``xz -9e`` (``lzma``, preset 9 |
  extreme, the xz container), each file compressed on its own, and xz on the files concatenated;
* adaptive order-k count models, k = 0 .. 3, on the concatenated stream: each byte is coded with the counts of
  the bytes before it (nothing is learned beforehand), interpolated over the orders by Witten-Bell:
  ``P_k(x | c) = (n(c, x) + u(c) P_(k-1)(x)) / (n(c) + u(c))`` with ``n`` the counts so far and ``u(c)`` the
  number of distinct bytes seen after context c, ``P_(-1) = 1/256``. Vectorised with numpy: the counts a byte
  sees are its rank among the earlier occurrences of its key (a stable sort).
"""

from __future__ import annotations

import gzip
import lzma
import math
from pathlib import Path

import numpy as np

GZIP_LEVEL = 9
XZ_PRESET = 9 | lzma.PRESET_EXTREME
MAX_ORDER = 3


def _earlier_counts(keys: np.ndarray) -> np.ndarray:
    """For every position, how many earlier positions hold the same key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    counts = np.empty(len(keys), dtype=np.int64)
    counts[order] = np.arange(len(keys)) - group_start
    return counts


def _earlier_sums(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For every position, the sum of ``values`` over earlier positions with the same key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_values = keys[order], values[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    running = np.cumsum(sorted_values) - sorted_values
    base = np.repeat(running[starts], np.diff(np.r_[starts, len(keys)]))
    sums = np.empty(len(keys), dtype=np.int64)
    sums[order] = running - base
    return sums


def count_model_bits(data: bytes, max_order: int = MAX_ORDER) -> list[float]:
    """Bits per byte of the adaptive interpolated count models of orders ``0 .. max_order`` on ``data``."""
    symbols = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    total = len(symbols)
    probability = np.full(total, 1.0 / 256)
    context = np.zeros(total, dtype=np.int64)
    bits = []
    for order in range(max_order + 1):
        if order > 0:  # the context gains the byte `order` back (257: before the stream's start)
            previous = np.full(total, 256, dtype=np.int64)
            previous[order:] = symbols[:-order]
            context = context * 257 + previous
        pair = context * 256 + symbols
        seen_pair = _earlier_counts(pair)
        seen_context = _earlier_counts(context)
        distinct = _earlier_sums(context, (seen_pair == 0).astype(np.int64))
        known = seen_context > 0
        mixed = (seen_pair + distinct * probability) / np.maximum(seen_context + distinct, 1)
        probability = np.where(known, mixed, probability)
        bits.append(float(-np.log2(probability).sum() / total))
    return bits


def compressor_bits(files: list[bytes]) -> dict[str, float]:
    """Bits per byte of gzip -9 and xz -9e, per file (summed) and, for xz, on the files concatenated."""
    total = sum(len(f) for f in files)
    gzip_bytes = sum(len(gzip.compress(f, compresslevel=GZIP_LEVEL, mtime=0)) for f in files)
    xz_bytes = sum(len(lzma.compress(f, preset=XZ_PRESET)) for f in files)
    xz_concat = len(lzma.compress(b"".join(files), preset=XZ_PRESET))
    return {"gzip_9_per_file": 8 * gzip_bytes / total, "xz_9e_per_file": 8 * xz_bytes / total,
            "xz_9e_concatenated": 8 * xz_concat / total}


def baselines(root: Path, paths: list[str]) -> dict[str, float]:
    """Every baseline on the files ``paths`` (relative to ``root``), in bits per byte, with ``bytes``."""
    files = [(root / p).read_bytes() for p in paths]
    orders = count_model_bits(b"".join(files))
    result = {"bytes": float(sum(len(f) for f in files)), **compressor_bits(files)}
    result.update({f"count_order{k}": value for k, value in enumerate(orders)})
    return {k: (v if k == "bytes" else round(v, 4)) for k, v in result.items() if not math.isnan(v)}
