"""Draw the plots and the summary table from long-format results rows (a separate step from timing).

Per (op, mode, x_name, config) group: time against x for every provider (median, p20-p80 band), the floor
(bytes / copy bandwidth or flops / FMA rate, whichever is larger) as a dashed line, and the speedup of
``triton`` over the best baseline annotated at each point (our variants, ``triton_*``, are drawn but are not
baselines). Titles say what, where and on which GPU.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OURS = "triton"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


def _config_label(config: str) -> str:
    items = json.loads(config or "{}")
    return ", ".join(f"{k}={v}" for k, v in items.items())


def save_loglog(fig, ax, path: Path, *, title: str, xlabel: str, ylabel: str, dpi: int = 110) -> Path:
    """Finish a log2-x / log-y figure the same way everywhere (labels, grid, legend), save it and close it."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi)


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay the figure out, save it (creating the folder) and close it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def timing_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Time rows grouped by (op, mode, x_name, config)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["metric"] == "time":
            groups[(row["op"], row["mode"], row["x_name"], row["config"])].append(row)
    return groups


def by_x(rows: list[dict]) -> list[tuple[float, list[dict]]]:
    """Rows grouped by their x value, in x order."""
    groups: dict[float, list[dict]] = defaultdict(list)
    for row in rows:
        groups[float(row["x_value"])].append(row)
    return sorted(groups.items())


def best_baseline(points: list[dict]) -> dict | None:
    """The fastest baseline row among rows at one x; our own variants (``triton*``) are not baselines."""
    others = [r for r in points if not r["provider"].startswith(OURS) and r["p50"] is not None]
    return min(others, key=lambda r: r["p50"]) if others else None


def draw_group(key: tuple, rows: list[dict], out_dir: Path) -> Path:
    op, mode, x_name, config = key
    gpu = rows[0]["gpu"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by_provider: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_provider[row["provider"]].append(row)
    for provider, points in sorted(by_provider.items(), key=lambda kv: kv[0] != OURS):
        points.sort(key=lambda r: float(r["x_value"]))
        xs = [float(r["x_value"]) for r in points]
        ax.plot(xs, [r["p50"] for r in points], marker="o", lw=2.2 if provider == OURS else 1.4, label=provider)
        ax.fill_between(xs, [r["p20"] for r in points], [r["p80"] for r in points], alpha=0.2)
    floor_points = sorted((float(r["x_value"]), r["floor"]) for r in by_provider.get(OURS, []) if r["floor"])
    if floor_points:
        ax.plot(*zip(*floor_points), ls="--", color="black", label="floor (bytes/BW, L2 bytes/L2 BW, flops/FMA rate)")
    for x, points in by_x(rows):
        ours = [r for r in points if r["provider"] == OURS]
        best = best_baseline(points)
        if ours and best and ours[0]["p50"]:
            ax.annotate(f"{best['p50'] / ours[0]['p50']:.1f}x", (x, ours[0]["p50"]), textcoords="offset points",
                        xytext=(0, -14), ha="center", fontsize=8)
    label = _config_label(config)
    title = (f"{op} ({mode}) vs {x_name}{' | ' + label if label else ''}\n"
             f"on {gpu}; annotation: speedup of triton over the best baseline")
    path = out_dir / f"{_slug(op)}_{_slug(mode)}_vs_{_slug(x_name)}_{_slug(label) or 'all'}.png"
    return save_loglog(fig, ax, path, title=title, xlabel=x_name, ylabel="time (ms, median; band p20-p80)")


def draw_all(rows: list[dict], out_dir: Path) -> list[Path]:
    """Every timing plot of the rows, one per (op, mode, x_name, config) group."""
    return [draw_group(key, group, out_dir) for key, group in sorted(timing_groups(rows).items())]


def summary_table(rows: list[dict], floors) -> str:
    """One line per timed point: triton's median, the best baseline, the speedup and the fraction of floor."""
    lines = [f"copy bandwidth {floors.copy_gbps:.0f} GB/s, L2 copy {floors.l2_gbps:.0f} GB/s, "
             f"fp32 rate {floors.fp32_tflops:.1f} TFLOP/s",
             f"{'op':<18}{'mode':<9}{'x':<14}{'config':<34}{'triton ms':>11}{'best baseline':>26}"
             f"{'speedup':>9}{'of floor':>10}"]
    for (op, mode, x_name, config), group in sorted(timing_groups(rows).items()):
        for x, points in by_x(group):
            ours = next((r for r in points if r["provider"] == OURS), None)
            if ours is None:
                continue
            best = best_baseline(points)
            base = f"{best['provider']} {best['p50']:.4f}" if best else "-"
            speed = f"{best['p50'] / ours['p50']:.2f}x" if best else "-"
            frac = f"{ours['floor'] / ours['p50']:.0%}" if ours["floor"] else "-"
            lines.append(f"{op:<18}{mode:<9}{x_name + '=' + format(x, 'g'):<14}{_config_label(config)[:33]:<34}"
                         f"{ours['p50']:>11.4f}{base:>26}{speed:>9}{frac:>10}")
    return "\n".join(lines)
