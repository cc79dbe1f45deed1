"""Channel-parallel decoding of a converted Toeplitz layer across processes (``torch.distributed``).

A diagonal SSM mixes tokens channel by channel: the state, ``lam`` and ``b`` of channel d meet only the input of
channel d. Splitting the channels over ranks therefore needs no communication inside a scan or a step; each
rank runs :func:`etsc_triton.ssm_scan` / :func:`etsc_triton.ssm_step` on its slice, and one all-gather per layer
joins the outputs. Every rank holds ``1 / world_size`` of the decode state (the part that grows with the batch
and the number of layers).

The split is balanced: the first ``D % world_size`` ranks hold one channel more than the others, so every rank
holds at least one channel when ``D >= world_size``.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from .nn import ToeplitzSSM
from .ops import check_int


def channel_slice(channels: int, rank: int, world_size: int) -> slice:
    """The channels ``rank`` holds when ``channels`` are split over ``world_size`` ranks.

    Args:
        channels: D, the channels of the layer (``>= world_size``).
        rank: this rank, ``0 <= rank < world_size``.
        world_size: the number of ranks.

    Returns:
        ``slice(start, stop)`` into the channel dimension; ``stop - start`` is ``D // world_size`` or one more.

    Example:
        >>> [channel_slice(5, r, 2) for r in range(2)]
        [slice(0, 3, None), slice(3, 5, None)]
    """
    check_int("channel_slice", "world_size", world_size, minimum=1)
    check_int("channel_slice", "channels", channels, minimum=world_size)
    check_int("channel_slice", "rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"channel_slice: rank must be < world_size = {world_size}, got {rank}")
    base, extra = divmod(channels, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def shard_channels(layer: ToeplitzSSM, rank: int | None = None, world_size: int | None = None) -> ToeplitzSSM:
    """A copy of ``layer`` that holds only the channels of ``rank`` (see :func:`channel_slice`).

    Every per-channel buffer is sliced (``t``, ``gamma`` and, once converted, ``lam``, ``b``, ``modes`` and the
    conversion report), so the shard's ``prefill`` and ``step`` compute exactly the rank's channels of the
    full layer's outputs, from a state ``[B, D_rank, N]``.

    Args:
        layer: a :class:`~etsc_triton.nn.ToeplitzSSM`, converted or not.
        rank: this rank; default: ``torch.distributed.get_rank()``.
        world_size: the number of ranks; default: ``torch.distributed.get_world_size()``.

    Returns:
        A new :class:`~etsc_triton.nn.ToeplitzSSM` with ``D_rank`` channels (buffers copied, not views).
    """
    if not isinstance(layer, ToeplitzSSM):
        raise TypeError(f"shard_channels: layer must be a ToeplitzSSM, got {type(layer).__name__}")
    rank = dist.get_rank() if rank is None else rank
    world_size = dist.get_world_size() if world_size is None else world_size
    part = channel_slice(layer.channels, rank, world_size)
    shard = ToeplitzSSM(layer.t[part], layer.gamma[part], tail=layer.tail, backend=layer.backend)
    if layer.lam is not None:
        shard.lam = layer.lam[part].contiguous()
        shard.b = layer.b[part].contiguous()
        shard.modes = None if layer.modes is None else layer.modes[part].contiguous()  # None after a reduction
        report = layer.report
        shard.report = dataclasses.replace(report, truncation_bound=report.truncation_bound[part].clone(),
                                           kernel_error=report.kernel_error[part].clone())
    return shard


def all_gather_channels(y_local: torch.Tensor, channels: int, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Join the per-rank outputs of a channel-split layer: ``[..., D_rank]`` on every rank -> ``[..., D]``.

    One all-gather (``all_gather_single``) of a buffer padded to the largest shard (the shards differ by at most one
    channel), so it runs on gloo (CPU) and NCCL (GPU) alike.

    Args:
        y_local: this rank's outputs ``[..., D_rank]``, ``D_rank`` given by :func:`channel_slice`.
        channels: D, the channels of the full layer.
        group: the process group (default: the world).

    Returns:
        y ``[..., D]`` (same dtype and device as ``y_local``), identical on every rank.
    """
    if not isinstance(y_local, torch.Tensor) or y_local.dim() < 1:
        raise TypeError(f"all_gather_channels: y_local must be a tensor [..., D_rank], got {type(y_local).__name__}")
    world_size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    parts = [channel_slice(channels, r, world_size) for r in range(world_size)]
    width = parts[rank].stop - parts[rank].start
    if y_local.shape[-1] != width:
        raise ValueError(
            f"all_gather_channels: y_local must hold rank {rank}'s {width} of {channels} channels in its last "
            f"dimension, got shape {tuple(y_local.shape)}"
        )
    widest = parts[0].stop - parts[0].start
    padded = torch.nn.functional.pad(y_local, (0, widest - width)).contiguous()
    gathered = padded.new_empty((world_size * padded.shape[0], *padded.shape[1:]))
    # Recent torch names it all_gather_single (all_gather_into_tensor, same arguments, is deprecated there).
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather_single(gathered, padded, group=group)
    gathered = gathered.view(world_size, *padded.shape)
    return torch.cat([gathered[r, ..., : part.stop - part.start] for r, part in enumerate(parts)], dim=-1)
