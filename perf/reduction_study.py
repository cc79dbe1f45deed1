"""``python -m perf.reduction_study``: the accuracy studies of order reduction and of ETSC mode truncation (CPU
is enough: they measure errors, not time).

Reduction (``reduction.csv``, ``reduction.png``, a table on stdout): five kernel families, ``--channels`` kernels
each over ``--length`` lags: the shipped trained TNN's position-MLP kernels (the MLP in float64), a random
relative-position MLP times ``0.99^j``, sums of 12 damped modes plus ``1e-6`` noise, S4D-Lin (N = 64, zero-order
hold, reduced from its modes) and Hyena-style implicit filters. Per rank, against the library's float64
balanced truncation of real order 2r (:func:`etsc_triton.ops.reduce.naive.balanced_truncation`), its modes
rounded to complex64, and the same restricted to what fits r folded slots (one conjugate pair or one real pole
per slot: equal state bytes without two real poles per slot); the Hankel lower bound; the DFT truncation. Then
``tol=1e-5`` per family (the default ``max_rank``: the exact modes answer where no fitted rank does): whether
it returns, its ranks and time.

Truncation (``truncation.csv``, ``truncation.png``): the ETSC mode truncation's error and bound against the modes
kept, for position-MLP kernels and random kernels.

CSVs go to ``perf/results/accuracy/``, plots to ``plots/accuracy/`` (``--out DIR``: both). The trained model's
whole reduction is ``python -m etsc_triton.demo.reductions``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

import etsc_triton as et
from etsc_triton.demo.checkpoint import load_shipped
from etsc_triton.demo.model import RelativePositionMLP
from etsc_triton.nn.toeplitz import ToeplitzSSM
from etsc_triton.ops.reduce import Reduction, reduce_toeplitz
from etsc_triton.ops.reduce.naive import balanced_truncation

from . import harness
from .plots import plt, save_figure, save_loglog

REPO = Path(__file__).resolve().parent.parent
RANKS = (1, 2, 3, 4, 6, 8, 12, 16)
QUICK_RANKS = (1, 2, 4)
TOL = 1e-5
Family = tuple[str, torch.Tensor, Callable[[int | None, float | None, int | None], Reduction],
               tuple[torch.Tensor, float] | None]


def trained_taps(channels: int, length: int) -> tuple[torch.Tensor, float]:
    """The shipped trained model's position-MLP taps (float64 MLP) over ``length`` lags: ``channels`` channels
    spread evenly over its layers and channels; its decay."""
    model, _ = load_shipped()
    with torch.no_grad():
        taps = torch.cat([block.coefficients(length, dtype=torch.float64) for block in model.blocks])
    pick = torch.linspace(0, taps.shape[0] - 1, channels).round().long()
    return taps[pick], model.blocks[0].decay


def mlp_taps(channels: int, length: int, decay: float = 0.99, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A randomly initialised relative-position MLP (64 hidden), by default evaluated in float64: its float32
    rounding noise (up to ~1e-4 of max|K|) is no low-order kernel."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        mlp = RelativePositionMLP(channels, 64, length, decay)
    with torch.no_grad():
        return mlp.to(dtype)(length)


def damped_mode_taps(channels: int, length: int, modes: int = 12, noise: float = 1e-6) -> torch.Tensor:
    """Sums of ``modes`` damped real oscillations (radii 0.95 .. 0.999, frequencies below 0.3 rad per lag, most of
    them slow) plus white noise of ``noise * max|t|`` (float64)."""
    gen = torch.Generator().manual_seed(2)
    radius = 1 - 10 ** (-1.3 - 1.7 * torch.rand(channels, modes, generator=gen, dtype=torch.float64))
    angle = 0.3 * torch.rand(channels, modes, generator=gen, dtype=torch.float64) ** 2
    lam = torch.polar(radius, angle)
    b = torch.complex(torch.randn(channels, modes, generator=gen, dtype=torch.float64),
                      torch.randn(channels, modes, generator=gen, dtype=torch.float64))
    t = et.reference.ssm_kernel(lam, b, length)
    return t + noise * t.abs().amax(-1, keepdim=True) * torch.randn(channels, length, generator=gen,
                                                                     dtype=torch.float64)


def s4d_lin_modes(channels: int, state: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """S4D-Lin, discretised by zero-order hold: ``state / 2`` conjugate modes ``A_n = -1/2 + i pi n``, step
    ``dt`` log-uniform in [1e-3, 1e-1] per channel, ``B = 1``, ``C`` complex normal; folded
    ``lam = exp(dt A)``, ``b = 2 C (exp(dt A) - 1) / A`` (complex128 `[C, state / 2]`)."""
    gen = torch.Generator().manual_seed(3)
    modes = state // 2
    a = torch.complex(torch.full((modes,), -0.5, dtype=torch.float64),
                      math.pi * torch.arange(modes, dtype=torch.float64))
    dt = torch.exp(math.log(1e-3) + math.log(100.0) * torch.rand(channels, 1, generator=gen, dtype=torch.float64))
    c = torch.complex(torch.randn(channels, modes, generator=gen, dtype=torch.float64),
                      torch.randn(channels, modes, generator=gen, dtype=torch.float64)) * math.sqrt(0.5)
    lam = torch.exp(dt * a)
    return lam, 2 * c * (lam - 1) / a


def hyena_taps(channels: int, length: int, emb_dim: int = 33, order: int = 64) -> torch.Tensor:
    """Hyena-style implicit filters at initialisation: ``h(t) = MLP(z(t)) * exp(-t |delta_c|)``, the positional
    encoding ``z = (t, cos(f w), sin(f w))`` with 16 bands, the MLP ``Linear-sin-Linear-sin-Linear`` (``order``
    wide), the windows' decay spread from ``log(1e-2) / 1.5`` to ``log(1e-2) / 0.3`` over the channels
    (float64, ``t`` in [0, 1])."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        layers = [torch.nn.Linear(emb_dim, order), torch.nn.Linear(order, order),
                  torch.nn.Linear(order, channels, bias=False)]
    bands = (emb_dim - 1) // 2
    t = torch.linspace(0, 1, length, dtype=torch.float64)[:, None]
    w = 2 * math.pi * torch.arange(length, dtype=torch.float64)[:, None] / length
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)[None, :]
    z = torch.cat([t, torch.cos(f * w), -torch.sin(f * w)], dim=1)
    with torch.no_grad():
        h = z
        for i, layer in enumerate(layers):
            bias = None if layer.bias is None else layer.bias.double()
            h = torch.nn.functional.linear(h, layer.weight.double(), bias)
            h = torch.sin(h) if i < 2 else h
    deltas = torch.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, channels, dtype=torch.float64).abs()
    return (h * torch.exp(-t * deltas[None, :])).T.contiguous()


def kernel_families(channels: int, length: int) -> list[Family]:
    """``(name, kernel [C, L] float64, reduce(rank, tol, max_rank), taps (t, gamma) or None)`` of the families."""
    lags = torch.arange(length, dtype=torch.float64)
    trained, decay = trained_taps(channels, length)
    families: list[Family] = [
        (name, t * gamma**lags, lambda rank, tol, cap, t=t, gamma=gamma:
         reduce_toeplitz(t, gamma, rank, tol=tol, max_rank=cap),
         (t, gamma))
        for name, t, gamma in (("trained", trained, decay), ("mlp_decay", mlp_taps(channels, length), 0.99),
                               ("damped_modes", damped_mode_taps(channels, length), 1.0))]
    lam, b = s4d_lin_modes(channels)
    families.append(("s4d_lin", et.reference.ssm_kernel(lam, b, length),
                     lambda rank, tol, cap: et.reduce_ssm(lam, b, rank, length=length, tol=tol, max_rank=cap), None))
    hyena = hyena_taps(channels, length)
    families.append(("hyena", hyena, lambda rank, tol, cap: reduce_toeplitz(hyena, 1.0, rank, tol=tol, max_rank=cap),
                     None))
    return families


def _relative_error(kernel: torch.Tensor, lam: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``max_j |K_j - K^r_j| / max_j |K_j|`` per channel, the modes evaluated in float64."""
    reduced = et.reference.ssm_kernel(lam.to(torch.complex128), b.to(torch.complex128), kernel.shape[-1])
    return (kernel - reduced).abs().amax(-1) / kernel.abs().amax(-1)


def reduction_study(ctx: harness.Context, channels: int, length: int, ranks=RANKS) -> None:
    """Per family and rank (errors relative to each channel's ``max|K|``): ``reduce`` ``max_error_median`` /
    ``_max``, ``bound_max``; ``balanced_f64`` / ``balanced_c64`` (order 2r, float64 / rounded to complex64) and
    ``balanced_slots_f64`` (the largest order whose poles fold into r slots) ``max_error_median``; ratios
    ``over_balanced_f64_median`` (over the channels whose order-2r poles fit r slots), ``over_balanced_f64_max``,
    ``over_balanced_c64_median`` / ``_max``; ``pairing_gain_median`` / ``_max`` (balanced_slots_f64 /
    balanced_f64: what two real poles per slot would gain at equal state bytes); ``monotone_violations``
    (channels whose bound exceeds the previous rank's); ``l1_over_lower_bound_median`` / ``_max`` (l1 error over
    ``max(sigma_(2r+1), 1e-5 sum|K|)``); ``truncate`` ``max_error_max``. Then ``tol=1e-5``."""
    orders = list(range(1, 2 * max(ranks) + 1))
    for name, kernel, reduce, taps in kernel_families(channels, length):
        cfg = {"kernels": name, "length": length, "d": channels}
        scale, l1_norm = kernel.abs().amax(-1), kernel.abs().sum(-1)
        sigma = et.reference.hankel_singular_values(kernel)
        balanced = dict(zip(orders, balanced_truncation(kernel, orders), strict=True))
        slots = {k: (lam != 0).sum(-1) for k, (lam, _) in balanced.items()}
        err64 = {k: _relative_error(kernel, lam, b) for k, (lam, b) in balanced.items()}
        layer = None if taps is None else ToeplitzSSM(taps[0].float(), taps[1])
        previous = None
        for rank in ranks:
            result = reduce(rank, None, None)
            ours, bound = _relative_error(kernel, result.lam, result.b), result.bound.double() / scale
            lam2r, b2r = balanced[2 * rank]
            err32 = _relative_error(kernel, lam2r.to(torch.complex64), b2r.to(torch.complex64))
            fitting = torch.stack([slots[k] <= rank for k in range(1, 2 * rank + 1)], 1)
            best_order = (fitting * torch.arange(1, 2 * rank + 1)).amax(1)
            in_slots = torch.stack([err64[int(k)][c] for c, k in enumerate(best_order)])
            fits, gap, pairing = slots[2 * rank] <= rank, ours / err64[2 * rank], in_slots / err64[2 * rank]
            lower = sigma[:, 2 * rank] if 2 * rank < sigma.shape[1] else torch.zeros(channels, dtype=torch.float64)
            reduced = et.reference.ssm_kernel(result.lam.to(torch.complex128), result.b.to(torch.complex128), length)
            ratio_l1 = (kernel - reduced).abs().sum(-1) / torch.maximum(lower, 1e-5 * l1_norm)
            values = {
                ("reduce", "max_error_median"): ours.median(), ("reduce", "max_error_max"): ours.max(),
                ("reduce", "bound_max"): bound.max(),
                ("balanced_f64", "max_error_median"): err64[2 * rank].median(),
                ("balanced_c64", "max_error_median"): err32.median(),
                ("balanced_slots_f64", "max_error_median"): in_slots.median(),
                ("reduce", "over_balanced_f64_median"): gap[fits].median() if bool(fits.any()) else math.nan,
                ("reduce", "over_balanced_f64_max"): gap.max(),
                ("reduce", "over_balanced_c64_median"): (ours / err32).median(),
                ("reduce", "over_balanced_c64_max"): (ours / err32).max(),
                ("balanced_f64", "pairing_gain_median"): pairing.median(),
                ("balanced_f64", "pairing_gain_max"): pairing.max(),
                ("reduce", "monotone_violations"): 0 if previous is None else (bound > previous).sum(),
                ("reduce", "l1_over_lower_bound_median"): ratio_l1.median(),
                ("reduce", "l1_over_lower_bound_max"): ratio_l1.max(),
            }
            previous = bound
            if layer is not None and rank < layer.n // 2:
                layer.convert(rank=rank)
                truncated = et.ssm_kernel(layer.lam, layer.b, length).double()
                values[("truncate", "max_error_max")] = ((kernel - truncated).abs().amax(-1) / scale).max()
            for (provider, metric), value in values.items():
                ctx.value(op="reduction", provider=provider, metric=metric, value=float(value), x_name="modes",
                          x_value=rank, config=cfg)
        start = time.perf_counter()
        try:
            result = reduce(None, TOL, None)  # the default max_rank: the exact modes answer where no fit does
            values = {"returned": 1.0, "rank": float(result.lam.shape[-1]),
                      "rank_median": float(result.ranks.double().median()),
                      "worst_relative_bound": float((result.bound.double() / scale).max())}
        except ValueError:
            values = {"returned": 0.0}
        values["seconds"] = time.perf_counter() - start
        for metric, value in values.items():
            ctx.value(op="reduction_tol", provider=f"tol{TOL:g}", metric=metric, value=value, x_name="channels",
                      x_value=channels, config=cfg)


TABLE = (("over_balanced_f64_median", "/bt64 med"), ("over_balanced_f64_max", "/bt64 max"),
         ("over_balanced_c64_median", "/bt32 med"), ("over_balanced_c64_max", "/bt32 max"),
         ("pairing_gain_median", "pair med"), ("pairing_gain_max", "pair max"), ("monotone_violations", "mono"),
         ("l1_over_lower_bound_median", "l1/lb med"), ("l1_over_lower_bound_max", "l1/lb max"))


def reduction_table(rows: list[dict]) -> str:
    """The study as text: per family and rank the ratios of :data:`TABLE`, then the ``tol`` row."""
    points: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        if r["op"] in ("reduction", "reduction_tol"):
            points.setdefault((json.loads(r["config"])["kernels"], float(r["x_value"]) if r["op"] == "reduction"
                               else -1.0), {})[r["metric"]] = float(r["p50"])
    lines = [f"{'family':<13}{'r':>3}" + "".join(f"{label:>10}" for _, label in TABLE)]
    for (name, rank), m in points.items():
        if rank < 0:
            lines.append(f"{name:<13}tol={TOL:g}: " + ("raised" if not m.get("returned") else
                         f"rank {m['rank']:.0f} (median channel {m['rank_median']:.0f}), worst bound "
                         f"{m['worst_relative_bound']:.2e}") + f", {m['seconds']:.1f} s")
        else:
            lines.append(f"{name:<13}{rank:>3.0f}" + "".join(f"{m.get(key, math.nan):>10.3g}" for key, _ in TABLE))
    return "\n".join(lines)


def mode_truncation_study(t: torch.Tensor, gamma: float | torch.Tensor, ranks: list[int]) -> list[dict]:
    """State size vs kernel error under mode truncation of kernels ``t [D, n]``: per rank ``{"rank",
    "state_fraction", "bound", "error"}``, the worst channel's sum of dropped ``|b|`` and measured max error, both
    relative to its ``max|K|``. The zero-sum extension's spike ``t_n = -sum t`` gives every mode
    ``|b_k| >= |sum t| / m``: kernels with a large mean spread over all modes and truncate badly."""
    layer = ToeplitzSSM(t, gamma)
    scale = layer.kernel(layer.n + 1, tail="ssm", dtype=torch.float64).abs().amax(-1).clamp_min(1e-300)
    full = math.ceil(layer.n / 2)
    reports = [layer.convert(rank=min(rank, full)) for rank in ranks]
    return [{"rank": r.state_size, "state_fraction": r.state_size / full,
             "bound": float((r.truncation_bound / scale).max()), "error": float((r.kernel_error / scale).max())}
            for r in reports]


def truncation_study(ctx: harness.Context, channels: int, n: int) -> None:
    """``mode_truncation_study`` for position-MLP kernels (``0.99^j``) and random kernels, modes 1, 2, 4, ..."""
    gen, decay = torch.Generator().manual_seed(1), 0.99
    kernels = {"mlp_decay": mlp_taps(channels, n, decay, torch.float32),
               "random": torch.randn(channels, n, generator=gen)}
    full = math.ceil(n / 2)
    ranks = sorted({min(full, 1 << i) for i in range(full.bit_length() + 1)})
    for kind, t in kernels.items():
        for row in mode_truncation_study(t.to(ctx.device), decay, ranks):
            cfg = {"kernels": kind, "n": n, "d": channels, "gamma": decay}
            for metric in ("error", "bound"):
                ctx.value(op="truncation", provider=kind, metric=f"kernel_{metric}", value=row[metric],
                          x_name="modes", x_value=row["rank"], config=cfg)


STYLES = (("reduce", "max_error_max", "o-", "tab:blue", "reduction (worst)"),
          ("reduce", "max_error_median", "o--", "tab:blue", "reduction (median)"),
          ("reduce", "bound_max", "x:", "tab:blue", "certified bound (worst)"),
          ("balanced_f64", "max_error_median", "s--", "tab:green", "balanced truncation f64 (median)"),
          ("balanced_c64", "max_error_median", "^--", "tab:orange", "balanced truncation c64 (median)"),
          ("balanced_slots_f64", "max_error_median", "v--", "tab:olive", "balanced in r slots f64 (median)"),
          ("truncate", "max_error_max", "d-", "tab:red", "DFT truncation (worst)"))


def plot_reduction(rows: list[dict], out_dir: Path) -> list[Path]:
    """``reduction.png``: per family, max error / max|K| against folded modes."""
    points = [r for r in rows if r["op"] == "reduction"]
    if not points:
        return []
    kinds = list(dict.fromkeys(json.loads(r["config"])["kernels"] for r in points))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.8 * len(kinds), 4.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        mine = [r for r in points if json.loads(r["config"])["kernels"] == kind]
        for provider, metric, style, color, label in STYLES:
            xy = sorted((float(r["x_value"]), max(float(r["p50"]), 1e-17)) for r in mine
                        if r["provider"] == provider and r["metric"] == metric)
            if xy:
                ax.plot(*zip(*xy, strict=True), style, color=color, label=label, markersize=3)
        ax.set(xscale="log", yscale="log", xlabel="folded modes per channel", ylabel="max error / max|K|",
               title=f"{kind}: {json.loads(mine[0]['config'])['length']} lags")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return [save_figure(fig, Path(out_dir) / "reduction.png", dpi=120)]


def plot_truncation(rows: list[dict], out_dir: Path) -> list[Path]:
    """``truncation.png``: relative kernel error (measured, solid) and its bound (dashed) vs modes kept."""
    points = [r for r in rows if r["op"] == "truncation"]
    if not points:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind in sorted({r["provider"] for r in points}):
        for metric, style in (("kernel_error", "o-"), ("kernel_bound", "s--")):
            xy = sorted((float(r["x_value"]), max(float(r["p50"]), 1e-12)) for r in points
                        if r["provider"] == kind and r["metric"] == metric)
            ax.plot(*zip(*xy, strict=True), style, label=f"{kind}: {metric.removeprefix('kernel_')}")
    cfg = json.loads(points[0]["config"])
    return [save_loglog(fig, ax, Path(out_dir) / "truncation.png", dpi=120, xlabel="modes kept per channel",
                        title=f"ETSC mode truncation: n={cfg['n']}, {cfg['d']} channels, gamma={cfg['gamma']}",
                        ylabel="kernel error / max |kernel| (worst channel)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.reduction_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for the CSVs and the plots")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help=f"ranks {QUICK_RANKS} only")
    parser.add_argument("--ranks", type=lambda text: tuple(int(r) for r in text.split(",")), default=RANKS)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results, plots = args.out or REPO / "perf" / "results" / "accuracy", args.out or REPO / "plots" / "accuracy"
    ranks = QUICK_RANKS if args.quick else args.ranks
    studies = [("truncation", lambda ctx: truncation_study(ctx, 64, args.length), plot_truncation),
               ("reduction", lambda ctx: reduction_study(ctx, args.channels, args.length, ranks), plot_reduction)]
    for name, study, draw in studies:
        ctx = harness.Context(device=device, quick=False, floors=harness.Floors(math.nan, math.nan))
        ctx.family = "accuracy"
        study(ctx)
        harness.write_results(ctx.rows, results / f"{name}.csv")
        print(*draw(ctx.rows, plots), sep="\n")
        if name == "reduction":
            print(reduction_table(ctx.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
