"""Every checker accepts the book's reference implementation and rejects plausible wrong answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcore.exercises import check_bellman_q, check_discounted_return, check_double_q_target, check_gae
from llmcore.foundation_rl.gae import compute_gae
from llmcore.foundation_rl.mdp import TabularMDP, q_from_v
from llmcore.foundation_rl.td_learning import double_q_target

# -- discounted return ------------------------------------------------------------------------------


def good_return(rewards, gamma):
    return sum(gamma**k * r for k, r in enumerate(rewards))


def test_discounted_return_accepts_a_correct_answer(capsys):
    assert check_discounted_return(good_return) == 6
    assert capsys.readouterr().out.startswith("PASS check_discounted_return")


def test_discounted_return_hand_case():
    assert good_return(np.array([1.0, 2.0, 4.0]), 0.5) == 1 + 1 + 1  # what the checker's reference also says


@pytest.mark.parametrize("wrong", [
    lambda rewards, gamma: float(np.sum(rewards)),  # forgot the discount
    lambda rewards, gamma: sum(gamma ** (k + 1) * r for k, r in enumerate(rewards)),  # off by one power
    lambda rewards, gamma: sum(gamma**k * r for k, r in enumerate(rewards[:-1])),  # dropped the last reward
])
def test_discounted_return_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_discounted_return: case .* expected"):
        check_discounted_return(wrong)


# -- Bellman backup ---------------------------------------------------------------------------------


def test_bellman_q_accepts_the_reference():
    ref = lambda P, R, gamma, V: q_from_v(TabularMDP(P=P, Pc=P, R=R, gamma=gamma, mu0=np.eye(len(V))[0]), V)  # noqa: E731
    assert check_bellman_q(ref) == 5
    assert check_bellman_q(lambda P, R, gamma, V: R + gamma * np.einsum("sap,p->sa", P, V)) == 5


@pytest.mark.parametrize("wrong", [
    lambda P, R, gamma, V: R + np.einsum("sap,p->sa", P, V),  # missing discount
    lambda P, R, gamma, V: R + gamma * np.einsum("sap,s->sa", P, V),  # V of the current state
    lambda P, R, gamma, V: (R + gamma * np.einsum("sap,p->sa", P, V)).max(1),  # V*, not Q (wrong shape)
])
def test_bellman_q_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_bellman_q"):
        check_bellman_q(wrong)


# -- Double Q target --------------------------------------------------------------------------------


def test_double_q_target_accepts_reference_and_hand_case():
    assert check_double_q_target(double_q_target) == 6
    # Q_A picks action 1, Q_B values it at -3: target = 1 + 0.5 * (-3)
    assert double_q_target([0.0, 2.0], [5.0, -3.0], 1.0, 0.5, False) == pytest.approx(-0.5)
    assert double_q_target([0.0, 2.0], [5.0, -3.0], 1.0, 0.5, True) == pytest.approx(1.0)


@pytest.mark.parametrize("wrong", [
    lambda q_select, q_eval, reward, gamma, terminated: reward + gamma * (1 - terminated) * np.max(q_eval),  # Q-learning
    lambda q_select, q_eval, reward, gamma, terminated: reward + gamma * q_eval[np.argmax(q_select)],  # no terminal mask
    lambda q_select, q_eval, reward, gamma, terminated: reward + gamma * (1 - terminated) * q_select[np.argmax(q_eval)],
])
def test_double_q_target_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_double_q_target"):
        check_double_q_target(wrong)


# -- GAE ----------------------------------------------------------------------------------------------


def loop_gae(rewards, values, dones, last_value, gamma, lam):
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    acc = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        nxt = last_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * (1 - dones[t]) * nxt - values[t]
        acc = delta + gamma * lam * (1 - dones[t]) * acc
        adv[t] = acc
    return adv


def test_gae_accepts_reference_loop_and_pair():
    assert check_gae(compute_gae) == 6  # returns (advantages, returns): accepted
    assert check_gae(loop_gae) == 6


def no_mask(rewards, values, dones, last_value, gamma, lam):
    return loop_gae(rewards, values, torch.zeros_like(dones), last_value, gamma, lam)


def no_gamma_in_trace(rewards, values, dones, last_value, gamma, lam):
    """Decays the trace by λ instead of γλ."""
    T = rewards.shape[0]
    adv, acc = torch.zeros_like(rewards), torch.zeros_like(last_value)
    for t in reversed(range(T)):
        nxt = last_value if t == T - 1 else values[t + 1]
        acc = rewards[t] + gamma * (1 - dones[t]) * nxt - values[t] + lam * (1 - dones[t]) * acc
        adv[t] = acc
    return adv


def returns_not_advantages(rewards, values, dones, last_value, gamma, lam):
    return loop_gae(rewards, values, dones, last_value, gamma, lam) + values


@pytest.mark.parametrize("wrong", [no_mask, no_gamma_in_trace, returns_not_advantages])
def test_gae_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_gae: case"):
        check_gae(wrong)


def test_a_crash_or_missing_return_is_reported_as_one_line():
    with pytest.raises(AssertionError, match="raised ZeroDivisionError"):
        check_discounted_return(lambda rewards, gamma: 1 / 0)
    with pytest.raises(AssertionError, match="returned None"):
        check_bellman_q(lambda P, R, gamma, V: None)
