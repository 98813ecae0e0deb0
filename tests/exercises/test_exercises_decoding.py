"""The Decoding chapter's checkers accept the book's reference and reject plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from llmcore.architecture.generate import apply_top_p
from llmcore.architecture.kv_cache import kv_cache_bytes
from llmcore.architecture.speculative import rejection_probs
from llmcore.exercises import check_kv_cache_bytes, check_speculative_accept, check_top_p_filter

# -- top-p --------------------------------------------------------------------------------------------


def good_top_p(logits, p):
    probs, order = torch.sort(logits.softmax(-1), descending=True)
    before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = before >= p  # already reached p without this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def test_top_p_accepts_the_reference_and_a_rewrite(capsys):
    assert check_top_p_filter(apply_top_p) == 7
    assert check_top_p_filter(good_top_p) == 7
    assert "PASS check_top_p_filter" in capsys.readouterr().out


def test_top_p_hand_case():
    # probabilities 0.5, 0.3, 0.2: p = 0.7 keeps the first two (0.5 < 0.7 <= 0.8), p = 0.5 only the first
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert torch.isinf(apply_top_p(logits, 0.7)).tolist() == [[False, False, True]]
    assert torch.isinf(apply_top_p(logits, 0.5)).tolist() == [[False, True, True]]


@pytest.mark.parametrize("wrong", [
    lambda logits, p: logits.masked_fill(logits.softmax(-1) < 1 - p, float("-inf")),  # thresholds each prob
    lambda logits, p: good_top_p(logits, p + 0.1),  # keeps too much
    lambda logits, p: logits,  # no filtering
])
def test_top_p_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_top_p_filter: case .* expected"):
        check_top_p_filter(wrong)


# -- speculative rejection rule -----------------------------------------------------------------------


def good_accept(p, q, d):
    r = (p - q).clamp_min(0)
    return min(1.0, float(p[d] / q[d])), r / r.sum()


def test_speculative_accept_accepts_the_reference_and_a_rewrite():
    assert check_speculative_accept(lambda p, q, d: rejection_probs(p, q, torch.tensor(d))) == 12
    assert check_speculative_accept(good_accept) == 12


def test_speculative_accept_hand_case():
    p, q = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    a, r = rejection_probs(p, q, torch.tensor(1))  # p/q = 0.6 at the drafted token
    assert float(a) == pytest.approx(0.6)
    assert r.tolist() == pytest.approx([1.0, 0.0, 0.0])  # only token 0 has p > q
    a0, _ = rejection_probs(p, q, torch.tensor(0))
    assert float(a0) == 1.0


@pytest.mark.parametrize("wrong", [
    lambda p, q, d: (float(p[d] / q[d]), good_accept(p, q, d)[1]),  # no min(1, .)
    lambda p, q, d: (good_accept(p, q, d)[0], (p - q).clamp_min(0)),  # residual not normalised
    lambda p, q, d: (good_accept(p, q, d)[0], (q - p).clamp_min(0) / (q - p).clamp_min(0).sum()),  # q - p
    lambda p, q, d: (min(1.0, float(q[d] / p[d])), good_accept(p, q, d)[1]),  # ratio upside down
])
def test_speculative_accept_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_speculative_accept: case"):
        check_speculative_accept(wrong)


# -- KV cache bytes -----------------------------------------------------------------------------------


def test_kv_cache_bytes_reference_and_hand_case():
    assert check_kv_cache_bytes(kv_cache_bytes) == 6
    # Llama-3-8B (32 layers, 8 KV heads of 128) at 8192 tokens in bf16: 1 GiB
    assert kv_cache_bytes(32, 8, 128, 2, 8192) == 2**30


@pytest.mark.parametrize("wrong", [
    lambda n_layers, n_kv_heads, head_dim, bytes_per_element, tokens, batch:
        n_layers * n_kv_heads * head_dim * bytes_per_element * tokens * batch,  # keys only
    lambda n_layers, n_kv_heads, head_dim, bytes_per_element, tokens, batch:
        2 * n_layers * n_kv_heads * head_dim * bytes_per_element * tokens,  # forgot the batch
    lambda n_layers, n_kv_heads, head_dim, bytes_per_element, tokens, batch:
        2 * n_layers * n_kv_heads * head_dim * tokens * batch,  # counted elements, not bytes
])
def test_kv_cache_bytes_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_kv_cache_bytes"):
        check_kv_cache_bytes(wrong)
