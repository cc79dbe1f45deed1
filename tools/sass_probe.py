"""Instruction mix of a kernel's loops in sm_90 SASS, without a GPU.

    python -m tools.sass_probe CAPTURE.json _memory_forward_kernel --case "memory_layer tokens=64 dtype=fp32" \\
        --base '{"TAU": 8, "TAU_P2": 8, "S": 256, "D": 1024, "K": 128, "T": 8192, "EVEN_D": true}' \\
        --variant '{"BLOCK_D": 128}' --variant '{"BLOCK_D": 256, "num_warps": 8}'

takes a launch captured by ``python -m tools.compile_report --save-configs CAPTURE.json`` (the first one of that
kernel whose case names contain ``--case``), replaces argument values (``--base``, then each ``--variant``;
``num_warps`` and ``num_stages`` set the launch options), compiles each variant for sm_90 as the GPU launch
would specialise it, and prints registers, spills, and for each loop (a branch back to a label) its SASS
instruction count and the most frequent opcodes. Per gathered or updated element, ``loop
instructions / elements per thread`` is the figure that sets the issue floor (perf/NOTES.md experiments 10, 11).

The disassembler is the ``nvdisasm`` shipped with triton (``triton/backends/nvidia/bin``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

from .sass import disassemble, innermost_loops
from .sm90 import OPTION_NAMES, compile_launch


def find_launch(capture: dict, kernel: str, case: str) -> dict:
    """The first captured launch of ``kernel`` one of whose case names contains ``case``."""
    for launch in capture["launches"]:
        if launch["name"] == kernel and any(case in c for c in launch["cases"]):
            return launch
    names = sorted({launch["name"] for launch in capture["launches"]})
    raise SystemExit(f"no launch of {kernel} with a case containing {case!r}; kernels: {', '.join(names)}")


def with_overrides(launch: dict, overrides: dict) -> dict:
    """A copy of ``launch`` with argument values and launch options (``num_warps``, ...) replaced."""
    record = copy.deepcopy(launch)
    for name, value in overrides.items():
        if name in OPTION_NAMES:
            record["options"][name] = value
        elif name in record["args"]:
            record["args"][name]["value"] = value
        else:
            raise SystemExit(f"{launch['name']} has no argument {name}; it has {', '.join(record['args'])}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sass_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("capture", type=Path, help="capture JSON of tools.compile_report --save-configs")
    parser.add_argument("kernel", help="kernel function name, e.g. _memory_forward_kernel")
    parser.add_argument("--case", default="", help="a substring of one of the launch's case names")
    parser.add_argument("--base", default="{}", help="JSON {argument or launch option: value} for every variant")
    parser.add_argument("--variant", action="append", default=[], help="JSON overrides of one variant; repeat")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default of the triton versions we run on
    launch = find_launch(json.loads(args.capture.read_text()), args.kernel, args.case)
    base = json.loads(args.base)
    for variant in args.variant or ["{}"]:
        kernel, stats, _ = compile_launch(with_overrides(launch, {**base, **json.loads(variant)}))
        print(f"{args.kernel} {json.dumps(json.loads(variant))}: {stats.get('registers')} regs, "
              f"spill {stats.get('spill_stores')}/{stats.get('spill_loads')} B")
        for label, counts in innermost_loops(disassemble(kernel.asm["cubin"])):
            top = ", ".join(f"{op} {n}" for op, n in counts.most_common(10))
            print(f"  loop {label}: {sum(counts.values())} instructions ({top})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
