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
# 模拟 1000 局，检验成功率与理论值在抽样误差内一致。
#
# **Learning goals**
# - read an MDP's 5-tuple from a real environment's transition table;
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
from llmcore.foundation_rl import mdp as M

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, gamma={gamma}")

# %% [markdown]
# ## Theory
#
# A finite MDP is $(\mathcal S, \mathcal A, P, R, \gamma)$: states, actions, transition kernel
# $P(s' \mid s, a)$, reward $R(s, a) = \mathbb E[r \mid s, a]$ and discount $\gamma \in [0, 1]$.
# The value of a policy $\pi$ satisfies the **Bellman expectation equation**
#
# $$
# V^\pi(s) = R(s, \pi(s)) + \gamma \sum_{s'} P(s' \mid s, \pi(s))\, V^\pi(s'),
# \qquad\text{i.e.}\qquad V^\pi = R_\pi + \gamma P_\pi V^\pi ,
# $$
#
# a linear system, and the optimal value satisfies the **Bellman optimality equation**
#
# $$
# V^*(s) = \max_a \Big[ R(s, a) + \gamma \sum_{s'} P(s' \mid s, a)\, V^*(s') \Big] = (T V^*)(s).
# $$
#
# For $\gamma < 1$ the backup $T$ is a $\gamma$-contraction in the max-norm,
# $\|TV - TU\|_\infty \le \gamma \|V - U\|_\infty$, so iterating it from any start converges to the
# unique fixed point $V^*$ (**value iteration**, {cite}`bellman1957`). **Policy iteration**
# {cite}`howard1960` alternates exact evaluation (solve the linear system) and greedy improvement; it
# stops after finitely many steps because there are finitely many deterministic policies. $V^*$ is also
# the solution of a **linear program** {cite}`puterman1994`:
#
# $$
# \min_V \sum_s V(s) \quad \text{s.t.} \quad V(s) \ge R(s, a) + \gamma \sum_{s'} P(s' \mid s, a) V(s')
# \;\; \forall (s, a).
# $$
#
# Episodes end at holes and at the goal: the transition that *terminates* does not bootstrap, so we
# keep a "continuing" kernel $P_c(s' \mid s,a) = P(s' \mid s,a)\,[\text{not terminated}]$.

# %% [markdown]
# ## The 5-tuple, read from gymnasium
#
# FrozenLake {cite}`towers2024gymnasium` stores its dynamics as
# `P[s][a] = [(prob, next_state, reward, terminated), ...]`; on the slippery lake the agent moves in the
# intended direction with probability 1/3 and slips to each perpendicular direction with 1/3.

# %%
show_source(M.from_gymnasium)

# %%
env = M.make_env("4x4" if toy else "8x8")
mdp = M.from_gymnasium(env, gamma)
print("map:\n" + "\n".join(r.tobytes().decode() for r in env.unwrapped.desc))
print(f"|S|={mdp.n_states}  |A|={mdp.n_actions}  gamma={mdp.gamma}")
print("P shape", mdp.P.shape, " R shape", mdp.R.shape, " rows of P sum to 1:",
      bool(np.allclose(mdp.P.sum(-1), 1)))
s = 14  # the cell left of the goal
for a, name in enumerate(["LEFT", "DOWN", "RIGHT", "UP"]):
    nz = np.flatnonzero(mdp.P[s, a])
    print(f"s={s} a={name:<5} -> " + ", ".join(f"s'={j}: p={mdp.P[s, a, j]:.3f}" for j in nz),
          f"| R(s,a)={mdp.R[s, a]:.3f}")

# %% [markdown]
# ## The implementation
#
# Every backup is one line of array code: `q_from_v` computes $Q = R + \gamma P_c V$ for all $(s, a)$
# at once, value iteration takes the max over actions, policy iteration solves
# $(I - \gamma P_\pi) V = R_\pi$ exactly.

# %%
show_source(M.q_from_v, M.value_iteration, M.policy_iteration, M.solve_lp)

# %% [markdown]
# ## The closed loop
#
# Solve the lake three ways, evaluate the greedy policy, then run it 1000 times (toy) in the real
# environment. Because the env truncates episodes at its time limit, the number that simulation
# estimates is the policy's **undiscounted success probability within the limit**; we compute that
# exactly with a finite-horizon evaluation and compare.

# %%
res = M.experiment(toy=toy, seed=seed, gamma=gamma, keep=100_000)
print(f"value iteration: {res.vi_sweeps} sweeps; policy iteration: {res.pi_iters} iterations; "
      f"policy evaluation: {res.eval_sweeps} sweeps")

# %% [markdown]
# ### Watching the backup spread value from the goal
#
# Each sweep of value iteration pushes value one step further from the goal; holes stay at 0.

# %%
side = int(np.sqrt(mdp.n_states))
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

residuals = [M.bellman_residual(res.mdp, V) for V in res.vi_history]
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogy(residuals, label=r"$\|TV_k - V_k\|_\infty$")
k = np.arange(len(residuals))
ax.semilogy(k, residuals[1] * gamma ** k, "--", label=r"$\gamma^k$ bound shape")
ax.set_xlabel("sweep k"), ax.set_ylabel("Bellman residual"), ax.legend()
ax.set_title("Contraction: the residual falls at least geometrically")
plt.show()

# %% [markdown]
# ### Cross-check: VI = PI = linear program (scipy)

# %%
nonterm = ~res.mdp.terminal
assert np.array_equal(res.pi_vi[nonterm], res.pi_pi[nonterm]), "VI and PI disagree on the policy"
assert np.max(np.abs(res.V_vi - res.V_lp)) < 1e-6, "V* differs from scipy's LP solution"
assert M.bellman_residual(res.mdp, res.V_vi) < 1e-8
print("greedy policy (← ↓ → ↑; H hole, G goal):")
print("\n".join(M.policy_grid(res.desc, res.pi_vi)))
print(f"max|V_VI - V_LP| = {np.max(np.abs(res.V_vi - res.V_lp)):.1e}, "
      f"max|V_VI - V_PI| = {np.max(np.abs(res.V_vi - res.V_pi)):.1e}")

# %% [markdown]
# ### Does the value function predict what happens?
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
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = M.make_report(res, toy, str(dev), seed)
print(report.summary())
assert report.passed, report.failures()

# %% [markdown]
# ## Play: how the discount changes the policy
#
# A small $\gamma$ makes the agent short-sighted: far from the goal all actions look alike. Near
# $\gamma = 1$ it becomes patient and prefers long, safe detours around the holes.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_policy(g: float = 0.99) -> None:
    m = M.from_gymnasium(env, g)
    V, pi, sweeps, _ = M.value_iteration(m)
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(V.reshape(side, side), cmap="viridis")
    ax.grid(False), ax.set_xticks([]), ax.set_yticks([])
    for i, ch in enumerate("".join(M.policy_grid(res.desc, pi))):
        ax.text(i % side, i // side, ch, ha="center", va="center", fontsize=14, color="w")
    ax.set_title(f"gamma={g:.2f}: V*(s0)={V[0]:.3f}, {sweeps} sweeps", fontsize=9)
    plt.show()


widgets.interact(show_policy, g=widgets.FloatSlider(value=0.99, min=0.5, max=0.999, step=0.01,
                                                    description="gamma", readout_format=".3f"));

# %% [markdown]
# ## Exercises
#
# 1. Set `gamma = 1.0`. Value iteration still converges on FrozenLake — why, given that $T$ is no longer a
#    contraction? Which initial policy would make policy iteration's linear system singular?
# 2. Make the lake non-slippery (`is_slippery=False`). What are $V^*(s_0)$ and the success rate now?
# 3. Replace the exact evaluation in `policy_iteration` by $k$ sweeps of iterative evaluation
#    (*modified policy iteration*). How does the number of improvement steps change with $k$?
# 4. Read the dual of the linear program: what do its variables mean?
#
# ## References
#
# Bellman {cite}`bellman1957`; Howard {cite}`howard1960`; Puterman {cite}`puterman1994` (the LP view);
# Sutton & Barto {cite}`sutton2018`, ch. 3–4. Full entries: [bibliography](../../book/bibliography.md).
