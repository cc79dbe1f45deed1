"""ssm_scan on packed sequences (cu_seqlens) and into a state pool (state_indices): against a loop over the
sequences, the float64 oracle and the Torch reference; gradients; refused layouts leave the pool untouched."""

import dataclasses

import pytest
import torch
from helpers import assert_close
from test_ssm_scan import ELEMENT_TOL, EPS32, GRAD_TOL, SCALE_TOL, make_ssm, random_state, scan_gradients

import etsc_triton as et
from etsc_triton import reference
from etsc_triton.ops.ssm import chunked, scan
from etsc_triton.ops.tiles import current_tiles, use_tiles

# A zero-length sequence first, a one-token one, one long enough to be cut into chunks, two short ones.
LENGTHS = (0, 1, 40, 7, 15)
CHANNELS, MODES = 5, 33


def packed(lengths, channels=CHANNELS, *, seed=0, dtype=torch.float32, index_dtype=torch.int32, device="cpu"):
    """``(x [1, T, D], cu_seqlens [S + 1])`` for sequences of ``lengths`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=index_dtype)
    x = torch.randn(1, int(cu[-1]), channels, generator=gen).to(dtype)
    return x.to(device), cu.to(device)


def spans(cu):
    bounds = cu.tolist()
    return list(zip(bounds[:-1], bounds[1:]))


@pytest.fixture(params=["sequential", "chunked"])
def path(request):
    """The scan's two paths: one program walks each sequence, or (the chunk threshold lowered to 4 tokens, the
    interpreter counting 2 SMs) long sequences are cut into chunks whose carries stay inside their sequence."""
    if request.param == "sequential":
        yield request.param
        return
    with use_tiles(dataclasses.replace(current_tiles(), scan_min_chunk_tokens=4)):
        yield request.param


def planned_chunks(x, cu, modes, blocks=None):
    """The chunk count the launcher plans for the packed scan (from T, not from the sequence lengths)."""
    blocks = blocks or (lambda channels, modes: scan.scan_blocks(channels, modes, current_tiles()))
    channels = x.shape[2]
    return chunked.chunk_plan(cu.shape[0] - 1, x.shape[1], channels, modes, blocks(channels, modes), x.device,
                              current_tiles())[0]


def check_packed_against_oracle(y, final, x, lam, b, state, cu):
    """y and the final states against the float64 reference of the packed scan, with test_ssm_scan's
    tolerances relative to the scan of the magnitudes."""
    as64 = dict(cu_seqlens=cu)
    y_ref, final_ref = reference.ssm_scan(x.double(), lam.to(torch.complex128), b.to(torch.complex128),
                                          None if state is None else state.to(torch.complex128), **as64)
    y_mag, final_mag = reference.ssm_scan(x.double().abs(), lam.abs().double().to(torch.complex128),
                                          b.abs().double().to(torch.complex128),
                                          None if state is None else state.abs().double().to(torch.complex128),
                                          **as64)
    assert y.dtype == x.dtype and final.dtype == torch.complex64
    assert_close(y, y_ref, atol=SCALE_TOL[x.dtype] * y_mag.abs().max().item(), rtol=ELEMENT_TOL[x.dtype],
                 name="y")
    assert_close(final, final_ref, atol=SCALE_TOL[torch.float32] * final_mag.abs().max().item(), rtol=0,
                 name="final states")
    return y_mag, final_mag


@pytest.mark.parametrize("with_state", [False, True])
def test_packed_equals_a_loop_over_sequences(device, path, with_state):
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu = packed(LENGTHS, device=device)
    assert (planned_chunks(x, cu, MODES) > 1) == (path == "chunked")
    state = random_state(len(LENGTHS), CHANNELS, MODES, device=device) if with_state else None
    before = None if state is None else state.clone()
    y, final = et.ssm_scan(x, lam, b, state, cu_seqlens=cu, backend="triton")
    assert y.shape == x.shape and final.shape == (len(LENGTHS), CHANNELS, MODES)
    if state is not None:
        assert torch.equal(state, before)
    y_mag, final_mag = check_packed_against_oracle(y, final, x, lam, b, state, cu)
    # The sequential path runs each sequence exactly as the dense scan runs it alone: the same bits. The chunked
    # plan is made from T, so its chunks differ from a lone sequence's: equal to rounding (chunked README).
    y_tol = 0.0 if path == "sequential" else 8 * EPS32 * y_mag.abs().max().item()
    state_tol = 0.0 if path == "sequential" else 8 * EPS32 * final_mag.abs().max().item()
    for i, (first, last) in enumerate(spans(cu)):
        alone = None if state is None else state[i : i + 1]
        if first == last:  # zero tokens: the final state is the initial state
            expected = torch.zeros_like(final[i]) if state is None else state[i]
            assert torch.equal(final[i], expected)
            continue
        y_i, final_i = et.ssm_scan(x[:, first:last], lam, b, alone, backend="triton")
        assert_close(y[:, first:last], y_i, atol=y_tol, rtol=0, name=f"y of sequence {i}")
        assert_close(final[i : i + 1], final_i, atol=state_tol, rtol=0, name=f"final state of sequence {i}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_half_precision_strided_x_int64_offsets(device, dtype):
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu = packed(LENGTHS, 2 * CHANNELS, dtype=dtype, index_dtype=torch.int64, device=device)
    x = x[:, :, ::2]  # channels two elements apart: read in place
    assert not x.is_contiguous()
    state = random_state(len(LENGTHS), MODES, CHANNELS, device=device).transpose(1, 2)  # strided states
    y, final = et.ssm_scan(x, lam, b, state, cu_seqlens=cu, backend="triton")
    check_packed_against_oracle(y, final, x, lam, b, state, cu)


def test_split_mode_blocks(device):
    """N > 512: two mode blocks, the packed outputs summed from per-block partials."""
    lam, b = make_ssm(3, 515, device=device)
    x, cu = packed((4, 0, 5), 3, device=device)
    y, final = et.ssm_scan(x, lam, b, cu_seqlens=cu, backend="triton")
    check_packed_against_oracle(y, final, x, lam, b, None, cu)


def pool_case(device, pool_rows=9):
    """Six sequences into a pool of 9 rows: a padding sequence, rows started from zero, a zero-length sequence
    that keeps its row and one that zeroes its row; rows 1, 2, 4, 6 are named by none."""
    lengths = (*LENGTHS, 0)
    rows = torch.tensor([3, -1, 0, 7, 5, 8], dtype=torch.int32, device=device)
    starts = torch.tensor([True, True, False, True, False, False], device=device)
    pool = random_state(pool_rows, CHANNELS, MODES, seed=4, device=device)
    x, cu = packed(lengths, device=device)
    return x, cu, pool, rows, starts


@pytest.mark.parametrize("with_flags", [False, True])
def test_pool_is_written_in_place(device, path, with_flags):
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu, pool, rows, starts = pool_case(device)
    starts = starts if with_flags else None
    before = pool.clone()
    y, out = et.ssm_scan(x, lam, b, pool, cu_seqlens=cu, state_indices=rows, has_initial_state=starts,
                         backend="triton")
    assert out is pool and y.shape == x.shape
    # The same sequences scanned packed from the states the pooled scan starts from.
    use = starts.tolist() if starts is not None else [True] * len(rows)
    initial = torch.stack([before[max(r, 0)] if u and r >= 0 else torch.zeros_like(before[0])
                           for r, u in zip(rows.tolist(), use, strict=True)])
    y_packed, final_packed = et.ssm_scan(x, lam, b, initial, cu_seqlens=cu, backend="triton")
    for i, ((first, last), row) in enumerate(zip(spans(cu), rows.tolist(), strict=True)):
        if row < 0:
            assert torch.equal(y[:, first:last], torch.zeros_like(y[:, first:last])), "padding outputs are 0"
            continue
        assert torch.equal(y[:, first:last], y_packed[:, first:last]), f"y of sequence {i}"
        assert torch.equal(pool[row], final_packed[i]), f"pool row {row} (sequence {i})"
    for row in set(range(pool.shape[0])) - set(rows.tolist()):
        assert torch.equal(pool[row], before[row]), f"row {row} is named by no sequence"
    assert torch.equal(pool[3], before[3])  # a zero-length sequence from its row: unchanged
    assert torch.equal(pool[8], torch.zeros_like(pool[8])) == with_flags  # zero-length from zero: zeroed

    # The reference mutates its pool exactly as the kernel does: the same bits on the sequential path.
    ref_pool = before.clone()
    y_ref, _ = reference.ssm_scan(x, lam, b, ref_pool, cu_seqlens=cu, state_indices=rows, has_initial_state=starts)
    y_tol = 0.0 if path == "sequential" else 8 * EPS32 * y_ref.abs().max().item()
    state_tol = 0.0 if path == "sequential" else 8 * EPS32 * ref_pool.abs().max().item()
    assert_close(y, y_ref, atol=y_tol + 4 * EPS32 * y_ref.abs().max().item(), rtol=0, name="y vs reference")
    assert_close(pool, ref_pool, atol=state_tol, rtol=0, name="pool vs reference")


def test_torch_backend_pool_and_strided_pool(device):
    """The public torch backend writes the same rows; a pool whose modes are not contiguous is written in place."""
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu, pool, rows, starts = pool_case(device)
    strided = random_state(pool.shape[0], MODES, CHANNELS, seed=4, device=device).transpose(1, 2)
    strided.copy_(pool)
    torch_pool = pool.clone()
    y, _ = et.ssm_scan(x, lam, b, strided, cu_seqlens=cu, state_indices=rows, has_initial_state=starts,
                       backend="triton")
    y_torch, _ = et.ssm_scan(x, lam, b, torch_pool, cu_seqlens=cu, state_indices=rows, has_initial_state=starts,
                             backend="torch")
    assert_close(y, y_torch, atol=4 * EPS32 * y_torch.abs().max().item(), rtol=0, name="y")
    assert torch.equal(strided, torch_pool)


def test_all_sequences_empty(device):
    """T = 0: every final state is its initial state (a copy), and a pooled row without one is zeroed."""
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu = packed((0, 0), device=device)
    state = random_state(2, CHANNELS, MODES, device=device)
    for backend in ("triton", "torch"):
        y, final = et.ssm_scan(x, lam, b, state, cu_seqlens=cu, backend=backend)
        assert y.shape == (1, 0, CHANNELS) and torch.equal(final, state) and final.data_ptr() != state.data_ptr()
        pool = state.clone()
        rows = torch.tensor([1, 0], dtype=torch.int32, device=device)
        starts = torch.tensor([True, False], device=device)
        et.ssm_scan(x, lam, b, pool, cu_seqlens=cu, state_indices=rows, has_initial_state=starts, backend=backend)
        assert torch.equal(pool[1], state[1]) and torch.equal(pool[0], torch.zeros_like(pool[0]))


@pytest.mark.parametrize("with_state,outputs", [(True, "y+state"), (False, "y"), (True, "state")])
def test_packed_gradients_equal_the_loop(device, path, with_state, outputs):
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu = packed(LENGTHS, seed=3, device=device)
    assert (planned_chunks(x, cu, MODES, scan.backward_blocks) > 1) == (path == "chunked")
    gen = torch.Generator().manual_seed(5)
    state = random_state(len(LENGTHS), CHANNELS, MODES, device=device) if with_state else None
    dy = torch.randn(x.shape, generator=gen).to(device) if "y" in outputs else None
    dfinal = random_state(len(LENGTHS), CHANNELS, MODES, seed=9, device=device) if "state" in outputs else None

    def loop(x, lam, b, state):
        """The packed scan as a loop of dense scans, one per sequence."""
        ys, finals = [], []
        for i, (first, last) in enumerate(spans(cu)):
            alone = None if state is None else state[i : i + 1]
            y_i, final_i = et.ssm_scan(x[:, first:last], lam, b, alone, backend="triton")
            ys.append(y_i)
            finals.append(final_i)
        return torch.cat(ys, 1), torch.cat(finals)

    got = scan_gradients(lambda *a: et.ssm_scan(*a, cu_seqlens=cu, backend="triton"), x, lam, b, state, dy, dfinal,
                         torch.complex64, torch.float32)
    looped = scan_gradients(loop, x, lam, b, state, dy, dfinal, torch.complex64, torch.float32)
    expected = scan_gradients(lambda *a: reference.ssm_scan(*a, cu_seqlens=cu), x, lam, b, state, dy, dfinal,
                              torch.complex128, torch.float64)
    for name, g, q, e in zip(("x", "lam", "b", "state"), got, looped, expected, strict=True):
        if e is None:
            assert g is None
            continue
        # dlam and db sum over the sequences in another order than the loop's autograd does: rounding apart.
        assert_close(g, q, atol=GRAD_TOL * e.abs().max().item(), rtol=0, name=f"d{name} packed vs loop")
        assert_close(g, e, atol=GRAD_TOL * e.abs().max().item(), rtol=0, name=f"d{name} vs float64")


def test_pooled_scan_is_not_differentiable(device):
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu, pool, rows, _ = pool_case(device)
    before = pool.clone()
    for backend in ("triton", "torch"):
        with pytest.raises(NotImplementedError, match="not differentiable"):
            et.ssm_scan(x.requires_grad_(), lam, b, pool, cu_seqlens=cu, state_indices=rows, backend=backend)
        assert torch.equal(pool, before)
    with torch.no_grad():
        et.ssm_scan(x, lam, b, pool, cu_seqlens=cu, state_indices=rows, backend="triton")
    assert not torch.equal(pool, before)


def bad_layouts(device):
    """(label, change of the keyword arguments, error, message) for a pooled scan of the pool_case."""
    i32 = dict(dtype=torch.int32, device=device)
    _, cu, pool, rows, starts = pool_case(device)
    tokens = int(cu[-1])
    packed_state = random_state(6, CHANNELS, MODES, device=device)
    return [
        ("cu_seqlens not from 0", dict(cu_seqlens=cu + 1), ValueError, "cu_seqlens must start at 0"),
        ("cu_seqlens falling", dict(cu_seqlens=torch.tensor([0, 3, 2, 40, 50, 63, 63], **i32)), ValueError,
         r"cu_seqlens must not decrease .*cu_seqlens\[1\] = 3 > cu_seqlens\[2\] = 2"),
        ("cu_seqlens short of T", dict(cu_seqlens=torch.tensor([0, 0, 1, 41, 48, 62, 62], **i32)), ValueError,
         f"cu_seqlens must end at T = {tokens}"),
        ("cu_seqlens float", dict(cu_seqlens=cu.float()), TypeError, "cu_seqlens must have dtype in"),
        ("cu_seqlens 2-D", dict(cu_seqlens=cu[None]), ValueError, "cu_seqlens must have 1 dimensions"),
        ("cu_seqlens empty", dict(cu_seqlens=cu[:0]), ValueError, "cu_seqlens must not be empty"),
        ("x batch 2", dict(x=torch.randn(2, tokens, CHANNELS, device=device)), ValueError,
         r"x must be \[1, T, D\]"),
        ("state_indices short", dict(state_indices=rows[:5]), ValueError, r"state_indices must have shape \(S,\)"),
        ("index out of range", dict(state_indices=torch.tensor([3, -1, 0, 9, 5, 8], **i32)), ValueError,
         "state_indices must be < P = 9"),
        ("one row twice", dict(state_indices=torch.tensor([3, -1, 0, 7, 3, 8], **i32)), ValueError,
         "must not repeat a state row"),
        ("state_indices int64", dict(state_indices=rows.long()), TypeError, "state_indices must have dtype"),
        ("has_initial_state int", dict(has_initial_state=starts.int()), TypeError, "has_initial_state must have"),
        ("has_initial_state short", dict(has_initial_state=starts[:4]), ValueError,
         r"has_initial_state must have shape \(S,\)"),
        ("flags without a pool", dict(state=packed_state, state_indices=None), ValueError,
         "has_initial_state needs state_indices"),
        ("indices without a pool", dict(state=None, has_initial_state=None), ValueError,
         "state_indices needs state"),
        ("indices without cu_seqlens", dict(cu_seqlens=None), ValueError, "need cu_seqlens"),
        ("packed state of another S", dict(state=packed_state[:5], state_indices=None, has_initial_state=None),
         ValueError, r"state must have shape \(S, D, N\)"),
        ("pool rows of another N", dict(state=pool[..., :32]), ValueError, r"state must have shape \(P, D, N\)"),
        ("pool complex128", dict(state=pool.to(torch.complex128)), TypeError, "state must be complex64"),
        ("pool expanded", dict(state=pool[:1].expand(9, -1, -1)), ValueError, "must not overlap itself"),
        ("cu_seqlens elsewhere", dict(cu_seqlens=cu.to("meta")), ValueError, "all tensors must be on one device"),
    ]


@pytest.mark.parametrize("label", [case[0] for case in bad_layouts("cpu")])
def test_bad_layouts_are_refused_and_nothing_is_written(device, label):
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu, pool, rows, starts = pool_case(device)
    before = pool.clone()
    _, change, error, message = next(case for case in bad_layouts(device) if case[0] == label)
    args = dict(x=x, state=pool, cu_seqlens=cu, state_indices=rows, has_initial_state=starts) | change
    for backend in ("triton", "torch"):
        with pytest.raises(error, match=message):
            et.ssm_scan(args["x"], lam, b, args["state"], cu_seqlens=args["cu_seqlens"],
                        state_indices=args["state_indices"], has_initial_state=args["has_initial_state"],
                        backend=backend)
        assert torch.equal(pool, before)


@pytest.mark.gpu
def test_unchecked_index_on_gpu_gives_nan_and_touches_nothing():
    """Without ETSC_TRITON_DEBUG an index >= P is not checked on CUDA: that sequence's outputs are NaN and no row
    is touched (the other sequences are served)."""
    lam, b = make_ssm(CHANNELS, MODES, device="cuda")
    x, cu, pool, rows, starts = pool_case("cuda")
    rows = torch.tensor([3, -1, 0, 70, 5, 8], dtype=torch.int32, device="cuda")
    before = pool.clone()
    y, _ = et.ssm_scan(x, lam, b, pool, cu_seqlens=cu, state_indices=rows, has_initial_state=starts,
                       backend="triton")
    first, last = spans(cu)[3]
    assert torch.isnan(y[:, first:last]).all() and not torch.isnan(y[:, :first]).any()
    assert torch.equal(pool[7], before[7]) and not torch.equal(pool[0], before[0])


@pytest.mark.gpu
def test_long_packed_sequences_on_gpu():
    """Three sequences of a few thousand tokens, D=64: few programs, so each is cut into chunks."""
    lam, b = make_ssm(64, 16, device="cuda")
    x, cu = packed((3000, 1, 5000), 64, device="cuda")
    state = random_state(3, 64, 16, device="cuda")
    assert planned_chunks(x, cu, 16) > 1
    y, final = et.ssm_scan(x, lam, b, state, cu_seqlens=cu, backend="triton")
    check_packed_against_oracle(y, final, x, lam, b, state, cu)


def test_registered_ops_equal_the_eager_launchers(device):
    """The registered ops (what torch.compile traces) compute what the eager launchers compute, the pool
    written in place by both."""
    lam, b = make_ssm(CHANNELS, MODES, device=device)
    x, cu, pool, rows, starts = pool_case(device)
    eager = scan._ssm_scan_launch(x, lam, b, None, cu)
    traced = scan._ssm_scan_launch.op(x, lam, b, None, cu)
    assert all(torch.equal(e, t) for e, t in zip(eager, traced, strict=True))
    op_pool = pool.clone()
    y_eager = scan._ssm_scan_pooled_launch(x, lam, b, pool, cu, rows, starts)
    y_op = scan._ssm_scan_pooled_launch.op(x, lam, b, op_pool, cu, rows, starts)
    assert torch.equal(y_eager, y_op) and torch.equal(pool, op_pool)
