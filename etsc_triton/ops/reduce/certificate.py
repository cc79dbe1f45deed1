"""The certificate of a reduction: the float64 kernel evaluation and the margin that covers its rounding, so
that the returned bound is an upper bound on ``max_(j < length) |K_j - K^r_j|``, not an estimate."""

from __future__ import annotations

import math

import torch

from ..complex import vandermonde_kernel64

# Margin of the certificate, per lag and per unit of sum |b| (+ max |K|): the float64 evaluation of
# ``Re sum_s b_s lam_s^j`` through exp(j log|lam|) and a reduced angle j*arg(lam) has a relative error of at most
# (j |log|lam|| + j pi + 8) * 2^-53 per term, and |lam|^j * j |log|lam|| <= 1/e; 4 j + 16 units of 2^-52
# cover it with room (op README).
EVALUATION_ULPS_PER_LAG = 4


EVALUATION_ULPS_FIXED = 16


def modal_kernel(lam: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """``K_j = Re sum_s b_s lam_s^j`` for ``j < length`` in float64: `[..., N]` -> `[..., length]`."""
    return vandermonde_kernel64(lam, b, length)


def evaluation_margin(b_total: torch.Tensor, length: int) -> torch.Tensor:
    """Upper bound on the float64 evaluation error of a modal kernel with ``sum |b| = b_total`` (any shape)."""
    ulps = EVALUATION_ULPS_PER_LAG * length + EVALUATION_ULPS_FIXED
    return b_total * (ulps * 2.0**-52)


def certify(error64: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """float32 upper bound on ``error64 + margin`` (float64): rounded up, never down."""
    total = error64 + margin
    bound = total.to(torch.float32)
    low = bound.to(torch.float64) < total
    return torch.where(low, torch.nextafter(bound, torch.full_like(bound, math.inf)), bound)


def hankel_size(length: int) -> int:
    """``p`` of the square ``p x p`` Hankel matrix ``H_ij = K_(i+j)`` that lags ``0 .. length-1`` fill."""
    return (length + 1) // 2
