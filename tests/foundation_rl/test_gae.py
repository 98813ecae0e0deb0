"""GAE and returns: a hand-computed example, the λ identities, loop/vectorised/matrix agreement."""

import numpy as np
import pytest
import torch

from llmcore.core.errors import LLMCoreError
from llmcore.foundation_rl import gae as G


def _hand_case():
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.tensor([[0.5], [0.4], [0.3]])
    d = torch.tensor([[0.0], [1.0], [0.0]])
    return r, v, d, torch.tensor([0.2])


def test_gae_hand_computed():
    # δ0 = 1 + .9*.4 - .5 = .86; δ1 = 1 - .4 = .6 (done: no bootstrap); δ2 = 1 + .9*.2 - .3 = .88
    # A2 = .88; A1 = .6 (nothing flows back across the done); A0 = .86 + .9*.8*.6 = 1.292
    r, v, d, lv = _hand_case()
    adv, ret = G.compute_gae(r, v, d, lv, gamma=0.9, lam=0.8)
    assert torch.allclose(adv[:, 0], torch.tensor([1.292, 0.6, 0.88]), atol=1e-6)
    assert torch.allclose(ret, adv + v)
    assert torch.allclose(G.td_errors(r, v, d, lv, 0.9)[:, 0], torch.tensor([0.86, 0.6, 0.88]), atol=1e-6)
    assert torch.allclose(G.discounted_returns(r, d, lv, 0.9)[:, 0], torch.tensor([1.9, 1.0, 1.18]), atol=1e-6)


def _random_rollout(seed, T=40, N=5, p_done=0.15):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(T, N, generator=g, dtype=torch.float64)
    v = torch.randn(T, N, generator=g, dtype=torch.float64)
    d = (torch.rand(T, N, generator=g, dtype=torch.float64) < p_done).double()
    lv = torch.randn(N, generator=g, dtype=torch.float64)
    return r, v, d, lv


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_vectorised_equals_loop_and_matrix(seed, lam):
    r, v, d, lv = _random_rollout(seed)
    adv, _ = G.compute_gae(r, v, d, lv, 0.97, lam)
    assert torch.allclose(adv, G.compute_gae_loop(r, v, d, lv, 0.97, lam), atol=1e-10)
    assert torch.allclose(adv, G.compute_gae_matrix(r, v, d, lv, 0.97, lam), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_lambda_identities_across_dones(seed):
    r, v, d, lv = _random_rollout(seed)
    adv0, _ = G.compute_gae(r, v, d, lv, 0.9, 0.0)
    assert torch.allclose(adv0, G.td_errors(r, v, d, lv, 0.9), atol=1e-12)
    adv1, _ = G.compute_gae(r, v, d, lv, 0.9, 1.0)
    assert torch.allclose(adv1, G.discounted_returns(r, d, lv, 0.9) - v, atol=1e-10)


def test_lambda_one_equals_mc_summed_forward():
    r, v, d, lv = _random_rollout(3, T=25, N=3)
    adv1, _ = G.compute_gae(r, v, d, lv, 0.95, 1.0)
    T, N = r.shape
    for n in range(N):
        for t in range(T):
            acc, disc = 0.0, 1.0
            for k in range(t, T):
                acc += disc * float(r[k, n])
                disc *= 0.95
                if d[k, n]:
                    break
            else:
                acc += disc * float(lv[n])
            assert abs(float(adv1[t, n]) - (acc - float(v[t, n]))) < 1e-9


def test_truncation_bootstrap():
    # one env, an episode cut by a time limit at step 2 (value owed 5.0), then a new episode
    r = torch.ones(4, 1, dtype=torch.float64)
    v = torch.zeros(4, 1, dtype=torch.float64)
    trunc = torch.tensor([[0.0], [0.0], [1.0], [0.0]], dtype=torch.float64)
    final_v = torch.tensor([[0.0], [0.0], [5.0], [0.0]], dtype=torch.float64)
    rb = G.bootstrap_truncation(r, trunc, final_v, gamma=0.5)
    adv, _ = G.compute_gae(rb, v, trunc, torch.tensor([2.0], dtype=torch.float64), 0.5, 1.0)
    # G_2 = 1 + .5*5 = 3.5; G_1 = 1 + .5*3.5 = 2.75; G_0 = 1 + .5*2.75 = 2.375; G_3 = 1 + .5*2 = 2
    assert torch.allclose(adv[:, 0], torch.tensor([2.375, 2.75, 3.5, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
def test_forward_view_nstep_mixture(lam):
    r, v, d, lv = _random_rollout(4, T=12, N=3, p_done=0.2)
    _, ret = G.compute_gae(r, v, d, lv, 0.9, lam)
    assert torch.allclose(ret, G.lambda_returns_forward(r, v, d, lv, 0.9, lam), atol=1e-10)


def test_nstep_extremes():
    r, v, d, lv = _random_rollout(5, T=15, N=2)
    assert torch.allclose(G.nstep_returns(r, v, d, lv, 0.9, 1), G.td_errors(r, v, d, lv, 0.9) + v, atol=1e-12)
    assert torch.allclose(G.nstep_returns(r, v, d, lv, 0.9, 100), G.discounted_returns(r, d, lv, 0.9), atol=1e-10)


def test_td_lambda_backward_equals_forward():
    chain = G.ChainMDP()
    assert G.td_lambda_check(chain, 0.7, seed=0, episodes=10) < 1e-12


def test_chain_true_values_satisfy_bellman():
    chain = G.ChainMDP(gamma=0.9)
    V, Q = chain.true_values()
    pi = np.array([1 - chain.p_right, chain.p_right])
    assert np.allclose(Q @ pi, V, atol=1e-12)
    # Monte-Carlo estimate of V(0) agrees with the closed form
    d = chain.sample(4000, 300, np.random.default_rng(0))
    rets = G.discounted_returns(torch.as_tensor(d["rewards"]), torch.as_tensor(d["dones"]),
                                torch.zeros(4000, dtype=torch.float64), chain.gamma)[0]
    assert abs(float(rets.mean()) - V[0]) < 4 * float(rets.std()) / np.sqrt(4000)


def test_bias_falls_variance_rises():
    chain = G.ChainMDP()
    V, _ = chain.true_values()
    V_hat = V + 0.5 * np.random.default_rng(1).standard_normal(chain.n)
    bv = G.advantage_bias_variance(chain, [0.0, 0.5, 1.0], V_hat, episodes=1500, seed=0)
    assert bv["bias2"][0] > bv["bias2"][1] > bv["bias2"][2]
    assert bv["variance"][0] < bv["variance"][1] < bv["variance"][2]


def test_bad_input():
    r, v, d, lv = _hand_case()
    with pytest.raises(LLMCoreError):
        G.compute_gae(r, v, d, lv, gamma=1.5, lam=0.9)
    with pytest.raises(LLMCoreError):
        G.compute_gae(r, v[:2], d, lv, gamma=0.9, lam=0.9)
    with pytest.raises(LLMCoreError):
        G.compute_gae(r, v, d, torch.zeros(3), gamma=0.9, lam=0.9)


def test_lambda_weights_hand_case_and_sums():
    assert G.lambda_weights(0.5, 4) == pytest.approx([0.5, 0.25, 0.125, 0.0625])
    assert G.lambda_weights(0.5, 4, remaining=2) == pytest.approx([0.5, 0.5, 0.0, 0.0])  # tail mass on n=2
    assert G.lambda_weights(0.0, 3) == pytest.approx([1.0, 0.0, 0.0])
    for lam in (0.0, 0.3, 0.9, 1.0):
        assert G.lambda_weights(lam, 12, remaining=10).sum() == pytest.approx(1.0)
