"""What the ranks of ``test_distributed.py`` run, and the launcher that starts them.

Spawned ranks import this module but not ``conftest.py``, so the interpreter switch is made here, before
anything imports triton (the parent's environment is inherited too; this keeps a rank correct on its own).
Ranks talk over loopback only: ``MASTER_ADDR=127.0.0.1``, and the gloo / NCCL sockets are pinned to ``lo``.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import socket
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

import etsc_triton as et  # noqa: E402
from etsc_triton.distributed import all_gather_channels, channel_slice, shard_channels  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "serve_sharded.py"
WORLD_SIZE = 2
STEPS = 3
GLOBAL_BATCH, SEQ_LEN, FEATURES = 4, 5, 8


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(function, args: tuple, *, world_size: int = WORLD_SIZE, timeout: float = 300.0) -> None:
    """Spawn ``function(rank, *args)`` in ``world_size`` processes and wait at most ``timeout`` seconds.

    A rank's exception is re-raised here (with its traceback); past the deadline the ranks are terminated and
    ``TimeoutError`` raised, so a hung collective fails the test instead of hanging it. The default leaves room
    for a heavily loaded machine (the ranks take 10-100 s on 2 shared cores).
    """
    context = mp.start_processes(function, args=args, nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
                process.join(10)
            raise TimeoutError(f"{world_size} ranks did not finish within {timeout:.0f} s")


def kernel_backend(device: torch.device) -> str:
    """The Triton kernels on CUDA, or on the CPU through the interpreter; on a CUDA machine (interpreter off) the
    CPU ranks of the gloo variant run the Torch references instead."""
    return "triton" if device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "torch"


def init_rank(rank: int, port: int, backend: str) -> torch.device:
    """Join the process group of ``WORLD_SIZE`` ranks over loopback; the device this rank computes on.

    Fresh ``torch.empty*`` allocations are NaN-poisoned as in the parent (``conftest.py``), so an output element a
    kernel never writes fails the comparisons here too.
    """
    import conftest

    torch.empty = conftest._poisoned_empty
    torch.empty_like = conftest._poisoned_empty_like
    torch.empty_strided = conftest._poisoned_empty_strided
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                      NCCL_SOCKET_IFNAME="lo")
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, rank=rank, world_size=WORLD_SIZE, device_id=device if backend == "nccl" else None)
    return device


class DiagonalSSM(nn.Module):
    """A trainable diagonal SSM (S4D / LRU style) through :func:`etsc_triton.ssm_scan` and its backward kernel.

    ``lam = exp(-exp(log_decay)) * exp(i angle)`` keeps ``|lam| < 1``; ``b`` is stored as two real parameters
    (FSDP2 shards them like any other parameter).
    """

    def __init__(self, channels: int, modes: int, backend: str):
        super().__init__()
        self.backend = backend
        self.log_decay = nn.Parameter(torch.linspace(-3.0, -1.0, modes).repeat(channels, 1))
        self.angle = nn.Parameter(torch.pi * torch.rand(channels, modes))
        self.b_re = nn.Parameter(0.3 * torch.randn(channels, modes))
        self.b_im = nn.Parameter(0.3 * torch.randn(channels, modes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = torch.polar(torch.exp(-torch.exp(self.log_decay)), self.angle)
        y, _ = et.ssm_scan(x, lam, torch.complex(self.b_re, self.b_im), backend=self.backend)
        return y


def make_model(device: torch.device) -> nn.Sequential:
    """Two memory layers (deterministic backward) around a trainable diagonal SSM, the same on every rank."""
    torch.manual_seed(0)
    backend = kernel_backend(device)
    model = nn.Sequential(
        et.nn.MemoryLayer(FEATURES, 6, code_length=4, deterministic=True),
        nn.GELU(),
        DiagonalSSM(6, 3, backend),
        et.nn.MemoryLayer(6, 3, code_length=4, projection=True, deterministic=True),
    )
    for layer in (model[0], model[3]):
        layer.backend = backend  # "auto" would pick the Torch reference on the CPU
    return model.to(device)


def training_batch(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch ``(x [4, 5, 8], target [4, 5, 3])``, drawn on the CPU so every device sees the same."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, SEQ_LEN, FEATURES, generator=generator)
    target = torch.randn(GLOBAL_BATCH, SEQ_LEN, 3, generator=generator)
    return x.to(device), target.to(device)


def train(model: nn.Module, x: torch.Tensor, target: torch.Tensor, reduce_loss: bool) -> list[float]:
    """``STEPS`` Adam steps on ``mse(model(x), target)``; the losses (averaged over ranks if ``reduce_loss``)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = loss.detach().clone()
        if reduce_loss:
            dist.all_reduce(value)
            value /= dist.get_world_size()
        losses.append(value.item())
    return losses


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full CPU tensor (FSDP2's sharded DTensors are gathered)."""
    out = {}
    for name, param in model.named_parameters():
        data = param.detach()
        if hasattr(data, "full_tensor"):
            data = data.full_tensor()
        out[name.replace("module.", "")] = data.cpu().clone()
    return out


def training_rank(rank: int, port: int, backend: str, out_dir: str) -> None:
    """DDP twice (to compare runs) and FSDP2 once, each on this rank's half of the global batch."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    device = init_rank(rank, port, backend)
    x, target = training_batch(device)
    local = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
    results = {}
    for run in ("ddp_first", "ddp_second"):
        model = DistributedDataParallel(make_model(device), device_ids=[rank] if backend == "nccl" else None)
        losses = train(model, x[local], target[local], reduce_loss=True)
        results[run] = {"losses": losses, "parameters": full_parameters(model)}
    model = make_model(device)
    mesh = init_device_mesh(device.type, (WORLD_SIZE,))
    for layer in (model[0], model[2], model[3]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    losses = train(model, x[local], target[local], reduce_loss=True)
    results["fsdp"] = {
        "losses": losses,
        "parameters": full_parameters(model),
        "sharded": {name: type(p).__name__ for name, p in model.named_parameters()},
    }
    torch.save(results, os.path.join(out_dir, f"training_rank{rank}.pt"))
    dist.destroy_process_group()


def decode_problem(device: torch.device):
    """A converted layer (D = 33 channels, n = 31: 16 modes), a prompt, a state pool and decode tokens."""
    generator = torch.Generator().manual_seed(2)
    channels, n = 33, 31
    t = torch.randn(channels, n, generator=generator) / n
    gamma = 0.9 + 0.1 * torch.rand(channels, generator=generator)
    layer = et.nn.ToeplitzSSM(t, gamma, backend=kernel_backend(device)).to(device)
    layer.convert()
    prompt = torch.randn(3, 9, channels, generator=generator).to(device)
    pool = torch.randn(5, channels, layer.state_size, dtype=torch.complex64, generator=generator).to(device)
    tokens = torch.randn(4, 3, channels, generator=generator).to(device)
    state_indices = torch.tensor([3, -1, 0], dtype=torch.int32, device=device)
    return layer, prompt, pool, tokens, state_indices


def decode(layer, prompt, pool, tokens, state_indices, gather) -> dict[str, torch.Tensor]:
    """Prefill by scan and by the folded DFT, then decode ``tokens`` into rows of the pool; ``gather`` joins
    channel shards (the identity unsharded)."""
    scan_y, scan_state = et.ssm_scan(prompt, layer.lam, layer.b, backend=layer.backend)
    prefill_y, prefill_state = layer.prefill(prompt)
    step_y = torch.stack([gather(layer.step(token, pool, state_indices)) for token in tokens])
    return {
        "scan_y": gather(scan_y), "scan_state": scan_state, "prefill_y": gather(prefill_y),
        "prefill_state": prefill_state, "step_y": step_y, "pool": pool,
    }


def decode_rank(rank: int, port: int, backend: str, out_dir: str, example_port: int) -> None:
    """Decode this rank's channels of :func:`decode_problem` and gather y over the ranks; then run
    ``examples/serve_sharded.py`` as torchrun would start it (same environment variables), its output to a file.
    """
    device = init_rank(rank, port, backend)
    layer, prompt, pool, tokens, state_indices = decode_problem(device)
    part = channel_slice(layer.channels, rank, WORLD_SIZE)
    shard = shard_channels(layer)
    with torch.no_grad():
        results = decode(shard, prompt[..., part], pool[:, part].clone(), tokens[..., part], state_indices,
                         lambda y: all_gather_channels(y, layer.channels))
    results["part"] = (part.start, part.stop)
    try:  # a shard of the wrong width is refused before any collective starts
        all_gather_channels(torch.zeros(3, 1, device=device), layer.channels)
        results["refusal"] = None
    except ValueError as error:
        results["refusal"] = str(error)
    torch.save({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in results.items()},
               os.path.join(out_dir, f"decode_rank{rank}.pt"))
    dist.destroy_process_group()

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                      MASTER_PORT=str(example_port))
    sys.argv = [str(EXAMPLE), "--steps", "6", "--device", device.type]
    with open(os.path.join(out_dir, f"example_rank{rank}.txt"), "w") as log, contextlib.redirect_stdout(log):
        runpy.run_path(str(EXAMPLE), run_name="__main__")
