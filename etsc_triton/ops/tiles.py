"""Launch geometry: host integer helpers, the SM count, and the tile policy every launcher reads.

A :class:`TilePolicy` holds every tile size and pipelining choice the launchers make that is not a function of
the problem's shape alone. Two instances exist: :data:`GPU_TILES` (compiled kernels) and
:data:`INTERPRETER_TILES` (small tiles, so Triton's interpreter, which runs every lane as a numpy element,
stays fast on CPU tensors). Launchers read :func:`current_tiles` once per call and pass the policy to their
block-size functions; benchmarks and compile reports override it for a block of code with :func:`use_tiles`
(e.g. ``with use_tiles(dataclasses.replace(GPU_TILES, scan_modes_per_thread=32)): et.ssm_scan(...)``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .dispatch import interpreter_enabled


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for host code (``triton.cdiv`` costs about 1.5 us per call on triton 3.9)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``); host code, like :func:`cdiv`."""
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device, policy: TilePolicy) -> int:
    """The streaming multiprocessors the launch decisions (split-K, chunking, anchors per program) assume:
    ``policy.assumed_sms`` when set, else the CUDA device's count (cached), else 2 for CPU tensors, so the
    interpreter exercises the same decisions at small sizes."""
    if policy.assumed_sms is not None:
        return policy.assumed_sms
    if device.type != "cuda":
        return 2
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@dataclass(frozen=True)
class TilePolicy:
    """Tile sizes and pipelining choices of every launcher (the rest of each launch follows from the shape).

    Attributes:
        scan_modes_per_thread: modes a thread of the one-warp scan program holds in registers (16: about 150
            registers, enough for the whole mode block without spilling on sm_90).
        scan_chunks: whether the scan may split a long sequence into chunks when its tiles leave SMs idle
            (False: one program per tile walks all L tokens, the sequential scan).
        scan_min_chunk_tokens: fewest tokens per chunk of the chunked scan (a chunk's carry costs about as much
            as walking a few tokens, so short chunks waste the parallelism they buy).
        scan_backward_stages: ``num_stages`` of the scan backward's token loop (1 in the interpreter, which has
            no pipelining).
        kernel_max_bl: largest lag block BL of the ``ssm_kernel`` forward's ``tl.dot``.
        kernel_max_block_n: largest mode block of ``ssm_kernel`` (every ``tl.dot`` dimension stays >= 16).
        kernel_max_block_a: largest number of anchors per ``ssm_kernel`` program.
        solve_max_block: largest node block of the Bjorck-Pereyra ``vandermonde_solve`` program.
        fold_block: residues and channels per program of the prompt fold (``ssm_prefill_state``).
        fold_warps: warps of the prompt fold.
        gather_max_block_d: largest run of a table row one memory-layer forward program covers (256: 1 KB of
            fp32; each program hashes its tokens once per table, so wider d-blocks repeat the hash less).
        gather_backward_max_block_d: largest d-block of the memory-layer backward kernels (128: 32 x 256 bf16
            tiles took the atomic backward past 238 registers on sm_90).
        gather_backward_block_t: tokens per memory-layer backward program.
        hash_block_t: tokens per ``lsh_hash`` forward / backward program.
        reduce_block: elements per program of the elementwise split reductions.
        assumed_sms: the SM count launch decisions assume (None: the device's). Setting 2 on a GPU makes small
            shapes take the large-device branches (chunked scan, split-K, 64 anchors), which is how every kernel
            configuration is reached and checked at a small size.
    """

    scan_modes_per_thread: int = 16
    scan_chunks: bool = True
    scan_min_chunk_tokens: int = 256
    scan_backward_stages: int = 3
    kernel_max_bl: int = 64
    kernel_max_block_n: int = 32
    kernel_max_block_a: int = 64
    solve_max_block: int = 1024
    fold_block: int = 64
    fold_warps: int = 4
    gather_max_block_d: int = 256
    gather_backward_max_block_d: int = 128
    gather_backward_block_t: int = 32
    hash_block_t: int = 64
    reduce_block: int = 1024
    assumed_sms: int | None = None


GPU_TILES = TilePolicy()
"""The tiles of compiled kernels."""

INTERPRETER_TILES = TilePolicy(
    scan_backward_stages=1,
    kernel_max_bl=16,
    kernel_max_block_n=16,
    kernel_max_block_a=16,
    solve_max_block=64,
    fold_block=16,
    fold_warps=1,
    gather_max_block_d=32,
    gather_backward_max_block_d=32,
    gather_backward_block_t=16,
    hash_block_t=16,
    reduce_block=256,
)
"""Small tiles for Triton's interpreter: it runs every lane of a tile as a numpy element."""

_override: contextvars.ContextVar[TilePolicy | None] = contextvars.ContextVar("etsc_triton_tiles", default=None)


def current_tiles() -> TilePolicy:
    """The policy launchers use now: the one set by :func:`use_tiles`, else the interpreter's or the GPU's."""
    chosen = _override.get()
    if chosen is not None:
        return chosen
    return INTERPRETER_TILES if interpreter_enabled() else GPU_TILES


@contextlib.contextmanager
def use_tiles(policy: TilePolicy) -> Iterator[TilePolicy]:
    """Run the enclosed launches with ``policy`` (benchmarks of a tile variant, offline compile reports)."""
    if not isinstance(policy, TilePolicy):
        raise TypeError(f"use_tiles: policy must be a TilePolicy, got {type(policy).__name__}")
    token = _override.set(policy)
    try:
        yield policy
    finally:
        _override.reset(token)
