"""The vocabulary every stage of the reduction speaks, on float64 kernels batched over ``C`` systems: the
:class:`Poles` record, the modal kernel and its error norms, least-squares residues, the Hankel size. It imports
no other file of this folder; the stages (``fit.py``, ``rounding.py``, ``certificate.py``) import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..complex import polar_kernel64, polar_powers

RIDGE = 1e-10  # Tikhonov weight on the normalised columns: keeps near-collinear residues bounded
RESOLUTION = 2.0**-22  # max error / max|K| below which a fit is as good as complex64 modes resolve
NORMS = ("l1", "l2", "max")


@dataclass
class Poles:
    """Poles of ``C`` real systems in ``r`` folded slots (the convention ``K_j = Re sum_s b_s lam_s^j``).

    Attributes:
        lam: complex128 `[C, r]`: a conjugate pair as its pole with ``Im > 0``, a real pole with ``Im = 0``, an
            unused slot 0.
        is_real: bool `[C, r]`: the slot holds one real pole (its residue is real too).
        used: bool `[C, r]`: the slot holds a pole (unused slots keep ``lam = b = 0``).
    """

    lam: torch.Tensor
    is_real: torch.Tensor
    used: torch.Tensor

    @classmethod
    def unused(cls, systems: int, slots: int, device: torch.device) -> Poles:
        """``systems x slots`` unused slots."""
        lam = torch.zeros(systems, slots, dtype=torch.complex128, device=device)
        flags = torch.zeros(systems, slots, dtype=torch.bool, device=device)
        return cls(lam, flags, flags.clone())

    @property
    def slots(self) -> int:
        return self.lam.shape[1]

    @property
    def is_complex(self) -> torch.Tensor:
        """bool `[C, r]`: the slot holds a conjugate pair (real dimension 2)."""
        return self.used & ~self.is_real

    def rows(self, index: torch.Tensor) -> Poles:
        """The systems ``index`` (a copy)."""
        return Poles(self.lam[index], self.is_real[index], self.used[index])

    def where(self, pick: torch.Tensor, other: Poles) -> Poles:
        """Per system, ``other`` where ``pick [C]`` holds, else these poles."""
        p = pick[:, None]
        return Poles(torch.where(p, other.lam, self.lam), torch.where(p, other.is_real, self.is_real),
                     torch.where(p, other.used, self.used))

    def put(self, index: torch.Tensor, other: Poles) -> None:
        """Overwrite the systems ``index`` with ``other`` (in place)."""
        self.lam[index], self.is_real[index], self.used[index] = other.lam, other.is_real, other.used

    def without(self, slot: torch.Tensor) -> Poles:
        """The slot ``slot [C]`` removed from each system: `[C, r - 1]`."""
        kept = torch.ones_like(self.used)
        kept[torch.arange(kept.shape[0], device=kept.device), slot] = False
        systems = kept.shape[0]
        return Poles(*(x[kept].reshape(systems, -1) for x in (self.lam, self.is_real, self.used)))


def hankel_size(length: int) -> int:
    """``p`` of the square ``p x p`` Hankel matrix ``H_ij = K_(i+j)`` that lags ``0 .. length-1`` fill."""
    return (length + 1) // 2


def stabilise(lam: torch.Tensor) -> torch.Tensor:
    """Poles outside the unit disc projected onto the circle (the others unchanged)."""
    radius = lam.abs()
    return torch.where(radius > 1, lam / radius.clamp_min(1e-300), lam)


def norm(error: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``"l1"``, ``"l2"`` (squared) or ``"max"`` norm of errors `[C, L]` over the lags: `[C]`."""
    if kind == "l1":
        return error.abs().sum(-1)
    if kind == "max":
        return error.abs().amax(-1)
    return error.square().sum(-1)


def error_norm(kernel: torch.Tensor, lam: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """``norm(K - K^r)`` `[C]` of modes ``(lam, b)`` `[C, r]` (complex64 or complex128; the modal kernel in float64
    by :func:`etsc_triton.ops.complex.polar_kernel64`) against float64 kernels `[C, L]`."""
    return norm(kernel - polar_kernel64(lam, b, kernel.shape[1]), kind)


def max_error(kernel: torch.Tensor, lam: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 ``max_j |K_j - K^r_j|`` `[C]` (the certified quantity)."""
    return error_norm(kernel, lam, b, "max")


def basis(poles: Poles, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real columns ``Re lam^j``, ``Im lam^j`` (zero where not a free parameter) `[C, L, 2r]`, and the powers
    ``lam^j`` `[C, L, r]` they come from."""
    powers = polar_powers(poles.lam, length)
    columns = torch.cat([powers.real * poles.used[:, None, :], powers.imag * poles.is_complex[:, None, :]], dim=2)
    return columns, powers


def weighted_lstsq(columns: torch.Tensor, target: torch.Tensor, sqrt_weight: torch.Tensor | None,
                   damping: torch.Tensor | float) -> torch.Tensor:
    """``argmin ||W^1/2 (target - columns x)||^2 + damping ||D x||^2`` with D the column norms (columns of zeros
    get x = 0). columns `[C, L, m]`, target `[C, L]`, damping a float or `[C]`; returns `[C, m]`. QR of the
    column-normalised matrix, then of its small triangle stacked on the damping: no normal equations (the
    squared condition number would cost half the digits)."""
    if sqrt_weight is not None:
        columns = columns * sqrt_weight[:, :, None]
        target = target * sqrt_weight
    norms = columns.norm(dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    q, r = torch.linalg.qr(columns / norms[:, None, :])
    rhs = (q.transpose(1, 2) @ target[:, :, None])[:, :, 0]
    m = columns.shape[2]
    damping = torch.as_tensor(damping, dtype=columns.dtype, device=columns.device)
    eye = torch.eye(m, dtype=columns.dtype, device=columns.device)
    reg = torch.sqrt(damping + RIDGE**2).reshape(-1, 1, 1) * eye
    q2, r2 = torch.linalg.qr(torch.cat([r, reg.expand(columns.shape[0], m, m)], dim=1))
    rows = r.shape[1]  # min(L, m): fewer lags than columns leave a wide triangle
    solution = torch.linalg.solve_triangular(r2, q2[:, :rows].transpose(1, 2) @ rhs[:, :, None], upper=True)[:, :, 0]
    return solution / norms


def fit_residues(kernel: torch.Tensor, poles: Poles, sqrt_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Least-squares complex residues b complex128 `[C, r]` of ``poles`` for kernels `[C, L]` (optionally
    weighted by ``sqrt_weight [C, L]``); unused slots get 0."""
    columns, _ = basis(poles, kernel.shape[1])
    coef = weighted_lstsq(columns, kernel, sqrt_weight, 0.0)
    r = poles.slots
    # alpha Re(lam^j) + beta Im(lam^j) = Re((alpha - i beta) lam^j)
    return torch.complex(coef[:, :r], -coef[:, r:])
