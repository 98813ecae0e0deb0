"""The architecture checkers accept the book's reference implementations and reject plausible wrong answers."""

from __future__ import annotations

import math

import pytest
import torch

from llmcore.architecture.attention import online_softmax_update
from llmcore.architecture.llama import RMSNorm, apply_rope, repeat_kv, rope_cos_sin
from llmcore.exercises import check_online_softmax, check_repeat_kv, check_rmsnorm, check_rope

# -- RMSNorm ------------------------------------------------------------------------------------------


def good_rmsnorm(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_rmsnorm_accepts_the_reference_and_a_correct_answer(capsys):
    def ref(x, weight, eps):
        norm = RMSNorm(x.shape[-1], eps).double()
        with torch.no_grad():
            norm.weight.copy_(weight)
            return norm(x)

    assert check_rmsnorm(ref) == 4
    assert check_rmsnorm(good_rmsnorm) == 4
    assert capsys.readouterr().out.startswith("PASS check_rmsnorm")


def test_rmsnorm_hand_case():
    # x = (3, 4): mean of squares 12.5, so y = x / sqrt(12.5) (eps 0, gain 1)
    y = good_rmsnorm(torch.tensor([3.0, 4.0]), torch.ones(2), 0.0)
    assert torch.allclose(y, torch.tensor([3.0, 4.0]) / math.sqrt(12.5))
    norm = RMSNorm(2, eps=0.0)
    assert torch.allclose(norm(torch.tensor([3.0, 4.0])), y)


@pytest.mark.parametrize("wrong", [
    lambda x, weight, eps: weight * (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + eps),  # LayerNorm
    lambda x, weight, eps: weight * x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps),  # L2 norm, not RMS
    lambda x, weight, eps: x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps),  # forgot the gain
])
def test_rmsnorm_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_rmsnorm: case .* expected"):
        check_rmsnorm(wrong)


# -- RoPE ---------------------------------------------------------------------------------------------


def good_rope(x, positions, theta):
    D = x.shape[-1]
    freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    ang = positions[:, None].double() * freq  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def test_rope_accepts_the_reference_and_a_correct_answer():
    def ref(x, positions, theta):
        cos, sin = rope_cos_sin(positions[None], x.shape[-1], theta)
        return apply_rope(x, cos.double(), sin.double())

    assert check_rope(ref) == 5
    assert check_rope(good_rope) == 5


def test_rope_hand_case():
    # D = 2: one pair, frequency 1; position 1 turns (1, 0) by 1 radian
    x = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    want = torch.tensor([math.cos(1.0), math.sin(1.0)], dtype=torch.float64)
    assert torch.allclose(good_rope(x, torch.tensor([1]), 10000.0).flatten(), want)
    cos, sin = rope_cos_sin(torch.tensor([[1]]), 2, 10000.0)
    assert torch.allclose(apply_rope(x, cos.double(), sin.double()).flatten(), want, atol=1e-7)


def interleaved_rope(x, positions, theta):  # GPT-J layout: pairs (0, 1), (2, 3), ... -- not the book's
    D = x.shape[-1]
    freq = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = positions[:, None].double() * freq
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], dim=-1)
    return out.flatten(-2)


@pytest.mark.parametrize("wrong", [
    lambda x, positions, theta: good_rope(x, -positions, theta),  # turned the wrong way
    lambda x, positions, theta: good_rope(x, positions, theta ** 0.5),  # frequency theta^(-i/D)
    lambda x, positions, theta: good_rope(x, positions - positions[0], theta),  # positions restarted at 0
    interleaved_rope,
])
def test_rope_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_rope: case .* expected"):
        check_rope(wrong)


# -- repeat_kv ----------------------------------------------------------------------------------------


def test_repeat_kv_accepts_reference_and_hand_case():
    assert check_repeat_kv(repeat_kv) == 5
    assert check_repeat_kv(lambda x, n_rep: x.repeat_interleave(n_rep, dim=1)) == 5
    x = torch.tensor([10.0, 20.0]).view(1, 2, 1, 1)  # two KV heads
    assert repeat_kv(x, 2).flatten().tolist() == [10.0, 10.0, 20.0, 20.0]  # query heads 0,1 -> kv 0; 2,3 -> kv 1


@pytest.mark.parametrize("wrong", [
    lambda x, n_rep: x.repeat(1, n_rep, 1, 1),  # tiles the heads: query head 1 would read KV head 1
    lambda x, n_rep: x,  # no expansion
    lambda x, n_rep: x.repeat_interleave(n_rep, dim=2),  # repeats positions, not heads
])
def test_repeat_kv_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_repeat_kv: case .* expected"):
        check_repeat_kv(wrong)


# -- online softmax -----------------------------------------------------------------------------------


def good_update(m, ell, acc, s, v):
    m_new = torch.maximum(m, s.max(-1, keepdim=True).values)
    scale = torch.exp(m - m_new)
    p = torch.exp(s - m_new)
    return m_new, scale * ell + p.sum(-1, keepdim=True), scale * acc + p @ v


def test_online_softmax_accepts_reference_and_a_correct_answer():
    assert check_online_softmax(online_softmax_update) == 5
    assert check_online_softmax(good_update) == 5


def test_online_softmax_hand_case_two_tiles_equal_softmax():
    # scores (0, ln 3) in two tiles of one: softmax = (1/4, 3/4); output = weighted values
    s, v = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[4.0], [8.0]])
    m, ell, acc = torch.full((1, 1), float("-inf")), torch.zeros(1, 1), torch.zeros(1, 1)  # noqa: E741
    for j in range(2):
        m, ell, acc = online_softmax_update(m, ell, acc, s[:, j:j + 1], v[j:j + 1])
    assert float(acc / ell) == pytest.approx(0.25 * 4 + 0.75 * 8)
    assert float(m) == pytest.approx(math.log(3.0)) and float(ell) == pytest.approx(4 / 3)


@pytest.mark.parametrize("wrong", [
    lambda m, ell, acc, s, v: (torch.maximum(m, s.amax(-1, keepdim=True)),  # acc not rescaled
                             torch.exp(m - torch.maximum(m, s.amax(-1, keepdim=True))) * ell
                             + torch.exp(s - torch.maximum(m, s.amax(-1, keepdim=True))).sum(-1, keepdim=True),
                             acc + torch.exp(s - torch.maximum(m, s.amax(-1, keepdim=True))) @ v),
    lambda m, ell, acc, s, v: (m, ell + torch.exp(s - m).sum(-1, keepdim=True), acc + torch.exp(s - m) @ v),  # old max
    lambda m, ell, acc, s, v: good_update(m, ell, acc, s, v)[1:],  # forgot m
    lambda m, ell, acc, s, v: None,
])
def test_online_softmax_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_online_softmax: case"):
        check_online_softmax(wrong)
