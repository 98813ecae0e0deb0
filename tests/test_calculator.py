"""The Technical Reference calculator: closed forms vs transformers' meta-device models and the papers."""

from __future__ import annotations

import pytest

from llmcore.core import calculator as C
from llmcore.core.errors import LLMCoreError


@pytest.mark.parametrize("name", list(C.PRESETS))
def test_param_count_equals_transformers_meta_model(name):
    cfg = C.PRESETS[name]
    assert C.param_count(cfg)["total"] == C.hf_meta_param_count(cfg)


def test_known_counts():
    assert C.param_count(C.PRESETS["Llama-3-8B"])["total"] == 8_030_261_248
    mix = C.param_count(C.PRESETS["Mixtral-8x7B"])
    assert mix["total"] == 46_702_792_704 and mix["active"] == 12_879_925_248  # "47B total, 13B active"
    dense = C.param_count(C.PRESETS["Llama-3-8B"])
    assert dense["active"] == dense["total"]
    parts = sum(v for k, v in dense.items() if k not in ("total", "active"))
    assert parts == dense["total"]


def test_tied_embeddings_and_bias_matter():
    q = C.PRESETS["Qwen2.5-0.5B"]
    from dataclasses import replace

    untied = replace(q, tie_embeddings=False)
    assert C.param_count(untied)["total"] - C.param_count(q)["total"] == q.vocab_size * q.hidden_size
    nobias = replace(q, qkv_bias=False)
    d = q.num_heads * q.d_head + 2 * q.num_kv_heads * q.d_head
    assert C.param_count(q)["total"] - C.param_count(nobias)["total"] == q.num_layers * d


def test_zero_stages_follow_the_paper():
    # ZeRO paper, Fig. 1: Psi = 7.5B, N_d = 64, K = 12 -> 120 GB, 31.4 GB, 16.6 GB, 1.88 GB
    psi, n = 7.5e9, 64
    got = [C.model_state_bytes(psi, s, n)["total"] / 1e9 for s in range(4)]
    assert got == pytest.approx([120, 31.4, 16.6, 1.875], abs=0.06)
    assert C.model_state_bytes(psi, 3, 1)["total"] == C.model_state_bytes(psi, 0, 1)["total"]
    with pytest.raises(LLMCoreError):
        C.model_state_bytes(psi, 4, 8)


def test_kv_cache_and_flops_and_quant():
    cfg = C.PRESETS["Llama-3-8B"]
    # 2 x 32 layers x 8 kv heads x 128 x 2 bytes = 128 KiB per token (bf16)
    assert C.kv_cache_bytes(cfg, 1) == 131072
    assert C.kv_cache_bytes(cfg, 8192, batch=4) == 131072 * 8192 * 4
    assert C.training_flops(8e9, 15e12) == pytest.approx(7.2e23)
    assert C.weight_bytes(1000, "int8") == 1000 and C.weight_bytes(1000, "bf16") == 2000
    assert C.weight_bytes(1024, "int4 (g=128)") == 512 + 8 * 2.5
    with pytest.raises(LLMCoreError):
        C.weight_bytes(10, "int3")
    rows = C.summary_table()
    assert [r["model"] for r in rows] == list(C.PRESETS)


def test_expert_parallel_bytes_per_token():
    """Hand-computed: Mixtral-8x7B (d 4096, top-2, 32 layers), bf16, 8 EP ranks: each assignment leaves its
    rank with probability 7/8: 2 (out and back) x 2 x 4096 x 2 B x 7/8 = 28,672 B per layer, forward."""
    mixtral = C.PRESETS["Mixtral-8x7B"]
    assert C.ep_all_to_all_bytes(mixtral, 8, backward=False) == 32 * 28_672
    assert C.ep_all_to_all_bytes(mixtral, 8) == 2 * 32 * 28_672
    assert C.ep_all_to_all_bytes(mixtral, 1) == 0  # one rank: every expert is local
    assert C.ep_all_to_all_bytes(C.PRESETS["Llama-3-8B"], 8) == 0  # dense: no all-to-all
