"""check_per_turn_gae accepts the reference and a loop rewrite, and rejects plausible mistakes."""

from __future__ import annotations

import pytest
import torch

from llmcore.alignment.agentic_rl.multiturn import per_turn_gae
from llmcore.exercises import check_per_turn_gae


def loop_gae(rewards, values, turn_mask, gamma, lam):
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        n, acc = int(turn_mask[b].sum()), 0.0
        for k in reversed(range(n)):
            next_v = values[b, k + 1] if k + 1 < n else 0.0
            acc = rewards[b, k] + gamma * next_v - values[b, k] + gamma * lam * acc
            adv[b, k] = acc
    return adv


def test_accepts_the_reference_and_a_loop(capsys):
    assert check_per_turn_gae(lambda rewards, values, turn_mask, gamma, lam:
                              per_turn_gae(rewards, values, turn_mask, gamma, lam)[0]) == 6
    assert check_per_turn_gae(loop_gae) == 6
    assert capsys.readouterr().out.startswith("PASS check_per_turn_gae")


def test_hand_case():
    r = torch.tensor([[-0.1, 0.9]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.7]], dtype=torch.float64)
    # lambda = 1, gamma = 1: return-to-go minus V = [0.8 - 0.5, 0.9 - 0.7]
    assert torch.allclose(loop_gae(r, v, torch.ones(1, 2, dtype=torch.float64), 1.0, 1.0),
                          torch.tensor([[0.3, 0.2]], dtype=torch.float64))


def bootstraps_past_the_end(rewards, values, turn_mask, gamma, lam):  # ignores the mask: V after the last turn
    adv, acc = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    K = rewards.shape[1]
    for k in reversed(range(K)):
        nv = values[:, k + 1] if k + 1 < K else torch.zeros_like(acc)
        acc = rewards[:, k] + gamma * nv - values[:, k] + gamma * lam * acc
        adv[:, k] = acc
    return adv * turn_mask


@pytest.mark.parametrize("wrong", [
    bootstraps_past_the_end,
    lambda rewards, values, turn_mask, gamma, lam: loop_gae(rewards, values, turn_mask, gamma, 1.0),  # lambda ignored
    lambda rewards, values, turn_mask, gamma, lam: loop_gae(rewards, values, turn_mask, 1.0, lam),  # gamma ignored
])
def test_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_per_turn_gae: case .* expected"):
        check_per_turn_gae(wrong)
