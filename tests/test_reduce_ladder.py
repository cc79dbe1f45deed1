"""The reduction's ladder of ranks: bounds that never grow with the rank, ``tol`` answering with the rank at which
``rank=`` first certifies it (per channel), ``max_rank``, the input modes as the last resort, and the op's own
messages for bad input."""

import math
import warnings

import pytest
import torch

import etsc_triton as et
from etsc_triton.nn.toeplitz import ToeplitzSSM
from etsc_triton.ops.reduce import naive as reduce_reference
from etsc_triton.ops.reduce import reduce_toeplitz


def _repeated_pole(channels, length, seed):
    """Cubics of the lag times ``0.99^j``: a repeated pole, which diagonal systems of growing rank approach with
    clustered poles and large cancelling residues (the hardest rounding)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(length, dtype=torch.float64) / length
    coef = torch.randn(channels, 4, generator=g, dtype=torch.float64)
    return (coef[:, :, None] * x ** torch.arange(4, dtype=torch.float64)[:, None]).sum(1) * 0.99 ** (length * x)


def _damped(channels, length, seed, modes=6):
    """Sums of damped oscillations plus a little noise: under-modelled at ranks below ``modes``."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.polar(0.9 + 0.09 * torch.rand(channels, modes, generator=g, dtype=torch.float64),
                      0.4 * torch.rand(channels, modes, generator=g, dtype=torch.float64))
    b = torch.randn(channels, modes, generator=g, dtype=torch.complex128)
    kernel = et.reference.ssm_kernel(lam, b, length)
    return kernel + 1e-7 * torch.randn(channels, length, generator=g, dtype=torch.float64)


def _assert_certified(kernel, result):
    reduced = et.reference.ssm_kernel(result.lam.to(torch.complex128), result.b.to(torch.complex128),
                                      kernel.shape[-1])
    assert ((kernel - reduced).abs().amax(-1) <= result.bound.double()).all()


KERNELS = [("repeated_pole", _repeated_pole(3, 151, 0)), ("damped", _damped(3, 97, 1))]


@pytest.mark.parametrize("name, kernel", KERNELS, ids=[k[0] for k in KERNELS])
def test_bound_never_grows_with_the_rank(name, kernel):
    results = [reduce_toeplitz(kernel, 1.0, rank) for rank in range(1, 6)]
    for result in results:
        _assert_certified(kernel, result)
    bounds = torch.stack([result.bound for result in results], 1)
    # the ladder keeps every system's best certified fit of any rank: equal or smaller, never larger
    assert (bounds[:, 1:] <= bounds[:, :-1]).all(), bounds.tolist()


@pytest.mark.parametrize("name, kernel", KERNELS, ids=[k[0] for k in KERNELS])
def test_tol_answers_with_the_rank_that_rank_certifies_first(name, kernel):
    scale = kernel.abs().amax(-1)
    tol = 3e-4
    result = reduce_toeplitz(kernel, 1.0, tol=tol)
    _assert_certified(kernel, result)
    assert (result.bound.double() <= tol * scale).all()
    ranks = result.ranks
    assert result.lam.shape[-1] == int(ranks.max())  # padded to the largest rank a channel needs
    for channel, rank in enumerate(ranks.tolist()):
        at_rank = reduce_toeplitz(kernel[channel : channel + 1], 1.0, rank).bound.double()
        assert at_rank <= tol * scale[channel]
        # tol skips the refinement where the plain fit meets it: rank= is as good or better (up to the batched
        # factorisations' rounding)
        assert at_rank <= result.bound[channel].double() * (1 + 1e-3)
        if rank > 1:
            below = reduce_toeplitz(kernel[channel : channel + 1], 1.0, rank - 1).bound.double()
            assert below > tol * scale[channel], (channel, rank)


def test_tol_falls_back_on_the_input_modes():
    # five complex128 modes, two of them nearly equal: a tolerance of 1e-10 is below every fit of fewer modes and
    # below the complex64 rounding of low-rank fits, but the input's own modes meet it
    lam = torch.tensor([[0.95 * complex(math.cos(a), math.sin(a)) for a in (0.1, 0.1001, 0.7, 1.3, 2.2)]],
                       dtype=torch.complex128).to(torch.complex64)
    b = torch.tensor([[1.0 + 0.3j, -1.0 + 0.2j, 0.5 - 0.1j, 0.2 + 0.0j, 0.1 + 0.1j]], dtype=torch.complex64)
    result = et.reduce_ssm(lam, b, tol=1e-9, length=61)
    scale = et.reference.ssm_kernel(lam.to(torch.complex128), b.to(torch.complex128), 61).abs().amax(-1)
    assert result.lam.shape[-1] <= 5 and (result.bound.double() <= 1e-9 * scale).all()
    _assert_certified(et.reference.ssm_kernel(lam.to(torch.complex128), b.to(torch.complex128), 61), result)


def test_tol_falls_back_on_the_taps_etsc_modes():
    # white-noise taps: no low-order fit meets 1e-6, the taps' own ETSC modes (ceil(15/2) = 8 folded) do
    t = torch.randn(2, 15, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for reduce in (reduce_toeplitz, reduce_reference.reduce_toeplitz):
        result = reduce(t, 0.9, tol=1e-6)
        kernel = t * 0.9 ** torch.arange(15, dtype=torch.float64)
        assert result.lam.shape[-1] <= 8 and (result.bound.double() <= 1e-6 * kernel.abs().amax(-1)).all()
        error = (kernel - et.reference.ssm_kernel(result.lam.to(torch.complex128), result.b.to(torch.complex128),
                                                  15)).abs().amax(-1)
        assert (error <= result.bound.double()).all()


def _white_taps(channels, length, seed):
    """White-noise taps: no fit of fewer modes than the taps' own ETSC modes describes them."""
    return torch.randn(channels, length, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _measured(kernel, result):
    """The float64 error of the returned modes (the quantity the bound certifies)."""
    reduced = et.reference.ssm_kernel(result.lam.to(torch.complex128), result.b.to(torch.complex128),
                                      kernel.shape[-1])
    return (kernel - reduced).abs().amax(-1)


@pytest.mark.parametrize("reduce", [reduce_toeplitz, reduce_reference.reduce_toeplitz], ids=["fast", "reference"])
def test_tol_without_max_rank_always_answers(reduce):
    # white noise over 63 lags (odd: the last ETSC mode is a real pole): only the 32 ETSC modes describe it
    t = _white_taps(2, 63, 11)
    scale = t.abs().amax(-1)
    result = reduce(t, 1.0, tol=1e-5)
    error = _measured(t, result)
    assert result.lam.shape[-1] <= 32 and (result.bound.double() <= 1e-5 * scale).all()
    # certified: above the measured error, by no more than the evaluation margin (about 1e-12 relative)
    assert (error <= result.bound.double()).all() and (result.bound.double() <= error + 1e-9 * scale).all()
    with pytest.raises(ValueError, match=r"not met by any rank up to 4 .*raise tol or max_rank"):
        reduce(t, 1.0, tol=1e-5, max_rank=4)


@pytest.mark.parametrize("reduce", [reduce_toeplitz, reduce_reference.reduce_toeplitz], ids=["fast", "reference"])
@pytest.mark.parametrize("gamma", [1.0, 0.97])
def test_tol_returns_the_etsc_modes_beyond_the_fitted_ranks(monkeypatch, reduce, gamma):
    # the fitted ladder capped at 4 ranks: the 32 ETSC modes of 63 white-noise lags lie beyond it, as 1024 lie
    # beyond 64 over 2048 lags; the exact modes come back whatever their count, still under the tolerance
    from etsc_triton.ops.reduce import pipeline

    monkeypatch.setattr(pipeline, "MAX_RANK", 4)
    monkeypatch.setattr(reduce_reference, "MAX_RANK", 4)
    t = _white_taps(3, 63, 12)
    kernel = t * gamma ** torch.arange(63, dtype=torch.float64)
    scale = kernel.abs().amax(-1)
    result = reduce(t, gamma, tol=1e-5)
    error = _measured(kernel, result)
    assert result.lam.shape[-1] == 32 and (result.ranks == 32).all()
    assert (result.lam.abs() <= 1).all() and (result.bound.double() <= 1e-5 * scale).all()
    assert (error <= result.bound.double()).all() and (result.bound.double() <= error + 1e-9 * scale).all()
    real = result.lam.imag == 0  # the real pole -gamma of the odd horizon, with a real residue
    assert int(real.sum()) == 3 and bool((result.b.imag[real] == 0).all())
    with pytest.raises(ValueError, match=r"not met by any rank up to 3 .*raise tol or max_rank"):
        reduce(t, gamma, tol=1e-5, max_rank=3)
    with pytest.raises(ValueError, match=r"exact modes rounded to complex64 included .*raise tol"):
        reduce(t, gamma, tol=1e-12)


def test_tol_returns_the_input_modes_beyond_the_fitted_ranks(monkeypatch):
    from etsc_triton.ops.reduce import pipeline

    monkeypatch.setattr(pipeline, "MAX_RANK", 2)
    g = torch.Generator().manual_seed(13)
    lam = torch.polar(0.9 + 0.09 * torch.rand(2, 12, generator=g, dtype=torch.float64),
                      3 * torch.rand(2, 12, generator=g, dtype=torch.float64))
    b = torch.randn(2, 12, generator=g, dtype=torch.complex128)
    kernel = et.reference.ssm_kernel(lam, b, 200)
    result = et.reduce_ssm(lam, b, tol=1e-6, length=200)
    error = _measured(kernel, result)
    assert result.lam.shape[-1] == 12 and (result.bound.double() <= 1e-6 * kernel.abs().amax(-1)).all()
    assert (error <= result.bound.double()).all()
    with pytest.raises(ValueError, match="max_rank"):
        et.reduce_ssm(lam, b, tol=1e-6, length=200, max_rank=2)


def test_max_rank_bounds_the_climb():
    kernel = _damped(2, 61, 2)
    with pytest.raises(ValueError, match=r"reduce_toeplitz: tol = 1e-09 is not met by any rank up to 2 .*max_rank"):
        reduce_toeplitz(kernel, 1.0, tol=1e-9, max_rank=2)
    with pytest.raises(ValueError, match="max_rank bounds the ranks tol may climb"):
        reduce_toeplitz(kernel, 1.0, 2, max_rank=3)
    with pytest.raises(ValueError, match="max_rank must be <= 64"):
        reduce_toeplitz(kernel, 1.0, tol=1e-3, max_rank=65)


def test_the_reference_climbs_the_same_way():
    kernel = KERNELS[0][1]
    results = [reduce_reference.reduce_toeplitz(kernel, 1.0, rank) for rank in range(1, 5)]
    bounds = torch.stack([result.bound for result in results], 1)
    assert (bounds[:, 1:] <= bounds[:, :-1]).all()
    result = reduce_reference.reduce_toeplitz(kernel, 1.0, tol=1e-2)
    for checked in [*results, result]:
        _assert_certified(kernel, checked)
    assert (result.bound.double() <= 1e-2 * kernel.abs().amax(-1)).all()


def _modes():
    lam = torch.tensor([[0.9 + 0.1j, 0.5 + 0.0j], [0.7 - 0.3j, 0.2 + 0.6j]], dtype=torch.complex64)
    b = torch.tensor([[1.0 + 0.5j, 0.2 + 0.0j], [0.3 + 0.1j, -0.4 + 0.2j]], dtype=torch.complex64)
    return lam, b


def _with(value, where, tensor):
    tensor = tensor.clone()
    tensor[where] = value
    return tensor


BAD = [
    (lambda lam, b: et.reduce_ssm(_with(math.nan, (1, 0), lam), b, 1, length=9),
     r"reduce_ssm: lam must be finite, got \(?nan.* at index \(1, 0\)"),
    (lambda lam, b: et.reduce_ssm(lam, _with(math.inf, (0, 1), b), 1, length=9),
     r"reduce_ssm: b must be finite, got \(?inf.* at index \(0, 1\)"),
    (lambda lam, b: reduce_toeplitz(_with(math.nan, (0, 3), lam.real), 0.9, 1),
     r"reduce_toeplitz: t must be finite, got nan at index \(0, 3\)"),
    (lambda lam, b: reduce_toeplitz(lam.real, torch.tensor([0.9, math.nan]), 1),
     r"reduce_toeplitz: gamma must lie in \(0, 1\], got nan"),
]


@pytest.mark.parametrize("call, message", BAD, ids=[m[:36] for _, m in BAD])
def test_non_finite_input_gets_the_ops_message(call, message):
    lam, b = _modes()
    if "t must be finite" in message:
        lam = torch.randn(2, 7, dtype=torch.complex64)
    with pytest.raises(ValueError, match=message):
        call(lam, b)


def test_unstable_modes_are_reduced_with_a_warning():
    lam, b = _modes()
    lam = _with(1.02 + 0.0j, (0, 1), lam)
    with pytest.warns(RuntimeWarning, match=r"reduce_ssm: lam has modes outside the unit disc \(\|lam\| = 1.02"):
        result = et.reduce_ssm(lam, b, 1, length=40)
    assert (result.lam.abs() <= 1).all()
    assert (et.reference.reduction_error(lam, b, result.lam, result.b, 40) <= result.bound.double()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        et.reduce_ssm(*_modes(), 1, length=40)  # stable input: no warning


def test_convert_reduce_needs_rank_or_tol():
    layer = ToeplitzSSM(torch.randn(3, 21), 0.9)
    with pytest.raises(ValueError, match="ToeplitzSSM.convert: method='reduce' needs rank .* or tol"):
        layer.convert(method="reduce")
    layer.convert(method="reduce", tol=1e-2)
    assert layer.channel_ranks.shape == (3,) and int(layer.channel_ranks.max()) == layer.state_size
    # the report's error is measured through the float32 kernel: within its rounding of the certified bound
    assert (layer.report.kernel_error <= layer.report.truncation_bound + 1e-6 * layer.t.abs().amax(-1)).all()


def test_balanced_truncation_krylov_path_matches_the_dense_one(monkeypatch):
    kernel = _damped(2, 97, 3)
    dense = reduce_reference.balanced_truncation(kernel, [3, 6])
    monkeypatch.setattr(reduce_reference, "DENSE_EIGH", 16)  # the block Krylov eigensolver of long horizons
    krylov = reduce_reference.balanced_truncation(kernel, [3, 6])
    for (lam_d, b_d), (lam_k, b_k) in zip(dense, krylov, strict=True):
        k_d, k_k = et.reference.ssm_kernel(lam_d, b_d, 97), et.reference.ssm_kernel(lam_k, b_k, 97)
        assert ((k_d - k_k).abs().amax(-1) <= 1e-8 * kernel.abs().amax(-1)).all()
