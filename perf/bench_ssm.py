"""Diagonal SSM family: the in-place decode step and the fused scan (prefill), against the original ETSC code.

Baselines:
- ``original``: the ETSC paper's eager torch code on the unfolded layer (all n = 2N modes):
  ``u = lam * u + b * x; y = u.sum(-1).real`` per token (the scan's original is that loop over the tokens, timed
  over a prefix of ``ORIGINAL_SCAN_TOKENS`` tokens: ``ssm_scan_original_prefix``).
- ``fft_conv``: the scan's outputs as a TNN computes them, an FFT convolution with the realised kernel (the
  kernel itself not timed).
- ``torch``: our reference oracle (:mod:`etsc_triton.reference`), ``compile``: torch.compile of the reference
  step's arithmetic.
- ``triton_cudagraph``: one step under a CUDA graph (the launch overhead removed), GPU only.
- ``ssm_scan_long_narrow``: B=1, D=64, N=16, L to 1M, where the scan chunks the sequence; ``triton_sequential``
  is the same scan forced to one chunk; mode ``bwd`` times the backward kernel alone (chunked and sequential).

Bytes: step = state read + written + lam, b read (+ x, y); scan = x read + y written + final state.
Flops (scan): 8 per mode per token (complex multiply-add), ``8 B L D N``; ``fwd_bwd`` (gradients of x, lam, b):
about 24 per mode per token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

import etsc_triton as et
from etsc_triton.nn.toeplitz import causal_fft_conv
from etsc_triton.ops.tiles import TilePolicy, current_tiles, use_tiles

from .harness import Context, capture_cuda_graph, gradients, random_ssm

FAMILY = "ssm"

ORIGINAL_SCAN_TOKENS = 256  # the original per-token loop is timed over this many tokens, then scaled
REFERENCE_GRAD_BYTES = 16 << 30  # the reference scan's backward only where autograd keeps less than this


def original_step(x, lam, b, holder):
    """The ETSC paper's decode step, all n modes: ``u = lam * u + b * x; y = u.sum().real``."""
    u = lam * holder[0] + b * x[..., None]
    holder[0] = u
    return u.sum(-1).real


def unfolded(lam: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfolded layer of folded ``[D, N]`` modes: ``[D, 2N]``, each mode beside its conjugate."""
    return torch.cat([lam, lam.conj()], 1), torch.cat([b, b.conj()], 1)


def reference_step_math(x, lam_re, lam_im, b_re, b_im, state_parts):
    """The reference step's arithmetic on the real view of the state, without validation (for torch.compile)."""
    u_re, u_im = state_parts[..., 0], state_parts[..., 1]
    new_re, new_im = et.reference.ssm_update(u_re, u_im, lam_re, lam_im, b_re, b_im, x[..., None])
    state_parts.copy_(torch.stack((new_re, new_im), dim=-1))
    return new_re.sum(-1)


def step_bytes(batch: int, channels: int, modes: int) -> int:
    """Bytes one step moves: the complex64 state read and written, lam and b read, x read and y written."""
    return 2 * batch * channels * modes * 8 + 2 * channels * modes * 8 + 2 * batch * channels * 4


def step_point(ctx: Context, batch: int, channels: int, modes: int,
               providers: Sequence[str] = ("triton", "torch", "compile", "original")) -> dict[str, float]:
    """Time one step size (``[B, D]`` tokens, ``[D, N]`` modes, inputs rotated out of L2); ``compile`` runs on a
    GPU only, ``original`` steps the unfolded layer. Returns ``{provider: median ms}``."""
    config = {"B": batch, "D": channels}
    lam, b = random_ssm(channels, modes, ctx.device)
    nbytes = step_bytes(batch, channels, modes)
    copies = ctx.copies(nbytes)
    xs = [torch.randn(batch, channels, device=ctx.device) for _ in range(copies)]
    states = [torch.zeros(batch, channels, modes, dtype=torch.complex64, device=ctx.device)
              for _ in range(copies)]
    full_lam, full_b = unfolded(lam, b)
    holders = [[torch.zeros(batch, channels, 2 * modes, dtype=torch.complex64, device=ctx.device)]
               for _ in range(copies)]
    calls: dict[str, tuple[Callable, list]] = {
        "triton": (lambda x, s: et.ssm_step(x, lam, b, s, backend="triton"), list(zip(xs, states))),
        "torch": (lambda x, s: et.reference.ssm_step(x, lam, b, s), list(zip(xs, states))),
        "original": (lambda x, h: original_step(x, full_lam, full_b, h), list(zip(xs, holders))),
    }
    if ctx.on_gpu:
        (lam_re, lam_im), (b_re, b_im) = torch.view_as_real(lam).unbind(-1), torch.view_as_real(b).unbind(-1)
        compiled = torch.compile(reference_step_math)
        calls["compile"] = (lambda x, sp: compiled(x, lam_re, lam_im, b_re, b_im, sp),
                            [(x, torch.view_as_real(s)) for x, s in zip(xs, states)])
    original_bytes = 2 * nbytes - 8 * batch * channels  # 2N modes, the same x and y
    times = {}
    for provider in [p for p in providers if p in calls]:
        fn, args = calls[provider]
        times[provider] = ctx.time(op="ssm_step", provider=provider, x_name="N", x_value=modes, config=config,
                                   fn=fn, args=args, bytes=original_bytes if provider == "original" else nbytes)
    return times


def step_graph_point(ctx: Context, batch: int, channels: int, modes: int) -> float:
    """One step replayed from a CUDA graph (GPU only): the small-batch decode latency without host work."""
    lam, b = random_ssm(channels, modes, ctx.device)
    x = torch.randn(batch, channels, device=ctx.device)
    state = torch.zeros(batch, channels, modes, dtype=torch.complex64, device=ctx.device)
    replay = capture_cuda_graph(lambda: et.ssm_step(x, lam, b, state, backend="triton"))
    return ctx.time(op="ssm_step", provider="triton_cudagraph", x_name="N", x_value=modes,
                    config={"B": batch, "D": channels}, bytes=step_bytes(batch, channels, modes), fn=replay)


def original_scan_loop(x, lam, b, tokens: int):
    """The original per-token decode loop over the first ``tokens`` tokens (all n modes)."""
    u = torch.zeros(x.shape[0], x.shape[2], lam.shape[1], dtype=torch.complex64, device=x.device)
    ys = []
    for t in range(tokens):
        u = lam * u + b * x[:, t, :, None]
        ys.append(u.sum(-1).real)
    return torch.stack(ys, 1), u


def with_tiles(policy: TilePolicy, fn, *args, **kwargs):
    """A thunk running ``fn(*args, **kwargs)`` under the tile ``policy``."""

    def run():
        with use_tiles(policy):
            return fn(*args, **kwargs)

    return run


def original_tokens(ctx: Context, length: int) -> int:
    """How many tokens the original per-token loop is timed over (then scaled to ``length``)."""
    return min(length, 16 if ctx.quick else ORIGINAL_SCAN_TOKENS)


def scan_bytes_flops(batch: int, length: int, channels: int, modes: int) -> tuple[int, int]:
    """``(bytes, flops)`` of one forward scan: x read, y written, the final state; 8 flops per mode and token."""
    return 2 * batch * length * channels * 4 + batch * channels * modes * 8, 8 * batch * length * channels * modes


def scan_point(ctx: Context, batch: int, length: int, channels: int, modes: int, *, extras: bool = True
               ) -> dict[str, float]:
    """Time the scan ``x [B, L, D]`` with ``[D, N]`` modes beside the FFT convolution and the original per-token
    loop (its prefix scaled to L); with ``extras`` also the torch reference (short L) and forward + backward.
    Returns the forward times ``{triton, fft_conv, per_token_loop}`` (ms)."""
    config = {"B": batch, "D": channels, "N": modes}
    lam, b = random_ssm(channels, modes, ctx.device)
    x = torch.randn(batch, length, channels, device=ctx.device)
    kernel = et.ssm_kernel(lam, b, length)  # the baseline's input: its values do not change its time
    nbytes, flops = scan_bytes_flops(batch, length, channels, modes)
    point = dict(op="ssm_scan", x_name="L", x_value=length, config=config, bytes=nbytes, flops=flops)
    times = {"triton": ctx.time(provider="triton", fn=lambda: et.ssm_scan(x, lam, b, backend="triton"), **point),
             "fft_conv": ctx.time(provider="fft_conv", fn=lambda: causal_fft_conv(x, kernel), **point)}
    tokens = original_tokens(ctx, length)
    full_lam, full_b = unfolded(lam, b)
    prefix_ms = ctx.time(op="ssm_scan_original_prefix", provider="original", x_name="L", x_value=tokens,
                         config=config, fn=lambda: original_scan_loop(x, full_lam, full_b, tokens))
    times["per_token_loop"] = prefix_ms * length / tokens
    for provider, ms, count in (("triton", times["triton"], length), ("original", prefix_ms, tokens)):
        ctx.value(op="ssm_scan", provider=provider, metric="time_per_token", unit="us", value=ms * 1e3 / count,
                  x_name="L", x_value=length, config=config)
    if not extras:
        return times
    reference_limit = 64 if ctx.quick else 1024  # a Python loop over the tokens: only short sequences
    if length <= reference_limit:
        ctx.time(provider="torch", fn=lambda: et.reference.ssm_scan(x, lam, b), **point)
    # Forward + backward (gradients of x, lam, b): x twice, y, dy and dx (fp32) = 5 x 4 B per element of x;
    # 8 flops per mode and token forward, ~16 backward (two complex recurrences, two accumulations).
    dy = torch.randn_like(x)
    providers = {"triton": lambda *a: et.ssm_scan(*a, backend="triton")}
    autograd_bytes = 2 * 4 * batch * length * channels * modes  # the reference's saved state, re and im
    if length <= reference_limit and autograd_bytes <= REFERENCE_GRAD_BYTES:
        providers["torch"] = et.reference.ssm_scan
    for provider, scan_fn in providers.items():
        ctx.time(op="ssm_scan", provider=provider, mode="fwd_bwd", x_name="L", x_value=length, config=config,
                 bytes=5 * x.numel() * 4 + 4 * channels * modes * 8, flops=3 * flops,
                 fn=lambda scan_fn=scan_fn: gradients(scan_fn, (x, lam, b), dy))
    return times


def long_narrow_scan(ctx: Context) -> None:
    """L up to 1M at B=1, D=64, N=16: too few (batch, channel, mode) programs to fill the GPU, so the scan
    splits the sequence into chunks; ``triton_sequential`` is the same kernel forced to one chunk."""
    channels, modes = (3, 4) if ctx.quick else (64, 16)
    lam, b = random_ssm(channels, modes, ctx.device)
    config = {"B": 1, "D": channels, "N": modes}
    sequential = dataclasses.replace(current_tiles(), scan_chunks=False)
    for length in ctx.sizes(quick=[40], full=[1024, 16384, 262144, 1 << 20]):
        x = torch.randn(1, length, channels, device=ctx.device)
        nbytes, flops = scan_bytes_flops(1, length, channels, modes)
        dy = torch.randn_like(x)
        for provider, policy in (("triton", current_tiles()), ("triton_sequential", sequential)):
            ctx.time(op="ssm_scan_long_narrow", provider=provider, x_name="L", x_value=length, config=config,
                     bytes=nbytes, flops=flops, fn=with_tiles(policy, et.ssm_scan, x, lam, b, backend="triton"))
            x_grad = x.detach().requires_grad_()
            y, _ = et.ssm_scan(x_grad, lam, b, backend="triton")
            ctx.time(op="ssm_scan_long_narrow", provider=provider, mode="bwd", x_name="L", x_value=length,
                     config=config, bytes=3 * x.numel() * 4, flops=2 * flops,
                     fn=with_tiles(policy, torch.autograd.grad, y, x_grad, dy, retain_graph=True))


def run(ctx: Context) -> None:
    channels = 8 if ctx.quick else 1024
    for batch in ctx.sizes(quick=[1, 2], full=[1, 8, 64]):
        for modes in ctx.sizes(quick=[3, 16], full=[64, 256, 512, 1024]):
            step_point(ctx, batch, channels, modes)
    if ctx.on_gpu:
        step_graph_point(ctx, 1, 1024, 512)
    batch, channels = (2, 8) if ctx.quick else (8, 2048)
    for modes in ctx.sizes(quick=[4, 16], full=[16, 64, 256]):
        for length in ctx.sizes(quick=[8, 32], full=[1024, 4096, 16384, 65536]):
            scan_point(ctx, batch, length, channels, modes)
    if not ctx.quick:  # the original-loop headline point: B=1, D=512, n=512 (the folded layer has N=256 modes)
        scan_point(ctx, 1, 4096, 512, 256)
    long_narrow_scan(ctx)
