"""Test setup: run Triton kernels through the interpreter on machines without CUDA, poison fresh outputs.

``TRITON_INTERPRET=1`` must be set before anything imports triton, so this module decides it first (importing
torch does not import triton). On a CUDA machine the same tests run the compiled kernels on the GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_torch_empty = torch.empty
_torch_empty_like = torch.empty_like
_torch_empty_strided = torch.empty_strided


def _poison(t: torch.Tensor) -> torch.Tensor:
    """NaN for floating and complex tensors, the most negative value for integers: unwritten elements fail."""
    if t.is_floating_point() or t.is_complex():
        t.fill_(float("nan"))
    elif t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        t.fill_(torch.iinfo(t.dtype).min)
    return t


def _poisoned_empty(*args, **kwargs):
    return _poison(_torch_empty(*args, **kwargs))


def _poisoned_empty_like(*args, **kwargs):
    return _poison(_torch_empty_like(*args, **kwargs))


def _poisoned_empty_strided(*args, **kwargs):
    return _poison(_torch_empty_strided(*args, **kwargs))


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Every ``torch.empty*`` allocation made during a test starts as NaN (or INT_MIN)."""
    monkeypatch.setattr(torch, "empty", _poisoned_empty)
    monkeypatch.setattr(torch, "empty_like", _poisoned_empty_like)
    monkeypatch.setattr(torch, "empty_strided", _poisoned_empty_strided)


@pytest.fixture
def device() -> str:
    """``"cuda"`` where a GPU is present, else ``"cpu"`` (kernels then run in the interpreter)."""
    return DEVICE


def pytest_configure(config):
    """Stop with a one-line fix when Triton's interpreter cannot run the kernels with the installed versions."""
    if DEVICE == "cpu":
        import numpy
        import triton

        from etsc_triton.compat import interpreter_problem

        problem = interpreter_problem(triton.__version__, numpy.__version__)
        if problem is not None:
            pytest.exit(problem, returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
