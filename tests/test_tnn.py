"""The TNN language model and its three greedy decoders (fft, tnn_cache, ssm)."""

import pytest
import torch
from helpers import rel_error

from etsc_triton.demo.model import DECODERS, SSMDecoder, TNNConfig, TNNLanguageModel, generate
from etsc_triton.nn.toeplitz import ToeplitzSSM

CONFIG = TNNConfig(vocab_size=32, d_model=16, n_layers=2, n=31, rpe_hidden=8, decay=0.95, seed=1)
# fp32 logits of the three decoders differ by rounding only (FFT vs dot product vs complex64 SSM): measured
# <= 5e-6 relative to ||logits|| at this size.
LOGIT_REL = 5e-5


def _prompt(batch, length, seed=0, vocab=CONFIG.vocab_size):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_deterministic_init():
    a, b = TNNLanguageModel(CONFIG), TNNLanguageModel(CONFIG)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    c = TNNLanguageModel(TNNConfig(**{**CONFIG.__dict__, "seed": 2}))
    assert not torch.equal(a.head.weight, c.head.weight)


def test_forward_shapes_and_causality():
    model = TNNLanguageModel(CONFIG)
    tokens = _prompt(2, 20)
    logits = model(tokens)
    assert logits.shape == (2, 20, CONFIG.vocab_size)
    changed = tokens.clone()
    changed[:, 12] = (changed[:, 12] + 1) % CONFIG.vocab_size
    other = model(changed)
    assert torch.allclose(logits[:, :12], other[:, :12], atol=1e-5)
    assert not torch.allclose(logits[:, 12:], other[:, 12:], atol=1e-3)


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_three_decoders_identical_up_to_n(prompt_len):
    """Greedy tokens agree for every generated length up to n (sequence length n = 31)."""
    model = TNNLanguageModel(CONFIG)
    prompt = _prompt(3, prompt_len, seed=prompt_len)
    steps = CONFIG.n - prompt_len
    results = {d: generate(model, prompt, steps, decoder=d, return_logits=True) for d in DECODERS}
    tokens, logits = results["fft"]
    assert len(set(tokens.flatten().tolist())) > 5, "the random model must not collapse onto a few tokens"
    for name in ("tnn_cache", "ssm"):
        assert torch.equal(results[name][0], tokens), name
        assert rel_error(results[name][1], logits) < LOGIT_REL, name


def test_ssm_decoder_triton_backend(device):
    model = TNNLanguageModel(CONFIG).to(device)
    prompt = _prompt(2, 4, seed=7).to(device)
    reference = generate(model, prompt, 12, decoder="fft")
    assert torch.equal(generate(model, prompt, 12, decoder="ssm", backend="triton"), reference)


def test_ssm_decoder_beyond_n_follows_the_realised_kernel():
    """Past n the SSM decoder is exact for the wrapped, damped kernel: compare with the FFT forward using
    it."""
    model = TNNLanguageModel(CONFIG)
    prompt = _prompt(2, 40, seed=3)
    tokens, logits = generate(model, prompt, 6, decoder="ssm", return_logits=True)
    sequence = torch.cat([prompt, tokens[:, :-1]], 1)
    kernels = [ToeplitzSSM(b.coefficients(), b.decay).kernel(sequence.shape[1]) for b in model.blocks]
    expected = model(sequence, kernels)[:, prompt.shape[1] - 1 :]
    assert rel_error(logits, expected) < LOGIT_REL
    plain = model(sequence)[:, prompt.shape[1] - 1 :]
    assert rel_error(plain, expected) > 1e-4, "beyond n the extrapolated MLP kernel differs"


def test_truncated_ssm_decoder_close():
    model = TNNLanguageModel(CONFIG)
    decoder = SSMDecoder(model, rank=12)
    assert all(layer.state_size == 12 for layer in decoder.layers)
    bound = max(layer.report.truncation_bound.max().item() for layer in decoder.layers)
    error = max(layer.report.kernel_error.max().item() for layer in decoder.layers)
    assert error <= bound + 1e-6


def test_generate_bad_inputs():
    model = TNNLanguageModel(CONFIG)
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, torch.zeros(3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="steps must be"):
        generate(model, _prompt(1, 3), 0)
    with pytest.raises(ValueError, match="decoder must be one of"):
        generate(model, _prompt(1, 3), 2, decoder="rnn")


@pytest.mark.gpu
def test_cuda_graph_decode_matches_eager():
    config = TNNConfig(vocab_size=64, d_model=64, n_layers=2, n=127, rpe_hidden=16, decay=0.97)
    model = TNNLanguageModel(config).cuda()
    prompt = _prompt(4, 9, vocab=64).cuda()
    graphed = generate(model, prompt, 100, decoder="ssm", cuda_graph=True)
    eager = generate(model, prompt, 100, decoder="ssm", cuda_graph=False)
    reference = generate(model, prompt, 100, decoder="fft")
    assert torch.equal(graphed, eager)
    assert torch.equal(graphed, reference)


def test_float64_coefficients_are_the_function_the_float32_taps_round():
    model = TNNLanguageModel(CONFIG)
    block = model.blocks[0]
    t32 = block.coefficients()
    t64 = block.coefficients(dtype=torch.float64)
    assert t32.dtype == torch.float32 and t64.dtype == torch.float64 and t64.shape == t32.shape
    assert block.rpe.net[0].weight.dtype == torch.float32  # the module is not converted
    # float32 rounding of a 2-layer MLP of width 8: a few ulps of its largest hidden sums
    assert rel_error(t32.double(), t64) < 1e-5
    assert not torch.equal(t32.double(), t64)


def test_reduced_ssm_decoder_matches_the_fft_model():
    model = TNNLanguageModel(CONFIG)
    prompt = _prompt(2, 4)
    fft = generate(model, prompt, 20, decoder="fft")
    reduced = SSMDecoder(model, method="reduce", tol=1e-5)
    assert all(layer.state_size < 16 for layer in reduced.layers)
    assert torch.equal(generate(model, prompt, 20, decoder="ssm", layers=reduced.layers), fft)
