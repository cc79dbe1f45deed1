"""Instruction mix of a kernel's loops in sm_90 SASS, without a GPU.

    python -m perf.sass_probe CAPTURE.json _memory_forward_kernel --case "memory_layer T=64 torch.float32" \\
        --base '{"TAU": 8, "TAU_P2": 8, "S": 256, "D": 1024, "K": 128, "T": 8192, "EVEN_D": true}' \\
        --variant '{"BLOCK_D": 128}' --variant '{"BLOCK_D": 256, "num_warps": 8}'

takes a launch captured by ``python -m perf.compile_report --save-configs CAPTURE.json`` (the first one of that
kernel whose case names contain ``--case``), replaces argument values (``--base``, then each ``--variant``;
``num_warps`` and ``num_stages`` set the launch options), compiles each variant for sm_90 as the GPU launch
would specialise it, and prints registers, spills, and for each loop (a branch back to a label) its SASS
instruction count and the most frequent opcodes. Per gathered or updated element, ``loop
instructions / elements per thread`` is the figure that sets the issue floor (perf/NOTES.md experiments 10, 11).

The disassembler is the ``nvdisasm`` shipped with triton (``triton/backends/nvidia/bin``).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

LABEL = re.compile(r"^\s*(\.L_x_\d+|\.L\w+):")
INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]{4,}\*/\s+(.*?);")
PREDICATE = re.compile(r"^@!?U?P[T\d]+\s+")


def nvdisasm_path() -> str | None:
    """triton's own nvdisasm (it reads the cubins triton's ptxas writes), else PATH's."""
    try:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    from shutil import which

    return which("nvdisasm")


def disassemble(cubin: bytes) -> str:
    """The SASS text of a cubin (``nvdisasm -c``); empty when no disassembler is found."""
    tool = nvdisasm_path()
    if tool is None:
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(cubin)
        path = handle.name
    try:
        return subprocess.run([tool, "-c", path], capture_output=True, text=True, timeout=120).stdout
    finally:
        os.unlink(path)


def innermost_loops(sass: str) -> list[tuple[str, collections.Counter]]:
    """``(label, opcode counts)`` of every loop body: from a label to a branch back to it (a lone branch to
    itself, the trap after ``EXIT``, is no loop). Opcodes lose their modifiers (``LDG.E.128`` counts as ``LDG``);
    predicates are dropped."""
    instructions: list[str] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        if match := LABEL.match(line):
            labels[match.group(1)] = len(instructions)
        elif match := INSTRUCTION.match(line):
            instructions.append(PREDICATE.sub("", match.group(1).strip()))
    loops = []
    for end, text in enumerate(instructions):
        if not text.startswith("BRA"):
            continue
        target = re.search(r"(\.L_x_\d+|\.L\w+)", text)
        if target and labels.get(target.group(1), end + 1) < end:  # not the trap loop after EXIT (BRA to itself)
            body = instructions[labels[target.group(1)] : end + 1]
            loops.append((target.group(1), collections.Counter(op.split()[0].split(".")[0] for op in body)))
    return loops


def hot_loop(cubin: bytes) -> str:
    """The largest loop body, e.g. ``154 (FFMA 32, IMAD 20, LDG 10)``; ``-`` for a kernel without loops."""
    loops = innermost_loops(disassemble(cubin))
    if not loops:
        return "-"
    _, counts = max(loops, key=lambda loop: sum(loop[1].values()))
    top = ", ".join(f"{op} {n}" for op, n in counts.most_common(3))
    return f"{sum(counts.values())} ({top})"


def _find_launch(capture: dict, kernel: str, case: str) -> dict:
    for launch in capture["launches"]:
        if launch["name"] == kernel and any(case in c for c in launch["cases"]):
            return launch
    names = sorted({launch["name"] for launch in capture["launches"]})
    raise SystemExit(f"no launch of {kernel} with a case containing {case!r}; kernels: {', '.join(names)}")


def compile_variant(launch: dict, overrides: dict) -> tuple[dict, bytes]:
    """Compile ``launch`` with argument (and launch option) ``overrides`` for sm_90: ``(ptxas stats, cubin)``."""
    from . import compile_report

    record = copy.deepcopy(launch)
    for name, value in overrides.items():
        if name in compile_report.OPTION_NAMES:
            record["options"][name] = value
        elif name in record["args"]:
            record["args"][name]["value"] = value
        else:
            raise SystemExit(f"{launch['name']} has no argument {name}; it has {', '.join(record['args'])}")
    kernel, log = compile_report.compile_kernel(record)
    stats = compile_report._parse_ptxas_log(log)
    if "registers" not in stats:
        stats = compile_report._ptxas_stats(kernel.asm["ptx"], "sm_90a", tempfile.gettempdir())
    return stats, kernel.asm["cubin"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.sass_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("capture", type=Path, help="capture JSON of perf.compile_report --save-configs")
    parser.add_argument("kernel", help="kernel function name, e.g. _memory_forward_kernel")
    parser.add_argument("--case", default="", help="a substring of one of the launch's case names")
    parser.add_argument("--base", default="{}", help="JSON {argument or launch option: value} for every variant")
    parser.add_argument("--variant", action="append", default=[], help="JSON overrides of one variant; repeat")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of the triton versions we run on
    launch = _find_launch(json.loads(args.capture.read_text()), args.kernel, args.case)
    base = json.loads(args.base)
    for variant in args.variant or ["{}"]:
        overrides = {**base, **json.loads(variant)}
        stats, cubin = compile_variant(launch, overrides)
        print(f"{args.kernel} {json.dumps(json.loads(variant))}: {stats.get('registers')} regs, "
              f"spill {stats.get('spill_stores')}/{stats.get('spill_loads')} B")
        for label, counts in innermost_loops(disassemble(cubin)):
            top = ", ".join(f"{op} {n}" for op, n in counts.most_common(10))
            print(f"  loop {label}: {sum(counts.values())} instructions ({top})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
