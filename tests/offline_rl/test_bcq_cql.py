"""BCQ / CQL: losses on hand-computed cases, the paper's formula in float64, the tabular limits and bounds."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcore.core.errors import LLMCoreError
from llmcore.foundation_rl import mdp as M
from llmcore.offline_rl import bcq_cql as B
from llmcore.offline_rl import offline_rl as O
from llmcore.offline_rl.bcq_cql import closed_loop


def test_cql_loss_hand_computed():
    q = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    a, y = torch.tensor([1, 0]), torch.tensor([1.5, 1.0], dtype=torch.float64)
    # row 1: logsumexp = log(e + e^2), conservative = that - 2, td = (2 - 1.5)^2 / 2 = 0.125
    # row 2: logsumexp = log 2, conservative = log 2, td = (0 - 1)^2 / 2 = 0.5
    cons = [math.log(math.e + math.e ** 2) - 2.0, math.log(2.0)]
    want = (0.125 + 0.5) / 2 + 0.5 * sum(cons) / 2
    loss, parts = B.cql_loss(q, a, y, alpha=0.5)
    assert float(loss) == pytest.approx(want, abs=1e-12)
    assert parts["conservative"] == pytest.approx(sum(cons) / 2, abs=1e-12)
    assert B.cql_loss_float64(q.numpy(), a.numpy(), y.numpy(), 0.5) == pytest.approx(want, abs=1e-12)


def test_cql_loss_equals_the_papers_formula_and_dqn_at_alpha_0():
    assert B.loss_cross_check(seed=3) < 1e-10
    g = torch.Generator().manual_seed(0)
    q, y = torch.randn(32, 3, generator=g), torch.randn(32, generator=g)
    a = torch.randint(0, 3, (32,), generator=g)
    loss, _ = B.cql_loss(q, a, y, alpha=0.0)
    assert torch.allclose(loss, 0.5 * F.mse_loss(q.gather(1, a[:, None]).squeeze(1), y))
    # the conservative term is >= 0 and 0 only when Q(s, a_data) dominates every other action
    assert B.cql_loss(torch.tensor([[50.0, 0.0]]), torch.tensor([0]), torch.tensor([50.0]), 1.0)[1]["conservative"] < 1e-20


def test_table_gradient_equals_autograd_over_raw_transitions():
    data = O.collect_tabular(O.make_env(30), O.eps_greedy_policy(np.zeros((48, 4)), 0.5), 4, seed=1)
    emp = O.empirical_mdp(data, 48, 4, 0.9)
    Q = np.random.default_rng(0).normal(size=(48, 4))
    y = emp.R + emp.gamma * emp.Pc @ Q.max(1)
    Qt = torch.tensor(Q, requires_grad=True)
    targets = torch.as_tensor(data.rewards + 0.9 * (~data.terminated) * Q.max(1)[data.next_obs])
    B.cql_loss(Qt[torch.as_tensor(data.obs)], torch.as_tensor(data.actions), targets, 0.7)[0].backward()
    assert np.allclose(B.cql_table_gradient(Q, emp, y, 0.7), Qt.grad.numpy(), atol=1e-12)


def test_bcq_filter_and_tabular_limits(hand_data):
    allowed = B.bcq_allowed(np.array([0.6, 0.3, 0.1]), 0.5)
    assert allowed.tolist() == [True, True, False]
    assert B.bcq_allowed(np.array([0.6, 0.3, 0.1]), 0.0).all()
    assert B.bcq_allowed(torch.tensor([[0.6, 0.3, 0.1]]), 1.0).tolist() == [[True, False, False]]
    emp = O.empirical_mdp(hand_data, 3, 2, gamma=0.5)
    Q0, _ = B.tabular_bcq(emp, 0.0)
    assert np.array_equal(Q0, O.offline_q_iteration(emp))  # tau = 0: naive Q-learning
    Q1, pi1 = B.tabular_bcq(emp, 1.0)
    assert Q1[1, 0] == pytest.approx(-2.75) and pi1[0] == 0  # tau = 1: the max reads only the data's action


def test_cql_evaluation_closed_form_by_hand_and_lower_bound(hand_data):
    # one state, two actions, beta = (0.75, 0.25), pi = (0.5, 0.5), r = -1 for both, never terminates
    d = O.Dataset("one", np.zeros(4, int), np.array([0, 0, 0, 1]), -np.ones(4), np.zeros(4, int), np.zeros(4, bool),
                  np.zeros(4, bool), np.full((4, 2), 0.5), np.zeros(1))
    emp = O.empirical_mdp(d, 1, 2, gamma=0.5)
    # D = .25/.75 + .25/.25 - 1 = 1/3; V = (-1 - alpha/3) / (1 - .5)
    V = B.cql_policy_evaluation(emp, np.array([[0.5, 0.5]]), alpha=3.0)
    assert V[0] == pytest.approx((-1 - 1.0) / 0.5)
    assert B.cql_policy_evaluation(emp, np.array([[0.5, 0.5]]), alpha=0.0)[0] == pytest.approx(-2.0)
    with pytest.raises(LLMCoreError, match="never take"):
        B.cql_policy_evaluation(O.empirical_mdp(hand_data, 3, 2, 0.5), np.array([[0, 1.0], [1, 0], [1, 0]]), 1.0)


def test_tabular_cql_stays_on_the_data_and_bounds_the_true_value():
    mdp = O.true_mdp()
    Q_star = O.optimal_q(mdp)
    data = O.collect_tabular(O.make_env(100), O.eps_greedy_policy(Q_star, 0.1), 100, seed=0)
    emp = O.empirical_mdp(data, 48, 4, O.GAMMA)
    Q = B.train_tabular_cql(emp, alpha=3.0, steps=1500)
    pi = M.greedy(Q)
    assert np.all(emp.seen[np.arange(48), pi] | ~emp.state_seen)  # never an unseen action where there is data
    assert O.policy_value(mdp, pi) == pytest.approx(O.policy_value(mdp, M.greedy(Q_star)), abs=1e-9)
    pim = np.eye(4)[pi]
    V_hat = B.cql_policy_evaluation(emp, pim, 3.0)
    V_true, _ = M.evaluate_stochastic(mdp, pim)
    ok = B.closed_states(mdp, pim, emp)
    assert ok[36] and np.all((V_hat - V_true)[ok] <= 1e-9) and (V_hat - V_true)[36] < 0


def test_bcq_loss_parts():
    q = torch.tensor([[1.0, 3.0]])
    logits = torch.tensor([[0.0, math.log(3.0)]])  # G = (0.25, 0.75)
    loss, parts = B.bcq_loss(q, logits, torch.tensor([1]), torch.tensor([1.0]), logit_reg=0.0)
    assert parts["td"] == pytest.approx(2.0 - 0.5)  # Huber beyond 1: |x| - 0.5
    assert parts["ce"] == pytest.approx(-math.log(0.75))
    assert float(loss) == pytest.approx(1.5 - math.log(0.75))


def test_cartpole_collection_and_learners_start():
    def uniform(obs):
        return torch.full((len(obs), 2), 0.5)

    a, b = B.collect_cartpole(uniform, 64, seed=5), B.collect_cartpole(uniform, 64, seed=5)
    assert a.size == 64 and np.array_equal(a.actions, b.actions) and np.allclose(a.obs, b.obs)
    assert np.allclose(a.behaviour_probs, 0.5) and a.next_obs.shape == (64, 4)
    for algo in B.ALGOS:
        run = B.train_offline(a, B.NeuralConfig(algo=algo, steps=10, batch=8, eval_every=5, eval_episodes=2), seed=0)
        assert run.curve_steps == [0, 5, 10] and len(run.final_returns) == 2
    full = B.BCQCQLConfig.for_mode(False)
    full.validate()
    assert full.seeds == 5 and full.neural.steps > B.BCQCQLConfig.for_mode(True).neural.steps


def test_bad_input_is_one_clear_error():
    with pytest.raises(LLMCoreError, match="algo"):
        B.NeuralConfig(algo="iql").validate()
    with pytest.raises(LLMCoreError, match="tau"):
        B.bcq_allowed(np.ones(2), 1.5)
    with pytest.raises(LLMCoreError, match="dataset"):
        replace(B.BCQCQLConfig(), datasets=("d4rl",)).validate()
    with pytest.raises(LLMCoreError, match="alpha"):
        B.cql_loss(torch.zeros(1, 2), torch.zeros(1), torch.zeros(1), -1.0)


def test_cartpole_data_follow_data_seed_not_run_seed(monkeypatch):
    """The CartPole benchmark data are fixed by cfg.data_seed: the run seed must not reach cartpole_datasets."""
    seen = []

    class Stop(Exception):
        pass

    def record(cfg, seed):
        seen.append(seed)
        raise Stop

    monkeypatch.setattr(closed_loop, "cartpole_datasets", record)
    cfg = replace(B.BCQCQLConfig(), tabular_episodes=2, cql_steps=2, taus=(0.0, 1.0), alphas=(0.0, 1.0), data_seed=7)
    for run_seed in (0, 3):
        with pytest.raises(Stop):
            B.experiment(cfg, seed=run_seed)
    assert seen == [7, 7]
    with pytest.raises(LLMCoreError, match="data_seed"):
        replace(B.BCQCQLConfig(), data_seed=-1).validate()
