"""Continuous batching (etsc_triton.demo.serving): every request's tokens equal serving it alone, with requests
joining and leaving mid-stream and pool rows reused."""

import pytest
import torch

from etsc_triton.demo.model import TNNConfig, TNNLanguageModel, generate
from etsc_triton.demo.serving import ContinuousBatcher, Request, random_requests

CONFIG = TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8)


@pytest.fixture(scope="module")
def model():
    return TNNLanguageModel(CONFIG)


def stream():
    """Three rows for six requests: r1 (a one-token prompt) leaves at its prefill step; r2 and r3 join while r0
    runs; r4 arrives to a full pool and waits for r2's row; r5 comes when the pool has drained; r3 is longer than
    n = 31 tokens in all, so its decode runs past the wrap."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(5, 8, 0), (1, 1, 0), (12, 3, 2), (27, 9, 2), (3, 9, 3), (9, 2, 14)]
    return [Request(rid, torch.randint(0, CONFIG.vocab_size, (length,), generator=gen), steps, arrival)
            for rid, (length, steps, arrival) in enumerate(shapes)]


def serve_and_watch(engine, requests):
    """Serve step by step; returns the running requests' ids after each step."""
    for request in requests:
        engine.submit(request)
    running = []
    while not engine.idle():
        engine.step()
        running.append(sorted(slot.request.rid for slot in engine.running))
    return running


@pytest.mark.parametrize("prefill", ["fft", "scan"])
def test_every_request_equals_serving_it_alone(model, prefill):
    requests = stream()
    engine = ContinuousBatcher(model, max_running=3, prefill=prefill)
    running = serve_and_watch(engine, requests)
    assert running[0] == [0] and running[2] == [0, 2, 3]  # r1 left at once; r2, r3 joined r0
    assert running[3] == [0, 2, 3] and 4 in running[5]  # r4 waited for a free row
    assert engine.counts["most_running"] == 3 and engine.free_rows == [0, 1, 2]
    for request in requests:
        alone = generate(model, request.prompt[None], request.max_new_tokens)[0]
        assert torch.equal(engine.finished[request.rid], alone), f"request {request.rid}"


def test_one_row_serves_one_request_at_a_time(model):
    requests = stream()[:4]
    out = ContinuousBatcher(model, max_running=1).run(requests)
    for request in requests:
        assert torch.equal(out[request.rid], generate(model, request.prompt[None], request.max_new_tokens)[0])


def test_triton_kernels_serve_the_same_tokens(model):
    """The pooled step, the packed prompt -> state and the packed scan through Triton (the interpreter on CPU)."""
    requests = [Request(0, torch.tensor([3, 1, 4, 1, 5]), 4), Request(1, torch.tensor([9, 2]), 3, arrival=1),
                Request(2, torch.tensor([6]), 2, arrival=1)]
    for prefill in ("fft", "scan"):
        out = ContinuousBatcher(model, max_running=2, prefill=prefill, backend="triton").run(requests)
        for request in requests:
            alone = generate(model, request.prompt[None], request.max_new_tokens)[0]
            assert torch.equal(out[request.rid], alone), f"{prefill}: request {request.rid}"


def test_random_stream_and_bad_requests(model):
    requests = random_requests(5, CONFIG.vocab_size, prompt_lengths=(1, 6), output_lengths=(1, 4), seed=2)
    assert all(1 <= r.prompt.numel() <= 6 and 1 <= r.max_new_tokens <= 4 for r in requests)
    assert [r.arrival for r in requests] == sorted(r.arrival for r in requests)
    engine = ContinuousBatcher(model, max_running=2)
    engine.submit(requests[0])
    with pytest.raises(ValueError, match="already in use"):
        engine.submit(requests[0])
    with pytest.raises(ValueError, match="prompt must be int64"):
        engine.submit(Request(7, torch.tensor([], dtype=torch.int64), 3))
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        engine.submit(Request(8, torch.tensor([1]), 0))
    with pytest.raises(ValueError, match="prefill must be one of"):
        ContinuousBatcher(model, prefill="dense")
    with pytest.raises(ValueError, match="max_running must be a positive int"):
        ContinuousBatcher(model, max_running=0)
