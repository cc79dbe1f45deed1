"""Real text on every machine: the running Python's standard library sources, as bytes (vocabulary 256).

Every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` (``site-packages`` excluded: installed packages
differ from machine to machine) goes to one split by a stable hash of its path relative to the stdlib root:
``sha256(relative posix path)`` read as an integer, modulo 100, gives a bucket; buckets ``0..89`` are ``train``,
``90..94`` ``val``, ``95..99`` ``test``. A file therefore lands in the same split on every machine and Python
version that has it, and never in two. A split's token stream is its files' bytes concatenated in path order.
The record of a split (:func:`split_record`) holds its file count, bytes and the sha256 of its sorted path list.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

import torch

SPLITS = ("train", "val", "test")
SPLIT_BUCKETS = {"train": range(0, 90), "val": range(90, 95), "test": range(95, 100)}


def stdlib_root() -> Path:
    """The running Python's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relative_path: str) -> str:
    """The split (``"train"``, ``"val"`` or ``"test"``) of a file, from its path relative to the stdlib root.

    Args:
        relative_path: posix path relative to the stdlib root, e.g. ``"json/decoder.py"``.
    """
    bucket = int.from_bytes(hashlib.sha256(relative_path.encode()).digest()[:8], "big") % 100
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def source_files(root: Path | None = None) -> list[str]:
    """Sorted posix paths, relative to ``root`` (default: :func:`stdlib_root`), of its ``*.py`` files outside
    ``site-packages``."""
    root = stdlib_root() if root is None else Path(root)
    paths = (p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file())
    return sorted(p for p in paths if "site-packages" not in p.split("/"))


def split_files(split: str, root: Path | None = None) -> list[str]:
    """The sorted relative paths of one split's files."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [p for p in source_files(root) if split_of(p) == split]


def load_split(split: str, root: Path | None = None) -> torch.Tensor:
    """One split's token stream: its files' bytes concatenated in path order, uint8 ``[total bytes]``."""
    root = stdlib_root() if root is None else Path(root)
    data = b"".join((root / p).read_bytes() for p in split_files(split, root))
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def split_record(root: Path | None = None) -> dict:
    """Which data a model saw: the Python version and per split ``files``, ``bytes`` and ``sha256`` (of the
    newline-joined sorted relative paths; where the stdlib lies is no part of it)."""
    root = stdlib_root() if root is None else Path(root)
    record: dict = {"python": sys.version.split()[0], "splits": {}}
    files = source_files(root)
    for split in SPLITS:
        paths = [p for p in files if split_of(p) == split]
        record["splits"][split] = {
            "files": len(paths),
            "bytes": sum((root / p).stat().st_size for p in paths),
            "sha256": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
        }
    return record


def eval_windows(tokens: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """``count`` windows of ``length`` tokens at evenly spaced offsets of a stream: int64 ``[count, length]``.

    A fixed selection (no randomness), spread over the whole stream rather than its first files.
    """
    if tokens.numel() < length:
        raise ValueError(f"eval_windows: the stream has {tokens.numel()} tokens, fewer than length={length}")
    last = tokens.numel() - length
    starts = [round(i * last / max(count - 1, 1)) for i in range(count)]
    return torch.stack([tokens[s : s + length] for s in starts]).long()
