"""Serve a converted Toeplitz language model with its SSM channels split over several processes.

    torchrun --nproc-per-node 2 examples/serve_sharded.py                  # CPU ranks over gloo
    torchrun --nproc-per-node 2 examples/serve_sharded.py --device cuda    # one GPU per rank over NCCL

Every rank builds the same small TNN language model (deterministic weights), converts each Toeplitz layer to a
diagonal SSM and keeps only its share of the channels (:func:`etsc_triton.distributed.shard_channels`): its
slice of ``lam``, ``b`` and of every decode state. The rest of the model is replicated. Per layer and token,
each rank runs the prefill or the fused step on its channels and one all-gather joins the mixed outputs
(:func:`etsc_triton.distributed.all_gather_channels`). Rank 0 prints the greedy tokens and checks them against
one process decoding the whole model.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from etsc_triton.demo.model import TNNConfig, TNNLanguageModel, generate
from etsc_triton.distributed import all_gather_channels, channel_slice, shard_channels
from etsc_triton.nn import ToeplitzSSM


@torch.no_grad()
def sharded_generate(model: TNNLanguageModel, layers: list[ToeplitzSSM], prompt: torch.Tensor,
                     steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with this rank's channel shards ``layers`` of every block's converted SSM.

    Returns:
        ``(tokens [B, steps], logits [B, steps, V])``, the same on every rank.
    """
    channels = model.config.d_model
    part = channel_slice(channels, dist.get_rank(), dist.get_world_size())
    x = model.embed(prompt)
    states = []
    for block, layer in zip(model.blocks, layers):
        gate, v = block.mixing_input(x)
        mixed, state = layer.prefill(v[..., part])
        states.append(state)
        x = block.finish(x, gate, all_gather_channels(mixed, channels))
    logits = model.logits(x[:, -1])
    tokens, all_logits = [], []
    for i in range(steps):
        all_logits.append(logits)
        tokens.append(logits.argmax(-1))
        if i + 1 == steps:
            break
        x = model.embed(tokens[-1])
        for block, layer, state in zip(model.blocks, layers, states):
            gate, v = block.mixing_input(x)
            x = block.finish(x, gate, all_gather_channels(layer.step(v[..., part], state), channels))
        logits = model.logits(x)
    return torch.stack(tokens, dim=1), torch.stack(all_logits, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=16, help="tokens to generate")
    parser.add_argument("--backend", default="auto", help="kernel backend: auto, triton or torch")
    args = parser.parse_args()

    if args.device == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()

    config = TNNConfig(vocab_size=64, d_model=33, n_layers=2, n=63, rpe_hidden=16)
    model = TNNLanguageModel(config).to(device)
    layers = []
    for block in model.blocks:
        layer = ToeplitzSSM(block.coefficients(), block.decay, tail="ssm", backend=args.backend)
        layer.convert()  # deterministic: every rank gets the same lam, b (or load them from a checkpoint)
        layers.append(shard_channels(layer, rank, world_size))
    prompt = torch.randint(0, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0)).to(device)

    tokens, logits = sharded_generate(model, layers, prompt, args.steps)
    reference, reference_logits = generate(model, prompt, args.steps, decoder="ssm", backend=args.backend,
                                           cuda_graph=False, return_logits=True)
    if rank == 0:
        print(f"{world_size} ranks, {config.d_model} channels: rank 0 holds {layers[0].channels}, state "
              f"{layers[0].state_size} modes per channel")
        print("tokens:", tokens.tolist())
        print(f"max |logits - one process|: {(logits - reference_logits).abs().max().item():.3g}")
        print(f"tokens identical to one process: {bool(torch.equal(tokens, reference))}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
