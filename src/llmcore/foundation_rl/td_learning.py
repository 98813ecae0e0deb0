r"""TD control on CliffWalking: Q-learning (off-policy) vs SARSA (on-policy), Sutton & Barto Example 6.6.

The learners are :func:`llmcore.foundation_rl.tabular.td_control`. This module runs the book's
experiment (ε = 0.1, α = 0.5, γ = 1, 500 episodes, averaged over runs), reads the greedy paths off the
learned Q-tables, and cross-checks both against closed forms computed on gymnasium's own transition
table (:mod:`llmcore.foundation_rl.mdp`):

* :math:`Q^*` by value iteration — Q-learning learns it, so its greedy path is the optimal 13-step path
  along the cliff edge;
* :math:`Q^{\varepsilon*}`, the best *ε-greedy* policy, by value iteration with the ε-soft backup
  :math:`Q(s,a) = R(s,a) + \sum_{s'} P(s'|s,a)\,[(1-\varepsilon)\max_{a'}Q(s',a') + \varepsilon\,\overline{Q}(s')]`
  — the fixed point SARSA heads for, whose path keeps away from the edge;
* the exact expected return per episode of ε-greedy behaviour around each greedy path (policy
  evaluation), the asymptotes of the online-return curves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report
from llmcore.foundation_rl.tabular import TDConfig, td_control

SHAPE = (4, 12)  # CliffWalking grid: rows x cols; start (3, 0), goal (3, 11), cliff (3, 1..10)
START, GOAL = 36, 47
ARROWS = "↑→↓←"  # CliffWalking's action order: 0 UP, 1 RIGHT, 2 DOWN, 3 LEFT


def make_env():
    import gymnasium as gym

    return gym.make("CliffWalking-v1")


def greedy_path(Q: np.ndarray, max_steps: int = 100) -> list[int]:
    """States visited by the deterministic greedy policy ``argmax_a Q`` from the start.

    Ends at the goal; a path that steps into the cliff or loops is returned as far as it got.
    """
    rows, cols = SHAPE
    s, path = START, [START]
    for _ in range(max_steps):
        r, c = divmod(s, cols)
        a = int(np.argmax(Q[s]))
        dr, dc = [(-1, 0), (0, 1), (1, 0), (0, -1)][a]
        r2, c2 = min(max(r + dr, 0), rows - 1), min(max(c + dc, 0), cols - 1)
        s = r2 * cols + c2
        path.append(s)
        if s == GOAL or (r2 == rows - 1 and 0 < c2 < cols - 1) or path.count(s) > 1:
            break
    return path


def path_stats(path: list[int]) -> dict:
    """Length in steps, whether it reaches the goal, and cells on the cliff-edge row (row 2, cols 1..10)."""
    cols = SHAPE[1]
    edge = sum(1 for s in path if s // cols == 2 and 0 < s % cols < cols - 1)
    return {"steps": len(path) - 1, "reaches_goal": path[-1] == GOAL, "edge_cells": edge,
            "top_row": min(s // cols for s in path)}


def soft_value_iteration(mdp, epsilon: float, tol: float = 1e-10, max_sweeps: int = 200_000) -> np.ndarray:
    r"""Q of the best ε-greedy policy: iterate the ε-soft Bellman backup to its fixed point, ``(S, A)``."""
    check_range("epsilon", epsilon, 0.0, 1.0)
    Q = np.zeros((mdp.n_states, mdp.n_actions))
    for _ in range(max_sweeps):
        V = (1 - epsilon) * Q.max(axis=1) + epsilon * Q.mean(axis=1)
        Q_new = mdp.R + mdp.gamma * mdp.Pc @ V
        if np.max(np.abs(Q_new - Q)) < tol:
            return Q_new
        Q = Q_new
    raise LLMCoreError(f"ε-soft value iteration did not converge in {max_sweeps} sweeps")


def eps_greedy_return(mdp, Q: np.ndarray, epsilon: float) -> float:
    r"""Exact expected undiscounted return from the start of the ε-greedy policy around ``argmax Q``.

    Solves :math:`(I - P_\pi) V = R_\pi` with :math:`\pi = (1-\varepsilon)\,\text{greedy} + \varepsilon\,\text{uniform}`.
    """
    S, A = Q.shape
    pi = np.full((S, A), epsilon / A)
    pi[np.arange(S), np.argmax(Q, axis=1)] += 1 - epsilon
    P_pi = np.einsum("sa,sap->sp", pi, mdp.Pc)
    R_pi = np.sum(pi * mdp.R, axis=1)
    V = np.linalg.solve(np.eye(S) - P_pi + np.diag(np.eye(S)[GOAL]), R_pi)  # goal row: V = R = 0
    return float(V[START])


# -- maximisation bias and Double Q-learning (Sutton & Barto Example 6.7, Figure 6.5) ----------------

def double_q_target(q_select: np.ndarray, q_eval: np.ndarray, reward, gamma: float, terminated) -> np.ndarray:
    r"""Double Q-learning's bootstrap target :math:`r + \gamma(1-d)\,Q_B(s', \arg\max_{a'} Q_A(s', a'))`.

    One table *selects* the next action, the other *evaluates* it (van Hasselt 2010), so the noise that
    made the selected action look best is not the noise used to value it.

    Args:
        q_select: ``(..., A)`` — :math:`Q_A(s', \cdot)`, the table that picks :math:`a^*` (ties: lowest index).
        q_eval: ``(..., A)`` — :math:`Q_B(s', \cdot)`, the table that values :math:`a^*`.
        reward, terminated: ``(...)`` (scalars or arrays); ``terminated`` = 1 stops the bootstrap.
    Returns:
        the target, shape ``(...)``.
    """
    q_select, q_eval = np.asarray(q_select, dtype=float), np.asarray(q_eval, dtype=float)
    if q_select.shape != q_eval.shape:
        raise LLMCoreError(f"q_select {q_select.shape} and q_eval {q_eval.shape} must have the same shape")
    a_star = np.argmax(q_select, axis=-1)[..., None]
    bootstrap = np.take_along_axis(q_eval, a_star, axis=-1)[..., 0]
    return np.asarray(reward, dtype=float) + gamma * (1.0 - np.asarray(terminated, dtype=float)) * bootstrap


def _eps_greedy_batch(q: np.ndarray, eps: float, rng: np.random.Generator) -> np.ndarray:
    """ε-greedy actions for a batch of rows ``q (R, A)`` with ties broken uniformly at random, ``(R,)``."""
    noise = rng.random(q.shape)
    greedy = np.argmax(np.where(q == q.max(axis=1, keepdims=True), noise, -1.0), axis=1)
    explore = rng.random(len(q)) < eps
    return np.where(explore, rng.integers(q.shape[1], size=len(q)), greedy)


@dataclass
class BiasConfig:
    """Sutton & Barto Example 6.7: A --left--> B (then many actions, reward N(-0.1, 1)), A --right--> end (0)."""

    runs: int = 2000  # independent runs, simulated side by side (vectorised)
    episodes: int = 300
    n_b_actions: int = 10  # actions in state B
    mean_b: float = -0.1  # mean reward of every action in B
    alpha: float = 0.1
    epsilon: float = 0.1
    gamma: float = 1.0


def maximization_bias(cfg: BiasConfig, double: bool, seed: int = 0) -> np.ndarray:
    r"""Fraction of runs that take LEFT in A, per episode ``(episodes,)``, for Q-learning or Double Q-learning.

    Every action in B is worth −0.1, so LEFT is worth −0.1 and RIGHT 0: the optimal ε-greedy policy goes
    left with probability ε/2 = 5%. Q-learning's target :math:`\max_b Q(B, b)` takes the maximum of noisy
    estimates, which is biased upwards (:math:`\mathbb E\max \ge \max\mathbb E`), so it first learns to go
    left. Double Q-learning's target :func:`double_q_target` is unbiased for the selected action.
    """
    check_range("runs", cfg.runs, 1, 10**7)
    rng = np.random.default_rng(seed)
    n, nb = cfg.runs, cfg.n_b_actions
    idx = np.arange(n)
    QA = np.zeros((2, n, 2))  # two tables (Double Q uses both; Q-learning only table 0); actions LEFT=0, RIGHT=1
    QB = np.zeros((2, n, nb))
    left = np.zeros(cfg.episodes)
    for ep in range(cfg.episodes):
        qa = QA.sum(0) if double else QA[0]  # Double Q behaves ε-greedily w.r.t. Q_1 + Q_2
        a = _eps_greedy_batch(qa, cfg.epsilon, rng)
        went_left = a == 0
        left[ep] = went_left.mean()
        k = rng.integers(2, size=n) if double else np.zeros(n, dtype=int)  # which table this step updates
        # step 1 in A: RIGHT ends the episode with 0; LEFT moves to B with 0 and bootstraps
        if double:
            boot = double_q_target(QB[k, idx], QB[1 - k, idx], 0.0, cfg.gamma, ~went_left)
        else:
            boot = cfg.gamma * went_left * QB[0].max(axis=1)
        QA[k, idx, a] += cfg.alpha * (boot - QA[k, idx, a])
        # step 2 in B (runs that went left): any action ends with reward N(mean_b, 1)
        qb = QB.sum(0) if double else QB[0]
        b = _eps_greedy_batch(qb, cfg.epsilon, rng)
        r = cfg.mean_b + rng.standard_normal(n)
        k2 = rng.integers(2, size=n) if double else np.zeros(n, dtype=int)
        upd = cfg.alpha * (r - QB[k2, idx, b]) * went_left
        QB[k2, idx, b] += upd
    return left


@dataclass
class BiasResult:
    cfg: BiasConfig
    left_q: np.ndarray  # (episodes,) fraction of runs going LEFT in A, Q-learning
    left_double: np.ndarray  # (episodes,) the same for Double Q-learning

    @property
    def optimal(self) -> float:
        """LEFT probability of the optimal ε-greedy policy: ε / 2."""
        return self.cfg.epsilon / 2


def plot_bias_mdp(ax) -> None:
    """Diagram of Sutton & Barto's Example 6.7: the MDP on which Q-learning's max is biased."""
    from matplotlib.patches import Rectangle

    ax.set_xlim(-0.5, 7.5)
    ax.set_ylim(-1.6, 1.6)
    ax.axis("off")
    for x, name in ((2.5, "B"), (4.5, "A")):
        ax.scatter([x], [0], s=900, facecolors="white", edgecolors="k", zorder=3)
        ax.text(x, 0, name, ha="center", va="center", fontsize=13, weight="bold")
    ax.add_patch(Rectangle((6.6, -0.3), 0.6, 0.6, fc="0.8", ec="k"))
    ax.text(6.9, -0.55, "end", ha="center", va="top", fontsize=9)
    ax.annotate("", xy=(6.55, 0), xytext=(4.85, 0), arrowprops={"arrowstyle": "->", "lw": 1.4})
    ax.text(5.7, 0.12, "RIGHT, r = 0", ha="center", fontsize=9)
    ax.annotate("", xy=(2.85, 0), xytext=(4.15, 0), arrowprops={"arrowstyle": "->", "lw": 1.4})
    ax.text(3.5, 0.12, "LEFT, r = 0", ha="center", fontsize=9)
    for dy in np.linspace(-1.2, 1.2, 7):
        ax.annotate("", xy=(0.4, dy), xytext=(2.2, dy * 0.25), arrowprops={"arrowstyle": "->", "lw": 0.8,
                                                                        "color": "0.4"})
    ax.add_patch(Rectangle((-0.2, -1.4), 0.6, 2.8, fc="0.8", ec="k"))
    ax.text(0.1, -1.5, "end", ha="center", va="top", fontsize=9)
    ax.text(1.9, 1.3, "10 actions,\neach r ~ N(-0.1, 1)", ha="center", fontsize=9)
    ax.text(3.5, -1.3, r"true values: $Q(A,\mathrm{LEFT}) = -0.1 < Q(A,\mathrm{RIGHT}) = 0$", ha="center", fontsize=9)


def bias_experiment(toy: bool = True, seed: int = 0) -> BiasResult:
    """Q-learning vs Double Q-learning on Example 6.7 (1000 runs in toy mode, 10000 as in the book)."""
    cfg = BiasConfig(runs=1000 if toy else 10_000)
    return BiasResult(cfg, maximization_bias(cfg, False, seed), maximization_bias(cfg, True, seed + 1))


@dataclass
class TDResult:
    """Online returns ``(runs, episodes)`` and final Q-tables per algorithm, plus the closed forms."""

    epsilon: float
    alpha: float
    seeds: list[int]
    returns: dict  # algo -> (runs, episodes)
    Qs: dict  # algo -> list of (S, A)
    Q_star: np.ndarray
    Q_soft: np.ndarray
    exact_return: dict  # "optimal" / "eps_optimal" -> expected ε-greedy return from the start
    bias: BiasResult | None = None  # Q-learning vs Double Q-learning on Example 6.7


def experiment(toy: bool = True, seed: int = 0, epsilon: float = 0.1, alpha: float = 0.5,
               episodes: int = 500, runs: int | None = None, show_progress: bool = False) -> TDResult:
    """Sutton & Barto Example 6.6: ``runs`` independent runs of each algorithm (seeds ``seed..seed+runs-1``)."""
    from llmcore.core.seed import seed_everything
    from llmcore.foundation_rl.mdp import from_gymnasium, value_iteration

    seed_everything(seed)
    runs = runs or (20 if toy else 100)
    check_range("runs", runs, 1, 100_000)
    env = make_env()
    seeds = list(range(seed, seed + runs))
    returns, Qs = {}, {}
    for algo in ("sarsa", "q_learning"):
        cfg = TDConfig(algo=algo, episodes=episodes, alpha=alpha, gamma=1.0, epsilon=epsilon)
        out = [td_control(env, cfg, s) for s in progress(seeds, desc=algo, disable=not show_progress)]
        Qs[algo] = [q for q, _ in out]
        returns[algo] = np.stack([r for _, r in out])
    mdp = from_gymnasium(env, gamma=1.0)
    env.close()
    _, pi_star, _, _ = value_iteration(mdp)
    Q_star = mdp.R + mdp.Pc @ value_iteration(mdp)[0]
    assert np.array_equal(np.argmax(Q_star, 1), pi_star)
    Q_soft = soft_value_iteration(mdp, epsilon)
    exact = {"optimal": eps_greedy_return(mdp, Q_star, epsilon),
             "eps_optimal": eps_greedy_return(mdp, Q_soft, epsilon)}
    return TDResult(epsilon, alpha, seeds, returns, Qs, Q_star, Q_soft, exact, bias_experiment(toy, seed))


def path_agreement(res: TDResult, algo: str, Q_ref: np.ndarray) -> float:
    """Fraction of runs whose greedy path equals the greedy path of ``Q_ref``."""
    ref = greedy_path(Q_ref)
    return float(np.mean([greedy_path(Q) == ref for Q in res.Qs[algo]]))


def mean_q(res: TDResult, algo: str) -> np.ndarray:
    """The Q-table averaged over runs ``(S, A)`` — its greedy path is the typical one of the book's figure
    (with a constant α = 0.5 each single table keeps fluctuating around it)."""
    return np.mean(res.Qs[algo], axis=0)


def make_report(res: TDResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("td", "TD Learning / 时序差分学习", toy, device, seed)
    R_s, R_q = res.returns["sarsa"], res.returns["q_learning"]
    late = slice(100, None)  # after the first 100 episodes (both have found the goal by then)
    s_mean, q_mean = float(R_s[:, late].mean()), float(R_q[:, late].mean())
    per_run_gap = R_s[:, late].mean(1) - R_q[:, late].mean(1)
    se = float(per_run_gap.std(ddof=1) / np.sqrt(len(per_run_gap))) if len(per_run_gap) > 1 else float("nan")
    rep.metric("runs", len(res.seeds))
    rep.metric("epsilon", res.epsilon)
    rep.metric("SARSA online return / episode (episodes 100-500)", s_mean)
    rep.metric("Q-learning online return / episode (episodes 100-500)", q_mean)
    rep.metric("exact eps-greedy return around Q* path", res.exact_return["optimal"])
    rep.metric("exact eps-greedy return around eps-optimal path", res.exact_return["eps_optimal"])
    p_q = path_stats(greedy_path(res.Q_star))
    p_soft = path_stats(greedy_path(res.Q_soft))
    rep.metric("Q* greedy path steps", p_q["steps"])
    rep.metric("eps-optimal greedy path steps", p_soft["steps"])
    q_paths = [path_stats(greedy_path(Q)) for Q in res.Qs["q_learning"]]
    s_paths = [path_stats(greedy_path(Q)) for Q in res.Qs["sarsa"]]
    rep.metric("SARSA runs reaching the goal greedily", np.mean([p["reaches_goal"] for p in s_paths]))
    rep.check("SARSA - Q-learning online return (mean over runs)", s_mean - q_mean, ">", 0.0)
    rep.check("... in standard errors of the per-run gap", float(np.mean(per_run_gap)) / se, ">", 3.0)
    rep.check("Q-learning runs whose greedy path is the 13-step cliff-edge path",
              np.mean([p["steps"] == 13 and p["edge_cells"] == 10 for p in q_paths]), "==", 1.0)
    rep.check("Q-learning runs whose greedy path equals VI's Q* path", path_agreement(res, "q_learning", res.Q_star),
              "==", 1.0)
    s_avg = path_stats(greedy_path(mean_q(res, "sarsa")))
    q_avg = path_stats(greedy_path(mean_q(res, "q_learning")))
    rep.metric("SARSA run-averaged greedy path steps", s_avg["steps"])
    rep.check("Q-learning run-averaged greedy path: steps", q_avg["steps"], "==", 13)
    rep.check("Q-learning run-averaged greedy path: cliff-edge cells", q_avg["edge_cells"], "==", 10)
    rep.check("SARSA run-averaged greedy path: reaches the goal", float(s_avg["reaches_goal"]), "==", 1.0)
    rep.check("SARSA run-averaged greedy path: cliff-edge cells (safe path)", s_avg["edge_cells"], "==", 0)
    rep.check("SARSA single runs whose greedy path reaches G off the cliff edge",
              np.mean([p["reaches_goal"] and p["edge_cells"] == 0 for p in s_paths]), ">=", 0.5)
    rep.check("|Q-learning online return - exact eps-greedy return on the Q* path|",
              abs(q_mean - res.exact_return["optimal"]), "<", 5.0)
    if res.bias is not None:
        b = res.bias
        early = slice(0, 100)
        rep.metric("maximisation bias: runs", b.cfg.runs)
        rep.metric("Q-learning LEFT rate, peak over episodes", float(b.left_q.max()))
        rep.metric("Q-learning LEFT rate, episodes 1-100", float(b.left_q[early].mean()))
        rep.metric("Double Q LEFT rate, episodes 1-100", float(b.left_double[early].mean()))
        rep.metric("Q-learning LEFT rate, episodes 201-300", float(b.left_q[200:].mean()))
        rep.metric("Double Q LEFT rate, episodes 201-300", float(b.left_double[200:].mean()))
        rep.check("maximisation bias: Q-learning - Double Q LEFT rate (episodes 1-100)",
                  float(b.left_q[early].mean() - b.left_double[early].mean()), ">", 0.3)
        rep.check("Q-learning's peak LEFT rate (optimal: eps/2 = 0.05)", float(b.left_q.max()), ">", 0.5)
        rep.check("Double Q LEFT rate, episodes 201-300 (optimal 0.05)", float(b.left_double[200:].mean()), "<", 0.1)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The TD closed loop (tabular, so ``device`` is validated and recorded but unused)."""
    dev = device  # resolved once by the registry (run_module)
    res = experiment(toy=toy, seed=seed)
    rep = make_report(res, toy, str(dev), seed)
    rep.notes.append("Q-learning greedy path:\n" + "\n".join(draw_path(greedy_path(res.Qs["q_learning"][0]))))
    rep.notes.append("SARSA greedy path:\n" + "\n".join(draw_path(greedy_path(res.Qs["sarsa"][0]))))
    return rep


def draw_path(path: list[int]) -> list[str]:
    """The grid as text: ``S`` start, ``G`` goal, ``C`` cliff, ``*`` path, ``.`` other cells."""
    rows, cols = SHAPE
    grid = [["." for _ in range(cols)] for _ in range(rows)]
    for c in range(1, cols - 1):
        grid[rows - 1][c] = "C"
    for s in path:
        r, c = divmod(s, cols)
        if grid[r][c] == ".":
            grid[r][c] = "*"
    grid[rows - 1][0], grid[rows - 1][cols - 1] = "S", "G"
    return ["".join(row) for row in grid]


def plot_paths(ax, paths: dict, title: str = "") -> None:
    """Draw the cliff grid and each ``{label: path}`` on a matplotlib axis."""
    from matplotlib.patches import Rectangle

    from llmcore.core.plotting import PALETTE

    rows, cols = SHAPE
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.grid(True, alpha=0.4)
    for c in range(1, cols - 1):
        ax.add_patch(Rectangle((c - 0.5, rows - 1.5), 1, 1, color="0.35"))
    ax.text(0, rows - 1, "S", ha="center", va="center", fontsize=12, weight="bold")
    ax.text(cols - 1, rows - 1, "G", ha="center", va="center", fontsize=12, weight="bold")
    ax.text(cols / 2 - 0.5, rows - 1, "the cliff (-100, back to S)", ha="center", va="center", color="w")
    for k, (label, path) in enumerate(paths.items()):
        ys, xs = np.divmod(np.asarray(path), cols)
        off = (k - (len(paths) - 1) / 2) * 0.12
        ax.plot(xs + off, ys + off, "-o", ms=3, lw=2, color=PALETTE[k], label=f"{label} ({len(path) - 1} steps)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(paths))
    if title:
        ax.set_title(title)
