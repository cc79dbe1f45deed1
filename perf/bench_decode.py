"""Decode family: per-token latency of a converted TNN against its originals, prefill, the reduced step.

* ``decode_token`` (x = sequence length): one greedy token of the whole model (6 layers, D=512, n=2048 at full
  size; batch 1 and 16). Providers: ``triton`` (ETSC SSM decoder: fused ``ssm_step`` per layer, CUDA graph),
  ``tnn_cache`` (dot product of the kernel with the cached prefix), ``fft`` (recompute the prefix by FFT, the
  original TNN), ``original`` (the ETSC paper's eager torch decode with all n unfolded modes:
  ``u = lam*u + b*x; y = u.sum().real``).
* ``prefill_layer`` (x = prompt length, 8192 at full size): one converted layer serving a prompt, outputs +
  final state. Providers: ``triton`` (FFT outputs + folded-DFT state), ``step_loop`` (``ssm_step`` token by
  token), ``scan`` (``ssm_scan``).
* ``decode_layer_step`` (x = batch): one layer's decode step (``ssm_step``) at the ETSC state (``ceil(n/2)``
  modes) and at the reduced rank, with the bytes each step moves.
"""

from __future__ import annotations

import math

import torch

import etsc_triton as et
from etsc_triton.demo.model import TNNConfig, TNNLanguageModel, make_decoder
from etsc_triton.nn.toeplitz import ToeplitzSSM

FAMILY = "decode"


def model_config(quick: bool) -> TNNConfig:
    """The decoded TNN: the demo's GPU size (6 layers, D=512, n=2048), or a tiny one for CPU runs."""
    if quick:
        return TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8, decay=0.95)
    return TNNConfig(vocab_size=256, d_model=512, n_layers=6, n=2048, rpe_hidden=64, decay=0.99)


class OriginalETSCDecoder:
    """The ETSC paper's decode, written from the math: unfolded n modes per channel, eager torch.

    Conversion as in the paper: ``b = ifft(t_ext)`` of the zero-sum extended coefficients, modes k = 1..n,
    ``lam_k = gamma exp(-2 pi i k / (n+1))``; each token ``u = lam * u + b * x; y = u.sum(-1).real``.
    """

    def __init__(self, model: TNNLanguageModel, batch: int):
        self.model = model
        self.modes = []
        for block in model.blocks:
            t = block.coefficients()
            n = t.shape[-1]
            extended = torch.cat([t, -t.sum(-1, keepdim=True)], dim=-1)
            b = torch.fft.ifft(extended.to(torch.complex64), dim=-1)[:, 1:]
            k = torch.arange(1, n + 1, device=t.device, dtype=torch.float32)
            lam = block.decay * torch.exp(torch.complex(torch.zeros_like(k), -2 * math.pi * k / (n + 1)))
            state = torch.zeros(batch, t.shape[0], n, dtype=torch.complex64, device=t.device)
            self.modes.append((lam.expand_as(b).contiguous(), b.contiguous(), state))

    def step(self, token: torch.Tensor) -> torch.Tensor:
        x = self.model.embed(token)
        for block, (lam, b, state) in zip(self.model.blocks, self.modes, strict=True):
            gate, v = block.mixing_input(x)
            state.mul_(lam).add_(b * v[..., None])
            x = block.finish(x, gate, state.sum(-1).real)
        return self.model.logits(x)


def decode_sweep(ctx, model: TNNLanguageModel, batch: int, lengths, backend: str) -> dict[str, dict[int, float]]:
    """Time one greedy token of ``model`` after prompts of ``lengths`` tokens (``batch`` sequences): the SSM
    decoder (``triton``), the TNN cache, the FFT recompute and the original ETSC decode. Returns ``{provider:
    {length: median ms}}``."""
    config = model.config
    cfg = {"batch": batch, "d": config.d_model, "layers": config.n_layers, "n": config.n}
    gen = torch.Generator().manual_seed(batch)
    times: dict[str, dict[int, float]] = {}
    for length in lengths:
        prompt = torch.randint(0, config.vocab_size, (batch, length), generator=gen).to(ctx.device)
        token = prompt[:, -1].clone()
        for provider in ("triton", "tnn_cache", "fft"):
            name = "ssm" if provider == "triton" else provider
            decoder = make_decoder(model, name, length + 2, **({"backend": backend} if name == "ssm" else {}))
            with torch.no_grad():
                decoder.prefill(prompt)

            def one_token(decoder=decoder, length=length, token=token):
                with torch.no_grad():
                    decoder.length = length
                    return decoder.step(token)

            times.setdefault(provider, {})[length] = ctx.time(
                op="decode_token", provider=provider, x_name="length", x_value=length, config=cfg, fn=one_token)
            del decoder
        original = OriginalETSCDecoder(model, batch)

        def original_token(original=original, token=token):
            with torch.no_grad():
                return original.step(token)

        times.setdefault("original", {})[length] = ctx.time(
            op="decode_token", provider="original", x_name="length", x_value=length, config=cfg, fn=original_token)
    return times


def _prefill_sweep(ctx, channels: int, n: int, batches, lengths, backend: str) -> None:
    gen = torch.Generator().manual_seed(0)
    layer = ToeplitzSSM(torch.randn(channels, n, generator=gen) / n, 0.99, backend=backend).to(ctx.device)
    layer.convert()
    for batch in batches:
        cfg = {"batch": batch, "d": channels, "n": n}
        for length in lengths:
            x = torch.randn(batch, length, channels, generator=gen).to(ctx.device)
            state = layer.new_state(batch)

            def step_loop(x=x, state=state):
                for i in range(x.shape[1]):
                    layer.step(x[:, i], state)

            providers = {
                "triton": lambda x=x: layer.prefill(x),
                "step_loop": step_loop,
                "scan": lambda x=x: et.ssm_scan(x, layer.lam, layer.b, backend=backend),
            }
            for provider, fn in providers.items():
                ctx.time(op="prefill_layer", provider=provider, x_name="prompt_len", x_value=length, config=cfg,
                         fn=fn)
            y, final = layer.prefill(x)
            y_scan, final_scan = et.ssm_scan(x, layer.lam, layer.b, backend=backend)
            err = ((final - final_scan).abs().max() / final_scan.abs().max()).item()
            ctx.value(op="prefill_layer", provider="triton", metric="state_rel_err", value=err,
                      x_name="prompt_len", x_value=length, config=cfg)


def _reduced_step(ctx, model: TNNLanguageModel, batches, backend: str) -> None:
    """One layer's decode step at the ETSC state and at the reduced rank: time and bytes per step."""
    block = model.blocks[0]
    with torch.no_grad():
        t = block.coefficients(dtype=torch.float64)
    config = model.config
    for provider, convert in (("etsc", {}), ("reduced", {"method": "reduce", "rank": 4})):
        layer = ToeplitzSSM(t, block.decay, backend=backend).to(ctx.device)
        layer.convert(**convert)
        modes = layer.state_size
        for batch in batches:
            d = config.d_model
            cfg = {"d": d, "n": config.n}
            x = torch.randn(batch, d, device=ctx.device)
            state = layer.new_state(batch)
            nbytes = 2 * batch * d * modes * 8 + 2 * d * modes * 8 + 2 * batch * d * 4  # state r+w, lam, b, x, y
            ctx.time(op="decode_layer_step", provider=provider, x_name="batch", x_value=batch, config=cfg,
                     bytes=nbytes, fn=lambda x=x, state=state, layer=layer: layer.step(x, state))
            for metric, value in (("bytes_per_step", nbytes), ("state_modes", modes)):
                ctx.value(op="decode_layer_step", provider=provider, metric=metric, value=float(value),
                          x_name="batch", x_value=batch, config=cfg)


def run(ctx) -> None:
    backend = "triton" if ctx.on_gpu or ctx.quick else "auto"
    config = model_config(ctx.quick)
    model = TNNLanguageModel(config).to(ctx.device)
    for batch in ctx.sizes(quick=[1], full=[1, 16]):
        decode_sweep(ctx, model, batch, ctx.sizes(quick=[8, 40], full=[64, 256, 1024, 2048, 4096, 8192]), backend)
    _prefill_sweep(ctx, ctx.sizes(quick=[8], full=[512])[0], config.n, ctx.sizes(quick=[1], full=[1, 16]),
                   ctx.sizes(quick=[64], full=[8192]), backend)
    _reduced_step(ctx, model, ctx.sizes(quick=[1, 4], full=[1, 16, 64]), backend)

