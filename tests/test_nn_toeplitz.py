"""ToeplitzSSM: FFT forward vs direct convolution, prefill + step == forward, mode truncation bound."""

import math

import pytest
import torch
from helpers import assert_close

import etsc_triton as et
from etsc_triton.nn.toeplitz import ToeplitzSSM, causal_fft_conv, toeplitz_kernel

# prefill / step run in fp32 (complex64 SSM, fp32 FFT) against a float64 forward: the error is a few fp32
# roundings of sum_j |K_j x_{i-j}|; measured <= 1e-6 of max|y| at these sizes, tolerance 1e-5.
FP32_REL = 1e-5


def _layer(channels=5, n=15, seed=0, gamma=None, tail="ssm", backend="auto"):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(channels, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    if gamma is None:
        gamma = 0.85 + 0.15 * torch.rand(channels, generator=g, dtype=torch.float64)
    return ToeplitzSSM(t, gamma, tail=tail, backend=backend)


def _direct_conv(x, kernel):
    """float64 y_i = sum_{j <= i} K_j x_{i-j} by an explicit double loop over lags."""
    length = x.shape[1]
    y = torch.zeros(x.shape, dtype=torch.float64)
    for j in range(min(length, kernel.shape[1])):
        y[:, j:] += kernel[:, j] * x[:, : length - j].double()
    return y


def test_kernel_tails():
    layer = _layer(n=7)
    t, gamma = layer.t, layer.gamma
    k_ssm = layer.kernel(20, tail="ssm")
    k_zero = layer.kernel(20, tail="zero")
    lags = torch.arange(20, dtype=torch.float64)
    assert_close(k_zero[:, :7], gamma[:, None] ** lags[:7] * t, atol=1e-15, rtol=0)
    assert (k_zero[:, 7:] == 0).all()
    assert_close(k_ssm[:, :7], k_zero[:, :7], atol=0, rtol=0)
    assert_close(k_ssm[:, 7], -(gamma**7) * t.sum(-1), atol=1e-15, rtol=0, name="wrap lag n")
    assert_close(k_ssm[:, 8:16], gamma[:, None] ** 8 * k_ssm[:, :8], atol=1e-14, rtol=0, name="period m")


@pytest.mark.parametrize("tail", ["ssm", "zero"])
@pytest.mark.parametrize("length", [1, 9, 40])
def test_forward_is_the_causal_convolution(tail, length):
    layer = _layer(tail=tail)
    x = torch.randn(2, length, 5, dtype=torch.float64)
    expected = _direct_conv(x, layer.kernel(length))
    assert_close(layer(x), expected, atol=1e-12, rtol=0)
    assert_close(layer(x.float()), expected, atol=1e-5 * expected.abs().max().item(), rtol=0, name="fp32")


def test_tails_agree_up_to_n():
    ssm, zero = _layer(tail="ssm"), _layer(tail="zero")
    x = torch.randn(2, 15, 5, dtype=torch.float64)
    assert_close(ssm(x), zero(x), atol=1e-13, rtol=0)
    x = torch.randn(2, 16, 5, dtype=torch.float64)
    assert (ssm(x) - zero(x)).abs().max() > 1e-6


def test_causal_fft_conv_noncontiguous():
    x = torch.randn(5, 30, 2, dtype=torch.float64).transpose(0, 2)
    kernel = torch.randn(5, 12, dtype=torch.float64)
    assert_close(causal_fft_conv(x, kernel), _direct_conv(x, kernel), atol=1e-12, rtol=0)


@pytest.mark.parametrize("prompt", [1, 6, 15, 16, 40])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_prefill_then_steps_equals_forward(device, prompt, backend):
    """Prompts shorter and longer than n (15): prefill + 6 steps == forward on the whole sequence."""
    layer = _layer(backend=backend).to(device)
    report = layer.convert()
    assert report.rank is None and report.state_size == 8
    x = torch.randn(2, prompt + 6, 5, dtype=torch.float64)
    expected = layer(x.to(device))
    y, state = layer.prefill(x[:, :prompt].float().to(device))
    assert state.dtype == torch.complex64 and state.shape == (2, 5, 8)
    outputs = [layer.step(x[:, i].float().to(device), state) for i in range(prompt, prompt + 6)]
    got = torch.cat([y, torch.stack(outputs, 1)], 1)
    scale = expected.abs().max().item()
    assert_close(got, expected, atol=FP32_REL * scale, rtol=0)


def test_step_with_state_pool(device):
    layer = _layer(backend="triton").to(device)
    layer.convert()
    x = torch.randn(3, 20, 5)
    _, state = layer.prefill(x[:, :19].to(device))
    pool = torch.zeros(5, 5, 8, dtype=torch.complex64, device=device)
    pool[torch.tensor([4, 0, 2])] = state
    indices = torch.tensor([4, -1, 2], dtype=torch.int32, device=device)
    y = layer.step(x[:, 19].to(device), pool, state_indices=indices)
    expected = layer(x.to(device))[:, 19]
    assert_close(y[[0, 2]], expected[[0, 2]], atol=1e-5 * expected.abs().max().item(), rtol=0)
    assert (pool[[1, 3]] == 0).all()


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_truncation_bound_holds(device, rank):
    layer = _layer(channels=6, n=17, seed=3).to(device)
    full = layer.convert()
    b_full = layer.b.clone()
    report = layer.convert(rank=rank)
    assert report.rank == rank and report.state_size == rank and layer.lam.shape == (6, rank)
    # kept modes are the largest |b| of every channel; the bound is the sum of the rest
    magnitude = b_full.abs().double().cpu()
    kept = magnitude.gather(1, layer.modes.cpu() - 1)
    assert (kept.min(-1).values >= magnitude.sort(-1, descending=True).values[:, rank - 1] - 1e-7).all()
    assert_close(report.truncation_bound.cpu(), magnitude.sum(-1) - kept.sum(-1), atol=1e-9, rtol=0)
    # measured error (float64 kernel of the complex64 lam, b; includes the conversion's rounding) <= bound + it
    slack = 10 * full.kernel_error.max().item() + 1e-6
    assert (report.kernel_error <= report.truncation_bound + slack).all()
    # the same in float64 at lags well past one period
    lags = torch.arange(60, dtype=torch.float64)
    k_true = layer.kernel(60, tail="ssm", dtype=torch.float64).cpu()
    k_trunc = (
        (
            layer.b.cpu().to(torch.complex128)[..., None]
            * layer.lam.cpu().to(torch.complex128)[..., None] ** lags
        )
        .sum(-2)
        .real
    )
    assert ((k_trunc - k_true).abs().amax(-1) <= report.truncation_bound.cpu() + 1e-5).all()
    assert report.kernel_error.max() > 1e-3, "truncation to few modes must change the kernel"


def test_truncated_prefill_then_steps_equals_truncated_scan(device):
    layer = _layer(channels=4, n=21, seed=4).to(device)
    layer.convert(rank=4)
    x = torch.randn(2, 40, 4)
    lam64, b64 = layer.lam.cpu().to(torch.complex128), layer.b.cpu().to(torch.complex128)
    expected, _ = et.reference.ssm_scan(x.double(), lam64, b64)  # the float64 oracle
    y, state = layer.prefill(x[:, :33].to(device))
    outputs = [layer.step(x[:, i].to(device), state) for i in range(33, 40)]
    got = torch.cat([y, torch.stack(outputs, 1)], 1)
    assert_close(got, expected, atol=FP32_REL * expected.abs().max().item(), rtol=0)


def test_bad_inputs():
    t = torch.randn(3, 7)
    with pytest.raises(TypeError, match="t must be a real floating tensor"):
        ToeplitzSSM(t.to(torch.complex64))
    with pytest.raises(TypeError, match="t must be a real floating tensor"):
        ToeplitzSSM(torch.randn(7))
    with pytest.raises(ValueError, match="t must not be empty"):
        ToeplitzSSM(torch.randn(3, 0))
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\]"):
        ToeplitzSSM(t, 1.2)
    with pytest.raises(ValueError, match="gamma must be a scalar or"):
        ToeplitzSSM(t, torch.full((2,), 0.9))
    with pytest.raises(ValueError, match="tail must be one of"):
        ToeplitzSSM(t, tail="wrap")
    with pytest.raises(ValueError, match="tail must be one of"):
        toeplitz_kernel(t, torch.ones(3), 5, tail="none")
    layer = ToeplitzSSM(t, 0.9)
    with pytest.raises(RuntimeError, match="call convert"):
        layer.step(torch.randn(2, 3), torch.zeros(2, 3, 4, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match="call convert"):
        layer.prefill(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="rank must be a positive int"):
        layer.convert(rank=0)
    with pytest.raises(ValueError, match="x must have 3 dimensions with last dim D = 3"):
        layer(torch.randn(2, 5, 4))
    layer.convert()
    with pytest.raises(ValueError, match="state"):
        layer.step(torch.randn(2, 3), torch.zeros(2, 3, 3, dtype=torch.complex64))
