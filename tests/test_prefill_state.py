"""ssm_prefill_state: the prompt -> state fold + DFT against the float64 direct sum and the SSM recurrence."""

import math

import pytest
import torch
from helpers import assert_close

import etsc_triton as et
from etsc_triton.ops.prefill import naive, ssm_prefill_state

# Relative to max|u| of the float64 oracle. The kernel folds in fp32 (<= L/m terms per residue) and rfft sums
# m terms in fp32: measured <= 2.6e-7 for L <= 1000, n <= 200 (CPU); 2e-6 leaves room for cuFFT's rounding and
# the longer GPU case. Half-precision inputs convert exactly to fp32 and the oracle sees the same rounded x.
TOL = {torch.float32: 2e-6, torch.bfloat16: 2e-6, torch.float16: 2e-6}


def _problem(batch, length, channels, n, n_modes, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, channels, generator=g).to(dtype)
    b = torch.complex(
        torch.randn(channels, n_modes, generator=g), torch.randn(channels, n_modes, generator=g)
    )
    gamma = 0.8 + 0.2 * torch.rand(channels, generator=g)
    return x, b, gamma


def _check(actual, x, b, n, gamma, modes=None, dtype=torch.float32):
    expected = naive.ssm_prefill_state(
        x.double(),
        b.to(torch.complex128),
        n,
        gamma.double() if isinstance(gamma, torch.Tensor) else gamma,
        modes=modes,
    )
    scale = expected.abs().max().item()
    assert actual.dtype == torch.complex64
    assert_close(actual, expected, atol=TOL[dtype] * scale, rtol=0, name="state")


@pytest.mark.parametrize("length", [1, 7, 31, 32, 63, 100])
@pytest.mark.parametrize("n", [31, 32])
def test_triton_matches_float64_oracle(device, length, n):
    x, b, gamma = _problem(2, length, 5, n, math.ceil(n / 2), seed=length + n)
    out = ssm_prefill_state(x.to(device), b.to(device), n, gamma.to(device), backend="triton")
    _check(out, x, b, n, gamma)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(device, dtype):
    x, b, gamma = _problem(2, 45, 5, 15, 8, seed=3, dtype=dtype)
    out = ssm_prefill_state(x.to(device), b.to(device), 15, gamma.to(device), backend="triton")
    _check(out, x, b, 15, gamma, dtype=dtype)


@pytest.mark.parametrize("gamma", [None, 0.9, torch.tensor(0.85)])
def test_scalar_gamma(device, gamma):
    x, b, _ = _problem(1, 40, 3, 15, 8, seed=4)
    g = gamma.to(device) if isinstance(gamma, torch.Tensor) else gamma
    out = ssm_prefill_state(x.to(device), b.to(device), 15, g, backend="triton")
    _check(out, x, b, 15, 1.0 if gamma is None else gamma)


def test_explicit_modes_include_upper_half(device):
    """Unfolded / truncated mode sets: k above m/2 come from the conjugate half of the real FFT."""
    n, channels = 15, 4
    x, b, gamma = _problem(2, 50, channels, n, 6, seed=5)
    modes = torch.stack(
        [torch.randperm(n, generator=torch.Generator().manual_seed(d))[:6] + 1 for d in range(channels)]
    )
    assert (modes > (n + 1) // 2).any()
    out = ssm_prefill_state(
        x.to(device), b.to(device), n, gamma.to(device), modes=modes.to(device), backend="triton"
    )
    _check(out, x, b, n, gamma, modes=modes)
    shared = torch.tensor([1, 9, 15, 4])
    b4 = b[:, :4].contiguous()
    out = ssm_prefill_state(
        x.to(device), b4.to(device), n, gamma.to(device), modes=shared.to(device), backend="triton"
    )
    _check(out, x, b4, n, gamma, modes=shared)


def test_oracle_equals_recurrence_of_converted_layer():
    """The float64 oracle is the state the SSM recurrence u = lam u + b x reaches (ETSC nodes)."""
    n, channels = 13, 3
    g = torch.Generator().manual_seed(6)
    t = torch.randn(channels, n, generator=g, dtype=torch.float64)
    gamma = torch.tensor([0.9, 0.97, 1.0], dtype=torch.float64)
    for real in (True, False):
        lam, b = et.toeplitz_to_ssm(t.float(), gamma.float(), real=real)
        n_modes = lam.shape[-1]
        k = torch.arange(1, n_modes + 1, dtype=torch.float64)
        lam64 = gamma[:, None] * torch.exp(-2j * math.pi * k / (n + 1))
        assert_close(lam, lam64, atol=1e-6, rtol=0, name="lam nodes")
        x = torch.randn(2, 40, channels, generator=g, dtype=torch.float64)
        state = torch.zeros(2, channels, n_modes, dtype=torch.complex128)
        b64 = b.to(torch.complex128)
        for i in range(x.shape[1]):
            state = lam64 * state + b64 * x[:, i, :, None]
        oracle = naive.ssm_prefill_state(x, b64, n, gamma)
        assert_close(
            oracle, state, atol=1e-12 * state.abs().max().item(), rtol=0, name="oracle vs recurrence"
        )


def test_step_continues_from_prefill_state(device):
    """Prefill state then ssm_step == the direct causal convolution (the ETSC serving path)."""
    n, channels, length = 15, 4, 37
    g = torch.Generator().manual_seed(7)
    t = torch.randn(channels, n, generator=g) / 4
    gamma = torch.full((channels,), 0.93)
    lam, b = et.toeplitz_to_ssm(t.to(device), gamma.to(device))
    x = torch.randn(1, length + 1, channels, generator=g)
    state = ssm_prefill_state(x[:, :length].to(device), b, n, gamma.to(device), backend="triton")
    y = et.ssm_step(x[:, length].to(device), lam, b, state)
    extended = torch.cat([t.double(), -t.double().sum(-1, keepdim=True)], -1)
    lags = torch.arange(length + 1)
    kernel = gamma.double()[:, None] ** lags * extended[:, lags % (n + 1)]
    expected = (kernel.flip(-1).T[None] * x.double()).sum(1)
    assert_close(y, expected, atol=1e-5 * expected.abs().max().item(), rtol=0, name="next output")


def test_torch_and_auto_backends(device):
    x, b, gamma = _problem(2, 33, 5, 15, 8, seed=8)
    ref = naive.ssm_prefill_state(x, b, 15, gamma)
    assert_close(ssm_prefill_state(x, b, 15, gamma, backend="torch"), ref, atol=0, rtol=0)
    auto = ssm_prefill_state(x.to(device), b.to(device), 15, gamma.to(device), backend="auto")
    _check(auto, x, b, 15, gamma)


def test_non_contiguous_input(device):
    x, b, gamma = _problem(2, 41, 5, 15, 8, seed=9)
    strided = x.transpose(0, 1).contiguous().transpose(0, 1).to(device)[:, ::2]
    assert not strided.is_contiguous()
    out = ssm_prefill_state(strided, b.to(device), 15, gamma.to(device), backend="triton")
    _check(out, x[:, ::2], b, 15, gamma)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(x=torch.randn(2, 10, 4, dtype=torch.complex64)), TypeError, "x must be a real"),
        (dict(x=torch.randn(10, 4)), ValueError, "x must have 3 dimensions"),
        (dict(x=torch.randint(0, 3, (2, 10, 4))), TypeError, "x must be a real"),
        (dict(b=torch.zeros(4, 0, dtype=torch.complex64)), ValueError, "b must hold at least one mode"),
        (dict(b=torch.randn(4, 8)), TypeError, "b must be a complex"),
        (dict(b=torch.randn(3, 8, dtype=torch.complex64)), ValueError, "b must have shape"),
        (dict(n=0), ValueError, "n must be >= 1"),
        (dict(n=15.0), TypeError, "n must be an int"),
        (dict(n=5), ValueError, "at most 5"),
        (dict(gamma=1.5), ValueError, r"gamma must lie in \(0, 1\]"),
        (dict(gamma=torch.tensor([0.9, 0.0, 0.9, 0.9])), ValueError, r"gamma must lie in \(0, 1\]"),
        (dict(gamma=torch.full((3,), 0.9)), ValueError, "gamma must be a scalar or have shape"),
        (dict(gamma="0.9"), TypeError, "gamma must be None"),
        (dict(modes=torch.arange(0, 8)), ValueError, r"modes must lie in \[1, n\]"),
        (dict(modes=torch.arange(1, 9).float()), TypeError, "modes must have dtype"),
        (dict(modes=torch.ones(4, 7, dtype=torch.int64)), ValueError, "modes must have shape"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_inputs(change, error, match):
    args = dict(
        x=torch.randn(2, 10, 4),
        b=torch.randn(4, 8, dtype=torch.complex64),
        n=15,
        gamma=0.9,
        modes=None,
        backend="torch",
    )
    args.update(change)
    backend = args.pop("backend")
    for fn in (ssm_prefill_state, naive.ssm_prefill_state):
        kwargs = {"backend": backend} if fn is ssm_prefill_state else {}
        if fn is naive.ssm_prefill_state and backend != "torch":
            continue
        with pytest.raises(error, match=match):
            fn(args["x"], args["b"], args["n"], args["gamma"], modes=args["modes"], **kwargs)


@pytest.mark.gpu
def test_long_prompt_gpu():
    x, b, gamma = _problem(2, 8192, 64, 2048, 1024, seed=10)
    out = ssm_prefill_state(x.cuda(), b.cuda(), 2048, gamma.cuda(), backend="triton")
    _check(out, x, b, 2048, gamma)


def test_gradients_follow_the_oracle(device):
    gen = torch.Generator().manual_seed(6)
    n, length = 31, 40
    t = torch.randn(3, n, generator=gen)
    _, b = et.toeplitz_to_ssm(t, 0.9, backend="torch")
    x = torch.randn(2, length, 3, generator=gen)
    upstream = torch.randn(2, 3, b.shape[-1], generator=gen, dtype=torch.complex64)

    def grads(fn, real_dtype, complex_dtype):
        leaves = [x.to(real_dtype).clone().to(device).requires_grad_(),
                  b.to(complex_dtype).clone().to(device).requires_grad_()]
        state = fn(*leaves)
        loss = (torch.view_as_real(state).double() * torch.view_as_real(upstream.to(device)).double()).sum()
        return torch.autograd.grad(loss, leaves)

    got = grads(lambda x, b: ssm_prefill_state(x, b, n, 0.9, backend="triton"), torch.float32, torch.complex64)
    expected = grads(lambda x, b: naive.ssm_prefill_state(x, b, n, 0.9), torch.float64, torch.complex128)
    for name, g, e in zip(("x", "b"), got, expected, strict=True):
        # float32 oracle arithmetic over 40 tokens: measured 7.9e-8 (dx), 1.9e-7 (db) of the largest gradient
        assert_close(g, e, atol=2e-6 * e.abs().max().item(), rtol=0, name=f"d{name}")


# Packed prompts (cu_seqlens) and states written into a pool (state_indices). A zero-length prompt, a one-token
# one, one longer than the period m = 16 (it folds), two short ones.
PACKED_LENGTHS = (0, 1, 40, 7, 15)


def _packed(lengths, channels=5, n_modes=8, seed=11, device="cpu"):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    x, b, gamma = _problem(1, int(cu[-1]), channels, 15, n_modes, seed=seed)
    return x.to(device), b.to(device), gamma.to(device), cu.to(device)


def test_packed_prompts_equal_a_loop(device):
    x, b, gamma, cu = _packed(PACKED_LENGTHS, device=device)
    states = ssm_prefill_state(x, b, 15, gamma, cu_seqlens=cu, backend="triton")
    assert states.shape == (len(PACKED_LENGTHS), 5, 8) and states.dtype == torch.complex64
    expected = naive.ssm_prefill_state(x.double(), b.to(torch.complex128), 15, gamma.double(), cu_seqlens=cu)
    assert_close(states, expected, atol=TOL[torch.float32] * expected.abs().max().item(), rtol=0, name="states")
    bounds = cu.tolist()
    for i, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        if first == last:  # an empty prompt leaves the zero state
            assert torch.equal(states[i], torch.zeros_like(states[i]))
            continue
        alone = ssm_prefill_state(x[:, first:last], b, 15, gamma, backend="triton")
        # The same fold of the same tokens, one FFT row of a batch against a batch of one
        assert_close(states[i : i + 1], alone, atol=4 * 2.0**-23 * alone.abs().max().item(), rtol=0,
                     name=f"prompt {i}")


def test_pooled_prompts_are_written_in_place(device):
    x, b, gamma, cu = _packed(PACKED_LENGTHS, device=device)
    rows = torch.tensor([3, -1, 0, 7, 5], dtype=torch.int32, device=device)
    gen = torch.Generator().manual_seed(12)
    pool = torch.randn(9, 5, 8, generator=gen, dtype=torch.complex64).to(device)
    before = pool.clone()
    out = ssm_prefill_state(x, b, 15, gamma, cu_seqlens=cu, state=pool, state_indices=rows, backend="triton")
    assert out is pool
    states = ssm_prefill_state(x, b, 15, gamma, cu_seqlens=cu, backend="triton")
    for i, row in enumerate(rows.tolist()):
        if row >= 0:
            assert torch.equal(pool[row], states[i]), f"row {row}"
    assert torch.equal(pool[3], torch.zeros_like(pool[3]))  # an empty prompt writes the zero state
    for row in (1, 2, 4, 6, 8):  # named by no prompt (the padding prompt names none)
        assert torch.equal(pool[row], before[row])
    reference_pool = before.clone()
    naive.ssm_prefill_state(x, b, 15, gamma, cu_seqlens=cu, state=reference_pool, state_indices=rows)
    assert_close(pool, reference_pool, atol=TOL[torch.float32] * reference_pool.abs().max().item(), rtol=0,
                 name="pool vs oracle")


def test_packed_gradients_equal_the_loop(device):
    x, b, gamma, cu = _packed((3, 0, 20, 6), device=device)
    gen = torch.Generator().manual_seed(13)
    upstream = torch.randn(4, 5, 8, generator=gen, dtype=torch.complex64).to(device)
    bounds = cu.tolist()

    def grads(fn):
        leaves = [x.clone().requires_grad_(), b.clone().requires_grad_(), gamma.clone().requires_grad_()]
        states = fn(*leaves)
        loss = (torch.view_as_real(states).double() * torch.view_as_real(upstream).double()).sum()
        return torch.autograd.grad(loss, leaves)

    packed = grads(lambda x, b, g: ssm_prefill_state(x, b, 15, g, cu_seqlens=cu, backend="triton"))
    looped = grads(lambda x, b, g: torch.cat([ssm_prefill_state(x[:, first:last], b, 15, g, backend="triton")
                                              for first, last in zip(bounds[:-1], bounds[1:])]))
    for name, p, q in zip(("x", "b", "gamma"), packed, looped, strict=True):
        # both differentiate the float32 oracle; the loop sums the per-prompt gradients of b and gamma itself
        assert_close(p, q, atol=2e-6 * q.abs().max().item(), rtol=0, name=f"d{name}")


def _bad_prefill_layouts(device):
    i32 = dict(dtype=torch.int32, device=device)
    x, b, gamma, cu = _packed(PACKED_LENGTHS, device=device)
    pool = torch.zeros(9, 5, 8, dtype=torch.complex64, device=device)
    rows = torch.tensor([3, -1, 0, 7, 5], **i32)
    return [
        ("cu_seqlens not from 0", dict(cu_seqlens=cu + 1), ValueError, "cu_seqlens must start at 0"),
        ("cu_seqlens falling", dict(cu_seqlens=torch.tensor([0, 2, 1, 41, 48, 63], **i32)), ValueError,
         "cu_seqlens must not decrease"),
        ("cu_seqlens short of T", dict(cu_seqlens=torch.tensor([0, 0, 1, 41, 48, 62], **i32)), ValueError,
         "cu_seqlens must end at T = 63"),
        ("x batch 2", dict(x=x.expand(2, -1, -1)), ValueError, r"x must be \[1, T, D\]"),
        ("state without indices", dict(state_indices=None), ValueError, "state .* needs state_indices"),
        ("indices without state", dict(state=None), ValueError, "state_indices needs state"),
        ("indices without cu_seqlens", dict(cu_seqlens=None), ValueError, "need cu_seqlens"),
        ("indices short", dict(state_indices=rows[:4]), ValueError, r"state_indices must have shape \(S,\)"),
        ("index out of range", dict(state_indices=torch.tensor([3, -1, 9, 7, 5], **i32)), ValueError,
         "state_indices must be < P = 9"),
        ("one row twice", dict(state_indices=torch.tensor([3, -1, 0, 3, 5], **i32)), ValueError,
         "must not repeat a state row"),
        ("pool of another N", dict(state=pool[..., :7]), ValueError, r"state must have shape \(P, D, N\)"),
        ("pool complex128", dict(state=pool.to(torch.complex128)), TypeError, "must be complex64"),
        ("pooled x requires grad", dict(x=x.clone().requires_grad_()), NotImplementedError, "not differentiable"),
    ]


@pytest.mark.parametrize("label", [case[0] for case in _bad_prefill_layouts("cpu")])
def test_bad_prefill_layouts_write_nothing(device, label):
    x, b, gamma, cu = _packed(PACKED_LENGTHS, device=device)
    pool = torch.zeros(9, 5, 8, dtype=torch.complex64, device=device)
    args = dict(x=x, cu_seqlens=cu, state=pool, state_indices=torch.tensor([3, -1, 0, 7, 5], dtype=torch.int32,
                                                                           device=device))
    _, change, error, match = next(case for case in _bad_prefill_layouts(device) if case[0] == label)
    args |= change
    for backend in ("triton", "torch"):
        with pytest.raises(error, match=match):
            ssm_prefill_state(args["x"], b, 15, gamma, cu_seqlens=args["cu_seqlens"], state=args["state"],
                              state_indices=args["state_indices"], backend=backend)
        assert torch.equal(pool, torch.zeros_like(pool))
