"""The KV-cache protocol: dynamic, static and INT8 caches give the same greedy tokens as no cache, their
bytes equal 2 x layers x kv_heads x head_dim x bytes x tokens x batch, INT8 error is bounded, and greedy
decoding through them equals Hugging Face's ``LlamaForCausalLM.generate`` with the same weights."""

from __future__ import annotations

import pytest
import torch
from _tiny_llama import tiny

from llmcore.architecture.generate import generate
from llmcore.architecture.kv_cache import (
    CACHES,
    DynamicKVCache,
    Int8KVCache,
    KVCacheProtocol,
    StaticKVCache,
    kv_cache_bytes,
    make_cache,
)
from llmcore.core.errors import LLMCoreError


@pytest.mark.parametrize("kvh", [4, 2, 1])
def test_cache_equivalence_greedy(kvh):
    m = tiny(n_kv_heads=kvh, seed=kvh)
    prompt = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    none = generate(m, prompt, 25, cache=None).tokens
    static = generate(m, prompt, 25, cache="static")
    dynamic = generate(m, prompt, 25, cache="dynamic").tokens
    assert torch.equal(none, static.tokens) and torch.equal(none, dynamic)
    assert torch.equal(none, m.generate(prompt, 25))  # the model's own generate
    # bytes = 2 x layers x kv_heads x head_dim x bytes x tokens x batch (tokens = prompt + new - 1 fed)
    assert static.cache_bytes == 2 * 2 * kvh * 8 * 4 * (6 + 25 - 1) * 2
    assert static.cache_bytes == kv_cache_bytes(2, kvh, 8, 4, 30, 2)


def test_cached_logits_match_full_forward():
    m = tiny(n_kv_heads=1)
    x = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = StaticKVCache.for_model(m, 1, 32)
    a = m(x[:, :12], kv_cache=cache)
    b = torch.cat([a, m(x[:, 12:], kv_cache=cache)], dim=1)
    torch.testing.assert_close(b, m(x), atol=1e-5, rtol=1e-5)
    assert cache.k.is_contiguous() and cache.k.shape == (2, 1, 1, 32, 8)
    assert cache.nbytes == 2 * 2 * 1 * 32 * 8 * 4


def test_cache_crop_and_overflow():
    m = tiny()
    cache = StaticKVCache.for_model(m, 1, 8)
    m(torch.arange(6)[None], kv_cache=cache)
    cache.crop(3)
    assert cache.seq_len == 3
    with pytest.raises(LLMCoreError):
        m(torch.arange(6)[None], kv_cache=cache)
    with pytest.raises(LLMCoreError):
        cache.crop(5)


def test_int8_kv_cache_bytes_and_outputs():
    m = tiny(init_std=0.02, ffn_hidden=96)
    prompt = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(0))
    full = generate(m, prompt, 12)
    q8 = generate(m, prompt, 12, cache="int8")
    L, K, Dh, n = 2, 2, 8, 8 + 12 - 1
    assert full.cache_bytes == 2 * L * K * Dh * 4 * n
    assert q8.cache_bytes == 2 * L * K * (Dh + 2) * n  # int8 values + an fp16 scale per head vector
    cache = Int8KVCache.for_model(m, 1, 32)
    logits_q = m(prompt, kv_cache=cache)
    nxt = m(prompt[:, :1], kv_cache=cache)  # a decode step reads the dequantized cache
    ref = m(torch.cat([prompt, prompt[:, :1]], 1))
    assert (logits_q - ref[:, :8]).abs().max() < 0.05 * ref.abs().max()  # attends to dequantized k/v
    assert (nxt[:, -1] - ref[:, -1]).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("kind", sorted(CACHES))
@pytest.mark.parametrize("kvh", [4, 1])
def test_every_cache_gives_the_no_cache_greedy_tokens(kind, kvh):
    m = tiny(n_kv_heads=kvh, seed=10 + kvh)
    prompt = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    ref = generate(m, prompt, 30, cache=None).tokens
    res = generate(m, prompt, 30, cache=kind)
    assert isinstance(res.cache, KVCacheProtocol)
    assert torch.equal(res.tokens, ref)
    assert res.cache.seq_len == 7 + 30 - 1  # the last token is emitted, never fed


def test_byte_counts_equal_the_formula_for_a_small_case():
    # L=2 layers, K=2 kv heads, D=8, batch 3, 5 tokens: fp32 = 2*2*2*8*4*5*3 = 3840 bytes
    m = tiny(n_kv_heads=2)
    x = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(0))
    static, dyn, q8 = StaticKVCache.for_model(m, 3, 16), DynamicKVCache(2), Int8KVCache.for_model(m, 3, 16)
    for c in (static, dyn, q8):
        m(x, kv_cache=c)
    assert kv_cache_bytes(2, 2, 8, 4, 5, 3) == 3840
    assert static.used_bytes() == 3840 and dyn.nbytes == 3840
    assert static.nbytes == 2 * 2 * 2 * 8 * 4 * 16 * 3  # the whole pre-allocated buffer: 16 positions
    # INT8: 1 byte per value plus an fp16 scale per head vector: 2*2*3*2*(8 + 2)*5 = 1200
    assert q8.used_bytes() == 1200
    assert q8.nbytes == 2 * 2 * 3 * 2 * 16 * 8 + 2 * 2 * 3 * 2 * 16 * 2


def test_int8_cache_error_is_at_most_half_a_step():
    g = torch.Generator().manual_seed(4)
    k, v = torch.randn(2, 3, 10, 16, generator=g) * 3, torch.randn(2, 3, 10, 16, generator=g)
    c = Int8KVCache(1, 2, 3, 16, 10)
    kd, vd = c.update(0, k, v)
    for x, xd, s in ((k, kd, c.k_scale[0]), (v, vd, c.v_scale[0])):
        step = s.float()  # (B, K, S, 1): one scale per head vector
        assert torch.all((xd - x).abs() <= step / 2 + 1e-7)
        assert torch.allclose(step, (x.abs().amax(-1, keepdim=True) / 127).half().float())
    assert c.k.dtype == torch.int8


def test_protocol_crop_reset_get_and_reorder():
    m = tiny()
    x = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(3))
    for c in (DynamicKVCache(2), StaticKVCache.for_model(m, 2, 8), Int8KVCache.for_model(m, 2, 8)):
        m(x, kv_cache=c)
        k, v = c.get(1)
        assert k.shape == v.shape == (2, 2, 6, 8)
        c.crop(4)
        assert c.seq_len == 4 and c.get(0)[0].shape[2] == 4
        with pytest.raises(LLMCoreError):
            c.crop(5)
        c.reset()
        assert c.seq_len == 0
    d = DynamicKVCache(2)
    m(x, kv_cache=d)
    k0 = d.get(0)[0].clone()
    d.reorder(torch.tensor([1, 1]))
    assert torch.equal(d.get(0)[0], k0[[1, 1]])
    with pytest.raises(LLMCoreError, match="unknown KV cache"):
        make_cache("paged", m, 1, 4)


def test_llama_kvcache_name_is_the_dynamic_cache():
    from llmcore.architecture import llama

    assert llama.KVCache is DynamicKVCache


@pytest.mark.parametrize("kind", ["dynamic", "static", "int8"])
def test_greedy_tokens_equal_hf_generate(kind):
    m = tiny(n_kv_heads=2, seed=7, max_seq_len=64)
    prompt = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(2))
    ours = generate(m, prompt, 20, cache=kind).tokens
    theirs = m.to_hf().generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    if kind == "int8":  # quantized keys/values: compare agreement (identical on this model)
        assert float((ours == theirs).float().mean()) >= 0.9
    else:
        assert torch.equal(ours, theirs)
