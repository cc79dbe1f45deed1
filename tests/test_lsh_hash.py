"""lsh_hash: codes (bit order, z = 0 -> bit 1), both score formulas, temperatures, dscores -> dz."""

import pytest
import torch
from helpers import assert_close

import etsc_triton as et
from etsc_triton import reference

# Tolerances of the fp32 kernel against the float64 oracle, per dtype of z (z is upcast exactly to fp32).
TOLERANCES = {
    torch.float32: dict(atol=1e-6, rtol=2e-6),  # product of tau fp32 sigmoids: a few ulp
    torch.bfloat16: dict(atol=1e-6, rtol=2e-6),  # bf16 inputs are exact in fp32: same arithmetic
    torch.float16: dict(atol=1e-6, rtol=2e-6),  # fp16 inputs are exact in fp32: same arithmetic
}
GRAD_TOL = dict(atol=2e-6, rtol=1e-5)  # dz: sigmoid, product and the chain rule in fp32


def direct_scores(z, temperature, weighting):
    """The hash and score formulas (op README) written out element by element in float64."""
    z = z.double()
    s = torch.ones(z.shape[:-1], dtype=torch.float64)
    total = torch.zeros(z.shape[:-1], dtype=torch.float64)
    for j in range(z.shape[-1]):
        s = s * torch.sigmoid(2 * z[..., j].abs() / temperature)
        total = total + z[..., j].abs()
    return s if weighting == "paper" else total * s


def test_code_bit_order_and_zero(device):
    z = torch.tensor([[[1.0, -1.0, -1.0], [-1.0, -1.0, 2.0], [0.0, -0.5, 0.0], [-3.0, -2.0, -1.0]]],
                     device=device)
    for backend in ("triton", "torch"):
        codes, _ = et.lsh_hash(z, backend=backend)
        assert codes.dtype == torch.int32
        assert codes.cpu().tolist() == [[4, 1, 5, 0]]


def test_codes_cover_all_sign_patterns(device):
    tau = 4
    patterns = torch.arange(2**tau)
    bits = (patterns[:, None] >> torch.arange(tau - 1, -1, -1)) & 1
    z = torch.where(bits.bool(), 0.5, -0.5).reshape(1, 2**tau, tau).to(device)
    codes, _ = et.lsh_hash(z, backend="triton")
    assert torch.equal(codes.cpu(), patterns[None].int())


@pytest.mark.parametrize("weighting", ["paper", "magnitude"])
@pytest.mark.parametrize("temperature", [1.0, 0.37, 2.5])
@pytest.mark.parametrize("tau", [1, 3, 8])
def test_scores_match_formula(device, weighting, temperature, tau):
    torch.manual_seed(tau)
    z = torch.randn(2, 7, 5, tau, dtype=torch.float64)
    z[0, 0, 0, 0] = 0.0
    expected = direct_scores(z, temperature, weighting)
    codes, scores = et.lsh_hash(z.float().to(device), temperature=temperature, weighting=weighting,
                                backend="triton")
    assert scores.dtype == torch.float32 and scores.shape == (2, 7, 5)
    assert_close(scores, expected, **TOLERANCES[torch.float32], name="scores")
    ref_codes, ref_scores = reference.lsh_hash(z, temperature=temperature, weighting=weighting)
    assert torch.equal(codes.cpu(), ref_codes)
    assert_close(ref_scores, expected, atol=1e-14, rtol=1e-14, name="oracle scores")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_input_dtypes(device, dtype):
    torch.manual_seed(1)
    z = torch.randn(33, 4, 5).to(dtype)
    codes, scores = et.lsh_hash(z.to(device), backend="triton")
    ref_codes, ref_scores = reference.lsh_hash(z.double())
    assert torch.equal(codes.cpu(), ref_codes)
    assert_close(scores, ref_scores, **TOLERANCES[dtype], name=f"scores {dtype}")


def test_tau_16(device):
    torch.manual_seed(2)
    z = torch.randn(9, 2, 16, dtype=torch.float64)
    codes, scores = et.lsh_hash(z.float().to(device), backend="triton")
    ref_codes, ref_scores = reference.lsh_hash(z)
    assert torch.equal(codes.cpu(), ref_codes)
    assert int(codes.max()) < 2**16
    assert_close(scores, ref_scores, **TOLERANCES[torch.float32], name="scores tau=16")


@pytest.mark.parametrize("weighting", ["paper", "magnitude"])
def test_gradient_against_float64(device, weighting):
    torch.manual_seed(3)
    z64 = torch.randn(3, 11, 4, 5, dtype=torch.float64)
    z64[0, 0, 0, :2] = 0.0  # subgradient sign(0) = 0, as torch's abs
    z64.requires_grad_(True)
    dscores = torch.randn(3, 11, 4, dtype=torch.float64)
    _, ref_scores = reference.lsh_hash(z64, temperature=0.8, weighting=weighting)
    (expected,) = torch.autograd.grad(ref_scores, z64, dscores)
    z = z64.detach().float().to(device).requires_grad_(True)
    _, scores = et.lsh_hash(z, temperature=0.8, weighting=weighting, backend="triton")
    (got,) = torch.autograd.grad(scores, z, dscores.float().to(device))
    assert_close(got, expected, **GRAD_TOL, name="dz")
    assert got[0, 0, 0, :2].abs().max().item() == 0.0


def test_non_contiguous_and_backends(device):
    torch.manual_seed(4)
    base = torch.randn(5, 6, 3, 9, device=device)
    z = base[:, ::2, :, 1:8:2].transpose(0, 1)  # [3, 5, 3, 4], strided everywhere
    codes, scores = et.lsh_hash(z, backend="triton")
    ref_codes, ref_scores = reference.lsh_hash(z.double().cpu())
    assert torch.equal(codes.cpu(), ref_codes)
    assert_close(scores, ref_scores, **TOLERANCES[torch.float32], name="strided scores")
    torch_codes, torch_scores = et.lsh_hash(z.cpu(), backend="torch")
    auto_codes, _ = et.lsh_hash(z.cpu(), backend="auto")
    assert torch.equal(torch_codes, ref_codes) and torch.equal(auto_codes, ref_codes)
    assert torch_scores.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(z=torch.randn(2, 3, 17)), ValueError, "tau"),
        (dict(z=torch.randn(2, 3, 0)), ValueError, "empty|tau"),
        (dict(z=torch.randn(4)), ValueError, "at least 2"),
        (dict(z=torch.ones(2, 3, 4, dtype=torch.int32)), TypeError, "real floating"),
        (dict(z=torch.randn(2, 3, 4, dtype=torch.complex64)), TypeError, "real floating"),
        (dict(z=torch.randn(2, 3, 4), weighting="softmax"), ValueError, "weighting"),
        (dict(z=torch.randn(2, 3, 4), temperature=0.0), ValueError, "temperature"),
        (dict(z=torch.randn(2, 3, 4), temperature=float("inf")), ValueError, "temperature"),
        (dict(z=torch.randn(2, 3, 4), backend="cuda"), ValueError, "backend"),
        (dict(z=[[1.0]]), TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(kwargs, error, match):
    z = kwargs.pop("z")
    with pytest.raises(error, match=match):
        et.lsh_hash(z, **kwargs)
    if "backend" not in kwargs:
        with pytest.raises(error, match=match):
            reference.lsh_hash(z, **kwargs)
