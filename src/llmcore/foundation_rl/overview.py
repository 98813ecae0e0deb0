"""The RL overview chapter: the book's algorithm taxonomy and learning path (both read from the
registry), and a first closed loop — a random agent vs a tabular Q-learning agent on FrozenLake.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmcore.core.device import CPU
from llmcore.core.registry import ALGORITHMS, MODULES, get
from llmcore.core.report import Report
from llmcore.foundation_rl import mdp as M
from llmcore.foundation_rl.tabular import TDConfig, evaluate_greedy, evaluate_random, td_control

FAMILIES = ["dynamic programming", "value-based", "policy-based", "actor-critic", "imitation"]
REGIMES = ["model (known P, R)", "online", "offline"]


def taxonomy_rows() -> list[dict[str, str]]:
    """One row per algorithm the book implements, with the chapter that implements it."""
    rows = []
    for a in ALGORITHMS:
        m = get(a.module)
        rows.append({"algorithm": a.name, "family": a.family, "policy": a.policy, "data": a.data,
                     "model": a.model, "chapter": f"{m.title_en} ({m.name})",
                     "status": "written" if m.written else "planned"})
    return rows


def learning_path() -> dict[str, int]:
    """Depth of every module in the prerequisite graph (0 = no prerequisites); raises on a cycle."""
    by_name = {m.name: m for m in MODULES}
    depth: dict[str, int] = {}

    def visit(name: str, stack: tuple[str, ...]) -> int:
        if name in stack:
            raise ValueError(f"prerequisite cycle: {' -> '.join((*stack, name))}")
        if name not in depth:
            pre = by_name[name].prerequisites
            depth[name] = 1 + max((visit(p, (*stack, name)) for p in pre), default=-1)
        return depth[name]

    for m in MODULES:
        visit(m.name, ())
    return depth


def plot_taxonomy(ax) -> None:
    """Algorithms placed by family (x) and data regime (y); marker = on/off-policy."""
    from collections import defaultdict

    from llmcore.core.plotting import PALETTE

    cells: dict[tuple[int, int], list] = defaultdict(list)
    for a in ALGORITHMS:
        cells[(FAMILIES.index(a.family), REGIMES.index(a.data))].append(a)
    for (x, y), algos in cells.items():
        for k, a in enumerate(algos):
            yy = y + 0.3 - 0.6 * (k + 0.5) / len(algos)
            style = {"on-policy": ("o", PALETTE[0]), "off-policy": ("s", PALETTE[1])}.get(a.policy, ("D", PALETTE[2]))
            ax.scatter([x - 0.38], [yy], marker=style[0], color=style[1], s=30)
            written = get(a.module).written
            ax.text(x - 0.3, yy, a.name, va="center", fontsize=8, color="k" if written else "0.55")
    ax.set_xticks(range(len(FAMILIES)), [f.replace(" ", "\n") for f in FAMILIES], fontsize=8)
    ax.set_yticks(range(len(REGIMES)), REGIMES, fontsize=8)
    ax.set_xlim(-0.5, len(FAMILIES) - 0.5), ax.set_ylim(-0.5, len(REGIMES) - 0.5)
    for x in np.arange(0.5, len(FAMILIES) - 1, 1.0):
        ax.axvline(x, color="0.85", lw=0.8)
    for y in np.arange(0.5, len(REGIMES) - 1, 1.0):
        ax.axhline(y, color="0.85", lw=0.8)
    ax.grid(False)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=PALETTE[0], label="on-policy"),
                       Line2D([], [], marker="s", ls="", color=PALETTE[1], label="off-policy"),
                       Line2D([], [], marker="D", ls="", color=PALETTE[2], label="planning")],
              loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8)


def plot_learning_path(ax) -> None:
    """The prerequisite graph of every registered module, layered by depth (grey = planned)."""
    from llmcore.core.plotting import PALETTE

    depth = learning_path()
    layers: dict[int, list[str]] = {}
    for m in MODULES:
        layers.setdefault(depth[m.name], []).append(m.name)
    pos = {}
    for d, names in layers.items():
        for i, n in enumerate(names):
            pos[n] = (d, (len(names) - 1) / 2 - i)
    parts = list(dict.fromkeys(m.part for m in MODULES))
    for m in MODULES:
        for p in m.prerequisites:
            (x0, y0), (x1, y1) = pos[p], pos[m.name]
            ax.annotate("", xy=(x1 - 0.08, y1), xytext=(x0 + 0.08, y0),
                        arrowprops={"arrowstyle": "->", "color": "0.6", "lw": 0.7})
    for m in MODULES:
        x, y = pos[m.name]
        colour = PALETTE[parts.index(m.part) % len(PALETTE)]
        ax.text(x, y, m.name, ha="center", va="center", fontsize=7.5,
                bbox={"boxstyle": "round,pad=0.25", "fc": colour if m.written else "white",
                      "ec": colour, "alpha": 0.9},
                color="white" if m.written else colour)
    ax.set_xlim(-0.6, max(layers) + 0.6)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.8, max(y for _, y in pos.values()) + 0.8)
    ax.axis("off")


def plot_token_mdp(ax) -> None:
    """The token-level MDP of a language model: state = prompt + generated prefix, action = next token,
    deterministic transition (append the token), reward only when the episode ends at EOS."""
    from matplotlib.patches import FancyBboxPatch

    ax.set_xlim(0, 10.4)
    ax.set_ylim(0, 3.2)
    ax.axis("off")
    prompt = "2+3="
    steps = [("5", 0.0), (" ", 0.0), ("<eos>", 1.0)]
    x = 0.2
    prefix = prompt
    for k in range(len(steps) + 1):
        label = prefix
        w = 0.3 + 0.16 * len(label)
        ax.add_patch(FancyBboxPatch((x, 1.6), w, 0.7, boxstyle="round,pad=0.05", fc="#e8eef7", ec="k", lw=0.8))
        ax.text(x + w / 2, 1.95, label, ha="center", va="center", fontsize=9,
                family="monospace")
        ax.text(x + w / 2, 2.55, f"$s_{k}$" + (" = prompt" if k == 0 else ""), ha="center", fontsize=9)
        if k == len(steps):
            ax.text(x + w / 2, 1.2, "terminal", ha="center", fontsize=8, color="0.4")
            break
        tok, r = steps[k]
        x2 = x + w + 1.1
        ax.annotate("", xy=(x2 - 0.05, 1.95), xytext=(x + w + 0.05, 1.95),
                    arrowprops={"arrowstyle": "->", "lw": 1.2})
        ax.text((x + w + x2) / 2, 2.1, f"$a_{k}$={tok!r}".replace("'<eos>'", "EOS"), ha="center", fontsize=8)
        ax.text((x + w + x2) / 2, 1.55, f"$r_{k + 1}$={r:g}" if r == 0 else f"$r_{k + 1}$=R(answer)",
                ha="center", va="top", fontsize=8, color="C3" if r else "0.4")
        prefix = prefix + tok
        x = x2
    ax.text(0.2, 0.45, r"policy $\pi_\theta(a_t|s_t)$ = the LM's next-token softmax;  "
            r"transition: $s_{t+1} = s_t \Vert a_t$ (deterministic);  "
            r"return $G_0$ = reward at EOS ($-\beta$ KL per token in RLHF)", fontsize=8)


@dataclass
class AgentsResult:
    random_returns: np.ndarray  # (eval_episodes,)
    trained_returns: np.ndarray  # (eval_episodes,)
    train_returns: np.ndarray  # (train_episodes,) online returns while learning
    optimal_success: float  # exact success probability of the optimal policy (dynamic programming)
    Q: np.ndarray
    random_exact: float = float("nan")  # exact success probability of the uniform random policy


def random_vs_trained(toy: bool = True, seed: int = 0, show_progress: bool = True) -> AgentsResult:
    """Random agent vs tabular Q-learning on slippery FrozenLake, both scored by the real env."""
    from llmcore.core.seed import seed_everything

    seed_everything(seed)
    env = M.make_env("4x4" if toy else "8x8")
    cfg = TDConfig(algo="q_learning", episodes=6000 if toy else 60_000, alpha=0.05, gamma=0.99,
                   epsilon=1.0, epsilon_final=0.05)
    Q, train_returns = td_control(env, cfg, seed=seed, show_progress=show_progress)
    n_eval = 1000
    eval_seed = 10_000 + seed  # evaluation episodes are disjoint from training seeds
    trained = evaluate_greedy(env, Q, n_eval, eval_seed)
    rand = evaluate_random(env, n_eval, eval_seed)
    mdp = M.from_gymnasium(env, 0.99)
    _, pi_star, _, _ = M.value_iteration(mdp)
    optimal = float(mdp.mu0 @ M.finite_horizon_success(mdp, pi_star, env.spec.max_episode_steps))
    uniform = np.full(mdp.R.shape, 1.0 / mdp.n_actions)
    random_exact = float(mdp.mu0 @ M.finite_horizon_value(mdp, uniform, env.spec.max_episode_steps))
    env.close()
    return AgentsResult(rand, trained, train_returns, optimal, Q, random_exact)


def make_report(res: AgentsResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("overview", "RL Foundations / 强化学习基础", toy, device, seed)
    rnd, trn = float(res.random_returns.mean()), float(res.trained_returns.mean())
    rep.metric("random agent success rate", rnd)
    rep.metric("Q-learning greedy success rate", trn)
    rep.metric("optimal success probability (DP)", res.optimal_success)
    rep.metric("algorithms in the taxonomy", len(ALGORITHMS))
    rep.metric("knowledge-map rows on the learning path", len({get(n).chapter for n in learning_path()}))
    rep.check("trained - random success rate", trn - rnd, ">", 0.5)
    rep.check("trained / optimal success", trn / res.optimal_success, ">=", 0.9)
    rep.check("taxonomy algorithms whose chapter is not registered", sum(
        a.module not in {m.name for m in MODULES} for a in ALGORITHMS), "==", 0)
    if not np.isnan(res.random_exact):
        n = len(res.random_returns)
        se = float(np.sqrt(res.random_exact * (1 - res.random_exact) / n))
        rep.metric("random policy success probability (exact, from gymnasium's P)", res.random_exact)
        rep.check("|random agent in gymnasium - exact| in standard errors", abs(rnd - res.random_exact) / se, "<", 3.0)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    dev = device  # resolved once by the registry (run_module)
    return make_report(random_vs_trained(toy, seed), toy, str(dev), seed)
