"""The memory layer's fused CPU path (``backend="auto"`` on CPU tensors): forward and every gradient against
float64 autograd of the oracle, run-to-run determinism, and the dtypes it accepts."""

import pytest
import torch
from helpers import assert_close
from test_memory_layer import DTABLES_TOL, DX_TOL, TOLERANCES, make_inputs, reference_and_grads

import etsc_triton as et
from etsc_triton import reference


def cpu_and_grads(x, tables, bias, dy, **kwargs):
    leaves = [t.detach().requires_grad_(True) for t in (x, tables, bias)]
    y = et.memory_layer(*leaves, **kwargs)  # auto on CPU tensors: the fused CPU path
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    return y.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("weighting, temperature", [("paper", 1.0), ("magnitude", 1.0), ("paper", 0.7)])
@pytest.mark.parametrize("lead, num_tables, tau, d_out", [((63,), 5, 4, 33), ((3, 7), 2, 8, 10), ((1,), 1, 1, 1)])
def test_layer_matches_float64_oracle(dtype, weighting, temperature, lead, num_tables, tau, d_out):
    x, tables, bias, dy = make_inputs(lead, num_tables, tau, d_out, seed=num_tables + tau)
    tables = tables.to(dtype)
    kwargs = dict(weighting=weighting, temperature=temperature)
    expected, (dx_ref, dt_ref, db_ref) = reference_and_grads(x.float(), tables, bias.float(), dy, **kwargs)
    y, (dx, dt, db) = cpu_and_grads(x.float(), tables, bias.float(), dy.float(), **kwargs)
    assert y.dtype == torch.float32 and dt.dtype == dtype and dx.dtype == torch.float32
    assert_close(y, expected, **TOLERANCES[dtype], name="y")
    assert_close(dx, dx_ref, **DX_TOL, name="dx")
    assert_close(dt, dt_ref, **DTABLES_TOL[dtype], name="dtables")
    assert_close(db, db_ref, atol=1e-5, rtol=1e-5, name="dbias")


def test_float64_inputs_stay_float64():
    x, tables, bias, dy = make_inputs((9,), 3, 4, 7, seed=3)
    y, (dx, dt, db) = cpu_and_grads(x, tables, bias, dy)
    expected, (dx_ref, dt_ref, db_ref) = reference_and_grads(x, tables, bias, dy)
    assert y.dtype == dx.dtype == dt.dtype == torch.float64
    for got, want, name in [(y, expected, "y"), (dx, dx_ref, "dx"), (dt, dt_ref, "dtables"), (db, db_ref, "db")]:
        assert_close(got, want, atol=1e-12, rtol=1e-12, name=name)


def test_backward_is_deterministic_and_unhit_rows_are_zero():
    x, tables, bias, dy = make_inputs((200,), 4, 6, 16, seed=11)
    runs = [cpu_and_grads(x.float(), tables.float(), bias.float(), dy.float()) for _ in range(3)]
    for y, grads in runs[1:]:
        assert torch.equal(y, runs[0][0])
        for got, first in zip(grads, runs[0][1], strict=True):
            assert torch.equal(got, first)
    z = x.float().view(200, 4, 6)
    codes, _ = reference.lsh_hash(z)
    hit = torch.zeros(4, 64, dtype=torch.bool)
    hit[torch.arange(4).expand(200, 4), codes.long()] = True
    dtables = runs[0][1][1]
    assert (dtables[~hit] == 0).all() and (dtables[hit].abs().sum(-1) > 0).all()


def test_gather_matches_float64_oracle():
    gen = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 16, (63, 5), generator=gen, dtype=torch.int32)
    scores = torch.rand(63, 5, generator=gen)
    tables = torch.randn(5, 16, 33, generator=gen)
    bias = torch.randn(33, generator=gen)
    dy = torch.randn(63, 33, generator=gen)
    leaves = [t.clone().requires_grad_(True) for t in (scores, tables, bias)]
    y = et.memory_gather(codes, *leaves)
    grads = torch.autograd.grad(y, leaves, dy)
    leaves64 = [t.double().requires_grad_(True) for t in (scores, tables, bias)]
    y64 = reference.memory_gather(codes, *leaves64)
    grads64 = torch.autograd.grad(y64, leaves64, dy.double())
    assert y.dtype == torch.float32
    assert_close(y, y64, atol=2e-5, rtol=2e-5, name="y")
    for got, want, name in zip(grads, grads64, ("dscores", "dtables", "dbias"), strict=True):
        assert_close(got, want, atol=2e-5, rtol=2e-5, name=name)


def test_module_trains_on_the_cpu_path():
    """A memory layer learns a teacher memory layer's outputs (same hashing: exactly representable)."""
    torch.manual_seed(0)
    teacher, layer = et.nn.MemoryLayer(16, 8, code_length=4), et.nn.MemoryLayer(16, 8, code_length=4)
    with torch.no_grad():
        teacher.tables.normal_()
    x = torch.randn(64, 16)
    target = teacher(x).detach()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        loss = (layer(x) - target).square().mean()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.05 * losses[0]
