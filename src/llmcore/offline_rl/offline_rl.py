r"""Offline RL: fixed datasets, behaviour cloning, naive offline Q-learning and its extrapolation error.

Offline RL learns a policy from a fixed dataset :math:`\mathcal D = \{(s, a, r, s', d)\}` collected by a
behaviour policy :math:`\beta(a|s)`, with no further interaction (Levine et al. 2020). Q-learning is
*off-policy*, so on paper it can learn :math:`Q^*` from any data; offline, its bootstrap target

.. math::
    y = r + \gamma\,(1-d)\,\max_{a'} Q(s', a')

reads :math:`Q(s', a')` for actions :math:`a'` that may never appear in :math:`\mathcal D` at :math:`s'`.
Nothing ever corrects those values — **extrapolation error** (Fujimoto et al. 2019): in a table they keep
their initial value, in a network whatever it generalises to; the max picks them out wherever they are too
high, and bootstrapping carries the error to every state upstream.

Tabular part (CliffWalking-v1, read from gymnasium by :mod:`llmcore.foundation_rl.mdp`, so :math:`Q^*` and
any policy's value are exact). The dataset's empirical model, ``S`` states and ``A`` actions:

* ``counts``  ``(S, A)``     :math:`n(s,a)`, visits of each pair in :math:`\mathcal D`;
* ``R``       ``(S, A)``     mean reward :math:`\hat r(s,a)`;
* ``Pc``      ``(S, A, S)``  :math:`\hat P_c(s'|s,a)`, the fraction of transitions from :math:`(s,a)` that
  *continue* to :math:`s'` (terminations excluded; time-limit truncations continue).

Tabular Q-learning replayed over :math:`\mathcal D` converges to the fixed point of the *empirical* Bellman
optimality backup on seen pairs, with unseen pairs frozen at their initial value
(:func:`offline_q_iteration` computes that fixed point directly; :func:`q_learning_replay` is the
sample-by-sample algorithm, and the tests check they agree).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import matplotlib
import numpy as np
import torch
from matplotlib.colors import Normalize
from matplotlib.patches import FancyBboxPatch, Polygon

from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report
from llmcore.foundation_rl.mdp import TabularMDP, evaluate_stochastic, from_gymnasium, greedy, value_iteration
from llmcore.foundation_rl.tabular import TDConfig, td_control

ENV_ID = "CliffWalking-v1"  # 4 x 12 grid, -1 per step, -100 and back to the start for the cliff
GAMMA = 0.99
ARROWS = "↑→↓←"  # CliffWalking's action order: 0 UP, 1 RIGHT, 2 DOWN, 3 LEFT


# -- datasets --------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """Transitions of a fixed dataset, ``N`` rows (tabular: integer states; CartPole: ``(N, 4)`` floats)."""

    name: str
    obs: np.ndarray  # (N,) int or (N, obs_dim) float: s
    actions: np.ndarray  # (N,) int: a ~ beta(.|s)
    rewards: np.ndarray  # (N,) float: r
    next_obs: np.ndarray  # like obs: s' (the real last state where a time limit cut the episode)
    terminated: np.ndarray  # (N,) bool: the MDP ended (no bootstrap)
    truncated: np.ndarray  # (N,) bool: a time limit cut the episode (bootstrap from s')
    behaviour_probs: np.ndarray  # (N, A) beta(.|s) of the policy that chose a (for BC / importance weights)
    episode_returns: np.ndarray  # (E,) undiscounted return of every finished episode

    @property
    def size(self) -> int:
        return len(self.actions)

    @staticmethod
    def concat(name: str, parts: list[Dataset]) -> Dataset:
        """One dataset from several (a mixture of behaviour policies: each row keeps its own beta)."""
        cat = {f: np.concatenate([getattr(p, f) for p in parts])
               for f in ("obs", "actions", "rewards", "next_obs", "terminated", "truncated", "behaviour_probs",
                         "episode_returns")}
        return Dataset(name, **cat)


def eps_greedy_policy(Q: np.ndarray, eps: float) -> np.ndarray:
    r""":math:`\beta = (1-\varepsilon)\,\text{greedy}(Q) + \varepsilon\,\text{uniform}`, ``(S, A)``;
    ``eps = 1`` is the uniform random policy, ``eps = 0`` the greedy one."""
    check_range("eps", eps, 0.0, 1.0)
    S, A = Q.shape
    pi = np.full((S, A), eps / A)
    pi[np.arange(S), greedy(Q)] += 1.0 - eps
    return pi


def collect_tabular(env, pi: np.ndarray, episodes: int, seed: int, name: str = "") -> Dataset:
    """Run the stochastic policy ``pi (S, A)`` in a discrete gymnasium env for ``episodes`` episodes.

    Episode ``k`` is reset with ``seed + k``; actions come from ``np.random.default_rng(seed)``, so the same
    seed gives the same dataset. The env's time limit (``max_episode_steps``) ends long episodes.
    """
    check_range("episodes", episodes, 1, 10**7)
    S, A = env.observation_space.n, env.action_space.n
    if pi.shape != (S, A) or not np.allclose(pi.sum(1), 1.0):
        raise LLMCoreError(f"pi must be a ({S}, {A}) matrix of probabilities, got shape {pi.shape}")
    rng = np.random.default_rng(seed)
    cum = np.cumsum(pi, axis=1)
    rows: list[tuple] = []
    rets = []
    for k in range(episodes):
        s, _ = env.reset(seed=seed + k)
        done, ret = False, 0.0
        while not done:
            a = min(int(np.searchsorted(cum[s], rng.random(), side="right")), A - 1)
            s2, r, term, trunc, _ = env.step(a)
            rows.append((s, a, r, s2, term, trunc))
            ret += r
            s, done = s2, term or trunc
        rets.append(ret)
    s, a, r, s2, te, tr = (np.array(x) for x in zip(*rows))
    return Dataset(name, s.astype(int), a.astype(int), r.astype(float), s2.astype(int), te.astype(bool),
                   tr.astype(bool), pi[s], np.array(rets))


# -- the empirical MDP of a dataset, and what learns from it -----------------------------------------

@dataclass
class EmpiricalMDP:
    """The model a tabular dataset implies (see the module docstring for shapes)."""

    counts: np.ndarray  # (S, A)
    R: np.ndarray  # (S, A) mean reward (0 where unseen)
    Pc: np.ndarray  # (S, A, S) continuing next-state frequencies (0 where unseen)
    gamma: float

    @property
    def seen(self) -> np.ndarray:
        """``(S, A)`` bool: the pair occurs in the dataset."""
        return self.counts > 0

    @property
    def state_seen(self) -> np.ndarray:
        """``(S,)`` bool: some action was taken in the state."""
        return self.counts.sum(1) > 0

    @property
    def behaviour(self) -> np.ndarray:
        r"""Behaviour cloning, tabular: :math:`\hat\beta(a|s) = n(s,a) / n(s)` ``(S, A)``; uniform where
        the state never occurs (the maximum-likelihood fit of a categorical policy per state)."""
        n = self.counts.sum(1, keepdims=True)
        return np.where(n > 0, self.counts / np.maximum(n, 1), 1.0 / self.counts.shape[1])


def empirical_mdp(data: Dataset, n_states: int, n_actions: int, gamma: float) -> EmpiricalMDP:
    """Counts, mean rewards and continuing next-state frequencies of a tabular dataset."""
    check_range("gamma", gamma, 0.0, 1.0)
    counts = np.zeros((n_states, n_actions))
    np.add.at(counts, (data.obs, data.actions), 1.0)
    rsum = np.zeros((n_states, n_actions))
    np.add.at(rsum, (data.obs, data.actions), data.rewards)
    Pc = np.zeros((n_states, n_actions, n_states))
    np.add.at(Pc, (data.obs, data.actions, data.next_obs), (~data.terminated).astype(float))
    n = np.maximum(counts, 1.0)
    return EmpiricalMDP(counts, rsum / n, Pc / n[..., None], gamma)


def offline_q_iteration(emp: EmpiricalMDP, allowed: np.ndarray | None = None, q_init: float = 0.0,
                        tol: float = 1e-10, max_sweeps: int = 100_000) -> np.ndarray:
    r"""The fixed point of tabular Q-learning on a fixed dataset, ``(S, A)``.

    .. math::
        Q(s,a) \leftarrow \hat r(s,a) + \gamma \sum_{s'} \hat P_c(s'|s,a)\,\max_{a' \in \mathcal A(s')} Q(s',a')
        \quad\text{for seen } (s,a), \qquad Q(s,a) = q_\text{init} \text{ for unseen ones.}

    ``allowed`` ``(S, A)`` bool restricts the max (BCQ's constraint); ``None`` allows every action — naive
    offline Q-learning, whose max reads the unseen pairs' frozen values.
    """
    S, A = emp.counts.shape
    allowed = np.ones((S, A), bool) if allowed is None else np.asarray(allowed, bool)
    if allowed.shape != (S, A) or not allowed.any(axis=1).all():
        raise LLMCoreError(f"allowed must be a ({S}, {A}) bool mask with at least one action per state")
    Q = np.full((S, A), float(q_init))
    for _ in range(max_sweeps):
        V = np.where(allowed, Q, -np.inf).max(axis=1)
        Q_new = np.where(emp.seen, emp.R + emp.gamma * emp.Pc @ V, q_init)
        if np.max(np.abs(Q_new - Q)) < tol:
            return Q_new
        Q = Q_new
    raise LLMCoreError(f"offline Q iteration did not converge in {max_sweeps} sweeps (gamma={emp.gamma})")


def q_learning_replay(data: Dataset, n_states: int, n_actions: int, gamma: float, lr: float = 1.0,
                      sweeps: int = 100, q_init: float = 0.0, seed: int = 0) -> np.ndarray:
    r"""Tabular Q-learning that replays a fixed dataset ``sweeps`` times in shuffled order, ``(S, A)``.

    The update of :func:`llmcore.foundation_rl.tabular.td_control` (Q-learning), fed from the dataset
    instead of an ε-greedy agent: that function steps a live env, which is what offline RL may not do.
    """
    check_range("lr", lr, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    Q = np.full((n_states, n_actions), float(q_init))
    for _ in range(sweeps):
        for i in rng.permutation(data.size):
            s, a, s2 = data.obs[i], data.actions[i], data.next_obs[i]
            target = data.rewards[i] + gamma * (not data.terminated[i]) * Q[s2].max()
            Q[s, a] += lr * (target - Q[s, a])
    return Q


def policy_value(mdp: TabularMDP, pi: np.ndarray) -> float:
    r"""Exact discounted value :math:`V^\pi(s_0) = \mu_0^\top (I-\gamma P_\pi)^{-1} R_\pi` of ``pi``
    (``(S,)`` deterministic or ``(S, A)`` stochastic) in the *true* MDP."""
    pi = np.asarray(pi)
    if pi.ndim == 1:
        pi = np.eye(mdp.n_actions)[pi]
    V, _ = evaluate_stochastic(mdp, pi)
    return float(mdp.mu0 @ V)


def extrapolation_gap(Q_naive: np.ndarray, Q_star: np.ndarray, emp: EmpiricalMDP) -> np.ndarray:
    r""":math:`Q_\text{naive}(s,a) - Q^*(s,a)` on the *unseen* actions of seen states, ``(K,)``.

    :math:`Q^*` is the best any policy can do, so a positive gap is an overestimate of every policy's value.
    """
    mask = ~emp.seen & emp.state_seen[:, None]
    return (Q_naive - Q_star)[mask]


# -- figures ---------------------------------------------------------------------------------------

def plot_online_vs_offline(ax):
    r"""The mechanism: online RL closes the loop through the environment, offline RL learns from a frozen
    :math:`\mathcal D` and its max reads actions the data never tried. Drawn on ``ax``; returns ``ax``."""
    ax.set_xlim(0, 12.3)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    def box(x, y, text, color, w=2.8, h=0.9):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05", fc=color, ec="k", lw=1))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5)

    def arrow(p, q, label="", color="k", rad=0.0, dy=0.12):
        ax.annotate("", xy=q, xytext=p, arrowprops=dict(arrowstyle="->", color=color, lw=1.2,
                                                        connectionstyle=f"arc3,rad={rad}"))
        if label:
            ax.text((p[0] + q[0]) / 2, (p[1] + q[1]) / 2 + dy, label, ha="center", fontsize=8, color=color)

    ax.text(3.0, 5.9, "online, off-policy (Q-learning with ε-greedy)", ha="center", fontsize=9, weight="bold")
    box(1.2, 4.8, "environment", "#E8E8E8", w=2.0)
    box(4.6, 4.8, "agent: $Q$,\n" r"acts $\varepsilon$-greedy", "#CFE3F3", w=2.6)
    arrow((2.25, 5.05), (3.25, 5.05), "$a$")
    arrow((3.25, 4.55), (2.25, 4.55), "$r, s'$", dy=-0.35)
    ax.text(2.9, 3.55, "a wrong $Q(s,a)$ gets tried,\nand corrected", ha="center", fontsize=8, color="#009E73")
    ax.text(9.0, 5.9, "offline (a fixed dataset)", ha="center", fontsize=9, weight="bold")
    box(7.4, 4.8, r"behaviour $\beta$", "#E8E8E8", w=2.2)
    box(10.4, 4.8, r"dataset $\mathcal{D}=\{(s,a,r,s')\}$", "#FFF2CC", w=3.0)
    arrow((8.5, 4.8), (8.9, 4.8))
    box(10.4, 2.6, r"learner: $y=r+\gamma\max_{a'}Q(s',a')$", "#CFE3F3", w=3.2)
    arrow((10.4, 4.35), (10.4, 3.05), "sampled, never extended", dy=0.0)
    box(6.4, 2.6, r"$Q(s',a')$ for $a'\notin\mathcal{D}(s')$:" "\nnever corrected", "#F6D9C6", w=3.2)
    arrow((8.0, 2.6), (8.8, 2.6), "max picks it", color="#D55E00", dy=0.15)
    box(6.4, 0.8, r"policy $\pi=\arg\max_a Q$ runs into" "\nthe unseen actions: it fails", "#F6D9C6", w=3.6)
    arrow((6.4, 2.15), (6.4, 1.25), "", color="#D55E00")
    return ax


def plot_q_table(ax, Q: np.ndarray, seen: np.ndarray | None = None, title: str = "", vmin: float = -30.0,
                 vmax: float = 0.0):
    """CliffWalking's 4 x 12 grid with each state's four action values as triangles (up, right, down, left);
    unseen pairs (``seen`` False) hatched. Returns ``ax``."""
    cmap, norm = matplotlib.colormaps["viridis"], Normalize(vmin, vmax)
    rows, cols = 4, 12
    for s in range(rows * cols):
        r, c = divmod(s, cols)
        y = rows - 1 - r
        centre = (c + 0.5, y + 0.5)
        corners = [(c, y + 1), (c + 1, y + 1), (c + 1, y), (c, y)]  # tl, tr, br, bl
        tris = [(corners[0], corners[1]), (corners[1], corners[2]), (corners[2], corners[3]), (corners[3], corners[0])]
        for a, (p, q) in enumerate(tris):
            if r == 3 and 0 < c < 11:
                fc, hatch = "0.25", None
            elif s == 47:
                fc, hatch = "#009E73", None
            else:
                fc = cmap(norm(Q[s, a]))
                hatch = "////" if seen is not None and not seen[s, a] else None
            ax.add_patch(Polygon([centre, p, q], closed=True, fc=fc, ec="w", lw=0.3, hatch=hatch))
    ax.text(0.5, 0.5, "S", ha="center", va="center", fontsize=9, color="w", weight="bold")
    ax.text(11.5, 0.5, "G", ha="center", va="center", fontsize=9, color="w", weight="bold")
    ax.text(6, 0.5, "cliff", ha="center", va="center", fontsize=8, color="w")
    ax.set_xlim(0, cols)
    ax.set_ylim(0, rows)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title, fontsize=9)
    return ax


def plot_coverage(ax, sweep: list, eps: tuple, v_star: float, floor: float = -120.0):
    """What each learner does with data of narrowing coverage: exact :math:`V(s_0)` against the behaviour's ε
    (1 = uniform random, 0 = the optimal policy itself), coverage on a second axis. Returns ``(ax, twin)``."""
    x = np.arange(len(sweep))
    for key, label, style in (("v_behaviour", "behaviour β (the data)", "s--"), ("v_bc", "BC", "o-"),
                              ("v_naive", "naive offline Q-learning", "x-")):
        ax.plot(x, np.maximum([getattr(r, key) for r in sweep], floor), style, label=label, ms=5)
    ax.axhline(v_star, color="k", ls=":", lw=1, label=r"$V^*(s_0)$")
    ax.set_xticks(x, [f"{e:g}" for e in eps])
    ax.set_xlabel("behaviour ε around π*  (data narrow to the right)")
    ax.set_ylabel(f"$V(s_0)$, exact (clipped at {floor:g})")
    ax.legend(fontsize=7, loc="center left")
    twin = ax.twinx()
    twin.bar(x, [r.coverage for r in sweep], color="0.85", zorder=0, width=0.5)
    twin.set_ylabel("coverage of (s, a) pairs", color="0.4")
    twin.set_ylim(0, 1.05)
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    twin.grid(False)
    return ax, twin


# -- the closed loop -------------------------------------------------------------------------------

@dataclass
class OfflineConfig:
    """The tabular offline-RL experiment on CliffWalking."""

    episodes: int = 200  # episodes per dataset
    max_steps: int = 100  # time limit per episode while collecting
    eps: dict = field(default_factory=lambda: {"random": 1.0, "medium": 0.3, "expert": 0.05})  # ε around π*
    sweep_eps: tuple = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.0)  # coverage-vs-performance sweep
    online_episodes: int = 300  # online Q-learning with ε-greedy exploration (the off-policy baseline)
    gamma: float = GAMMA

    @classmethod
    def for_mode(cls, toy: bool) -> OfflineConfig:
        """Toy: 200 episodes per dataset; full: 2000 (tabular either way: seconds on a CPU)."""
        return cls() if toy else cls(episodes=2000, online_episodes=1000)

    def validate(self) -> None:
        check_range("episodes", self.episodes, 1, 10**7)
        check_range("max_steps", self.max_steps, 1, 10**6)
        check_range("gamma", self.gamma, 0.0, 1.0 - 1e-9)
        for k, e in {**self.eps, **{str(x): x for x in self.sweep_eps}}.items():
            check_range(f"eps[{k}]", e, 0.0, 1.0)


@dataclass
class DatasetResult:
    """What each learner achieves on one dataset (values exact, discounted, from the start state)."""

    name: str
    size: int
    coverage: float  # fraction of (state, action) pairs of the non-cliff states seen
    v_behaviour: float
    v_bc: float  # greedy BC (the most frequent action per state)
    v_naive: float  # greedy w.r.t. naive offline Q
    q_naive_s0: float  # what naive offline Q claims its greedy policy is worth: max_a Q(s0, a)
    gap_unseen: np.ndarray  # (K,) Q_naive - Q* on unseen pairs of seen states


@dataclass
class OfflineResult:
    cfg: OfflineConfig
    mdp: TabularMDP
    Q_star: np.ndarray  # (S, A) exact
    v_star: float
    datasets: dict  # name -> Dataset
    results: dict  # name -> DatasetResult
    sweep: list  # [DatasetResult] of the coverage sweep, in cfg.sweep_eps order
    Q_naive: dict  # name -> (S, A) naive offline Q
    replay_diff: float  # max |q_learning_replay - offline_q_iteration| on the expert dataset
    v_online: float  # online Q-learning (exploring) after cfg.online_episodes episodes
    online_transitions: int


def make_env(max_steps: int = 100):
    import gymnasium as gym

    check_range("max_steps", max_steps, 1, 10**6)
    return gym.make(ENV_ID, max_episode_steps=max_steps)


def true_mdp(gamma: float = GAMMA) -> TabularMDP:
    """CliffWalking's exact 5-tuple from gymnasium's transition table."""
    return from_gymnasium(make_env(), gamma)


def optimal_q(mdp: TabularMDP) -> np.ndarray:
    r"""Exact :math:`Q^* = R + \gamma P_c V^*` ``(S, A)`` by value iteration (:mod:`llmcore.foundation_rl.mdp`)."""
    V_star, _, _, _ = value_iteration(mdp)
    return mdp.R + mdp.gamma * mdp.Pc @ V_star


def analyse(data: Dataset, mdp: TabularMDP, Q_star: np.ndarray, gamma: float) -> tuple[DatasetResult, np.ndarray]:
    """Fit BC and naive offline Q-learning to ``data`` and evaluate both exactly in the true MDP."""
    emp = empirical_mdp(data, mdp.n_states, mdp.n_actions, gamma)
    Qn = offline_q_iteration(emp)
    pi_beh = np.zeros_like(emp.counts)
    np.add.at(pi_beh, data.obs, data.behaviour_probs)  # beta(.|s) as collected (a mixture: visit-weighted)
    n = pi_beh.sum(1, keepdims=True)
    pi_beh = np.where(n > 0, pi_beh / np.maximum(n, 1e-12), 1.0 / mdp.n_actions)
    valid = ~np.isin(np.arange(mdp.n_states), np.arange(37, 47))  # cliff cells are never occupied
    valid[47] = False  # the goal: episodes end on arrival
    return DatasetResult(data.name, data.size, float(emp.seen[valid].mean()), policy_value(mdp, pi_beh),
                         policy_value(mdp, greedy(emp.counts)), policy_value(mdp, greedy(Qn)),
                         float(mdp.mu0 @ Qn.max(1)), extrapolation_gap(Qn, Q_star, emp)), Qn


def experiment(cfg: OfflineConfig, seed: int = 0, show_progress: bool = False) -> OfflineResult:
    """Collect the datasets, fit BC and naive offline Q-learning, sweep coverage, compare with online Q-learning."""
    cfg.validate()
    mdp = true_mdp(cfg.gamma)
    Q_star = optimal_q(mdp)
    env = make_env(cfg.max_steps)
    jobs = [(name, e) for name, e in cfg.eps.items()] + [(f"eps={e:g}", e) for e in cfg.sweep_eps]
    datasets, results, Q_naive, sweep = {}, {}, {}, []
    for k, (name, e) in enumerate(progress(jobs, desc="collect + fit datasets", disable=not show_progress)):
        data = collect_tabular(env, eps_greedy_policy(Q_star, e), cfg.episodes, seed * 1_000_003 + 7919 * k, name)
        res, Qn = analyse(data, mdp, Q_star, cfg.gamma)
        if name in cfg.eps:
            datasets[name], results[name], Q_naive[name] = data, res, Qn
        else:
            sweep.append(res)
    half = cfg.episodes // 2
    mixed = Dataset.concat("mixed", [
        collect_tabular(env, eps_greedy_policy(Q_star, 1.0), half, seed * 1_000_003 + 101, "random"),
        collect_tabular(env, eps_greedy_policy(Q_star, 0.0), cfg.episodes - half, seed * 1_000_003 + 202, "expert")])
    datasets["mixed"] = mixed
    results["mixed"], Q_naive["mixed"] = analyse(mixed, mdp, Q_star, cfg.gamma)
    # the same update, sample by sample over the expert dataset, lands on the same fixed point
    small = datasets["expert"]
    Qr = q_learning_replay(small, mdp.n_states, mdp.n_actions, cfg.gamma, lr=1.0, sweeps=60, seed=seed)
    replay_diff = float(np.max(np.abs(Qr - Q_naive["expert"])))
    # off-policy but online: Q-learning explores with ε = 0.1 and fixes its own mistakes
    Q_on, rets = td_control(make_env(cfg.max_steps), TDConfig(algo="q_learning", episodes=cfg.online_episodes,
                                                              alpha=0.5, gamma=cfg.gamma, epsilon=0.1), seed=seed)
    return OfflineResult(cfg, mdp, Q_star, float(mdp.mu0 @ Q_star.max(1)), datasets, results, sweep, Q_naive, replay_diff,
                         policy_value(mdp, greedy(Q_on)), int(-rets.sum()))


def make_report(res: OfflineResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and acceptance criteria of the offline-RL overview (thresholds live here only)."""
    rep = Report("offline_rl", "Offline RL / 离线强化学习", toy, device, seed)
    rep.metric("V*(s0) (exact)", res.v_star)
    for name, r in res.results.items():
        rep.metric(f"{name}: transitions", r.size)
        rep.metric(f"{name}: coverage of (s, a)", r.coverage)
        rep.metric(f"{name}: V(s0) behaviour", r.v_behaviour)
        rep.metric(f"{name}: V(s0) BC", r.v_bc)
        rep.metric(f"{name}: V(s0) naive offline Q", r.v_naive)
        rep.metric(f"{name}: naive Q's own estimate max_a Q(s0, a)", r.q_naive_s0)
        if len(r.gap_unseen):
            rep.metric(f"{name}: unseen pairs", len(r.gap_unseen))
            rep.metric(f"{name}: mean Q_naive - Q* on unseen pairs", float(r.gap_unseen.mean()))
    rep.metric("online Q-learning (eps = 0.1): V(s0) of its greedy policy", res.v_online)
    ex = res.results["expert"]
    # extrapolation error, measured against the exact Q*: every unseen action is overvalued (each step costs
    # -1, so Q* <= -1 while an unseen pair keeps its initial 0)
    rep.check("expert data: min over unseen pairs of Q_naive - Q*", float(ex.gap_unseen.min()), ">", 0.5)
    rep.check("expert data: naive Q's estimate minus its policy's true value at s0", ex.q_naive_s0 - ex.v_naive,
              ">", 10.0)
    # ... and the greedy policy underperforms the data it learned from
    rep.check("expert data: V(behaviour) - V(naive offline Q) at s0", ex.v_behaviour - ex.v_naive, ">", 5.0)
    for name in ("expert", "medium", "mixed"):
        r = res.results[name]
        rep.check(f"{name} data: V(BC) - V(naive offline Q) at s0", r.v_bc - r.v_naive, ">", 5.0)
    # off-policy != offline: with every pair covered the same learner finds the optimal policy; online, it
    # covers what it needs by exploring
    full = [r for r in res.sweep if r.coverage == 1.0]
    rep.metric("coverage sweep: datasets with every pair covered", len(full))
    rep.check("coverage sweep, full-coverage datasets: max V* - V(naive offline Q) at s0",
              max((res.v_star - r.v_naive for r in full), default=float("nan")), "<", 1e-6)
    narrow = [r for r in res.sweep if r.coverage < 0.7]
    rep.check("coverage sweep, coverage < 0.7: min V(BC) - V(naive offline Q) at s0",
              min((r.v_bc - r.v_naive for r in narrow), default=float("nan")), ">", 5.0)
    rep.check("online Q-learning: V* - V(greedy) at s0", res.v_star - res.v_online, "<", 1e-6)
    rep.check("Q-learning replayed over the data equals the fixed point (max abs diff)", res.replay_diff, "<", 1e-8)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The offline-RL overview closed loop (tabular NumPy: ``device`` is recorded, not used)."""
    res = experiment(OfflineConfig.for_mode(toy), seed=seed, show_progress=True)
    return make_report(res, toy, str(device), seed)
