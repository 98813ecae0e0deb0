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
# # MDP & Bellman Equations / MDP 与 Bellman 方程
#
# **中文摘要：** 马尔可夫决策过程（MDP）用五元组 $(\mathcal S, \mathcal A, P, R, \gamma)$ 描述序贯决策问题。
# 本章直接从 gymnasium 的 FrozenLake 转移表读出这个五元组，用策略评估、价值迭代和策略迭代求解
# Bellman 方程，并用 scipy 的线性规划独立验证最优价值 $V^*$；最后把得到的贪心策略放回真实环境中
# 模拟 1000 局，检验成功率与理论值在抽样误差内一致。理论部分从回报的递推推导出随机策略下的 Bellman
# 期望方程（$V$ 形式与 $Q$ 形式）、最优方程与策略改进定理，并用回溯图（backup diagram）画出每个方程
# 对哪些量求和。
#
# **Learning goals**
# - read an MDP's 5-tuple from a real environment's transition table;
# - derive the Bellman expectation equations of a *stochastic* policy in both forms, $V$ and $Q$, and
#   read them off a backup diagram;
# - prove the policy-improvement theorem and watch it hold: every step of policy iteration raises the
#   value of every state;
# - write the Bellman expectation and optimality backups as array operations;
# - see why value iteration and policy iteration reach the same fixed point (contraction), and check
#   it three ways: VI, PI and a linear program;
# - connect a value function to what really happens when the policy is run.
#
# **Prerequisites:** [RL foundations overview](00_overview.ipynb); NumPy; basic probability.

# %% tags=["parameters"]
toy = True  # True: 4x4 map, 1000 simulated episodes (CPU, seconds); False: 8x8 map, 20000 episodes
device = "auto"  # tabular: validated and recorded, no tensors are used
seed = 0
gamma = 0.99  # discount factor used for planning

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

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, gamma={gamma}")

# %% [markdown]
# ## Theory / 理论
#
# A finite MDP is $(\mathcal S, \mathcal A, P, R, \gamma)$: states, actions, transition kernel
# $P(s' \mid s, a)$, reward $R(s, a) = \mathbb E[r \mid s, a]$ and discount $\gamma \in [0, 1]$.
# A (stochastic) policy $\pi(a \mid s)$ gives a distribution over actions in each state; a
# deterministic one is the special case $\pi(a|s) = [a = \pi(s)]$.
#
# ### Bellman expectation equations / Bellman 期望方程
#
# Start from the return's recursion $G_t = r_{t+1} + \gamma G_{t+1}$ and take expectations given
# $s_t = s$. The first step chooses $a \sim \pi(\cdot|s)$, then the environment draws $r$ and
# $s' \sim P(\cdot|s,a)$; by the Markov property, what happens after $s'$ depends only on $s'$, so
# $\mathbb E_\pi[G_{t+1} \mid s_t = s, a_t = a, s_{t+1} = s'] = V^\pi(s')$. Hence
#
# $$
# V^\pi(s) = \sum_a \pi(a\mid s)\Big[R(s,a) + \gamma \sum_{s'} P(s'\mid s,a)\,V^\pi(s')\Big].
# $$
#
# Conditioning on the first action as well gives the **Q-form**, and the two forms convert into each
# other:
#
# $$
# Q^\pi(s,a) = R(s,a) + \gamma \sum_{s'} P(s'\mid s,a) \sum_{a'} \pi(a'\mid s')\,Q^\pi(s',a'),
# \qquad
# V^\pi(s) = \sum_a \pi(a\mid s)\,Q^\pi(s,a), \qquad Q^\pi(s,a) = R(s,a) + \gamma\,\mathbb E_{s'}V^\pi(s').
# $$
#
# In matrix form, with $P_\pi(s'|s) = \sum_a \pi(a|s)P(s'|s,a)$ and $R_\pi(s) = \sum_a\pi(a|s)R(s,a)$,
# the $V$-equation is the **linear system** $V^\pi = R_\pi + \gamma P_\pi V^\pi$, solved by
# $V^\pi = (I - \gamma P_\pi)^{-1}R_\pi$ (invertible for $\gamma < 1$ because $P_\pi$'s rows sum to 1,
# so every eigenvalue of $\gamma P_\pi$ has modulus $\le \gamma$). The **backup diagrams** below draw
# what each equation sums over: from a state, over actions weighted by $\pi$; from an action, over next
# states weighted by $P$ {cite}`sutton2018`.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
mdp.plot_backup_diagram(axes[0], "v")
mdp.plot_backup_diagram(axes[1], "q")
fig.suptitle("Backup diagrams: open circles = states, dots = actions")
plt.show()

# %% [markdown]
# ### Optimality and the policy-improvement theorem / 最优方程与策略改进定理
#
# **Policy-improvement theorem.** Let $\pi'$ be greedy with respect to $Q^\pi$:
# $\pi'(s) = \arg\max_a Q^\pi(s,a)$. Then $V^{\pi'}(s) \ge V^\pi(s)$ in every state.
#
# *Proof.* Greedy means $Q^\pi(s,\pi'(s)) \ge \sum_a\pi(a|s)Q^\pi(s,a) = V^\pi(s)$. Expand the left side
# one step and apply the same inequality at $s_{t+1}$, again and again:
#
# $$
# V^\pi(s) \le Q^\pi(s,\pi'(s)) = \mathbb E_{\pi'}[r_{t+1} + \gamma V^\pi(s_{t+1}) \mid s_t = s]
#  \le \mathbb E_{\pi'}[r_{t+1} + \gamma r_{t+2} + \gamma^2 V^\pi(s_{t+2}) \mid s_t = s]
#  \le \cdots \le V^{\pi'}(s).
# $$
#
# If the improvement changes nothing ($V^{\pi'} = V^\pi$), then
# $V^\pi(s) = \max_a Q^\pi(s,a) = \max_a[R(s,a) + \gamma\sum_{s'}P(s'|s,a)V^\pi(s')]$: $V^\pi$ satisfies
# the **Bellman optimality equation**
#
# $$
# V^*(s) = \max_a \Big[ R(s, a) + \gamma \sum_{s'} P(s' \mid s, a)\, V^*(s') \Big] = (T V^*)(s),
# \qquad Q^*(s,a) = R(s,a) + \gamma\sum_{s'}P(s'|s,a)\max_{a'}Q^*(s',a'),
# $$
#
# and $\pi$ is optimal. **Policy iteration** {cite}`howard1960` is this theorem used as an algorithm:
# evaluate exactly (solve the linear system), improve greedily, repeat; values rise monotonically and,
# since there are finitely many deterministic policies, it stops in finitely many steps — usually very
# few. The experiment below starts it from the *uniform random* policy and checks that no state's value
# ever falls.
#
# **Value iteration** {cite}`bellman1957` iterates $T$ directly. For $\gamma < 1$, $T$ is a
# $\gamma$-contraction in the max-norm: for any $V, U$ and every $s$,
# $|(TV)(s) - (TU)(s)| \le \max_a \gamma\sum_{s'}P(s'|s,a)|V(s') - U(s')| \le \gamma\|V - U\|_\infty$
# (the max of one function minus the max of another is at most the max of their difference). By
# Banach's fixed-point theorem, iterating $T$ from any start converges geometrically to the unique fixed
# point $V^*$, and the Bellman residual bounds the distance to it: $\|V - V^*\|_\infty \le
# \|TV - V\|_\infty / (1-\gamma)$.
#
# **Linear programming.** $V^*$ is also the solution of a linear program {cite}`puterman1994`:
#
# $$
# \min_V \sum_s V(s) \quad \text{s.t.} \quad V(s) \ge R(s, a) + \gamma \sum_{s'} P(s' \mid s, a) V(s')
# \;\; \forall (s, a).
# $$
#
# (Any feasible $V$ satisfies $V \ge TV$, and iterating the monotone map $T$ gives $V \ge T^kV \to V^*$;
# so $V^*$, which is feasible, is the smallest feasible point in every coordinate.)
#
# Episodes end at holes and at the goal: the transition that *terminates* does not bootstrap, so we
# keep a "continuing" kernel $P_c(s' \mid s,a) = P(s' \mid s,a)\,[\text{not terminated}]$.

# %% [markdown]
# ## The 5-tuple, read from gymnasium / 从 gymnasium 读出五元组
#
# FrozenLake {cite}`towers2024gymnasium` stores its dynamics as
# `P[s][a] = [(prob, next_state, reward, terminated), ...]`; on the slippery lake the agent moves in the
# intended direction with probability 1/3 and slips to each perpendicular direction with 1/3.

# %%
show_source(mdp.from_gymnasium)

# %%
env = mdp.make_env("4x4" if toy else "8x8")
lake = mdp.from_gymnasium(env, gamma)
print("map:\n" + "\n".join(r.tobytes().decode() for r in env.unwrapped.desc))
print(f"|S|={lake.n_states}  |A|={lake.n_actions}  gamma={lake.gamma}")
print("P shape", lake.P.shape, " R shape", lake.R.shape, " rows of P sum to 1:",
      bool(np.allclose(lake.P.sum(-1), 1)))
s = 14  # the cell left of the goal
for a, name in enumerate(["LEFT", "DOWN", "RIGHT", "UP"]):
    nz = np.flatnonzero(lake.P[s, a])
    print(f"s={s} a={name:<5} -> " + ", ".join(f"s'={j}: p={lake.P[s, a, j]:.3f}" for j in nz),
          f"| R(s,a)={lake.R[s, a]:.3f}")

# %% [markdown]
# ## The implementation / 实现
#
# Every backup is one line of array code. `q_from_v` is the Q-form's inner step, $Q = R + \gamma P_c V$ for
# all $(s, a)$ at once: `Pc @ V` contracts the last axis of the `(S, A, S)` kernel with `(S,)`.

# %%
show_source(mdp.q_from_v)

# %% [markdown]
# A stochastic policy is evaluated by averaging the kernel and the reward over $\pi(a|s)$ and solving
# the linear system; $Q^\pi$ then follows from $V^\pi$ by one `q_from_v`.

# %%
show_source(mdp.evaluate_stochastic)

# %% [markdown]
# Value iteration takes the max over actions of `q_from_v` until the change is below `tol`; policy
# iteration alternates an exact solve and a greedy improvement and stops when the policy is stable.

# %%
show_source(mdp.value_iteration, mdp.policy_iteration)

# %% [markdown]
# The LP hands one inequality per $(s, a)$ to scipy's HiGHS solver — an independent oracle.

# %%
show_source(mdp.solve_lp)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# Solve the lake three ways, evaluate the greedy policy, then run it 1000 times (toy) in the real
# environment. Because the env truncates episodes at its time limit, the number that simulation
# estimates is the policy's **undiscounted success probability within the limit**; we compute that
# exactly with a finite-horizon evaluation and compare.

# %%
res = mdp.experiment(toy=toy, seed=seed, gamma=gamma, keep=100_000)
print(f"value iteration: {res.vi_sweeps} sweeps; policy iteration: {res.pi_iters} iterations; "
      f"policy evaluation: {res.eval_sweeps} sweeps")

# %% [markdown]
# ### Watching the backup spread value from the goal / 看回溯把价值从终点向外传播
#
# Each sweep of value iteration pushes value one step further from the goal; holes stay at 0.

# %%
side = int(np.sqrt(lake.n_states))
sweeps = [0, 1, 2, 4, 8, 16, 32, res.vi_sweeps]
fig, axes = plt.subplots(2, len(sweeps) // 2, figsize=(9, 5))
for ax, k in zip(axes.flat, sweeps):
    V = res.vi_history[min(k, len(res.vi_history) - 1)]
    ax.imshow(V.reshape(side, side), cmap="viridis", vmin=0, vmax=res.V_vi.max())
    ax.set_title(f"sweep {k}" if k != res.vi_sweeps else f"V* (sweep {k})", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    if side <= 4:
        for i in range(side * side):
            ax.text(i % side, i // side, f"{V[i]:.2f}", ha="center", va="center", fontsize=8, color="w")
fig.suptitle("Value iteration on FrozenLake: V_k per sweep")
plt.show()

residuals = [mdp.bellman_residual(res.mdp, V) for V in res.vi_history]
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogy(residuals, label=r"$\|TV_k - V_k\|_\infty$")
k = np.arange(len(residuals))
ax.semilogy(k, residuals[1] * gamma ** k, "--", label=r"$\gamma^k$ bound shape")
ax.set_xlabel("sweep k"), ax.set_ylabel("Bellman residual"), ax.legend()
ax.set_title("Contraction: the residual falls at least geometrically")
plt.show()

# %% [markdown]
# ### The policy-improvement theorem, measured / 策略改进定理的实测
#
# Policy iteration from the uniform random policy: each curve is one state's $V^{\pi_k}$; none ever goes
# down, and the last equals $V^*$.

# %%
trace = np.array(res.improvement)
fig, ax = plt.subplots(figsize=(6, 3))
for s_ in range(trace.shape[1]):
    if not res.mdp.terminal[s_]:
        ax.plot(range(len(trace)), trace[:, s_], "o-", lw=1, ms=3)
ax.set_xlabel("policy iteration step k (0 = uniform random policy)"), ax.set_ylabel(r"$V^{\pi_k}(s)$")
ax.set_title("Every improvement step raises every state's value")
plt.show()
steps = np.diff(trace, axis=0)
print(f"{len(trace) - 1} improvement steps; smallest change of any state's value: {steps.min():.1e}")
assert steps.min() >= -1e-10

# %% [markdown]
# ### Cross-check: VI = PI = linear program (scipy) / 交叉验证：价值迭代 = 策略迭代 = 线性规划

# %%
nonterm = ~res.mdp.terminal
assert np.array_equal(res.pi_vi[nonterm], res.pi_pi[nonterm]), "VI and PI disagree on the policy"
assert np.max(np.abs(res.V_vi - res.V_lp)) < 1e-6, "V* differs from scipy's LP solution"
assert mdp.bellman_residual(res.mdp, res.V_vi) < 1e-8
print("greedy policy (← ↓ → ↑; H hole, G goal):")
print("\n".join(mdp.policy_grid(res.desc, res.pi_vi)))
print(f"max|V_VI - V_LP| = {np.max(np.abs(res.V_vi - res.V_lp)):.1e}, "
      f"max|V_VI - V_PI| = {np.max(np.abs(res.V_vi - res.V_pi)):.1e}")

# %% [markdown]
# ### Does the value function predict what happens? / 价值函数能预测实际结果吗？
#
# The greedy policy is run in the real gymnasium environment. With $n$ episodes the success rate has
# standard error $\sqrt{p(1-p)/n}$; the simulated rate should fall within a few standard errors of the
# exact finite-horizon success probability.

# %%
n = len(res.sim_returns)
p = res.success_exact
se = np.sqrt(p * (1 - p) / n)
running = np.cumsum(res.sim_returns) / np.arange(1, n + 1)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(np.arange(1, n + 1), running, label="simulated success rate (running mean)")
ax.axhline(p, color="k", ls="--", label=f"exact within {res.horizon} steps = {p:.3f}")
ax.fill_between(np.arange(1, n + 1), p - 2 * np.sqrt(p * (1 - p) / np.arange(1, n + 1)),
                p + 2 * np.sqrt(p * (1 - p) / np.arange(1, n + 1)), alpha=0.2, color="k", label="±2 s.e.")
ax.set_ylim(0, 1), ax.set_xlabel("episodes"), ax.legend(loc="lower right")
plt.show()

# %% [markdown]
# ## Results / 结果
#
# The checked cell prints each criterion with its threshold (what holds on any machine); the measured
# values follow in the next cell.

# %%
# NBVAL_CHECK_OUTPUT
report = mdp.make_report(res, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print(report.summary())

# %% [markdown]
# ## Play: how the discount changes the policy / 动手：折扣因子如何改变策略
#
# A small $\gamma$ makes the agent short-sighted: far from the goal all actions look alike. Near
# $\gamma = 1$ it becomes patient and prefers long, safe detours around the holes.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_policy(g: float = 0.99) -> None:
    m = mdp.from_gymnasium(env, g)
    V, pi, sweeps, _ = mdp.value_iteration(m)
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(V.reshape(side, side), cmap="viridis")
    ax.grid(False), ax.set_xticks([]), ax.set_yticks([])
    for i, ch in enumerate("".join(mdp.policy_grid(res.desc, pi))):
        ax.text(i % side, i // side, ch, ha="center", va="center", fontsize=14, color="w")
    ax.set_title(f"gamma={g:.2f}: V*(s0)={V[0]:.3f}, {sweeps} sweeps", fontsize=9)
    plt.show()


widgets.interact(show_policy, g=widgets.FloatSlider(value=0.99, min=0.5, max=0.999, step=0.01,
                                                    description="gamma", readout_format=".3f"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Known model.** Dynamic programming needs $P$ and $R$; FrozenLake hands them over. Real problems
#   rarely do, so the rest of the book *samples* the Bellman equations (TD learning, policy gradients).
# - **Size.** Exact solves cost $O(|\mathcal S|^3)$ and sweeps $O(|\mathcal S|^2|\mathcal A|)$: fine for
#   16 or 64 states, impossible for the token MDP of an LLM, whose states are all possible prefixes.
#   There the value function is a network (a value head) fitted to sampled targets.
# - **Discounting vs time limits.** Gymnasium truncates FrozenLake at 100 steps; the discounted $V^*$ ignores
#   that, so the number the simulation checks is the exact finite-horizon success probability.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** 4×4 lake; VI, PI, LP, the improvement trace and 1000 simulated episodes:
#   the whole page executes in 6 s, peak RAM 0.38 GB, on the 2-core CI CPU.
# - **Full (`toy=False`):** 8×8 lake and 20000 episodes: well under a minute on a CPU; NumPy only, a GPU
#   does not help.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 随机策略的 Bellman 期望方程：$V^\pi(s)=\sum_a\pi(a|s)[R(s,a)+\gamma\sum_{s'}P(s'|s,a)V^\pi(s')]$，是一个
#   线性方程组。 · The Bellman expectation equation of a stochastic policy is a linear system.
# - $Q$ 形式与 $V$ 形式可互相转换：$V^\pi=\sum_a\pi Q^\pi$，$Q^\pi=R+\gamma PV^\pi$。 · The Q-form and
#   the V-form convert into each other.
# - 策略改进定理：对 $Q^\pi$ 贪心的策略在每个状态都不差于 $\pi$。 · Policy improvement: acting greedily on
#   $Q^\pi$ never lowers any state's value.
# - 最优 Bellman 算子是 $\gamma$-压缩映射，价值迭代以几何速度收敛到唯一不动点 $V^*$。 · The optimality
#   backup is a $\gamma$-contraction; value iteration converges geometrically to the unique $V^*$.
# - 价值迭代、策略迭代与线性规划给出同一个 $V^*$（误差 < 1e-6）。 · Value iteration, policy iteration and
#   the LP agree on $V^*$.
# - 价值函数要放回真实环境检验：模拟成功率与精确值在抽样误差内一致。 · A value function is checked
#   against the real environment: simulated success matches the exact value within sampling error.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `bellman_q(P, R, gamma, V)` that returns the `(S, A)` array
#    $Q(s,a) = R(s,a) + \gamma\sum_{s'}P(s'|s,a)V(s')$ for `P (S, A, S)`, `R (S, A)`, `V (S,)`, and check it
#    with `llmcore.exercises.check_bellman_q(bellman_q)`. Then use it to write one sweep of value
#    iteration in one line.
# 2. Set `gamma = 1.0`. Value iteration still converges on FrozenLake — why, given that $T$ is no longer a
#    contraction? Which initial policy would make policy iteration's linear system singular?
# 3. Make the lake non-slippery (`is_slippery=False`). What are $V^*(s_0)$ and the success rate now?
# 4. Replace the exact evaluation in `policy_iteration` by $k$ sweeps of iterative evaluation
#    (*modified policy iteration*). How does the number of improvement steps change with $k$?
# 5. Read the dual of the linear program: what do its variables mean?
# 6. Evaluate the uniform random policy with `mdp.evaluate_stochastic` and do one greedy improvement step.
#    Which states' values rise the most, and does the theorem promise the new policy is optimal?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. One `einsum` (or `P @ V`, which contracts the last axis):
#
#    ```python
#    def bellman_q(P, R, gamma, V):
#        return R + gamma * P @ V          # (S, A) + (S, A, S) @ (S,) -> (S, A)
#
#    V_next = bellman_q(P, R, gamma, V).max(axis=1)   # one value-iteration sweep
#    ```
#
#    The checker rejects a missing $\gamma$, the value of the *current* state instead of the next, and
#    returning $\max_a Q$ (shape `(S,)`) instead of $Q$.
# 2. Every policy that reaches a hole or the goal with probability 1 ends, so the sums are finite; a
#    policy that can stay forever without ending (on the non-slippery lake: LEFT in state 0) makes
#    $I - P_\pi$ singular.
# 3. With no slipping, $V^*(s_0) = \gamma^5 \approx 0.951$ for $\gamma = 0.99$ (6 steps, reward on the last)
#    and the success rate is 1.
# 4. With $k = 1$ it is value iteration (many improvement steps); as $k \to \infty$ it becomes policy
#    iteration (few).
# 5. The dual variables are discounted state-action visitation frequencies $d(s,a)$ of the optimal
#    policy, with $\sum_a d(s', a) = \mu(s') + \gamma\sum_{s,a} P(s'|s,a)d(s,a)$.
# 6. States near the goal rise most. The theorem promises only $V^{\pi'} \ge V^\pi$, not optimality;
#    from the uniform policy the trace above needs two improvement steps.
# :::
#
# ## References / 参考文献
#
# Bellman {cite}`bellman1957`; Howard {cite}`howard1960`; Puterman {cite}`puterman1994` (the LP view);
# Sutton & Barto {cite}`sutton2018`, ch. 3–4. Full entries: [bibliography](../../book/bibliography.md).
