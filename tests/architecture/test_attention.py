"""Attention variants, MHA -> GQA pooling, tiled FlashAttention (torch and Triton), memory meter."""

import pytest
import torch

from llmcore.architecture.attention import (
    PeakMemory,
    equivalence_checks,
    flash_attention,
    grouped_query_attention,
    growth_exponent,
    kv_cache_bytes_per_token,
    max_error_vs_sdpa,
    memory_sweep,
    mha_to_gqa,
    naive_attention,
    peak_memory,
)
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.core import triton_env  # first: sets TRITON_INTERPRET=1 on CPU before Triton is imported
from llmcore.core.errors import LLMCoreError


def _qkv(K, n=50, d=16, s=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = n if s is None else s
    return torch.randn(2, 4, n, d, generator=g), torch.randn(2, K, s, d, generator=g), torch.randn(2, K, s, d, generator=g)


@pytest.mark.parametrize("K", [4, 2, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_variants_equal_sdpa(K, causal):
    q, k, v = _qkv(K)
    for fn in (naive_attention, grouped_query_attention,
               lambda *a, **c: flash_attention(*a, block_q=16, block_k=8, **c),
               lambda *a, **c: flash_attention(*a, block_q=7, block_k=13, **c)):  # ragged tiles
        assert max_error_vs_sdpa(fn, q, k, v, causal) < 1e-5


def test_flash_with_cached_prefix_matches_naive():
    q, k, v = _qkv(2, n=5, s=37)  # 5 new queries attending to 32 cached + 5 new keys
    ref = naive_attention(q, k, v, causal=True)
    assert (flash_attention(q, k, v, causal=True, block_q=2, block_k=8) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("K", [4, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_triton_kernel_equals_sdpa(K, causal):
    assert triton_env.triton is not None, "triton is a test dependency (the kernels extra)"
    from llmcore.architecture.flash_triton import flash_attention_triton

    q, k, v = _qkv(K, n=40, d=16)
    assert max_error_vs_sdpa(flash_attention_triton, q, k, v, causal) < 1e-5


def test_mha_to_gqa_pooling_is_exact_when_heads_are_equal():
    torch.manual_seed(0)
    m = Llama(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                          bos_id=None, eos_id=None, pad_id=None)).eval()
    with torch.no_grad():  # make heads 2j and 2j+1 identical: pooling them loses nothing
        for layer in m.model.layers:
            for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
                w = proj.weight.view(2, 2, 8, 32)
                w[:, 1] = w[:, 0]
    gqa = mha_to_gqa(m, 2)
    assert gqa.config.n_kv_heads == 2 and gqa.model.layers[0].self_attn.k_proj.weight.shape == (16, 32)
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert (gqa(x) - m(x)).abs().max() < 1e-5
    assert kv_cache_bytes_per_token(gqa.config) * 2 == kv_cache_bytes_per_token(m.config)
    with pytest.raises(LLMCoreError):
        mha_to_gqa(m, 3)


def test_peak_memory_meter_counts_live_tensors():
    a = torch.ones(1000)
    def f():
        x = a * 2  # 4000 bytes
        y = x + 1  # 4000 more while x lives
        del x
        return y.sum()
    assert peak_memory(f) == 8000  # x and y alive together; the 4-byte sum comes after x is freed
    with torch.no_grad(), PeakMemory() as m:
        b = torch.zeros(256, 256)
        del b
        c = torch.zeros(128, 128)
    assert m.peak == 256 * 256 * 4 and m.current == 128 * 128 * 4
    del c


def test_naive_memory_quadratic_tiled_linear():
    r = memory_sweep([128, 256, 512], d=16, block=32)
    assert growth_exponent(r["N"], r["naive"]) > 1.8
    assert growth_exponent(r["N"], r["flash"]) < 1.2
    assert r["flash"][-1] < r["naive"][-1] / 4


def test_triton_kernel_runs_where_the_kernel_device_says():
    """Under the interpreter the kernel takes CPU tensors; compiled, it needs CUDA tensors (a clear error
    instead of handing the GPU kernel CPU pointers)."""
    if triton_env.INTERPRET:
        assert triton_env.kernel_device() == torch.device("cpu")
        errors, triton_errors = equivalence_checks(seed=1, n=20, triton_n=16, device="cpu")
        assert len(triton_errors) == 6 and max(triton_errors.values()) < 1e-5
    else:  # pragma: no cover - needs a GPU
        assert triton_env.kernel_device().type == "cuda"
        from llmcore.architecture.flash_triton import flash_attention_triton

        q, k, v = _qkv(1, n=16, d=16)
        with pytest.raises(LLMCoreError, match="needs CUDA tensors"):
            flash_attention_triton(q, k, v)
