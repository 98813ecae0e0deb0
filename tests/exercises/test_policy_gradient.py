"""The policy-gradient checkers accept the book's reference implementations and correct rewrites, and reject
plausible wrong answers with a message that names the case."""

from __future__ import annotations

import pytest
import torch

from llmcore.alignment.grpo import group_advantages
from llmcore.alignment.pg_ac import ppo_clip_objective
from llmcore.exercises import check_group_advantages, check_ppo_clip_loss, check_reinforce_returns
from llmcore.foundation_rl.gae import discounted_returns

# -- reward-to-go -------------------------------------------------------------------------------------


def good_returns(rewards, gamma):
    out, g = torch.zeros_like(rewards), 0.0
    for t in reversed(range(len(rewards))):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


def test_reinforce_returns_accepts_the_reference_and_a_loop(capsys):
    ref = lambda rewards, gamma: discounted_returns(rewards[:, None], torch.zeros(len(rewards), 1, dtype=rewards.dtype),  # noqa: E731
                                                    torch.zeros(1, dtype=rewards.dtype), gamma)[:, 0]
    assert check_reinforce_returns(ref) == 6
    assert check_reinforce_returns(good_returns) == 6
    assert capsys.readouterr().out.splitlines()[-1].startswith("PASS check_reinforce_returns")


def test_reinforce_returns_hand_case():
    # r = (1, 2, 4), gamma = 0.5: G_2 = 4, G_1 = 2 + 0.5 * 4 = 4, G_0 = 1 + 0.5 * 4 = 3
    assert good_returns(torch.tensor([1.0, 2.0, 4.0]), 0.5).tolist() == [3.0, 4.0, 4.0]


@pytest.mark.parametrize("wrong", [
    lambda rewards, gamma: torch.flip(torch.cumsum(torch.flip(rewards, [0]), 0), [0]),  # no discount
    lambda rewards, gamma: torch.full_like(rewards, float(sum(gamma**k * r for k, r in enumerate(rewards)))),  # G_0 everywhere
    lambda rewards, gamma: torch.tensor([sum(gamma**k * r for k, r in enumerate(rewards[:t + 1]))  # reward-so-far
                                         for t in range(len(rewards))], dtype=rewards.dtype),
])
def test_reinforce_returns_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_reinforce_returns: case .* expected"):
        check_reinforce_returns(wrong)


# -- PPO clipped loss ---------------------------------------------------------------------------------


def good_clip_loss(ratio, adv, clip):
    return -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()


def test_ppo_clip_loss_accepts_the_reference_and_a_rewrite():
    assert check_ppo_clip_loss(lambda ratio, adv, clip: -ppo_clip_objective(ratio, adv, clip).mean()) == 7
    assert check_ppo_clip_loss(good_clip_loss) == 7


def test_ppo_clip_loss_hand_case():
    # A = +1, ratio 1.5 -> clipped to 1.2; A = -1, ratio 1.5 -> min(-1.5, -1.2) = -1.5 (not clipped)
    got = good_clip_loss(torch.tensor([1.5, 1.5]), torch.tensor([1.0, -1.0]), 0.2)
    assert float(got) == pytest.approx(-(1.2 - 1.5) / 2)


@pytest.mark.parametrize("wrong", [
    lambda ratio, adv, clip: torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean(),  # sign
    lambda ratio, adv, clip: -(ratio.clamp(1 - clip, 1 + clip) * adv).mean(),  # clip only, no min
    lambda ratio, adv, clip: -torch.maximum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean(),  # max
])
def test_ppo_clip_loss_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_ppo_clip_loss: case .* expected"):
        check_ppo_clip_loss(wrong)


# -- GRPO group advantages ----------------------------------------------------------------------------


def good_group_adv(rewards, group_size):
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).reshape(-1)


def test_group_advantages_accepts_the_reference_and_a_rewrite():
    assert check_group_advantages(lambda rewards, group_size: group_advantages(rewards, group_size)) == 6
    assert check_group_advantages(good_group_adv) == 6


def test_group_advantages_hand_case():
    # group (1, 0): mean 0.5, unbiased std 0.7071 -> +-0.7070; an all-equal group -> 0
    got = good_group_adv(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    assert got[:2].tolist() == pytest.approx([0.5 / (2**-0.5 + 1e-4), -0.5 / (2**-0.5 + 1e-4)])
    assert got[2:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("wrong", [
    lambda rewards, group_size: (rewards - rewards.mean()) / (rewards.std() + 1e-4),  # batch, not group
    lambda rewards, group_size: ((lambda g: (g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=False, keepdim=True)  # biased std
                                                                           + 1e-4))(rewards.view(-1, group_size))).reshape(-1),
    lambda rewards, group_size: ((lambda g: (g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True))  # no eps: nan
                                 (rewards.view(-1, group_size))).reshape(-1),
])
def test_group_advantages_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_group_advantages: case .* expected"):
        check_group_advantages(wrong)
