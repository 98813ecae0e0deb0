r"""BCQ and CQL: two answers to extrapolation error — stay on the data's actions, or push their values down.

**Discrete BCQ** (Fujimoto, Conti, Ghavamzadeh & Pineau 2019) fits a generative model of the behaviour policy,
:math:`G_\omega(a|s) \approx \beta(a|s)`, and lets the max of the Bellman target and the policy range only over
actions the data make likely enough:

.. math::
    \mathcal A_\tau(s) = \{a : G_\omega(a|s) / \max_{\hat a} G_\omega(\hat a|s) \ge \tau\}, \qquad
    y = r + \gamma(1-d)\,Q'\big(s', \arg\max_{a' \in \mathcal A_\tau(s')} Q(s', a')\big).

:math:`\tau = 0` allows every action (naive Q-learning); :math:`\tau = 1` only the behaviour's most likely one
(behaviour cloning's choice).

**CQL** (Kumar, Zhou, Tucker & Levine 2020), CQL(H) for discrete actions, adds to the TD loss a term that lowers
the soft maximum of :math:`Q(s,\cdot)` and raises :math:`Q` on the data's action:

.. math::
    L(\theta) = \alpha\,\mathbb E_{(s,a)\sim\mathcal D}\Big[\log\sum_{a'} e^{Q_\theta(s,a')} - Q_\theta(s,a)\Big]
    + \tfrac12\,\mathbb E_{\mathcal D}\big[(Q_\theta(s,a) - y)^2\big].

In a table its stationary point on seen pairs is :math:`Q = y - \alpha(\mu(a|s)/\hat\beta(a|s) - 1)` with
:math:`\mu = \mathrm{softmax}\,Q(s,\cdot)`; unseen pairs (:math:`\hat\beta = 0`) are pushed down without bound.
Evaluating a fixed policy :math:`\pi` with :math:`\mu = \pi` (the paper's Theorem 3.2) gives, in closed form,

.. math::
    \hat V^\pi = (I - \gamma \hat P_\pi)^{-1}\big(\hat R_\pi - \alpha D_\pi\big), \qquad
    D_\pi(s) = \sum_a \frac{\pi(a|s)^2}{\hat\beta(a|s)} - 1 \ \ge 0,

a lower bound of :math:`V^\pi` wherever the empirical model is exact (:func:`cql_policy_evaluation`).

The neural part trains naive offline DQN (Double-DQN target), BC, discrete BCQ and CQL on CartPole-v1
datasets collected from a PPO policy of :mod:`llmcore.alignment.pg_ac` (Part 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmcore.alignment.pg_ac import PPO_CONFIG, ActorCritic, run_jobs, train
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report
from llmcore.core.seed import seed_everything
from llmcore.foundation_rl.mdp import TabularMDP, evaluate_stochastic, greedy
from llmcore.foundation_rl.rollout import EpisodeStats, make_vec_env
from llmcore.offline_rl.offline_rl import (
    GAMMA,
    Dataset,
    EmpiricalMDP,
    collect_tabular,
    empirical_mdp,
    eps_greedy_policy,
    make_env,
    offline_q_iteration,
    optimal_q,
    policy_value,
    true_mdp,
)

#: torch threads: the MLPs are tiny, one thread is fastest and reproducible (as in pg_ac)
THREADS = 1
ALGOS = ("dqn", "bc", "bcq", "cql")


# -- losses (shared by the tabular and the neural learners) -------------------------------------------

def bcq_allowed(probs: np.ndarray | torch.Tensor, tau: float):
    r"""BCQ's action filter :math:`G(a|s) / \max_{\hat a} G(\hat a|s) \ge \tau`, ``(..., A)`` bool.

    ``tau = 0`` allows every action, ``tau = 1`` only the most likely one(s).
    """
    check_range("tau", tau, 0.0, 1.0)
    if isinstance(probs, torch.Tensor):
        return probs / probs.max(-1, keepdim=True).values >= tau
    probs = np.asarray(probs, dtype=float)
    return probs / probs.max(-1, keepdims=True) >= tau


def cql_loss(q: torch.Tensor, actions: torch.Tensor, target: torch.Tensor, alpha: float,
             weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    r"""Discrete CQL(H): :math:`\alpha\,[\log\sum_{a'}e^{Q(s,a')} - Q(s,a)] + \tfrac12 (Q(s,a) - y)^2`, averaged.

    Args:
        q: ``(B, A)`` Q-values of the batch's states; ``actions``: ``(B,)`` the data's actions;
        target: ``(B,)`` Bellman targets ``y`` (no gradient flows into them); ``alpha``: the conservative
        weight (0 = plain DQN loss); ``weight``: ``(B,)`` optional row weights (a weighted mean).
    Returns:
        ``(loss, {"td": ..., "conservative": ...})``.
    """
    check_range("alpha", alpha, 0.0, 1e6)
    q_data = q.gather(1, actions.long()[:, None]).squeeze(1)
    td = 0.5 * (q_data - target.detach()) ** 2
    conservative = torch.logsumexp(q, dim=1) - q_data
    w = torch.full_like(td, 1.0 / len(td)) if weight is None else weight / weight.sum()
    td_m, cons_m = (w * td).sum(), (w * conservative).sum()
    return td_m + alpha * cons_m, {"td": td_m.item(), "conservative": cons_m.item()}


def cql_loss_float64(q, actions, target, alpha: float) -> float:
    """The CQL paper's discrete loss (its Eq. 4 with the TD term), written out with Python floats, row by row:
    an independent evaluation of the formula to check :func:`cql_loss` against (no torch)."""
    q = np.asarray(q, dtype=np.float64)
    total = 0.0
    for row, a, y in zip(q, np.asarray(actions), np.asarray(target, dtype=np.float64)):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += alpha * (lse - row[int(a)]) + 0.5 * (row[int(a)] - y) ** 2
    return total / len(q)


def bcq_loss(q: torch.Tensor, logits: torch.Tensor, actions: torch.Tensor, target: torch.Tensor,
             logit_reg: float = 1e-2) -> tuple[torch.Tensor, dict]:
    r"""Discrete BCQ's loss: TD (Huber, as in the paper) + the imitation head's cross-entropy
    :math:`-\log G_\omega(a|s)` + a small penalty on its logits. ``q, logits (B, A)``; ``actions, target (B,)``."""
    q_data = q.gather(1, actions.long()[:, None]).squeeze(1)
    td = F.smooth_l1_loss(q_data, target.detach())
    ce = F.cross_entropy(logits, actions.long())
    return td + ce + logit_reg * (logits ** 2).mean(), {"td": td.item(), "ce": ce.item()}


# -- tabular BCQ and CQL --------------------------------------------------------------------------------

def tabular_bcq(emp: EmpiricalMDP, tau: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Tabular discrete BCQ: :func:`~llmcore.offline_rl.offline_rl.offline_q_iteration` with the max over
    :math:`\mathcal A_\tau(s)` (:math:`G = \hat\beta`, the counts), and the greedy policy within it.
    Returns ``(Q (S, A), pi (S,))``."""
    allowed = bcq_allowed(emp.behaviour, tau)
    Q = offline_q_iteration(emp, allowed=allowed)
    return Q, np.argmax(np.where(allowed, np.round(Q, 9), -np.inf), axis=1)


def cql_table_gradient(Q: np.ndarray, emp: EmpiricalMDP, y: np.ndarray, alpha: float) -> np.ndarray:
    r"""Gradient of :func:`cql_loss` averaged over the whole tabular dataset with respect to the table, ``(S, A)``:

    .. math::
        \frac{\partial L}{\partial Q(s,a)} = \frac1N\Big[n(s,a)\,(Q(s,a) - \bar y(s,a))
        + \alpha\,\big(n(s)\,\mathrm{softmax}\,Q(s,\cdot)_a - n(s,a)\big)\Big],

    with :math:`\bar y(s,a)` the mean target of the pair's transitions ``y (S, A)``. (The tests check it equals
    autograd of :func:`cql_loss` over the raw transitions.)
    """
    n = emp.counts
    z = Q - Q.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return (n * (Q - y) + alpha * (n.sum(1, keepdims=True) * p - n)) / n.sum()


def train_tabular_cql(emp: EmpiricalMDP, alpha: float, steps: int = 3000, lr: float = 0.5,
                      target_every: int = 10) -> np.ndarray:
    r"""CQL(H) on a Q-*table* ``(S, A)``: full-batch Adam on :func:`cql_loss` (through
    :func:`cql_table_gradient`), with the target :math:`\bar y = \hat r + \gamma \hat P_c \max_{a'} Q'`
    from a frozen copy :math:`Q'` refreshed every ``target_every`` steps. Starts from 0."""
    check_range("steps", steps, 1, 10**7)
    check_range("alpha", alpha, 0.0, 1e6)
    Q = np.zeros(emp.counts.shape)
    m, v = np.zeros_like(Q), np.zeros_like(Q)
    b1, b2, eps = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults
    for step in range(steps):
        if step % target_every == 0:
            y = emp.R + emp.gamma * emp.Pc @ Q.max(1)
        g = cql_table_gradient(Q, emp, y, alpha)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        Q = Q - lr * (m / (1 - b1 ** (step + 1))) / (np.sqrt(v / (1 - b2 ** (step + 1))) + eps)
    return Q


def cql_policy_evaluation(emp: EmpiricalMDP, pi: np.ndarray, alpha: float) -> np.ndarray:
    r"""CQL's conservative evaluation of ``pi (S, A)`` on the dataset's model, in closed form (Theorem 3.2):
    :math:`\hat V = (I - \gamma\hat P_\pi)^{-1}(\hat R_\pi - \alpha D_\pi)`, ``(S,)``, with
    :math:`D_\pi(s) = \sum_a \pi^2/\hat\beta - 1`. States without data have no transitions (value 0);
    ``pi`` must stay on seen actions in states with data."""
    beta = emp.behaviour
    on_data = emp.state_seen
    if np.any((pi > 0) & ~emp.seen & on_data[:, None]):
        raise LLMCoreError("pi puts probability on an action the data never take (D would be infinite)")
    D = np.where(on_data, np.sum(np.where(emp.seen, pi ** 2 / np.maximum(beta, 1e-300), 0.0), 1) - 1.0, 0.0)
    P_pi = np.einsum("sa,sap->sp", pi * emp.seen, emp.Pc)
    R_pi = np.sum(pi * emp.seen * emp.R, 1)
    return np.linalg.solve(np.eye(len(D)) - emp.gamma * P_pi, R_pi - alpha * D)


def closed_states(mdp: TabularMDP, pi: np.ndarray, emp: EmpiricalMDP) -> np.ndarray:
    """``(S,)`` bool: states with data from which ``pi`` never reaches a state without data (in the true MDP),
    where the empirical model of a deterministic env equals the true one along ``pi``."""
    P_pi = np.einsum("sa,sap->sp", pi, mdp.Pc)
    bad = ~emp.state_seen
    for _ in range(mdp.n_states):
        new = bad | ((P_pi > 0) & bad[None, :]).any(1)
        if np.array_equal(new, bad):
            break
        bad = new
    return ~bad


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
    steps: int = 3000  # gradient steps
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


# -- figures --------------------------------------------------------------------------------------------

def one_state_example(alpha: float, counts=(6, 3, 1, 0), rewards=(1.0, 2.0, 3.0, 0.0)) -> dict:
    """One state, four actions, one-step episodes: the data take actions 0-2 ``counts`` times with rewards
    ``rewards``; action 3 never. Returns what the mechanism figure draws: the naive table, BCQ's ratios, and
    the CQL table trained with :func:`train_tabular_cql` at ``alpha``."""
    acts = np.repeat(np.arange(4), counts)
    n = len(acts)
    data = Dataset("one state", np.zeros(n, int), acts, np.asarray(rewards)[acts], np.zeros(n, int),
                   np.ones(n, bool), np.zeros(n, bool), np.full((n, 4), 0.25), np.zeros(1))
    emp = empirical_mdp(data, 1, 4, GAMMA)
    return {"beta": emp.behaviour[0], "naive": offline_q_iteration(emp, q_init=5.0)[0],
            "cql": train_tabular_cql(emp, alpha, steps=3000)[0], "rewards": np.asarray(rewards), "q_init": 5.0}


def plot_mechanism(axes, tau: float = 0.3, alpha: float = 1.0):
    r"""Two panels on one state with four actions (action 3 unseen): BCQ's filter
    :math:`\hat\beta(a|s)/\max\hat\beta \ge \tau`, and the values naive Q-learning (unseen pair left at its
    initial value, here 5) and CQL at ``alpha`` assign. Computed with this module's functions; returns ``axes``."""
    ex = one_state_example(alpha)
    x = np.arange(4)
    ratio = ex["beta"] / ex["beta"].max()
    ok = ratio >= tau
    axes[0].bar(x, ratio, color=["#0072B2" if o else "0.75" for o in ok])
    axes[0].axhline(tau, color="#D55E00", ls="--", label=f"τ = {tau:g}")
    axes[0].set_xticks(x, [f"a{i}\nn={c}" for i, c in enumerate((6, 3, 1, 0))])
    axes[0].set_ylabel(r"$\hat\beta(a|s)\,/\,\max_{\hat a}\hat\beta(\hat a|s)$")
    axes[0].set_title("BCQ: only blue actions may be chosen", fontsize=9)
    axes[0].legend(fontsize=8)
    w = 0.27
    axes[1].bar(x - w, ex["rewards"] * (x < 3), w, color="0.6", label="true value (a3: unknown)")
    axes[1].bar(x, ex["naive"], w, color="#D55E00", label=f"naive (a3 keeps Q0 = {ex['q_init']:g})")
    axes[1].bar(x + w, np.maximum(ex["cql"], -3.0), w, color="#009E73", label=f"CQL, α = {alpha:g}")
    axes[1].set_xticks(x, [f"a{i}" for i in range(4)])
    axes[1].set_ylim(-3.2, 6)
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].set_title("values: the max picks a3 naively; CQL pushes it down", fontsize=9)
    axes[1].legend(fontsize=7, loc="upper left")
    return axes


# -- the closed loop -----------------------------------------------------------------------------------

@dataclass
class BCQCQLConfig:
    """The BCQ / CQL experiment: a tabular study on CliffWalking, then neural learners on CartPole."""

    tabular_episodes: int = 200  # episodes per tabular dataset
    tabular_eps: dict = field(default_factory=lambda: {"medium": 0.3, "expert": 0.05})  # ε around π*
    taus: tuple = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)  # BCQ threshold sweep (tabular)
    alphas: tuple = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # CQL weight sweep (tabular)
    cql_steps: int = 2000  # tabular CQL: full-batch Adam steps
    ppo_steps: int = 16_384  # env steps of the PPO run whose policy collects the CartPole data
    transitions: int = 20_000  # CartPole transitions per dataset
    datasets: tuple = ("medium", "mixed")  # CartPole datasets the learners train on
    seeds: int = 2  # learner seeds per dataset and algorithm (seed, seed + 1, ...)
    neural: NeuralConfig = field(default_factory=NeuralConfig)
    workers: int | None = None  # processes for the neural runs (None: up to 2)

    @classmethod
    def for_mode(cls, toy: bool) -> BCQCQLConfig:
        """Toy: 2 learner seeds, 3000 gradient steps; full: 5 seeds, 20000 steps, 4x the data."""
        if toy:
            return cls()
        return cls(tabular_episodes=2000, ppo_steps=32_768, transitions=80_000, seeds=5,
                   neural=NeuralConfig(steps=20_000, eval_every=2000, eval_episodes=20))

    def validate(self) -> None:
        check_range("tabular_episodes", self.tabular_episodes, 1, 10**7)
        check_range("ppo_steps", self.ppo_steps, 1024, 10**9)
        check_range("transitions", self.transitions, 64, 10**9)
        check_range("seeds", self.seeds, 1, 1000)
        for t in self.taus:
            check_range("tau", t, 0.0, 1.0)
        for a in self.alphas:
            check_range("alpha", a, 0.0, 1e6)
        for d in self.datasets:
            if d not in ("random", "medium", "expert", "mixed"):
                raise LLMCoreError(f"dataset {d!r}; valid: random, medium, expert, mixed")
        self.neural.validate()


@dataclass
class TabularStudy:
    """BCQ's τ sweep and CQL's α sweep on one tabular dataset (all values exact, discounted, at the start)."""

    name: str
    emp: EmpiricalMDP
    v_star: float
    v_bc: float
    v_naive: float
    bcq_values: list  # V(s0) per tau
    bcq_tau0_diff: float  # max |Q_BCQ(tau=0) - Q_naive|
    bcq_tau1_off_mode: int  # seen states where BCQ(tau=1) picks an action that is not a most frequent one
    cql_values: list  # V(s0) of the greedy CQL policy per alpha
    cql_q_s0: list  # max_a Q_CQL(s0, a) per alpha
    cql_unseen_gap: list  # mean Q_CQL - Q* on unseen pairs of seen states per alpha
    cql_eval_bound: list  # max over closed states of V_hat_CQL(pi) - V^pi (true), per alpha > 0
    cql_eval_closed: list  # number of closed states per alpha > 0


def tabular_study(name: str, data: Dataset, mdp: TabularMDP, Q_star: np.ndarray, cfg: BCQCQLConfig) -> TabularStudy:
    emp = empirical_mdp(data, mdp.n_states, mdp.n_actions, mdp.gamma)
    Q_naive = offline_q_iteration(emp)
    bcq_values, tau0, off_mode = [], float("nan"), -1
    for tau in cfg.taus:
        Q, pi = tabular_bcq(emp, tau)
        bcq_values.append(policy_value(mdp, pi))
        if tau == 0.0:
            tau0 = float(np.max(np.abs(Q - Q_naive)))
        if tau == 1.0:
            mode = emp.counts == emp.counts.max(1, keepdims=True)
            off_mode = int(np.sum(~mode[np.arange(mdp.n_states), pi] & emp.state_seen))
    unseen = ~emp.seen & emp.state_seen[:, None]
    vals, qs0, gaps, bound, closed = [], [], [], [], []
    for alpha in cfg.alphas:
        Q = train_tabular_cql(emp, alpha, steps=cfg.cql_steps)
        pi = greedy(Q)
        vals.append(policy_value(mdp, pi))
        qs0.append(float(mdp.mu0 @ Q.max(1)))
        gaps.append(float((Q - Q_star)[unseen].mean()) if unseen.any() else float("nan"))
        if alpha > 0:
            pim = np.eye(mdp.n_actions)[pi]
            V_hat = cql_policy_evaluation(emp, pim, alpha)
            V_true, _ = evaluate_stochastic(mdp, pim)
            ok = closed_states(mdp, pim, emp)
            bound.append(float(np.max((V_hat - V_true)[ok])) if ok.any() else float("nan"))
            closed.append(int(ok.sum()))
    v_star = float(mdp.mu0 @ Q_star.max(1))
    return TabularStudy(name, emp, v_star, policy_value(mdp, greedy(emp.counts)), policy_value(mdp, greedy(Q_naive)),
                        bcq_values, tau0, off_mode, vals, qs0, gaps, bound, closed)


def cartpole_datasets(cfg: BCQCQLConfig, seed: int) -> tuple[dict, dict]:
    """Random, medium, expert and mixed CartPole datasets from one partly trained PPO policy.

    medium = the PPO policy's own stochastic actions; expert = its greedy actions; mixed = half random,
    half expert. Returns ``(datasets, behaviour returns)`` (mean undiscounted return of each behaviour policy).
    """
    agent = behaviour_policy(cfg.ppo_steps, seed)
    n = cfg.transitions

    def probs_medium(obs):
        return agent.actor(obs).softmax(-1)

    def probs_expert(obs):
        return F.one_hot(agent.actor(obs).argmax(-1), 2).double()

    def probs_random(obs):
        return torch.full((len(obs), 2), 0.5)

    data = {"random": collect_cartpole(probs_random, n, seed + 1, "random"),
            "medium": collect_cartpole(probs_medium, n, seed + 2, "medium"),
            "expert": collect_cartpole(probs_expert, n, seed + 3, "expert")}
    data["mixed"] = Dataset.concat("mixed", [collect_cartpole(probs_random, n // 2, seed + 4, "random"),
                                             collect_cartpole(probs_expert, n - n // 2, seed + 5, "expert")])
    behaviour = {k: float(np.mean(d.episode_returns)) for k, d in data.items()}
    return data, behaviour


@dataclass
class BCQCQLResult:
    cfg: BCQCQLConfig
    tabular: dict  # name -> TabularStudy
    behaviour: dict  # CartPole dataset -> mean episode return of its behaviour policy
    sizes: dict  # CartPole dataset -> transitions
    runs: list  # [NeuralRun]
    loss_check: float  # |cql_loss - the paper's formula in float64| on a random batch and network

    def scores(self, dataset: str, algo: str) -> np.ndarray:
        return np.array([r.score for r in self.runs if r.dataset == dataset and r.algo == algo])


def loss_cross_check(seed: int = 0) -> float:
    """|:func:`cql_loss` - :func:`cql_loss_float64`| on one batch through one random network (float64)."""
    g = torch.Generator().manual_seed(seed)
    net = QNet(4, 2).double()
    obs = torch.randn(64, 4, generator=g, dtype=torch.float64)
    acts = torch.randint(0, 2, (64,), generator=g)
    y = torch.randn(64, generator=g, dtype=torch.float64) * 10
    with torch.no_grad():
        q = net(obs)
        ours = float(cql_loss(q, acts, y, 0.7)[0])
    return abs(ours - cql_loss_float64(q.numpy(), acts.numpy(), y.numpy(), 0.7))


def experiment(cfg: BCQCQLConfig, seed: int = 0, show_progress: bool = False) -> BCQCQLResult:
    """Tabular BCQ / CQL sweeps, then the CartPole datasets and every (dataset, algorithm, learner seed) run.

    The neural runs are independent and seed themselves, so :func:`~llmcore.alignment.pg_ac.run_jobs` spreads
    them over up to two processes with results identical to running them one after another.
    """
    cfg.validate()
    mdp = true_mdp(GAMMA)
    Q_star = optimal_q(mdp)
    env = make_env(100)
    stages = [*cfg.tabular_eps, "CartPole datasets", "offline learners"]
    bar = progress(total=len(stages), desc="BCQ / CQL", disable=not show_progress)
    tab = {}
    for k, (name, eps) in enumerate(cfg.tabular_eps.items()):
        bar.set_postfix_str(f"tabular {name}")
        data = collect_tabular(env, eps_greedy_policy(Q_star, eps), cfg.tabular_episodes, seed * 1_000_003 + 31 * k,
                               name)
        tab[name] = tabular_study(name, data, mdp, Q_star, cfg)
        bar.update()
    bar.set_postfix_str("PPO behaviour policy + CartPole datasets")
    seed_everything(seed, threads=THREADS)
    data, behaviour = cartpole_datasets(cfg, seed)
    bar.update()
    bar.set_postfix_str(f"{len(cfg.datasets) * len(ALGOS) * cfg.seeds} offline runs")
    jobs = [(train_offline, (data[d], replace(cfg.neural, algo=a), seed + s))
            for d in cfg.datasets for a in ALGOS for s in range(cfg.seeds)]
    runs = run_jobs(jobs, cfg.workers)
    bar.update()
    bar.close()
    return BCQCQLResult(cfg, tab, behaviour, {k: v.size for k, v in data.items()}, runs, loss_cross_check(seed))


def make_report(res: BCQCQLResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and acceptance criteria of the BCQ / CQL chapter (thresholds live here only)."""
    rep = Report("bcq_cql", "BCQ / CQL / BCQ 与 CQL", toy, device, seed)
    cfg = res.cfg
    for name, t in res.tabular.items():
        rep.metric(f"tabular {name}: V* / BC / naive at s0", t.v_star)
        rep.metric(f"tabular {name}: V(naive offline Q)", t.v_naive)
        for tau, v in zip(cfg.taus, t.bcq_values):
            rep.metric(f"tabular {name}: V(BCQ tau={tau:g})", v)
        for alpha, v, q in zip(cfg.alphas, t.cql_values, t.cql_q_s0):
            rep.metric(f"tabular {name}: V(CQL alpha={alpha:g})", v)
            rep.metric(f"tabular {name}: max_a Q_CQL(s0, a), alpha={alpha:g}", q)
        rep.check(f"tabular {name}: BCQ tau=0 equals naive Q-learning (max |dQ|)", t.bcq_tau0_diff, "<", 1e-9)
        rep.check(f"tabular {name}: BCQ tau=1 states off BC's most frequent action", t.bcq_tau1_off_mode, "==", 0)
        rep.check(f"tabular {name}: CQL evaluation lower bound, max over alpha > 0 and states of V_hat - V^pi",
                  max(t.cql_eval_bound), "<=", 1e-9)
        best_cql = max(v for a, v in zip(cfg.alphas, t.cql_values) if a > 0)
        rep.check(f"tabular {name}: CQL (best alpha > 0) - naive offline Q at s0", best_cql - t.v_naive, ">", 5.0)
    for d in cfg.datasets:
        rep.metric(f"CartPole {d}: behaviour return", res.behaviour[d])
        rep.metric(f"CartPole {d}: transitions", res.sizes[d])
        means = {a: float(res.scores(d, a).mean()) for a in ALGOS}
        for a in ALGOS:
            rep.metric(f"CartPole {d}: {a} return (mean over {cfg.seeds} seeds)", means[a])
            rep.metric(f"CartPole {d}: {a} return (sd)", float(res.scores(d, a).std()))
        for a in ("bcq", "cql"):
            rep.check(f"CartPole {d}: {a} - max(naive DQN, BC), mean return", means[a] - max(means["dqn"], means["bc"]),
                      ">", 0.0)
        if d == "medium":
            for a in ("bcq", "cql"):
                rep.check(f"CartPole medium: {a} return / behaviour return", means[a] / res.behaviour[d], ">=", 1.0)
    rep.check("our CQL loss vs the paper's formula in float64 (abs diff)", res.loss_check, "<", 1e-10)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The BCQ / CQL closed loop. Networks run on the CPU whatever the device (tiny MLPs, a CPU env)."""
    res = experiment(BCQCQLConfig.for_mode(toy), seed=seed, show_progress=True)
    rep = make_report(res, toy, str(device), seed)
    rep.notes.append("networks run on the CPU whatever the device: per-step transfers cost more than the MLP")
    return rep
