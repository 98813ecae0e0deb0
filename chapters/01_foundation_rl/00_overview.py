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
# # RL Foundations / 强化学习基础
#
# **中文摘要：** 强化学习研究智能体如何通过与环境交互、依据奖励信号学习决策。本章给出全书用到的
# 强化学习算法分类（基于价值 / 基于策略 / 演员-评论家，同策略 / 异策略，在线 / 离线，有模型 / 无模型）
# 与学习路径——两者都直接从模块注册表生成——并完成第一个闭环实验：在 FrozenLake 上比较随机智能体
# 与表格 Q-learning 智能体，用真实环境的成功率说明"学习"带来的差别。
#
# **Learning goals**
# - name the parts of an RL problem: agent, environment, state, action, reward, return, policy, value;
# - place every algorithm in this book on the usual axes (value / policy / actor-critic, on/off-policy,
#   online/offline, model-based/model-free);
# - find your way through the book: which chapter needs which;
# - see a first agent learn: tabular Q-learning against a random policy on FrozenLake.
#
# **Prerequisites:** Python and NumPy; nothing else. The next chapter, [MDP & Bellman](01_mdp.ipynb),
# makes the ideas here precise.

# %% tags=["parameters"]
toy = True  # True: 4x4 lake, 6000 training episodes; False: 8x8 lake, 60000 episodes
device = "auto"  # tabular agents: validated and recorded, no tensors are used
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
from llmcore.core.registry import MODULES
from llmcore.foundation_rl import overview as O
from llmcore.foundation_rl.tabular import td_control

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory: the RL problem in one paragraph
#
# At each step $t$ an **agent** in **state** $s_t$ picks an **action** $a_t \sim \pi(\cdot \mid s_t)$;
# the **environment** returns a **reward** $r_{t+1}$ and the next state $s_{t+1} \sim P(\cdot \mid s_t, a_t)$.
# The agent wants a policy $\pi$ that maximises the expected **return**
#
# $$
# G_t = \sum_{k=0}^{\infty} \gamma^k r_{t+k+1}, \qquad
# V^\pi(s) = \mathbb E_\pi[G_t \mid s_t = s], \qquad
# Q^\pi(s, a) = \mathbb E_\pi[G_t \mid s_t = s, a_t = a].
# $$
#
# Algorithms differ in *what they learn* — a value function from which a policy follows
# (**value-based**), the policy itself (**policy-based**), or both (**actor-critic**) — in *whose data
# they learn from* — the policy being improved (**on-policy**) or any other (**off-policy**) — and in
# *where the data comes from*: a known model (**planning**), live interaction (**online**), or a fixed log
# (**offline**) {cite}`sutton2018`.
#
# ## The book's algorithms, placed on those axes
#
# The map below is drawn from the registry's algorithm list (`llmcore.core.registry.ALGORITHMS`);
# names in black are implemented in a written chapter, grey ones are planned.

# %%
rows = O.taxonomy_rows()
print(f"{'algorithm':<18}{'family':<21}{'policy':<16}{'data':<20}chapter")
for r in rows:
    print(f"{r['algorithm']:<18}{r['family']:<21}{r['policy']:<16}{r['data']:<20}{r['chapter']} [{r['status']}]")
fig, ax = plt.subplots(figsize=(9, 4.2))
O.plot_taxonomy(ax)
ax.set_title("RL algorithms in this book: family × data regime")
plt.show()

# %% [markdown]
# ## The learning path
#
# Every module in the registry names its prerequisites; the graph below is laid out by depth (a chapter
# sits to the right of everything it needs). Filled boxes are written chapters.

# %%
fig, ax = plt.subplots(figsize=(11, 5))
O.plot_learning_path(ax)
ax.set_title("Learning path through LLM-Core (arrows: prerequisite → chapter)")
plt.show()
depth = O.learning_path()
print("start here:", ", ".join(sorted(n for n, d in depth.items() if d == 0)))
print("written:", ", ".join(m.name for m in MODULES if m.written))

# %% [markdown]
# ## The implementation: tabular Q-learning
#
# Our first learner keeps a table $Q(s, a)$ and nudges it toward a one-step bootstrapped target
# {cite}`watkins1992`:
#
# $$
# Q(s, a) \leftarrow Q(s, a) + \alpha \big[r + \gamma \max_{a'} Q(s', a') - Q(s, a)\big],
# $$
#
# while acting $\varepsilon$-greedily so that every action keeps being tried. (The same function runs
# SARSA by changing the bootstrap; the TD-learning chapter, `td`, compares the two.)

# %%
show_source(td_control)

# %% [markdown]
# ## The closed loop: random vs trained agent on FrozenLake
#
# The slippery lake moves the agent in the intended direction only one time in three. We train
# Q-learning with a decaying $\varepsilon$, then score its greedy policy and a uniformly random policy on
# the same 1000 evaluation episodes (seeds disjoint from training). The ceiling is the optimal policy's
# exact success probability, computed by dynamic programming in the next chapter.

# %%
res = O.random_vs_trained(toy=toy, seed=seed)
window = 200
curve = np.convolve(res.train_returns, np.ones(window) / window, mode="valid")
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
a1.plot(np.arange(window, len(res.train_returns) + 1), curve, label="ε-greedy behaviour (training)")
a1.axhline(res.optimal_success, color="k", ls="--", label="optimal policy (DP)")
a1.set_xlabel("training episode"), a1.set_ylabel(f"success rate ({window}-episode mean)")
a1.set_ylim(0, 1), a1.legend(loc="upper left")
names = ["random", "Q-learning (greedy)", "optimal"]
vals = [res.random_returns.mean(), res.trained_returns.mean(), res.optimal_success]
a2.bar(names, vals, color=["0.6", "C0", "k"])
for i, v in enumerate(vals):
    a2.text(i, v + 0.02, f"{v:.3f}", ha="center", fontsize=9)
a2.set_ylim(0, 1), a2.set_ylabel("success rate (1000 episodes)")
a2.tick_params(axis="x", labelsize=8)
fig.suptitle("FrozenLake 4x4, slippery" if toy else "FrozenLake 8x8, slippery")
plt.show()

# %% [markdown]
# ### Cross-check against the closed form
#
# The trained agent's success rate is an estimate from 1000 episodes; the optimal policy's success
# probability is exact. A learned greedy policy cannot beat the optimum by more than sampling error.

# %%
n = len(res.trained_returns)
se = np.sqrt(res.optimal_success * (1 - res.optimal_success) / n)
assert res.trained_returns.mean() <= res.optimal_success + 3 * se, "beats the optimum: something is wrong"
print(f"trained {res.trained_returns.mean():.3f} vs optimal {res.optimal_success:.4f} (s.e. {se:.3f})")

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = O.make_report(res, toy, str(dev), seed)
print(report.summary())
assert report.passed, report.failures()

# %% [markdown]
# ## Play: how much training is enough?
#
# Train Q-learning for a chosen number of episodes and score its greedy policy (300 episodes).

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

from llmcore.foundation_rl.mdp import make_env
from llmcore.foundation_rl.tabular import TDConfig, evaluate_greedy


def play(episodes: int = 1000) -> None:
    env = make_env("4x4")
    Q, _ = td_control(env, TDConfig(episodes=episodes, alpha=0.05, gamma=0.99, epsilon=1.0,
                                    epsilon_final=0.05), seed=seed)
    rate = evaluate_greedy(env, Q, 300, 10_000).mean()
    print(f"{episodes} training episodes -> greedy success rate {rate:.3f} "
          f"(random ≈ {res.random_returns.mean():.3f}, optimal {res.optimal_success:.3f})")


widgets.interact(play, episodes=widgets.IntSlider(value=1000, min=100, max=6000, step=100,
                                                  description="episodes"));

# %% [markdown]
# ## Exercises
#
# 1. Set `epsilon_final=0.3` in the play cell's config. The online success rate during training drops —
#    does the greedy policy's?
# 2. Replace Q-learning by SARSA (`algo="sarsa"`). Which learns faster on this lake, and why might the
#    answer differ on a cliff?
# 3. Add your own algorithm to `ALGORITHMS` in `llmcore/core/registry.py` and re-run the map cell.
#
# ## References
#
# Sutton & Barto {cite}`sutton2018`, ch. 1 and 6; Watkins & Dayan {cite}`watkins1992`; gymnasium
# {cite}`towers2024gymnasium`. Full entries: [bibliography](../../book/bibliography.md).
