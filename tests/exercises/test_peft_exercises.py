"""The PEFT chapter's checkers accept the book's reference and a reader's correct answer, and reject plausible
wrong answers."""

from __future__ import annotations

import pytest
import torch

from llmcore.alignment.peft import LoRAConfig, LoRALinear, ties_tensor
from llmcore.exercises import check_lora_forward, check_lora_param_count, check_ties_merge

# -- LoRA forward ---------------------------------------------------------------------------------------------


def good_lora(x, W, A, B, alpha, r):
    return x @ W.T + (alpha / r) * (x @ A.T) @ B.T


def test_lora_forward_accepts_a_correct_answer(capsys):
    assert check_lora_forward(good_lora) == 5
    assert capsys.readouterr().out.startswith("PASS check_lora_forward")


def test_lora_forward_hand_case():
    # d_in = 2, d_out = 1, r = 1: W0 = (1, 2), A = (1, 1), B = (3), alpha / r = 2; x = (1, 1)
    # h = 1 + 2 + 2 * (1 + 1) * 3 = 15
    x, W, A, B = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0]])
    assert float(good_lora(x, W, A, B, 2.0, 1)) == 15.0
    lora = LoRALinear(torch.nn.Linear(2, 1, bias=False), 2, 1, LoRAConfig(r=1, alpha=2.0))  # the checker's reference
    with torch.no_grad():
        lora.base.weight.copy_(W), lora.lora_A.weight.copy_(A), lora.lora_B.weight.copy_(B)
        assert float(lora(x)) == 15.0


@pytest.mark.parametrize("wrong", [
    lambda x, W, A, B, alpha, r: x @ W.T + (x @ A.T) @ B.T,  # forgot the alpha / r scale
    lambda x, W, A, B, alpha, r: x @ W.T + (r / alpha) * (x @ A.T) @ B.T,  # scale upside down
    lambda x, W, A, B, alpha, r: (alpha / r) * (x @ A.T) @ B.T,  # dropped the frozen path
])
def test_lora_forward_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_lora_forward: case .* expected"):
        check_lora_forward(wrong)


# -- TIES -------------------------------------------------------------------------------------------------------


def good_ties(taus, density):
    t = torch.stack(taus).flatten(1)  # (n, numel)
    k = round(density * t.shape[1])
    thresh = t.abs().topk(k, dim=1).values[:, -1:]
    t = torch.where(t.abs() >= thresh, t, torch.zeros_like(t))  # trim
    sign = torch.sign(t.sum(0))  # elect
    agree = (torch.sign(t) == sign) & (t != 0)
    return ((t * agree).sum(0) / agree.sum(0).clamp(min=1)).reshape(taus[0].shape)  # disjoint mean


def test_ties_accepts_reference_and_a_correct_answer():
    assert check_ties_merge(ties_tensor) == 6
    assert check_ties_merge(good_ties) == 6


def test_ties_hand_case():
    # density 0.5 keeps 2 of 4: t1 -> (3, 0, 0, -2), t2 -> (-1.5, -2, 0, 0); sums (1.5, -2, 0, -2) elect (+, -, 0, -)
    # coord 0 keeps t1's 3 (t2 disagrees), coord 1 t2's -2, coord 2 nothing, coord 3 t1's -2
    t1, t2 = torch.tensor([3.0, -1.0, 0.5, -2.0]), torch.tensor([-1.5, -2.0, 1.0, 0.5])
    want = torch.tensor([3.0, -2.0, 0.0, -2.0])
    assert torch.equal(good_ties([t1, t2], 0.5), want)
    assert torch.equal(ties_tensor([t1, t2], 0.5), want)


def no_trim(taus, density):
    return good_ties(taus, 1.0)


def mean_over_all(taus, density):
    """Averages the agreeing entries over every task instead of over the agreeing ones."""
    t = torch.stack([ties_tensor([x], density) for x in taus])  # each task trimmed alone
    sign = torch.sign(t.sum(0))
    return (t * (torch.sign(t) == sign)).sum(0) / len(taus)


def elect_by_count(taus, density):
    """Elects the sign by a vote of signs, not by the sum of the values."""
    t = torch.stack([ties_tensor([x], density) for x in taus])
    sign = torch.sign(torch.sign(t).sum(0))
    agree = (torch.sign(t) == sign) & (t != 0)
    return (t * agree).sum(0) / agree.sum(0).clamp(min=1)


@pytest.mark.parametrize("wrong", [no_trim, mean_over_all, elect_by_count])
def test_ties_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_ties_merge: case .* expected"):
        check_ties_merge(wrong)


# -- LoRA parameter count ---------------------------------------------------------------------------------------


def good_count(d_model, n_layers, n_heads, n_kv_heads, ffn_hidden, r, targets, gqa=True):
    kv = n_kv_heads * (d_model // n_heads) if gqa else d_model
    shapes = {"q_proj": (d_model, d_model), "k_proj": (kv, d_model), "v_proj": (kv, d_model),
              "o_proj": (d_model, d_model), "gate_proj": (ffn_hidden, d_model), "up_proj": (ffn_hidden, d_model),
              "down_proj": (d_model, ffn_hidden)}
    return n_layers * sum(r * sum(shapes[t]) for t in targets)


def test_lora_param_count_accepts_a_correct_answer_and_hand_case():
    assert check_lora_param_count(good_count) == 5
    # the book LM (d 192, 4 layers, 6 heads / 2 KV heads): rank 4 on q, v, o -> 4 * 4 * (384 + 256 + 384) = 16,384,
    # the chapter's table
    assert good_count(192, 4, 6, 2, 512, 4, ("q_proj", "v_proj", "o_proj")) == 16_384


@pytest.mark.parametrize("wrong", [
    lambda **kw: good_count(**kw, gqa=False),  # ignores grouped-query attention (k, v as wide as q)
    lambda **kw: good_count(**kw) // kw["n_layers"],  # one layer only
    lambda **kw: good_count(**kw) // kw["r"] * kw["r"] ** 2,  # r^2 (d_in + d_out)
])
def test_lora_param_count_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_lora_param_count: case"):
        check_lora_param_count(wrong)
