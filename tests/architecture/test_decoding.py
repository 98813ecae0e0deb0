"""Decoding: beam search vs Hugging Face, speculative decoding, the CUDA path (samplers: test_generate.py;
caches: test_kv_cache.py; the per-format decode: test_lowbit.py)."""

from __future__ import annotations

import pytest
import torch
from _tiny_llama import tiny

from llmcore.architecture import decoding as D
from llmcore.core.errors import LLMCoreError


def test_sampler_check_reports_zero_difference():
    assert max(D.sampler_check(vocab=50).values()) == 0.0


def test_beam_search_equals_hf_generate():
    m = tiny(n_kv_heads=2, seed=3)
    prompt = torch.tensor([[5, 9, 17, 3, 40]])
    ours, scores = D.beam_search(m, prompt, 10, num_beams=3)
    theirs = D.hf_beam(m.to_hf(), prompt, 10, 3)
    assert torch.equal(ours, theirs)
    assert torch.all(scores[:-1] >= scores[1:])


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without a GPU gives")
def test_cuda_without_a_gpu_fails_clearly():
    with pytest.raises(LLMCoreError, match="no CUDA"):
        D.experiment(toy=True, device="cuda")


def test_plot_kv_cache_growth_draws_one_square_per_position_and_step():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert D.plot_kv_cache_growth(ax, prompt_len=3, steps=4) is ax
    assert len(ax.patches) == 2 * sum(3 + t for t in range(5))
    colors = [tuple(p.get_facecolor()) for p in ax.patches[: sum(3 + t for t in range(5))]]
    assert len(set(colors)) == 2  # with the cache: computed and read-back positions differ
    plt.close(fig)


def test_cache_speedup_small_model_same_tokens():
    r = D.cache_speedup(new_tokens=12, prompt_len=4, d_model=32, layers=1, heads=2, kv_heads=1)
    assert r["same_tokens"] and r["no_cache_s"] > 0 and r["cache_s"] > 0
    assert r["cache_bytes"] == D.kv_cache_bytes(1, 1, 16, 4, 4 + 12 - 1)
