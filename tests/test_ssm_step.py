"""ssm_step: in-place decode step (the interpreter on CPU) against the oracle, the scan and a float64 evaluation."""

import pytest
import torch
from helpers import assert_close
from test_ssm_scan import ELEMENT_TOL, SCALE_TOL, make_ssm, random_state

import etsc_triton as et
from etsc_triton import reference

EPS32 = torch.finfo(torch.float32).eps


def oracle64_step(x, lam, b, state, state_indices=None):
    """One float64 step of the naive oracle on a complex128 copy; returns (y, new state)."""
    wide = state.to(torch.complex128)
    y = reference.ssm_step(
        x.double(), lam.to(torch.complex128), b.to(torch.complex128), wide, state_indices=state_indices
    )
    return y, wide


def check_step(y, new_state, x, lam, b, old_state, state_indices=None):
    y_ref, state_ref = oracle64_step(x, lam, b, old_state, state_indices)
    # The step of the magnitudes: the sums of |terms| behind each element (y and the state can cancel below).
    y_scale, state_scale = oracle64_step(x.abs(), lam.abs(), b.abs(), old_state.abs(), state_indices)
    assert y.dtype == x.dtype
    scale = y_scale.abs().max().item()
    assert_close(y, y_ref, atol=SCALE_TOL[x.dtype] * scale, rtol=ELEMENT_TOL[x.dtype], name="y")
    state_tol = SCALE_TOL[torch.float32] * state_scale.abs().max().item()
    assert_close(new_state, state_ref, atol=state_tol, rtol=0, name="state")


@pytest.mark.parametrize("batch,channels,modes", [(2, 5, 33), (1, 3, 1), (3, 40, 7), (2, 3, 515)])
def test_step_matches_float64_oracle(device, batch, channels, modes):
    lam, b = make_ssm(channels, modes, device=device)
    state = random_state(batch, channels, modes, device=device)
    old = state.clone()
    x = torch.randn(batch, channels, device=device)
    y = et.ssm_step(x, lam, b, state, backend="triton")
    check_step(y, state, x, lam, b, old)


def test_oracle_mutates_state_like_the_kernel(device):
    lam, b = make_ssm(5, 33, device=device)
    kernel_state = random_state(2, 5, 33, device=device)
    oracle_state = kernel_state.clone()
    for _ in range(5):
        x = torch.randn(2, 5, device=device)
        y = et.ssm_step(x, lam, b, kernel_state, backend="triton")
        y_oracle = reference.ssm_step(x, lam, b, oracle_state)
    if device == "cpu":
        # Same order of operations, no FMA contraction in the interpreter: the state is bit for bit the same.
        assert torch.equal(kernel_state, oracle_state)
    else:
        # The GPU may contract a*b + c into one FMA: a few ulps.
        assert_close(kernel_state, oracle_state, atol=8 * EPS32 * oracle_state.abs().max().item(), rtol=0)
    # y differs by the order of the mode reduction only.
    assert_close(y, y_oracle, atol=8 * EPS32 * oracle_state.abs().sum(-1).max().item(), rtol=0, name="y")


@pytest.mark.parametrize("modes", [33, 515])
def test_step_sequence_equals_scan(device, modes):
    """The shared accumulation policy: L steps and one scan of L tokens agree to fp32 rounding."""
    batch, length, channels = 2, 31, 5
    lam, b = make_ssm(channels, modes, device=device)
    x = torch.randn(batch, length, channels, device=device)
    state = random_state(batch, channels, modes, device=device)
    y_scan, final_scan = et.ssm_scan(x, lam, b, state, backend="triton")
    ys = [et.ssm_step(x[:, t], lam, b, state, backend="triton") for t in range(length)]
    y_steps = torch.stack(ys, 1)
    # The state update is one order of operations: bit for bit equal in the interpreter; compiled, FMA
    # contraction may differ between the kernels, so a few ulps of the magnitude. y sums the modes over
    # different trees (the scan within each thread's modes, the step along the row): measured <= 1.5 ulps of
    # the sum of |terms| in the interpreter; 8 allowed.
    state_tol = 4 * EPS32 * final_scan.abs().max().item()
    assert_close(state, final_scan, atol=state_tol, rtol=0, name="state")
    y_tol = 8 * EPS32 * final_scan.real.abs().sum(-1).max().item()
    assert_close(y_steps, y_scan, atol=y_tol, rtol=0, name="y")
    if device == "cpu":
        assert torch.equal(state, final_scan)


def test_state_indices_with_padding_rows_and_a_larger_pool(device):
    pool, channels, modes = 7, 5, 33
    lam, b = make_ssm(channels, modes, device=device)
    state = random_state(pool, channels, modes, device=device)
    old = state.clone()
    indices = torch.tensor([5, -1, 0, 3, -7], dtype=torch.int32, device=device)
    x = torch.randn(5, channels, device=device)
    y = et.ssm_step(x, lam, b, state, state_indices=indices, backend="triton")
    assert torch.all(y[1] == 0) and torch.all(y[4] == 0)
    untouched = [1, 2, 4, 6]
    assert torch.equal(state[untouched], old[untouched])
    check_step(y, state, x, lam, b, old, indices)
    # The oracle with the same indices gives the same rows (float32 path).
    oracle_state = old.clone()
    y_oracle = reference.ssm_step(x, lam, b, oracle_state, state_indices=indices)
    assert_close(state, oracle_state, atol=8 * EPS32 * old.abs().max().item(), rtol=0, name="state")
    assert_close(y, y_oracle, atol=1e-5, rtol=0, name="y")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(device, dtype):
    lam, b = make_ssm(5, 33, device=device)
    state = random_state(2, 5, 33, device=device)
    old = state.clone()
    x = torch.randn(2, 5, device=device).to(dtype)
    y = et.ssm_step(x, lam, b, state, backend="triton")
    check_step(y, state, x, lam, b, old)


def test_non_contiguous_x_and_state(device):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(5, 4, device=device).T[::2]  # [2, 5] with strides (2, 4)
    storage = random_state(2, 33, 5, device=device)
    state = storage.transpose(1, 2)  # [2, 5, 33], modes strided by 5: updated in place through the strides
    assert not x.is_contiguous() and not state.is_contiguous()
    old = state.clone()
    y = et.ssm_step(x, lam, b, state, backend="triton")
    check_step(y, storage.transpose(1, 2), x, lam, b, old)


def test_torch_and_auto_backends(device):
    lam, b = make_ssm(5, 33, device=device)
    state = random_state(2, 5, 33, device=device)
    old = state.clone()
    x = torch.randn(2, 5, device=device)
    y_torch = et.ssm_step(x, lam, b, state, backend="torch")
    check_step(y_torch, state, x, lam, b, old)
    auto_state = old.clone()
    y_auto = et.ssm_step(x, lam, b, auto_state)
    assert torch.equal(y_auto, y_torch) if device == "cpu" else torch.isfinite(y_auto).all()
    assert_close(auto_state, state, atol=8 * EPS32 * old.abs().max().item(), rtol=0, name="state")


def test_bad_inputs_are_refused_and_the_state_left_untouched(device):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(3, 5, device=device)
    state = random_state(4, 5, 33, device=device)
    indices = torch.tensor([2, -1, 0], dtype=torch.int32, device=device)
    before = state.clone()
    cases = [
        ({"x": x.to(torch.int64)}, TypeError, "x must be a real floating"),
        ({"x": x.to(torch.complex64)}, TypeError, "x must be a real floating"),
        ({"x": x[0]}, ValueError, "x must have 2 dimensions"),
        ({"lam": lam.real}, TypeError, "lam must be a complex"),
        ({"b": b.imag.contiguous()}, TypeError, "b must be a complex"),
        ({"lam": lam[:4]}, ValueError, "lam must have shape"),
        ({"b": b[:, :30]}, ValueError, "b must have the shape of lam"),
        ({"state": state[:, :, :32]}, ValueError, r"state must have shape \(P, D, N\)"),
        ({"state": state[:2], "indices": None}, ValueError, r"state must have shape \(B, D, N\)"),
        ({"state": state.to(torch.complex128)}, TypeError, "state must be complex64"),
        ({"state": state.real.contiguous()}, TypeError, "state must be a complex"),
        ({"indices": indices.long()}, TypeError, "state_indices must have dtype in"),
        ({"indices": indices[:2]}, ValueError, r"state_indices must have shape \(B,\)"),
        ({"indices": torch.tensor([2, 4, 0], dtype=torch.int32)}, ValueError, "state_indices must be < P"),
        ({"indices": torch.tensor([2, 0, 2], dtype=torch.int32)}, ValueError, "must not repeat"),
        ({"lam": lam.to("meta")}, ValueError, "all tensors must be on one device"),
        ({"lam": lam[:, :0], "b": b[:, :0]}, ValueError, "lam must hold at least one mode"),
        ({"state": state[:1].expand(4, 5, 33)}, ValueError, "state must not overlap itself"),
        ({"state": torch.view_as_complex(torch.view_as_real(state)[:, :, :1].expand(4, 5, 33, 2))}, ValueError,
         "state must not overlap itself"),
    ]
    for backend in ("triton", "torch"):
        for change, error, message in cases:
            args = {"x": x, "lam": lam, "b": b, "state": state, "indices": indices} | change
            if args["indices"] is not None and args["indices"].device.type != args["x"].device.type:
                args["indices"] = args["indices"].to(device)
            with pytest.raises(error, match=message):
                et.ssm_step(
                    args["x"], args["lam"], args["b"], args["state"],
                    state_indices=args["indices"], backend=backend,
                )
            assert torch.equal(state, before), f"state modified by a refused call ({message})"
    wide = before.to(torch.complex128)
    for backend in ("triton", "torch"):  # complex128 states are for the float64 oracle only
        with pytest.raises(TypeError, match="state must be complex64"):
            et.ssm_step(x, lam.to(torch.complex128), b.to(torch.complex128), wide, state_indices=indices,
                        backend=backend)
        assert torch.equal(wide, before.to(torch.complex128))
    with pytest.raises(ValueError, match="backend must be one of"):
        et.ssm_step(x, lam, b, state, state_indices=indices, backend="fast")
    assert torch.equal(state, before)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,modes", [(8, 64), (1, 512), (64, 256)])
def test_large_shapes_on_gpu(batch, modes):
    channels = 2048
    lam, b = make_ssm(channels, modes, device="cuda")
    state = random_state(batch, channels, modes, device="cuda")
    old = state.clone()
    x = torch.randn(batch, channels, device="cuda", dtype=torch.bfloat16)
    y = et.ssm_step(x, lam, b, state, backend="triton")
    check_step(y, state, x, lam, b, old)


@pytest.mark.gpu
def test_cuda_graph_capture_and_replay(monkeypatch):
    monkeypatch.delenv("ETSC_TRITON_DEBUG", raising=False)  # the debug index check syncs: not capturable
    batch, channels, modes, pool = 4, 1024, 512, 6
    lam, b = make_ssm(channels, modes, device="cuda")
    state = random_state(pool, channels, modes, device="cuda")
    eager_state = state.clone()
    indices = torch.tensor([3, -1, 0, 5], dtype=torch.int32, device="cuda")
    static_x = torch.zeros(batch, channels, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compiles the kernel) outside the capture, on a scratch state
        et.ssm_step(static_x, lam, b, state.clone(), state_indices=indices, backend="triton")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = et.ssm_step(static_x, lam, b, state, state_indices=indices, backend="triton")
    for _ in range(3):
        x = torch.randn(batch, channels, device="cuda")
        static_x.copy_(x)
        graph.replay()
        y_eager = et.ssm_step(x, lam, b, eager_state, state_indices=indices, backend="triton")
        torch.cuda.synchronize()
        assert torch.equal(static_y, y_eager)
        assert torch.equal(state, eager_state)


@pytest.mark.gpu
def test_torch_compile_on_gpu():
    lam, b = make_ssm(64, 33, device="cuda")
    state = random_state(3, 64, 33, device="cuda")
    eager_state = state.clone()
    indices = torch.tensor([2, -1], dtype=torch.int32, device="cuda")
    x = torch.randn(2, 64, device="cuda")

    def step(x, lam, b, state, indices):
        return et.ssm_step(x, lam, b, state, state_indices=indices, backend="triton")

    compiled = torch.compile(step, fullgraph=True)
    y = compiled(x, lam, b, state, indices)
    y_eager = step(x, lam, b, eager_state, indices)
    assert torch.equal(y, y_eager) and torch.equal(state, eager_state)


@pytest.mark.gpu
def test_out_of_range_index_on_gpu_gives_nan_and_touches_nothing(monkeypatch):
    monkeypatch.delenv("ETSC_TRITON_DEBUG", raising=False)
    lam, b = make_ssm(64, 33, device="cuda")
    state = random_state(3, 64, 33, device="cuda")
    before = state.clone()
    indices = torch.tensor([3, -1], dtype=torch.int32, device="cuda")
    y = et.ssm_step(torch.randn(2, 64, device="cuda"), lam, b, state, state_indices=indices, backend="triton")
    assert torch.isnan(y[0]).all() and torch.all(y[1] == 0)
    assert torch.equal(state, before)
    monkeypatch.setenv("ETSC_TRITON_DEBUG", "1")
    with pytest.raises(ValueError, match="state_indices must be < P"):
        et.ssm_step(torch.randn(2, 64, device="cuda"), lam, b, state, state_indices=indices, backend="triton")


def test_differentiable_inputs_are_refused_and_the_state_left_untouched(device):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(2, 5, device=device, requires_grad=True)
    state = random_state(2, 5, 33, device=device)
    before = state.clone()
    for backend in ("triton", "torch"):
        with pytest.raises(NotImplementedError, match="not differentiable"):
            et.ssm_step(x, lam, b, state, backend=backend)
        assert torch.equal(state, before)
        assert state.grad_fn is None
    with torch.no_grad():
        et.ssm_step(x, lam, b, state, backend="triton")
    assert not torch.equal(state, before)
