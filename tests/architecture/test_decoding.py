"""Decoding: samplers and beam search vs Hugging Face, the static KV cache, speculative decoding."""

from __future__ import annotations

import pytest
import torch
from transformers.generation import logits_process as lp

from llmcore.architecture import decoding as D
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.core.errors import LLMCoreError


def tiny(n_kv_heads: int = 2, seed: int = 0, **kw) -> Llama:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=128,
               bos_id=None, eos_id=None, pad_id=None, init_std=0.2)
    cfg.update(kw)
    return Llama(ModelConfig(**cfg)).eval()


@pytest.fixture
def logits_ids():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 100, generator=g) * 4, torch.randint(0, 100, (5, 12), generator=g)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_equals_hf(logits_ids, t):
    x, ids = logits_ids
    assert torch.equal(D.apply_temperature(x, t), lp.TemperatureLogitsWarper(t)(ids, x))


@pytest.mark.parametrize("k", [1, 5, 50, 100, 200])
def test_top_k_equals_hf(logits_ids, k):
    x, ids = logits_ids
    assert torch.equal(D.apply_top_k(x, k), lp.TopKLogitsWarper(k)(ids, x))


@pytest.mark.parametrize("p", [0.01, 0.5, 0.9, 0.999, 1.0])
def test_top_p_equals_hf(logits_ids, p):
    x, ids = logits_ids
    assert torch.equal(D.apply_top_p(x, p), lp.TopPLogitsWarper(p)(ids, x))


@pytest.mark.parametrize("pen", [0.7, 1.3, 2.0])
def test_repetition_penalty_equals_hf(logits_ids, pen):
    x, ids = logits_ids
    assert torch.equal(D.apply_repetition_penalty(x, ids, pen), lp.RepetitionPenaltyLogitsProcessor(pen)(ids, x.clone()))


def test_processor_chain_equals_hf_list(logits_ids):
    x, ids = logits_ids
    cfg = D.SamplerConfig(greedy=False, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2)
    hf = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.2), lp.TemperatureLogitsWarper(0.8),
                                 lp.TopKLogitsWarper(20), lp.TopPLogitsWarper(0.9)])
    assert torch.equal(D.process_logits(x, ids, cfg), hf(ids, x.clone()))


def test_bad_sampler_values_are_clear_errors(logits_ids):
    x, ids = logits_ids
    with pytest.raises(LLMCoreError):
        D.apply_temperature(x, 0.0)
    with pytest.raises(LLMCoreError):
        D.apply_top_p(x, 1.5)


def test_sampler_check_reports_zero_difference():
    assert max(D.sampler_check(vocab=50).values()) == 0.0


def test_beam_search_equals_hf_generate():
    m = tiny(n_kv_heads=2, seed=3)
    prompt = torch.tensor([[5, 9, 17, 3, 40]])
    ours, scores = D.beam_search(m, prompt, 10, num_beams=3)
    theirs = D.hf_beam(m.to_hf(), prompt, 10, 3)
    assert torch.equal(ours, theirs)
    assert torch.all(scores[:-1] >= scores[1:])


@pytest.mark.parametrize("kvh", [4, 2, 1])
def test_cache_equivalence_greedy(kvh):
    m = tiny(n_kv_heads=kvh, seed=kvh)
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    none = D.generate(m, prompt, 25, cache=None).tokens
    static = D.generate(m, prompt, 25, cache="static")
    dynamic = D.generate(m, prompt, 25, cache="dynamic").tokens
    assert torch.equal(none, static.tokens) and torch.equal(none, dynamic)
    assert torch.equal(none, m.generate(prompt, 25))  # the model's own generate
    # bytes = 2 x layers x kv_heads x head_dim x bytes x tokens x batch (tokens = prompt + new - 1 fed)
    assert static.cache_bytes == 2 * 2 * kvh * 8 * 4 * (6 + 25 - 1) * 2
    assert static.cache_bytes == D.kv_cache_bytes(2, kvh, 8, 4, 30, 2)


def test_cached_logits_match_full_forward():
    m = tiny(n_kv_heads=1)
    x = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = D.StaticKVCache.for_model(m, 1, 32)
    a = m(x[:, :12], kv_cache=cache)
    b = torch.cat([a, m(x[:, 12:], kv_cache=cache)], dim=1)
    torch.testing.assert_close(b, m(x), atol=1e-5, rtol=1e-5)
    assert cache.k.is_contiguous() and cache.k.shape == (2, 1, 1, 32, 8)
    assert cache.nbytes == 2 * 2 * 1 * 32 * 8 * 4


def test_cache_crop_and_overflow():
    m = tiny()
    cache = D.StaticKVCache.for_model(m, 1, 8)
    m(torch.arange(6)[None], kv_cache=cache)
    cache.crop(3)
    assert cache.seq_len == 3
    with pytest.raises(LLMCoreError):
        m(torch.arange(6)[None], kv_cache=cache)
    with pytest.raises(LLMCoreError):
        cache.crop(5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_equals_target_greedy(k):
    target = tiny(n_kv_heads=2, seed=0)
    draft = tiny(n_kv_heads=1, seed=1, n_layers=1, d_model=16, n_heads=2)
    prompt = torch.tensor([[1, 2, 3, 4]])
    res = D.speculative_generate(target, draft, prompt, 30, k=k)
    assert torch.equal(res.tokens, D.generate(target, prompt, 30).tokens)
    assert 0 <= res.accepted <= res.drafted and res.rounds >= 30 / (k + 1) - 1
    # the target as its own draft accepts everything
    self_res = D.speculative_generate(target, target, prompt, 30, k=k)
    assert self_res.acceptance_rate == 1.0 and torch.equal(self_res.tokens, res.tokens)


def test_cuda_path_runs_on_a_gpu_or_fails_clearly_without_one():
    with pytest.raises(LLMCoreError, match="CUDA"):  # CPU tensors are refused in either case
        D.cuda_report(tiny(), torch.tensor([[1, 2]]))
    if torch.cuda.is_available():
        rows = D.cuda_report(tiny().cuda(), torch.tensor([[1, 2]], device="cuda"), max_new_tokens=8)
        assert all(r["peak_mem"] >= r["weights_mem"] > 0 and r["tokens_per_s"] > 0 for r in rows.values())
    else:
        with pytest.raises(LLMCoreError, match="no CUDA"):
            D.experiment(toy=True, device="cuda")
