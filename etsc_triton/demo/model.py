"""A small Toeplitz neural network (TNN) language model and three exact greedy decoders.

Model: token embedding; ``n_layers`` blocks of [gated Toeplitz token mixing + GLU channel mixing], each a
pre-norm residual; final norm; linear head. The Toeplitz kernel of every block comes from a relative-position
MLP (input ``j / n``, output one coefficient per channel) times the decay ``gamma^j`` -- smooth and decaying,
like trained TNN kernels. Weights are drawn from ``TNNConfig.seed`` on the CPU, so a config gives the same
model on every device.

Decoders (same interface: ``prefill(prompt) -> logits`` of the last prompt token, ``step(token) -> logits``):

* :class:`FFTDecoder` -- the original: every token recomputes the whole prefix with FFT convolutions;
  O(L log L) per token.
* :class:`CacheDecoder` -- the TNN cache: keeps every block's Toeplitz input and takes the dot product of the
  kernel with the whole prefix; O(L) per token, O(L) memory.
* :class:`SSMDecoder` -- ETSC: every block's length-n coefficients are converted
  (:func:`etsc_triton.toeplitz_to_ssm`), the prompt is served by FFT outputs + the folded-DFT state, and each
  token is one fused :func:`etsc_triton.ssm_step` per block; O(1) per token. On CUDA one decode step is
  captured in a CUDA graph and replayed.

Up to sequence length n the three compute the same kernel ``gamma^j t_j``, so their greedy tokens agree.
Beyond n the first two extrapolate the position MLP while the SSM realises the wrapped, damped kernel of
:mod:`etsc_triton.nn.toeplitz`; only speed is compared there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.memory import MemoryLayer
from ..nn.toeplitz import ToeplitzSSM, causal_fft_conv

DECODERS = ("fft", "tnn_cache", "ssm")
MIXERS = ("glu", "memory")
RPE_INPUTS = ("linear", "log_linear")


@dataclass(frozen=True)
class TNNConfig:
    """Sizes of :class:`TNNLanguageModel`.

    Attributes:
        vocab_size: tokens.
        d_model: channels D.
        n_layers: blocks.
        n: the training length: Toeplitz coefficients per channel (the SSM has ``ceil(n/2)`` modes).
        rpe_hidden: width of the relative-position MLP.
        decay: gamma in (0, 1], the kernel decay ``gamma^j``.
        glu_hidden: hidden width of the GLU channel mixing (default ``2 * d_model``).
        seed: the seed of the deterministic initialisation.
        mixer: channel mixing: ``"glu"`` (linear layers) or ``"memory"`` (the GLU's two linear layers replaced by
            MemoryFormer :class:`~etsc_triton.nn.MemoryLayer` s; ``d_model`` and the hidden width must divide by
            ``code_length``).
        code_length: bits per hash of the memory layers (tables of ``2^code_length`` rows); unused by ``"glu"``.
        rpe_inputs: what the position MLP sees of lag j: ``"linear"``, ``j / n`` alone; ``"log_linear"``, also
            ``log(1 + j) / log(1 + n)``. With ``j / n`` alone neighbouring lags differ by ``1 / n`` at the input,
            so a trained kernel cannot tell the previous byte from the one before (a smooth average of the
            past); the log input spreads the first lags apart and lets the kernel be sharp where bytes need it.
    """

    vocab_size: int = 256
    d_model: int = 512
    n_layers: int = 6
    n: int = 2048
    rpe_hidden: int = 64
    decay: float = 0.99
    glu_hidden: int | None = None
    seed: int = 0
    mixer: str = "glu"
    code_length: int = 4
    rpe_inputs: str = "linear"

    def __post_init__(self) -> None:
        # a config read from a file must fail here, naming the field, not deep inside a layer's constructor
        for name in ("vocab_size", "d_model", "n_layers", "n", "rpe_hidden", "code_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TNNConfig: {name} must be a positive int, got {value!r}")
        if self.glu_hidden is not None and (isinstance(self.glu_hidden, bool) or not isinstance(self.glu_hidden, int)
                                            or self.glu_hidden < 1):
            raise ValueError(f"TNNConfig: glu_hidden must be None or a positive int, got {self.glu_hidden!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"TNNConfig: seed must be an int, got {self.seed!r}")
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not 0 < self.decay <= 1:
            raise ValueError(f"TNNConfig: decay must be a number in (0, 1], got {self.decay!r}")
        if self.mixer not in MIXERS:
            raise ValueError(f"TNNConfig: mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.rpe_inputs not in RPE_INPUTS:
            raise ValueError(f"TNNConfig: rpe_inputs must be one of {RPE_INPUTS}, got {self.rpe_inputs!r}")


class RelativePositionMLP(nn.Module):
    """Relative position ``j`` -> D Toeplitz coefficients: an MLP on ``j / n`` (and ``log(1 + j) / log(1 + n)``
    with ``inputs="log_linear"``), smooth in j."""

    def __init__(self, channels: int, hidden: int, n: int, decay: float, inputs: str = "linear"):
        super().__init__()
        self.n = n
        self.inputs = inputs
        features = 2 if inputs == "log_linear" else 1
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, channels)
        )
        # Scale so the decayed kernel has an L2 norm of order one whatever the decay: mixing then matters and
        # the random model's greedy output stays varied instead of collapsing onto one token.
        nn.init.normal_(self.net[-1].weight, std=30.0 * (1.0 - decay**2) ** 0.5 / hidden**0.5)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, length: int) -> torch.Tensor:
        """Coefficients ``t [D, length]`` at lags ``0 .. length-1`` (no decay)."""
        weight = self.net[0].weight
        lags = torch.arange(length, device=weight.device, dtype=weight.dtype)
        positions = (lags / self.n)[:, None]
        if self.inputs == "log_linear":
            positions = torch.cat([positions, (torch.log1p(lags) / math.log1p(self.n))[:, None]], dim=1)
        return self.net(positions).transpose(0, 1).contiguous()


class TNNBlock(nn.Module):
    """``x + out(silu(gate) * T(v))`` then ``x + GLU(norm(x))``; T is the causal Toeplitz mixing."""

    def __init__(self, config: TNNConfig):
        super().__init__()
        d = config.d_model
        hidden = config.glu_hidden or 2 * d
        self.decay = config.decay
        self.n = config.n
        self.mix_norm = nn.RMSNorm(d, eps=1e-6)
        self.mix_in = nn.Linear(d, 2 * d)
        self.mix_out = nn.Linear(d, d)
        self.rpe = RelativePositionMLP(d, config.rpe_hidden, config.n, config.decay, config.rpe_inputs)
        self.glu_norm = nn.RMSNorm(d, eps=1e-6)
        self.glu_in: nn.Module
        self.glu_out: nn.Module
        if config.mixer == "memory":
            self.glu_in = MemoryLayer(d, 2 * hidden, code_length=config.code_length)
            self.glu_out = MemoryLayer(hidden, d, code_length=config.code_length)
        else:
            self.glu_in = nn.Linear(d, 2 * hidden)
            self.glu_out = nn.Linear(hidden, d)

    def kernel(self, length: int) -> torch.Tensor:
        """The mixing kernel ``gamma^j * rpe(j / n)``, ``[D, length]`` (extrapolates the MLP beyond n)."""
        lags = torch.arange(length, device=self.mix_in.weight.device, dtype=torch.float32)
        return self.rpe(length) * self.decay**lags

    def coefficients(self, length: int | None = None, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The Toeplitz coefficients ``t [D, length]`` (decay excluded; default length n) that the SSM decoder
        converts; beyond n they are the position MLP's own extrapolation.

        ``dtype=torch.float64`` evaluates the position MLP with its weights in float64: the function the float32
        taps round. An order reduction fits that: the float32 MLP's rounding noise (up to ~1e-4 of ``max|K|`` in
        some channels of a 64-wide MLP) is no low-order kernel, so fitting it would cost rank, not accuracy.
        """
        length = self.n if length is None else length
        if dtype is None or dtype == self.rpe.net[0].weight.dtype:
            return self.rpe(length)
        params = {name: value.to(dtype) for name, value in self.rpe.named_parameters()}
        return torch.func.functional_call(self.rpe, params, (length,))

    def mixing_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gate, v)`` for x ``[..., D]``: the Toeplitz mixing runs on v."""
        gate, v = self.mix_in(self.mix_norm(x)).chunk(2, dim=-1)
        return F.silu(gate), v.contiguous()

    def finish(self, x: torch.Tensor, gate: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """The rest of the block, given the Toeplitz output ``mixed = T(v)``."""
        x = x + self.mix_out(gate * mixed)
        a, b = self.glu_in(self.glu_norm(x)).chunk(2, dim=-1)
        return x + self.glu_out(F.silu(a) * b)


class TNNLanguageModel(nn.Module):
    """A small TNN language model with deterministic random weights (``config.seed``).

    Example:
        >>> import torch
        >>> from etsc_triton.demo.model import TNNConfig, TNNLanguageModel, generate
        >>> model = TNNLanguageModel(TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8))
        >>> prompt = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(0))
        >>> tokens = [generate(model, prompt, 20, decoder=d) for d in ("fft", "tnn_cache", "ssm")]
        >>> bool((tokens[0] == tokens[1]).all() and (tokens[0] == tokens[2]).all())
        True
    """

    def __init__(self, config: TNNConfig):
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.embed = nn.Embedding(config.vocab_size, config.d_model)
            self.blocks = nn.ModuleList(TNNBlock(config) for _ in range(config.n_layers))
            self.norm = nn.RMSNorm(config.d_model, eps=1e-6)
            self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.eval()
        self.requires_grad_(False)

    def kernels(self, length: int) -> list[torch.Tensor]:
        """Every block's mixing kernel ``[D, length]``."""
        return [block.kernel(length) for block in self.blocks]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))

    def forward(self, tokens: torch.Tensor, kernels: list[torch.Tensor] | None = None) -> torch.Tensor:
        """tokens ``[B, L]`` -> logits ``[B, L, V]`` through FFT convolutions (the training path)."""
        length = tokens.shape[1]
        kernels = kernels or self.kernels(length)
        x = self.embed(tokens)
        for block, kernel in zip(self.blocks, kernels, strict=True):
            gate, v = block.mixing_input(x)
            x = block.finish(x, gate, causal_fft_conv(v, kernel[:, :length]))
        return self.logits(x)


class FFTDecoder:
    """The original decode: each token reruns the whole prefix through the FFT path."""

    name = "fft"

    def __init__(self, model: TNNLanguageModel, max_len: int):
        self.model = model
        self.max_len = max_len
        self.kernels = model.kernels(max_len)

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        self.tokens = torch.zeros(prompt.shape[0], self.max_len, dtype=torch.long, device=prompt.device)
        self.tokens[:, : prompt.shape[1]] = prompt
        self.length = prompt.shape[1]
        return self.model(prompt, self.kernels)[:, -1]

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.tokens[:, self.length] = token
        self.length += 1
        return self.model(self.tokens[:, : self.length], self.kernels)[:, -1]

    def state_bytes(self) -> int:
        return self.tokens[:, : self.length].numel() * self.tokens.element_size()


class CacheDecoder:
    """The TNN cache: every block's Toeplitz input is kept; a token costs a dot product with the prefix."""

    name = "tnn_cache"

    def __init__(self, model: TNNLanguageModel, max_len: int):
        self.model = model
        self.max_len = max_len
        self.kernels = model.kernels(max_len)
        self.reversed_kernels = [k.flip(-1).contiguous() for k in self.kernels]

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        batch, length = prompt.shape
        d = self.model.config.d_model
        self.cache = [torch.zeros(batch, self.max_len, d, device=prompt.device) for _ in self.model.blocks]
        x = self.model.embed(prompt)
        for block, kernel, cache in zip(self.model.blocks, self.kernels, self.cache, strict=True):
            gate, v = block.mixing_input(x)
            cache[:, :length] = v
            x = block.finish(x, gate, causal_fft_conv(v, kernel[:, :length]))
        self.length = length
        return self.model.logits(x[:, -1])

    def step(self, token: torch.Tensor) -> torch.Tensor:
        pos = self.length
        x = self.model.embed(token)
        for block, rev, cache in zip(self.model.blocks, self.reversed_kernels, self.cache, strict=True):
            gate, v = block.mixing_input(x)
            cache[:, pos] = v
            window = rev[:, self.max_len - 1 - pos :]  # window[:, i] = K[pos - i]
            mixed = torch.einsum("bid,di->bd", cache[:, : pos + 1], window)
            x = block.finish(x, gate, mixed)
        self.length += 1
        return self.model.logits(x)

    def state_bytes(self) -> int:
        return sum(c[:, : self.length].numel() * c.element_size() for c in self.cache)


class SSMDecoder:
    """ETSC decode: converted blocks, prefill by FFT outputs + folded-DFT state, one fused step per block.

    Args:
        model: the TNN.
        rank: optional mode truncation per channel (``ToeplitzSSM.convert(rank=...)``); ``None`` is exact.
        method: ``"truncate"`` (ETSC modes) or ``"reduce"`` (order reduction, ``ToeplitzSSM.convert``).
        tol: ``method="reduce"``: the relative kernel tolerance that picks the rank.
        backend: kernel backend (``"auto"``: Triton on CUDA, the Torch reference on CPU).
        cuda_graph: capture one decode step in a CUDA graph and replay it (CUDA only; default: on CUDA).
        layers: already converted :class:`ToeplitzSSM` s, one per block (then ``rank`` and ``backend`` are
            unused): how a caller decodes with SSMs it converted its own way.
    """

    name = "ssm"

    def __init__(
        self,
        model: TNNLanguageModel,
        *,
        rank: int | None = None,
        method: str = "truncate",
        tol: float | None = None,
        backend: str = "auto",
        cuda_graph: bool | None = None,
        layers: list[ToeplitzSSM] | None = None,
    ):
        self.model = model
        if layers is not None and len(layers) != len(model.blocks):
            raise ValueError(f"SSMDecoder: layers must hold one layer per block ({len(model.blocks)}), "
                             f"got {len(layers)}")
        self.layers: list[ToeplitzSSM] = []
        if layers is not None:
            self.layers = list(layers)
        else:
            for block in model.blocks:
                # a reduction fits the position MLP's float64 function, not the float32 taps' rounding noise
                dtype = torch.float64 if method == "reduce" else None
                layer = ToeplitzSSM(block.coefficients(dtype=dtype), block.decay, tail="ssm", backend=backend)
                layer.convert(rank=rank, method=method, tol=tol)
                self.layers.append(layer)
        device = model.embed.weight.device
        self.cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.states: list[torch.Tensor] = []

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        x = self.model.embed(prompt)
        states = []
        for block, layer in zip(self.model.blocks, self.layers, strict=True):
            gate, v = block.mixing_input(x)
            mixed, state = layer.prefill(v)
            states.append(state)
            x = block.finish(x, gate, mixed)
        if self.graph is not None and self.states and self.states[0].shape == states[0].shape:
            for persistent, state in zip(self.states, states, strict=True):
                persistent.copy_(state)
        else:
            self.states = states
            self.graph = None
        self.length = prompt.shape[1]
        return self.model.logits(x[:, -1])

    def _eager_step(self, token: torch.Tensor) -> torch.Tensor:
        x = self.model.embed(token)
        for block, layer, state in zip(self.model.blocks, self.layers, self.states, strict=True):
            gate, v = block.mixing_input(x)
            x = block.finish(x, gate, layer.step(v, state))
        return self.model.logits(x)

    def _capture(self, token: torch.Tensor) -> None:
        saved = [s.clone() for s in self.states]
        self.static_token = token.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._eager_step(self.static_token)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = self._eager_step(self.static_token)
        for state, copy in zip(self.states, saved, strict=True):
            state.copy_(copy)

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.length += 1
        if not self.cuda_graph:
            return self._eager_step(token)
        if self.graph is None:
            self._capture(token)
        self.static_token.copy_(token)
        self.graph.replay()
        return self.static_logits

    def state_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)


def make_decoder(
    model: TNNLanguageModel, decoder: str, max_len: int, **kwargs: Any
) -> FFTDecoder | CacheDecoder | SSMDecoder:
    """Build the named decoder (``"fft"``, ``"tnn_cache"``, ``"ssm"``); ``kwargs`` go to
    :class:`SSMDecoder`."""
    if decoder == "fft":
        return FFTDecoder(model, max_len)
    if decoder == "tnn_cache":
        return CacheDecoder(model, max_len)
    if decoder == "ssm":
        return SSMDecoder(model, **kwargs)
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")


@torch.no_grad()
def generate(
    model: TNNLanguageModel,
    prompt: torch.Tensor,
    steps: int,
    *,
    decoder: str = "ssm",
    return_logits: bool = False,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding: ``steps`` new tokens after ``prompt [B, P]``.

    Args:
        model: the TNN.
        prompt: token ids ``[B, P]`` (int64), ``P >= 1``.
        steps: tokens to generate.
        decoder: ``"fft"``, ``"tnn_cache"`` or ``"ssm"``.
        return_logits: also return the logits that chose each token, ``[B, steps, V]``.
        kwargs: options of :class:`SSMDecoder` (``rank``, ``backend``, ``cuda_graph``).

    Returns:
        tokens ``[B, steps]`` (and the logits).
    """
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"generate: prompt must be [B, P] with P >= 1, got shape {tuple(prompt.shape)}")
    if steps < 1:
        raise ValueError(f"generate: steps must be >= 1, got {steps}")
    runner = make_decoder(model, decoder, prompt.shape[1] + steps, **kwargs)
    logits = runner.prefill(prompt)
    tokens, all_logits = [], []
    for i in range(steps):
        if return_logits:
            all_logits.append(logits.clone())
        token = logits.argmax(-1)
        tokens.append(token)
        if i + 1 < steps:
            logits = runner.step(token)
    out = torch.stack(tokens, dim=1)
    return (out, torch.stack(all_logits, dim=1)) if return_logits else out
