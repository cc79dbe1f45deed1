"""The supported versions: declared bounds match the import check, and known-bad pairs get a one-line fix."""

import sys
from pathlib import Path

import numpy
import pytest
import torch
import triton

from etsc_triton import compat

REPO = Path(__file__).resolve().parent.parent

VERSION_CASES = [  # (torch, triton, expected fragment of the message; None = supported)
    ("2.6.0", "3.2.0", "torch>=2.7"),  # torch.library.triton_op exists, but its pinned triton aborts in lsh_hash
    ("2.5.1+cu124", "3.1.0", "torch>=2.7"),
    ("2.13.0+cpu", "3.2.0", "triton>=3.3"),
    ("2.7.0", "3.3.0", None),  # the oldest pair: torch 2.7.0 pins triton 3.3.0
    ("2.11.0", "3.6.0", None),
    ("2.13.0+cpu", "3.9.0", None),
]

INTERPRETER_CASES = [  # (triton, numpy, expected fragment; None = the interpreter runs every kernel)
    ("3.6.0", "2.4.6", "numpy<2.4"),  # measured: ssm_scan fails in the interpreter
    ("3.3.0", "2.5.0", "triton>=3.7"),
    ("3.6.0", "2.2.6", None),
    ("3.7.1", "2.4.6", None),  # measured: the loop-bound probe passes
    ("3.9.0", "2.4.6", None),
]


@pytest.mark.parametrize("torch_version, triton_version, expected", VERSION_CASES)
def test_version_problem(torch_version, triton_version, expected):
    problem = compat.version_problem(torch_version, triton_version)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and "pip install" in problem


@pytest.mark.parametrize("triton_version, numpy_version, expected", INTERPRETER_CASES)
def test_interpreter_problem(triton_version, numpy_version, expected):
    problem = compat.interpreter_problem(triton_version, numpy_version)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and triton_version in problem and numpy_version in problem


def test_release_refuses_a_non_version():
    with pytest.raises(ValueError, match="version"):
        compat.release("nightly")


def test_installed_versions_are_supported():
    assert compat.version_problem(torch.__version__, triton.__version__) is None


def test_import_refuses_an_old_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    with pytest.raises(ImportError, match=r"torch>=2\.7"):
        compat.check_installed()


def test_import_warns_about_a_broken_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.0")
    with pytest.warns(RuntimeWarning, match=r"numpy<2\.4"):
        compat.check_installed()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from Python 3.11")
def test_pyproject_declares_the_checked_bounds():
    import tomllib

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={compat.MIN_TORCH[0]}.{compat.MIN_TORCH[1]}" in dependencies
    assert f"triton>={compat.MIN_TRITON[0]}.{compat.MIN_TRITON[1]}" in dependencies
