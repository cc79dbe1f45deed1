"""Diagonal SSM family: the in-place decode step and the fused scan (prefill), against the original ETSC code.

Baselines:
- ``original``: the ETSC paper's eager torch code on the unfolded layer (all n = 2N modes):
  ``u = lam * u + b * x; y = u.sum(-1).real`` per token (the scan's original is that loop over the tokens).
- ``torch``: our reference oracle (:mod:`etsc_triton.reference`), ``compile``: torch.compile of the
  reference step's arithmetic.
- ``triton_cudagraph``: one step under a CUDA graph (the launch overhead removed), GPU only.
- ``ssm_scan_long_narrow``: B=1, D=64, N=16, L to 1M, where the scan chunks the sequence; ``triton_sequential``
  is the same scan forced to one chunk; mode ``bwd`` times the backward kernel alone (chunked and sequential).

Bytes: step = state read + written + lam, b read (+ x, y); scan = x read + y written + final state.
Flops (scan): 8 per mode per token (complex multiply-add), ``8 B L D N``; ``fwd_bwd`` (gradients of x, lam, b):
about 24 per mode per token.
"""

from __future__ import annotations

import dataclasses

import torch

import etsc_triton as et
from etsc_triton.ops.tiles import TilePolicy, current_tiles, use_tiles

from .harness import capture_cuda_graph, random_ssm

FAMILY = "ssm"

ORIGINAL_SCAN_TOKENS = 256  # the original per-token loop is timed over this many tokens, then scaled
REFERENCE_GRAD_BYTES = 16 << 30  # the reference scan's backward only where autograd keeps less than this


def original_step(x, lam, b, holder):
    """The ETSC paper's decode step, all n modes: ``u = lam * u + b * x; y = u.sum().real``."""
    u = lam * holder[0] + b * x[..., None]
    holder[0] = u
    return u.sum(-1).real


def reference_step_math(x, lam_re, lam_im, b_re, b_im, state_parts):
    """The reference step's arithmetic on the real view of the state, without validation (for torch.compile)."""
    u_re, u_im = state_parts[..., 0], state_parts[..., 1]
    new_re, new_im = et.reference.ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, x[..., None])
    state_parts.copy_(torch.stack((new_re, new_im), dim=-1))
    return new_re.sum(-1)


def bench_step(ctx) -> None:
    channels = 8 if ctx.quick else 1024
    for batch in ctx.sizes(quick=[1, 2], full=[1, 8, 64]):
        for modes in ctx.sizes(quick=[3, 16], full=[64, 256, 512, 1024]):
            step_case(ctx, batch, channels, modes)
    if ctx.on_gpu:
        bench_step_cuda_graph(ctx)


def step_case(ctx, batch: int, channels: int, modes: int) -> None:
    """One step size: triton, torch reference, compile (GPU) and the original unfolded step."""
    config = {"B": batch, "D": channels}
    lam, b = random_ssm(channels, modes, ctx.device)
    state_bytes = batch * channels * modes * 8
    nbytes = 2 * state_bytes + 2 * channels * modes * 8 + 2 * batch * channels * 4
    copies = ctx.copies(nbytes)
    xs = [torch.randn(batch, channels, device=ctx.device) for _ in range(copies)]
    states = [torch.zeros(batch, channels, modes, dtype=torch.complex64, device=ctx.device)
              for _ in range(copies)]
    inputs = list(zip(xs, states))
    common = {"op": "ssm_step", "x_name": "N", "x_value": modes, "config": config, "bytes": nbytes}
    ctx.time(provider="triton", args=inputs, **common,
             fn=lambda x, s: et.ssm_step(x, lam, b, s, backend="triton"))
    ctx.time(provider="torch", args=inputs, **common,
             fn=lambda x, s: et.reference.ssm_step(x, lam, b, s))
    if ctx.on_gpu:
        parts = [torch.view_as_real(lam).unbind(-1), torch.view_as_real(b).unbind(-1)]
        (lam_re, lam_im), (b_re, b_im) = parts
        compiled = torch.compile(reference_step_math)
        real_inputs = [(x, torch.view_as_real(s)) for x, s in inputs]
        ctx.time(provider="compile", args=real_inputs, **common,
                 fn=lambda x, sp: compiled(x, lam_re, lam_im, b_re, b_im, sp))
    full_lam = torch.cat([lam, lam.conj()], dim=1)  # the unfolded layer: n = 2N modes
    full_b = torch.cat([b, b.conj()], dim=1)
    holders = [[torch.zeros(batch, channels, 2 * modes, dtype=torch.complex64, device=ctx.device)]
               for _ in range(copies)]
    original_bytes = 2 * nbytes - 8 * batch * channels  # 2N modes, same x and y
    ctx.time(op="ssm_step", provider="original", x_name="N", x_value=modes, config=config,
             bytes=original_bytes, args=list(zip(xs, holders)),
             fn=lambda x, h: original_step(x, full_lam, full_b, h))


def bench_step_cuda_graph(ctx) -> None:
    """One step at B=1, D=1024, N=512 (n=1024) replayed from a CUDA graph: the small-batch decode latency."""
    batch, channels, modes = 1, 1024, 512
    lam, b = random_ssm(channels, modes, ctx.device)
    x = torch.randn(batch, channels, device=ctx.device)
    state = torch.zeros(batch, channels, modes, dtype=torch.complex64, device=ctx.device)
    replay = capture_cuda_graph(lambda: et.ssm_step(x, lam, b, state, backend="triton"))
    nbytes = 2 * batch * channels * modes * 8 + 2 * channels * modes * 8
    ctx.time(op="ssm_step", provider="triton_cudagraph", x_name="N", x_value=modes,
             config={"B": batch, "D": channels}, bytes=nbytes, fn=replay)


def original_scan_loop(x, lam, b, tokens: int):
    """The original per-token decode loop over the first ``tokens`` tokens (all n modes)."""
    u = torch.zeros(x.shape[0], x.shape[2], lam.shape[1], dtype=torch.complex64, device=x.device)
    ys = []
    for t in range(tokens):
        u = lam * u + b * x[:, t, :, None]
        ys.append(u.sum(-1).real)
    return torch.stack(ys, 1), u


def scan_gradients(scan_fn, x, lam, b, dy):
    """Forward and backward of ``<scan(x, lam, b).y, dy>``: the gradients of x, lam and b."""
    leaves = [x.detach().requires_grad_(), lam.detach().requires_grad_(), b.detach().requires_grad_()]
    y, _ = scan_fn(*leaves)
    return torch.autograd.grad(y, leaves, dy)


def bench_scan(ctx) -> None:
    batch, channels = (2, 8) if ctx.quick else (8, 2048)
    for modes in ctx.sizes(quick=[4, 16], full=[16, 64, 256]):
        lam, b = random_ssm(channels, modes, ctx.device)
        for length in ctx.sizes(quick=[8, 32], full=[1024, 4096, 16384, 65536]):
            scan_case(ctx, batch, length, channels, modes, lam, b)
    # The original-loop headline point: B=1, D=512, n=512 (the folded layer has N=256 modes).
    if not ctx.quick:
        lam, b = random_ssm(512, 256, ctx.device)
        scan_case(ctx, 1, 4096, 512, 256, lam, b)
    bench_long_narrow_scan(ctx)


def bench_long_narrow_scan(ctx) -> None:
    """L up to 1M at B=1, D=64, N=16: too few (batch, channel, mode) programs to fill the GPU, so the scan
    splits the sequence into chunks; ``triton_sequential`` is the same kernel forced to one chunk."""
    channels, modes = (3, 4) if ctx.quick else (64, 16)
    lam, b = random_ssm(channels, modes, ctx.device)
    config = {"B": 1, "D": channels, "N": modes}
    for length in ctx.sizes(quick=[40], full=[1024, 16384, 262144, 1 << 20]):
        x = torch.randn(1, length, channels, device=ctx.device)
        nbytes = 2 * x.numel() * 4 + channels * modes * 8
        flops = 8 * length * channels * modes
        dy = torch.randn_like(x)
        sequential = dataclasses.replace(current_tiles(), scan_chunks=False)
        for provider, policy in (("triton", current_tiles()), ("triton_sequential", sequential)):
            ctx.time(op="ssm_scan_long_narrow", provider=provider, x_name="L", x_value=length, config=config,
                     bytes=nbytes, flops=flops, fn=with_tiles(policy, et.ssm_scan, x, lam, b, backend="triton"))
            x_grad = x.detach().requires_grad_()
            y, _ = et.ssm_scan(x_grad, lam, b, backend="triton")
            ctx.time(op="ssm_scan_long_narrow", provider=provider, mode="bwd", x_name="L", x_value=length,
                     config=config, bytes=3 * x.numel() * 4, flops=2 * flops,
                     fn=with_tiles(policy, torch.autograd.grad, y, x_grad, dy, retain_graph=True))


VARIANT_POINTS = {False: (4096, 64), True: (32, 4)}  # (L, smallest N) where the tile variant below is timed


def with_tiles(policy: TilePolicy, fn, *args, **kwargs):
    """A thunk running ``fn(*args, **kwargs)`` under the tile ``policy``."""

    def run():
        with use_tiles(policy):
            return fn(*args, **kwargs)

    return run


def scan_with_modes_per_thread(x, lam, b, per_thread: int):
    """The scan with its tiles sized for ``per_thread`` modes per thread instead of the default 16: 32 cuts
    the SASS per mode and token from 9.5 to 8.3 at 254 registers (perf/NOTES.md, experiment 13); this provider
    measures whether the lower occupancy costs more than that."""
    return with_tiles(dataclasses.replace(current_tiles(), scan_modes_per_thread=per_thread), et.ssm_scan, x, lam,
                      b, backend="triton")()


def reference_autograd_bytes(batch: int, length: int, channels: int, modes: int) -> int:
    """What autograd keeps for the reference scan's backward: the state's real and imaginary parts of every
    token (fp32, ``[B, D, N]`` each), saved by the products of the update."""
    return 2 * 4 * batch * length * channels * modes


def scan_case(ctx, batch, length, channels, modes, lam, b) -> None:
    config = {"B": batch, "D": channels, "N": modes}
    x = torch.randn(batch, length, channels, device=ctx.device)
    nbytes = 2 * x.numel() * 4 + batch * channels * modes * 8
    flops = 8 * batch * length * channels * modes
    triton_ms = ctx.time(op="ssm_scan", provider="triton", x_name="L", x_value=length, config=config,
                         bytes=nbytes, flops=flops, fn=lambda: et.ssm_scan(x, lam, b, backend="triton"))
    ctx.value(op="ssm_scan", provider="triton", metric="time_per_token", unit="us",
              value=triton_ms * 1e3 / length, x_name="L", x_value=length, config=config)
    variant_length, variant_min_modes = VARIANT_POINTS[ctx.quick]
    if length == variant_length and modes >= variant_min_modes:
        ctx.time(op="ssm_scan", provider="triton_32_modes_per_thread", x_name="L", x_value=length, config=config,
                 bytes=nbytes, flops=flops, fn=lambda: scan_with_modes_per_thread(x, lam, b, 32))
    reference_limit = 64 if ctx.quick else 1024  # a Python loop over the tokens: only short sequences
    if length <= reference_limit:
        ctx.time(op="ssm_scan", provider="torch", x_name="L", x_value=length, config=config,
                 bytes=nbytes, flops=flops, fn=lambda: et.reference.ssm_scan(x, lam, b))
    # Forward + backward (gradients of x, lam, b): x twice, y, dy and dx (fp32) = 5 x 4 B per element of x;
    # 8 flops per mode and token forward, ~16 backward (two complex recurrences, two accumulations).
    dy = torch.randn_like(x)
    grad_bytes = 5 * x.numel() * 4 + 4 * channels * modes * 8
    grad_flops = 24 * batch * length * channels * modes
    providers = {"triton": lambda *a: et.ssm_scan(*a, backend="triton")}
    if length <= reference_limit and reference_autograd_bytes(batch, length, channels, modes) <= REFERENCE_GRAD_BYTES:
        providers["torch"] = et.reference.ssm_scan
    for provider, scan_fn in providers.items():
        ctx.time(op="ssm_scan", provider=provider, mode="fwd_bwd", x_name="L", x_value=length, config=config,
                 bytes=grad_bytes, flops=grad_flops, fn=lambda scan_fn=scan_fn: scan_gradients(scan_fn, x, lam, b, dy))
    tokens = min(length, 16 if ctx.quick else ORIGINAL_SCAN_TOKENS)
    full_lam = torch.cat([lam, lam.conj()], dim=1)
    full_b = torch.cat([b, b.conj()], dim=1)
    original_ms = ctx.time(op="ssm_scan_original_prefix", provider="original", x_name="L", x_value=tokens,
                           config=config, fn=lambda: original_scan_loop(x, full_lam, full_b, tokens))
    ctx.value(op="ssm_scan", provider="original", metric="time_per_token", unit="us",
              value=original_ms * 1e3 / tokens, x_name="L", x_value=length, config=config)


def run(ctx) -> None:
    bench_step(ctx)
    bench_scan(ctx)
