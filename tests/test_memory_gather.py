"""memory_gather: weighted gather-add; forward and gradients (scores, tables, bias) vs float64 autograd."""

import os

import pytest
import torch
from helpers import assert_close

import etsc_triton as et
from etsc_triton import reference

# Against the float64 oracle on the same rounded inputs; the output comes back in the tables' dtype.
TOLERANCES = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),  # fp32 accumulation over K rows
    torch.bfloat16: dict(atol=1e-2, rtol=8e-3),  # fp32 sum rounded once to bf16 output (2^-8 relative)
    torch.float16: dict(atol=2e-3, rtol=1e-3),  # fp32 sum rounded once to fp16 output (2^-11 relative)
}
DSCORES_TOL = dict(atol=1e-5, rtol=1e-5)  # fp32 inner products over d_out


def make_inputs(lead, num_tables, rows, d_out, *, seed=0, code_dtype=torch.int32):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, rows, (*lead, num_tables), generator=gen).to(code_dtype)
    scores = torch.rand(*lead, num_tables, generator=gen, dtype=torch.float64)
    tables = torch.randn(num_tables, rows, d_out, generator=gen, dtype=torch.float64)
    bias = torch.randn(d_out, generator=gen, dtype=torch.float64)
    dy = torch.randn(*lead, d_out, generator=gen, dtype=torch.float64)
    return codes, scores, tables, bias, dy


def check(codes, scores, tables, bias, dy, device, dtype=torch.float32, deterministic=False):
    tables = tables.to(dtype)
    leaves = [scores.float().double().requires_grad_(True), tables.double().requires_grad_(True),
              bias.float().double().requires_grad_(True)]
    expected = reference.memory_gather(codes, *leaves)
    ref_grads = torch.autograd.grad(expected, leaves, dy)
    ours = [scores.float().to(device).requires_grad_(True), tables.to(device).requires_grad_(True),
            bias.float().to(device).requires_grad_(True)]
    y = et.memory_gather(codes.to(device), *ours, deterministic=deterministic, backend="triton")
    assert y.dtype == dtype
    grads = torch.autograd.grad(y, ours, dy.to(device, dtype))
    assert_close(y, expected, **TOLERANCES[dtype], name="y")
    dy_rounded = dy.to(dtype).double()  # the kernel sees dy in the output dtype
    ref_grads = torch.autograd.grad(reference.memory_gather(codes, *leaves), leaves, dy_rounded)
    assert_close(grads[0], ref_grads[0], **DSCORES_TOL, name="dscores")
    assert_close(grads[1], ref_grads[1], **TOLERANCES[dtype], name="dtables")
    assert_close(grads[2], ref_grads[2], atol=1e-5, rtol=1e-5, name="dbias")


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("code_dtype", [torch.int32, torch.int64])
def test_forward_and_gradients(device, deterministic, code_dtype):
    check(*make_inputs((31,), 3, 16, 33, code_dtype=code_dtype), device, deterministic=deterministic)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("deterministic", [False, True])
def test_half_precision_tables(device, dtype, deterministic):
    check(*make_inputs((19,), 2, 8, 21, seed=1), device, dtype=dtype, deterministic=deterministic)


def test_leading_shape_single_token_and_no_bias(device):
    check(*make_inputs((2, 3, 5), 2, 4, 9, seed=2), device)
    check(*make_inputs((1,), 7, 4, 40, seed=3), device)  # one token: the split-K forward
    codes, scores, tables, _, _ = make_inputs((6,), 2, 4, 5, seed=4)
    y = et.memory_gather(codes.to(device), scores.float().to(device), tables.float().to(device),
                         backend="triton")
    assert_close(y, reference.memory_gather(codes, scores.float().double(), tables), atol=1e-5, rtol=1e-5)


def test_deterministic_bit_identical(device):
    codes, scores, tables, bias, dy = make_inputs((57,), 2, 4, 18, seed=5)

    def grads():
        s = scores.float().to(device).requires_grad_(True)
        t = tables.float().to(device).requires_grad_(True)
        y = et.memory_gather(codes.to(device), s, t, deterministic=True, backend="triton")
        return torch.autograd.grad(y, (s, t), dy.float().to(device))

    first, second = grads(), grads()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_non_contiguous_and_backends(device):
    codes, scores, tables, bias, _ = make_inputs((8, 6), 3, 8, 10, seed=6)
    y = et.memory_gather(codes.to(device).transpose(0, 1), scores.float().to(device).transpose(0, 1),
                         tables.float().to(device), backend="triton")
    expected = reference.memory_gather(codes.transpose(0, 1), scores.float().double().transpose(0, 1), tables)
    assert_close(y, expected, atol=1e-5, rtol=1e-5, name="strided")
    y_torch = et.memory_gather(codes, scores.float(), tables.float(), bias.float(), backend="torch")
    y_auto = et.memory_gather(codes, scores.float(), tables.float(), bias.float())  # on CPU: the fused CPU path
    assert y_torch.dtype == y_auto.dtype == torch.float32
    assert_close(y_auto, y_torch, atol=1e-5, rtol=1e-5, name="auto vs torch")


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(codes=torch.tensor([[0, 16]])), ValueError, "codes must lie in \\[0, 16\\)"),
        (dict(codes=torch.tensor([[-1, 0]])), ValueError, "codes must lie"),
        (dict(codes=torch.tensor([[0.0, 1.0]])), TypeError, "codes must have dtype"),
        (dict(scores=torch.rand(1, 3)), ValueError, "shape of codes"),
        (dict(codes=torch.tensor([[0, 1, 2]]), scores=torch.rand(1, 3)), ValueError, "number of tables"),
        (dict(tables=torch.randn(2, 12, 4)), ValueError, "power of two"),
        (dict(bias=torch.randn(5)), ValueError, "bias"),
        (dict(scores=torch.rand(1, 2, device="meta")), ValueError, "one device"),
        (dict(scores=torch.ones(1, 2, dtype=torch.int32)), TypeError, "scores must be a real floating"),
    ],
)
def test_bad_inputs(change, error, match):
    args = dict(codes=torch.tensor([[0, 15]]), scores=torch.rand(1, 2), tables=torch.randn(2, 16, 4),
                bias=None)
    args.update(change)
    with pytest.raises(error, match=match):
        et.memory_gather(**args)
    with pytest.raises(error, match=match):
        reference.memory_gather(**args)


@pytest.mark.gpu
def test_codes_checked_on_cuda_with_debug_flag(monkeypatch):
    tables = torch.randn(2, 16, 4, device="cuda")
    codes = torch.tensor([[0, 16]], device="cuda", dtype=torch.int32)
    monkeypatch.setitem(os.environ, "ETSC_TRITON_DEBUG", "1")
    with pytest.raises(ValueError, match="codes must lie"):
        et.memory_gather(codes, torch.rand(1, 2, device="cuda"), tables)


@pytest.mark.gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_unchecked_out_of_range_codes_contribute_nothing_on_cuda(deterministic):
    # Without ETSC_TRITON_DEBUG the CUDA path skips the (syncing) range check: such a code must read and
    # write nothing, in the forward and in both backwards, and no other table's row may take it.
    gen = torch.Generator().manual_seed(21)
    codes = torch.randint(0, 16, (9, 3), generator=gen, dtype=torch.int32)
    bad = torch.zeros_like(codes, dtype=torch.bool)
    bad[1, 1], bad[4, 2], bad[7, 0] = True, True, True
    codes[1, 1], codes[4, 2], codes[7, 0] = -1, 16, -16  # -1 of table 1 would be row 15 of table 0
    scores = torch.rand(9, 3, generator=gen, dtype=torch.float64)
    tables = torch.randn(3, 16, 8, generator=gen, dtype=torch.float64)
    dy = torch.randn(9, 8, generator=gen, dtype=torch.float64)
    leaves = [scores.float().cuda().requires_grad_(), tables.float().cuda().requires_grad_()]
    y = et.memory_gather(codes.cuda(), *leaves, backend="triton", deterministic=deterministic)
    dscores, dtables = torch.autograd.grad(y, leaves, dy.float().cuda())
    ref_leaves = [scores.masked_fill(bad, 0.0).requires_grad_(), tables.clone().requires_grad_()]
    expected = reference.memory_gather(codes.masked_fill(bad, 0), *ref_leaves)
    ref_dscores, ref_dtables = torch.autograd.grad(expected, ref_leaves, dy)
    assert_close(y, expected, atol=1e-5, rtol=1e-5, name="y")
    assert_close(dtables, ref_dtables, atol=1e-5, rtol=1e-5, name="dtables")
    assert_close(dscores[~bad.cuda()], ref_dscores[~bad], atol=1e-5, rtol=1e-5, name="dscores")
    assert (dscores[bad.cuda()] == 0).all()
