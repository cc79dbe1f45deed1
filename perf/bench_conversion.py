"""Conversion family: the ETSC solve (toeplitz_to_ssm), the Vandermonde evaluation (ssm_kernel) and the
Vandermonde solve.

Providers:
- ``triton``: ours (b compensates the complex64 rounding of lam, op README); ``torch``: our reference oracle
  (``backend="torch"``); ``compile``: torch.compile of it (GPU).
- ``original`` (toeplitz_to_ssm): the ETSC paper's torch code: the padded complex vector (t, -sum t),
  ``torch.fft.ifft``, slice k = 1..n, fold conjugate pairs, lam from ``exp``.
- vandermonde_solve: ``linalg_solve`` builds the dense N x N Vandermonde matrix and LU-solves it (O(N^3));
  nodes are spread on the unit circle (accurate in Leja order), 64 systems.
- ssm_kernel: ``materialised`` is the plain complex64 materialised Vandermonde (``lam[..., :, None] **
  arange(L)``, einsum with b; the plain torch baseline) and ``compile`` its torch.compile; ``torch`` is our oracle, the
  same evaluation with the powers in complex128 (accurate, slower).

Errors (``rel_err``) are the realised kernel's: ``K_j = Re sum_s b_s lam_s^j`` evaluated in float64 from the
returned complex64 (lam, b), against the target, relative 2-norm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

import etsc_triton as et
from etsc_triton.reference import realised_kernel64

from .harness import gradients, random_ssm, rel_err

FAMILY = "conversion"

ERROR_ROWS = 2  # rows of the batch whose realised kernel is evaluated in float64
CONVERSION_PROVIDERS = ("triton", "original", "torch", "compile")
MATERIALISED_LIMIT = 8 << 30  # bytes: skip the materialised Vandermonde providers beyond this


def original_conversion(t: torch.Tensor, gamma: float = 1.0):
    """The ETSC paper's torch pipeline (ETSC), folded: ifft of the padded complex vector."""
    n = t.shape[-1]
    m = n + 1
    padded = torch.cat([t, -t.sum(-1, keepdim=True)], dim=-1).to(torch.complex64)
    b = torch.fft.ifft(padded, dim=-1)[..., 1 : n + 1]
    k = torch.arange(1, n + 1, device=t.device)
    lam = gamma * torch.exp(-2j * math.pi * k.to(torch.float32) / m)
    keep = (n + 1) // 2
    b = b[..., :keep] * torch.where(2 * k[:keep] == m, 1.0, 2.0)
    return lam[:keep].expand_as(b), b


def conversion_error(lam, b, t) -> float:
    n = t.shape[-1]
    realised = realised_kernel64(lam[:ERROR_ROWS], b[:ERROR_ROWS], n)
    return rel_err(realised, t[:ERROR_ROWS].double())


def conversion_bytes(n: int, d: int) -> int:
    """Bytes of one conversion of ``t [d, n]``: t read, the complex64 ``(lam, b) [d, ceil(n/2)]`` written."""
    return 4 * d * n + 2 * 8 * d * ((n + 1) // 2)


def conversion_point(ctx, n: int, d: int, providers: Sequence[str] = CONVERSION_PROVIDERS
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """Time ``toeplitz_to_ssm`` of ``t [d, n]`` (inputs rotated out of L2) and record each provider's realised
    kernel error; ``compile`` runs on a GPU only. Returns ``({provider: median ms}, {provider: rel err})``."""
    nbytes = conversion_bytes(n, d)
    inputs = [(torch.randn(d, n, device=ctx.device),) for _ in range(ctx.copies(nbytes))]
    calls = {
        "triton": lambda t: et.toeplitz_to_ssm(t, backend="triton"),
        "original": original_conversion,
        "torch": lambda t: et.toeplitz_to_ssm(t, backend="torch"),
    }
    if ctx.on_gpu:
        calls["compile"] = torch.compile(et.reference.toeplitz_to_ssm)
    times, errors = {}, {}
    for provider in [p for p in providers if p in calls]:
        point = dict(op="toeplitz_to_ssm", provider=provider, x_name="n", x_value=n, config={"d": d})
        times[provider] = ctx.time(**point, fn=calls[provider], args=inputs, bytes=nbytes)
        if math.isfinite(times[provider]):
            errors[provider] = conversion_error(*calls[provider](inputs[0][0]), inputs[0][0])
            ctx.value(**point, metric="rel_err", value=errors[provider])
    return times, errors


def materialised_kernel_c64(lam: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """The plain materialised Vandermonde evaluation in complex64 (the torch baseline)."""
    powers = lam[..., :, None] ** torch.arange(length, device=lam.device)
    return torch.einsum("...s,...sj->...j", b, powers).real


def kernel_bytes_flops(channels: int, modes: int, length: int) -> tuple[int, int]:
    """``(bytes, flops)`` of ``ssm_kernel``: K written, (lam, b) read; 8 flops per mode and lag."""
    return 4 * channels * length + 16 * channels * modes, 8 * channels * modes * length


def kernel_point(ctx, channels: int, modes: int, length: int, x_name: str = "L", *, backward: bool = True,
                 providers: Sequence[str] = ("triton", "materialised", "torch", "compile")) -> dict[str, float]:
    """Time ``ssm_kernel`` of ``[D, N]`` modes over ``length`` lags (the materialised providers only below
    ``MATERIALISED_LIMIT`` bytes, ``compile`` on a GPU only), record each provider's error, and with ``backward``
    the forward + backward of ours and of the materialised evaluation. Returns ``{provider: forward ms}``."""
    lam, b = random_ssm(channels, modes, ctx.device, min_radius=0.9, seed=modes)
    x_value = length if x_name == "L" else modes
    config = {"D": channels, "N": modes} if x_name == "L" else {"D": channels, "L": length}
    calls = {"triton": lambda lam, b: et.ssm_kernel(lam, b, length, backend="triton")}
    if channels * modes * length * 8 <= MATERIALISED_LIMIT:
        calls["materialised"] = lambda lam, b: materialised_kernel_c64(lam, b, length)
        calls["torch"] = lambda lam, b: et.ssm_kernel(lam, b, length, backend="torch")
        if ctx.on_gpu:
            compiled = torch.compile(materialised_kernel_c64)
            calls["compile"] = lambda lam, b: compiled(lam, b, length)
    expected = realised_kernel64(lam[:ERROR_ROWS], b[:ERROR_ROWS], length)
    nbytes, flops = kernel_bytes_flops(channels, modes, length)
    times = {}
    for provider in [p for p in providers if p in calls]:
        point = dict(op="ssm_kernel", provider=provider, x_name=x_name, x_value=x_value, config=config)
        fn = calls[provider]
        times[provider] = ctx.time(**point, fn=lambda fn=fn: fn(lam, b), bytes=nbytes, flops=flops)
        if math.isfinite(times[provider]):
            ctx.value(**point, metric="rel_err", value=rel_err(fn(lam, b)[:ERROR_ROWS].double(), expected))
    # Forward + backward (S4D-style training through the kernel): ours against autograd through the
    # materialised complex64 evaluation; the backward does twice the forward's products (P and Q).
    dk = torch.randn(channels, length, device=ctx.device)
    for provider in [p for p in ("triton", "materialised") if backward and p in calls]:
        ctx.time(op="ssm_kernel", provider=provider, mode="fwd_bwd", x_name=x_name, x_value=x_value, config=config,
                 fn=lambda fn=calls[provider]: gradients(fn, (lam, b), dk), bytes=2 * nbytes, flops=3 * flops)
    return times


def spread_unit_nodes(systems: int, size: int, device: str) -> torch.Tensor:
    """Distinct nodes on the unit circle: equispaced with a jitter below a third of the spacing, complex64."""
    gen = torch.Generator().manual_seed(size)
    jitter = 0.3 * torch.rand(systems, size, generator=gen, dtype=torch.float64) / size
    angle = 2 * math.pi * (torch.arange(size, dtype=torch.float64) / size + jitter)
    return torch.polar(torch.ones_like(angle), angle).to(torch.complex64).to(device)


def dense_vandermonde_solve(lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The generic baseline: build the N x N Vandermonde matrix and LU-solve it (``torch.linalg.solve``)."""
    size = lam.shape[-1]
    matrix = lam[..., None, :] ** torch.arange(size, device=lam.device)[:, None]
    return torch.linalg.solve(matrix, t.to(lam.dtype))


def bench_vandermonde_solve(ctx) -> None:
    """Time vs N of the batched solve; the error is the realised kernel's (the system's own residual)."""
    systems = ctx.sizes(quick=[2], full=[64])[0]
    for size in ctx.sizes(quick=[9, 33], full=[64, 256, 1024, 2048]):
        lam = spread_unit_nodes(systems, size, ctx.device)
        t = torch.randn(systems, size, device=ctx.device)
        providers = {"triton": lambda lam=lam, t=t: et.vandermonde_solve(lam, t, backend="triton")}
        if size <= 1024 or not ctx.on_gpu:  # the oracle launches O(N) small torch ops per pass: seconds beyond
            providers["torch"] = lambda lam=lam, t=t: et.vandermonde_solve(lam, t, backend="torch")
        if systems * size * size * 8 <= MATERIALISED_LIMIT // 2:
            providers["linalg_solve"] = lambda lam=lam, t=t: dense_vandermonde_solve(lam, t)
        config = {"systems": systems}
        for provider, fn in providers.items():
            ms = ctx.time(op="vandermonde_solve", provider=provider, x_name="N", x_value=size, config=config,
                          fn=fn, flops=16 * systems * size * size)
            if not math.isfinite(ms):
                continue
            b = fn()
            error = rel_err(realised_kernel64(lam[:ERROR_ROWS], b[:ERROR_ROWS], size), t[:ERROR_ROWS].double())
            ctx.value(op="vandermonde_solve", provider=provider, metric="rel_err", value=error, x_name="N",
                      x_value=size, config=config)


def run(ctx) -> None:
    for n in ctx.sizes(quick=[15, 64], full=[64, 256, 1024, 4096, 16384, 65536]):
        for d in ctx.sizes(quick=[4], full=[64, 512, 4096]):
            conversion_point(ctx, n, d)
    channels = ctx.sizes(quick=[4], full=[1024])[0]
    for length in ctx.sizes(quick=[63, 130], full=[256, 1024, 4096, 16384]):
        kernel_point(ctx, channels, ctx.sizes(quick=[8], full=[64])[0], length)
    for modes in ctx.sizes(quick=[8, 33], full=[16, 64, 256, 1024]):
        kernel_point(ctx, channels, modes, ctx.sizes(quick=[63], full=[4096])[0], "N")
    bench_vandermonde_solve(ctx)

