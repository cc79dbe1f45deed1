"""The ops under torch.distributed: DDP and FSDP2 training, channel-parallel decode, the torchrun example.

Two ranks on the CPU over gloo (loopback), the kernels through Triton's interpreter; the same tests over NCCL
where two GPUs are present. The ranks' code is in ``distributed_workers.py``; ``examples/serve_sharded.py`` runs
inside the decode test's ranks with the environment torchrun would give it.
"""

from __future__ import annotations

import distributed_workers as workers
import pytest
import torch

import etsc_triton as et
from etsc_triton.distributed import channel_slice, shard_channels

TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
BACKENDS = ["gloo", pytest.param("nccl", marks=[pytest.mark.gpu, TWO_GPUS])]


def reference_device(backend: str) -> torch.device:
    return torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_and_fsdp2_training(backend, tmp_path):
    workers.run_ranks(workers.training_rank, (workers.free_port(), backend, str(tmp_path)))
    ranks = [torch.load(tmp_path / f"training_rank{r}.pt") for r in range(workers.WORLD_SIZE)]

    device = reference_device(backend)
    single = workers.make_model(device)
    x, target = workers.training_batch(device)
    single_losses = workers.train(single, x, target, reduce_loss=False)
    single_parameters = workers.full_parameters(single)

    for run in ("ddp_first", "ddp_second", "fsdp"):
        for rank in ranks[1:]:  # every rank holds the same model after every step
            for name, value in ranks[0][run]["parameters"].items():
                assert torch.equal(rank[run]["parameters"][name], value), (run, name)
        # The ranks' mean of half-batch losses and gradients sums the same terms as the full batch in another
        # order (an all-reduce of two partial means): measured on gloo, losses 1.2e-7 relative and parameters
        # 1.2e-7 absolute (|p| <= 3) after 3 Adam steps, i.e. one fp32 ulp. On GPUs the batch size also changes
        # the kernels' tiling, hence the wider (not yet measured) bound there.
        tolerance = 1e-6 if backend == "gloo" else 1e-4
        losses = torch.tensor(ranks[0][run]["losses"], dtype=torch.float64)
        expected = torch.tensor(single_losses, dtype=torch.float64)
        assert torch.allclose(losses, expected, rtol=tolerance, atol=0), (run, losses, expected)
        for name, value in ranks[0][run]["parameters"].items():
            assert torch.allclose(value, single_parameters[name].cpu(), rtol=0, atol=tolerance), (run, name)
        assert losses[-1] < losses[0], (run, losses)  # it trains

    # The deterministic memory backward (no float atomics; the scan's backward has none either) and the
    # all-reduce repeat bit for bit. (The interpreter runs programs one by one, so on the CPU this cannot tell
    # the atomic backward from the deterministic one; on GPUs it can.)
    assert ranks[0]["ddp_first"]["losses"] == ranks[0]["ddp_second"]["losses"]
    for name, value in ranks[0]["ddp_first"]["parameters"].items():
        assert torch.equal(ranks[0]["ddp_second"]["parameters"][name], value), name
    assert set(ranks[0]["fsdp"]["sharded"].values()) == {"DTensor"}  # FSDP2 really sharded every parameter


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_parallel_decode(backend, tmp_path):
    """Sharded scan, prefill and pooled steps equal the unsharded layer; the README's torchrun example runs."""
    workers.run_ranks(workers.decode_rank, (workers.free_port(), backend, str(tmp_path), workers.free_port()))
    ranks = [torch.load(tmp_path / f"decode_rank{r}.pt") for r in range(workers.WORLD_SIZE)]

    layer, prompt, pool, tokens, state_indices = workers.decode_problem(reference_device(backend))
    with torch.no_grad():
        full = {k: v.cpu() for k, v in workers.decode(layer, prompt, pool, tokens, state_indices, lambda y: y).items()}
    assert sum(stop - start for start, stop in (r["part"] for r in ranks)) == layer.channels
    assert "rank 0's 17 of 33 channels" in ranks[0]["refusal"], ranks[0]["refusal"]
    for rank in ranks:
        part = slice(*rank["part"])
        for name, value in full.items():
            # One channel's arithmetic does not depend on its neighbours, so the shards reproduce the full
            # layer bit for bit on the CPU; compiled GPU reductions may tile the modes differently when the
            # channel count changes, hence a few fp32 ulps there.
            sharded = rank[name]
            expected = value if name.endswith("_y") else value[:, part]
            if backend == "gloo":
                assert torch.equal(sharded, expected), name
            else:
                assert torch.allclose(sharded, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item()), name
    assert torch.equal(ranks[0]["step_y"], ranks[1]["step_y"])  # the gathered y is the same on every rank

    example_output = (tmp_path / "example_rank0.txt").read_text()
    assert "tokens identical to one process: True" in example_output, example_output
    if backend == "gloo":  # the same per-channel arithmetic on the CPU: the logits match bit for bit
        assert "max |logits - one process|: 0\n" in example_output, example_output


def test_channel_slice_is_balanced_and_covers_every_channel():
    for channels, world_size in [(33, 2), (33, 4), (5, 5), (64, 3)]:
        parts = [channel_slice(channels, r, world_size) for r in range(world_size)]
        assert parts[0].start == 0 and parts[-1].stop == channels
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        assert {p.stop - p.start for p in parts} <= {channels // world_size, -(-channels // world_size)}
    with pytest.raises(ValueError, match="channels"):
        channel_slice(3, 0, 4)  # fewer channels than ranks
    with pytest.raises(ValueError, match="rank"):
        channel_slice(8, 2, 2)
    with pytest.raises(TypeError, match="world_size"):
        channel_slice(8, 0, 2.0)


def test_shard_channels_slices_every_per_channel_buffer():
    layer, *_ = workers.decode_problem(torch.device("cpu"))
    shard = shard_channels(layer, rank=1, world_size=2)
    part = slice(17, 33)
    for name in ("t", "gamma", "lam", "b", "modes"):
        assert torch.equal(getattr(shard, name), getattr(layer, name)[part]), name
    assert torch.equal(shard.report.kernel_error, layer.report.kernel_error[part])
    assert shard.state_size == layer.state_size and shard.channels == 16
    unconverted = shard_channels(et.nn.ToeplitzSSM(layer.t), rank=0, world_size=2)
    assert unconverted.lam is None and torch.equal(unconverted.t, layer.t[:17])
    with pytest.raises(TypeError, match="ToeplitzSSM"):
        shard_channels(layer.t, rank=0, world_size=2)
