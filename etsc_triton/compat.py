"""The torch / triton / numpy versions the package works with, and a one-line fix when a known-bad pair is found.

``MIN_TORCH`` and ``MIN_TRITON`` are the lower bounds declared in ``pyproject.toml`` (a test keeps them in
step): torch 2.7 is the first release whose pinned triton (3.3) runs every kernel in the CPU interpreter
(``torch.library.triton_op`` / ``wrap_triton`` exist from torch 2.6, whose triton 3.2 aborts in
``lsh_hash`` under the interpreter). The interpreter of triton 3.6 and older turns a loop bound computed in
the kernel into a 1-element array, which numpy 2.4 no longer converts to an int; triton 3.7 fixed it. The
compiled kernels (a GPU run) are not affected.
"""

from __future__ import annotations

import re

MIN_TORCH = (2, 7)
MIN_TRITON = (3, 3)
INTERPRETER_NUMPY_BREAK = (2, 4)  # first numpy that rejects int() of a 1-element array
INTERPRETER_TRITON_FIX = (3, 7)  # first triton whose interpreter keeps scalar loop bounds 0-dimensional


def release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"2.13.0+cpu"`` or ``"3.6.0"``.

    Args:
        version: a PEP 440 version string.

    Returns:
        The first two release numbers.
    """
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"release: expected a version such as '3.6.0', got {version!r}")
    return int(found.group(1)), int(found.group(2))


def _dotted(pair: tuple[int, int]) -> str:
    return f"{pair[0]}.{pair[1]}"


def version_problem(torch_version: str, triton_version: str) -> str | None:
    """Why this torch / triton pair is below the supported range, or ``None`` when it is supported.

    Args:
        torch_version: ``torch.__version__``.
        triton_version: ``triton.__version__``.

    Returns:
        A one-line message naming what to install, or ``None``.
    """
    if release(torch_version) < MIN_TORCH:
        wanted = _dotted(MIN_TORCH)
        return (f"etsc_triton needs torch>={wanted} (torch.library.triton_op and a triton whose interpreter runs "
                f"every kernel), found torch {torch_version}: pip install 'torch>={wanted}'")
    if release(triton_version) < MIN_TRITON:
        return (f"etsc_triton needs triton>={_dotted(MIN_TRITON)}, found triton {triton_version}: "
                f"pip install 'triton>={_dotted(MIN_TRITON)}'")
    return None


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's CPU interpreter cannot run the scan kernels with these versions, or ``None`` when it can.

    Args:
        triton_version: ``triton.__version__``.
        numpy_version: ``numpy.__version__``.

    Returns:
        A one-line message naming what to install, or ``None``.
    """
    if release(triton_version) < INTERPRETER_TRITON_FIX and release(numpy_version) >= INTERPRETER_NUMPY_BREAK:
        return (f"Triton's interpreter (TRITON_INTERPRET=1) in triton {triton_version} fails with numpy "
                f"{numpy_version} ('only 0-dimensional arrays can be converted to Python scalars'): "
                f"pip install 'numpy<{_dotted(INTERPRETER_NUMPY_BREAK)}' "
                f"or 'triton>={_dotted(INTERPRETER_TRITON_FIX)}'")
    return None


def check_installed() -> None:
    """Refuse an unsupported torch / triton at import, and warn when the CPU interpreter cannot run the scans.

    Raises:
        ImportError: torch or triton is older than the supported range (the message says what to install).
    """
    import os
    import warnings

    import numpy
    import torch
    import triton

    problem = version_problem(torch.__version__, triton.__version__)
    if problem is not None:
        raise ImportError(problem)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        problem = interpreter_problem(triton.__version__, numpy.__version__)
        if problem is not None:
            warnings.warn(problem, RuntimeWarning, stacklevel=3)
