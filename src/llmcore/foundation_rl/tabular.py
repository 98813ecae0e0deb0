r"""Tabular TD control shared by the RL chapters: Q-learning (off-policy) and SARSA (on-policy).

Both update :math:`Q(s,a) \leftarrow Q(s,a) + \alpha\,[\,r + \gamma\,(1-d)\,X - Q(s,a)\,]` and differ only
in the bootstrap target :math:`X`:

* Q-learning: :math:`X = \max_{a'} Q(s', a')` (the greedy policy's value: off-policy);
* SARSA:      :math:`X = Q(s', a')` with :math:`a'` the action the ε-greedy policy will really take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress


@dataclass
class TDConfig:
    """Hyper-parameters of tabular TD control."""

    algo: str = "q_learning"  # "q_learning" (off-policy) or "sarsa" (on-policy)
    episodes: int = 500  # training episodes
    alpha: float = 0.5  # step size α
    gamma: float = 1.0  # discount γ
    epsilon: float = 0.1  # exploration rate of the ε-greedy behaviour policy
    epsilon_final: float | None = None  # if set, ε decays linearly to this value over training
    q_init: float = 0.0  # optimistic (>0) or neutral initial Q

    def validate(self) -> None:
        if self.algo not in ("q_learning", "sarsa"):
            raise LLMCoreError(f"algo={self.algo!r}; valid: 'q_learning', 'sarsa'")
        check_range("episodes", self.episodes, 1, 10**8)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("epsilon", self.epsilon, 0.0, 1.0)


def epsilon_greedy(q_row: np.ndarray, eps: float, rng: np.random.Generator) -> int:
    """Random action with probability ε, else a greedy one (ties broken at random)."""
    if rng.random() < eps:
        return int(rng.integers(len(q_row)))
    best = np.flatnonzero(q_row == q_row.max())
    return int(best[0] if len(best) == 1 else rng.choice(best))


def td_control(env, cfg: TDConfig, seed: int = 0, show_progress: bool = False):
    """Train a tabular Q by Q-learning or SARSA on a discrete gymnasium env.

    Returns ``(Q, returns)``: ``Q`` ``(S, A)`` and the undiscounted return of every training
    episode ``(episodes,)`` — the *online* performance of the ε-greedy behaviour policy.
    """
    cfg.validate()
    rng = np.random.default_rng(seed)
    S, A = env.observation_space.n, env.action_space.n
    Q = np.full((S, A), cfg.q_init, dtype=float)
    returns = np.zeros(cfg.episodes)
    env.action_space.seed(seed)
    it = progress(range(cfg.episodes), desc=cfg.algo, disable=not show_progress)
    for ep in it:
        eps = cfg.epsilon if cfg.epsilon_final is None else (
            cfg.epsilon + (cfg.epsilon_final - cfg.epsilon) * ep / max(cfg.episodes - 1, 1))
        s, _ = env.reset(seed=seed if ep == 0 else None)
        a = epsilon_greedy(Q[s], eps, rng)
        done = False
        while not done:
            s2, r, term, trunc, _ = env.step(a)
            returns[ep] += r
            a2 = epsilon_greedy(Q[s2], eps, rng)
            if cfg.algo == "q_learning":
                target = r + cfg.gamma * (not term) * Q[s2].max()  # off-policy: greedy bootstrap
            else:
                target = r + cfg.gamma * (not term) * Q[s2, a2]  # on-policy: the action really taken
            Q[s, a] += cfg.alpha * (target - Q[s, a])
            s, a = s2, a2
            done = term or trunc
    return Q, returns


def evaluate_greedy(env, Q: np.ndarray, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of the greedy policy ``argmax_a Q`` over ``episodes`` episodes."""
    pi = np.argmax(Q, axis=1)
    out = np.zeros(episodes)
    for ep in range(episodes):
        s, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            s, r, term, trunc, _ = env.step(int(pi[s]))
            out[ep] += r
            done = term or trunc
    return out


def evaluate_random(env, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of the uniform-random policy."""
    env.action_space.seed(seed)
    out = np.zeros(episodes)
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            out[ep] += r
            done = term or trunc
    return out
