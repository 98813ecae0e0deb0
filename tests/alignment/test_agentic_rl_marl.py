"""SpreadGrid (PettingZoo API, determinism, a hand-computed reward) and MAPPO/IPPO's critic inputs and GAE."""

import dataclasses

import numpy as np
import torch

from llmcore.alignment.agentic_rl import marl
from llmcore.foundation_rl.gae import compute_gae


def test_pettingzoo_api_checks_pass():
    assert all(marl.api_checks(marl.MARLConfig.for_mode(True).env, num_cycles=50).values())


def test_env_deterministic_per_seed():
    def rollout(seed):
        env = marl.SpreadGrid()
        obs, _ = env.reset(seed=seed)
        out = [np.concatenate(list(obs.values()))]
        rng = np.random.default_rng(0)
        while env.agents:
            obs, rew, *_ = env.step({a: int(rng.integers(5)) for a in env.agents})
            out.append(np.concatenate([*obs.values(), [rew["agent_0"]]]))
        return np.concatenate(out)

    assert np.array_equal(rollout(3), rollout(3))
    assert not np.array_equal(rollout(3), rollout(4))


def test_team_reward_hand_computed():
    agents = np.array([[[0, 0], [2, 2], [4, 4]]])
    lm = np.array([[[0, 1], [2, 2], [3, 4]]])
    # nearest-agent distances 1 + 0 + 1; no collisions
    assert marl.team_reward(agents, lm, 1.0)[0] == -2.0
    # agents 1 and 2 on one cell: landmark 2 is now 3 away from (2, 2), one colliding pair
    agents2 = np.array([[[0, 0], [2, 2], [2, 2]]])
    assert marl.team_reward(agents2, lm, 1.5)[0] == -(1 + 0 + 3) - 1.5
    assert marl.team_reward(agents2, lm, 0.0, cover_bonus=2.0)[0] == -4 + 2.0  # one landmark covered
    # walls clip moves; obs and state shapes and ranges
    assert marl.move(np.array([[[0, 0], [4, 4]]]), np.array([[3, 1]]), 5).tolist() == [[[0, 0], [4, 4]]]
    o = marl.local_obs(agents, lm, 0, 10, 5, view=1)
    assert o.shape == (1, 3, marl.obs_dim(3)) and o.dtype == np.float32 and np.abs(o).max() <= 1
    assert o[0, 0, 8:14].tolist() == [0.0] * 6  # agent 0 sees neither other agent (view 1)
    assert marl.global_state(agents, lm, 0, 10, 5).shape == (1, marl.state_dim(3))


def test_centralised_critic_reads_state_ippo_reads_local_obs():
    obs, state = torch.randn(7, 3, marl.obs_dim(3)), torch.randn(7, marl.state_dim(3))
    assert marl.critic_input("mappo", obs, state) is state
    x = marl.critic_input("ippo", obs, state)
    assert x.shape == (7, 3, marl.obs_dim(3) + 3)
    assert torch.equal(x[..., : marl.obs_dim(3)], obs) and torch.equal(x[0, :, -3:], torch.eye(3))


def test_advantages_match_foundation_gae():
    T, E, N = 6, 4, 3
    g = torch.Generator().manual_seed(0)
    r = torch.randn(T, E, generator=g)
    d = torch.zeros(T, E)
    d[-1] = 1
    v = torch.randn(T, E, generator=g)
    adv, ret = marl.advantages("mappo", r, v, d, N, 0.9, 0.8)
    ref, ref_ret = compute_gae(r, v, d, torch.zeros(E), 0.9, 0.8)
    assert adv.shape == (T, E, N) and ret.shape == (T, E)
    assert torch.allclose(adv[..., 2], ref) and torch.allclose(ret, ref_ret)
    vi = torch.randn(T, E, N, generator=g)
    adv_i, ret_i = marl.advantages("ippo", r, vi, d, N, 0.9, 0.8)
    assert adv_i.shape == ret_i.shape == (T, E, N)
    ref1, _ = compute_gae(r, vi[..., 1], d, torch.zeros(E), 0.9, 0.8)  # agent 1's column on the team reward
    assert torch.allclose(adv_i[..., 1], ref1)


def test_short_training_beats_random():
    cfg = dataclasses.replace(marl.MARLConfig.for_mode(True), iterations=40, envs=32, eval_episodes=128)
    layouts = marl.sample_layout(np.random.default_rng(1), cfg.eval_episodes, cfg.size, cfg.n_agents)
    rnd = marl.evaluate(cfg, layouts, "random")
    plan = marl.evaluate(cfg, layouts, "planner")
    for algo in marl.ALGOS:
        res = marl.train(cfg, algo, 0, layouts)
        assert res.curve.shape == (40,) and res.final_return > rnd + 0.1 * (plan - rnd), (algo, res.final_return, rnd)


def test_reference_policies_hand_computed():
    agents = np.array([[[0, 0], [1, 0]]])
    lm = np.array([[[0, 2], [4, 0]]])
    # both landmarks are 3 from agent 1; its nearest is the first, which agent 0 also heads for
    assert marl.nearest_actions(agents, lm).tolist() == [[1, 3]]  # up, left
    # the Hungarian assignment (SciPy) sends agent 1 to the other landmark instead
    assert marl.assignment_actions(agents, lm).tolist() == [[1, 4]]  # up, right
