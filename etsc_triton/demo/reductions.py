"""Order reductions of the shipped GLU model, computed once and stored beside its weights.

Reducing every Toeplitz layer of the trained model (6 x 192 channels, fitted over 4n = 2048 lags) to a
tolerance takes minutes on a CPU core: the trained kernels are sharp over the first lags and need 5 to 9 modes
each, and every rank of the ladder refines its fit. The main job has two minutes, so it takes the reduced modes
from ``weights/tnn_glu_reductions.safetensors`` (written by ``python -m etsc_triton.demo.reductions``, which
records how long each tolerance took) and measures everything else afresh: each layer's kernel error against
the model's own float64 kernel (a stored bound that does not hold would show), bits per byte, decoding. The file
names the sha256 of the weights it was computed from; for other weights the main job reduces live.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..ops.reduce import reduce_toeplitz
from .checkpoint import WEIGHTS_DIR, load_shipped, shipped_paths
from .model import TNNLanguageModel

REDUCTIONS_PATH = WEIGHTS_DIR / "tnn_glu_reductions.safetensors"
HORIZON = 4  # the reductions are fitted over HORIZON * n lags
TOLS = (1e-3, 1e-4)  # every tolerance a preset of the main job asks for


def weights_digest(path: Path) -> str:
    """sha256 of a weights file, read once per version of the file (the main job asks once per tolerance)."""
    stat = path.stat()
    return _digest(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _digest(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def layer_taps(model: TNNLanguageModel) -> list[tuple[torch.Tensor, float]]:
    """Per block ``(taps [D, HORIZON * n] float64, decay)``: what ``ToeplitzSSM`` reduces."""
    return [(block.coefficients(HORIZON * block.n, dtype=torch.float64).detach(), block.decay)
            for block in model.blocks]


def _reduce_one(job: tuple[torch.Tensor, float, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    torch.set_num_threads(1)
    taps, decay, tol = job
    start = time.perf_counter()
    lam, b, bound = reduce_toeplitz(taps, decay, tol=tol)
    return lam, b, bound, time.perf_counter() - start


def compute(model: TNNLanguageModel, tols=TOLS, jobs: int = 2) -> dict[float, dict]:
    """Per tolerance: ``{"layers": [(lam, b, bound)], "core_seconds": ...}``, every layer on its own process."""
    taps = layer_taps(model)
    work = [(t, decay, tol) for tol in tols for t, decay in taps]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(_reduce_one, work))
    out: dict[float, dict] = {}
    for (_, _, tol), (lam, b, bound, seconds) in zip(work, results, strict=True):
        entry = out.setdefault(tol, {"layers": [], "core_seconds": 0.0})
        entry["layers"].append((lam, b, bound))
        entry["core_seconds"] += seconds
    return out


def save(reductions: dict[float, dict], weights: Path, path: Path = REDUCTIONS_PATH) -> None:
    tensors, seconds = {}, {}
    for tol, entry in reductions.items():
        seconds[f"{tol:g}"] = round(entry["core_seconds"], 1)
        for i, (lam, b, bound) in enumerate(entry["layers"]):
            tensors[f"tol{tol:g}.layer{i}.lam"] = torch.view_as_real(lam).contiguous()
            tensors[f"tol{tol:g}.layer{i}.b"] = torch.view_as_real(b).contiguous()
            tensors[f"tol{tol:g}.layer{i}.bound"] = bound.contiguous()
    meta = {"weights_sha256": weights_digest(weights), "horizon": str(HORIZON), "tols": json.dumps(sorted(seconds)),
            "core_seconds": json.dumps(seconds), "torch": torch.__version__}
    save_file(tensors, str(path), metadata=meta)


def load(tol: float, layers: int, weights: Path, path: Path = REDUCTIONS_PATH) -> tuple[list, float] | None:
    """The stored ``[(lam, b, bound)]`` of ``tol`` and the CPU-core seconds they took, when ``path`` holds them
    for exactly these ``weights`` and horizon; else None."""
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("weights_sha256") != weights_digest(weights) or meta.get("horizon") != str(HORIZON):
            return None
        key = f"{tol:g}"
        if key not in json.loads(meta.get("tols", "[]")):
            return None
        stored = [tuple(torch.view_as_complex(f.get_tensor(f"tol{key}.layer{i}.{part}")) if part != "bound"
                        else f.get_tensor(f"tol{key}.layer{i}.bound") for part in ("lam", "b", "bound"))
                  for i in range(layers)]
        return stored, json.loads(meta["core_seconds"])[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m etsc_triton.demo.reductions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    args = parser.parse_args(argv)
    model, _ = load_shipped("glu")
    start = time.perf_counter()
    reductions = compute(model, TOLS, args.jobs)
    save(reductions, shipped_paths("glu")[0])
    for tol, entry in reductions.items():
        ranks = [lam.shape[-1] for lam, _, _ in entry["layers"]]
        print(f"tol {tol:g}: ranks {ranks}, {entry['core_seconds']:.0f} core-seconds")
    print(f"{REDUCTIONS_PATH} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
