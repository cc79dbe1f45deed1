"""Continuous batching of the converted TNN: many requests served at once from per-layer state pools.

Requests (a prompt, a number of tokens to generate, an arrival step) join and leave while others run. Each engine
step makes one pass through the model for two kinds of rows at once:

* the prompts of the requests admitted this step, packed back to back (``cu_seqlens``): every block's Toeplitz
  mixing gives their outputs (FFT convolution, or the packed scan) and writes each prompt's final SSM state into
  the request's row of the block's pool (:func:`etsc_triton.ssm_prefill_state` / :func:`etsc_triton.ssm_scan`
  with ``state_indices``);
* the last token of every running request: one pooled :func:`etsc_triton.ssm_step` per block updates the rows in
  place (no gather / scatter of states around the step).

The linear layers see all rows of the step as one batch. A request that has its tokens frees its row, which the
next admitted request overwrites (its prompt starts from a zero state, so the row is never cleared). Greedy tokens
equal serving each request alone (:func:`etsc_triton.demo.model.generate` with the SSM decoder).

``python -m etsc_triton.demo.serving`` times a stream of requests served this way against one request at a time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import torch

from .. import ssm_kernel, ssm_prefill_state, ssm_scan
from ..nn.toeplitz import ToeplitzSSM, causal_fft_conv
from .model import SSMDecoder, TNNBlock, TNNConfig, TNNLanguageModel, generate

PREFILLS = ("fft", "scan")


@dataclass(frozen=True)
class Request:
    """A greedy generation request.

    Attributes:
        rid: the request's key in the results.
        prompt: token ids ``[P]`` int64, ``P >= 1``.
        max_new_tokens: tokens to generate, ``>= 1``.
        arrival: the engine step from which the request may be admitted.
    """

    rid: int
    prompt: torch.Tensor
    max_new_tokens: int
    arrival: int = 0


@dataclass
class _Running:
    request: Request
    row: int
    tokens: list[int] = field(default_factory=list)


class ContinuousBatcher:
    """Serve a stream of requests with at most ``max_running`` at once, one state-pool row each.

    Args:
        model: the TNN (its blocks are converted like :class:`~etsc_triton.demo.model.SSMDecoder` converts them).
        max_running: rows of every block's state pool: the most requests decoded together.
        prefill: how a block serves the packed prompts: ``"fft"`` (outputs by FFT convolution per prompt, states
            by the packed folded DFT, :func:`etsc_triton.ssm_prefill_state`; the ETSC way, O(L log L)) or
            ``"scan"`` (outputs and states from one packed :func:`etsc_triton.ssm_scan` into the pool, O(L N)).
            Layers converted with ``method="reduce"`` always scan (their poles are not DFT nodes).
        backend: the kernels' backend (``"auto"``: Triton on CUDA, the Torch reference on CPU).
        layers: already converted :class:`~etsc_triton.nn.toeplitz.ToeplitzSSM` s, one per block.

    Example:
        >>> import torch
        >>> from etsc_triton.demo.model import TNNConfig, TNNLanguageModel, generate
        >>> model = TNNLanguageModel(TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8))
        >>> requests = [Request(0, torch.tensor([1, 2, 3]), 4), Request(1, torch.tensor([5]), 6, arrival=2)]
        >>> out = ContinuousBatcher(model, max_running=2).run(requests)
        >>> bool((out[1] == generate(model, torch.tensor([[5]]), 6)[0]).all())
        True
    """

    def __init__(
        self,
        model: TNNLanguageModel,
        *,
        max_running: int = 8,
        prefill: str = "fft",
        backend: str = "auto",
        layers: list[ToeplitzSSM] | None = None,
    ):
        if prefill not in PREFILLS:
            raise ValueError(f"ContinuousBatcher: prefill must be one of {PREFILLS}, got {prefill!r}")
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ValueError(f"ContinuousBatcher: max_running must be a positive int, got {max_running!r}")
        self.model = model
        self.prefill = prefill
        self.layers = list(layers) if layers is not None else SSMDecoder(model, backend=backend).layers
        self.device = model.embed.weight.device
        self.pools = [
            torch.zeros(max_running, layer.channels, layer.state_size, dtype=torch.complex64, device=self.device)
            for layer in self.layers
        ]
        self.free_rows = list(range(max_running))
        self.waiting: deque[Request] = deque()
        self.running: list[_Running] = []
        self.finished: dict[int, torch.Tensor] = {}
        self.ids: set[int] = set()
        self.clock = 0
        self.counts = {"steps": 0, "prompt_tokens": 0, "generated_tokens": 0, "most_running": 0}

    def submit(self, request: Request) -> None:
        """Queue a request (admitted, in arrival order, once its arrival step has come and a row is free)."""
        prompt = request.prompt
        if not isinstance(prompt, torch.Tensor) or prompt.dim() != 1 or prompt.numel() == 0 \
                or prompt.dtype != torch.int64:
            raise ValueError(f"ContinuousBatcher.submit: request {request.rid}: prompt must be int64 [P] with P >= 1")
        if request.max_new_tokens < 1:
            raise ValueError(f"ContinuousBatcher.submit: request {request.rid}: max_new_tokens must be >= 1")
        if request.rid in self.ids:
            raise ValueError(f"ContinuousBatcher.submit: request id {request.rid} is already in use")
        self.ids.add(request.rid)
        later = [r for r in self.waiting if r.arrival > request.arrival]
        self.waiting = deque([r for r in self.waiting if r.arrival <= request.arrival] + [request] + later)

    def idle(self) -> bool:
        return not self.waiting and not self.running

    @torch.no_grad()
    def step(self) -> int:
        """One engine step: admit what has arrived while rows are free, prefill it (packed) and decode one token
        of every running request (pooled), in one pass through the model. Returns the tokens emitted."""
        admitted: list[_Running] = []
        while self.free_rows and self.waiting and self.waiting[0].arrival <= self.clock:
            admitted.append(_Running(self.waiting.popleft(), self.free_rows.pop(0)))
        decoding = self.running
        self.clock += 1
        if not admitted and not decoding:
            return 0
        tokens = self._forward(admitted, decoding).argmax(-1).tolist()
        self.running = []
        for slot, token in zip(admitted + decoding, tokens, strict=True):
            slot.tokens.append(token)
            if len(slot.tokens) == slot.request.max_new_tokens:
                self.finished[slot.request.rid] = torch.tensor(slot.tokens, dtype=torch.int64)
                self.free_rows.append(slot.row)
            else:
                self.running.append(slot)
        self.free_rows.sort()
        self.counts["steps"] += 1
        self.counts["prompt_tokens"] += sum(s.request.prompt.numel() for s in admitted)
        self.counts["generated_tokens"] += len(tokens)
        self.counts["most_running"] = max(self.counts["most_running"], len(tokens))
        return len(tokens)

    def run(self, requests: list[Request]) -> dict[int, torch.Tensor]:
        """Serve ``requests`` to the end; returns every request's tokens ``[max_new_tokens]`` by ``rid``."""
        for request in requests:
            self.submit(request)
        while not self.idle():
            self.step()
        return {request.rid: self.finished[request.rid] for request in requests}

    def _forward(self, admitted: list[_Running], decoding: list[_Running]) -> torch.Tensor:
        """Logits ``[len(admitted) + len(decoding), V]``: of each admitted prompt's last token, then of each
        running request's next token."""
        lengths = [slot.request.prompt.numel() for slot in admitted]
        prompt_tokens = sum(lengths)
        last = torch.tensor([slot.tokens[-1] for slot in decoding], dtype=torch.int64)
        tokens = torch.cat([*(slot.request.prompt for slot in admitted), last]).to(self.device)
        cu_seqlens = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=self.device)
        prefill_rows = torch.tensor([slot.row for slot in admitted], dtype=torch.int32, device=self.device)
        decode_rows = torch.tensor([slot.row for slot in decoding], dtype=torch.int32, device=self.device)
        x = self.model.embed(tokens)
        blocks = cast(list[TNNBlock], list(self.model.blocks))  # nn.ModuleList items are typed as Module
        for block, layer, pool in zip(blocks, self.layers, self.pools, strict=True):
            gate, v = block.mixing_input(x)
            mixed = []
            if admitted:
                mixed.append(self._prefill(layer, v[:prompt_tokens], cu_seqlens, lengths, prefill_rows, pool))
            if decoding:
                mixed.append(layer.step(v[prompt_tokens:], pool, decode_rows))
            x = block.finish(x, gate, torch.cat(mixed))
        picks = torch.cat([cu_seqlens[1:].long() - 1,
                           prompt_tokens + torch.arange(len(decoding), device=self.device)])
        return self.model.logits(x[picks])

    def _prefill(self, layer: ToeplitzSSM, v: torch.Tensor, cu_seqlens: torch.Tensor, lengths: list[int],
                 rows: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """The mixing outputs ``[T, D]`` of the packed prompts ``v [T, D]``; their final states go to ``rows`` of
        ``pool``."""
        assert layer.report is not None
        packed = v[None]
        if self.prefill == "scan" or layer.report.method == "reduce":
            fresh = torch.zeros(len(lengths), dtype=torch.bool, device=v.device)  # a reused row is not cleared
            y, _ = ssm_scan(packed, layer.lam, layer.b, pool, cu_seqlens=cu_seqlens, state_indices=rows,
                            has_initial_state=fresh, backend=layer.backend)
            return y[0]
        longest = max(lengths)
        if layer.report.rank is None:
            kernel = layer.kernel(longest, tail="ssm")
        else:
            kernel = ssm_kernel(layer.lam, layer.b, longest, backend=layer.backend)
        bounds = cu_seqlens.tolist()
        y = torch.cat([causal_fft_conv(packed[:, first:last], kernel)[0]
                       for first, last in zip(bounds[:-1], bounds[1:])])
        modes = None if layer.report.rank is None else layer.modes
        ssm_prefill_state(packed, layer.b, layer.n, layer.gamma, modes=modes, cu_seqlens=cu_seqlens, state=pool,
                          state_indices=rows, backend=layer.backend)
        return y


def random_requests(
    count: int,
    vocab_size: int,
    *,
    prompt_lengths: tuple[int, int] = (4, 64),
    output_lengths: tuple[int, int] = (4, 64),
    arrivals_per_step: float = 1.0,
    seed: int = 0,
) -> list[Request]:
    """``count`` requests with prompt and output lengths uniform in the given (inclusive) ranges, arriving as a
    Poisson stream of ``arrivals_per_step`` requests per engine step."""
    gen = torch.Generator().manual_seed(seed)
    gaps = torch.empty(count, dtype=torch.float64).exponential_(arrivals_per_step, generator=gen)
    arrivals = gaps.cumsum(0).floor().long().tolist()
    requests = []
    for rid, arrival in enumerate(arrivals):
        length = int(torch.randint(prompt_lengths[0], prompt_lengths[1] + 1, (), generator=gen))
        steps = int(torch.randint(output_lengths[0], output_lengths[1] + 1, (), generator=gen))
        prompt = torch.randint(0, vocab_size, (length,), generator=gen)
        requests.append(Request(rid, prompt, steps, arrival))
    return requests


def throughput(model: TNNLanguageModel, requests: list[Request], *, max_running: int, prefill: str = "fft",
               backend: str = "auto", repeats: int = 3, layers: list[ToeplitzSSM] | None = None,
               outputs: dict[int, torch.Tensor] | None = None) -> dict[str, float]:
    """Generated tokens per second of serving ``requests`` with ``max_running`` rows (1: one request at a time,
    each prefilled then decoded alone), the best of ``repeats`` runs. The layers (``layers``, or the ETSC
    conversion) are converted once, outside the timing; ``outputs``, when given, receives every request's tokens."""
    layers = layers if layers is not None else SSMDecoder(model, backend=backend).layers
    best = float("inf")
    for _ in range(repeats):
        engine = ContinuousBatcher(model, max_running=max_running, prefill=prefill, backend=backend, layers=layers)
        start = time.perf_counter()
        served = engine.run(requests)
        if outputs is not None:
            outputs.update(served)
        if model.embed.weight.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    tokens = sum(r.max_new_tokens for r in requests)
    return {"max_running": max_running, "generated_tokens": tokens, "seconds": best, "tokens_per_s": tokens / best,
            "steps": engine.counts["steps"], "most_running": engine.counts["most_running"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m etsc_triton.demo.serving",
                                     description="Tokens/s of continuous batching against one request at a time.")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-running", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--n", type=int, default=255, help="Toeplitz length (the SSM has ceil(n/2) modes)")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--prompt", type=int, nargs=2, default=(8, 64), metavar=("MIN", "MAX"))
    parser.add_argument("--output", type=int, nargs=2, default=(8, 64), metavar=("MIN", "MAX"))
    parser.add_argument("--arrivals-per-step", type=float, default=2.0)
    parser.add_argument("--prefill", choices=PREFILLS, default="fft")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: a shared, loaded machine stalls on more, ~40x measured)")
    parser.add_argument("--check", type=int, default=0,
                        help="also compare this many requests' tokens with generate() of each alone")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TNNConfig(vocab_size=args.vocab, d_model=args.d_model, n_layers=args.layers, n=args.n)
    model = TNNLanguageModel(config).to(args.device)
    requests = random_requests(args.requests, config.vocab_size, prompt_lengths=tuple(args.prompt),
                               output_lengths=tuple(args.output), arrivals_per_step=args.arrivals_per_step)
    requests = [Request(r.rid, r.prompt.to(args.device), r.max_new_tokens, r.arrival) for r in requests]
    load_before = os.getloadavg()
    served: dict[int, torch.Tensor] = {}
    batched = throughput(model, requests, max_running=args.max_running, prefill=args.prefill, repeats=args.repeats,
                         outputs=served)
    alone = throughput(model, requests, max_running=1, prefill=args.prefill, repeats=args.repeats)
    checked = [bool(torch.equal(served[r.rid], generate(model, r.prompt[None], r.max_new_tokens)[0]))
               for r in requests[: args.check]]
    result = {
        "device": args.device, "torch_threads": torch.get_num_threads(), "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "config": vars(args),
        "continuous": batched, "one_at_a_time": alone, "speedup": batched["tokens_per_s"] / alone["tokens_per_s"],
        "checked_requests": len(checked), "tokens_equal_alone": all(checked),
    }
    text = json.dumps(result, indent=1)
    if args.json:
        with open(args.json, "w") as handle:
            handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
