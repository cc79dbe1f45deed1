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
* ``reduction`` (values, x = folded modes): order reduction (``toeplitz_to_ssm(rank=...)``) against the DFT
  truncation and the Hankel lower bound ``sigma_(2r+1)``, on the MLP kernels and on sums of damped modes plus
  noise; ``plot`` draws ``reduction.png``.
* ``decode_layer_step`` (x = batch): one layer's decode step (``ssm_step``) at the ETSC state (``ceil(n/2)``
  modes) and at the reduced rank, with the bytes each step moves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import etsc_triton as et
from etsc_triton.demo.model import RelativePositionMLP, TNNConfig, TNNLanguageModel, make_decoder
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


REDUCTION_RANKS = (1, 2, 4, 8, 16, 32)


def _damped_mode_taps(channels: int, n: int, modes: int = 12, noise: float = 1e-6) -> torch.Tensor:
    """Taps that are sums of ``modes`` damped real oscillations (radii 0.95 .. 0.999, frequencies below 0.3 rad
    per lag, most of them slow) plus white noise of ``noise * max|t|`` (float64)."""
    gen = torch.Generator().manual_seed(2)
    radius = 1 - 10 ** (-1.3 - 1.7 * torch.rand(channels, modes, generator=gen, dtype=torch.float64))
    angle = 0.3 * torch.rand(channels, modes, generator=gen, dtype=torch.float64) ** 2
    lam = torch.polar(radius, angle)
    b = torch.complex(torch.randn(channels, modes, generator=gen, dtype=torch.float64),
                      torch.randn(channels, modes, generator=gen, dtype=torch.float64))
    t = et.reference.ssm_kernel(lam, b, n)
    return t + noise * t.abs().amax(-1, keepdim=True) * torch.randn(channels, n, generator=gen, dtype=torch.float64)


def _reduction_study(ctx, channels: int, n: int, ranks) -> None:
    """Error vs rank of the DFT truncation, the reduction and the Hankel lower bound, over lags ``j < n``.

    Metrics (x = folded modes): ``max_error`` (worst channel's ``max_j |K - K^r| / max_j |K|``; for the
    reduction also ``bound``, its certified bound), ``l1_error`` (median channel's ``sum_j |K - K^r| / sum_j
    |K|``), ``lower_bound`` (median ``sigma_(2r+1) / sum_j |K|``), and ``l1_over_lower_bound`` (median and
    worst channel's l1 error over ``max(sigma_(2r+1), 1e-5 sum_j |K|)``, the floor complex64 poles resolve).
    """
    decay = 0.99
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        mlp = RelativePositionMLP(channels, 64, n, decay)
    with torch.no_grad():
        # the MLP in float64: its float32 rounding noise (up to ~1e-4 of max|K|) is no low-order kernel
        families = {"mlp_decay": (mlp.double()(n), decay), "damped_modes": (_damped_mode_taps(channels, n), 1.0)}
    lags = torch.arange(n, dtype=torch.float64)
    for kind, (t, gamma) in families.items():
        cfg = {"kernels": kind, "n": n, "d": channels, "gamma": gamma}
        kernel = t * gamma**lags
        scale, l1_norm = kernel.abs().amax(-1), kernel.abs().sum(-1)
        sigma = et.reference.hankel_singular_values(kernel)
        layer = ToeplitzSSM(t.float(), gamma)
        for rank in ranks:
            layer.convert(rank=rank)
            truncated = et.ssm_kernel(layer.lam, layer.b, n).double()
            lam_r, b_r, bound = et.toeplitz_to_ssm(t.to(ctx.device), gamma, rank=rank)
            reduced = et.reference.ssm_kernel(lam_r.cpu().to(torch.complex128), b_r.cpu().to(torch.complex128), n)
            lower = sigma[:, 2 * rank] if 2 * rank < sigma.shape[1] else torch.zeros(channels, dtype=torch.float64)
            l1 = (kernel - reduced).abs().sum(-1)
            ratio = l1 / torch.maximum(lower, 1e-5 * l1_norm)
            values = {
                ("truncate", "max_error"): ((kernel - truncated).abs().amax(-1) / scale).max(),
                ("reduce", "max_error"): ((kernel - reduced).abs().amax(-1) / scale).max(),
                ("reduce", "bound"): (bound.cpu().double() / scale).max(),
                ("reduce", "l1_error"): (l1 / l1_norm).median(),
                ("truncate", "l1_error"): ((kernel - truncated).abs().sum(-1) / l1_norm).median(),
                ("hankel_lower_bound", "lower_bound"): (lower / l1_norm).median(),
                ("reduce", "l1_over_lower_bound_median"): ratio.median(),
                ("reduce", "l1_over_lower_bound_max"): ratio.max(),
            }
            for (provider, metric), value in values.items():
                ctx.value(op="reduction", provider=provider, metric=metric, value=float(value), x_name="modes",
                          x_value=rank, config=cfg)


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
    if ctx.quick:
        config = TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8, decay=0.95)
    else:
        config = TNNConfig(vocab_size=256, d_model=512, n_layers=6, n=2048, rpe_hidden=64, decay=0.99)
    model = TNNLanguageModel(config).to(ctx.device)
    for batch in ctx.sizes(quick=[1], full=[1, 16]):
        decode_sweep(ctx, model, batch, ctx.sizes(quick=[8, 40], full=[64, 256, 1024, 2048, 4096, 8192]), backend)
    _prefill_sweep(
        ctx,
        ctx.sizes(quick=[8], full=[512])[0],
        config.n,
        ctx.sizes(quick=[1], full=[1, 16]),
        ctx.sizes(quick=[64], full=[8192]),
        backend,
    )
    _truncation_study(ctx, ctx.sizes(quick=[8], full=[64])[0], ctx.sizes(quick=[63], full=[2048])[0])
    _reduced_step(ctx, model, ctx.sizes(quick=[1, 4], full=[1, 16, 64]), backend)
    _reduction_study(ctx, ctx.sizes(quick=[4], full=[32])[0], ctx.sizes(quick=[63], full=[2048])[0],
                     ctx.sizes(quick=[1, 2, 4], full=REDUCTION_RANKS))


def plot(rows, out_dir):
    """``truncation.png`` and ``reduction.png``."""
    return _plot_truncation(rows, out_dir) + _plot_reduction(rows, out_dir)


def _plot_reduction(rows, out_dir):
    """``reduction.png``: per kernel family, the worst channel's max error (truncation, reduction, its bound) and
    the median l1 error of the reduction against the Hankel lower bound, vs folded modes."""
    points = [r for r in rows if r["op"] == "reduction"]
    if not points:
        return []
    kinds = sorted({json.loads(r["config"])["kernels"] for r in points})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.0 * len(kinds), 4.6), squeeze=False)
    styles = [
        ("truncate", "max_error", "o-", "tab:red", "DFT truncation: max error (worst channel)"),
        ("reduce", "max_error", "o-", "tab:blue", "reduction: max error (worst channel)"),
        ("reduce", "bound", "x:", "tab:blue", "reduction: certified bound (worst channel)"),
        ("truncate", "l1_error", "s--", "tab:orange", "DFT truncation: l1 error (median)"),
        ("reduce", "l1_error", "s--", "tab:green", "reduction: l1 error (median)"),
        ("hankel_lower_bound", "lower_bound", "^-", "black", "Hankel lower bound sigma_(2r+1) (median)"),
    ]
    paths = []
    for ax, kind in zip(axes[0], kinds, strict=True):
        mine = [r for r in points if json.loads(r["config"])["kernels"] == kind]
        for provider, metric, style, color, label in styles:
            series = sorted(
                (r["x_value"], r["p50"]) for r in mine if r["provider"] == provider and r["metric"] == metric
            )
            if series:
                ys = [max(y, 1e-17) for _, y in series]
                ax.plot([x for x, _ in series], ys, style, color=color, label=label)
        cfg = json.loads(mine[0]["config"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{kind}: n={cfg['n']}, {cfg['d']} channels, gamma={cfg['gamma']}", fontsize=9)
        ax.set_xlabel("folded modes per channel (state size)")
        ax.set_ylabel("max error / max|K|, l1 error / sum|K|")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Order reduction vs ETSC mode truncation ({points[0]['gpu']})", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "reduction.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(path)
    return paths


def _plot_truncation(rows, out_dir):
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

