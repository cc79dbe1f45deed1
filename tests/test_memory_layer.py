"""memory_layer: fused forward and every gradient (x, tables, bias) against float64 autograd of the oracle."""

import pytest
import torch
from helpers import assert_close

import etsc_triton as et
from etsc_triton import reference
from etsc_triton.ops.lsh.gather import choose_k_split, forward_blocks
from etsc_triton.ops.tiles import current_tiles

# Tolerances against the float64 oracle evaluated on the same (rounded) inputs, per tables dtype, with x fp32.
TOLERANCES = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),  # fp32 accumulation over K rows, fp32 hashing
    torch.bfloat16: dict(atol=2e-5, rtol=2e-5),  # bf16 rows are exact in fp32 and the output is fp32
    torch.float16: dict(atol=2e-5, rtol=2e-5),  # fp16 rows are exact in fp32 and the output is fp32
}
# d tables come back in the tables' dtype: one rounding to its precision.
DTABLES_TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),  # fp32 scatter-add
    torch.bfloat16: dict(atol=2e-5, rtol=8e-3),  # fp32 sum rounded once to bf16 (2^-8 relative)
    torch.float16: dict(atol=2e-5, rtol=1e-3),  # fp32 sum rounded once to fp16 (2^-11 relative)
}
DX_TOL = dict(atol=5e-5, rtol=5e-5)  # dscore sums d_out products, then the score derivative, in fp32


def make_inputs(lead, num_tables, tau, d_out, *, seed=0, zero_entries=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, num_tables * tau, generator=gen, dtype=torch.float64)
    if zero_entries:
        x.view(-1)[:3] = 0.0
    tables = torch.randn(num_tables, 2**tau, d_out, generator=gen, dtype=torch.float64)
    bias = torch.randn(d_out, generator=gen, dtype=torch.float64)
    dy = torch.randn(*lead, d_out, generator=gen, dtype=torch.float64)
    return x, tables, bias, dy


def reference_and_grads(x, tables, bias, dy, **kwargs):
    leaves = [t.detach().double().cpu().requires_grad_(True) for t in (x, tables, bias)]
    y = reference.memory_layer(*leaves, **kwargs)
    grads = torch.autograd.grad(y, leaves, dy.double().cpu())
    return y.detach(), grads


def triton_and_grads(x, tables, bias, dy, device, **kwargs):
    leaves = [t.detach().to(device).requires_grad_(True) for t in (x, tables, bias)]
    y = et.memory_layer(*leaves, backend="triton", **kwargs)
    grads = torch.autograd.grad(y, leaves, dy.to(device, y.dtype))
    return y.detach(), grads


def check_against_reference(x, tables, bias, dy, device, dtype=torch.float32, **kwargs):
    tables = tables.to(dtype)
    expected, (dx_ref, dt_ref, db_ref) = reference_and_grads(x.float(), tables, bias.float(), dy, **kwargs)
    y, (dx, dt, db) = triton_and_grads(x.float(), tables, bias.float(), dy.float(), device, **kwargs)
    assert y.dtype == torch.float32 and dt.dtype == dtype
    assert_close(y, expected, **TOLERANCES[dtype], name="y")
    assert_close(dx, dx_ref, **DX_TOL, name="dx")
    assert_close(dt, dt_ref, **DTABLES_TOL[dtype], name="dtables")
    assert_close(db, db_ref, atol=1e-5, rtol=1e-5, name="dbias")


@pytest.mark.parametrize("weighting", ["paper", "magnitude"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("deterministic", [False, True])
def test_forward_and_gradients(device, weighting, temperature, deterministic):
    x, tables, bias, dy = make_inputs((37,), 3, 5, 33)
    check_against_reference(x, tables, bias, dy, device, weighting=weighting, temperature=temperature,
                            deterministic=deterministic)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("deterministic", [False, True])
def test_half_precision_tables(device, dtype, deterministic):
    x, tables, bias, dy = make_inputs((29,), 2, 4, 21, seed=1)
    check_against_reference(x, tables, bias, dy, device, dtype=dtype, deterministic=deterministic)


def test_half_precision_input_output_dtype(device):
    x, tables, bias, dy = make_inputs((13,), 2, 3, 17, seed=2, zero_entries=False)
    xb = x.to(torch.bfloat16)
    y = et.memory_layer(xb.to(device), tables.to(device, torch.bfloat16), backend="triton")
    assert y.dtype == torch.bfloat16
    expected = reference.memory_layer(xb.double(), tables.to(torch.bfloat16).double())
    assert_close(y, expected, atol=1e-2, rtol=8e-3, name="bf16 y")  # output rounded once to bf16


@pytest.mark.parametrize("tau", [1, 3, 8])
def test_code_lengths(device, tau):
    x, tables, bias, dy = make_inputs((2, 3, 5), 3, tau, 19, seed=tau)
    check_against_reference(x, tables, bias, dy, device)


def test_code_length_16(device):
    x, tables, bias, dy = make_inputs((7,), 1, 16, 3, seed=16)
    check_against_reference(x, tables, bias, dy, device)


def test_single_token_uses_split_k(device):
    x, tables, bias, dy = make_inputs((1,), 9, 2, 40, seed=5)
    block_t, block_d, _ = forward_blocks(1, 40, current_tiles())
    num_splits, per_split = choose_k_split(1, 9, 40, block_t, block_d, torch.device(device), current_tiles())
    assert num_splits > 1 and num_splits * per_split >= 9
    for deterministic in (False, True):
        check_against_reference(x, tables, bias, dy, device, deterministic=deterministic)


def test_many_tokens_no_split(device):
    block_t, block_d, _ = forward_blocks(4096, 1024, current_tiles())
    assert choose_k_split(4096, 128, 1024, block_t, block_d, torch.device(device), current_tiles())[0] == 1


def test_whole_d_blocks_with_padding_tokens(device):
    # d_out a multiple of BLOCK_D: the hashed forward and backward load rows (and dy) unmasked, with padding
    # tokens in the last token tile
    block_t, block_d, _ = forward_blocks(7, 64, current_tiles())
    x, tables, bias, dy = make_inputs((7,), 3, 4, 2 * block_d, seed=13)
    assert 7 % block_t != 0
    for weighting, deterministic in (("paper", False), ("magnitude", False), ("paper", True)):
        check_against_reference(x, tables, bias, dy, device, weighting=weighting, deterministic=deterministic)


@pytest.mark.parametrize("deterministic", [False, True])
def test_infinite_gradient_reaches_only_its_own_rows(device, deterministic):
    # The last token's dy is infinite: exactly the table rows it hashed to get non-finite gradients, none of
    # the rows padding tokens of its token block point at (they must add exact zeros, not 0 * inf).
    block_t, block_d, _ = forward_blocks(7, 64, current_tiles())
    x, tables, bias, dy = make_inputs((7,), 3, 4, 2 * block_d, seed=14)
    dy[6, 5] = float("inf")
    _, (_, dt_ref, _) = reference_and_grads(x.float(), tables.float(), bias.float(), dy)
    _, (_, dt, _) = triton_and_grads(x.float(), tables.float(), bias.float(), dy.float(), device,
                                     deterministic=deterministic)
    finite = torch.isfinite(dt_ref)
    assert torch.equal(torch.isfinite(dt).cpu(), finite) and (~finite).sum() == 3  # column 5 of one row a table
    assert_close(dt.cpu()[finite], dt_ref[finite], **DTABLES_TOL[torch.float32], name="dtables")


def test_deterministic_is_bit_identical_and_matches_atomic(device):
    x, tables, bias, dy = make_inputs((53,), 3, 3, 26, seed=6)  # 53 tokens on 8 rows: long segments
    runs = [triton_and_grads(x.float(), tables.float(), bias.float(), dy.float(), device, deterministic=True)
            for _ in range(2)]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)
    _, atomic = triton_and_grads(x.float(), tables.float(), bias.float(), dy.float(), device)
    for name, a, b in zip(("dx", "dtables", "dbias"), runs[0][1], atomic, strict=True):
        assert_close(a, b, atol=1e-5, rtol=1e-5, name=name)  # both fp32 sums, different order


def test_no_bias_partial_grads_and_no_grad(device):
    x, tables, _, dy = make_inputs((11,), 2, 3, 9, seed=7)
    xt = x.float().to(device).requires_grad_(True)
    y = et.memory_layer(xt, tables.float().to(device), backend="triton")
    (dx,) = torch.autograd.grad(y, xt, dy.float().to(device))
    x_ref = x.clone().requires_grad_(True)
    (dx_ref,) = torch.autograd.grad(reference.memory_layer(x_ref, tables), x_ref, dy)
    assert_close(dx, dx_ref, **DX_TOL, name="dx only")
    tt = tables.float().to(device).requires_grad_(True)
    y = et.memory_layer(x.float().to(device), tt, backend="triton", deterministic=True)
    (dt,) = torch.autograd.grad(y, tt, dy.float().to(device))
    t_ref = tables.clone().requires_grad_(True)
    (dt_ref,) = torch.autograd.grad(reference.memory_layer(x, t_ref), t_ref, dy)
    assert_close(dt, dt_ref, **DTABLES_TOL[torch.float32], name="dtables only")
    with torch.no_grad():
        y = et.memory_layer(x.float().to(device), tables.float().to(device), backend="triton")
    assert_close(y, reference.memory_layer(x, tables), **TOLERANCES[torch.float32], name="no_grad y")


def test_non_contiguous_x_and_backends(device):
    x, tables, bias, dy = make_inputs((6, 10), 2, 4, 12, seed=8)
    x_strided = x.float().to(device).transpose(0, 1)  # [10, 6, 8], non-contiguous rows
    y = et.memory_layer(x_strided, tables.float().to(device), bias.float().to(device), backend="triton")
    expected = reference.memory_layer(x.transpose(0, 1), tables, bias)
    assert_close(y, expected, **TOLERANCES[torch.float32], name="strided y")
    x_cols = torch.randn(5, 16, dtype=torch.float64)[:, ::2]  # last-dim stride 2
    y = et.memory_layer(x_cols.float().to(device), tables.float().to(device), backend="triton")
    assert_close(y, reference.memory_layer(x_cols, tables), **TOLERANCES[torch.float32], name="col-strided y")
    y_torch = et.memory_layer(x.float(), tables.float(), bias.float(), backend="torch")
    y_auto = et.memory_layer(x.float(), tables.float(), bias.float())  # on CPU: the fused CPU path
    expected = reference.memory_layer(x, tables, bias)
    assert_close(y_torch, expected, **TOLERANCES[torch.float32], name="torch y")
    assert_close(y_auto, expected, **TOLERANCES[torch.float32], name="auto y")


def test_composition_equals_fused(device):
    x, tables, bias, dy = make_inputs((15,), 3, 4, 10, seed=9)
    xd, td, bd = x.float().to(device), tables.float().to(device), bias.float().to(device)
    codes, scores = et.lsh_hash(xd.reshape(15, 3, 4), temperature=0.5, backend="triton")
    composed = et.memory_gather(codes, scores, td, bd, backend="triton")
    fused = et.memory_layer(xd, td, bd, temperature=0.5, backend="triton")
    assert_close(fused, composed, atol=1e-6, rtol=1e-6, name="fused vs composed")


@pytest.mark.parametrize(
    "shapes, kwargs, error, match",
    [
        (((4, 10), (2, 16, 8), None), {}, ValueError, "K \\* tau"),
        (((4, 6), (2, 12, 8), None), {}, ValueError, "power of two"),
        (((4, 34), (2, 2**17, 1), None), {}, ValueError, "tau"),
        (((4, 8), (2, 16), None), {}, ValueError, "3 dimensions"),
        (((4, 8), (2, 16, 8), (7,)), {}, ValueError, "bias"),
        (((4, 8), (2, 16, 8), None), {"weighting": "l2"}, ValueError, "weighting"),
        (((4, 8), (2, 16, 8), None), {"temperature": -1.0}, ValueError, "temperature"),
        (((4, 8), (2, 16, 8), None), {"backend": "tpu"}, ValueError, "backend"),
    ],
)
def test_bad_inputs(shapes, kwargs, error, match):
    x_shape, tables_shape, bias_shape = shapes
    x, tables = torch.randn(x_shape), torch.randn(tables_shape)
    bias = None if bias_shape is None else torch.randn(bias_shape)
    with pytest.raises(error, match=match):
        et.memory_layer(x, tables, bias, **kwargs)
    if "backend" not in kwargs:
        with pytest.raises(error, match=match):
            reference.memory_layer(x, tables, bias, **kwargs)


def test_bad_dtypes_and_devices():
    with pytest.raises(TypeError, match="x must be a real floating"):
        et.memory_layer(torch.ones(3, 8, dtype=torch.int64), torch.randn(2, 16, 4))
    with pytest.raises(TypeError, match="tables must be a real floating"):
        et.memory_layer(torch.randn(3, 8), torch.randn(2, 16, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="one device"):
        et.memory_layer(torch.randn(3, 8), torch.randn(2, 16, 4, device="meta"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 16, 1023])
@pytest.mark.parametrize("d_out", [1000, 1024])  # not a block multiple (masked rows), a multiple (unmasked)
def test_gpu_large(dtype, tokens, d_out):
    x, tables, bias, dy = make_inputs((tokens,), 128, 8, d_out, seed=11)
    check_against_reference(x, tables, bias, dy, "cuda", dtype=dtype)
    runs = [triton_and_grads(x.float(), tables.to(dtype), bias.float(), dy.float(), "cuda",
                             deterministic=True) for _ in range(2)]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_torch_compile():
    x, tables, bias, _ = make_inputs((64,), 16, 8, 96, seed=12)
    args = [t.float().cuda() for t in (x, tables, bias)]
    compiled = torch.compile(lambda a, b, c: et.memory_layer(a, b, c, backend="triton"), fullgraph=True)
    expected = reference.memory_layer(*(a.double().cpu() for a in args))  # the same rounded inputs
    assert_close(compiled(*args), expected, **TOLERANCES[torch.float32], name="compiled y")
