"""Decode family: per-token latency of a converted TNN against its originals, prefill, mode truncation.

* ``decode_token`` (x = sequence length): one greedy token of the whole model (6 layers, D=512, n=2048 at full
  size; batch 1 and 16). Providers: ``triton`` (ETSC SSM decoder: fused ``ssm_step`` per layer, CUDA graph),
  ``tnn_cache`` (dot product of the kernel with the cached prefix), ``fft`` (recompute the prefix by FFT, the
  original TNN), ``original`` (the ETSC paper's eager torch decode with all n unfolded modes:
  ``u = lam*u + b*x; y = u.sum().real``).
* ``prefill_layer`` (x = prompt length, 8192 at full size): one converted layer serving a prompt, outputs +
  final state. Providers: ``triton`` (FFT outputs + folded-DFT state), ``step_loop`` (``ssm_step`` token by
  token), ``scan`` (``ssm_scan``).
* ``truncation`` (values, x = modes kept): kernel error and its bound under mode truncation, for kernels from
  the relative-position MLP with decay and for random kernels; ``plot`` draws ``truncation.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import etsc_triton as et
from etsc_triton.nn.tnn import RelativePositionMLP, TNNConfig, TNNLanguageModel, make_decoder
from etsc_triton.nn.toeplitz import ToeplitzSSM

from .plots import plt, save_loglog

FAMILY = "decode"


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


def _decode_sweep(ctx, model: TNNLanguageModel, batches, lengths, backend: str) -> None:
    config = model.config
    for batch in batches:
        cfg = {"batch": batch, "d": config.d_model, "layers": config.n_layers, "n": config.n}
        gen = torch.Generator().manual_seed(batch)
        for length in lengths:
            prompt = torch.randint(0, config.vocab_size, (batch, length), generator=gen).to(ctx.device)
            token = prompt[:, -1].clone()
            for provider in ("triton", "tnn_cache", "fft"):
                name = "ssm" if provider == "triton" else provider
                kwargs = {"backend": backend} if name == "ssm" else {}
                decoder = make_decoder(model, name, length + 2, **kwargs)
                with torch.no_grad():
                    decoder.prefill(prompt)

                def one_token(decoder=decoder, length=length, token=token):
                    with torch.no_grad():
                        decoder.length = length
                        return decoder.step(token)

                ctx.time(op="decode_token", provider=provider, x_name="length", x_value=length, config=cfg,
                         fn=one_token)
                del decoder
            original = OriginalETSCDecoder(model, batch)

            def original_token(original=original, token=token):
                with torch.no_grad():
                    return original.step(token)

            ctx.time(op="decode_token", provider="original", x_name="length", x_value=length, config=cfg,
                     fn=original_token)


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
            ctx.value(
                op="prefill_layer",
                provider="triton",
                metric="state_rel_err",
                value=err,
                x_name="prompt_len",
                x_value=length,
                config=cfg,
            )


def mode_truncation_study(t: torch.Tensor, gamma: float | torch.Tensor, ranks: list[int]) -> list[dict]:
    """State size vs kernel error under mode truncation, for one set of kernels ``t [D, n]``.

    Returns one row per rank: ``{"rank", "state_fraction", "bound", "error"}``, where ``bound`` and ``error``
    are the worst channel's ``sum of dropped |b|`` and measured ``max_j |K_ssm - K_exact|``, both relative to
    the worst channel's ``max_j |K_exact|``.

    What it shows: the inclusive reformulation appends ``t_n = -(t_0 + .. + t_{n-1})``, a spike whose flat
    spectrum gives every mode ``|b_k| >= |sum t| / m``. Kernels with a large mean (smooth MLP kernels) then
    spread their weight over all modes and truncate badly; the same large ``sum |b|`` also sets the float32
    rounding of the full conversion (about ``eps * sum |b|``).
    """
    layer = ToeplitzSSM(t, gamma)
    scale = layer.kernel(layer.n + 1, tail="ssm", dtype=torch.float64).abs().amax(-1).clamp_min(1e-300)
    full = math.ceil(layer.n / 2)
    rows = []
    for rank in ranks:
        report = layer.convert(rank=min(rank, full))
        rows.append(
            {
                "rank": report.state_size,
                "state_fraction": report.state_size / full,
                "bound": float((report.truncation_bound / scale).max()),
                "error": float((report.kernel_error / scale).max()),
            }
        )
    return rows


def _truncation_study(ctx, channels: int, n: int) -> None:
    gen = torch.Generator().manual_seed(1)
    decay = 0.99
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        mlp = RelativePositionMLP(channels, 64, n, decay)
    with torch.no_grad():
        kernels = {"mlp_decay": mlp(n), "random": torch.randn(channels, n, generator=gen)}
    full = math.ceil(n / 2)
    ranks = sorted({min(full, 1 << i) for i in range(full.bit_length() + 1)})
    for kind, t in kernels.items():
        for row in mode_truncation_study(t.to(ctx.device), decay, ranks):
            cfg = {"kernels": kind, "n": n, "d": channels, "gamma": decay}
            for metric in ("error", "bound"):
                ctx.value(
                    op="truncation",
                    provider=kind,
                    metric=f"kernel_{metric}",
                    value=row[metric],
                    x_name="modes",
                    x_value=row["rank"],
                    config=cfg,
                )


def run(ctx) -> None:
    backend = "triton" if ctx.on_gpu or ctx.quick else "auto"
    if ctx.quick:
        config = TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8, decay=0.95)
    else:
        config = TNNConfig(vocab_size=256, d_model=512, n_layers=6, n=2048, rpe_hidden=64, decay=0.99)
    model = TNNLanguageModel(config).to(ctx.device)
    _decode_sweep(
        ctx,
        model,
        ctx.sizes(quick=[1], full=[1, 16]),
        ctx.sizes(quick=[8, 40], full=[64, 256, 1024, 2048, 4096, 8192]),
        backend,
    )
    _prefill_sweep(
        ctx,
        ctx.sizes(quick=[8], full=[512])[0],
        config.n,
        ctx.sizes(quick=[1], full=[1, 16]),
        ctx.sizes(quick=[64], full=[8192]),
        backend,
    )
    _truncation_study(ctx, ctx.sizes(quick=[8], full=[64])[0], ctx.sizes(quick=[63], full=[2048])[0])


def plot(rows, out_dir):
    """``truncation.png``: relative kernel error (measured, solid) and its bound (dashed) vs modes kept."""
    points = [r for r in rows if r["op"] == "truncation"]
    if not points:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colors = {"mlp_decay": "tab:green", "random": "tab:red"}
    for kind in sorted({r["provider"] for r in points}):
        for metric, style in (("kernel_error", "o-"), ("kernel_bound", "s--")):
            series = sorted(
                (r["x_value"], r["p50"]) for r in points if r["provider"] == kind and r["metric"] == metric
            )
            xs = [x for x, _ in series]
            ys = [max(y, 1e-12) for _, y in series]
            label = f"{kind}: {'measured max error' if metric == 'kernel_error' else 'bound sum |b| dropped'}"
            ax.plot(xs, ys, style, color=colors.get(kind, None), label=label)
    cfg = json.loads(points[0]["config"])
    title = (f"ETSC mode truncation: n={cfg['n']}, {cfg['d']} channels, gamma={cfg['gamma']} "
             f"({points[0]['gpu']})\nrelative-position-MLP kernels with decay vs random kernels")
    path = save_loglog(fig, ax, Path(out_dir) / "truncation.png", dpi=120, title=title,
                       xlabel="modes kept per channel (state size)",
                       ylabel="kernel error / max |kernel| (worst channel)")
    return [path]

