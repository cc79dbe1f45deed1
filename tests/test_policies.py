"""Policies every public op follows on both backends: empty batches, output dtypes, devices the kernels refuse.

- Empty batches return empty results, the way torch ops do (a scan over zero tokens returns its initial
  state); a dimension the math needs at least one of (lags, modes, chunks, table rows) is refused.
- Output dtypes do not depend on the backend: complex outputs are complex64, scores and kernels float32, and
  outputs that mirror an input (y of a scan, step or memory layer) come back in that input's dtype.
  ``etsc_triton.reference`` is the oracle and keeps its inputs' precision (float64 in, float64 out).
- ``backend="triton"`` refuses tensors on a device that is neither CUDA nor CPU (``meta``) up front.
"""

import pytest
import torch

import etsc_triton as et

C64 = torch.complex64


def _ssm(channels, modes, dtype=C64):
    lam = torch.full((channels, modes), 0.5 + 0.25j, dtype=dtype)
    return lam, torch.ones(channels, modes, dtype=dtype)


def _tables(num_tables=2, tau=4, d_out=5, dtype=torch.float32):
    return torch.randn(num_tables, 1 << tau, d_out, dtype=dtype)


# (label, call(backend, dtype), expected output shapes); dtype is the float dtype of the inputs.
EMPTY_CASES = [
    ("toeplitz_to_ssm, batch 0", lambda be, dt: et.toeplitz_to_ssm(torch.randn(0, 8, dtype=dt), backend=be),
     [(0, 4), (0, 4)]),
    ("toeplitz_to_ssm, batch (2, 0)", lambda be, dt: et.toeplitz_to_ssm(torch.randn(2, 0, 7, dtype=dt), 0.9,
                                                                        backend=be), [(2, 0, 4), (2, 0, 4)]),
    ("ssm_kernel, no rows", lambda be, dt: et.ssm_kernel(*_ssm(0, 4), 5, backend=be), [(0, 5)]),
    ("ssm_kernel, length 0", lambda be, dt: et.ssm_kernel(*_ssm(2, 4), 0, backend=be), [(2, 0)]),
    ("vandermonde_solve, no systems", lambda be, dt: et.vandermonde_solve(
        torch.zeros(0, 4, dtype=C64), torch.zeros(0, 4, dtype=dt), backend=be), [(0, 4)]),
    ("ssm_scan, B=0", lambda be, dt: et.ssm_scan(torch.randn(0, 5, 3, dtype=dt), *_ssm(3, 4), backend=be),
     [(0, 5, 3), (0, 3, 4)]),
    ("ssm_scan, L=0", lambda be, dt: et.ssm_scan(torch.randn(2, 0, 3, dtype=dt), *_ssm(3, 4), backend=be),
     [(2, 0, 3), (2, 3, 4)]),
    ("ssm_scan, D=0", lambda be, dt: et.ssm_scan(torch.randn(2, 5, 0, dtype=dt), *_ssm(0, 4), backend=be),
     [(2, 5, 0), (2, 0, 4)]),
    ("ssm_step, B=0", lambda be, dt: et.ssm_step(torch.randn(0, 3, dtype=dt), *_ssm(3, 4),
                                                 torch.zeros(0, 3, 4, dtype=C64), backend=be), [(0, 3)]),
    ("ssm_prefill_state, B=0", lambda be, dt: et.ssm_prefill_state(torch.randn(0, 5, 3, dtype=dt),
                                                                   _ssm(3, 4)[1], 8, backend=be), [(0, 3, 4)]),
    ("ssm_prefill_state, L=0", lambda be, dt: et.ssm_prefill_state(torch.randn(2, 0, 3, dtype=dt),
                                                                   _ssm(3, 4)[1], 8, backend=be), [(2, 3, 4)]),
    ("lsh_hash, T=0", lambda be, dt: et.lsh_hash(torch.randn(0, 2, 4, dtype=dt), backend=be), [(0, 2), (0, 2)]),
    ("memory_gather, T=0", lambda be, dt: et.memory_gather(
        torch.zeros(0, 2, dtype=torch.int32), torch.zeros(0, 2, dtype=dt), _tables(), backend=be), [(0, 5)]),
    ("memory_layer, T=0", lambda be, dt: et.memory_layer(torch.randn(3, 0, 8, dtype=dt), _tables(), backend=be),
     [(3, 0, 5)]),
]


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("label,call,shapes", EMPTY_CASES, ids=[case[0] for case in EMPTY_CASES])
def test_empty_batches_give_empty_results_on_both_backends(device, label, call, shapes):
    del device  # CPU tensors: the Triton backend runs in the interpreter, or would launch on an empty grid
    results = {be: _outputs(call(be, torch.float32)) for be in ("triton", "torch")}
    for be, outputs in results.items():
        assert [tuple(o.shape) for o in outputs] == shapes, f"{label} ({be})"
    for fast, ref in zip(results["triton"], results["torch"], strict=True):
        assert fast.dtype == ref.dtype and torch.equal(fast, ref), label


def test_a_scan_over_zero_tokens_returns_its_initial_state():
    lam, b = _ssm(3, 4)
    state = torch.randn(2, 3, 4, dtype=C64)
    for backend in ("triton", "torch"):
        y, final = et.ssm_scan(torch.randn(2, 0, 3), lam, b, state, backend=backend)
        assert torch.equal(final, state) and final.data_ptr() != state.data_ptr()


def test_empty_batch_keeps_autograd():
    x = torch.randn(0, 8, requires_grad=True)
    tables = _tables().requires_grad_()
    y = et.memory_layer(x, tables, backend="triton")
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(tables.grad, torch.zeros_like(tables))


# (label, call(backend) on float64 inputs, expected dtypes of the outputs).
DTYPE_CASES = [
    ("toeplitz_to_ssm", lambda be: et.toeplitz_to_ssm(torch.randn(2, 9, dtype=torch.float64), backend=be),
     [C64, C64]),
    ("ssm_kernel", lambda be: et.ssm_kernel(*_ssm(2, 4, torch.complex128), 5, backend=be), [torch.float32]),
    ("vandermonde_solve", lambda be: et.vandermonde_solve(
        torch.exp(-2j * torch.pi * torch.arange(1, 5) / 5)[None], torch.randn(1, 4, dtype=torch.float64),
        backend=be), [C64]),
    ("ssm_scan", lambda be: et.ssm_scan(torch.randn(2, 5, 3, dtype=torch.float64), *_ssm(3, 4), backend=be),
     [torch.float64, C64]),
    ("ssm_step", lambda be: et.ssm_step(torch.randn(2, 3, dtype=torch.float64), *_ssm(3, 4),
                                        torch.zeros(2, 3, 4, dtype=C64), backend=be), [torch.float64]),
    ("ssm_prefill_state", lambda be: et.ssm_prefill_state(torch.randn(2, 5, 3, dtype=torch.float64),
                                                          _ssm(3, 4)[1], 8, backend=be), [C64]),
    ("lsh_hash", lambda be: et.lsh_hash(torch.randn(3, 2, 4, dtype=torch.float64), backend=be),
     [torch.int32, torch.float32]),
    ("memory_gather", lambda be: et.memory_gather(
        torch.zeros(3, 2, dtype=torch.int32), torch.ones(3, 2, dtype=torch.float64), _tables(), backend=be),
     [torch.float32]),
    ("memory_layer", lambda be: et.memory_layer(torch.randn(3, 8, dtype=torch.float64), _tables(), backend=be),
     [torch.float64]),
]


@pytest.mark.parametrize("label,call,dtypes", DTYPE_CASES, ids=[case[0] for case in DTYPE_CASES])
def test_output_dtypes_do_not_depend_on_the_backend(label, call, dtypes):
    for backend in ("triton", "torch"):
        assert [o.dtype for o in _outputs(call(backend))] == dtypes, f"{label} ({backend})"


def test_the_reference_keeps_float64():
    lam, b = et.reference.toeplitz_to_ssm(torch.randn(2, 9, dtype=torch.float64))
    assert lam.dtype == torch.complex128
    y, final = et.reference.ssm_scan(torch.randn(4, 5, 2, dtype=torch.float64), lam, b)
    assert y.dtype == torch.float64 and final.dtype == torch.complex128


def _meta(t):
    return t.to("meta")


# Every op on meta tensors with backend="triton": refused before any allocation.
META_CASES = [
    ("toeplitz_to_ssm", lambda: et.toeplitz_to_ssm(_meta(torch.randn(2, 8)), backend="triton")),
    ("ssm_kernel", lambda: et.ssm_kernel(*map(_meta, _ssm(2, 4)), 5, backend="triton")),
    ("vandermonde_solve", lambda: et.vandermonde_solve(
        _meta(torch.exp(-2j * torch.pi * torch.arange(1, 5) / 5)[None].to(C64)), _meta(torch.randn(1, 4)),
        backend="triton")),
    ("ssm_scan", lambda: et.ssm_scan(_meta(torch.randn(64, 4096, 3)), *map(_meta, _ssm(3, 4)), backend="triton")),
    ("ssm_step", lambda: et.ssm_step(_meta(torch.randn(2, 3)), *map(_meta, _ssm(3, 4)),
                                     _meta(torch.zeros(2, 3, 4, dtype=C64)), backend="triton")),
    ("ssm_prefill_state", lambda: et.ssm_prefill_state(_meta(torch.randn(2, 5, 3)), _meta(_ssm(3, 4)[1]), 8,
                                                       backend="triton")),
    ("lsh_hash", lambda: et.lsh_hash(_meta(torch.randn(3, 2, 4)), backend="triton")),
    ("memory_gather", lambda: et.memory_gather(_meta(torch.zeros(3, 2, dtype=torch.int32)),
                                               _meta(torch.ones(3, 2)), _meta(_tables()), backend="triton")),
    ("memory_layer", lambda: et.memory_layer(_meta(torch.randn(3, 8)), _meta(_tables()), backend="triton")),
]


@pytest.mark.parametrize("label,call", META_CASES, ids=[case[0] for case in META_CASES])
def test_meta_tensors_are_refused_by_the_triton_backend(label, call):
    with pytest.raises(ValueError, match=r"backend='triton' runs on CUDA tensors .* got tensors on \['meta'\]"):
        call()
