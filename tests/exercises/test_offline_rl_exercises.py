"""The offline-RL checkers accept correct rewrites and reject plausible wrong answers with a message naming the case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmcore.exercises import check_behaviour_cloning, check_cql_loss


def good_bc(obs, actions, n_states, n_actions):
    counts = np.zeros((n_states, n_actions))
    for s, a in zip(obs, actions):
        counts[s, a] += 1
    n = counts.sum(1, keepdims=True)
    return np.where(n > 0, counts / np.maximum(n, 1), 1.0 / n_actions)


def test_behaviour_cloning_accepts_a_loop(capsys):
    assert check_behaviour_cloning(good_bc) == 5
    assert capsys.readouterr().out.startswith("PASS check_behaviour_cloning")
    # hand case: state 0 took a1 twice and a0 once; state 1 never visited
    assert np.allclose(good_bc([0, 0, 0], [1, 1, 0], 2, 2), [[1 / 3, 2 / 3], [0.5, 0.5]])


@pytest.mark.parametrize("wrong", [
    lambda obs, actions, n_states, n_actions: np.nan_to_num(good_bc(obs, actions, n_states, n_actions) * 0),
    lambda obs, actions, n_states, n_actions: np.where(good_bc(obs, actions, n_states, n_actions) == 1 / n_actions,
                                                       0.0, good_bc(obs, actions, n_states, n_actions)),  # 0, not uniform
])
def test_behaviour_cloning_rejects(wrong):
    with pytest.raises(AssertionError, match="check_behaviour_cloning: case"):
        check_behaviour_cloning(wrong)


def good_cql(q, actions, target, alpha):
    total = 0.0
    for row, a, y in zip(q.tolist(), actions.tolist(), target.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        total += alpha * (lse - row[a]) + 0.5 * (row[a] - y) ** 2
    return total / len(q)


def test_cql_loss_accepts_a_loop():
    assert check_cql_loss(good_cql) == 5
    # hand case: q = (0, 0), a = 0, y = 0, alpha = 1: log 2
    assert good_cql(torch.zeros(1, 2), torch.tensor([0]), torch.zeros(1), 1.0) == pytest.approx(math.log(2))


@pytest.mark.parametrize("wrong", [
    lambda q, actions, target, alpha: good_cql(q, actions, target, alpha) - 0.5 * alpha,  # shifted
    lambda q, actions, target, alpha: alpha * (q.max(1).values - q.gather(1, actions[:, None])[:, 0]).mean()
    + 0.5 * ((q.gather(1, actions[:, None])[:, 0] - target) ** 2).mean(),  # hard max instead of logsumexp
    lambda q, actions, target, alpha: alpha * (torch.logsumexp(q, 1) - q.gather(1, actions[:, None])[:, 0]).mean()
    + ((q.gather(1, actions[:, None])[:, 0] - target) ** 2).mean(),  # no 1/2 on the TD term
])
def test_cql_loss_rejects(wrong):
    with pytest.raises(AssertionError, match="check_cql_loss: case"):
        check_cql_loss(wrong)
