"""et.nn.MemoryLayer: construction, initialisation, forward parity, projection, bad arguments, training."""

import pytest
import torch
from helpers import assert_close
from torch import nn

import etsc_triton as et
from etsc_triton import reference


def test_parameters_and_init():
    torch.manual_seed(0)
    layer = et.nn.MemoryLayer(64, 48, code_length=8)
    assert layer.tables.shape == (8, 256, 48) and layer.bias.shape == (48,)
    assert layer.projection is None
    assert abs(layer.tables.std().item() - 0.02) < 1e-3 and abs(layer.tables.mean().item()) < 1e-3
    assert torch.count_nonzero(layer.bias) == 0
    text = repr(layer)
    assert "in_features=64" in text and "num_tables=8" in text and "code_length=8" in text
    no_bias = et.nn.MemoryLayer(12, 5, code_length=4, bias=False, dtype=torch.bfloat16)
    assert no_bias.bias is None and no_bias.tables.dtype == torch.bfloat16
    assert [name for name, _ in no_bias.named_parameters()] == ["tables"]


def test_forward_matches_reference(device):
    torch.manual_seed(1)
    layer = et.nn.MemoryLayer(15, 7, code_length=5, weighting="magnitude", temperature=0.5).to(device)
    layer.backend = "triton"
    x = torch.randn(2, 3, 15, device=device)
    y = layer(x)
    assert y.shape == (2, 3, 7)
    tables, bias = layer.tables.detach().double().cpu(), layer.bias.detach().double().cpu()
    expected = reference.memory_layer(x.double().cpu(), tables, bias, temperature=0.5, weighting="magnitude")
    assert_close(y, expected, atol=2e-5, rtol=2e-5)
    layer.backend = "torch"
    assert_close(layer(x.cpu().to(layer.tables.device)), expected, atol=2e-5, rtol=2e-5)


def test_projection(device):
    torch.manual_seed(2)
    layer = et.nn.MemoryLayer(10, 6, code_length=4, projection=True).to(device)
    layer.backend = "triton"
    assert layer.num_tables == 3 and layer.projection.weight.shape == (12, 10)
    x = torch.randn(5, 10, device=device, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    z = (x.detach().double().cpu() @ layer.projection.weight.detach().double().cpu().T)
    tables, bias = layer.tables.detach().double().cpu(), layer.bias.detach().double().cpu()
    expected = reference.memory_layer(z, tables, bias)
    assert_close(y, expected, atol=2e-5, rtol=2e-5)
    assert layer.projection.weight.grad is not None and x.grad is not None
    assert torch.isfinite(layer.projection.weight.grad).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(in_features=10, out_features=4, code_length=4), ValueError, "divisible by code_length"),
        (dict(in_features=16, out_features=4, code_length=17), ValueError, "code_length"),
        (dict(in_features=16, out_features=4, code_length=0), ValueError, "code_length"),
        (dict(in_features=16, out_features=0), ValueError, "out_features"),
        (dict(in_features=16.0, out_features=4), TypeError, "in_features"),
        (dict(in_features=16, out_features=4, weighting="mean"), ValueError, "weighting"),
        (dict(in_features=16, out_features=4, temperature=0), ValueError, "temperature"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        et.nn.MemoryLayer(**kwargs)


def test_wrong_input_width():
    layer = et.nn.MemoryLayer(16, 4, code_length=4)
    with pytest.raises(ValueError, match="K \\* tau"):
        layer(torch.randn(3, 12))


def test_mlp_trains(device):
    """A two-layer MLP whose linear layers are MemoryLayers fits a small regression target."""
    torch.manual_seed(3)
    x = torch.randn(48, 12, device=device)
    target = torch.tanh(x[:, :4] * 2.0) + 0.5 * x[:, 4:8]
    model = nn.Sequential(
        et.nn.MemoryLayer(12, 16, code_length=4, projection=True, deterministic=False),
        nn.GELU(),
        et.nn.MemoryLayer(16, 4, code_length=4, deterministic=False),
    ).to(device)
    for module in model:
        if isinstance(module, et.nn.MemoryLayer):
            module.backend = "triton"
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
