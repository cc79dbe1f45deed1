"""Torch oracles for the ETSC conversion, the Vandermonde evaluation and the Vandermonde solve.

Each oracle has the public function's signature without ``backend`` and computes in the precision of its
inputs: float64 / complex128 inputs give a float64 oracle, everything else runs in float32 / complex64.
The input checks live in ``contract.py`` (``check_*_args``), which the Triton paths call too, so both refuse bad
input with the same message.
"""

from __future__ import annotations

import math

import torch

from ..complex import vandermonde_kernel64
from .contract import check_kernel_args, check_solve_args, check_toeplitz_args, etsc_mode_count


def _complex_dtype_for(*tensors: torch.Tensor) -> torch.dtype:
    double = any(x.dtype in (torch.float64, torch.complex128) for x in tensors)
    return torch.complex128 if double else torch.complex64


def leja_order(lam: torch.Tensor) -> torch.Tensor:
    """Leja ordering of every system's nodes: `[..., N]` int64 permutation (computed in float64).

    Start with the node of largest modulus, then repeatedly take the node maximising the product of distances
    to the nodes already taken. Bjorck-Pereyra in natural order is unstable for nodes on the unit circle (the
    divided differences of neighbouring nodes explode: float64 fails at N = 100); in Leja order it is
    backward stable there. Greedy, O(N^2) per system, vectorised over the batch.
    """
    x = lam.detach().to(torch.complex128)
    size = x.shape[-1]
    flat = x.reshape(-1, size)
    systems = torch.arange(flat.shape[0], device=x.device)
    order = torch.empty(flat.shape, dtype=torch.int64, device=x.device)
    taken = torch.zeros(flat.shape, dtype=torch.bool, device=x.device)
    log_distance = torch.zeros(flat.shape, dtype=torch.float64, device=x.device)
    pick = flat.abs().argmax(-1)
    for k in range(size):
        if k > 0:
            log_distance += torch.log((flat - flat[systems, order[:, k - 1]][:, None]).abs())
            pick = log_distance.masked_fill(taken, -float("inf")).argmax(-1)
        order[:, k] = pick
        taken[systems, pick] = True
    return order.reshape(x.shape)


def _etsc_weights(t: torch.Tensor, real: bool) -> torch.Tensor:
    """The ETSC weights ``b_k`` (k = 1..N) of real `[..., n]` kernels by the definition, in t's precision."""
    cdtype = _complex_dtype_for(t)
    n = t.shape[-1]
    modes = etsc_mode_count(n, real)
    extended = torch.cat([t, -t.sum(-1, keepdim=True)], dim=-1)
    b = torch.fft.ifft(extended.to(cdtype), dim=-1)[..., 1 : modes + 1]
    if real:
        k = torch.arange(1, modes + 1, device=t.device)
        b = b * torch.where(2 * k == n + 1, 1.0, 2.0).to(t.dtype)
    return b


def node_rounding_correction(b, lam_exact, lam_rounded, n, real):
    """First-order correction ``c`` of the weights for the rounding of the nodes (op README), in complex128.

    With ``lam~_k = lam_k (1 + eps_k)``, ``lam~_k^j ~= lam_k^j (1 + j eps_k)``: the realised kernel of
    ``(lam~, b)`` is off by ``j gamma^j r_j``, ``r_j = Re sum_k b_k eps_k w^(k j)``, ``w = exp(-2 pi i / m)``.
    ``c`` is the ETSC solve of ``e_j = -j r_j``, so ``(lam~, b + c)`` realises the kernel up to ``O((j eps)^2)``.

    Args:
        b: `[..., N]` weights, modes k = 1..N (conjugate-folded when ``real``).
        lam_exact: `[..., N]` complex128 nodes ``gamma exp(-2 pi i k / m)``.
        lam_rounded: `[..., N]` the same nodes as returned (complex64).
        n: the kernel length (m = n + 1).
        real: whether the modes are conjugate-folded.

    Returns:
        c `[..., N]` complex128.
    """
    eps = (lam_rounded.to(torch.complex128) - lam_exact) / lam_exact
    a = torch.zeros(*b.shape[:-1], n + 1, dtype=torch.complex128, device=b.device)
    a[..., 1 : b.shape[-1] + 1] = b.to(torch.complex128) * eps
    r = torch.fft.fft(a, dim=-1).real[..., :n]  # r_j = Re sum_k a_k exp(-2 pi i k j / m)
    lags = torch.arange(n, device=b.device, dtype=torch.float64)
    return _etsc_weights(-lags * r, real)


def toeplitz_to_ssm(
    t: torch.Tensor,
    gamma: float | torch.Tensor | None = None,
    *,
    real: bool = True,
    compensate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ETSC conversion by the definition (op README): full DFT of the zero-sum extended vector, taken in
    float64 and rounded once (a float32 DFT of the extended vector loses ~eps * |sum t| in every mode).

    Args:
        t: `[..., n]` real kernel coefficients, lag last.
        gamma: None, float or tensor broadcastable to `t.shape[:-1]`, in (0, 1].
        real: fold conjugate modes (N = ceil(n/2)) when True, else return all n modes.
        compensate: when the nodes are rounded to complex64, add to b the first-order correction for that
            rounding (computed in float64, see :func:`node_rounding_correction`), so that the realised kernel
            stays accurate for large n. A no-op for float64 t (complex128 nodes are not rounded).

    Returns:
        `(lam, b)` complex `[..., N]`, complex128 for float64 t, complex64 otherwise.
    """
    gamma = check_toeplitz_args(t, gamma, real, compensate)
    cdtype = _complex_dtype_for(t)
    n = t.shape[-1]
    m = n + 1
    modes = etsc_mode_count(n, real)
    if t.numel() == 0:  # an empty batch (the FFT library refuses it); + 0 * t.sum() keeps t in the graph
        empty = torch.zeros(*t.shape[:-1], modes, dtype=cdtype, device=t.device) + 0 * t.sum()
        return empty, empty.clone()
    b = _etsc_weights(t.to(torch.float64), real)  # the DFT in float64, rounded once at the end
    k = torch.arange(1, modes + 1, device=t.device)
    reduced = torch.where(2 * k <= m, k, k - m).to(torch.float64)
    angle = -2.0 * math.pi * reduced / m
    unit = torch.polar(torch.ones_like(angle), angle)
    if isinstance(gamma, torch.Tensor):
        lam64 = gamma.to(torch.float64)[..., None] * unit
    else:
        lam64 = (gamma * unit).expand(*t.shape[:-1], modes)
    lam = lam64.to(cdtype)
    if compensate and cdtype != torch.complex128:
        b = b + node_rounding_correction(b, lam64, lam, n, real)
    return lam.contiguous(), b.to(cdtype).contiguous()


def ssm_kernel(lam: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """Materialised Vandermonde evaluation ``K_j = Re sum_s b_s lam_s^j`` (memory O(N * length) per channel).

    Args:
        lam: `[..., N]` complex nodes.
        b: `[..., N]` complex weights.
        length: number of lags L >= 0.

    Returns:
        K `[..., L]`, float64 for complex128 inputs, float32 otherwise.
    """
    length = check_kernel_args(lam, b, length)
    out_dtype = torch.float64 if _complex_dtype_for(lam, b) == torch.complex128 else torch.float32
    return vandermonde_kernel64(lam, b, length).to(out_dtype).contiguous()


def realised_kernel64(lam: torch.Tensor, b: torch.Tensor, length: int) -> torch.Tensor:
    """``Re sum_s b_s lam_s^j`` in float64 without the N x L matrix (j = A * block + a, two small products).

    The accuracy oracle of the tests and benchmarks for long kernels, where :func:`ssm_kernel`'s materialised
    N x L complex128 matrix would not fit: memory O(N * sqrt(L)) per row.

    Args:
        lam, b: `[..., N]` complex.
        length: number of lags L >= 0.

    Returns:
        K `[..., L]` float64.
    """
    lam = lam.to(torch.complex128)
    b = b.to(torch.complex128)
    block = max(1, math.isqrt(max(length, 1)))
    anchors = math.ceil(length / block)
    log_mag = torch.log(lam.abs()).clamp_min(-1e30)
    angle = torch.angle(lam)

    def powers(exponent):  # lam^exponent, [..., N, E]
        e = exponent.to(torch.float64)
        phase = torch.remainder(angle[..., None] * e, 2 * math.pi)
        return torch.polar(torch.exp(log_mag[..., None] * e), phase)

    device = lam.device
    coeff = b[..., :, None] * powers(torch.arange(anchors, device=device) * block)  # [..., N, A]
    inner = powers(torch.arange(block, device=device))  # [..., N, BL]
    out = torch.einsum("...sa,...sj->...aj", coeff, inner).real
    return out.reshape(*out.shape[:-2], anchors * block)[..., :length]


def vandermonde_solve(lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Bjorck-Pereyra solve of ``sum_s b_s lam_s^j = t_j`` (j < N), vectorised over the batch.

    The same recurrences as the Triton kernel (see the op README), on the nodes in Leja order
    (:func:`leja_order`; the solution is permuted back): N - 1 forward passes ``r_i -= lam_k r_{i-1}``
    (i > k), then N - 1 backward passes dividing by node differences and differencing neighbours.

    Args:
        lam: `[..., N]` complex distinct nodes.
        t: `[..., N]` real or complex right-hand side.

    Returns:
        b `[..., N]`, complex128 when either input is double precision, complex64 otherwise.
    """
    check_solve_args(lam, t)
    cdtype = _complex_dtype_for(lam, t)
    order = leja_order(lam)
    x = torch.gather(lam.to(cdtype), -1, order)
    r = t.to(cdtype).clone()
    n = r.shape[-1] - 1
    for k in range(n):
        r[..., k + 1 :] = r[..., k + 1 :] - x[..., k : k + 1] * r[..., k:-1]
    for k in range(n - 1, -1, -1):
        r[..., k + 1 :] = r[..., k + 1 :] / (x[..., k + 1 :] - x[..., : n - k])
        r[..., k:-1] = r[..., k:-1] - r[..., k + 1 :]
    return torch.empty_like(r).scatter_(-1, order, r)
