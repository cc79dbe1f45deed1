"""The public surface: names, signatures shared with the reference, backend selection, shared input checks."""

import inspect

import pytest
import torch

import etsc_triton as et
from etsc_triton.ops import checks, dispatch

OPS = ["toeplitz_to_ssm", "ssm_kernel", "vandermonde_solve", "reduce_ssm", "reduce_toeplitz", "ssm_scan", "ssm_step",
       "ssm_prefill_state", "lsh_hash", "memory_gather", "memory_layer"]


@pytest.mark.parametrize("name", OPS)
def test_public_op_has_backend_keyword_and_reference_twin(name):
    fast = getattr(et, name)
    ref = getattr(et.reference, name)
    fast_params = inspect.signature(fast, eval_str=True).parameters  # one module of a pair may defer annotations
    assert fast_params["backend"].default == "auto"
    assert fast_params["backend"].kind is inspect.Parameter.KEYWORD_ONLY
    ref_params = dict(inspect.signature(ref, eval_str=True).parameters)
    assert {k: v for k, v in fast_params.items() if k != "backend"} == ref_params
    assert fast.__doc__ and "Args" in fast.__doc__, f"{name} needs a docstring with Args"


def test_all_lists_the_contract():
    assert set(OPS) <= set(et.__all__)
    assert hasattr(et.nn, "MemoryLayer")


def test_one_op_list_feeds_the_package_ops_and_reference():
    from etsc_triton.ops import api

    assert et.__all__ == [*api.__all__, "nn", "reference"]
    assert et.ops.__all__[: len(api.__all__)] == et.reference.__all__[: len(api.__all__)] == api.__all__
    for name in api.__all__:
        assert getattr(et, name) is getattr(et.ops, name) is getattr(api, name)
        family = getattr(api, name).__module__.rpartition(".")[0]
        assert getattr(et.reference, name).__module__ == f"{family}.naive", name


def test_resolve_backend_auto_picks_by_device():
    cpu = torch.zeros(3)
    assert dispatch.resolve_backend("f", "auto", cpu) == "torch"
    assert dispatch.resolve_backend("f", "torch", cpu) == "torch"
    if torch.cuda.is_available():
        assert dispatch.resolve_backend("f", "auto", cpu.cuda()) == "triton"
        assert dispatch.resolve_backend("f", "auto", cpu, cpu.cuda()) == "torch"


def test_resolve_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match=r"f: backend must be one of .*got 'cuda'"):
        dispatch.resolve_backend("f", "cuda", torch.zeros(1))


def test_resolve_backend_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the triton backend runs compiled")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dispatch.resolve_backend("f", "triton", torch.zeros(1))


def test_check_tensor_messages_name_argument_expected_and_actual():
    with pytest.raises(TypeError, match=r"f: t must be a torch.Tensor, got list"):
        checks.check_tensor("f", "t", [1.0])
    with pytest.raises(TypeError, match=r"f: t must be a real floating tensor, got complex"):
        checks.check_tensor("f", "t", torch.zeros(2, dtype=torch.complex64), kind="real")
    with pytest.raises(TypeError, match=r"f: t must be a real floating tensor, got torch.int64"):
        checks.check_tensor("f", "t", torch.zeros(2, dtype=torch.int64), kind="real")
    with pytest.raises(TypeError, match=r"f: lam must be a complex tensor \(complex64\), got torch.float32"):
        checks.check_tensor("f", "lam", torch.zeros(2), kind="complex")
    with pytest.raises(ValueError, match=r"f: t must have 2 dimensions, got shape \(2,\)"):
        checks.check_tensor("f", "t", torch.zeros(2), ndim=2)
    with pytest.raises(ValueError, match=r"f: t must not be empty, got shape \(3, 0\)"):
        checks.check_tensor("f", "t", torch.zeros(3, 0))
    with pytest.raises(ValueError, match=r"f: state must have shape \(2, 3\), got \(3, 2\)"):
        checks.check_shape("f", "state", torch.zeros(3, 2), (2, 3))
    with pytest.raises(TypeError, match="f: length must be an int, got float"):
        checks.check_int("f", "length", 3.0)
    with pytest.raises(ValueError, match="f: length must be >= 0, got -1"):
        checks.check_int("f", "length", -1)


def test_check_same_device():
    checks.check_same_device("f", a=torch.zeros(1), b=None, c=torch.zeros(2))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="all tensors must be on one device"):
            checks.check_same_device("f", a=torch.zeros(1), b=torch.zeros(1, device="cuda"))


def test_poisoned_empty_is_nan(device):
    """The conftest fixture must be active, or unwritten outputs would go unnoticed."""
    assert torch.isnan(torch.empty(4, device=device)).all()
    assert (torch.empty(3, dtype=torch.int32) == torch.iinfo(torch.int32).min).all()


REGISTERED_OPS = ["toeplitz_to_ssm", "ssm_kernel", "ssm_kernel_backward", "vandermonde_solve", "ssm_scan",
                  "ssm_scan_backward", "ssm_step", "fold_prompt", "lsh_hash_forward", "lsh_hash_backward",
                  "memory_gather_forward", "memory_gather_backward", "memory_layer_forward", "memory_layer_backward"]


@pytest.mark.parametrize("name", REGISTERED_OPS)
def test_launchers_are_registered_custom_ops(name):
    assert hasattr(torch.ops.etsc_triton, name), f"etsc_triton::{name} is not registered"


def test_registered_op_path_equals_eager_path(device, monkeypatch):
    """Eager calls skip the custom-op dispatch; the op path (what torch.compile traces) must compute the same,
    including the in-place state update of ssm_step and the backward ops."""
    gen = torch.Generator().manual_seed(3)
    lam = (0.9 * torch.rand(5, 33, generator=gen) * torch.exp(2j * torch.rand(5, 33, generator=gen))).to(
        torch.complex64).to(device)
    b = torch.randn(5, 33, generator=gen, dtype=torch.complex64).to(device)
    x = torch.randn(2, 7, 5, generator=gen).to(device)
    state = torch.randn(2, 5, 33, generator=gen, dtype=torch.complex64).to(device)

    def run():
        y, final = et.ssm_scan(x, lam, b, state, backend="triton")
        stepped = state.clone()
        y_step = et.ssm_step(x[:, 0], lam, b, stepped, backend="triton")
        leaves = [x.clone().requires_grad_(), lam.clone().requires_grad_(), b.clone().requires_grad_()]
        y_grad, _ = et.ssm_scan(*leaves, state, backend="triton")
        kernel = et.ssm_kernel(leaves[1], leaves[2], 9, backend="triton")
        grads = torch.autograd.grad(y_grad.sum() + kernel.sum(), leaves)
        return y, final, y_step, stepped, *grads

    eager = run()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    through_op = run()
    for got, expected in zip(through_op, eager, strict=True):
        assert torch.equal(got, expected)
