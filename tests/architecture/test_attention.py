"""Attention variants, MHA -> GQA pooling, tiled FlashAttention (torch and Triton), memory meter."""

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.patches import Rectangle

from llmcore.architecture.attention import (
    KV_VARIANTS,
    PeakMemory,
    equal_size_ffn,
    equivalence_checks,
    flash_attention,
    grouped_query_attention,
    growth_exponent,
    kv_cache_bytes_per_token,
    max_error_vs_sdpa,
    memory_sweep,
    mha_to_gqa,
    naive_attention,
    online_softmax_update,
    peak_memory,
    plot_head_grouping,
    seed_summary,
)
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.pretrained import TINY_CONFIG
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


@pytest.mark.parametrize("H,K", [(8, 8), (8, 2), (8, 1), (6, 3)])
def test_head_grouping_diagram(H, K):
    fig, ax = plt.subplots()
    assert plot_head_grouping(ax, H, K) is ax
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(rects) == H + K  # one box per query head and per KV head
    assert len(ax.lines) == H  # one line per query head to its KV head
    G = H // K
    for h, line in enumerate(ax.lines):  # query head h is wired to KV head h // G
        assert line.get_xdata()[1] == pytest.approx((h // G) * G + G / 2)
    with pytest.raises(LLMCoreError, match="multiple"):
        plot_head_grouping(ax, 8, 3)
    plt.close(fig)


def test_online_softmax_update_over_tiles_equals_softmax():
    g = torch.Generator().manual_seed(1)
    s, v = torch.randn(3, 10, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)
    m, ell, acc = torch.full((3, 1), float("-inf"), dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64), \
        torch.zeros(3, 4, dtype=torch.float64)  # noqa: E741
    for j in range(0, 10, 3):  # ragged tiles 3, 3, 3, 1
        m, ell, acc = online_softmax_update(m, ell, acc, s[:, j:j + 3], v[j:j + 3])
    assert torch.allclose(acc / ell, torch.softmax(s, -1) @ v)
    assert torch.allclose(m, s.amax(-1, keepdim=True)) and torch.allclose(ell, torch.exp(s - m).sum(-1, keepdim=True))


def test_equal_size_ffn_gives_equal_parameter_counts():
    base = ModelConfig(**{**TINY_CONFIG.__dict__, "tie_embeddings": False, "max_seq_len": 64})
    sizes = {}
    for name, kv in KV_VARIANTS:
        cfg = ModelConfig(**{**base.__dict__, "n_kv_heads": kv, "ffn_hidden": equal_size_ffn(base, kv)})
        sizes[name] = Llama(cfg).num_params()
    # MQA frees 2 * 64 * 16 * 3 = 6144 weights per layer = 32 FFN units of 3 * 64: exactly equal
    assert equal_size_ffn(base, 1) == base.ffn_hidden + 32 and sizes["MQA"] == sizes["MHA"]
    # GQA-2 frees 4096 = 21.33 units: 21 units, 64 weights per layer short
    assert sizes["MHA"] - sizes["GQA-2"] == 2 * 64


def test_seed_summary_pairs_by_seed():
    rows = [{"variant": n, "seed": s, "val_loss": v} for n, s, v in (
        ("MHA", 0, 2.0), ("MHA", 1, 3.0), ("GQA-2", 0, 2.1), ("GQA-2", 1, 3.1), ("MQA", 0, 2.5), ("MQA", 1, 2.5))]
    summ = seed_summary(rows)
    assert summ["MHA"]["mean"] == pytest.approx(2.5) and summ["MHA"]["diff_mean"] == 0
    assert summ["GQA-2"]["diff_mean"] == pytest.approx(0.1) and summ["GQA-2"]["diff_std"] == pytest.approx(0.0, abs=1e-9)
    assert summ["MQA"]["diff_mean"] == pytest.approx(0.0) and summ["MQA"]["diff_std"] == pytest.approx(2 ** 0.5 * 0.5)
