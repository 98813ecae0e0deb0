"""Offline RL overview: a hand-computed dataset, collection determinism, the replayed learner and the exact values."""

import numpy as np
import pytest

from llmcore.core.errors import LLMCoreError
from llmcore.foundation_rl import mdp as M
from llmcore.offline_rl import offline_rl as O


def test_empirical_mdp_and_naive_fixed_point_by_hand(hand_data):
    emp = O.empirical_mdp(hand_data, 3, 2, gamma=0.5)
    assert emp.counts.tolist() == [[2, 0], [1, 1], [0, 0]]
    assert np.allclose(emp.behaviour, [[1, 0], [0.5, 0.5], [0.5, 0.5]])  # BC; uniform where no data
    assert emp.Pc[1, 1].sum() == 0 and emp.Pc[0, 0, 1] == 1  # the termination does not continue
    Q = O.offline_q_iteration(emp)
    # Q(1,1) = -1; Q(1,0) = -2 + .5 max(Q(0,0), Q(0,1) = 0 unseen) = -2; Q(0,0) = -1 + .5 max(-2, -1) = -1.5
    assert np.allclose(Q, [[-1.5, 0.0], [-2.0, -1.0], [0.0, 0.0]])
    # restricting the max to seen actions: Q(1,0) = -2 + .5 Q(0,0) = -2.75
    Qc = O.offline_q_iteration(emp, allowed=emp.seen | ~emp.state_seen[:, None])
    assert np.allclose(Qc[1, 0], -2.75) and np.allclose(Qc[0, 0], -1.5)


def test_replayed_q_learning_reaches_the_fixed_point(hand_data):
    emp = O.empirical_mdp(hand_data, 3, 2, gamma=0.5)
    Qr = O.q_learning_replay(hand_data, 3, 2, 0.5, lr=1.0, sweeps=30)
    assert np.allclose(Qr, O.offline_q_iteration(emp), atol=1e-9)


def test_collection_is_deterministic_and_records_behaviour_probs():
    env = O.make_env(50)
    pi = O.eps_greedy_policy(np.random.default_rng(0).normal(size=(48, 4)), 0.3)
    a, b = O.collect_tabular(env, pi, 5, seed=3), O.collect_tabular(env, pi, 5, seed=3)
    c = O.collect_tabular(env, pi, 5, seed=4)
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.obs, b.obs)
    assert not (len(a.actions) == len(c.actions) and np.array_equal(a.actions, c.actions))
    assert np.allclose(a.behaviour_probs, pi[a.obs]) and len(a.episode_returns) == 5
    assert np.all(np.diff(np.flatnonzero(a.truncated | a.terminated)) > 0)


def test_eps_greedy_policy_and_exact_value():
    Q = np.array([[0.0, 1.0], [2.0, 1.0]])
    assert np.allclose(O.eps_greedy_policy(Q, 0.2), [[0.1, 0.9], [0.9, 0.1]])
    mdp = O.true_mdp()
    Q_star = O.optimal_q(mdp)
    pi = M.greedy(Q_star)
    assert O.policy_value(mdp, pi) == pytest.approx(float(mdp.mu0 @ M.policy_evaluation_exact(mdp, pi)), abs=1e-9)
    # the optimal path along the cliff edge: 13 steps of -1
    assert O.policy_value(mdp, pi) == pytest.approx(-sum(0.99 ** k for k in range(13)), abs=1e-9)


def test_extrapolation_error_on_expert_data():
    mdp = O.true_mdp()
    Q_star = O.optimal_q(mdp)
    data = O.collect_tabular(O.make_env(100), O.eps_greedy_policy(Q_star, 0.0), 20, seed=0)
    emp = O.empirical_mdp(data, 48, 4, O.GAMMA)
    Qn = O.offline_q_iteration(emp)
    gap = O.extrapolation_gap(Qn, Q_star, emp)
    assert len(gap) > 0 and gap.min() >= 1.0  # unseen pairs stay at 0, every true value is <= -1
    assert O.policy_value(mdp, M.greedy(Qn)) < O.policy_value(mdp, M.greedy(Q_star)) - 50


def test_closed_loop_passes():
    res = O.experiment(O.OfflineConfig(), seed=1)
    rep = O.make_report(res, True, "cpu", 1)
    assert rep.passed, rep.failures()


def test_bad_input_is_one_clear_error(hand_data):
    with pytest.raises(LLMCoreError, match="pi must be"):
        O.collect_tabular(O.make_env(10), np.ones((3, 3)), 1, seed=0)
    emp = O.empirical_mdp(hand_data, 3, 2, gamma=0.5)
    with pytest.raises(LLMCoreError, match="allowed"):
        O.offline_q_iteration(emp, allowed=np.zeros((3, 2), bool))
    with pytest.raises(LLMCoreError, match="eps"):
        O.eps_greedy_policy(np.zeros((2, 2)), 1.5)
    with pytest.raises(LLMCoreError):
        O.OfflineConfig(episodes=0).validate()
