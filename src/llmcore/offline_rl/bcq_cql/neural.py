"""BCQ and CQL, neural: the Q-network, CartPole data collection and evaluation, and one training loop for naive
offline DQN, BC, discrete BCQ and CQL."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcore.alignment.pg_ac import PPO_CONFIG, ActorCritic, train
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.seed import seed_everything
from llmcore.foundation_rl.rollout import EpisodeStats, make_vec_env
from llmcore.offline_rl.bcq_cql.tabular import bcq_allowed, bcq_loss, cql_loss
from llmcore.offline_rl.offline_rl import (
    GAMMA,
    Dataset,
)

THREADS = 1  # torch threads: the MLPs are tiny, one thread is fastest and reproducible (as in pg_ac)
ALGOS = ("dqn", "bc", "bcq", "cql")


# -- neural: networks, collection, training ------------------------------------------------------------

class QNet(nn.Module):
    """MLP ``obs (B, obs_dim) -> (B, n_out)``: Q-values, or Q-values and BCQ's imitation logits (``n_out = 2A``)."""

    def __init__(self, obs_dim: int, n_out: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_out))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def behaviour_policy(steps: int, seed: int) -> ActorCritic:
    """A PPO policy of :mod:`llmcore.alignment.pg_ac` trained for ``steps`` env steps (a partly trained one)."""
    res = train(replace(PPO_CONFIG, total_steps=steps), seed=seed)
    agent = ActorCritic(4, 2)
    agent.actor.load_state_dict(res.actor_state)
    return agent


def collect_cartpole(probs_fn, transitions: int, seed: int, name: str = "", num_envs: int = 8) -> Dataset:
    r"""``transitions`` steps of CartPole-v1 with actions drawn from ``probs_fn(obs (N, 4)) -> (N, 2)``.

    Uses :func:`llmcore.foundation_rl.rollout.make_vec_env` (``SAME_STEP`` autoreset, so a finished sub-env's
    last state is ``info["final_obs"]``) and :class:`~llmcore.foundation_rl.rollout.EpisodeStats`; it keeps
    :math:`s'` and the full :math:`\beta(\cdot|s)` per step, which the on-policy
    :class:`~llmcore.foundation_rl.rollout.Collector` does not.
    """
    check_range("transitions", transitions, num_envs, 10**8)
    envs = make_vec_env("CartPole-v1", num_envs)
    obs, _ = envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    stats = EpisodeStats(num_envs)
    buf = {k: [] for k in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "behaviour_probs")}
    for _ in range(transitions // num_envs):
        with torch.no_grad():
            p = np.asarray(probs_fn(torch.as_tensor(obs, dtype=torch.float32)), dtype=np.float64)
        a = (rng.random(num_envs) < p[:, 1]).astype(np.int64)
        nxt, r, te, tr, info = envs.step(a)
        real_next = nxt.copy()
        for i in np.flatnonzero(te | tr):
            real_next[i] = info["final_obs"][i]
        stats.update(r, te | tr)
        for k, v in (("obs", obs), ("actions", a), ("rewards", r), ("next_obs", real_next), ("terminated", te),
                     ("truncated", tr), ("behaviour_probs", p)):
            buf[k].append(np.asarray(v))
        obs = nxt
    envs.close()
    return Dataset(name, **{k: np.concatenate(v) if k in ("actions", "rewards", "terminated", "truncated")
                            else np.concatenate(v).astype(np.float32 if k != "behaviour_probs" else np.float64)
                            for k, v in buf.items()}, episode_returns=np.asarray(stats.returns))


def evaluate(act_fn, episodes: int, seed: int, max_steps: int = 500) -> np.ndarray:
    """Undiscounted return of the first episode of each of ``episodes`` envs (seeds ``seed + i``) under the
    deterministic ``act_fn(obs (N, 4)) -> actions (N,)``, ``(episodes,)``."""
    envs = make_vec_env("CartPole-v1", episodes)
    obs, _ = envs.reset(seed=seed)
    ret, alive = np.zeros(episodes), np.ones(episodes, bool)
    for _ in range(max_steps):
        with torch.no_grad():
            a = np.asarray(act_fn(torch.as_tensor(obs, dtype=torch.float32)))
        obs, r, te, tr, _ = envs.step(a)
        ret += r * alive
        alive &= ~(te | tr)
        if not alive.any():
            break
    envs.close()
    return ret


@dataclass
class NeuralConfig:
    """One offline learner on CartPole (naive DQN, BC, discrete BCQ or CQL)."""

    algo: str = "cql"  # "dqn" (naive offline Double DQN), "bc", "bcq" or "cql"
    steps: int = 2000  # gradient steps
    batch: int = 128
    lr: float = 1e-3  # Adam
    gamma: float = GAMMA
    hidden: int = 64
    target_every: int = 100  # hard target-network update period (steps)
    tau: float = 0.3  # BCQ threshold
    alpha: float = 1.0  # CQL conservative weight
    eval_every: int = 500  # learning-curve points (steps)
    eval_episodes: int = 10

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise LLMCoreError(f"algo={self.algo!r}; valid: {', '.join(ALGOS)}")
        check_range("steps", self.steps, 1, 10**8)
        check_range("batch", self.batch, 1, 10**6)
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("gamma", self.gamma, 0.0, 1.0)
        check_range("tau", self.tau, 0.0, 1.0)
        check_range("alpha", self.alpha, 0.0, 1e6)
        check_range("eval_every", self.eval_every, 1, 10**8)


@dataclass
class NeuralRun:
    algo: str
    dataset: str
    seed: int
    curve_steps: list = field(default_factory=list)
    curve_returns: list = field(default_factory=list)  # mean eval return at each curve step
    final_returns: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (eval_episodes,)
    q_s0: float = float("nan")  # the learner's max_a Q at the eval start states (value-based learners)

    @property
    def score(self) -> float:
        return float(np.mean(self.final_returns))


def train_offline(data: Dataset, cfg: NeuralConfig, seed: int, eval_seed: int = 10_000) -> NeuralRun:
    """Train one offline learner on ``data`` for ``cfg.steps`` gradient steps; evaluate it in the real env every
    ``cfg.eval_every`` steps (the learning curve: evaluation only, nothing enters the dataset)."""
    cfg.validate()
    seed_everything(seed, threads=THREADS)
    S = torch.as_tensor(data.obs, dtype=torch.float32)
    S2 = torch.as_tensor(data.next_obs, dtype=torch.float32)
    A = torch.as_tensor(data.actions, dtype=torch.long)
    R = torch.as_tensor(data.rewards, dtype=torch.float32)
    D = torch.as_tensor(data.terminated, dtype=torch.float32)
    n_act = data.behaviour_probs.shape[1]
    net = QNet(S.shape[1], 2 * n_act if cfg.algo == "bcq" else n_act, cfg.hidden)
    target_net = QNet(S.shape[1], net.net[-1].out_features, cfg.hidden)
    target_net.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)

    def act(obs):
        out = net(obs)
        if cfg.algo == "bc":
            return out.argmax(1)
        if cfg.algo == "bcq":
            q, logits = out[:, :n_act], out[:, n_act:]
            return torch.where(bcq_allowed(logits.softmax(1), cfg.tau), q, -torch.inf).argmax(1)
        return out.argmax(1)

    run = NeuralRun(cfg.algo, data.name, seed)
    for step in range(cfg.steps + 1):
        if step % cfg.eval_every == 0 or step == cfg.steps:
            run.curve_steps.append(step)
            run.curve_returns.append(float(evaluate(act, cfg.eval_episodes, eval_seed).mean()))
        if step == cfg.steps:
            break
        i = torch.randint(len(A), (cfg.batch,), generator=gen)
        out = net(S[i])
        if cfg.algo == "bc":
            loss = F.cross_entropy(out, A[i])
        else:
            with torch.no_grad():
                nxt, nxt_t = net(S2[i]), target_net(S2[i])[:, :n_act]
                q_next = nxt[:, :n_act]
                if cfg.algo == "bcq":  # argmax only over actions the imitation head finds likely enough
                    q_next = torch.where(bcq_allowed(nxt[:, n_act:].softmax(1), cfg.tau), q_next, -torch.inf)
                a_star = q_next.argmax(1, keepdim=True)  # Double DQN: online net selects, target net evaluates
                y = R[i] + cfg.gamma * (1 - D[i]) * nxt_t.gather(1, a_star).squeeze(1)
            if cfg.algo == "bcq":
                loss, _ = bcq_loss(out[:, :n_act], out[:, n_act:], A[i], y)
            else:
                loss, _ = cql_loss(out, A[i], y, cfg.alpha if cfg.algo == "cql" else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % cfg.target_every == 0:
            target_net.load_state_dict(net.state_dict())
    run.final_returns = evaluate(act, cfg.eval_episodes, eval_seed)
    if cfg.algo != "bc":
        envs = make_vec_env("CartPole-v1", cfg.eval_episodes)
        obs0, _ = envs.reset(seed=eval_seed)
        envs.close()
        with torch.no_grad():
            run.q_s0 = float(net(torch.as_tensor(obs0, dtype=torch.float32))[:, :n_act].max(1).values.mean())
    return run


