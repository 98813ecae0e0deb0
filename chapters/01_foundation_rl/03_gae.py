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
# # GAE & Advantage / GAE 与优势估计
#
# **中文摘要：** 策略梯度需要“这个动作比平均好多少”——优势函数 $A(s,a) = Q(s,a) - V(s)$。
# 蒙特卡洛回报无偏但方差大，一步 TD 误差方差小但依赖不准确的价值函数而有偏。n 步回报、TD(λ) 与
# GAE(γ, λ) 在两者之间连续插值。本章在一个价值函数有闭式解的链式 MDP 上实现这些估计量，验证
# λ = 0 时 GAE 等于 TD 误差、λ = 1 时等于 MC 回报减 V（跨越 episode 边界与截断自举，误差 < 1e-6），
# 向量化实现与朴素循环逐元素一致，并实测优势估计的偏差随 λ 下降、方差随 λ 上升。这里的
# `compute_gae` 正是后面 A2C / PPO / PPO-RLHF 使用的同一个函数。
#
# **Learning goals**
# - write Monte-Carlo, n-step and λ-returns, and GAE, as operations on `(T, N)` rollout tensors;
# - handle episode boundaries (`done`) and time-limit truncation (bootstrap the cut state) correctly;
# - prove numerically the identities GAE(λ=0) = δ, GAE(λ=1) = G − V, GAE + V = the λ-return, and TD(λ)'s
#   backward view = its forward view;
# - measure the bias–variance trade-off of the advantage as λ moves from 0 to 1.
#
# **Prerequisites:** [TD learning](02_td_learning.ipynb); [MDP & Bellman equations](01_mdp.ipynb).

# %% tags=["parameters"]
toy = True  # True: 4000 sampled rollouts for the bias/variance sweep; False: 40000
device = "auto"  # NumPy / CPU torch; validated and recorded
seed = 0
gamma = 0.95  # discount of the chain MDP
lam = 0.9  # λ used for the identity checks
value_error = 0.5  # std of the critic's error V_hat - V (an imperfect critic)

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
import torch

from llmcore.core import PALETTE, pick_device, seed_everything, show_source, use_style
from llmcore.foundation_rl import gae as G

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, gamma={gamma}, lambda={lam}")

# %% [markdown]
# ## Theory
#
# The policy gradient weighs $\nabla\log\pi(a_t|s_t)$ by how much better $a_t$ was than expected, the
# **advantage** $A^\pi(s_t,a_t) = Q^\pi(s_t,a_t) - V^\pi(s_t)$. With a learned critic $V$ and the
# **TD error** $\delta_t = r_t + \gamma V(s_{t+1}) - V(s_t)$, the $n$-step estimators are
#
# $$
# \hat A^{(n)}_t = \sum_{l=0}^{n-1}\gamma^l r_{t+l} + \gamma^n V(s_{t+n}) - V(s_t)
#               = \sum_{l=0}^{n-1}\gamma^l\delta_{t+l},
# $$
#
# from $n = 1$ (the TD error: low variance, biased by the critic's error) to $n = \infty$ (the
# Monte-Carlo return minus $V$: unbiased, but it sums the noise of every future reward). **GAE**
# {cite}`schulman2016gae` averages all of them with weights $(1-\lambda)\lambda^{n-1}$:
#
# $$
# \hat A^{\text{GAE}(\gamma,\lambda)}_t = (1-\lambda)\sum_{n\ge1}\lambda^{n-1}\hat A^{(n)}_t
#  = \sum_{l\ge0}(\gamma\lambda)^l\,\delta_{t+l},
# \qquad \hat A_t = \delta_t + \gamma\lambda\,(1-d_t)\,\hat A_{t+1}.
# $$
#
# $\hat A_t + V(s_t)$ is the **λ-return** $G^\lambda_t$, the target of **TD(λ)** {cite}`sutton1988td`,
# whose *backward view* with eligibility traces $e \leftarrow \gamma\lambda e + \mathbf 1_{s_t}$ makes
# exactly the same total update ({cite}`sutton2018`, ch. 12).
#
# **Boundaries.** $d_t = 1$ when the episode ended at step $t$: nothing bootstraps from, or flows back
# from, step $t+1$ (which belongs to the next episode). A **termination** owes no future value; a
# **truncation** by a time limit does: the episode was cut, not finished {cite}`pardo2018timelimits`. We
# fold the owed value into the reward, $r_t \leftarrow r_t + \gamma V(s_\text{final})$, after which a
# truncation is an ordinary done.

# %% [markdown]
# ## The implementation
#
# The function PPO uses: a backward recursion over time, vectorised over the `N` envs.

# %%
show_source(G.compute_gae, G.bootstrap_truncation)

# %% [markdown]
# Two independent references: a plain Python loop over scalars, and a version with no loop over time
# at all — $\hat A = W\delta$ with a triangular matrix of products of $\gamma\lambda(1-d_j)$.

# %%
show_source(G.compute_gae_loop, G.compute_gae_matrix)

# %% [markdown]
# ### A hand-computed example
#
# Three steps, an episode ending at step 1, γ = 0.9, λ = 0.8:
# $\delta = (1 + 0.9\cdot0.4 - 0.5,\ 1 - 0.4,\ 1 + 0.9\cdot0.2 - 0.3) = (0.86, 0.6, 0.88)$;
# $\hat A_2 = 0.88$, $\hat A_1 = 0.6$ (nothing crosses the done), $\hat A_0 = 0.86 + 0.72\cdot0.6 = 1.292$.

# %%
r = torch.tensor([[1.0], [1.0], [1.0]])
v = torch.tensor([[0.5], [0.4], [0.3]])
d = torch.tensor([[0.0], [1.0], [0.0]])
adv, ret = G.compute_gae(r, v, d, torch.tensor([0.2]), gamma=0.9, lam=0.8)
print("advantages", [round(x, 4) for x in adv[:, 0].tolist()], " returns", [round(x, 4) for x in ret[:, 0].tolist()])
assert torch.allclose(adv[:, 0], torch.tensor([1.292, 0.6, 0.88]), atol=1e-6)

# %% [markdown]
# ## The chain MDP and its exact values
#
# Eight states in a row; the policy moves right with probability 0.6, else left (a wall at 0); stepping
# right from the last state ends the episode with +1; every step also pays −0.1 plus Gaussian noise
# (std 0.5). The true values solve $(I - \gamma P_\pi)V = r_\pi$ and $Q = R + \gamma P V$. Our critic is
# deliberately wrong: $\hat V = V + \text{noise}$ with std `value_error`.

# %%
show_source(G.ChainMDP)

# %%
res = G.experiment(toy=toy, seed=seed, gamma=gamma, lam=lam, value_error=value_error)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(res.V, "o-", label=r"true $V^\pi$ (closed form)")
ax.plot(res.V_hat, "s--", label=r"critic $\hat V$ (imperfect)")
ax.set_xlabel("state"), ax.set_ylabel("value"), ax.legend()
ax.set_title(f"Chain MDP, γ = {gamma}")
plt.show()

# %% [markdown]
# ## The identities, on rollouts with many episode boundaries
#
# Random chain rollouts of 64 envs × 48 steps (several episodes per env, the last one cut by the
# rollout's end and bootstrapped with $\hat V$), plus time-limit truncations planted in every env.

# %%
show_source(G.identity_errors)

# %%
print(f"max |GAE(λ=0) − δ|                         = {res.err_lam0_td:.1e}")
print(f"max |GAE(λ=1) − (G − V)|  (MC summed forward) = {res.err_lam1_mc:.1e}")
print(f"max |GAE(λ=1) − (G − V)|  with truncations    = {res.err_trunc:.1e}")
print(f"max |vectorised − plain loop|               = {res.err_vec_loop:.1e}")
print(f"max |matrix form − recursion|               = {res.err_matrix:.1e}")
print(f"max |n-step mixture − (GAE + V)|            = {res.err_forward:.1e}")
print(f"max |TD(λ) backward − forward view|         = {res.err_td_lambda:.1e}")
for e in (res.err_lam0_td, res.err_lam1_mc, res.err_trunc, res.err_vec_loop, res.err_matrix, res.err_forward):
    assert e < 1e-6

# %% [markdown]
# ## Bias and variance of the advantage vs λ
#
# For every visited $(s,a)$ we compare the sampled $\hat A_t$ with its target $Q^\pi(s,a) - \hat V(s)$
# — the part of the advantage that changes the expected policy gradient (the baseline $\hat V(s_t)$ does
# not) — and average the squared bias and the variance over visits.

# %%
show_source(G.advantage_bias_variance)

# %%
bv = res.bv
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(bv["lams"], bv["bias2"], "o-", color=PALETTE[0], label="bias²")
ax.plot(bv["lams"], bv["variance"], "s-", color=PALETTE[1], label="variance")
ax.plot(bv["lams"], bv["mse"], "^--", color=PALETTE[2], label="bias² + variance")
ax.set_yscale("log"), ax.set_xlabel("λ"), ax.set_ylabel("per (s, a), visit-weighted")
ax.set_title(f"GAE(γ = {gamma}, λ): bias falls, variance rises")
ax.legend()
plt.show()
print("best λ by bias² + variance:", bv["lams"][int(np.argmin(bv["mse"]))])

# %% [markdown]
# TD(λ) as a *prediction* method, learned from 300 episodes with α = 0.05, against the closed-form $V$:

# %%
print({f"TD({k})": round(v, 3) for k, v in res.td_lambda_rmse.items()})

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = G.make_report(res, toy, str(dev), seed)
for name, value in report.metrics.items():
    print(f"{name}: {value:.3g}")
for c in report.criteria:  # identity errors are ~1e-15 float noise: print them rounded to 1e-9
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {round(c.value, 9):.4g} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %% [markdown]
# ## Play: γ and λ
#
# Move γ and λ and watch the advantages of one rollout of 4 envs (dashed lines: episode ends). Small λ
# gives smooth, critic-driven advantages; λ = 1 gives the noisy Monte-Carlo ones.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

play_chain = G.ChainMDP()
play_data = play_chain.sample(4, 60, np.random.default_rng(seed))


def play(g: float = 0.95, lm: float = 0.9) -> None:
    V, _ = G.ChainMDP(gamma=g).true_values()
    V_hat = V + value_error * np.random.default_rng(seed + 1).standard_normal(len(V))
    rr = torch.as_tensor(play_data["rewards"])
    dd = torch.as_tensor(play_data["dones"])
    a, _ = G.compute_gae(rr, torch.as_tensor(V_hat[play_data["states"]]), dd,
                         torch.as_tensor(V_hat[play_data["last_states"]]), g, lm)
    fig, ax = plt.subplots(figsize=(8, 3))
    for n in range(4):
        ax.plot(a[:, n], color=PALETTE[n], lw=1.2)
        for t in np.flatnonzero(play_data["dones"][:, n]):
            ax.axvline(t, color=PALETTE[n], ls="--", lw=0.6)
    ax.set_xlabel("step t"), ax.set_ylabel(r"$\hat A_t$"), ax.set_title(f"GAE(γ={g:.2f}, λ={lm:.2f})")
    plt.show()


widgets.interact(play, g=widgets.FloatSlider(value=0.95, min=0.5, max=0.999, step=0.01, description="γ"),
                 lm=widgets.FloatSlider(value=0.9, min=0.0, max=1.0, step=0.05, description="λ"));

# %% [markdown]
# ## Exercises
#
# 1. Set `value_error = 0` (a perfect critic). What happens to the bias curve, and which λ is best now?
# 2. Treat truncations as terminations (skip `bootstrap_truncation`). Which identity breaks, and how does
#    it bias a CartPole critic whose episodes are cut at 500 steps?
# 3. Show that $\sum_{n\ge1}(1-\lambda)\lambda^{n-1}\hat A^{(n)}_t = \sum_l(\gamma\lambda)^l\delta_{t+l}$ by
#    exchanging the sums.
# 4. PPO normalises advantages per minibatch. Does that change the identities? The gradient's direction?
#
# ## References
#
# Schulman et al. {cite}`schulman2016gae` (GAE); Sutton {cite}`sutton1988td` (TD(λ)); Sutton & Barto
# {cite}`sutton2018`, ch. 7 and 12; Pardo et al. {cite}`pardo2018timelimits` (time limits).
# Full entries: [bibliography](../../book/bibliography.md).
