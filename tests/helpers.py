"""Comparison helpers shared by the tests.

``assert_close`` reports the max-abs error, the relative error (``||a - e|| / ||e||``) and the first element
outside the tolerance, which is what one needs to debug a kernel.
"""

from __future__ import annotations

import torch


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected||_2 / ||expected||_2`` in float64 (complex allowed); inf when NaN appears."""
    a = actual.detach().to("cpu", torch.complex128 if actual.is_complex() else torch.float64)
    e = expected.detach().to("cpu", torch.complex128 if expected.is_complex() else torch.float64)
    if torch.isnan(a).any() and not torch.isnan(e).any():
        return float("inf")
    denom = torch.linalg.vector_norm(e).item()
    return torch.linalg.vector_norm(a - e).item() / (denom if denom > 0 else 1.0)


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    name: str = "output",
) -> None:
    """Elementwise ``|a - e| <= atol + rtol * |e|`` (NaN only where expected is NaN), with a useful report."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.complex128 if actual.is_complex() else torch.float64)
    e = expected.detach().to("cpu", torch.complex128 if expected.is_complex() else torch.float64)
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    bad |= torch.isnan(a) & ~torch.isnan(e)
    bad |= torch.isnan(e) & ~torch.isnan(a)
    bad &= ~(torch.isnan(a) & torch.isnan(e))
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        finite = err[~torch.isnan(err)]
        max_abs = finite.max().item() if finite.numel() else float("nan")
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements outside atol={atol:g} rtol={rtol:g}; "
            f"max abs err {max_abs:.3e}, rel err {rel_error(a, e):.3e}; first bad index {first}: "
            f"got {a[first].item()}, expected {e[first].item()}"
        )
