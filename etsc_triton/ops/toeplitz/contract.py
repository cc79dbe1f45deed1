"""The contract of ``toeplitz_to_ssm``, ``ssm_kernel`` and ``vandermonde_solve``: accepted inputs, the
checks both paths run, and the mode count of a conversion.
"""

from __future__ import annotations

import torch

from ..checks import check_int, check_same_device, check_shape, check_tensor


def check_toeplitz_args(
    t: object, gamma: object, real: object, compensate: object = True
) -> torch.Tensor | float:
    """Validate ``toeplitz_to_ssm`` arguments; return gamma as a float or a tensor of shape ``t.shape[:-1]``."""
    name = "toeplitz_to_ssm"
    check_tensor(name, "t", t, kind="real", min_ndim=1, allow_empty=True)
    if t.shape[-1] == 0:
        raise ValueError(f"{name}: t must have at least one lag (n >= 1), got shape {tuple(t.shape)}")
    for flag, value in (("real", real), ("compensate", compensate)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: {flag} must be a bool, got {type(value).__name__}")
    if gamma is None:
        return 1.0
    if isinstance(gamma, torch.Tensor):
        check_tensor(name, "gamma", gamma, kind="real", allow_empty=True)
        check_same_device(name, t=t, gamma=gamma)
        batch = tuple(t.shape[:-1])
        try:
            broadcast = tuple(torch.broadcast_shapes(tuple(gamma.shape), batch))
        except RuntimeError:
            broadcast = None
        if broadcast != batch:
            raise ValueError(
                f"{name}: gamma must be broadcastable to t.shape[:-1] = {batch}, got shape {tuple(gamma.shape)}"
            )
        inside = ((gamma > 0) & (gamma <= 1)).all()
        if not bool(inside):
            bad = gamma[~((gamma > 0) & (gamma <= 1))].flatten()[0].item()
            raise ValueError(f"{name}: gamma must lie in (0, 1], got a value {bad}")
        return gamma.expand(batch)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"{name}: gamma must be None, a float or a tensor, got {type(gamma).__name__}")
    gamma = float(gamma)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"{name}: gamma must lie in (0, 1], got {gamma}")
    return gamma


def check_kernel_args(lam: object, b: object, length: object) -> int:
    """Validate ``ssm_kernel`` arguments; return ``length``."""
    name = "ssm_kernel"
    check_tensor(name, "lam", lam, kind="complex", min_ndim=1, nonempty={-1: "mode"})
    check_tensor(name, "b", b, kind="complex", min_ndim=1, allow_empty=True)
    check_shape(name, "b", b, lam.shape)
    check_same_device(name, lam=lam, b=b)
    return check_int(name, "length", length, minimum=0)


def check_solve_args(lam: object, t: object) -> None:
    """Validate ``vandermonde_solve`` arguments, including distinct nodes in every system."""
    name = "vandermonde_solve"
    check_tensor(name, "lam", lam, kind="complex", min_ndim=1, nonempty={-1: "node"})
    check_tensor(name, "t", t, kind="float", min_ndim=1, allow_empty=True)
    check_shape(name, "t", t, lam.shape)
    check_same_device(name, lam=lam, t=t)
    if lam.device.type == "meta":  # no values to compare
        return
    pairs = torch.view_as_real(lam.to(torch.complex128))
    by_imag = torch.sort(pairs[..., 1], dim=-1, stable=True).indices
    re = torch.gather(pairs[..., 0], -1, by_imag)
    im = torch.gather(pairs[..., 1], -1, by_imag)
    re, by_real = torch.sort(re, dim=-1, stable=True)
    im = torch.gather(im, -1, by_real)
    repeated = (re[..., 1:] == re[..., :-1]) & (im[..., 1:] == im[..., :-1])
    if bool(repeated.any()):
        where = tuple(int(i) for i in repeated.nonzero()[0])
        node = complex(re[where].item(), im[where].item())
        raise ValueError(f"{name}: lam must hold distinct nodes in every system, node {node} repeats")


def etsc_mode_count(n: int, real: bool) -> int:
    """Number of modes N the conversion returns: ``ceil(n / 2)`` when folded, else ``n``."""
    return (n + 1) // 2 if real else n
