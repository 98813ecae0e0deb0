"""TD control on CliffWalking: closed-form paths, exact ε-greedy returns, SARSA vs Q-learning."""

import numpy as np
import pytest

from llmcore.core.errors import LLMCoreError
from llmcore.foundation_rl import td_learning as T
from llmcore.foundation_rl.mdp import from_gymnasium, value_iteration


@pytest.fixture(scope="module")
def mdp():
    env = T.make_env()
    m = from_gymnasium(env, gamma=1.0)
    env.close()
    return m


def test_optimal_path_is_the_13_step_cliff_edge(mdp):
    V, _, _, _ = value_iteration(mdp)
    Q = mdp.R + mdp.Pc @ V
    p = T.path_stats(T.greedy_path(Q))
    assert p == {"steps": 13, "reaches_goal": True, "edge_cells": 10, "top_row": 2}
    assert V[T.START] == pytest.approx(-13.0)
    assert T.eps_greedy_return(mdp, Q, 0.0) == pytest.approx(-13.0)


def test_eps_optimal_path_keeps_off_the_edge(mdp):
    Q = T.soft_value_iteration(mdp, 0.1)
    p = T.path_stats(T.greedy_path(Q))
    assert p["reaches_goal"] and p["edge_cells"] == 0 and p["steps"] > 13
    V, _, _, _ = value_iteration(mdp)
    Q_star = mdp.R + mdp.Pc @ V
    # under ε-greedy behaviour the safe path earns more than the optimal (edge) path
    assert T.eps_greedy_return(mdp, Q, 0.1) > T.eps_greedy_return(mdp, Q_star, 0.1) + 10


def test_eps_greedy_return_matches_simulation(mdp):
    Q = T.soft_value_iteration(mdp, 0.1)
    exact = T.eps_greedy_return(mdp, Q, 0.1)
    env = T.make_env()
    rng = np.random.default_rng(0)
    rets = []
    for ep in range(400):
        s, _ = env.reset(seed=ep)
        total, done = 0.0, False
        while not done:
            a = int(rng.integers(4)) if rng.random() < 0.1 else int(np.argmax(Q[s]))
            s, r, term, trunc, _ = env.step(a)
            total += r
            done = term or trunc
        rets.append(total)
    env.close()
    assert abs(np.mean(rets) - exact) < 4 * np.std(rets) / np.sqrt(len(rets))


def test_sarsa_beats_q_learning_online_small():
    res = T.experiment(toy=True, seed=0, runs=4, episodes=300)
    assert res.returns["sarsa"][:, 100:].mean() > res.returns["q_learning"][:, 100:].mean() + 5
    assert T.path_stats(T.greedy_path(T.mean_q(res, "q_learning")))["steps"] == 13


def test_draw_path():
    rows = T.draw_path(list(range(36, 24, -12)) + [24])
    assert rows[3].startswith("S") and rows[3].endswith("G") and "C" in rows[3]


def test_bad_epsilon(mdp):
    with pytest.raises(LLMCoreError):
        T.soft_value_iteration(mdp, 1.5)


def test_double_q_target_hand_case_batched():
    qa = np.array([[0.0, 2.0], [3.0, 1.0]])
    qb = np.array([[5.0, -3.0], [4.0, 9.0]])
    got = T.double_q_target(qa, qb, np.array([1.0, 0.0]), 0.5, np.array([False, True]))
    assert got == pytest.approx([1.0 + 0.5 * -3.0, 0.0])


def test_maximisation_bias_q_learning_goes_left_double_q_does_not():
    cfg = T.BiasConfig(runs=300, episodes=60)
    q = T.maximization_bias(cfg, double=False, seed=0)
    d = T.maximization_bias(cfg, double=True, seed=0)
    assert q.shape == d.shape == (60,)
    assert q[:50].mean() > d[:50].mean() + 0.2
    assert q.max() > 0.5
