"""The one generate: logits processors vs Hugging Face, eos handling, seeded sampling, Llama.generate."""

from __future__ import annotations

import pytest
import torch
from _tiny_llama import tiny
from transformers.generation import logits_process as lp

from llmcore.architecture import generate as gen
from llmcore.architecture.kv_cache import DynamicKVCache, StaticKVCache
from llmcore.core.errors import LLMCoreError


@pytest.fixture
def logits_ids():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 100, generator=g) * 4, torch.randint(0, 100, (5, 12), generator=g)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature_equals_hf(logits_ids, t):
    x, ids = logits_ids
    assert torch.equal(gen.apply_temperature(x, t), lp.TemperatureLogitsWarper(t)(ids, x))


@pytest.mark.parametrize("k", [1, 5, 50, 100, 200])
def test_top_k_equals_hf(logits_ids, k):
    x, ids = logits_ids
    assert torch.equal(gen.apply_top_k(x, k), lp.TopKLogitsWarper(k)(ids, x))


@pytest.mark.parametrize("p", [0.01, 0.5, 0.9, 0.999, 1.0])
def test_top_p_equals_hf(logits_ids, p):
    x, ids = logits_ids
    assert torch.equal(gen.apply_top_p(x, p), lp.TopPLogitsWarper(p)(ids, x))


@pytest.mark.parametrize("pen", [0.7, 1.3, 2.0])
def test_repetition_penalty_equals_hf(logits_ids, pen):
    x, ids = logits_ids
    assert torch.equal(gen.apply_repetition_penalty(x, ids, pen), lp.RepetitionPenaltyLogitsProcessor(pen)(ids, x.clone()))


def test_processor_chain_equals_hf_list(logits_ids):
    x, ids = logits_ids
    cfg = gen.SamplerConfig(greedy=False, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2)
    hf = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.2), lp.TemperatureLogitsWarper(0.8),
                                 lp.TopKLogitsWarper(20), lp.TopPLogitsWarper(0.9)])
    assert torch.equal(gen.process_logits(x, ids, cfg), hf(ids, x.clone()))


def test_bad_sampler_values_are_clear_errors(logits_ids):
    x, ids = logits_ids
    with pytest.raises(LLMCoreError):
        gen.apply_temperature(x, 0.0)
    with pytest.raises(LLMCoreError):
        gen.apply_top_p(x, 1.5)


def test_greedy_is_argmax_of_the_full_forward_each_step():
    m = tiny(seed=3)
    prompt = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    out = gen.generate(m, prompt, 6, cache="dynamic").tokens
    seq = prompt
    for _ in range(6):  # hand-rolled reference: no cache, argmax of the last position
        seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


def test_eos_rows_keep_emitting_eos_and_decoding_stops_when_all_are_done():
    m = tiny(seed=1)
    prompt = torch.randint(0, 64, (3, 4), generator=torch.Generator().manual_seed(5))
    free = gen.generate(m, prompt, 12, cache="static").tokens[:, 4:]
    eos = int(free[0, 2])  # row 0 emits this token at step 2
    out = gen.generate(m, prompt, 12, cache="static", eos_id=eos).tokens[:, 4:]
    for r in range(3):
        hits = (free[r] == eos).nonzero()
        if len(hits):  # identical up to the first eos, eos afterwards
            i = int(hits[0])
            assert torch.equal(out[r, :i + 1], free[r, :i + 1]) and bool((out[r, i:] == eos).all())
        else:
            assert torch.equal(out[r], free[r, :out.shape[1]])
    stop = max(int((free[r] == eos).nonzero()[0]) if (free[r] == eos).any() else 12 for r in range(3))
    assert out.shape[1] == min(12, stop + 1)  # stopped once every row had emitted eos


def test_sampling_depends_only_on_the_generator():
    m = tiny()
    prompt = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0))
    cfg = gen.SamplerConfig(greedy=False, temperature=1.5, top_k=20, top_p=0.95)
    a = gen.generate(m, prompt, 15, cfg, generator=torch.Generator().manual_seed(7)).tokens
    torch.manual_seed(123)  # the global RNG must not matter
    b = gen.generate(m, prompt, 15, cfg, cache="dynamic", generator=torch.Generator().manual_seed(7)).tokens
    c = gen.generate(m, prompt, 15, cfg, generator=torch.Generator().manual_seed(8)).tokens
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_llama_generate_delegates_with_its_old_interface():
    m = tiny(seed=2)
    prompt = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.generate(prompt, 10), gen.generate(m, prompt, 10, cache=None).tokens)
    assert torch.equal(m.generate(prompt, 10, use_cache=False), m.generate(prompt, 10))
    s1 = m.generate(prompt, 10, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3))
    s2 = gen.generate(m, prompt, 10, gen.SamplerConfig(greedy=False, temperature=0.8, top_k=5), cache="dynamic",
                      generator=torch.Generator().manual_seed(3)).tokens
    assert torch.equal(s1, s2)
    m.train()
    m.generate(prompt, 2)
    assert m.training  # the mode is restored


def test_generate_accepts_a_cache_object_or_factory_and_rejects_junk():
    m = tiny()
    prompt = torch.randint(0, 64, (1, 4), generator=torch.Generator().manual_seed(0))
    ref = gen.generate(m, prompt, 5, cache=None).tokens
    cache = StaticKVCache.for_model(m, 1, 9)
    assert torch.equal(gen.generate(m, prompt, 5, cache=cache).tokens, ref) and cache.seq_len == 8
    assert torch.equal(gen.generate(m, prompt, 5, cache=DynamicKVCache.for_model).tokens, ref)
    with pytest.raises(LLMCoreError, match="cache must be one of"):
        gen.generate(m, prompt, 5, cache="paged-by-magic")
    with pytest.raises(LLMCoreError, match="max_seq_len"):
        gen.generate(tiny(max_seq_len=8), prompt, 10)


def _left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(map(len, rows))
    return (torch.tensor([[pad] * (P - len(r)) + r for r in rows]),
            torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows]))


@pytest.mark.parametrize("cache", ["dynamic", None])
def test_left_padded_rows_decode_as_each_row_alone(cache):
    m = tiny(seed=4)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(1, 64, (n,), generator=g).tolist() for n in (3, 7, 5)]
    idx, mask = _left_pad(rows)
    out = gen.generate(m, idx, 8, cache=cache, attention_mask=mask).tokens[:, idx.shape[1]:]
    for r, row in enumerate(rows):  # the reference: the row alone, no padding at all
        alone = gen.generate(m, torch.tensor([row]), 8, cache=None).tokens[0, len(row):]
        assert torch.equal(out[r], alone)


def test_left_padded_greedy_equals_hf_generate():
    m = tiny(seed=5)
    g = torch.Generator().manual_seed(3)
    idx, mask = _left_pad([torch.randint(1, 64, (n,), generator=g).tolist() for n in (2, 6, 4, 6)])
    ours = m.generate(idx, 7, attention_mask=mask)
    hf = m.to_hf().generate(input_ids=idx, attention_mask=mask, max_new_tokens=7, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours, hf)


def test_bad_attention_masks_are_clear_errors():
    m = tiny()
    idx, mask = _left_pad([[1, 2, 3], [4, 5]])
    with pytest.raises(LLMCoreError, match="left padding"):
        gen.generate(m, idx, 2, attention_mask=mask.flip(-1))  # right padding
    with pytest.raises(LLMCoreError, match="shape"):
        gen.generate(m, idx, 2, attention_mask=mask[:, 1:])
    with pytest.raises(LLMCoreError, match="dynamic"):
        gen.generate(m, idx, 2, cache="static", attention_mask=mask)
