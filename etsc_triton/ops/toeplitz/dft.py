"""ETSC conversion (Toeplitz kernel -> diagonal SSM): a real-to-complex FFT and one fused Triton epilogue.

Algorithm (derivation in this folder's README): with m = n + 1 and ``X = rfft(t, n=m)`` of the zero-padded
kernel, the DFT of the zero-sum extended vector is ``X_k - X_0 exp(+2 pi i k / m)`` (the extension
``t_n = -X_0`` sits at lag m - 1), so

    b_k   = (weight_k / m) * (conj(X_k) - X_0 exp(-2 pi i k / m))
    lam_k = gamma * exp(-2 pi i k / m)

The FFT runs in cuFFT (any length, primes included: exact for every n). The epilogue reads X once, applies
the extension correction, the scaling and the conjugate-folding weight, computes lam from the integer k (the
angle reduced to [0, pi] exactly, cos/sin in float64 from a per-mode table, rounded once to float32) and
writes the interleaved complex64 outputs. For ``real=False`` modes k > m/2 are read from X_{m-k} and conjugated.

Compensation (default): the complex64 rounding ``lam~_k = lam_k (1 + eps_k)`` makes the realised kernel drift
by ``j gamma^j r_j``, ``r_j = Re sum_k b_k eps_k exp(-2 pi i k j / m)``. The first epilogue also writes the
residual spectrum (eps_k exact: lam_k in float64), ``irfft`` gives r, a ramp kernel forms ``e_j = -j r_j`` and
the same rfft + epilogue adds the ETSC weights of e to b (README: derivation, measured errors, cost).
"""

from __future__ import annotations

import functools
import struct

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ..complex import load_complex, store_complex
from ..dispatch import registered_launcher, resolve_backend, with_reference_gradient
from ..tiles import cdiv, next_power_of_2
from . import naive
from .contract import check_toeplitz_args, etsc_mode_count


@triton.jit
def _etsc_epilogue_kernel(
    x_ptr,  # [rows, m // 2 + 1, 2] float32: rfft of the zero-padded kernel, interleaved re/im
    gamma_ptr,  # [rows] float64 (read when HAS_GAMMA_TENSOR)
    unit_ptr,  # [modes, 2] float64: (cos, sin) of 2 pi source_k / m, source_k = min(k, m - k)
    lam_ptr,  # [rows, modes, 2] float32 out (STORE_NODES)
    b_ptr,  # [rows, modes, 2] float32 out (added to when ACCUMULATE)
    residual_ptr,  # [rows, m // 2 + 1, 2] float32 out (STORE_RESIDUAL): conj(m / weight_k * b_k * eps_k)
    rows,
    modes,
    m,
    gamma_hi,  # float32 scalar gamma = gamma_hi + gamma_lo (a float64 split in two float32 arguments)
    gamma_lo,
    HAS_GAMMA_TENSOR: tl.constexpr,
    FOLD: tl.constexpr,
    STORE_NODES: tl.constexpr,
    STORE_RESIDUAL: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    k = pid_k * BLOCK_K + 1 + tl.arange(0, BLOCK_K)
    row_ok = row < rows
    k_ok = k <= modes

    lower = 2 * k <= m
    source = tl.where(lower, k, m - k)  # the rfft bin holding mode k (its conjugate when k > m/2)
    sign = tl.where(lower, 1.0, -1.0)

    # cos / sin of the exactly reduced angle 2 pi source / m in [0, pi], float64, from the launcher's table
    # (float64 transcendentals are not lowered by every Triton GPU backend; the table is [modes] long).
    cos64 = tl.load(unit_ptr + 2 * (k - 1), mask=k_ok, other=1.0)
    sin64 = tl.load(unit_ptr + 2 * (k - 1) + 1, mask=k_ok, other=0.0)

    x_width = (m // 2 + 1).to(tl.int64) * 2
    row_base = row.to(tl.int64) * x_width
    rows_ok = row_ok[:, None]
    first = pid_k * BLOCK_K  # 0-based index of this block's first mode (mode k sits at index k - 1)
    if FOLD:  # every kept mode is a lower bin: bins first+1.. are one contiguous span (16-byte loads)
        x_re, x_im = load_complex(x_ptr + row_base[:, None] + 2, rows_ok, first, modes, 2, BLOCK_R, BLOCK_K, True)
    else:  # modes above m/2 read their conjugate bin m - k: a gather
        x_off = row_base[:, None] + (source.to(tl.int64) * 2)[None, :]
        tile_ok = rows_ok & k_ok[None, :]
        x_re = tl.load(x_ptr + x_off, mask=tile_ok, other=0.0)
        x_im = tl.load(x_ptr + x_off + 1, mask=tile_ok, other=0.0)
    x_sum = tl.load(x_ptr + row_base, mask=row_ok, other=0.0)  # X_0 = sum_j t_j (real)

    if FOLD:
        weight = tl.where(2 * k == m, 1.0, 2.0)
    else:
        weight = tl.full([BLOCK_K], 1.0, tl.float32)
    scale = (weight / m.to(tl.float32))[None, :]
    # conj(X_k) - X_0 exp(-2 pi i k / m), for the lower bin. The product with the exact node is formed in
    # float64: X_0 = sum t can be thousands of times any |X_k| / m, and a float32 node would add its rounding
    # times X_0 to every mode.
    x_sum64 = x_sum.to(tl.float64)[:, None]
    raw_re = (x_re.to(tl.float64) - x_sum64 * cos64[None, :]).to(tl.float32)
    raw_im = (x_sum64 * sin64[None, :] - x_im.to(tl.float64)).to(tl.float32)
    b_re = raw_re * scale
    b_im = raw_im * scale * sign[None, :]

    out_rows = (row.to(tl.int64) * modes * 2)[:, None]
    if ACCUMULATE:
        b_old_re, b_old_im = load_complex(b_ptr + out_rows, rows_ok, first, modes, 2, BLOCK_R, BLOCK_K, True)
        b_re += b_old_re
        b_im += b_old_im
    store_complex(b_ptr + out_rows, rows_ok, first, modes, 2, b_re, b_im, BLOCK_R, BLOCK_K, True)

    if STORE_NODES:
        if HAS_GAMMA_TENSOR:
            gamma = tl.load(gamma_ptr + row, mask=row_ok, other=1.0).to(tl.float64)[:, None]
        else:
            gamma = tl.full([BLOCK_R, 1], 1.0, tl.float64) * gamma_hi + gamma_lo  # float64 promotion
        lam_re64 = gamma * cos64[None, :]
        lam_im64 = gamma * (-sign.to(tl.float64) * sin64)[None, :]
        lam_re = lam_re64.to(tl.float32)
        lam_im = lam_im64.to(tl.float32)
        store_complex(lam_ptr + out_rows, rows_ok, first, modes, 2, lam_re, lam_im, BLOCK_R, BLOCK_K, True)
        if STORE_RESIDUAL:
            # eps_k = (lam~_k - lam_k) / lam_k = (rounding error) * exp(+2 pi i k / m) / gamma, lower bins only.
            err_re = lam_re.to(tl.float64) - lam_re64
            err_im = lam_im.to(tl.float64) - lam_im64
            eps_re = ((err_re * cos64[None, :] - err_im * sin64[None, :]) / gamma).to(tl.float32)
            eps_im = ((err_re * sin64[None, :] + err_im * cos64[None, :]) / gamma).to(tl.float32)
            res_re = raw_re * eps_re - raw_im * eps_im
            res_im = -(raw_re * eps_im + raw_im * eps_re)
            # bins 1..m//2 hold the lower modes, which are the first m // 2 modes
            store_complex(residual_ptr + row_base[:, None] + 2, rows_ok, first, m // 2, 2, res_re, res_im,
                          BLOCK_R, BLOCK_K, True)
            if pid_k == 0:  # bin 0 (no mode): zero, so that the inverse transform adds no constant
                tl.store(residual_ptr + row_base, tl.zeros([BLOCK_R], tl.float32), mask=row_ok)
                tl.store(residual_ptr + row_base + 1, tl.zeros([BLOCK_R], tl.float32), mask=row_ok)


@triton.jit
def _negative_lag_ramp_kernel(
    r_ptr,  # [rows, m] float32, in place: r_j <- -j r_j for j < n, 0 at j = n (the zero padding)
    n,
    m,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = j < m
    offset = row * m + j
    r = tl.load(r_ptr + offset, mask=ok, other=0.0)
    ramp = tl.where(j < n, -j.to(tl.float32), 0.0)
    tl.store(r_ptr + offset, r * ramp, mask=ok)


@functools.lru_cache(maxsize=64)
def _unit_angles(modes: int, m: int, device: torch.device) -> torch.Tensor:
    """``[modes, 2]`` float64 (cos, sin) of ``2 pi min(k, m - k) / m`` for k = 1..modes (angles in [0, pi]).

    Cached per (modes, m, device): building it is five small launches, as many as the rest of an uncompensated
    conversion at small n. Read-only; at most 64 tables (n = 65536: 0.5 MB each)."""
    k = torch.arange(1, modes + 1, device=device, dtype=torch.int64)
    angle = (2 * torch.pi / m) * torch.minimum(k, m - k).to(torch.float64)
    return torch.stack((torch.cos(angle), torch.sin(angle)), dim=-1)


# Modes x rows per epilogue program: 8 per thread at 4 warps. 2048 took the compensating pass to 205-255
# registers, with spills on triton 3.6.
EPILOGUE_TILE = 1024


def _epilogue_blocks(modes: int) -> tuple[int, int]:
    block_k = min(next_power_of_2(modes), EPILOGUE_TILE)
    block_r = max(1, EPILOGUE_TILE // block_k)
    return block_r, block_k


RAMP_BLOCK = 1024


@registered_launcher("etsc_triton::toeplitz_to_ssm", mutates_args=())
def _toeplitz_to_ssm_triton(
    t2d: torch.Tensor, gamma_rows: torch.Tensor | None, gamma_scalar: float, real: bool, compensate: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``t2d`` `[rows, n]` float32 contiguous, ``gamma_rows`` `[rows]` float64 or None -> (lam, b) `[rows, N]`.

    Pass 1: rfft(t) -> epilogue (lam, b and, when compensating, the residual spectrum conj(a) of
    ``a_k = b_k eps_k``). Compensation: irfft -> ``e_j = -j r_j`` in place -> rfft -> epilogue adding the
    ETSC weights of e to b.
    """
    rows, n = t2d.shape
    m = n + 1
    modes = etsc_mode_count(n, real)
    spectrum = torch.view_as_real(torch.fft.rfft(t2d, n=m, dim=-1))
    lam = torch.empty((rows, modes), dtype=torch.complex64, device=t2d.device)
    b = torch.empty((rows, modes), dtype=torch.complex64, device=t2d.device)
    if rows == 0:
        return lam, b
    residual = torch.empty_like(spectrum) if compensate else spectrum
    unit = _unit_angles(modes, m, t2d.device)
    gamma_hi = struct.unpack("f", struct.pack("f", gamma_scalar))[0]  # gamma = hi + lo, both float32
    block_r, block_k = _epilogue_blocks(modes)
    grid = (cdiv(rows, block_r), cdiv(modes, block_k))

    def epilogue(x, first_pass):
        wrap_triton(_etsc_epilogue_kernel)[grid](
            x,
            gamma_rows if gamma_rows is not None else x,
            unit,
            torch.view_as_real(lam),
            torch.view_as_real(b),
            residual,
            rows,
            modes,
            m,
            gamma_hi,
            gamma_scalar - gamma_hi,
            HAS_GAMMA_TENSOR=gamma_rows is not None,
            FOLD=real,
            STORE_NODES=first_pass,
            STORE_RESIDUAL=first_pass and compensate,
            ACCUMULATE=not first_pass,
            BLOCK_R=block_r,
            BLOCK_K=block_k,
        )

    epilogue(spectrum, first_pass=True)
    if compensate:
        lag_error = torch.fft.irfft(torch.view_as_complex(residual), n=m, dim=-1)  # r_j, [rows, m]
        ramp_grid = (rows, cdiv(m, RAMP_BLOCK))
        wrap_triton(_negative_lag_ramp_kernel)[ramp_grid](lag_error, n, m, BLOCK=RAMP_BLOCK)
        epilogue(torch.view_as_real(torch.fft.rfft(lag_error, dim=-1)), first_pass=False)
    return lam, b


def toeplitz_to_ssm(
    t: torch.Tensor,
    gamma: float | torch.Tensor | None = None,
    *,
    real: bool = True,
    compensate: bool = True,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert causal Toeplitz kernels into diagonal SSMs exactly (ETSC; derivation in the op README).

    The returned SSM realises ``K_j = Re sum_s b_s lam_s^j = gamma^j t_j`` for ``0 <= j < n`` (exact up to
    float32 rounding; beyond n the kernel repeats with period n + 1, damped by gamma^j).

    Args:
        t: `[..., n]` real floating kernel coefficients, lag last (any leading batch shape, n >= 1).
        gamma: decay in (0, 1]: None (1), a float, or a real tensor broadcastable to `t.shape[:-1]`.
        real: fold conjugate mode pairs (N = ceil(n/2), default) or return all N = n modes.
        compensate: correct b, to first order, for the complex64 rounding of lam (default). Without it the
            realised kernel's relative error grows like ~1.7e-8 n (2.9e-4 at n = 16384); with it it stays
            below ~1e-6 up to n = 65536, for about three times the memory traffic (see the op README).
        backend: ``"auto"`` (Triton on CUDA, else Torch), ``"triton"`` or ``"torch"``.

    Returns:
        ``(lam, b)``: complex64 `[..., N]` nodes and weights, modes ordered k = 1, 2, ...; differentiable in t and
        a tensor gamma (the backward differentiates the Torch reference of the same conversion). The order
        reduction of the taps is :func:`etsc_triton.reduce_toeplitz`.

    Example:
        >>> import torch, etsc_triton as et
        >>> t = torch.randn(4, 63)
        >>> lam, b = et.toeplitz_to_ssm(t, gamma=0.99)
        >>> lam.shape, b.dtype
        (torch.Size([4, 32]), torch.complex64)
    """
    gamma_checked = check_toeplitz_args(t, gamma, real, compensate)
    which = resolve_backend("toeplitz_to_ssm", backend, t, empty=t.numel() == 0)
    if which == "torch":
        lam, b = naive.toeplitz_to_ssm(t.to(torch.float32), gamma, real=real, compensate=compensate)
        return lam.to(torch.complex64), b.to(torch.complex64)
    gamma_tensor = gamma_checked if isinstance(gamma_checked, torch.Tensor) else None

    def triton_path(t, gamma_tensor):
        batch = tuple(t.shape[:-1])
        n = t.shape[-1]
        t2d = t.reshape(-1, n).to(torch.float32).contiguous()
        if gamma_tensor is not None:
            gamma_rows, gamma_scalar = gamma_tensor.to(torch.float64).reshape(-1).contiguous(), 1.0
        else:
            gamma_rows, gamma_scalar = None, gamma_checked
        lam, b = _toeplitz_to_ssm_triton(t2d, gamma_rows, gamma_scalar, real, compensate)
        modes = lam.shape[-1]
        return lam.reshape(*batch, modes), b.reshape(*batch, modes)

    def reference_path(t, gamma_tensor):
        gamma_ref = gamma_tensor if gamma_tensor is not None else gamma_checked
        lam, b = naive.toeplitz_to_ssm(t.to(torch.float32), gamma_ref, real=real, compensate=compensate)
        return lam.to(torch.complex64), b.to(torch.complex64)

    return with_reference_gradient(triton_path, reference_path, t, gamma_tensor)
