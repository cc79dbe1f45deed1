"""ssm_kernel: fused Vandermonde evaluation against the float64 materialised oracle, edge nodes, bad input."""

import pytest
import torch
from helpers import assert_close, rel_error

import etsc_triton as et
from etsc_triton import reference

# Relative 2-norm error vs the float64 oracle, measured ~1.2e-7 at L <= 700: float32 products and sums of
# unit-size terms (the float64 phase reduction keeps the angle error at ~1 ulp whatever j is).
RTOL_SMALL = 1e-6
# The accuracy goal for |lam| <= 1, L <= 16384 (GPU test below).
RTOL_GOAL = 1e-4


def random_ssm(shape, device, radius_power=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    radius = torch.rand(shape, generator=g, dtype=torch.float64) ** radius_power
    angle = 2 * torch.pi * torch.rand(shape, generator=g, dtype=torch.float64)
    lam = torch.polar(radius, angle).to(torch.complex64)
    b = torch.randn(shape, generator=g, dtype=torch.complex64)
    return lam.to(device), b.to(device)


def oracle(lam, b, length):
    return reference.ssm_kernel(lam.cpu().to(torch.complex128), b.cpu().to(torch.complex128), length)


@pytest.mark.parametrize("modes, length", [(33, 63), (1, 17), (16, 200), (47, 301)])
def test_matches_float64_oracle(device, modes, length):
    lam, b = random_ssm((3, modes), device, seed=modes)
    out = et.ssm_kernel(lam, b, length, backend="triton")
    assert out.dtype == torch.float32 and out.shape == (3, length)
    assert rel_error(out, oracle(lam, b, length)) <= RTOL_SMALL


def test_unit_circle_and_etsc_nodes(device):
    t = torch.randn(2, 63, device=device)
    lam, b = et.toeplitz_to_ssm(t, backend="triton")
    out = et.ssm_kernel(lam, b, 63, backend="triton")
    assert rel_error(out, oracle(lam, b, 63)) <= RTOL_SMALL
    assert rel_error(out, t) <= 2e-6  # the round trip realises t (lam rounding, see test_toeplitz_to_ssm)


def test_zero_node_and_outside_disc(device):
    lam = torch.tensor(
        [[0.0 + 0.0j, 0.5 - 0.5j, 1.01 + 0.0j, -0.3 + 0.9j]], dtype=torch.complex64, device=device
    )
    b = torch.tensor(
        [[1.0 + 2.0j, -1.0 + 0.5j, 0.25 - 0.25j, 2.0 + 0.0j]], dtype=torch.complex64, device=device
    )
    out = et.ssm_kernel(lam, b, 50, backend="triton")
    expected = oracle(lam, b, 50)
    assert expected[0, 0] == 1.0 - 1.0 + 0.25 + 2.0
    assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_batch_shapes_non_contiguous_and_empty(device):
    lam, b = random_ssm((2, 3, 21), device, seed=5)
    lam_nc = lam.transpose(0, 1)  # [3, 2, 21] non-contiguous
    b_nc = b.transpose(0, 1)
    out = et.ssm_kernel(lam_nc, b_nc, 40, backend="triton")
    assert out.shape == (3, 2, 40)
    assert rel_error(out, oracle(lam_nc, b_nc, 40)) <= RTOL_SMALL
    single = et.ssm_kernel(lam[0, 0], b[0, 0], 40, backend="triton")
    assert single.shape == (40,)
    assert rel_error(single, oracle(lam[0, 0], b[0, 0], 40)) <= RTOL_SMALL
    assert et.ssm_kernel(lam, b, 0, backend="triton").shape == (2, 3, 0)


def test_torch_backend_and_auto(device):
    lam, b = random_ssm((2, 9), device, seed=7)
    expected = oracle(lam, b, 33)
    for backend in ("torch", "auto"):
        out = et.ssm_kernel(lam, b, 33, backend=backend)
        assert out.dtype == torch.float32
        assert rel_error(out, expected) <= 1e-5  # complex64 pow in the materialised reference


# The NaN phase's quadrant is an integer cast of NaN: undefined, and numpy says so in the interpreter. The
# quadrant only picks signs of values that are NaN already.
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_nan_node_propagates(device):
    lam, b = random_ssm((2, 5), device, seed=8)
    lam[1, 2] = complex(float("nan"), 0.0)
    out = et.ssm_kernel(lam, b, 20, backend="triton")
    assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.randn(4), torch.randn(4, dtype=torch.complex64), 5), TypeError, "lam must be a complex"),
        ((torch.randn(4, dtype=torch.complex64), torch.randn(4), 5), TypeError, "b must be a complex"),
        (
            (torch.randn(4, dtype=torch.complex64), torch.randn(5, dtype=torch.complex64), 5),
            ValueError,
            "shape",
        ),
        (
            (torch.randn(4, dtype=torch.complex64), torch.randn(4, dtype=torch.complex64), -1),
            ValueError,
            ">= 0",
        ),
        (
            (torch.randn(4, dtype=torch.complex64), torch.randn(4, dtype=torch.complex64), 5.0),
            TypeError,
            "int",
        ),
        (
            (torch.randn(0, dtype=torch.complex64), torch.randn(0, dtype=torch.complex64), 5),
            ValueError,
            "lam must hold at least one mode",
        ),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        et.ssm_kernel(*args)
    with pytest.raises(error, match=match):
        reference.ssm_kernel(*args)


@pytest.mark.gpu
def test_device_mismatch():
    lam = torch.randn(4, dtype=torch.complex64, device="cuda")
    with pytest.raises(ValueError, match="device"):
        et.ssm_kernel(lam, torch.randn(4, dtype=torch.complex64), 5)


@pytest.mark.gpu
@pytest.mark.parametrize("modes, length", [(64, 4096), (64, 16384), (512, 16384), (7, 16384)])
def test_long_kernels_on_gpu(modes, length):
    lam, b = random_ssm((4, modes), "cuda", radius_power=0.02, seed=length)
    lam = lam / lam.abs().clamp_min(1.0)  # |lam| <= 1
    out = et.ssm_kernel(lam, b, length)
    assert rel_error(out, oracle(lam, b, length)) <= RTOL_GOAL


@pytest.mark.gpu
def test_torch_compile():
    lam, b = random_ssm((16, 64), "cuda", seed=3)
    compiled = torch.compile(lambda x, y: et.ssm_kernel(x, y, 1000, backend="triton"), fullgraph=True)
    out = compiled(lam, b)
    # Same kernel, but inductor may compute the launcher's float64 log2|lam| and angle in its own kernels: a
    # last-bit change there is multiplied by j (up to 999) and can flip an fp32 rounding, so not bit for bit.
    assert rel_error(out, et.ssm_kernel(lam, b, 1000, backend="triton")) <= 1e-6
    assert rel_error(out, oracle(lam, b, 1000)) <= RTOL_GOAL


def kernel_gradients(fn, lam, b, dk, complex_dtype):
    """Gradients of ``<K, dk>`` w.r.t. lam and b."""
    lam = lam.to(complex_dtype).clone().requires_grad_()
    b = b.to(complex_dtype).clone().requires_grad_()
    (fn(lam, b).double() * dk.double()).sum().backward()
    return lam.grad, b.grad


# Gradients relative to their largest magnitude against float64 autograd through the oracle: measured 7e-8 ..
# 5.1e-7 (L <= 1000, |lam| up to 1): fp32 tensor products as in the forward. dlam sums lag-weighted terms and
# grows about linearly with L (2.2e-6 at L = 4096, |lam| in [0.9, 1], interpreter).
GRAD_TOL = 2e-6


def grad_tol(length: int) -> float:
    return GRAD_TOL * max(1.0, length / 1000)


@pytest.mark.parametrize("rows, modes, length", [(3, 5, 13), (2, 33, 63), (2, 17, 200), (1, 16, 1000)])
def test_gradients_match_float64_autograd(device, rows, modes, length):
    lam, b = random_ssm((rows, modes), device, seed=length)
    dk = torch.randn(rows, length, generator=torch.Generator().manual_seed(1)).to(device)
    got = kernel_gradients(lambda lam, b: et.ssm_kernel(lam, b, length, backend="triton"), lam, b, dk,
                           torch.complex64)
    expected = kernel_gradients(lambda lam, b: reference.ssm_kernel(lam, b, length), lam.cpu(), b.cpu(),
                                dk.cpu(), torch.complex128)
    for name, g, e in zip(("lam", "b"), got, expected, strict=True):
        assert g.dtype == torch.complex64
        assert_close(g, e, atol=GRAD_TOL * e.abs().max().item(), rtol=0, name=f"d{name}")


def test_gradients_batch_shape_and_only_b(device):
    lam, b = random_ssm((2, 3, 7), device, seed=4)
    b = b.clone().requires_grad_()
    et.ssm_kernel(lam, b, 20, backend="triton").sum().backward()
    b64 = b.detach().cpu().to(torch.complex128).requires_grad_()
    reference.ssm_kernel(lam.cpu().to(torch.complex128), b64, 20).sum().backward()
    assert b.grad.shape == (2, 3, 7) and b.grad.dtype == torch.complex64
    assert_close(b.grad, b64.grad, atol=GRAD_TOL * b64.grad.abs().max().item(), rtol=0, name="db")


@pytest.mark.gpu
def test_gradients_long_kernels_on_gpu_and_under_torch_compile():
    lam, b = random_ssm((64, 64), "cuda", seed=11)
    dk = torch.randn(64, 4096, device="cuda")
    eager = kernel_gradients(lambda lam, b: et.ssm_kernel(lam, b, 4096), lam, b, dk, torch.complex64)
    expected = kernel_gradients(lambda lam, b: reference.ssm_kernel(lam, b, 4096), lam, b, dk, torch.complex128)
    for name, g, e in zip(("lam", "b"), eager, expected, strict=True):
        assert_close(g, e, atol=grad_tol(4096) * e.abs().max().item(), rtol=0, name=f"d{name}")
    compiled = kernel_gradients(torch.compile(lambda lam, b: et.ssm_kernel(lam, b, 4096)), lam, b, dk,
                                torch.complex64)
    for g, e in zip(compiled, eager, strict=True):
        assert torch.equal(g, e)
