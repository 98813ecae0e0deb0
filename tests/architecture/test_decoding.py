"""Decoding: beam search vs Hugging Face, speculative decoding, the CUDA path (samplers: test_generate.py;
caches: test_kv_cache.py)."""

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


def test_cuda_path_runs_on_a_gpu_or_fails_clearly_without_one():
    with pytest.raises(LLMCoreError, match="CUDA"):  # CPU tensors are refused in either case
        D.cuda_report(tiny(), torch.tensor([[1, 2]]))
    if torch.cuda.is_available():
        rows = D.cuda_report(tiny().cuda(), torch.tensor([[1, 2]], device="cuda"), max_new_tokens=8)
        assert all(r["peak_mem"] >= r["weights_mem"] > 0 and r["tokens_per_s"] > 0 for r in rows.values())
    else:
        with pytest.raises(LLMCoreError, match="no CUDA"):
            D.experiment(toy=True, device="cuda")
