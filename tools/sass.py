"""Reading sm_90 SASS without a GPU: disassemble a cubin with triton's ``nvdisasm`` and count each loop's opcodes.

The SASS instructions of a kernel's hot loop per processed element, over the GPU's instruction issue rate, is
the kernel's issue floor (``perf/NOTES.md`` uses it next to the memory and FMA floors).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
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
    return shutil.which("nvdisasm")


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


def global_access_widths(ptx: str) -> str:
    """The global loads and stores in the PTX by width in bytes, e.g. ``ld 16B x4, 4B x2; st 16B x2``
    (a ``.v4.b32`` access is 16 bytes, ``.v2.b32`` 8, a plain ``.b32`` 4): are the streaming accesses 16 bytes
    wide?"""
    widths: dict[str, dict[int, int]] = {"ld": {}, "st": {}}
    pattern = r"\b(ld|st)\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b"
    for kind, vector, bits in re.findall(pattern, ptx):
        size = int(vector or 1) * int(bits) // 8
        widths[kind][size] = widths[kind].get(size, 0) + 1
    parts = [f"{kind} " + ", ".join(f"{size}B x{n}" for size, n in sorted(counts.items(), reverse=True))
             for kind, counts in widths.items() if counts]
    return "; ".join(parts) or "-"
