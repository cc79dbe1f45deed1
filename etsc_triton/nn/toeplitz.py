"""A Toeplitz (long-convolution) token-mixing layer that converts itself to a diagonal SSM for decoding.

``ToeplitzSSM`` holds per-channel coefficients ``t [D, n]`` and a decay ``gamma`` and offers three paths:

* ``forward(x)``: the full-sequence causal convolution by FFT (the training path);
* ``prefill(x) -> (y, state)``: the outputs by FFT convolution and the final SSM state by the length-(n+1) DFT
  of the folded prompt (:func:`etsc_triton.ssm_prefill_state`), no O(L * N) scan;
* ``step(x, state) -> y``: one token through :func:`etsc_triton.ssm_step` (state updated in place).

Which kernel beyond lag n? The converted SSM realises ``K_j = gamma^j * t_ext[j mod m]`` for every lag j, with
``m = n + 1`` and ``t_ext = (t_0, .., t_{n-1}, -(t_0 + .. + t_{n-1}))`` (the toeplitz op README): for j < n this is the
paper's ``gamma^j t_j``; beyond, the kernel wraps with period m, damped by ``gamma^j``. ``tail="ssm"`` (the
default) makes ``forward`` apply exactly that kernel at every lag, so ``prefill`` + ``step`` reproduce
``forward`` on sequences of any length. ``tail="zero"`` is the original TNN FFT path (lags j >= n dropped);
both agree on sequences of length <= n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..ops import realised_kernel64, ssm_kernel, ssm_prefill_state, ssm_scan, ssm_step, toeplitz_to_ssm
from ..ops.reduce import reduce_toeplitz

TAILS = ("ssm", "zero")
CONVERSIONS = ("truncate", "reduce")


def causal_fft_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``y[:, i, d] = sum_{j <= i, j < K} kernel[d, j] * x[:, i - j, d]`` by FFT (rfft / irfft).

    Args:
        x: ``[B, L, D]`` real.
        kernel: ``[D, K]`` real, lag last (only lags ``< L`` matter).

    Returns:
        y ``[B, L, D]`` in ``x.dtype``; computed in float64 for float64 inputs, else float32.
    """
    length = x.shape[1]
    kernel = kernel[:, :length]
    work = torch.float64 if torch.float64 in (x.dtype, kernel.dtype) else torch.float32
    size = 1 << max(1, (length + kernel.shape[1] - 1 - 1).bit_length())
    x_f = torch.fft.rfft(x.to(work), n=size, dim=1)
    k_f = torch.fft.rfft(kernel.to(work), n=size, dim=-1).transpose(0, 1)  # [size//2+1, D]
    return torch.fft.irfft(x_f * k_f, n=size, dim=1)[:, :length].to(x.dtype)


def toeplitz_kernel(t: torch.Tensor, gamma: torch.Tensor, length: int, *, tail: str = "ssm") -> torch.Tensor:
    """The kernel ``K [D, length]`` of a Toeplitz layer with coefficients ``t [D, n]`` and decay ``gamma
    [D]``.

    ``tail="ssm"``: ``K_j = gamma^j * t_ext[j mod (n+1)]`` (what the converted SSM realises at every lag);
    ``tail="zero"``: ``K_j = gamma^j t_j`` for ``j < n`` and 0 beyond (the original FFT path).
    """
    if tail not in TAILS:
        raise ValueError(f"toeplitz_kernel: tail must be one of {TAILS}, got {tail!r}")
    n = t.shape[-1]
    lags = torch.arange(length, device=t.device)
    decay = gamma.to(t.dtype)[:, None] ** lags.to(t.dtype)
    if tail == "zero":
        coeffs = torch.zeros(t.shape[0], length, dtype=t.dtype, device=t.device)
        coeffs[:, : min(n, length)] = t[:, :length]
    else:
        extended = torch.cat([t, -t.sum(-1, keepdim=True)], dim=-1)
        coeffs = extended[:, lags % (n + 1)]
    return decay * coeffs


@dataclass
class ConversionReport:
    """What :meth:`ToeplitzSSM.convert` measured, per channel.

    Attributes:
        rank: modes kept per channel (``None``: all ``ceil(n/2)`` folded modes).
        state_size: complex numbers of state per channel.
        truncation_bound: ``[D]`` sum of the dropped ``|b|``: bounds the kernel change at every lag.
        kernel_error: ``[D]`` measured ``max_j |K_ssm(j) - K_exact(j)|`` over one period (``j < n + 1``; later
            lags repeat it damped by ``gamma^(n+1)``), with ``K_ssm`` the kernel of the complex64 ``(lam, b)``
            and ``K_exact`` both evaluated in float64: it includes the float32 rounding of the conversion.
        method: ``"truncate"`` (DFT modes kept) or ``"reduce"`` (order reduction). For ``"reduce"``,
            ``truncation_bound`` is the certified bound of :func:`etsc_triton.reduce_ssm` on the kernel error over
            the horizon ``j < length`` and ``kernel_error`` is measured over that horizon.
    """

    rank: int | None
    state_size: int
    truncation_bound: torch.Tensor
    kernel_error: torch.Tensor
    method: str = "truncate"


class ToeplitzSSM(nn.Module):
    """Causal Toeplitz token mixing, ``y_i = sum_j K_j x_{i-j}`` per channel, convertible to a diagonal SSM.

    Args:
        t: coefficients ``[D, n]`` (lag last), real.
        gamma: decay in (0, 1]: ``None`` (1), a float or a tensor ``[D]``.
        tail: ``"ssm"`` (default) or ``"zero"``: the kernel ``forward`` applies beyond lag n (module
        docstring).
        backend: passed to the kernels (``"auto"``, ``"triton"``, ``"torch"``).

    Example:
        >>> import torch
        >>> from etsc_triton.nn.toeplitz import ToeplitzSSM
        >>> layer = ToeplitzSSM(torch.randn(8, 31) / 31, gamma=0.95)
        >>> report = layer.convert()
        >>> x = torch.randn(2, 40, 8)
        >>> y, state = layer.prefill(x[:, :39])
        >>> last = layer.step(x[:, 39], state)
        >>> bool(torch.allclose(last, layer(x)[:, 39], atol=1e-4))
        True
    """

    t: torch.Tensor
    gamma: torch.Tensor
    lam: torch.Tensor  # lam, b: None until convert(); _require_converted guards every read
    b: torch.Tensor
    modes: torch.Tensor | None  # the DFT mode numbers kept; None after method="reduce"

    def __init__(
        self,
        t: torch.Tensor,
        gamma: float | torch.Tensor | None = None,
        *,
        tail: str = "ssm",
        backend: str = "auto",
    ):
        super().__init__()
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.is_complex() or not t.is_floating_point():
            raise TypeError(f"ToeplitzSSM: t must be a real floating tensor [D, n], got {_describe(t)}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"ToeplitzSSM: t must not be empty, got shape {tuple(t.shape)}")
        if tail not in TAILS:
            raise ValueError(f"ToeplitzSSM: tail must be one of {TAILS}, got {tail!r}")
        channels = t.shape[0]
        if gamma is None:
            gamma = 1.0
        gamma_t = torch.as_tensor(gamma, dtype=t.dtype, device=t.device).detach()
        if gamma_t.dim() == 0:
            gamma_t = gamma_t.expand(channels)
        if gamma_t.shape != (channels,):
            raise ValueError(
                f"ToeplitzSSM: gamma must be a scalar or [D] = [{channels}], got {tuple(gamma_t.shape)}"
            )
        if not bool(((gamma_t > 0) & (gamma_t <= 1)).all()):
            raise ValueError("ToeplitzSSM: gamma must lie in (0, 1]")
        self.tail = tail
        self.backend = backend
        self.register_buffer("t", t.detach().clone())
        self.register_buffer("gamma", gamma_t.clone())
        self.register_buffer("lam", None)
        self.register_buffer("b", None)
        self.register_buffer("modes", None)
        self.report: ConversionReport | None = None

    @property
    def n(self) -> int:
        """The Toeplitz length (number of coefficients)."""
        return self.t.shape[-1]

    @property
    def channels(self) -> int:
        return self.t.shape[0]

    @property
    def state_size(self) -> int:
        """Modes per channel of the converted SSM (``ceil(n/2)``, or the rank after truncation)."""
        self._require_converted("state_size")
        return self.lam.shape[-1]

    @property
    def channel_ranks(self) -> torch.Tensor:
        """Modes each channel uses, int64 ``[D]``: after ``convert(method="reduce", tol=...)`` the rank that met the
        tolerance in that channel (the state is padded to the largest with unused modes, ``lam = b = 0``)."""
        self._require_converted("channel_ranks")
        return ((self.lam != 0) | (self.b != 0)).sum(-1)

    def kernel(
        self, length: int, *, tail: str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The exact kernel ``K [D, length]`` this layer's ``forward`` applies (see
        :func:`toeplitz_kernel`)."""
        t = self.t if dtype is None else self.t.to(dtype)
        return toeplitz_kernel(t, self.gamma, length, tail=tail or self.tail)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full-sequence causal convolution by FFT: x ``[B, L, D]`` -> y ``[B, L, D]`` (same dtype)."""
        self._check_x("forward", x, 3)
        return causal_fft_conv(x, self.kernel(x.shape[1]))

    def convert(
        self,
        rank: int | None = None,
        *,
        method: str = "truncate",
        tol: float | None = None,
        length: int | None = None,
    ) -> ConversionReport:
        """Convert to a diagonal SSM with :func:`etsc_triton.toeplitz_to_ssm` (conjugate-folded modes).

        Args:
            rank: ``method="truncate"``: keep, per channel, the ``rank`` DFT modes with the largest ``|b|``
                (``None``: keep all). ``method="reduce"``: the folded modes of the reduced system.
            method: ``"truncate"`` (the ETSC modes, optionally truncated) or ``"reduce"`` (order reduction of
                the taps with a certified error, :func:`etsc_triton.reduce_toeplitz`; give ``rank`` or
                ``tol``).
            tol: ``method="reduce"`` only: per channel, the smallest rank whose certified bound is
                ``<= tol * max|K|`` (:attr:`channel_ranks`; the state has the largest).
            length: ``method="reduce"`` only: the horizon the reduced kernel is fitted and certified over
                (default and at most n). Beyond it the reduced SSM follows its own poles, not the ETSC wrap.

        Returns:
            A :class:`ConversionReport` (also stored as ``self.report``); ``lam``, ``b`` (complex64 ``[D,
            N]``)
            and ``modes`` (int64 ``[D, N]``, the mode number ``k`` of every kept column) become buffers.
        """
        if method not in CONVERSIONS:
            raise ValueError(f"ToeplitzSSM.convert: method must be one of {CONVERSIONS}, got {method!r}")
        if method == "reduce":
            return self._reduce(rank, tol, length)
        if tol is not None or length is not None:
            raise ValueError("ToeplitzSSM.convert: tol and length apply to method='reduce' only")
        lam, b = toeplitz_to_ssm(self.t.float(), self.gamma.float(), backend=self.backend)
        full = lam.shape[-1]
        modes = torch.arange(1, full + 1, device=lam.device).expand(self.channels, full).contiguous()
        bound = torch.zeros(self.channels, dtype=torch.float64, device=lam.device)
        if rank is not None:
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"ToeplitzSSM.convert: rank must be a positive int or None, got {rank!r}")
        if rank is not None and rank < full:
            magnitude = b.abs().to(torch.float64)
            keep = magnitude.topk(rank, dim=-1).indices.sort(dim=-1).values
            bound = magnitude.sum(-1) - magnitude.gather(1, keep).sum(-1)
            lam, b, modes = lam.gather(1, keep), b.gather(1, keep), modes.gather(1, keep)
        period = self.n + 1
        # float64 evaluation without the N x period matrix: the materialised reference costs seconds per layer
        realised = realised_kernel64(lam, b, period)
        error = (realised - self.kernel(period, tail="ssm", dtype=torch.float64)).abs().amax(-1)
        self.lam, self.b, self.modes = lam.contiguous(), b.contiguous(), modes
        self.report = ConversionReport(
            rank=None if rank is None or rank >= full else rank,
            state_size=lam.shape[-1],
            truncation_bound=bound,
            kernel_error=error,
        )
        return self.report

    def _reduce(self, rank: int | None, tol: float | None, length: int | None) -> ConversionReport:
        """``convert(method="reduce")``: the reduced modes become ``lam``, ``b``; ``modes`` is None."""
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"ToeplitzSSM.convert: rank must be a positive int or None, got {rank!r}")
        if rank is None and tol is None:
            raise ValueError("ToeplitzSSM.convert: method='reduce' needs rank (the modes per channel) or tol (the "
                             "certified relative error that picks them)")
        lam, b, bound = reduce_toeplitz(self.t, self.gamma, rank, tol=tol, length=length, backend=self.backend)
        return self.adopt(lam, b, bound, length=length)

    def adopt(self, lam: torch.Tensor, b: torch.Tensor, bound: torch.Tensor,
              length: int | None = None) -> ConversionReport:
        """Take reduced modes computed before (a stored :func:`etsc_triton.reduce_toeplitz` of these taps), as
        ``convert(method="reduce")`` takes the ones it computes, and measure their kernel error afresh.

        Args:
            lam, b: complex64 ``[D, r]`` folded modes (unused slots zero).
            bound: ``[D]`` the certified bound stored with them; the report's ``kernel_error`` is measured here
                against these taps, so a bound that does not hold shows (``kernel_error > truncation_bound``).
            length: the horizon they were fitted over (default and at most n).
        """
        for name, value in (("lam", lam), ("b", b)):
            if not isinstance(value, torch.Tensor) or value.dtype != torch.complex64 or value.ndim != 2 \
                    or value.shape[0] != self.channels or value.shape != lam.shape:
                raise ValueError(f"ToeplitzSSM.adopt: {name} must be complex64 [{self.channels}, r] like lam, got "
                                 f"{_describe(value)}")
        if not isinstance(bound, torch.Tensor) or bound.shape != (self.channels,):
            raise ValueError(f"ToeplitzSSM.adopt: bound must be a tensor [{self.channels}], got {_describe(bound)}")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or not 1 <= length <= self.n):
            raise ValueError(f"ToeplitzSSM.adopt: length must be an int in [1, {self.n}], got {length!r}")
        horizon = self.n if length is None else length
        realised = ssm_kernel(lam, b, horizon, backend=self.backend)
        exact = self.kernel(horizon, tail="ssm", dtype=torch.float64)
        self.lam, self.b, self.modes = lam.contiguous(), b.contiguous(), None
        self.report = ConversionReport(
            rank=lam.shape[-1],
            state_size=lam.shape[-1],
            truncation_bound=bound.to(torch.float64),
            kernel_error=(realised.to(torch.float64) - exact).abs().amax(-1),
            method="reduce",
        )
        return self.report

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Serve a prompt: outputs by FFT convolution, final state by the folded DFT (no scan).

        The outputs use the kernel the converted SSM realises: the exact ``tail="ssm"`` kernel when all modes
        are kept, the truncated SSM's kernel (:func:`etsc_triton.ssm_kernel`) after ``convert(rank=...)``; so
        ``prefill`` followed by ``step`` equals running the SSM over the whole sequence. After
        ``convert(method="reduce")`` the poles are not DFT nodes: outputs and state come from
        :func:`etsc_triton.ssm_scan` (O(L * rank), rank is small).

        Args:
            x: the prompt ``[B, L, D]``.

        Returns:
            ``(y [B, L, D] in x.dtype, state complex64 [B, D, N])``.
        """
        self._require_converted("prefill")
        self._check_x("prefill", x, 3)
        if self.report.method == "reduce":  # general poles: no DFT shortcut; the scan gives y and the state
            work = x if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else x.float()
            y, state = ssm_scan(work, self.lam, self.b, backend=self.backend)
            return y.to(x.dtype), state
        length = x.shape[1]
        if self.report.rank is None:
            kernel = self.kernel(length, tail="ssm")
        else:
            kernel = ssm_kernel(self.lam, self.b, length, backend=self.backend)
        y = causal_fft_conv(x, kernel)
        modes = None if self.report.rank is None else self.modes
        state = ssm_prefill_state(x, self.b, self.n, self.gamma, modes=modes, backend=self.backend)
        return y, state.to(torch.complex64)

    def step(
        self, x: torch.Tensor, state: torch.Tensor, state_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One token: x ``[B, D]`` -> y ``[B, D]``; ``state`` complex64 ``[B_pool, D, N]`` updated in place.

        ``state_indices`` (int32 ``[B]``) maps rows of x to rows of a larger state pool (negative: padding
        row).
        """
        self._require_converted("step")
        return ssm_step(x, self.lam, self.b, state, state_indices=state_indices, backend=self.backend)

    def new_state(self, batch: int) -> torch.Tensor:
        """A zero state ``[batch, D, N]`` complex64 (decoding from an empty prompt)."""
        self._require_converted("new_state")
        return torch.zeros(
            batch, self.channels, self.state_size, dtype=torch.complex64, device=self.lam.device
        )

    def _require_converted(self, what: str) -> None:
        if self.lam is None:
            raise RuntimeError(f"ToeplitzSSM.{what}: call convert() first")

    def _check_x(self, what: str, x: torch.Tensor, ndim: int) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != ndim or x.shape[-1] != self.channels:
            raise ValueError(
                f"ToeplitzSSM.{what}: x must have {ndim} dimensions with last dim D = {self.channels}, "
                f"got {_describe(x)}"
            )

    def extra_repr(self) -> str:
        state = "unconverted" if self.lam is None else f"state_size={self.state_size}"
        return f"channels={self.channels}, n={self.n}, tail={self.tail!r}, {state}"


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
