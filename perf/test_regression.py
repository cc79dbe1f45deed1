"""Regression benchmarks (pytest-benchmark) at the headline sizes; GPU only.

    pytest perf/test_regression.py --benchmark-only --benchmark-save=h100            # record a baseline
    pytest perf/test_regression.py --benchmark-only --benchmark-compare=0001_h100 \
        --benchmark-compare-fail=median:10%                                       # fail on a 10% slowdown

Saved runs live under .benchmarks/ (committed per GPU). Each case synchronises the device inside the timed
call, so the figures are wall times of complete kernels (launch included), comparable run to run; the sweeps
and plots of ``python -m perf`` are the place for absolute figures.
"""

import pytest
import torch

import etsc_triton as et
from perf.harness import random_ssm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="regression benchmarks need a GPU")


def _conversion(n, d):
    t = torch.randn(d, n, device="cuda")
    return lambda: et.toeplitz_to_ssm(t)


def _ssm_kernel(channels, modes, length):
    lam, b = random_ssm(channels, modes, "cuda")
    return lambda: et.ssm_kernel(lam, b, length)


def _ssm_kernel_backward(channels, modes, length):
    lam, b = random_ssm(channels, modes, "cuda")
    lam.requires_grad_()
    b.requires_grad_()
    dk = torch.randn(channels, length, device="cuda")
    return lambda: torch.autograd.grad(et.ssm_kernel(lam, b, length), [lam, b], dk)


def _step(batch, channels, modes):
    lam, b = random_ssm(channels, modes, "cuda")
    state = torch.zeros(batch, channels, modes, device="cuda", dtype=torch.complex64)
    x = torch.randn(batch, channels, device="cuda")
    return lambda: et.ssm_step(x, lam, b, state)


def _scan(batch, length, channels, modes):
    lam, b = random_ssm(channels, modes, "cuda")
    x = torch.randn(batch, length, channels, device="cuda")
    return lambda: et.ssm_scan(x, lam, b)


def _scan_backward(batch, length, channels, modes):
    lam, b = random_ssm(channels, modes, "cuda")
    leaves = [torch.randn(batch, length, channels, device="cuda").requires_grad_(), lam.requires_grad_(),
              b.requires_grad_()]
    dy = torch.randn(batch, length, channels, device="cuda")

    def run():
        y, _ = et.ssm_scan(*leaves)
        return torch.autograd.grad(y, leaves, dy)

    return run


def _memory(tokens, d, tau, backward):
    x = torch.randn(tokens, d, device="cuda", requires_grad=backward)
    tables = (0.02 * torch.randn(d // tau, 2**tau, d, device="cuda")).requires_grad_(backward)

    def run():
        y = et.memory_layer(x, tables)
        if backward:
            y.backward(torch.ones_like(y))
        return y

    return run


CASES = {
    "conversion_n512_d4096": lambda: _conversion(512, 4096),
    "conversion_n16384_d4096": lambda: _conversion(16384, 4096),
    "ssm_kernel_D1024_N64_L4096": lambda: _ssm_kernel(1024, 64, 4096),
    "ssm_kernel_fwd_bwd_D1024_N64_L4096": lambda: _ssm_kernel_backward(1024, 64, 4096),
    "step_B1_D1024_N512": lambda: _step(1, 1024, 512),
    "step_B8_D1024_N256": lambda: _step(8, 1024, 256),
    "step_B64_D1024_N256": lambda: _step(64, 1024, 256),
    "scan_B8_L4096_D2048_N64": lambda: _scan(8, 4096, 2048, 64),
    "scan_B8_L4096_D2048_N256": lambda: _scan(8, 4096, 2048, 256),
    "scan_B1_L1M_D64_N16_chunked": lambda: _scan(1, 1 << 20, 64, 16),
    "scan_fwd_bwd_B8_L4096_D2048_N64": lambda: _scan_backward(8, 4096, 2048, 64),
    "memory_fwd_T8192_d1024": lambda: _memory(8192, 1024, 8, False),
    "memory_fwd_bwd_T8192_d1024": lambda: _memory(8192, 1024, 8, True),
    "memory_fwd_T1_d1024": lambda: _memory(1, 1024, 8, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_regression(benchmark, case):
    fn = CASES[case]()

    def timed():
        out = fn()
        torch.cuda.synchronize()
        return out

    benchmark.pedantic(timed, rounds=50, iterations=1, warmup_rounds=5)
