"""vandermonde_solve: Bjorck-Pereyra (Triton and the Torch oracle) against float64 torch.linalg.solve."""

import pytest
import torch
from helpers import rel_error

import etsc_triton as et
from etsc_triton import reference
from etsc_triton.ops.toeplitz import solve
from etsc_triton.ops.toeplitz.naive import leja_order as reference_leja_order

# Relative error of b vs float64 linalg.solve for well-spread unit-circle nodes, measured 1.5e-6 (N=17) ..
# 3.4e-6 (N=33): float32 recurrences on a well-conditioned system (Leja order), ~N ulps.
RTOL_SPREAD = 1e-5
RTOL_FLOAT64_ORACLE = 1e-12  # the same recurrences in complex128


def spread_nodes(systems, size, seed=0):
    """Nodes on the unit circle: equispaced plus a random jitter below a third of the spacing."""
    g = torch.Generator().manual_seed(seed)
    jitter = 0.3 * torch.rand(systems, size, generator=g, dtype=torch.float64) / size
    return torch.exp(2j * torch.pi * (torch.arange(size, dtype=torch.float64) / size + jitter))


def direct_solve(lam, t):
    size = lam.shape[-1]
    matrix = lam.to(torch.complex128)[..., None, :] ** torch.arange(size)[:, None]
    matrix[..., 0, :] = 1.0
    return torch.linalg.solve(matrix, t.to(torch.complex128))


@pytest.mark.parametrize("size", [1, 2, 17, 33])
@pytest.mark.parametrize("complex_rhs", [False, True])
def test_matches_linalg_solve(device, size, complex_rhs):
    lam = spread_nodes(2, size, seed=size)
    g = torch.Generator().manual_seed(size + 1)
    t = torch.randn(2, size, generator=g, dtype=torch.complex64 if complex_rhs else torch.float32)
    expected = direct_solve(lam, t)
    b = et.vandermonde_solve(lam.to(torch.complex64).to(device), t.to(device), backend="triton")
    assert b.dtype == torch.complex64 and b.shape == (2, size)
    assert rel_error(b, direct_solve(lam.to(torch.complex64), t)) <= RTOL_SPREAD
    assert (
        rel_error(reference.vandermonde_solve(lam, t.to(torch.complex128)), expected) <= RTOL_FLOAT64_ORACLE
    )


def test_dft_nodes_reproduce_etsc(device):
    torch.manual_seed(0)
    t = torch.randn(3, 20, device=device)
    lam, b_dft = et.toeplitz_to_ssm(t, real=False, backend="triton")
    b = et.vandermonde_solve(lam, t, backend="triton")
    assert rel_error(b, b_dft) <= RTOL_SPREAD


def test_real_nodes_lose_accuracy(device):
    """The ETSC paper's point: real nodes give huge, cancelling weights, so the complex64 solution no longer
    realises t (Bjorck-Pereyra itself stays accurate in b for ordered real nodes)."""
    size = 24
    lam = torch.linspace(0.05, 0.95, size, dtype=torch.float64).to(torch.complex128)[None]
    t = torch.randn(1, size, dtype=torch.float64)
    b = et.vandermonde_solve(lam.to(torch.complex64).to(device), t.to(device), backend="triton")
    assert rel_error(b, reference.vandermonde_solve(lam, t)) <= 1e-4
    lam64 = lam.to(torch.complex64).to(torch.complex128)
    realised = reference.ssm_kernel(lam64, b.cpu().to(torch.complex128), size)
    assert rel_error(realised, t) > 1e3
    dft = torch.exp(-2j * torch.pi * torch.arange(1, size + 1) / (size + 1)).to(torch.complex64)[None]
    b_dft = et.vandermonde_solve(dft.to(device), t.to(device), backend="triton")
    realised_dft = reference.ssm_kernel(dft.to(torch.complex128), b_dft.cpu().to(torch.complex128), size)
    assert rel_error(realised_dft, t) <= 1e-5


def test_batch_non_contiguous_torch_backend_auto(device):
    lam = spread_nodes(6, 9, seed=3).to(torch.complex64).reshape(2, 3, 9).transpose(0, 1).to(device)
    t = torch.randn(2, 3, 9).transpose(0, 1).to(device)
    expected = direct_solve(lam.cpu(), t.cpu())
    for backend in ("triton", "torch", "auto"):
        b = et.vandermonde_solve(lam, t, backend=backend)
        assert b.shape == (3, 2, 9) and b.dtype == torch.complex64
        assert rel_error(b, expected) <= RTOL_SPREAD, backend


def test_nan_propagates(device):
    lam = spread_nodes(2, 7, seed=4).to(torch.complex64).to(device)
    t = torch.randn(2, 7, device=device)
    t[0, 3] = float("nan")
    b = et.vandermonde_solve(lam, t, backend="triton")
    assert torch.isnan(b[0]).any() and not torch.isnan(b[1]).any()


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.randn(4), torch.randn(4)), TypeError, "lam must be a complex"),
        ((torch.randn(4, dtype=torch.complex64), torch.arange(4)), TypeError, "t must be a floating"),
        ((torch.randn(4, dtype=torch.complex64), torch.randn(5)), ValueError, "shape"),
        ((torch.randn(0, dtype=torch.complex64), torch.randn(0)), ValueError, "lam must hold at least one node"),
        ((torch.tensor([1.0, 0.5, 1.0], dtype=torch.complex64), torch.randn(3)), ValueError, "distinct"),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        et.vandermonde_solve(*args)
    with pytest.raises(error, match=match):
        reference.vandermonde_solve(*args)


@pytest.mark.gpu
def test_device_mismatch():
    with pytest.raises(ValueError, match="device"):
        et.vandermonde_solve(torch.randn(4, dtype=torch.complex64, device="cuda"), torch.randn(4))


@pytest.mark.gpu
@pytest.mark.parametrize("size", [256, 1024, 2048])
def test_large_systems_on_gpu(size):
    lam = spread_nodes(4, size, seed=size).to(torch.complex64)
    t = torch.randn(4, size)
    b = et.vandermonde_solve(lam.cuda(), t.cuda())
    assert rel_error(b, direct_solve(lam, t)) <= 1e-3  # float32 recurrences: error grows ~ N ulps


@pytest.mark.parametrize("size", [5, 33, 100])
def test_kernel_leja_order_equals_oracle_order(device, size):
    """The in-kernel ordering (float64 log-distances) picks the oracle's order, ties included (DFT nodes are
    symmetric), also across several blocks (the interpreter's block is 64)."""
    g = torch.Generator().manual_seed(size)
    families = {
        "dft": torch.exp(-2j * torch.pi * torch.arange(1, size + 1) / (size + 1))[None],
        "real": torch.linspace(0.05, 0.95, size)[None].to(torch.complex64),
        "random": torch.randn(2, size, generator=g, dtype=torch.complex64),
    }
    for name, lam in families.items():
        lam = lam.to(torch.complex64)
        _, order = solve.solve_with_order(lam.to(device), torch.zeros(lam.shape, device=device))
        assert torch.equal(order.cpu().long(), reference_leja_order(lam)), name


def test_gradient_of_t_and_refusal_for_lam(device):
    lam = spread_nodes(2, 9, seed=5).to(torch.complex64).to(device)
    t = torch.randn(2, 9, device=device, requires_grad=True)
    upstream = torch.randn(2, 9, dtype=torch.complex64, device=device)
    b = et.vandermonde_solve(lam, t, backend="triton")
    (grad_t,) = torch.autograd.grad((torch.view_as_real(b) * torch.view_as_real(upstream)).sum(), [t])
    t64 = t.detach().double().cpu().requires_grad_()
    b64 = direct_solve(lam.cpu(), t64)
    (expected,) = torch.autograd.grad((torch.view_as_real(b64) * torch.view_as_real(upstream.cpu()).double()).sum(),
                                      [t64])
    assert rel_error(grad_t, expected) <= RTOL_SPREAD
    with pytest.raises(NotImplementedError, match="gradients with respect to lam"):
        et.vandermonde_solve(lam.clone().requires_grad_(), t, backend="triton")
