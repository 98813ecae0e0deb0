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
# $Q(s,a)$。Q-learning 用 $\max_{a'} Q(s',a')$（贪心策略的价值，异策略），SARSA 用行为策略真正
# 采取的下一个动作的 $Q(s',a')$（同策略）。本章在 gymnasium 的 CliffWalking 上复现 Sutton & Barto
# 例 6.6：在 $\varepsilon = 0.1$ 的探索下，SARSA 学会远离悬崖的安全路径，在线回报更高；Q-learning
# 学到沿悬崖边的 13 步最优路径，但探索时常掉下悬崖。我们用价值迭代和“ε-软”价值迭代在环境自带的
# 转移表上算出两条路径与期望回报的精确值，作为交叉验证。最后复现例 6.7（图 6.5）：Q-learning 的
# $\max$ 会高估带噪声的估计（最大化偏差），双 Q 学习（Double Q-learning）用一张表选动作、另一张表
# 估值，消除了这一偏差。
#
# **Learning goals**
# - write Q-learning and SARSA as one update that differs only in the bootstrap target;
# - explain *off-policy* vs *on-policy* with a picture: the path each method's greedy policy takes;
# - reproduce Sutton & Barto's Figure 6.4 (online return per episode, averaged over runs, with bands);
# - check learned behaviour against closed forms: $Q^*$ (value iteration), the best ε-greedy policy
#   (ε-soft value iteration) and the exact expected return of ε-greedy behaviour;
# - explain maximisation bias ($\mathbb E\max \ge \max\mathbb E$) and remove it with Double Q-learning,
#   reproducing Sutton & Barto's Figure 6.5.
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
from llmcore.foundation_rl import tabular, td_learning
from llmcore.foundation_rl.mdp import from_gymnasium

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, epsilon={epsilon}, alpha={alpha}")

# %% [markdown]
# ## Theory / 理论
#
# ### From averaging to TD / 从求平均到时序差分
#
# Dynamic programming needs $P$ and $R$. Without them, the obvious estimate of $V^\pi(s)$ is the
# average of the returns observed after visiting $s$ (**Monte Carlo**). Averages can be kept
# incrementally: after the $n$-th sample $G$, $\bar G_n = \bar G_{n-1} + \tfrac1n(G - \bar G_{n-1})$ —
# "move towards the new sample by a step". With a constant step $\alpha$ instead of $1/n$ this tracks
# a recent-weighted average: $V(s) \leftarrow V(s) + \alpha[G_t - V(s)]$.
#
# **Temporal-difference** learning {cite}`sutton1988td` replaces the full return by its one-step
# recursion $G_t = r_{t+1} + \gamma G_{t+1}$ with the unknown $G_{t+1}$ replaced by the current estimate
# $V(s_{t+1})$ — it *bootstraps*:
#
# $$
# V(s_t) \leftarrow V(s_t) + \alpha\,\delta_t,\qquad \delta_t = r_{t+1} + \gamma V(s_{t+1}) - V(s_t).
# $$
#
# The TD error $\delta_t$ is a sample of the Bellman equation's residual: its expectation is zero
# exactly at $V = V^\pi$. TD learns after every step (no need to wait for the episode's end) and its
# target has lower variance than $G_t$ (one random reward instead of all of them), at the price of a bias
# while $V$ is wrong — the trade-off the GAE chapter tunes with λ. For control we learn action values:
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
# Why these fixed points? Take the expected update of each. SARSA's is zero when
# $Q(s,a) = R(s,a) + \gamma\sum_{s'}P(s'|s,a)\sum_{a'}\pi_\varepsilon(a'|s')Q(s',a')$ — the Bellman
# expectation equation of the ε-greedy policy $\pi_\varepsilon$ built from $Q$ itself; the policy that
# solves it while being greedy in its own $Q$ is the best ε-greedy policy. Q-learning's is zero when
# $Q = R + \gamma P\max_{a'}Q$, the Bellman *optimality* equation, whatever policy chose the actions —
# provided every $(s,a)$ keeps being visited and $\alpha$ decays (Robbins–Monro: $\sum\alpha = \infty$,
# $\sum\alpha^2 < \infty$).
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
#
# ### Maximisation bias and Double Q-learning / 最大化偏差与双 Q 学习
#
# Q-learning's target takes a max over *estimates*. If $\hat Q(s',a') = Q(s',a') + \epsilon_{a'}$ with
# zero-mean noise, then, because max is convex (Jensen),
#
# $$
# \mathbb E\big[\max_{a'}\hat Q(s',a')\big] \;\ge\; \max_{a'}\mathbb E\big[\hat Q(s',a')\big] = \max_{a'}Q(s',a'),
# $$
#
# with equality only when one action always wins. For ten actions whose true values are all equal and
# whose estimates carry unit-variance noise, $\mathbb E\max$ is about $+1.5$ standard deviations above
# the truth. The same noise that picks the action is used to value it. **Double Q-learning**
# {cite}`vanhasselt2010double` keeps two independent tables and uses one to *select*, the other to
# *evaluate*:
#
# $$
# Q_A(s,a) \leftarrow Q_A(s,a) + \alpha\big[r + \gamma\,Q_B\big(s', \arg\max_{a'}Q_A(s',a')\big) - Q_A(s,a)\big],
# $$
#
# and, by a coin flip per step, the mirror update of $Q_B$. Given the selection, $Q_B$'s noise is
# independent of it, so the target is unbiased for the selected action (it may underestimate
# $\max_{a'} Q$, but it does not overestimate it). Sutton & Barto's Example 6.7 {cite}`sutton2018` makes
# the bias visible: from A, RIGHT ends with 0, LEFT leads to B whose ten actions all pay $N(-0.1, 1)$. LEFT
# is worse (−0.1 < 0), yet $\max_b \hat Q(B,b)$ starts out positive, so Q-learning first learns to go left.
# The same bias appears whenever one picks the best of several noisy scores: best-of-N sampling against a
# learned reward model overestimates the chosen reply's true reward; Double DQN applies exactly this fix
# to deep Q-learning.

# %%
fig, ax = plt.subplots(figsize=(8, 2.6))
td_learning.plot_bias_mdp(ax)
ax.set_title("Example 6.7: the MDP behind maximisation bias")
plt.show()

# %% [markdown]
# ## The implementation / 实现
#
# One function trains both: the only line that differs is the bootstrap target. `epsilon_greedy` breaks
# ties at random (all-zero initial tables would otherwise always pick action 0), and the target masks
# the bootstrap with `(not term)`: at a terminal transition the return is just $r$.

# %%
show_source(tabular.epsilon_greedy, tabular.td_control)

# %% [markdown]
# The closed forms: ε-soft value iteration (the backup above, iterated to its fixed point) and the exact
# return of ε-greedy behaviour around a greedy path — a linear solve $(I - P_\pi)V = R_\pi$ on gymnasium's
# own transition table, read by the [MDP chapter](01_mdp.ipynb)'s `from_gymnasium`.

# %%
show_source(td_learning.soft_value_iteration, td_learning.eps_greedy_return)

# %% [markdown]
# ## The closed loop: Sutton & Barto Example 6.6 / 闭环实验：S&B 例 6.6
#
# Each run trains from scratch for 500 episodes with ε = 0.1, α = 0.5, γ = 1 and records the
# undiscounted return of every episode *while learning* (the online performance of the ε-greedy
# behaviour). Runs use seeds `seed, seed+1, ...`.

# %%
res = td_learning.experiment(toy=toy, seed=seed, epsilon=epsilon, alpha=alpha, episodes=episodes, show_progress=True)
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
# while exploring and keeps falling off the cliff.
#
# **What the dotted lines are.** Each is the exact expected return per episode of an ε-greedy policy
# (ε = 0.1) wrapped around one *fixed* closed-form greedy path: the optimal path of $Q^*$ (lower line)
# and the path of the best ε-greedy policy $Q^{\varepsilon*}$ (upper line). They are reference levels,
# not asymptotes of this experiment. Q-learning's curve does settle on its line, because every run's
# greedy path becomes and stays the optimal one. SARSA's stays below its line (about −28 against −21
# here): with a constant step α = 0.5 its Q-table never converges, its greedy path keeps moving between
# safe but longer detours from episode to episode and run to run, and each detour costs extra steps. With
# a step size that decays to 0 (and ε fixed) SARSA should approach the upper line.
#
# ### The paths, drawn on the grid / 在网格上画出路径
#
# Each run's Q-table keeps fluctuating with a constant α = 0.5, so we draw the greedy path of the
# Q-table averaged over runs (the "typical" learned policy), next to the closed-form paths.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
td_learning.plot_paths(axes[0], {"Q-learning": td_learning.greedy_path(td_learning.mean_q(res, "q_learning")),
                        "SARSA": td_learning.greedy_path(td_learning.mean_q(res, "sarsa"))}, "learned greedy paths (run-averaged Q)")
td_learning.plot_paths(axes[1], {"Q* (value iteration)": td_learning.greedy_path(res.Q_star),
                        "best ε-greedy (ε-soft VI)": td_learning.greedy_path(res.Q_soft)}, "closed-form paths")
plt.show()
for algo in ("q_learning", "sarsa"):
    print(algo, "greedy path (run-averaged Q):")
    print("\n".join(td_learning.draw_path(td_learning.greedy_path(td_learning.mean_q(res, algo)))))

# %% [markdown]
# ### Cross-check against the closed forms / 与闭式解交叉验证
#
# Q-learning's greedy path must be value iteration's optimal path in every run; the exact expected
# return of ε-greedy behaviour on that path must match Q-learning's measured online return.

# %%
env = td_learning.make_env()
mdp = from_gymnasium(env, gamma=1.0)
env.close()
opt = td_learning.path_stats(td_learning.greedy_path(res.Q_star))
assert opt["steps"] == 13 and opt["edge_cells"] == 10, opt
assert td_learning.path_agreement(res, "q_learning", res.Q_star) == 1.0
q_online = res.returns["q_learning"][:, 100:].mean()
print(f"Q-learning online return {q_online:.1f} vs exact {res.exact_return['optimal']:.1f}")
assert abs(q_online - res.exact_return["optimal"]) < 5.0

# %% [markdown]
# ## Maximisation bias: Q-learning vs Double Q-learning / 最大化偏差：Q-learning 与双 Q 学习
#
# Example 6.7 with ε = 0.1, α = 0.1, γ = 1, the tables initialised to 0, ties broken at random; the
# experiment above already ran it (`res.bias`: 1000 runs side by side in toy mode, 10000 as in the
# book). The plot is the fraction of runs that choose LEFT in A at each episode. The one function that
# differs from Q-learning is the target:

# %%
show_source(td_learning.double_q_target)

# %%
b = res.bias
fig, ax = plt.subplots(figsize=(7, 3.6))
x = np.arange(1, b.cfg.episodes + 1)
ax.plot(x, 100 * b.left_q, color=PALETTE[1], label="Q-learning")
ax.plot(x, 100 * b.left_double, color=PALETTE[0], label="Double Q-learning")
ax.axhline(100 * b.optimal, color="k", ls=":", label="optimal ε-greedy: ε/2 = 5%")
ax.set_xlabel("episode"), ax.set_ylabel("% LEFT actions from A")
ax.set_title(f"Sutton & Barto Figure 6.5 ({b.cfg.runs} runs)")
ax.legend()
plt.show()
print(f"Q-learning: peak {b.left_q.max():.0%} LEFT at episode {np.argmax(b.left_q) + 1}; "
      f"episodes 201-300: Q-learning {b.left_q[200:].mean():.1%}, Double Q {b.left_double[200:].mean():.1%}")

# %% [markdown]
# Q-learning is drawn to LEFT for dozens of episodes and still goes left more often than it should after
# 300; Double Q-learning never takes the bait and settles near the 5% that ε-greedy exploration alone
# produces. The criterion in the report: Q-learning's LEFT rate over the first 100 episodes exceeds
# Double Q's by more than 0.3, Q-learning peaks above 50%, and Double Q's rate over episodes 201–300 is
# below 10%.
#
# ## Results / 结果
#
# The checked cell prints each criterion with its threshold (what holds on any machine); the measured
# values follow in the next cell.

# %%
# NBVAL_CHECK_OUTPUT
report = td_learning.make_report(res, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print(report.summary(digits=2))

# %% [markdown]
# ## Play: how much exploration? / 动手：探索多少合适？
#
# With less exploration the edge becomes less dangerous: SARSA's path moves towards the cliff and the
# two online curves come together (ε → 0 makes SARSA and Q-learning the same algorithm). Each slider
# move reruns 4 seeds per algorithm.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def play(eps: float = 0.1) -> None:
    r = td_learning.experiment(toy=True, seed=seed, epsilon=eps, alpha=alpha, episodes=300, runs=4)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 1.3]})
    for k, algo in enumerate(("sarsa", "q_learning")):
        axes[0].plot(smooth(r.returns[algo]).mean(0), color=PALETTE[k], label=algo)
    axes[0].set_ylim(-100, 0), axes[0].legend(), axes[0].set_title(f"online return, ε = {eps:.2f}")
    td_learning.plot_paths(axes[1], {"Q-learning": td_learning.greedy_path(td_learning.mean_q(r, "q_learning")),
                            "SARSA": td_learning.greedy_path(td_learning.mean_q(r, "sarsa"))})
    plt.show()


widgets.interact(play, eps=widgets.FloatSlider(value=0.1, min=0.0, max=0.3, step=0.02, description="ε"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Runs.** The book averages 100 runs for Figure 6.4 and 10000 for Figure 6.5; toy mode uses 20 and
#   1000 (bands show the standard error).
# - **Tables vs networks.** DQN-style agents replace the table by a network, add a replay
#   buffer and a slowly updated target network; Double DQN evaluates the online network's argmax with the
#   target network — the same select/evaluate split as here, without a second learner.
# - **Exploration.** ε-greedy is the simplest choice; production agents use noise schedules, entropy
#   bonuses or, in LLMs, sampling temperature.
# - **Constant step size.** α = 0.5 is the book's choice for speed; convergence guarantees need a decaying
#   α, which is why SARSA's curve does not reach its reference line.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** 2 × 20 runs × 500 CliffWalking episodes, the closed forms, and 2 × 1000
#   vectorised runs of Example 6.7: the whole page executes in 12–19 s, peak RAM 0.39 GB, on the 2-core
#   CI CPU.
# - **Full (`toy=False`):** 100 runs per algorithm and 10000 bias runs, as in the book: about 5× the toy,
#   a few minutes on one CPU core. Tabular NumPy code: a GPU does not help.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - TD 用一步自举目标 $r + \gamma V(s')$ 代替完整回报：方差小、可在线更新，但在 $V$ 不准时有偏。 · TD replaces
#   the full return by a one-step bootstrapped target: lower variance and online, biased while $V$ is wrong.
# - SARSA（同策略）收敛到最优 ε-贪心策略；Q-learning（异策略）收敛到 $Q^*$。 · SARSA (on-policy) heads for
#   the best ε-greedy policy; Q-learning (off-policy) for $Q^*$.
# - 悬崖上 SARSA 走安全路径、在线回报更高；Q-learning 走 13 步悬崖边路径、探索时常坠崖。 · On the cliff
#   SARSA walks the safe path and earns more online; Q-learning walks the 13-step edge and falls while exploring.
# - 图中点线是固定路径上 ε-贪心行为的精确回报，是参照线而不是渐近线。 · The dotted lines are exact returns of
#   ε-greedy behaviour on fixed paths: references, not asymptotes.
# - $\mathbb E\max \ge \max\mathbb E$：对带噪估计取最大值会高估（最大化偏差）。 · Taking a max over noisy
#   estimates overestimates: maximisation bias.
# - 双 Q 学习用一张表选动作、另一张表估值，消除了这一偏差。 · Double Q-learning selects with one table and
#   evaluates with the other, removing the bias.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `double_q_target(q_select, q_eval, reward, gamma, terminated)` returning
#    $r + \gamma(1-d)\,Q_B(s', \arg\max_{a'}Q_A(s',a'))$ for one transition, with `q_select` $= Q_A(s',\cdot)$
#    and `q_eval` $= Q_B(s',\cdot)$ as 1-D arrays, and check it with
#    `llmcore.exercises.check_double_q_target(double_q_target)`.
# 2. Implement **Expected SARSA** ($X = \sum_{a'}\pi(a'|s')Q(s',a')$) as a third `algo` in
#    `td_control`. Where does its online curve lie, and why can it use α = 1?
# 3. Decay ε to 0 over training (`TDConfig(epsilon_final=0.0)`). Which path does SARSA end on?
# 4. Use the slippery variant `CliffWalkingSlippery-v1`. Does Q-learning still prefer the edge?
# 5. Prove that SARSA's fixed point is $Q^{\varepsilon*}$: write its expected update as a backup.
# 6. In Example 6.7, give B 100 actions instead of 10 (`td_learning.BiasConfig(n_b_actions=100)`). How does
#    Q-learning's peak change, and Double Q's?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Select with one row, evaluate with the other, and stop at a terminal:
#
#    ```python
#    def double_q_target(q_select, q_eval, reward, gamma, terminated):
#        a_star = int(np.argmax(q_select))
#        return reward + gamma * (1.0 - float(terminated)) * q_eval[a_star]
#    ```
#
#    The checker rejects `max(q_eval)` (plain Q-learning), a missing terminal mask, and swapped roles.
# 2. $X = (1-\varepsilon)\max_{a'}Q(s',a') + \tfrac{\varepsilon}{|\mathcal A|}\sum_{a'}Q(s',a')$. It lies on
#    or above SARSA's curve: it removes the variance of sampling $a'$, so a large α (even 1 on this
#    deterministic grid) no longer amplifies that noise.
# 3. As ε → 0 the ε-greedy policy becomes greedy, so SARSA's target becomes Q-learning's and it ends on
#    the optimal edge path.
# 4. With slips, the edge is dangerous even for the greedy policy, so $Q^*$'s path itself moves away.
# 5. Its expected update is zero iff $Q = R + \gamma P\,\pi_\varepsilon Q$; a $Q$ that is also greedy in
#    its own $\pi_\varepsilon$ is the fixed point of the ε-soft backup, $Q^{\varepsilon*}$.
# 6. The max over 100 noisy zeros is larger, so Q-learning's bias and peak grow; Double Q's does not.
# :::
#
# ## References / 参考文献
#
# Sutton {cite}`sutton1988td` (TD learning); Rummery & Niranjan {cite}`rummery1994sarsa` (SARSA);
# Watkins & Dayan {cite}`watkins1992` (Q-learning); van Hasselt {cite}`vanhasselt2010double` (Double
# Q-learning); Sutton & Barto {cite}`sutton2018`, §6.4–6.7, Examples 6.6 and 6.7; gymnasium {cite}`towers2024gymnasium`. Full entries: [bibliography](../../book/bibliography.md).
