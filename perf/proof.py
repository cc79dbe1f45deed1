"""``python -m perf.proof``: one command that checks every compiled kernel and measures every headline figure.

    python -m perf.proof --out DIR [--budget SECONDS]   # a GPU run, at most SECONDS (default 480) of run time
    python -m perf.proof --dry-run --out DIR            # every stage on a CPU at tiny sizes (interpreter)

Stages (``STAGES``), ordered by value, each under its own time cap (a stage that ends early leaves its time to
the next): environment and floors, kernel_configs, tests, headline, demo, serving; each stage function says what
it does. A stage that fails is recorded and the next stage runs. After every stage ``DIR`` holds four files:
``summary.md`` (the tables), ``summary.csv`` (the same rows), ``proof.log`` (what happened, with the tails of
the subprocess logs) and ``results.tgz`` (the per-stage CSVs, the full logs, the plots, the JSON results). The
stage table and the time plan: ``perf/README.md``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET = 480.0
MIN_STAGE_SHARE = 0.5  # a stage started late still gets half its planned time (within the budget)
SUMMARY_COLUMNS = ["stage", "item", "size", "ours", "baseline", "ratio", "fraction_of_floor", "target", "met",
                   "detail"]
DRY_RUN_TESTS = {"gpu": ["tests/test_ssm_step.py"], "rest": ["tests/test_api.py"]}
TEST_TIMEOUT_S = 120  # per test, when pytest-timeout is importable


@dataclass(frozen=True)
class Stage:
    """One stage of the run: its name, its planned seconds at the default budget (the time plan of
    perf/README.md, scaled to ``--budget``) and what it does: ``run(proof, deadline)`` returns a note (starting
    with "cut" when the cap cut it short) or raises when it failed."""

    name: str
    seconds: float
    run: Callable[[Proof, float], str]


@dataclass
class StageResult:
    name: str
    status: str
    seconds: float
    planned: float
    note: str = ""


class Proof:
    """The run: its output folder, a private work folder (packed into ``results.tgz``), the log and the summary
    rows; :meth:`run_stage` runs one stage under its deadline and rewrites the summary files after it."""

    def __init__(self, out: Path, budget: float, dry_run: bool, jobs: int, stages: list[Stage] | None = None):
        self.out, self.budget, self.dry_run, self.jobs = out, budget, dry_run, jobs
        self.plan = STAGES if stages is None else stages
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("summary.md", "summary.csv", "proof.log", "results.tgz"):
            (self.out / name).unlink(missing_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="etsc_proof_"))
        (self.work / "plots").mkdir()
        self.started = time.monotonic()
        self.rows: list[dict] = []
        self.stages: list[StageResult] = []
        self.environment: dict = {}
        self.device = "cpu" if dry_run else "cuda"
        self.floors = None  # perf.harness.Floors, set by the environment stage

    def log(self, message: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f} s] {message}"
        print(line, flush=True)
        with (self.out / "proof.log").open("a") as f:
            f.write(line + "\n")

    def log_tail(self, path: Path, lines: int) -> None:
        """The last ``lines`` lines of a subprocess log into proof.log (the whole log goes into results.tgz)."""
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            with (self.out / "proof.log").open("a") as f:
                f.write("".join(f"    | {line}\n" for line in tail))

    def add(self, stage: str, item: str, *, size: str = "", ours: str = "", detail: str = "", **extra) -> None:
        self.rows.append({"stage": stage, "item": item, "size": size, "ours": ours, "detail": detail, **extra})

    @property
    def scale(self) -> float:
        """Seconds of this run per planned second."""
        return self.budget / sum(stage.seconds for stage in self.plan)

    def deadline_for(self, index: int) -> float:
        """Cumulative plan: stage ``index`` ends by the sum of the planned times so far (scaled to the budget),
        but gets at least MIN_STAGE_SHARE of its own plan and never passes the budget."""
        planned_end = self.started + self.scale * sum(stage.seconds for stage in self.plan[: index + 1])
        floor = time.monotonic() + MIN_STAGE_SHARE * self.scale * self.plan[index].seconds
        return min(self.started + self.budget, max(planned_end, floor))

    def run_stage(self, index: int) -> None:
        """Run stage ``index`` under its deadline; record its status, rewrite the summary and the archive."""
        stage = self.plan[index]
        deadline = self.deadline_for(index)
        self.log(f"== stage {index + 1} {stage.name}: {deadline - time.monotonic():.0f} s")
        started = time.monotonic()
        try:
            note = stage.run(self, deadline) or ""
            status = "ok"
        except Exception as error:  # noqa: BLE001 - recorded; the next stage still runs
            status, note = "failed", f"{type(error).__name__}: {str(error).strip()[:300]}"
            with (self.out / "proof.log").open("a") as f:
                traceback.print_exc(file=f)
        if status == "ok" and note.startswith("cut"):
            status = "cut"
        seconds = time.monotonic() - started
        self.stages.append(StageResult(stage.name, status, seconds, stage.seconds * self.scale, note))
        self.log(f"== stage {index + 1} {stage.name}: {status} after {seconds:.1f} s {note}")
        self.write_summary()
        self.pack()

    def write_summary(self) -> None:
        with (self.out / "summary.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            for stage in self.stages:
                writer.writerow({"stage": "stages", "item": stage.name, "ours": f"{stage.seconds:.1f}",
                                 "target": f"{stage.planned:.0f}", "met": stage.status, "detail": stage.note})
            for row in self.rows:
                writer.writerow({k: row.get(k, "") for k in SUMMARY_COLUMNS})
        (self.out / "summary.md").write_text(self.render_markdown())

    def render_markdown(self) -> str:
        env = self.environment
        lines = [f"# GPU proof run: {env.get('device_name', '?')}", "",
                 f"{env.get('time', '')}, commit {env.get('commit', '?')}; python {env.get('python', '?')}, torch "
                 f"{env.get('torch', '?')}, triton {env.get('triton', '?')}, numpy {env.get('numpy', '?')}"
                 f"{'; DRY RUN on a CPU (interpreter, tiny sizes): the figures mean nothing' if self.dry_run else ''}",
                 "", "| stage | status | seconds | planned | note |", "|---|---|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.planned:.0f} | {s.note} |" for s in self.stages]
        headline = [r for r in self.rows if r["stage"] == "headline"]
        if headline:
            lines += ["", "## Headline (ms, do_bench medians; ratio = best baseline / ours)", "",
                      "| op | size | ours | best baseline | ratio | fraction of floor | target | met? | detail |",
                      "|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {r['item']} | {r['size']} | {r['ours']} | {r['baseline']} | {r['ratio']} | "
                      f"{r['fraction_of_floor']} | {r['target']} | {r['met']} | {r['detail']} |" for r in headline]
        for stage in ("environment", "kernel_configs", "tests", "demo"):
            rows = [r for r in self.rows if r["stage"] == stage]
            if rows:
                lines += ["", f"## {stage}", "", "| item | size | value | detail |", "|---|---|---|---|"]
                lines += [f"| {r['item']} | {r['size']} | {r['ours']} | {r['detail']} |" for r in rows]
        return "\n".join(lines) + "\n"

    def pack(self) -> None:
        """Everything in the work folder into ``results.tgz`` (written aside, then renamed: never half a file)."""
        partial = self.out / ".results.tgz.partial"
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(self.work.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(self.work)))
        os.replace(partial, self.out / "results.tgz")

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def subprocess_env(self) -> dict:
        # Not the caller's pytest variables: a proof started from a test (an xdist worker) would otherwise make
        # its own pytest runs believe they are xdist workers.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env = dict(inherited, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                   PYTHONUNBUFFERED="1")
        if self.dry_run:
            env["TRITON_INTERPRET"] = "1"
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def run_processes(self, commands: list[tuple[list[str], Path]], deadline: float,
                      env: dict | None = None) -> list[int | None]:
        """Run commands in parallel (stdout + stderr to their log files), each in its own process group; kill
        the groups still running at ``deadline``. Returns the exit codes (None: killed at the cap)."""
        procs = []
        for command, log_path in commands:
            with log_path.open("w") as log:
                procs.append(subprocess.Popen(command, cwd=REPO, env=env or self.subprocess_env(), stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        codes: list[int | None] = [None] * len(procs)
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)
        for i, proc in enumerate(procs):
            if proc.poll() is None:
                kill_group(proc)
            else:
                codes[i] = proc.returncode
        return codes

    def run_json(self, name: str, command: list[str], deadline: float, tail: int) -> tuple[int | None, dict | None]:
        """Run ``command --json <work>/<name>.json`` under ``deadline`` (its log ``<name>.log``, whose last ``tail``
        lines go into proof.log): the exit code (None: killed at the cap) and the JSON it wrote (None: none)."""
        path, log_path = self.work / f"{name}.json", self.work / f"{name}.log"
        (code,) = self.run_processes([([*command, "--json", str(path)], log_path)], deadline)
        self.log_tail(log_path, tail)
        return code, json.loads(path.read_text()) if path.exists() else None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (pytest-xdist workers included), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def stage_environment(proof: Proof, deadline: float) -> str:
    """Versions, GPU, memory, clocks; the two floors (and L2) measured now."""
    import numpy
    import torch
    import triton

    from . import harness

    env = proof.environment
    env.update(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
               numpy=numpy.__version__, commit=harness.git_commit(),
               time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if proof.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(device_name=props.name, memory_gib=f"{props.total_memory / 2**30:.1f}",
                   sms=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
        if shutil.which("nvidia-smi"):
            query = "name,memory.total,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,driver_version"
            smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                                 text=True, timeout=20)
            env["nvidia_smi"] = smi.stdout.strip().replace("\n", " / ")
        floors = harness.measure_floors("cuda")
        torch.cuda.empty_cache()  # the 2 GB of copy buffers go back to the device for the stages' processes
        how = "1 GB copy_ (do_bench median), 8192^3 SGEMM tf32 off, 16 MB copy repeated in L2"
    else:
        env.update(device_name=f"CPU ({platform.processor() or platform.machine()})", sms="-",
                   memory_gib="-", capability="-")
        floors = harness.measure_floors("cpu")
        how = "CPU dry run: 16 MB copy_ and 256^3 matmul, wall clock (meaningless on purpose)"
    proof.floors = floors
    for key, value in env.items():
        proof.log(f"{key}: {value}")
    proof.add("environment", "versions", ours=f"python {env['python']}, torch {env['torch']}, triton "
              f"{env['triton']}, numpy {env['numpy']}")
    proof.add("environment", "device", ours=str(env["device_name"]),
              detail=f"memory {env['memory_gib']} GiB, {env['sms']} SMs, sm {env['capability']}; "
                     f"{env.get('nvidia_smi', '')}")
    proof.add("environment", "copy bandwidth", ours=f"{floors.copy_gbps:.0f} GB/s", detail=how)
    proof.add("environment", "fp32 FMA rate", ours=f"{floors.fp32_tflops:.2f} TFLOP/s", detail=how)
    proof.add("environment", "L2 copy bandwidth", ours=f"{floors.l2_gbps:.0f} GB/s", detail=how)
    return ""


def stage_kernel_configs(proof: Proof, deadline: float) -> str:
    """``perf.proof_cases`` in ``jobs`` processes (shards of the case list); results per case."""
    from tools.cases import cases as case_table

    cases = case_table(quick=proof.dry_run)
    jobs = max(1, min(proof.jobs, len(cases)))
    outputs = [proof.work / f"kernel_configs_{shard}.jsonl" for shard in range(jobs)]
    dry_run = ["--dry-run"] if proof.dry_run else []
    commands = [([sys.executable, "-m", "perf.proof_cases", "--shard", f"{shard}/{jobs}", "--out", str(path), *dry_run],
                 path.with_suffix(".log")) for shard, path in enumerate(outputs)]
    codes = proof.run_processes(commands, deadline)
    results = [json.loads(line) for path in outputs if path.exists() for line in path.read_text().splitlines()
               if line.strip()]
    with (proof.work / "kernel_configs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["op", "label", "ok", "worst", "errors", "error", "seconds"])
        writer.writeheader()
        for result in results:
            writer.writerow({**result, "errors": json.dumps(result["errors"])})
    total = Counter(case.grid.op for case in cases)
    passed, failed = (Counter(r["op"] for r in results if r["ok"] == ok) for ok in (True, False))
    for op, count in total.items():
        worst = max((r["worst"] for r in results if r["op"] == op and math.isfinite(r["worst"])), default=math.nan)
        proof.add("kernel_configs", op, ours=f"{passed[op]}/{count} passed",
                  detail=f"{failed[op]} failed, {count - passed[op] - failed[op]} not run; worst error / tolerance "
                         f"{worst:.2g}")
    for result in results:
        if not result["ok"]:
            proof.add("kernel_configs", f"FAILED {result['label']}", ours="failed",
                      detail=result["error"] or json.dumps(result["errors"]))
    for shard, code in enumerate(codes):
        if code:
            proof.log(f"kernel_configs shard {shard} exited {code}:")
            proof.log_tail(outputs[shard].with_suffix(".log"), 15)
    ok = sum(passed.values())
    proof.log(f"kernel configurations: {ok}/{len(cases)} passed, {len(results) - ok} failed")
    if None in codes:
        return f"cut at the cap: {len(results)} of {len(cases)} cases run"
    if ok < len(cases):
        raise RuntimeError(f"{len(cases) - ok} of {len(cases)} kernel configurations failed or did not run")
    return f"{ok}/{len(cases)} cases"


def stage_tests(proof: Proof, deadline: float) -> str:
    """pytest, gpu-marked tests first, then the rest, under the stage's cap; outcomes counted per test."""
    from .pytest_outcomes import OUTCOMES_ENV

    base = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "perf.pytest_outcomes"]
    if importlib.util.find_spec("xdist") and not proof.dry_run:
        base += ["-n", str(proof.jobs)]
    if importlib.util.find_spec("pytest_timeout"):
        base += [f"--timeout={TEST_TIMEOUT_S}"]
    notes = []
    for phase, marker in (("gpu", "gpu"), ("rest", "not gpu")):
        outcomes = proof.work / f"tests_{phase}.jsonl"
        env = dict(proof.subprocess_env(), **{OUTCOMES_ENV: str(outcomes)})
        paths = DRY_RUN_TESTS[phase] if proof.dry_run else ["tests"]
        started = time.monotonic()
        log_path = proof.work / f"tests_{phase}.log"
        (code,) = proof.run_processes([(base + ["-m", marker, *paths], log_path)], deadline, env=env)
        records = [json.loads(line) for line in outcomes.read_text().splitlines()] if outcomes.exists() else []
        counts = Counter(record["outcome"] for record in records)
        failed = [record["test"] for record in records if record["outcome"] in ("failed", "error")]
        status = "cut at the cap" if code is None else f"exit {code}"
        summary = ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped"))
        proof.add("tests", f"{phase} ({marker})", ours=summary, size=f"{time.monotonic() - started:.0f} s",
                  detail=f"{status}; xdist {'on' if '-n' in base else 'off'}; failed: {' '.join(failed[:20])}")
        proof.log(f"tests {phase}: {summary} ({status})")
        proof.log_tail(log_path, 25)
        if code is None:
            notes.append(f"cut at the cap in the {phase} phase")
            break
        if code not in (0, 5) or counts["failed"] or counts["error"]:
            notes.append(f"{phase}: {counts['failed']} failed, {counts['error']} errors")
    if notes and not notes[0].startswith("cut"):
        raise RuntimeError("; ".join(notes))
    return "; ".join(notes)


def stage_headline(proof: Proof, deadline: float) -> str:
    """The headline points in this process; results and plots after every family."""
    from . import harness, plots
    from .proof_headline import POINTS

    floors = proof.floors or harness.Floors(math.nan, math.nan)  # the environment stage failed: no fractions
    ctx = harness.Context(device=proof.device, quick=proof.dry_run, floors=floors, deadline=deadline,
                          progress=harness.progress_printer(deadline - time.monotonic()))
    notes = []
    for family, points in POINTS:
        note = harness.run_family(ctx, family, lambda ctx, points=points: proof.rows.extend(points(ctx, proof.dry_run)))
        harness.write_results(ctx.rows, proof.work / "headline.csv")
        proof.write_summary()
        proof.log(f"headline {family}: {note or 'done'}")
        if note.startswith("cut"):
            notes.append(note)
            break
        if note:
            proof.add("headline", family, ours="failed", met="failed", detail=note)
    for line in ctx.failures:
        proof.log(f"failed point: {line}")
        notes.append(f"failed point: {line[:120]}")
    plots.draw_all(ctx.rows, proof.work / "plots")
    proof.log(plots.summary_table(ctx.rows, floors))
    return "; ".join(notes)


def stage_demo(proof: Proof, deadline: float) -> str:
    """The end-to-end demo (GPU size; ``--quick`` on a CPU) in a subprocess under the cap."""
    # The random-weight model at the GPU size: the decode-latency headline (the trained model is CPU-sized).
    command = [sys.executable, "-m", "etsc_triton.demo", "--random", "--out", str(proof.work / "plots")]
    if proof.dry_run:
        command += ["--quick", "--device", "cpu"]
    code, result = proof.run_json("demo", command, deadline, tail=30)
    if code is None:
        return "cut at the cap"
    if result is None:
        raise RuntimeError(f"the demo exited {code} without results")
    lengths = result["lengths"]
    proof.add("demo", "greedy tokens identical (ssm, tnn_cache, fft)", ours=str(result["tokens_identical"]),
              detail=f"max rel diff ssm vs fft logits {result['max_rel_err']:.2e}")
    for batch, per in result["per_batch"].items():
        times = per["decode_ms_per_token"]
        proof.add("demo", f"ms / token, batch {batch}", size=f"lengths {lengths[0]}..{lengths[-1]}",
                  ours=" ".join(f"{t:.3g}" for t in times["ssm"]),
                  detail=f"at {lengths[-1]}: tnn_cache {times['tnn_cache'][-1]:.3g} ms "
                         f"({per['speedup_vs_ssm']['tnn_cache'][-1]:.1f}x), fft {times['fft'][-1]:.3g} ms "
                         f"({per['speedup_vs_ssm']['fft'][-1]:.1f}x)")
    if code != 0:
        raise RuntimeError(f"the demo exited {code}" + ("" if result["tokens_identical"] else
                                                        ": greedy tokens differ between decoders"))
    return ""


def stage_serving(proof: Proof, deadline: float) -> str:
    """Continuous batching against one request at a time (``python -m etsc_triton.demo.serving``) in a
    subprocess under the cap: the GPU-size random-weight TNN (tiny in a dry run), tokens checked against
    ``generate`` for 4 requests."""
    if proof.dry_run:
        size = ["--d-model", "16", "--layers", "2", "--n", "31", "--vocab", "32", "--requests", "6",
                "--max-running", "3", "--prompt", "2", "12", "--output", "2", "8", "--device", "cpu"]
    else:
        size = ["--d-model", "512", "--layers", "6", "--n", "2047", "--requests", "64", "--max-running", "64",
                "--prompt", "64", "512", "--output", "32", "128", "--arrivals-per-step", "4", "--device", "cuda"]
    command = [sys.executable, "-m", "etsc_triton.demo.serving", *size, "--prefill", "scan", "--repeats", "1",
               "--check", "4"]
    code, result = proof.run_json("serving", command, deadline, tail=12)
    if code is None:
        return "cut at the cap"
    if code != 0 or result is None:
        raise RuntimeError(f"the serving run exited {code}")
    batched, alone = result["continuous"], result["one_at_a_time"]
    config = result["config"]
    proof.add("serving", "continuous batching, tokens/s", size=f"{config['requests']} requests, "
              f"{config['max_running']} rows, D={config['d_model']} x {config['layers']} layers",
              ours=f"{batched['tokens_per_s']:.4g}", baseline=f"{alone['tokens_per_s']:.4g}",
              ratio=f"{result['speedup']:.2f}", detail="baseline: one request at a time, same engine")
    proof.add("serving", "tokens equal serving each request alone", ours=str(result["tokens_equal_alone"]),
              detail=f"{result['checked_requests']} requests checked against generate()")
    if not result["tokens_equal_alone"]:
        raise RuntimeError("continuous batching changed a request's tokens")
    return ""


STAGES = [Stage("environment", 25, stage_environment), Stage("kernel_configs", 90, stage_kernel_configs),
          Stage("tests", 150, stage_tests), Stage("headline", 130, stage_headline), Stage("demo", 60, stage_demo),
          Stage("serving", 25, stage_serving)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.proof", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the four result files")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"seconds of run time for all stages (default {DEFAULT_BUDGET:.0f})")
    parser.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny sizes: checks the pipeline")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel processes for the kernel configurations and pytest-xdist (default: 8 on a "
                             "GPU, 2 in a dry run)")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        parser.error(f"--budget must be > 0 seconds, got {args.budget:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("python -m perf.proof: no CUDA device; use --dry-run on a CPU", file=sys.stderr)
        return 2
    jobs = args.jobs or (2 if args.dry_run else 8)
    proof = Proof(args.out, args.budget, args.dry_run, jobs)
    try:
        for index in range(len(proof.plan)):
            proof.run_stage(index)
        proof.log(f"done in {time.monotonic() - proof.started:.0f} s: " +
                  ", ".join(f"{s.name} {s.status}" for s in proof.stages))
    finally:
        proof.pack()
        proof.close()
    print((args.out / "summary.md").read_text())
    return 0 if all(s.status == "ok" for s in proof.stages) else 1


if __name__ == "__main__":
    sys.exit(main())
