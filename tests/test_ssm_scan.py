"""ssm_scan: Triton kernel (the interpreter on CPU) against a float64 evaluation of the naive oracle."""

import dataclasses
import math

import pytest
import torch
from helpers import assert_close, rel_error

import etsc_triton as et
from etsc_triton import reference
from etsc_triton.ops.ssm import chunked, scan
from etsc_triton.ops.tiles import current_tiles, use_tiles

# Tolerances relative to the scale of the terms (the output of the same scan on |x|, |lam|, |b|, |state|: the
# sum of |terms| each element is rounded against; y and the state can cancel far below it, e.g. a single mode
# with lam u ~ -b x) and to each element.
SCALE_TOL = {
    torch.float32: 2e-6,  # fp32 update accumulated over L tokens and N modes: measured <= 5.7e-7 of max |y|
    torch.float16: 2e-6,  # same fp32 arithmetic; the fp16 rounding of y is covered by ELEMENT_TOL
    torch.bfloat16: 2e-6,
}
ELEMENT_TOL = {
    torch.float32: 0.0,
    torch.float16: 2.0**-11,  # y is rounded to fp16 (half an ulp: 2^-11 relative)
    # y is rounded to bf16: half an ulp (2^-8) on the GPU, a full ulp (2^-7) in the interpreter, whose
    # fp32 -> bf16 conversion truncates
    torch.bfloat16: 2.0**-7,
}


EPS32 = torch.finfo(torch.float32).eps


def make_ssm(channels, modes, *, seed=0, device="cpu"):
    """Stable random nodes (0.5 <= |lam| < 1) and weights, complex64 ``[D, N]``."""
    gen = torch.Generator().manual_seed(seed)
    radius = 0.5 + 0.49 * torch.rand(channels, modes, generator=gen, dtype=torch.float64)
    angle = 2 * math.pi * torch.rand(channels, modes, generator=gen, dtype=torch.float64)
    lam = torch.polar(radius, angle)
    b = torch.randn(channels, modes, generator=gen, dtype=torch.complex128) / math.sqrt(modes)
    return lam.to(device, torch.complex64), b.to(device, torch.complex64)


def random_state(batch, channels, modes, *, seed=1, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, modes, generator=gen, dtype=torch.complex64).to(device)


def oracle64(x, lam, b, state=None):
    """The naive scan in float64 on the same (already rounded) inputs."""
    return reference.ssm_scan(
        x.double(), lam.to(torch.complex128), b.to(torch.complex128),
        None if state is None else state.to(torch.complex128),
    )


def magnitudes(x, lam, b, state=None):
    """The scan of the magnitudes (float64): bounds on the sums of |terms| behind every y and state element."""
    return oracle64(x.abs(), lam.abs(), b.abs(), None if state is None else state.abs())


def check_against_oracle(y, final, x, lam, b, state=None):
    y_ref, final_ref = oracle64(x, lam, b, state)
    y_scale, state_scale = magnitudes(x, lam, b, state)
    tol = SCALE_TOL[x.dtype] * y_scale.abs().max().item()
    assert y.dtype == x.dtype and final.dtype == torch.complex64
    assert_close(y, y_ref, atol=tol, rtol=ELEMENT_TOL[x.dtype], name="y")
    state_tol = SCALE_TOL[torch.float32] * state_scale.abs().max().item()
    assert_close(final, final_ref, atol=state_tol, rtol=0.0, name="final_state")


@pytest.mark.parametrize(
    "batch,length,channels,modes",
    [
        (2, 63, 5, 33),  # odd everything, one channel block
        (1, 1, 3, 1),  # a single token, a single mode
        (3, 17, 40, 7),  # several channel blocks
        (1, 9, 3, 515),  # N > 512: two mode blocks, partial sums reduced by the second kernel
    ],
)
def test_scan_matches_float64_oracle(device, batch, length, channels, modes):
    lam, b = make_ssm(channels, modes, device=device)
    x = torch.randn(batch, length, channels, device=device)
    y, final = et.ssm_scan(x, lam, b, backend="triton")
    check_against_oracle(y, final, x, lam, b)


def test_initial_state_is_used_and_never_modified(device):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(2, 63, 5, device=device)
    state = random_state(2, 5, 33, device=device)
    before = state.clone()
    y, final = et.ssm_scan(x, lam, b, state, backend="triton")
    assert torch.equal(state, before)
    check_against_oracle(y, final, x, lam, b, state)
    y_zero, _ = et.ssm_scan(x, lam, b, backend="triton")
    assert rel_error(y, y_zero) > 1e-2  # the initial state changes the output


def test_continuation_equals_one_scan(device):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(2, 63, 5, device=device)
    y_full, final_full = et.ssm_scan(x, lam, b, backend="triton")
    y_head, mid = et.ssm_scan(x[:, :20], lam, b, backend="triton")
    y_tail, final = et.ssm_scan(x[:, 20:], lam, b, mid, backend="triton")
    # Same kernel, same order of operations: the split scan reproduces the single scan to fp32 rounding.
    tol = 4 * torch.finfo(torch.float32).eps
    assert_close(torch.cat([y_head, y_tail], 1), y_full, atol=tol * y_full.abs().max().item(), rtol=0, name="y")
    assert_close(final, final_full, atol=tol * final_full.abs().max().item(), rtol=0, name="state")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(device, dtype):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(2, 63, 5, device=device).to(dtype)
    state = random_state(2, 5, 33, device=device)
    y, final = et.ssm_scan(x, lam, b, state, backend="triton")
    check_against_oracle(y, final, x, lam, b, state)


def test_non_contiguous_x(device):
    lam, b = make_ssm(5, 33, device=device)
    base = torch.randn(2, 5, 2 * 63, device=device)
    x = base[:, :, ::2].transpose(1, 2)  # [B, L, D] with strides (630, 2, 126): not copied by the kernel
    assert not x.is_contiguous()
    y, final = et.ssm_scan(x, lam, b, backend="triton")
    check_against_oracle(y, final, x, lam, b)


def test_torch_and_auto_backends(device):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(2, 63, 5, device=device)
    y_torch, final_torch = et.ssm_scan(x, lam, b, backend="torch")
    check_against_oracle(y_torch, final_torch, x, lam, b)
    y_auto, final_auto = et.ssm_scan(x, lam, b)
    y_tri, final_tri = et.ssm_scan(x, lam, b, backend="triton")
    expected_y = y_tri if device == "cuda" else y_torch
    assert torch.equal(y_auto, expected_y)
    assert torch.equal(final_auto, final_tri if device == "cuda" else final_torch)


@pytest.mark.parametrize("gamma", [None, 0.9])
def test_etsc_pipeline_equals_causal_convolution(device, gamma):
    """Convert a Toeplitz layer (float64), scan with the kernel, compare with the direct causal convolution."""
    channels, n, length, batch = 3, 64, 63, 2
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(channels, n, generator=gen, dtype=torch.float64) / math.sqrt(n)
    lam, b = reference.toeplitz_to_ssm(t, gamma)
    x = torch.randn(batch, length, channels, generator=gen, dtype=torch.float64)
    y, _ = et.ssm_scan(x.float().to(device), lam.to(device), b.to(device), backend="triton")
    lags = torch.arange(n, dtype=torch.float64)
    kernel = t * (1.0 if gamma is None else gamma) ** lags  # realised kernel gamma^j t_j
    y_conv = torch.zeros(batch, length, channels, dtype=torch.float64)
    for i in range(length):
        window = x[:, : i + 1].flip(1)  # x_{i-j}, j = 0..i
        y_conv[:, i] = (window * kernel[:, : i + 1].T).sum(1)
    # fp32 inputs, nodes and state (|y| ~ 2): measured 3.2e-6 without decay (|lam| = 1), 2.5e-7 with it.
    assert_close(y, y_conv, atol=1e-5, rtol=0, name="y")


def test_bad_inputs_are_refused(device):
    lam, b = make_ssm(5, 33, device=device)
    x = torch.randn(2, 7, 5, device=device)
    state = random_state(2, 5, 33, device=device)
    before = state.clone()
    cases = [
        ({"x": x.to(torch.int32)}, TypeError, "x must be a real floating"),
        ({"x": x.to(torch.complex64)}, TypeError, "x must be a real floating"),
        ({"x": x[0]}, ValueError, "x must have 3 dimensions"),
        ({"lam": lam[:, :0], "b": b[:, :0]}, ValueError, "lam must hold at least one mode"),
        ({"lam": lam.real}, TypeError, "lam must be a complex"),
        ({"b": b.real.contiguous()}, TypeError, "b must be a complex"),
        ({"lam": lam[:4]}, ValueError, "lam must have shape"),
        ({"b": b[:, :32]}, ValueError, "b must have the shape of lam"),
        ({"state": state[:, :, :32]}, ValueError, "state must have shape"),
        ({"state": state[:1]}, ValueError, "state must have shape"),
        ({"state": state.to(torch.complex128)}, TypeError, "state must be complex64"),
        ({"state": state.real.contiguous()}, TypeError, "state must be a complex"),
        ({"lam": lam.to("meta")}, ValueError, "all tensors must be on one device"),
    ]
    for backend in ("triton", "torch"):
        for change, error, message in cases:
            args = {"x": x, "lam": lam, "b": b, "state": state} | change
            with pytest.raises(error, match=message):
                et.ssm_scan(args["x"], args["lam"], args["b"], args["state"], backend=backend)
            assert torch.equal(state, before)
    with pytest.raises(ValueError, match="backend must be one of"):
        et.ssm_scan(x, lam, b, backend="cuda")


@pytest.fixture
def short_chunks():
    """Chunk the sequence from 8 tokens on (chunks of at least 4 tokens), so interpreter-sized scans take the
    chunked path; the interpreter counts 2 SMs, so few (batch, channel, mode) programs ask for chunks."""
    with use_tiles(dataclasses.replace(current_tiles(), scan_min_chunk_tokens=4)):
        yield


def expected_chunks(x, modes, blocks=None):
    """The chunk count the launcher plans for this scan (``blocks``: the forward's tiles by default, or the
    backward's)."""
    blocks = blocks or (lambda channels, modes: scan.scan_blocks(channels, modes, current_tiles()))
    batch, length, channels = x.shape
    return chunked.chunk_plan(batch, length, channels, modes, blocks(channels, modes), x.device,
                              current_tiles())[0]


@pytest.mark.parametrize(
    "batch,length,channels,modes,with_state,chunks",
    [
        (1, 63, 5, 33, False, 13),  # 13 chunks of 5, the last of 3
        (1, 63, 5, 33, True, 13),
        (1, 63, 3, 515, True, 3),  # two mode blocks (partial y) x 3 chunks of 21
        (1, 8, 3, 1, False, 2),  # two chunks of 4: no short last chunk
        (1, 9, 3, 1, True, 2),  # chunks of 5 and 4
    ],
)
def test_chunked_scan_matches_oracle(device, short_chunks, batch, length, channels, modes, with_state, chunks):
    lam, b = make_ssm(channels, modes, device=device)
    x = torch.randn(batch, length, channels, device=device)
    assert expected_chunks(x, modes) > 1  # chunked on a GPU too (132 SMs ask for more chunks than 2)
    assert expected_chunks(x, modes) == chunks or device == "cuda"
    state = random_state(batch, channels, modes, device=device) if with_state else None
    before = None if state is None else state.clone()
    y, final = et.ssm_scan(x, lam, b, state, backend="triton")
    check_against_oracle(y, final, x, lam, b, state)
    if state is not None:
        assert torch.equal(state, before)
    # The sequential scan of the same inputs: the carry re-associates the sums, so they agree to rounding.
    with use_tiles(dataclasses.replace(current_tiles(), scan_chunks=False)):
        y_seq, final_seq = et.ssm_scan(x, lam, b, state, backend="triton")
    y_tol = 8 * EPS32 * magnitudes(x, lam, b, state)[0].abs().max().item()
    assert_close(y, y_seq, atol=y_tol, rtol=0, name="y chunked vs sequential")
    state_tol = 8 * EPS32 * magnitudes(x, lam, b, state)[1].abs().max().item()
    assert_close(final, final_seq, atol=state_tol, rtol=0, name="state chunked vs sequential")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_scan_strided_half_precision_x_and_strided_state(device, short_chunks, dtype):
    lam, b = make_ssm(3, 17, device=device)
    x = torch.randn(1, 3, 2 * 63, device=device).to(dtype)[:, :, ::2].transpose(1, 2)
    state = random_state(1, 17, 3, device=device).transpose(1, 2)  # [B, D, N], modes 3 elements apart
    assert not x.is_contiguous() and not state.is_contiguous()
    assert expected_chunks(x, 17) > 1
    y, final = et.ssm_scan(x, lam, b, state, backend="triton")
    check_against_oracle(y, final, x, lam, b, state)


def test_long_sequences_chunk_only_when_programs_are_few():
    cpu = torch.device("cpu")  # 2 SMs assumed: the target is CHUNK_TARGET_PER_SM * 2 programs
    target = chunked.CHUNK_TARGET_PER_SM * 2
    tiles = current_tiles()
    assert chunked.chunk_count(target, 1 << 20, cpu, tiles) == 1
    assert chunked.chunk_count(1, 2 * tiles.scan_min_chunk_tokens - 1, cpu, tiles) == 1
    assert chunked.chunk_count(1, 1 << 20, cpu, tiles) == target
    assert chunked.chunk_count(1, 3 * tiles.scan_min_chunk_tokens, cpu, tiles) == 3


@pytest.mark.gpu
def test_chunked_long_sequence_on_gpu():
    """B=1, D=64: few programs, so a 32K-token scan runs in chunks; against the float64 oracle."""
    lam, b = make_ssm(64, 16, device="cuda")
    x = torch.randn(1, 32768, 64, device="cuda")
    state = random_state(1, 64, 16, device="cuda")
    assert expected_chunks(x, 16) > 1
    y, final = et.ssm_scan(x, lam, b, state, backend="triton")
    check_against_oracle(y, final, x, lam, b, state)


def scan_gradients(scan, x, lam, b, state, dy, dfinal, complex_dtype, real_dtype):
    """Gradients of ``<y, dy> + <final_state, dfinal>`` (real inner products) w.r.t. x, lam, b and state."""
    leaves = [x.to(real_dtype).clone().requires_grad_(), lam.to(complex_dtype).clone().requires_grad_(),
              b.to(complex_dtype).clone().requires_grad_(),
              None if state is None else state.to(complex_dtype).clone().requires_grad_()]
    y, final = scan(*leaves)
    loss = (y.double() * dy.double()).sum() if dy is not None else 0.0
    if dfinal is not None:
        loss = loss + (torch.view_as_real(final).double() * torch.view_as_real(dfinal).double()).sum()
    loss.backward()
    return [None if leaf is None else leaf.grad for leaf in leaves]


# Gradients relative to their largest magnitude, against float64 autograd through the reference: measured
# 5e-8 .. 2.4e-7 for L <= 63 (N <= 515); dlam, a lag-weighted sum, grows about linearly with L (2.8e-7 at
# L = 256, 1.6e-6 at L = 1024; N = 16, interpreter). bf16 x: dx is rounded to bf16 (ELEMENT_TOL).
GRAD_TOL = 2e-6


def grad_tol(length: int) -> float:
    return GRAD_TOL * max(1.0, length / 256)


def check_scan_gradients(x, lam, b, state, dy, dfinal, tol=GRAD_TOL):
    """The Triton scan's gradients (x, lam, b, state) against float64 autograd through the reference."""
    got = scan_gradients(lambda *a: et.ssm_scan(*a, backend="triton"), x, lam, b, state, dy, dfinal,
                         torch.complex64, torch.float32)
    expected = scan_gradients(reference.ssm_scan, x, lam, b, state, dy, dfinal, torch.complex128, torch.float64)
    for name, g, e in zip(("x", "lam", "b", "state"), got, expected, strict=True):
        if e is None:
            assert g is None
            continue
        assert g.dtype == (torch.float32 if name == "x" else torch.complex64)
        assert_close(g, e, atol=tol * e.abs().max().item(), rtol=0, name=f"d{name}")


@pytest.mark.parametrize(
    "batch,length,channels,modes,with_state,outputs",
    [
        (2, 63, 5, 33, True, "y+state"),
        (2, 13, 3, 5, False, "y"),  # no initial state, the final state unused
        (1, 9, 3, 515, True, "y+state"),  # two mode blocks: dx from partial sums
        (2, 11, 4, 7, True, "state"),  # only the final state is used: dy is None in backward
    ],
)
def test_scan_gradients_match_float64_autograd(device, batch, length, channels, modes, with_state, outputs):
    lam, b = make_ssm(channels, modes, device=device)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(batch, length, channels, generator=gen).to(device)
    state = random_state(batch, channels, modes, device=device) if with_state else None
    dy = torch.randn(batch, length, channels, generator=gen).to(device) if "y" in outputs else None
    dfinal = random_state(batch, channels, modes, seed=9, device=device) if "state" in outputs else None
    check_scan_gradients(x, lam, b, state, dy, dfinal)


@pytest.mark.parametrize(
    "batch,length,channels,modes,with_state,outputs",
    [
        (1, 63, 5, 33, True, "y+state"),  # 15 chunks of 4 tokens, the last of 3
        (1, 63, 5, 33, False, "y"),
        (1, 9, 3, 1, True, "state"),  # two chunks; only dfinal: it enters through the last chunk's local walk
        (1, 40, 3, 515, True, "y+state"),  # three backward mode blocks x chunks: dx from partial sums
    ],
)
def test_chunked_scan_gradients(device, short_chunks, batch, length, channels, modes, with_state, outputs):
    lam, b = make_ssm(channels, modes, device=device)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(batch, length, channels, generator=gen).to(device)
    assert expected_chunks(x, modes, scan.backward_blocks) > 1
    state = random_state(batch, channels, modes, device=device) if with_state else None
    dy = torch.randn(batch, length, channels, generator=gen).to(device) if "y" in outputs else None
    dfinal = random_state(batch, channels, modes, seed=9, device=device) if "state" in outputs else None
    check_scan_gradients(x, lam, b, state, dy, dfinal)
    dy_full = dy if dy is not None else torch.zeros_like(x)
    dfinal_c = None if dfinal is None else dfinal.contiguous()
    # The carry re-associates the sums: chunked and sequential differ by up to 2.3e-7 of the largest gradient
    # (measured, N = 33 and 515).
    chunked = scan._ssm_scan_backward_launch(x, lam, b, state, dy_full, dfinal_c)
    with use_tiles(dataclasses.replace(current_tiles(), scan_chunks=False)):
        sequential = scan._ssm_scan_backward_launch(x, lam, b, state, dy_full, dfinal_c)
    for name, c, q in zip(("dx", "dlam", "db"), chunked, sequential, strict=False):
        assert_close(c, q, atol=GRAD_TOL * q.abs().max().item(), rtol=0, name=f"{name} chunked vs sequential")


def test_scan_gradients_bf16_x_and_strided_x(device):
    lam, b = make_ssm(5, 33, device=device)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 2 * 31, generator=gen).to(device, torch.bfloat16)[:, :, ::2].transpose(1, 2)
    dy = torch.randn(2, 31, 5, generator=gen).to(device, torch.bfloat16).float()  # exact in bf16: y's grad is bf16
    got = scan_gradients(lambda *a: et.ssm_scan(*a, backend="triton"), x, lam, b, None, dy, None,
                         torch.complex64, torch.bfloat16)
    expected = scan_gradients(reference.ssm_scan, x, lam, b, None, dy, None, torch.complex128, torch.float64)
    assert got[0].dtype == torch.bfloat16
    assert_close(got[0], expected[0], atol=GRAD_TOL * expected[0].abs().max().item(),
                 rtol=ELEMENT_TOL[torch.bfloat16], name="dx")
    for name, g, e in zip(("lam", "b"), got[1:3], expected[1:3], strict=True):
        assert_close(g, e, atol=GRAD_TOL * e.abs().max().item(), rtol=0, name=f"d{name}")


def test_scan_without_grad_skips_autograd(device):
    lam, b = make_ssm(3, 5, device=device)
    x = torch.randn(1, 7, 3, device=device, requires_grad=True)
    with torch.no_grad():
        y, final = et.ssm_scan(x, lam, b, backend="triton")
    assert y.grad_fn is None and final.grad_fn is None
    y, _ = et.ssm_scan(x, lam, b, backend="triton")
    assert y.grad_fn is not None


@pytest.mark.gpu
def test_scan_gradients_on_gpu_and_under_torch_compile():
    lam, b = make_ssm(64, 64, device="cuda")
    x = torch.randn(2, 1024, 64, device="cuda")
    state = random_state(2, 64, 64, device="cuda")
    dy = torch.randn(2, 1024, 64, device="cuda")
    dfinal = random_state(2, 64, 64, seed=5, device="cuda")
    eager = scan_gradients(lambda *a: et.ssm_scan(*a, backend="triton"), x, lam, b, state, dy, dfinal,
                           torch.complex64, torch.float32)
    expected = scan_gradients(reference.ssm_scan, x, lam, b, state, dy, dfinal, torch.complex128, torch.float64)
    for name, g, e in zip(("x", "lam", "b", "state"), eager, expected, strict=True):
        assert_close(g, e, atol=grad_tol(1024) * e.abs().max().item(), rtol=0, name=f"d{name}")
    compiled_scan = torch.compile(lambda *a: et.ssm_scan(*a, backend="triton"))
    compiled = scan_gradients(compiled_scan, x, lam, b, state, dy, dfinal, torch.complex64, torch.float32)
    for g, e in zip(compiled, eager, strict=True):
        assert torch.equal(g, e)


@pytest.mark.gpu
@pytest.mark.parametrize("modes", [16, 64, 256, 600])
def test_large_shapes_on_gpu(modes):
    batch, length, channels = 8, 4096, 2048
    if modes > 64:
        length = 512  # keeps the float64 oracle loop short
    lam, b = make_ssm(channels, modes, device="cuda")
    x = torch.randn(batch, length, channels, device="cuda", dtype=torch.bfloat16)
    state = random_state(batch, channels, modes, device="cuda")
    y, final = et.ssm_scan(x, lam, b, state, backend="triton")
    check_against_oracle(y, final, x, lam, b, state)


@pytest.mark.gpu
def test_torch_compile_on_gpu():
    lam, b = make_ssm(64, 33, device="cuda")
    x = torch.randn(2, 63, 64, device="cuda")
    compiled = torch.compile(lambda x, lam, b: et.ssm_scan(x, lam, b, backend="triton"), fullgraph=True)
    y, final = compiled(x, lam, b)
    y_eager, final_eager = et.ssm_scan(x, lam, b, backend="triton")
    assert torch.equal(y, y_eager) and torch.equal(final, final_eager)
