"""The certificate of a reduction: the margin that covers the float64 evaluation's own rounding, so that the
returned bound is an upper bound on ``max_(j < length) |K_j - K^r_j|``, not an estimate."""

from __future__ import annotations

import math

import torch

from .modal import max_error

# Margin of the certificate, per lag and per unit of sum |b| (+ max |K|): the float64 evaluation of
# ``Re sum_s b_s lam_s^j`` through exp(j log|lam|) and a reduced angle j*arg(lam) has a relative error of at most
# (j |log|lam|| + j pi + 8) * 2^-53 per term, and |lam|^j * j |log|lam|| <= 1/e; 4 j + 16 units of 2^-52
# cover it with room (op README); the sum of N terms adds at most (N - 1) * 2^-53 of sum |terms|.
EVALUATION_ULPS_PER_LAG = 4
EVALUATION_ULPS_FIXED = 16


def evaluation_margin(b_total: torch.Tensor, length: int, terms: int) -> torch.Tensor:
    """Upper bound on the float64 evaluation error of a modal kernel of ``terms`` modes with ``sum |b| = b_total``
    (any shape) over ``length`` lags."""
    ulps = EVALUATION_ULPS_PER_LAG * length + EVALUATION_ULPS_FIXED + terms
    return b_total * (ulps * 2.0**-52)


def certify(error64: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """float32 upper bound on ``error64 + margin`` (float64): rounded up, never down."""
    total = error64 + margin
    bound = total.to(torch.float32)
    low = bound.to(torch.float64) < total
    return torch.where(low, torch.nextafter(bound, torch.full_like(bound, math.inf)), bound)


def certified_bound(kernel: torch.Tensor, kernel_margin: torch.Tensor, lam32: torch.Tensor,
                    b32: torch.Tensor) -> torch.Tensor:
    """float32 `[C]` certified bound on ``max_j |K_j - K^r_j|`` of complex64 modes `[C, r]` for float64 kernels
    `[C, L]` whose own evaluation error is at most ``kernel_margin [C]``."""
    margin = kernel_margin + evaluation_margin(b32.to(torch.complex128).abs().sum(-1), kernel.shape[-1], b32.shape[-1])
    return certify(max_error(kernel, lam32, b32), margin)
