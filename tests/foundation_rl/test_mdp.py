"""MDP dynamic programming against closed forms, scipy's LP and the real gymnasium env."""

import numpy as np
import pytest

from llmcore.core import LLMCoreError
from llmcore.foundation_rl import mdp as M


def two_state_mdp(gamma=0.9):
    """s0 --a0--> s0 (r=1) ; s0 --a1--> s1 (r=0) ; s1 --any--> s1 (r=2). Closed form below."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = 1
    P[0, 1, 1] = 1
    P[1, :, 1] = 1
    R = np.array([[1.0, 0.0], [2.0, 2.0]])
    return M.TabularMDP(P=P, Pc=P.copy(), R=R, gamma=gamma, mu0=np.array([1.0, 0.0]),
                        terminal=np.array([False, False]))


def test_two_state_closed_form():
    g = 0.9
    mdp = two_state_mdp(g)
    v1 = 2 / (1 - g)  # stay in s1 forever
    v0 = max(1 / (1 - g), g * v1)  # loop for 1s, or move on to collect 2s
    V, pi, _, _ = M.value_iteration(mdp)
    assert np.allclose(V, [v0, v1], atol=1e-9)
    assert pi[0] == 1
    Vp, pip, _ = M.policy_iteration(mdp)
    assert np.allclose(Vp, V, atol=1e-9) and np.array_equal(pip, pi)
    assert np.allclose(M.solve_lp(mdp), V, atol=1e-6)
    assert M.bellman_residual(mdp, V) < 1e-9
    Ve, _ = M.policy_evaluation(mdp, np.array([0, 0]))
    assert np.allclose(Ve, [1 / (1 - g), v1])


@pytest.fixture(scope="module")
def lake():
    env = M.make_env("4x4")
    return env, M.from_gymnasium(env, 0.99)


def test_five_tuple_from_gymnasium(lake):
    env, mdp = lake
    assert mdp.P.shape == (16, 4, 16) and mdp.R.shape == (16, 4)
    assert np.allclose(mdp.P.sum(-1), 1)
    # slippery: intended direction and the two perpendicular ones, 1/3 each
    assert np.isclose(mdp.P[14, 2, 15], 1 / 3) and np.isclose(mdp.R[14, 2], 1 / 3)
    assert mdp.terminal.sum() == 5  # 4 holes and the goal
    assert np.all(mdp.Pc[mdp.terminal] == 0)


def test_vi_pi_lp_agree_on_frozenlake(lake):
    _, mdp = lake
    V, pi, _, _ = M.value_iteration(mdp)
    Vp, pip, _ = M.policy_iteration(mdp)
    Vl = M.solve_lp(mdp)
    assert np.max(np.abs(V - Vp)) < 1e-8 and np.max(np.abs(V - Vl)) < 1e-6
    assert np.array_equal(pi[~mdp.terminal], pip[~mdp.terminal])
    assert np.allclose(M.policy_evaluation_exact(mdp, pi), V, atol=1e-8)


def test_simulation_matches_exact_success(lake):
    env, mdp = lake
    _, pi, _, _ = M.value_iteration(mdp)
    p = float(mdp.mu0 @ M.finite_horizon_success(mdp, pi, env.spec.max_episode_steps))
    n = 2000
    rate = M.simulate(env, pi, n, seed=1, show_progress=False).mean()
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_bad_input():
    with pytest.raises(LLMCoreError):
        M.make_env("5x5")
    env = M.make_env("4x4")
    with pytest.raises(LLMCoreError, match="gamma"):
        M.from_gymnasium(env, 1.5)


def test_run_report_passes():
    rep = M.run(toy=True, device="cpu", seed=0)
    assert rep.passed, rep.failures()


def test_stochastic_evaluation_hand_case_and_deterministic_special_case():
    mdp = two_state_mdp(0.9)
    # uniform policy: V(s1) = 2 / 0.1 = 20; V(s0) = 0.5 * (1 + 0.9 V(s0)) + 0.5 * (0 + 0.9 * 20)
    #  => V(s0) (1 - 0.45) = 0.5 + 9  => V(s0) = 9.5 / 0.55
    V, Q = M.evaluate_stochastic(mdp, np.full((2, 2), 0.5))
    assert V == pytest.approx([9.5 / 0.55, 20.0])
    assert np.allclose(V, (0.5 * Q).sum(1))
    for pi in ([0, 0], [1, 0]):
        V_det, _ = M.evaluate_stochastic(mdp, M.policy_matrix(np.array(pi), 2))
        assert np.allclose(V_det, M.policy_evaluation_exact(mdp, np.array(pi)))
    with pytest.raises(LLMCoreError, match="matrix of probabilities"):
        M.evaluate_stochastic(mdp, np.full((2, 2), 0.7))


def test_policy_improvement_is_monotone_and_ends_at_v_star():
    mdp = M.from_gymnasium(M.make_env("4x4"), 0.99)
    trace = M.improvement_trace(mdp)
    assert len(trace) >= 2
    assert all((b - a).min() >= -1e-10 for a, b in zip(trace, trace[1:]))
    assert np.max(np.abs(trace[-1] - M.value_iteration(mdp)[0])) < 1e-8


def test_finite_horizon_value_of_a_one_hot_policy_equals_the_deterministic_one():
    mdp = M.from_gymnasium(M.make_env("4x4"), 0.99)
    pi = M.value_iteration(mdp)[1]
    assert np.allclose(M.finite_horizon_value(mdp, M.policy_matrix(pi, 4), 100), M.finite_horizon_success(mdp, pi, 100))
