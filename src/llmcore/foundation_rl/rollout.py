r"""Shared RL plumbing: seeded vector envs, on-policy rollout collection, episode statistics.

Used by every on-policy chapter (PG/AC, PPO-RLHF, GRPO, MAPPO). Conventions (cleanrl-style):

* arrays are **time-major** ``(T, N)`` — ``T`` steps of ``N`` parallel envs;
* step ``t`` is one real transition :math:`(s_t, a_t, r_t, s'_t)`; ``dones[t] = 1`` means the
  episode *ended at* step ``t`` (after :math:`r_t`), so nothing may bootstrap or flow backwards
  from step ``t+1`` into step ``t``;
* ``dones = terminations | truncations``. A **termination** is a real end of the MDP
  (the value after it is 0). A **truncation** (a time limit) is not: the episode was cut, and the
  value of the state it was cut in, :math:`V(s_{\text{final}})`, is still owed. The collector
  stores that value in ``final_values`` and :func:`llmcore.foundation_rl.gae.bootstrap_truncation`
  folds it into the reward, :math:`r_t \leftarrow r_t + \gamma V(s_{\text{final}})`, after which
  a truncation is handled exactly like a termination (Pardo et al. 2018, *Time Limits in RL*).

Vector envs run in gymnasium's ``SAME_STEP`` autoreset mode: when a sub-env finishes, ``step``
returns the first observation of its next episode and puts the last one in
``info["final_obs"]`` — so every stored step is a real transition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from llmcore.core.errors import LLMCoreError, check_range

#: ``policy(obs (N, obs_dim) float tensor) -> (actions (N,), logprobs (N,), values (N,) | None)``
PolicyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]]
#: ``value_fn(obs (K, obs_dim) float tensor) -> values (K,)``
ValueFn = Callable[[torch.Tensor], torch.Tensor]


def make_vec_env(env_id: str = "CartPole-v1", num_envs: int = 8, **env_kwargs):
    """A ``gymnasium.vector.SyncVectorEnv`` of ``num_envs`` copies in ``SAME_STEP`` autoreset mode.

    Seeding happens in :class:`Collector` (``reset(seed=seed)`` seeds sub-env ``i`` with ``seed + i``).
    """
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    check_range("num_envs", num_envs, 1, 4096)
    try:
        return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **env_kwargs)
    except gym.error.Error as e:  # unknown id, bad kwargs
        raise LLMCoreError(f"cannot make vector env {env_id!r}: {e}") from e


class EpisodeStats:
    """Episode returns and lengths as they finish, cleanrl-style (score = mean of the last 100).

    Call :meth:`update` once per vector step with that step's rewards and done flags ``(N,)``.
    """

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        self._ret = np.zeros(num_envs)
        self._len = np.zeros(num_envs, dtype=np.int64)
        self.returns: list[float] = []  # undiscounted return of each finished episode, in order
        self.lengths: list[int] = []
        self.end_steps: list[int] = []  # global env step (all envs together) at which it finished
        self.global_step = 0

    def update(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self._ret += rewards
        self._len += 1
        self.global_step += self.num_envs
        for i in np.flatnonzero(dones):
            self.returns.append(float(self._ret[i]))
            self.lengths.append(int(self._len[i]))
            self.end_steps.append(self.global_step)
            self._ret[i] = 0.0
            self._len[i] = 0

    def mean_last(self, k: int = 100) -> float:
        """Mean return of the last ``k`` finished episodes (nan before the first one)."""
        return float(np.mean(self.returns[-k:])) if self.returns else float("nan")

    def curve(self, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, mean of the last k returns)`` after every finished episode — the learning curve."""
        r = np.asarray(self.returns, dtype=float)
        if len(r) == 0:
            return np.zeros(0), np.zeros(0)
        c = np.cumsum(np.insert(r, 0, 0.0))
        idx = np.arange(1, len(r) + 1)
        lo = np.maximum(idx - k, 0)
        return np.asarray(self.end_steps), (c[idx] - c[lo]) / (idx - lo)

    def first_step_reaching(self, threshold: float, k: int = 100) -> int | None:
        """Env steps until the last-``k`` mean first reached ``threshold`` (needs ``k`` episodes)."""
        steps, mean = self.curve(k)
        ok = np.flatnonzero((mean >= threshold) & (np.arange(1, len(mean) + 1) >= k))
        return int(steps[ok[0]]) if len(ok) else None


@dataclass
class Rollout:
    """``T`` steps of ``N`` envs (time-major). Shapes in brackets."""

    obs: torch.Tensor  # (T, N, *obs_shape) observation s_t the action was taken in
    actions: torch.Tensor  # (T, N, *act_shape)
    logprobs: torch.Tensor  # (T, N) log pi_old(a_t | s_t) at collection time
    values: torch.Tensor  # (T, N) V(s_t) at collection time (zeros if the policy has no critic)
    rewards: torch.Tensor  # (T, N) r_t as the env returned it
    terminations: torch.Tensor  # (T, N) 1.0 where the MDP really ended at step t
    truncations: torch.Tensor  # (T, N) 1.0 where a time limit cut the episode at step t
    final_values: torch.Tensor  # (T, N) V(s_final) where truncated, else 0
    last_obs: torch.Tensor  # (N, *obs_shape) observation after the last step
    last_value: torch.Tensor  # (N,) V(last_obs) for bootstrapping the unfinished episodes
    extras: dict = field(default_factory=dict)

    @property
    def dones(self) -> torch.Tensor:
        """(T, N) 1.0 where the episode ended at step t (termination or truncation)."""
        return torch.clamp(self.terminations + self.truncations, max=1.0)

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]


class Collector:
    """Steps a vector env with a policy and returns fixed-length :class:`Rollout` s.

    Keeps the current observations between calls (a rollout continues where the last one
    stopped, as in PPO/A2C) and the :class:`EpisodeStats`. Seeding: ``envs.reset(seed=seed)``
    seeds sub-env ``i`` with ``seed + i``; the action space with ``seed``.
    """

    def __init__(self, envs, seed: int, device: str | torch.device = "cpu"):
        from gymnasium.vector import AutoresetMode

        mode = envs.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise LLMCoreError(f"Collector needs a SAME_STEP autoreset vector env (use make_vec_env), got {mode}")
        self.envs = envs
        self.device = torch.device(device)
        self.num_envs = envs.num_envs
        obs, _ = envs.reset(seed=seed)
        envs.action_space.seed(seed)
        self.obs = self._t(obs)
        self.stats = EpisodeStats(self.num_envs)

    def _t(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)

    @property
    def global_step(self) -> int:
        return self.stats.global_step

    @torch.no_grad()
    def collect(self, policy: PolicyFn, num_steps: int, value_fn: ValueFn | None = None) -> Rollout:
        """Run ``num_steps`` vector steps. ``value_fn`` (the critic) values truncated final states and
        the last observation; without it they are 0 (truncation then acts like termination)."""
        check_range("num_steps", num_steps, 1, 10**7)
        T, N = num_steps, self.num_envs
        obs_buf = torch.zeros((T, *self.obs.shape), device=self.device)
        act_buf: list[torch.Tensor] = []
        logp = torch.zeros(T, N, device=self.device)
        vals = torch.zeros(T, N, device=self.device)
        rew = torch.zeros(T, N, device=self.device)
        term = torch.zeros(T, N, device=self.device)
        trunc = torch.zeros(T, N, device=self.device)
        final_v = torch.zeros(T, N, device=self.device)
        for t in range(T):
            obs_buf[t] = self.obs
            action, logprob, value = policy(self.obs)
            act_buf.append(action)
            logp[t] = logprob
            if value is not None:
                vals[t] = value
            next_obs, r, te, tr, info = self.envs.step(action.cpu().numpy())
            self.stats.update(r, te | tr)
            rew[t] = self._t(r)
            term[t] = self._t(te)
            trunc[t] = self._t(tr)
            if value_fn is not None and tr.any():
                idx = np.flatnonzero(tr)  # value of the state the time limit cut the episode in
                final_v[t, idx] = value_fn(self._t(np.stack([info["final_obs"][i] for i in idx])))
            self.obs = self._t(next_obs)
        last_v = value_fn(self.obs) if value_fn is not None else torch.zeros(N, device=self.device)
        return Rollout(obs_buf, torch.stack(act_buf), logp, vals, rew, term, trunc, final_v, self.obs.clone(),
                       last_v)

    def close(self) -> None:
        self.envs.close()


def collect_episodes(env, policy: Callable[[torch.Tensor], int], episodes: int, seed: int) -> list[dict]:
    """Whole episodes from a single (non-vector) env, for Monte-Carlo methods such as REINFORCE.

    Returns one dict per episode with ``obs (L, *obs_shape)``, ``actions (L,)``, ``rewards (L,)``
    tensors and ``truncated`` (bool). Episode ``k`` is reset with ``seed + k``.
    """
    out = []
    for k in range(episodes):
        o, _ = env.reset(seed=seed + k)
        obs, acts, rews = [], [], []
        done = trunc = False
        while not done:
            ot = torch.as_tensor(np.asarray(o), dtype=torch.float32)
            a = policy(ot)
            obs.append(ot)
            acts.append(a)
            o, r, te, trunc, _ = env.step(a)
            rews.append(float(r))
            done = te or trunc
        out.append({"obs": torch.stack(obs), "actions": torch.as_tensor(acts),
                    "rewards": torch.as_tensor(rews, dtype=torch.float32), "truncated": bool(trunc)})
    return out
