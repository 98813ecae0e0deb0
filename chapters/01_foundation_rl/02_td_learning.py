# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # TD Learning / 时序差分学习
#
# **中文摘要：** 时序差分（TD）学习不需要环境模型，用一步采样 $r + \gamma Q(s', \cdot)$ 作为自举目标更新
# $Q(s,a)$。Q-Learning 用 $\max_{a'} Q(s',a')$（贪心策略的价值，离策略），SARSA 用行为策略真正
# 采取的下一个动作 $Q(s',a')$（在策略）。本章在 gymnasium 的 CliffWalking 上复现 Sutton & Barto
# 例 6.6：在 $\varepsilon = 0.1$ 的探索下，SARSA 学会远离悬崖的安全路径，在线回报更高；Q-Learning
# 学到沿悬崖边的 13 步最优路径，但探索时常掉下悬崖。我们用值迭代和“ε-软”值迭代在环境自带的转移表上
# 计算出两条路径与期望回报的精确值，作为交叉验证。
#
# **Learning goals**
# - write Q-learning and SARSA as one update that differs only in the bootstrap target;
# - explain *off-policy* vs *on-policy* with a picture: the path each method's greedy policy takes;
# - reproduce Sutton & Barto's Figure 6.4 (online return per episode, averaged over runs, with bands);
# - check learned behaviour against closed forms: $Q^*$ (value iteration), the best ε-greedy policy
#   (ε-soft value iteration) and the exact expected return of ε-greedy behaviour.
#
# **Prerequisites:** [MDP & Bellman equations](01_mdp.ipynb); [RL foundations overview](00_overview.ipynb).

# %% tags=["parameters"]
toy = True  # True: 20 runs per algorithm (seconds on a CPU); False: 100 runs as in the book
device = "auto"  # tabular: validated and recorded, no tensors are used
seed = 0
epsilon = 0.1  # exploration rate of the ε-greedy behaviour policy (the book's value)
alpha = 0.5  # step size (the book's value)
episodes = 500  # episodes per run

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore @ git+https://github.com/llm-core/llm-core@main"])

# %%
import matplotlib.pyplot as plt
import numpy as np

from llmcore.core import PALETTE, pick_device, seed_everything, show_source, use_style
from llmcore.foundation_rl import tabular
from llmcore.foundation_rl import td_learning as TD
from llmcore.foundation_rl.mdp import from_gymnasium

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, epsilon={epsilon}, alpha={alpha}")

# %% [markdown]
# ## Theory
#
# Dynamic programming needs $P$ and $R$. **Temporal-difference** learning {cite}`sutton1988td` replaces
# the expectation over $s'$ by the one transition that was just experienced and *bootstraps* on the
# current estimate. For control we learn action values:
#
# $$
# Q(s_t,a_t) \leftarrow Q(s_t,a_t) + \alpha\,\big[\,r_{t+1} + \gamma\,X_{t+1} - Q(s_t,a_t)\,\big].
# $$
#
# * **SARSA** {cite}`rummery1994sarsa` (on-policy): $X_{t+1} = Q(s_{t+1}, a_{t+1})$ with $a_{t+1}$ the
#   action the ε-greedy behaviour policy really takes next. It evaluates — and improves — *the policy
#   that is exploring*, so it converges to the best **ε-greedy** policy.
# * **Q-learning** {cite}`watkins1992` (off-policy): $X_{t+1} = \max_{a'} Q(s_{t+1}, a')$, the value of
#   the *greedy* policy, whatever the behaviour does. It converges to $Q^*$ of the optimal policy.
#
# On **CliffWalking** (4×12 grid, −1 per step, −100 and back to the start for stepping into the cliff)
# the optimal path runs along the cliff edge in 13 steps. A policy that explores with ε = 0.1 picks a
# random action 10% of the time, and one in four of those points down: on the edge row that is a fall.
# The best ε-greedy policy therefore walks further from the edge. Both targets can be computed exactly
# from the environment's transition table:
#
# $$
# Q^*(s,a) = R(s,a) + \sum_{s'}P(s'|s,a)\max_{a'}Q^*(s',a'), \qquad
# Q^{\varepsilon*}(s,a) = R(s,a) + \sum_{s'}P(s'|s,a)\Big[(1-\varepsilon)\max_{a'}Q^{\varepsilon*}(s',a')
# + \tfrac{\varepsilon}{|\mathcal A|}\sum_{a'}Q^{\varepsilon*}(s',a')\Big].
# $$

# %% [markdown]
# ## The implementation
#
# One function trains both: the only line that differs is the bootstrap target.

# %%
show_source(tabular.epsilon_greedy, tabular.td_control)

# %% [markdown]
# The closed forms: ε-soft value iteration and the exact return of ε-greedy behaviour (a linear solve
# on gymnasium's own transition table, read by the [MDP chapter](01_mdp.ipynb)'s `from_gymnasium`).

# %%
show_source(TD.soft_value_iteration, TD.eps_greedy_return)

# %% [markdown]
# ## The closed loop: Sutton & Barto Example 6.6
#
# Each run trains from scratch for 500 episodes with ε = 0.1, α = 0.5, γ = 1 and records the
# undiscounted return of every episode *while learning* (the online performance of the ε-greedy
# behaviour). Runs use seeds `seed, seed+1, ...`.

# %%
res = TD.experiment(toy=toy, seed=seed, epsilon=epsilon, alpha=alpha, episodes=episodes, show_progress=True)
print(f"{len(res.seeds)} runs per algorithm, {episodes} episodes each")


# %%
def smooth(x: np.ndarray, k: int = 10) -> np.ndarray:
    """Moving average over the last k episodes (along the last axis)."""
    c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(k, 0)], mode="edge"), axis=-1)
    return (c[..., k:] - c[..., :-k]) / k


fig, ax = plt.subplots(figsize=(7, 4))
for k, (algo, label) in enumerate((("sarsa", "SARSA"), ("q_learning", "Q-learning"))):
    R = smooth(res.returns[algo])
    m, se = R.mean(0), R.std(0, ddof=1) / np.sqrt(len(R))
    x = np.arange(1, R.shape[1] + 1)
    ax.plot(x, m, color=PALETTE[k], label=f"{label} (mean of {len(R)} runs)")
    ax.fill_between(x, m - 2 * se, m + 2 * se, color=PALETTE[k], alpha=0.25)
ax.axhline(res.exact_return["eps_optimal"], color=PALETTE[0], ls=":", label="exact: ε-greedy on the ε-optimal path")
ax.axhline(res.exact_return["optimal"], color=PALETTE[1], ls=":", label="exact: ε-greedy on the optimal path")
ax.set_ylim(-100, 0)
ax.set_xlabel("episode"), ax.set_ylabel("sum of rewards during episode")
ax.set_title(f"CliffWalking, ε = {epsilon}: online return (10-episode average, ±2 s.e. bands)")
ax.legend(loc="lower right", fontsize=8)
plt.show()

# %% [markdown]
# SARSA's curve sits well above Q-learning's: Q-learning has learned the *optimal* path, but it walks it
# while exploring and keeps falling off the cliff. The dotted lines are the exact expected returns of
# ε-greedy behaviour around each closed-form path — the asymptotes the curves approach.
#
# ### The paths, drawn on the grid
#
# Each run's Q-table keeps fluctuating with a constant α = 0.5, so we draw the greedy path of the
# Q-table averaged over runs (the "typical" learned policy), next to the closed-form paths.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
TD.plot_paths(axes[0], {"Q-learning": TD.greedy_path(TD.mean_q(res, "q_learning")),
                        "SARSA": TD.greedy_path(TD.mean_q(res, "sarsa"))}, "learned greedy paths (run-averaged Q)")
TD.plot_paths(axes[1], {"Q* (value iteration)": TD.greedy_path(res.Q_star),
                        "best ε-greedy (ε-soft VI)": TD.greedy_path(res.Q_soft)}, "closed-form paths")
plt.show()
for algo in ("q_learning", "sarsa"):
    print(algo, "greedy path (run-averaged Q):")
    print("\n".join(TD.draw_path(TD.greedy_path(TD.mean_q(res, algo)))))

# %% [markdown]
# ### Cross-check against the closed forms
#
# Q-learning's greedy path must be value iteration's optimal path in every run; the exact expected
# return of ε-greedy behaviour on that path must match Q-learning's measured online return.

# %%
env = TD.make_env()
mdp = from_gymnasium(env, gamma=1.0)
env.close()
opt = TD.path_stats(TD.greedy_path(res.Q_star))
assert opt["steps"] == 13 and opt["edge_cells"] == 10, opt
assert TD.path_agreement(res, "q_learning", res.Q_star) == 1.0
q_online = res.returns["q_learning"][:, 100:].mean()
print(f"Q-learning online return {q_online:.1f} vs exact {res.exact_return['optimal']:.1f}")
assert abs(q_online - res.exact_return["optimal"]) < 5.0

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = TD.make_report(res, toy, str(dev), seed)
print(report.summary(digits=2))
assert report.passed, report.failures()

# %% [markdown]
# ## Play: how much exploration?
#
# With less exploration the edge becomes less dangerous: SARSA's path moves towards the cliff and the
# two online curves come together (ε → 0 makes SARSA and Q-learning the same algorithm). Each slider
# move reruns 4 seeds per algorithm.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def play(eps: float = 0.1) -> None:
    r = TD.experiment(toy=True, seed=seed, epsilon=eps, alpha=alpha, episodes=300, runs=4)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 1.3]})
    for k, algo in enumerate(("sarsa", "q_learning")):
        axes[0].plot(smooth(r.returns[algo]).mean(0), color=PALETTE[k], label=algo)
    axes[0].set_ylim(-100, 0), axes[0].legend(), axes[0].set_title(f"online return, ε = {eps:.2f}")
    TD.plot_paths(axes[1], {"Q-learning": TD.greedy_path(TD.mean_q(r, "q_learning")),
                            "SARSA": TD.greedy_path(TD.mean_q(r, "sarsa"))})
    plt.show()


widgets.interact(play, eps=widgets.FloatSlider(value=0.1, min=0.0, max=0.3, step=0.02, description="ε"));

# %% [markdown]
# ## Exercises
#
# 1. Implement **Expected SARSA** ($X = \sum_{a'}\pi(a'|s')Q(s',a')$) as a third `algo` in
#    `td_control`. Where does its online curve lie, and why can it use α = 1?
# 2. Decay ε to 0 over training (`TDConfig(epsilon_final=0.0)`). Which path does SARSA end on?
# 3. Use the slippery variant `CliffWalkingSlippery-v1`. Does Q-learning still prefer the edge?
# 4. Prove that SARSA's fixed point is $Q^{\varepsilon*}$: write its expected update as a backup.
#
# ## References
#
# Sutton {cite}`sutton1988td` (TD learning); Rummery & Niranjan {cite}`rummery1994sarsa` (SARSA);
# Watkins & Dayan {cite}`watkins1992` (Q-learning); Sutton & Barto {cite}`sutton2018`, §6.4–6.5 and
# Example 6.6; gymnasium {cite}`towers2024gymnasium`. Full entries: [bibliography](../../book/bibliography.md).
