"""Property tests of every op against its oracle (hypothesis): random shapes, dtypes and options.

The only test module that imports hypothesis: without it this module skips itself and every other module still
runs (a GPU machine may have only torch, triton, numpy and pytest). The per-op checks and tolerances are the op
test modules' own, imported from them.
"""

import math

import pytest
import torch
from helpers import assert_close, rel_error
from test_memory_gather import check as check_gather
from test_memory_gather import make_inputs as make_gather_inputs
from test_memory_layer import check_against_reference as check_layer
from test_memory_layer import make_inputs as make_layer_inputs
from test_prefill_state import _check as check_prefill
from test_prefill_state import _problem as prefill_problem
from test_ssm_kernel import RTOL_SMALL
from test_ssm_kernel import oracle as kernel_oracle
from test_ssm_kernel import random_ssm as kernel_ssm
from test_ssm_scan import check_against_oracle, check_scan_gradients, make_ssm, random_state
from test_ssm_step import check_step
from test_ssm_varlen import check_packed_against_oracle, packed
from test_toeplitz_to_ssm import kernel_rtol, realised
from test_vandermonde_solve import RTOL_SPREAD, direct_solve, spread_nodes

import etsc_triton as et
from etsc_triton import reference
from etsc_triton.ops.prefill import ssm_prefill_state

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: the property tests need it")
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Interpreter-sized scan shapes, with and without an initial state.
SCAN_SHAPES = dict(batch=st.integers(1, 3), length=st.integers(1, 20), channels=st.integers(1, 9),
                   modes=st.integers(1, 40), with_state=st.booleans())


@settings(derandomize=True, max_examples=8, deadline=None)
@given(
    lead=st.integers(1, 20),
    num_tables=st.integers(1, 4),
    tau=st.integers(1, 16),
    temperature=st.floats(0.1, 4.0),
    weighting=st.sampled_from(["paper", "magnitude"]),
)
def test_lsh_hash_matches_oracle(lead, num_tables, tau, temperature, weighting):
    z = torch.randn(lead, num_tables, tau, dtype=torch.float64)
    codes, scores = et.lsh_hash(z.float().to(DEVICE), temperature=temperature, weighting=weighting,
                                backend="triton")
    ref_codes, ref_scores = reference.lsh_hash(z.float().double(), temperature=temperature,
                                               weighting=weighting)
    assert torch.equal(codes.cpu(), ref_codes)
    assert_close(scores, ref_scores, atol=1e-6, rtol=4e-6, name="scores")
    assert ((codes >= 0) & (codes < 2**tau)).all()


@settings(derandomize=True, max_examples=6, deadline=None)
@given(tokens=st.integers(1, 30), num_tables=st.integers(1, 4), log_rows=st.integers(0, 5),
       d_out=st.integers(1, 70), deterministic=st.booleans())
def test_memory_gather_matches_oracle(tokens, num_tables, log_rows, d_out, deterministic):
    check_gather(*make_gather_inputs((tokens,), num_tables, 2**log_rows, d_out, seed=tokens), DEVICE,
                 deterministic=deterministic)


@settings(derandomize=True, max_examples=6, deadline=None)
@given(
    tokens=st.integers(1, 40),
    num_tables=st.integers(1, 4),
    tau=st.integers(1, 6),
    d_out=st.integers(1, 70),
    weighting=st.sampled_from(["paper", "magnitude"]),
    deterministic=st.booleans(),
)
def test_memory_layer_matches_oracle(tokens, num_tables, tau, d_out, weighting, deterministic):
    x, tables, bias, dy = make_layer_inputs((tokens,), num_tables, tau, d_out, seed=tokens + d_out)
    check_layer(x, tables, bias, dy, DEVICE, weighting=weighting, deterministic=deterministic)


@settings(derandomize=True, max_examples=8, deadline=None)
@given(
    batch=st.integers(1, 2),
    length=st.integers(1, 50),
    channels=st.integers(1, 6),
    n=st.integers(1, 20),
    seed=st.integers(0, 1000),
)
def test_prefill_state_matches_oracle(batch, length, channels, n, seed):
    x, b, gamma = prefill_problem(batch, length, channels, n, math.ceil(n / 2), seed=seed)
    out = ssm_prefill_state(x.to(DEVICE), b.to(DEVICE), n, gamma.to(DEVICE), backend="triton")
    check_prefill(out, x, b, n, gamma)


@settings(derandomize=True, max_examples=8, deadline=None)
@given(
    modes=st.integers(1, 40),
    length=st.integers(1, 130),
    rows=st.integers(1, 2),
    power=st.sampled_from([0.05, 1.0]),
)
def test_ssm_kernel_matches_oracle(modes, length, rows, power):
    lam, b = kernel_ssm((rows, modes), DEVICE, radius_power=power, seed=modes * 1000 + length)
    assert rel_error(et.ssm_kernel(lam, b, length, backend="triton"), kernel_oracle(lam, b, length)) <= RTOL_SMALL


@settings(derandomize=True, max_examples=20, deadline=None)
@given(**SCAN_SHAPES, dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_ssm_scan_matches_oracle(batch, length, channels, modes, with_state, dtype):
    lam, b = make_ssm(channels, modes, seed=modes, device=DEVICE)
    x = torch.randn(batch, length, channels, device=DEVICE).to(dtype)
    state = random_state(batch, channels, modes, device=DEVICE) if with_state else None
    y, final = et.ssm_scan(x, lam, b, state, backend="triton")
    check_against_oracle(y, final, x, lam, b, state)


@settings(derandomize=True, max_examples=8, deadline=None)
@given(**SCAN_SHAPES)
def test_ssm_scan_gradients(batch, length, channels, modes, with_state):
    lam, b = make_ssm(channels, modes, seed=modes, device=DEVICE)
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(batch, length, channels, generator=gen).to(DEVICE)
    dy = torch.randn(batch, length, channels, generator=gen).to(DEVICE)
    state = random_state(batch, channels, modes, device=DEVICE) if with_state else None
    dfinal = random_state(batch, channels, modes, seed=2, device=DEVICE)
    check_scan_gradients(x, lam, b, state, dy, dfinal)


@settings(derandomize=True, max_examples=12, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    channels=st.integers(1, 7),
    modes=st.integers(1, 33),
    with_state=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_packed_scan_matches_oracle(lengths, channels, modes, with_state, dtype):
    hypothesis.assume(sum(lengths) > 0)  # every sequence empty: tests/test_ssm_varlen.py
    lam, b = make_ssm(channels, modes, seed=modes, device=DEVICE)
    x, cu = packed(lengths, channels, seed=len(lengths), dtype=dtype, device=DEVICE)
    state = random_state(len(lengths), channels, modes, device=DEVICE) if with_state else None
    y, final = et.ssm_scan(x, lam, b, state, cu_seqlens=cu, backend="triton")
    assert final.shape == (len(lengths), channels, modes)
    check_packed_against_oracle(y, final, x, lam, b, state, cu)


@settings(derandomize=True, max_examples=12, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 10), min_size=1, max_size=4),
    extra_rows=st.integers(0, 3),
    channels=st.integers(1, 5),
    modes=st.integers(1, 20),
    data=st.data(),
)
def test_pooled_scan_matches_the_reference(lengths, extra_rows, channels, modes, data):
    """The Triton pooled scan writes the pool rows the Torch reference writes (padding sequences, rows without
    an initial state), and leaves every other row bit for bit."""
    hypothesis.assume(sum(lengths) > 0)  # every sequence empty: tests/test_ssm_varlen.py
    sequences = len(lengths)
    rows = data.draw(st.permutations(range(sequences + extra_rows)))[:sequences]
    padding = data.draw(st.lists(st.booleans(), min_size=sequences, max_size=sequences))
    indices = torch.tensor([-1 if pad else row for row, pad in zip(rows, padding)], dtype=torch.int32)
    has_initial = torch.tensor(data.draw(st.lists(st.booleans(), min_size=sequences, max_size=sequences)))
    lam, b = make_ssm(channels, modes, seed=modes, device=DEVICE)
    x, cu = packed(lengths, channels, seed=sequences, device=DEVICE)
    pool = random_state(sequences + extra_rows, channels, modes, device=DEVICE)
    expected = pool.clone()
    y_ref, _ = reference.ssm_scan(x, lam, b, expected, cu_seqlens=cu, state_indices=indices.to(DEVICE),
                                  has_initial_state=has_initial.to(DEVICE))
    y, out = et.ssm_scan(x, lam, b, pool, cu_seqlens=cu, state_indices=indices.to(DEVICE),
                         has_initial_state=has_initial.to(DEVICE), backend="triton")
    assert out is pool
    untouched = [r for r in range(pool.shape[0]) if r not in set(indices.tolist())]
    assert torch.equal(pool[untouched], expected[untouched])
    assert_close(pool, expected, atol=1e-5 * max(expected.abs().max().item(), 1.0), rtol=0, name="pool")
    assert_close(y, y_ref, atol=1e-5 * max(y_ref.abs().max().item(), 1.0), rtol=0, name="y")


@settings(derandomize=True, max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 4),
    channels=st.integers(1, 9),
    modes=st.integers(1, 40),
    extra_rows=st.integers(0, 3),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    data=st.data(),
)
def test_ssm_step_matches_oracle(batch, channels, modes, extra_rows, dtype, data):
    pool = batch + extra_rows
    rows = data.draw(st.permutations(range(pool)))[:batch]
    padding = data.draw(st.lists(st.booleans(), min_size=batch, max_size=batch))
    indices = torch.tensor([-1 if pad else r for r, pad in zip(rows, padding)], dtype=torch.int32, device=DEVICE)
    lam, b = make_ssm(channels, modes, seed=modes, device=DEVICE)
    state = random_state(pool, channels, modes, device=DEVICE)
    old = state.clone()
    x = torch.randn(batch, channels, device=DEVICE).to(dtype)
    y = et.ssm_step(x, lam, b, state, state_indices=indices, backend="triton")
    check_step(y, state, x, lam, b, old, indices)


@settings(derandomize=True, max_examples=8, deadline=None)
@given(n=st.integers(1, 40), rows=st.integers(1, 3), real=st.booleans(), gamma=st.floats(0.5, 1.0))
def test_toeplitz_to_ssm_realises_kernel(n, rows, real, gamma):
    t = torch.randn(rows, n, device=DEVICE, generator=None)
    lam, b = et.toeplitz_to_ssm(t, gamma, real=real, backend="triton")
    expected = gamma ** torch.arange(n, dtype=torch.float64) * t.double().cpu()
    assert rel_error(realised(lam.cpu(), b.cpu(), n), expected) <= kernel_rtol(n)


@settings(derandomize=True, max_examples=6, deadline=None)
@given(size=st.integers(1, 24), systems=st.integers(1, 2), seed=st.integers(0, 100))
def test_vandermonde_solve_spread_nodes(size, systems, seed):
    lam = spread_nodes(systems, size, seed=seed).to(torch.complex64)
    t = torch.randn(systems, size, generator=torch.Generator().manual_seed(seed))
    b = et.vandermonde_solve(lam.to(DEVICE), t.to(DEVICE), backend="triton")
    assert rel_error(b, direct_solve(lam, t)) <= RTOL_SPREAD
