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
# # Offline RL / 离线强化学习
#
# **中文摘要：** 离线强化学习只用一份固定的数据集学习策略，学习期间不能再与环境交互。Q-learning 是
# 异策略（off-policy）算法，理论上能从任何数据中学到 $Q^*$；但离线时，它的目标
# $r+\gamma\max_{a'}Q(s',a')$ 会读取数据中从未出现过的动作的价值——这些值永远得不到纠正，max 恰好挑出其中
# 被高估的那些，自举（bootstrapping）再把误差传到上游所有状态：这就是**外推误差**。本章在 CliffWalking
# 上用 gymnasium 的转移表精确求出 $Q^*$ 和任意策略的真实价值，收集随机、中等、专家与混合四种行为策略的
# 数据集（带行为策略的动作概率），测量朴素离线 Q-learning 在未见动作上的高估量，证明它的贪心策略比
# 产生数据的行为策略和行为克隆（BC）都差；再扫描数据覆盖度，画出“覆盖度—性能”曲线：覆盖完整时同一个
# 算法能找到最优策略，在线探索也能——异策略不等于离线。
#
# **Learning goals**
# - tell *off-policy* (learning about a policy other than the one that acts) from *offline* (no new data at all);
# - collect datasets from behaviour policies of graded quality and keep their action probabilities;
# - compute what tabular Q-learning converges to on a fixed dataset, and see the extrapolation error against the
#   exact $Q^*$: unseen actions keep a value nothing corrects, and the max selects them;
# - measure how a learner's performance depends on the dataset's coverage, and why behaviour cloning does not
#   have this problem (and what it has instead).
#
# **Prerequisites:** [MDP & Bellman equations](../01_foundation_rl/01_mdp.ipynb) (exact evaluation);
# [TD learning](../01_foundation_rl/02_td_learning.ipynb) (Q-learning on CliffWalking).

# %% tags=["parameters"]
toy = True  # True: 200 episodes per dataset (CPU, seconds); False: 2000 episodes per dataset
device = "auto"  # tabular NumPy: validated and recorded, no tensors are used
seed = 0

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

from llmcore.core import pick_device, seed_everything, show_source, use_style
from llmcore.foundation_rl import mdp
from llmcore.offline_rl import offline_rl

dev = pick_device(device)
seed_everything(seed)
use_style()
cfg = offline_rl.OfflineConfig.for_mode(toy)
print(f"device={dev}, toy={toy}, seed={seed}, episodes per dataset={cfg.episodes}, gamma={cfg.gamma}")

# %% [markdown]
# ## Theory / 理论
#
# **Off-policy is not offline.** Q-learning learns about the greedy policy while an $\varepsilon$-greedy one acts:
# it is *off-policy* {cite}`sutton2018`. But it still *interacts*: when its $Q$ overrates an action, the
# $\varepsilon$-greedy agent soon takes it, sees the real reward and next state, and corrects the estimate.
# **Offline** RL {cite}`levine2020offline` removes that loop: a behaviour policy $\beta$ collected a dataset
# $\mathcal D = \{(s, a, r, s', d)\}$ once, and the learner may only read it.
#
# **What Q-learning converges to on a fixed dataset.** Replaying $\mathcal D$, the update
# $Q(s,a) \leftarrow Q(s,a) + \eta\,[r + \gamma(1-d)\max_{a'}Q(s',a') - Q(s,a)]$ touches only pairs in the data. In a
# table it converges to the fixed point of the *empirical* Bellman backup
#
# $$
# Q(s,a) = \hat r(s,a) + \gamma \sum_{s'} \hat P_c(s'\mid s,a)\,\max_{a'} Q(s',a') \quad \text{for } n(s,a) > 0,
# \qquad Q(s,a) = Q_0 \quad \text{for } n(s,a) = 0,
# $$
#
# with $\hat r$, $\hat P_c$ the data's mean reward and continuing next-state frequencies. The max reads
# $Q(s', a')$ for every $a'$, including those never taken in $s'$: their values are the initialisation $Q_0$
# (in a network, whatever it extrapolates to) and **nothing ever corrects them**. If any of them is above
# the true value of the data's actions, the max selects it, bootstrapping copies it into $Q(s,a)$, and from
# there into every state upstream: **extrapolation error** {cite}`fujimoto2019bcq`. The greedy policy
# $\arg\max_a Q(s,a)$ then heads for exactly the actions the data know nothing about.
#
# **Why $Q^*$ is the right yardstick.** $Q^*(s,a) \ge Q^\pi(s,a)$ for every policy $\pi$, so
# $Q_\text{naive}(s,a) - Q^*(s,a) > 0$ means the estimate is above what *any* policy could achieve from that
# pair: an overestimate, not a matter of which policy is evaluated. CliffWalking pays $-1$ per step, so
# $Q^* \le -1$ everywhere; an unseen pair left at $Q_0 = 0$ is overvalued by at least 1.
#
# **Behaviour cloning** fits $\hat\beta(a|s) = n(s,a)/n(s)$ and takes its most frequent action. It never reads an
# unseen action — but it can only be as good as the data's typical action: it imitates, it does not improve.

# %%
fig, ax = plt.subplots(figsize=(10, 4.6))
offline_rl.plot_online_vs_offline(ax)
plt.show()

# %% [markdown]
# ## The environment and its exact values / 环境与精确价值
#
# CliffWalking-v1 {cite}`towers2024gymnasium` (Sutton & Barto's Example 6.6): a 4×12 grid, $-1$ per step, $-100$
# and back to the start for stepping into the cliff. Its transition table gives the MDP exactly
# (`llmcore.foundation_rl.mdp`), so $Q^*$ and the value of any policy are computed, not estimated; with
# $\gamma = 0.99$ the optimal 13-step path along the cliff edge is worth
# $V^*(s_0) = -\sum_{k=0}^{12} 0.99^k \approx -12.25$.

# %%
show_source(offline_rl.optimal_q, offline_rl.policy_value)

# %% [markdown]
# ## Datasets / 数据集
#
# Behaviour policies of graded quality: $\varepsilon$-greedy around $\pi^*$, from uniformly random
# ($\varepsilon = 1$) through *medium* ($\varepsilon = 0.3$) to *expert* ($\varepsilon = 0.05$), plus *mixed*: half
# random episodes, half the optimal policy itself. Every transition keeps $\beta(\cdot|s)$, the distribution
# its action was drawn from (what importance weights and BC's likelihood need).

# %%
show_source(offline_rl.collect_tabular)

# %% [markdown]
# ## The implementation / 实现
#
# The dataset's empirical model, and BC read off its counts:

# %%
show_source(offline_rl.empirical_mdp, offline_rl.EmpiricalMDP)

# %% [markdown]
# Naive offline Q-learning's fixed point, computed directly. The `allowed` mask is the hook the next chapter's
# BCQ uses; here every action is allowed, so the max reads the unseen pairs' frozen $Q_0$.

# %%
show_source(offline_rl.offline_q_iteration)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# Collect the four datasets and a coverage sweep of nine more ($\varepsilon$ from 1 to 0), fit BC and naive offline
# Q-learning to each, evaluate every policy exactly; then run Q-learning sample by sample over the expert
# data (it must land on the same fixed point), and once more *online*, exploring with $\varepsilon = 0.1$.

# %%
res = offline_rl.experiment(cfg, seed=seed, show_progress=True)
for name, r in res.results.items():
    print(f"{name:>7}: {r.size:>6} transitions, coverage {r.coverage:.2f}, V(s0): behaviour {r.v_behaviour:9.2f}, "
          f"BC {r.v_bc:7.2f}, naive offline Q {r.v_naive:9.2f}")
print(f"V*(s0) = {res.v_star:.2f}; online Q-learning ({cfg.online_episodes} episodes, eps=0.1): {res.v_online:.2f}")

# %% [markdown]
# ### Extrapolation error, seen against $Q^*$ / 外推误差：与 $Q^*$ 对照
#
# Each cell shows its four action values (up, right, down, left) as triangles; hatched triangles are pairs the
# expert dataset never contains. Naive offline Q-learning leaves them at 0 — above every true value — and the
# seen pairs that bootstrap from them inherit the error.

# %%
emp = offline_rl.empirical_mdp(res.datasets["expert"], res.mdp.n_states, res.mdp.n_actions, cfg.gamma)
fig, axes = plt.subplots(1, 2, figsize=(12, 2.8))
offline_rl.plot_q_table(axes[0], res.Q_star, None, r"exact $Q^*$")
offline_rl.plot_q_table(axes[1], res.Q_naive["expert"], emp.seen, "naive offline Q on expert data (hatched: unseen)")
fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(-30, 0), cmap="viridis"), ax=axes, shrink=0.8, label="Q")
plt.show()
gap = res.results["expert"].gap_unseen
print(f"unseen pairs in visited states: {len(gap)}; Q_naive - Q* on them: min {gap.min():.2f}, "
      f"mean {gap.mean():.2f}, max {gap.max():.2f}")
r = res.results["expert"]
print(f"naive Q's own claim for its greedy policy, max_a Q(s0, a) = {r.q_naive_s0:.2f}; "
      f"that policy's true value = {r.v_naive:.2f}")
print("its greedy policy (↑ → ↓ ←) on the grid:")
pi_naive = mdp.greedy(res.Q_naive["expert"])
print("\n".join("".join(offline_rl.ARROWS[pi_naive[row * 12 + c]] for c in range(12)) for row in range(3)))

# %% [markdown]
# From the start, the naive policy's first move is already an unseen action, valued at 0 instead of its true
# $Q^* \approx -13$ to $-100$; it walks into a loop it believes is free and never reaches the goal: its true
# value $\approx -1/(1-\gamma) = -100$, far below the data's.
#
# ### Coverage vs performance / 覆盖度与性能
#
# The sweep narrows the data from random to expert. Naive offline Q-learning is *exactly optimal* while every
# pair is covered — off-policy learning works — and collapses as soon as the data miss actions in states it
# passes through. BC is the opposite: useless on random data, optimal on expert data.

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
offline_rl.plot_coverage(ax, res.sweep, cfg.sweep_eps, res.v_star)
ax.set_title("CliffWalking: exact V(s0) of what each learner does with the data")
plt.show()

# %% [markdown]
# ### Cross-check: exact values against scipy's LP and the replayed learner / 交叉验证
#
# $Q^*$ comes from value iteration on gymnasium's own table; scipy's linear program (the MDP chapter's oracle)
# must give the same $V^*$, and tabular Q-learning replayed sample by sample over the dataset must land on
# the fixed point computed above.

# %%
V_lp = mdp.solve_lp(res.mdp)
assert np.max(np.abs(V_lp - res.Q_star.max(1))) < 1e-6, "V* differs from scipy's LP"
assert abs(res.v_star + sum(cfg.gamma ** k for k in range(13))) < 1e-9, "V*(s0) is not the 13-step path"
assert res.replay_diff < 1e-8, "replayed Q-learning did not reach the fixed point"
print(f"max |V*_VI - V*_LP| = {np.max(np.abs(V_lp - res.Q_star.max(1))):.1e}; "
      f"replayed vs fixed point: {res.replay_diff:.1e}")

# %% [markdown]
# ## Results / 结果

# %%
# NBVAL_CHECK_OUTPUT
report = offline_rl.make_report(res, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print(report.summary())

# %% [markdown]
# ## Play: how narrow can the data be? / 动手：数据能窄到什么程度？
#
# Pick the behaviour's $\varepsilon$ and the number of episodes; the cell collects a fresh dataset and shows naive
# offline Q-learning's table and the exact values of both learners.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def play(eps: float = 0.1, episodes: int = 100) -> None:
    env = offline_rl.make_env(cfg.max_steps)
    data = offline_rl.collect_tabular(env, offline_rl.eps_greedy_policy(res.Q_star, eps), episodes, seed)
    r, Q = offline_rl.analyse(data, res.mdp, res.Q_star, cfg.gamma)
    e = offline_rl.empirical_mdp(data, res.mdp.n_states, res.mdp.n_actions, cfg.gamma)
    fig, ax = plt.subplots(figsize=(7, 2.4))
    offline_rl.plot_q_table(ax, Q, e.seen, f"eps={eps:g}: coverage {r.coverage:.2f}, V(s0) naive {r.v_naive:.1f}, "
                            f"BC {r.v_bc:.1f}, behaviour {r.v_behaviour:.1f}")
    plt.show()


widgets.interact(play, eps=widgets.FloatSlider(value=0.1, min=0.0, max=1.0, step=0.05, description="eps"),
                 episodes=widgets.IntSlider(value=100, min=10, max=1000, step=10, description="episodes"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **A table, not a network.** Here an unseen action's value is its initialisation, so the error is easy to
#   point at. With a network {cite}`fujimoto2019bcq` it is whatever the network generalises to — usually not 0,
#   sometimes far too high — and it also contaminates *seen* pairs through shared weights. The next chapter
#   trains networks on CartPole.
# - **Exact answers.** We evaluate policies with the true MDP; a real offline-RL user cannot (that is the
#   problem), and off-policy evaluation is an open research field of its own {cite}`levine2020offline`.
# - **Deterministic dynamics.** CliffWalking's transitions are deterministic, so a single visit of a pair gives its
#   exact backup; with stochastic dynamics the empirical model has sampling error too, and rare pairs look
#   better or worse than they are — another source of overestimation under the max.
# - **Benchmarks.** Papers use D4RL / Atari replay datasets of millions of transitions; ours are thousands.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** 13 tabular datasets of 200 episodes, exact evaluation, online Q-learning for 300
#   episodes: the page executes in 6 s (8 s wall for `tools/execute.py`), peak RAM 0.35 GB, on the 2-core CI CPU.
# - **Full (`toy=False`):** 2000 episodes per dataset: well under a minute on a CPU; NumPy only, a GPU does not help.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 异策略 ≠ 离线：Q-learning 能从别的策略的数据中学习，但离线时不能再采样去纠正错误。 · Off-policy is not
#   offline: Q-learning can learn from another policy's data, but offline it can never collect the data that
#   would correct its mistakes.
# - 目标中的 $\max_{a'}$ 会读取数据中从未出现的动作的价值，这些值没有任何更新来纠正。 · The max in the target
#   reads values of actions the data never contain, and no update ever corrects them.
# - 外推误差通过自举传播到上游状态，贪心策略正好走向数据不了解的动作。 · Extrapolation error spreads upstream by
#   bootstrapping, and the greedy policy heads for exactly the actions the data know nothing about.
# - 覆盖完整时朴素离线 Q-learning 精确最优；覆盖变窄时它比行为策略和 BC 都差。 · With full coverage naive
#   offline Q-learning is exactly optimal; with narrow coverage it falls below the behaviour policy and BC.
# - 行为克隆从不读取未见动作，但只能模仿、不能改进；下一章的 BCQ 与 CQL 介于两者之间。 · Behaviour cloning
#   never reads an unseen action but can only imitate; BCQ and CQL (next chapter) sit in between.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `behaviour_cloning(obs, actions, n_states, n_actions)` that returns the tabular BC
#    policy $\hat\beta(a|s) = n(s,a)/n(s)$ as an `(S, A)` array, uniform in states the data never visit, and check
#    it with `llmcore.exercises.check_behaviour_cloning(behaviour_cloning)`.
# 2. Initialise the unseen pairs pessimistically, $Q_0 = -1/(1-\gamma)$ (`offline_q_iteration(emp, q_init=-100)`).
#    What happens to the naive policy on the expert data? Why is this not a general fix (hint: what is the
#    right pessimistic value in an environment you do not know, and what does a network do)?
# 3. The mixed dataset contains the optimal policy's complete episodes. Why does naive offline Q-learning still
#    fail on it, while BC succeeds?
# 4. Make the lake stochastic: collect a dataset on `FrozenLake-v1` (slippery) with `collect_tabular` and compare
#    $\hat P$ with the true $P$. Which kind of error appears that CliffWalking did not have?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Count, then normalise, with a uniform row where the count is zero:
#
#    ```python
#    def behaviour_cloning(obs, actions, n_states, n_actions):
#        counts = np.zeros((n_states, n_actions))
#        np.add.at(counts, (obs, actions), 1.0)
#        n = counts.sum(1, keepdims=True)
#        return np.where(n > 0, counts / np.maximum(n, 1), 1.0 / n_actions)
#    ```
#
#    The checker rejects zeros (instead of the uniform distribution) in unvisited states.
# 2. With $Q_0 = -100$ every unseen pair is worth less than any seen one, the max picks seen actions and the
#    naive policy follows the data's best path: it becomes a crude *pessimistic* method. But the right floor is
#    $r_\min/(1-\gamma)$, which needs the reward range, and a network does not keep its unseen outputs at any
#    chosen value; CQL (next chapter) learns the pessimism instead of assuming it.
# 3. The random half covers some actions in some states, and the expert half covers exactly one action per state
#    on the path; in states on the path the other actions are still missing, so the max still finds a 0. BC's
#    most frequent action on the path is the expert's, because the expert visits those states far more often.
# 4. Sampling error: $\hat P(s'|s,a)$ differs from $P$ for rarely visited pairs, so even *seen* pairs have wrong
#    backups, and the max prefers the pairs that happened to look lucky.
# :::
#
# ## References / 参考文献
#
# Levine et al. {cite}`levine2020offline` (the offline-RL tutorial and review); Fujimoto, Meger & Precup
# {cite}`fujimoto2019bcq` (extrapolation error); Sutton & Barto {cite}`sutton2018`, ch. 6 (Q-learning,
# CliffWalking). Full entries: [bibliography](../../book/bibliography.md).
