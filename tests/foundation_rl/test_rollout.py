"""Rollout collection over gymnasium.vector envs: done / truncation boundaries, episode stats, seeding."""

import numpy as np
import pytest
import torch

from llmcore.core.errors import LLMCoreError
from llmcore.foundation_rl.rollout import Collector, EpisodeStats, collect_episodes, make_vec_env


def always(action: int):
    def policy(obs):
        n = obs.shape[0]
        return torch.full((n,), action, dtype=torch.long), torch.zeros(n), torch.zeros(n)
    return policy


def test_truncation_boundaries_and_final_values():
    # a 4-step time limit; pushing right-left alternately keeps the pole up for 4 steps
    envs = make_vec_env("CartPole-v1", 3, max_episode_steps=4)
    col = Collector(envs, seed=0)

    def alternate(obs, _t=[0]):  # noqa: B006 - a step counter
        _t[0] += 1
        n = obs.shape[0]
        return torch.full((n,), _t[0] % 2, dtype=torch.long), torch.zeros(n), torch.zeros(n)

    ro = col.collect(alternate, 12, value_fn=lambda o: o.sum(-1) + 100.0)
    expected = torch.zeros(12, 3)
    expected[[3, 7, 11]] = 1.0
    assert torch.equal(ro.truncations, expected)
    assert torch.equal(ro.terminations, torch.zeros(12, 3))
    assert torch.equal(ro.dones, expected)
    # V(s_final) of the cut state is stored where truncated (values are > 90 there, 0 elsewhere)
    assert (ro.final_values[[3, 7, 11]] > 90).all() and (ro.final_values[ro.truncations == 0] == 0).all()
    # after a done the next stored observation is a fresh reset state (|x| <= 0.05), not the final one
    assert (ro.obs[[4, 8]].abs() <= 0.05).all()
    assert torch.allclose(ro.last_value, ro.last_obs.sum(-1) + 100.0)
    assert col.stats.lengths == [4] * 9 and col.stats.returns == [4.0] * 9
    assert col.global_step == 36
    col.close()


def test_termination_boundaries_and_episode_stats():
    envs = make_vec_env("CartPole-v1", 2)
    col = Collector(envs, seed=3)
    ro = col.collect(always(0), 40)  # always push left: the pole falls after ~10 steps
    assert ro.terminations.sum() >= 4 and ro.truncations.sum() == 0
    assert torch.equal(ro.final_values, torch.zeros(40, 2))  # no value_fn: nothing owed
    # the stats' episode returns are the sums of rewards between done flags
    for n in range(2):
        ends = torch.nonzero(ro.dones[:, n]).flatten().tolist()
        starts = [0] + [e + 1 for e in ends[:-1]]
        sums = [float(ro.rewards[s:e + 1, n].sum()) for s, e in zip(starts, ends)]
        assert all(s == e - s0 + 1 for s, s0, e in zip(sums, starts, ends))
    assert sorted(col.stats.returns) == sorted(float(x) for x in col.stats.lengths)
    assert len(col.stats.returns) == int(ro.dones.sum())
    col.close()


def test_rollouts_continue_across_calls():
    envs = make_vec_env("CartPole-v1", 2)
    col = Collector(envs, seed=1)
    a = col.collect(always(1), 5)
    b = col.collect(always(1), 5)
    assert torch.equal(b.obs[0], a.last_obs)
    col.close()


def _rollout(seed: int):
    torch.manual_seed(123)
    envs = make_vec_env("CartPole-v1", 4)
    col = Collector(envs, seed=seed)

    def policy(obs):
        a = torch.randint(0, 2, (obs.shape[0],))
        return a, torch.zeros(obs.shape[0]), None

    ro = col.collect(policy, 50)
    col.close()
    return ro


def test_seeding_reproducible():
    a, b, c = _rollout(7), _rollout(7), _rollout(8)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards) and torch.equal(a.dones, b.dones)
    assert not torch.equal(a.obs, c.obs)


def test_episode_stats_curve():
    st = EpisodeStats(2)
    for t in range(10):
        st.update(np.ones(2), np.array([t % 2 == 1, t % 5 == 4]))
    # env 0 ends every 2 steps (return 2), env 1 every 5 (return 5); in order of finishing:
    assert st.returns == [2.0, 2.0, 5.0, 2.0, 2.0, 2.0, 5.0]
    assert st.lengths == [2, 2, 5, 2, 2, 2, 5]
    steps, mean = st.curve(k=2)
    assert steps.tolist() == [4, 8, 10, 12, 16, 20, 20]
    assert np.allclose(mean, [2.0, 2.0, 3.5, 3.5, 2.0, 2.0, 3.5])
    assert st.mean_last(3) == pytest.approx(3.0)
    assert st.first_step_reaching(3.5, k=2) == 10
    assert st.first_step_reaching(4.0, k=2) is None


def test_collect_episodes_whole_episodes():
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    eps = collect_episodes(env, lambda o: 0, 3, seed=0)
    env.close()
    assert len(eps) == 3 and all(len(e["rewards"]) == len(e["obs"]) == len(e["actions"]) for e in eps)
    assert not any(e["truncated"] for e in eps)


def test_bad_env_errors():
    import gymnasium as gym

    with pytest.raises(LLMCoreError):
        make_vec_env("NoSuchEnv-v0", 2)
    envs = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")  # NEXT_STEP autoreset
    with pytest.raises(LLMCoreError):
        Collector(envs, seed=0)
