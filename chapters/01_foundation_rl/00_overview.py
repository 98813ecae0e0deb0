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
# **中文摘要：** 强化学习研究智能体如何在与环境的交互中，依据奖励信号学会做决策。本章先把
# 强化学习问题写成数学对象（状态、动作、奖励、回报、策略、价值），再说明大语言模型的生成过程本身就是
# 一个“词元级”MDP：状态是提示词加已生成的前缀，动作是下一个词元，奖励在生成结束（EOS）时给出。随后
# 给出全书算法的分类（基于价值 / 基于策略 / 演员-评论家，同策略 / 异策略，在线 / 离线，有模型 / 无模型）
# 与学习路径——两者都直接从模块注册表生成——并完成第一个闭环实验：在 FrozenLake 上比较随机智能体与
# 表格 Q-learning 智能体。随机智能体的成功率还要与由 gymnasium 转移表精确算出的理论值对照。
#
# **Learning goals**
# - name the parts of an RL problem: agent, environment, state, action, reward, return, policy, value,
#   and derive the recursion $G_t = r_{t+1} + \gamma G_{t+1}$ that every later chapter uses;
# - write a language model's generation as a token-level MDP (state = prompt + prefix, action = next
#   token, reward at EOS) and say which parts are known and which are learned;
# - place every algorithm in this book on the usual axes (value / policy / actor-critic, on/off-policy,
#   online/offline, model-based/model-free);
# - find your way through the book: which chapter needs which;
# - see a first agent learn: tabular Q-learning against a random policy on FrozenLake, with the random
#   policy's success rate checked against its exact value.
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
from llmcore.foundation_rl import overview
from llmcore.foundation_rl.tabular import td_control

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory: the RL problem / 强化学习问题
#
# At each step $t$ an **agent** in **state** $s_t$ picks an **action** $a_t \sim \pi(\cdot \mid s_t)$;
# the **environment** returns a **reward** $r_{t+1}$ and the next state $s_{t+1} \sim P(\cdot \mid s_t, a_t)$.
# The state is **Markov** when it carries everything the future depends on:
# $P(s_{t+1}, r_{t+1} \mid s_t, a_t) = P(s_{t+1}, r_{t+1} \mid s_0, a_0, \dots, s_t, a_t)$. That assumption
# is what lets a policy look only at $s_t$, and what the next chapter turns into equations.
#
# **Return.** The agent wants a policy $\pi$ that maximises the expected **return**, the discounted sum of
# future rewards,
#
# $$
# G_t = \sum_{k=0}^{\infty} \gamma^k r_{t+k+1} = r_{t+1} + \gamma\,G_{t+1}, \qquad 0 \le \gamma \le 1 .
# $$
#
# The second form follows by pulling the $k = 0$ term out of the sum and factoring $\gamma$ from the rest:
# $\sum_{k\ge1}\gamma^k r_{t+k+1} = \gamma\sum_{j\ge0}\gamma^j r_{t+1+j+1} = \gamma G_{t+1}$. It is the
# seed of every algorithm in Part 1: dynamic programming takes its expectation (Bellman equations), TD
# learning samples one step of it, GAE mixes the two. Why discount? With rewards bounded by $R_\max$,
# $|G_t| \le R_\max/(1-\gamma)$ for $\gamma < 1$, so infinite tasks have finite values; and $\gamma$ sets a
# horizon of roughly $1/(1-\gamma)$ steps beyond which rewards hardly count. Episodic tasks (a game, a
# chat reply) may use $\gamma = 1$, because the sum stops at the end of the episode.
#
# **Value functions** are expected returns:
#
# $$
# V^\pi(s) = \mathbb E_\pi[G_t \mid s_t = s], \qquad
# Q^\pi(s, a) = \mathbb E_\pi[G_t \mid s_t = s, a_t = a], \qquad
# V^\pi(s) = \sum_a \pi(a\mid s)\,Q^\pi(s,a).
# $$
#
# $V$ scores a situation, $Q$ a decision in it; their difference $A^\pi(s,a) = Q^\pi(s,a) - V^\pi(s)$, the
# **advantage**, says how much better $a$ is than the policy's average — the quantity the GAE chapter
# estimates and every policy-gradient method in Part 3 multiplies its gradients by.
#
# ### The token-level MDP of a language model / 语言模型的词元级 MDP
#
# Generating a reply with an LLM is an episode of an MDP, and this is why a book on LLMs starts with RL:
#
# | MDP part | in an LLM |
# |---|---|
# | state $s_t$ | the prompt followed by the $t$ tokens generated so far |
# | action $a_t$ | the next token, one of the vocabulary's 32k–150k entries |
# | policy $\pi_\theta(a_t\mid s_t)$ | the model's softmax over the vocabulary |
# | transition $P$ | deterministic and *known*: $s_{t+1} = s_t \Vert a_t$ (append the token) |
# | reward | usually 0 until the episode ends at EOS (or at a length limit), then a score of the whole reply: a reward model (RLHF), a verifier (GRPO on maths), a unit test |
# | discount | $\gamma = 1$: episodes are short and end |
#
# The state is Markov by construction (it *is* the whole history), which is why the KV cache of Part 2
# is simply a cached state. In PPO-RLHF {cite}`ouyang2022instructgpt` every token also pays
# $-\beta\log\frac{\pi_\theta(a_t|s_t)}{\pi_\text{ref}(a_t|s_t)}$, a per-token KL penalty, so the reward is
# dense; in GRPO and DPO only the final score matters, and the problem is close to a *contextual bandit*
# whose single action is the whole reply. The value head of a PPO-RLHF model is $V^\pi(s_t)$ on prefixes;
# GAE (chapter 3) spreads the EOS reward back over the tokens that earned it.

# %%
fig, ax = plt.subplots(figsize=(10, 2.6))
overview.plot_token_mdp(ax)
ax.set_title("Generation as an episode: one token per step, reward at the end")
plt.show()

# %% [markdown]
# ## The axes of the algorithm map / 算法分类的几条轴
#
# Algorithms differ along four independent questions {cite}`sutton2018`:
#
# 1. **What is learned?** A value function from which a policy follows by $\arg\max$ (**value-based**:
#    Q-learning, DQN, CQL), the policy itself (**policy-based**: REINFORCE, GRPO, DPO), or both, a policy
#    (actor) trained with a learned value (critic) as its baseline (**actor-critic**: A2C, PPO).
# 2. **Whose data?** **On-policy** methods learn about the policy that collected the data and must throw
#    data away after each update (SARSA, PPO); **off-policy** ones learn about another policy, usually the
#    greedy one, and can reuse old data (Q-learning, DQN, DPO on a preference set).
# 3. **Where does the data come from?** From a known model (**planning**: no interaction at all), from live
#    interaction (**online**), or from a fixed log with no further interaction (**offline**, Part 6).
# 4. **Is there a model?** **Model-based** methods use $P$ and $R$, given (dynamic programming, chess
#    rules) or learned (Dyna {cite}`sutton1991dyna`, world models), to *plan*: look ahead before acting.
#    **Model-free** methods learn values or policies straight from samples and never predict the next
#    state. AlphaGo's tree search {cite}`silver2016alphago` is planning with a known model; Q-learning is
#    model-free. The token MDP has a *known, deterministic* model (append a token), so beam search,
#    best-of-N sampling and tree search over replies are model-based planning; what is not known is the
#    reward, which a reward model learns. In this book dynamic programming (MDP chapter) is the
#    model-based family; every learning method is model-free.
#
# ## The book's algorithms, placed on those axes / 全书算法在这些轴上的位置
#
# The map below is drawn from the registry's algorithm list (`llmcore.core.registry.ALGORITHMS`);
# names in black are implemented in a written chapter, grey ones are planned. The table adds the fourth
# axis, model-based vs model-free.

# %%
rows = overview.taxonomy_rows()
print(f"{'algorithm':<18}{'family':<21}{'policy':<16}{'data':<20}{'model':<13}chapter")
for r in rows:
    print(f"{r['algorithm']:<18}{r['family']:<21}{r['policy']:<16}{r['data']:<20}{r['model']:<13}"
          f"{r['chapter']} [{r['status']}]")
fig, ax = plt.subplots(figsize=(9, 4.2))
overview.plot_taxonomy(ax)
ax.set_title("RL algorithms in this book: family × data regime")
plt.show()

# %% [markdown]
# ## The learning path / 学习路径
#
# Every module in the registry names its prerequisites; the graph below is laid out by depth (a chapter
# sits to the right of everything it needs). Filled boxes are written chapters.

# %%
fig, ax = plt.subplots(figsize=(11, 5))
overview.plot_learning_path(ax)
ax.set_title("Learning path through LLM-Core (arrows: prerequisite → chapter)")
plt.show()
depth = overview.learning_path()
print("start here:", ", ".join(sorted(n for n, d in depth.items() if d == 0)))
print("written:", ", ".join(m.name for m in MODULES if m.written))

# %% [markdown]
# ## The implementation: tabular Q-learning / 实现：表格 Q-learning
#
# Our first learner keeps a table $Q(s, a)$, one number per state and action (16 × 4 on the 4×4 lake),
# and nudges it toward a one-step bootstrapped target {cite}`watkins1992`:
#
# $$
# Q(s, a) \leftarrow Q(s, a) + \alpha \big[\underbrace{r + \gamma \max_{a'} Q(s', a')}_{\text{target}} - Q(s, a)\big].
# $$
#
# Where does the target come from? The optimal action value satisfies
# $Q^*(s,a) = \mathbb E[r + \gamma\max_{a'}Q^*(s',a')]$ (derived in the next chapter). Replacing the
# expectation by the one transition we just saw gives a noisy but unbiased sample of the right-hand side
# *if* $Q$ were already $Q^*$; moving a small step $\alpha$ towards it averages the noise out over many
# visits. The agent acts **ε-greedily**: with probability ε a random action, otherwise the best one by
# $Q$, so that every action keeps being tried; here ε decays from 1 to 0.05 over training.
#
# The function below runs both Q-learning and SARSA: the two differ in a single line, the bootstrap
# (the TD-learning chapter, `td`, compares them on a cliff). Read the loop top to bottom: choose ε,
# reset, then per step act, observe, build the target, move $Q(s,a)$.

# %%
show_source(td_control)

# %% [markdown]
# ## The closed loop: random vs trained agent on FrozenLake / 闭环实验：随机与训练后的智能体
#
# The slippery lake moves the agent in the intended direction only one time in three. We train
# Q-learning with a decaying $\varepsilon$, then score its greedy policy and a uniformly random policy on
# the same 1000 evaluation episodes (seeds disjoint from training). The ceiling is the optimal policy's
# exact success probability, computed by dynamic programming in the next chapter.

# %%
res = overview.random_vs_trained(toy=toy, seed=seed)
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
# ### Cross-check against the closed form / 与闭式解交叉验证
#
# Two checks against exact numbers computed from gymnasium's own transition table (the oracle is
# gymnasium's environment, which the simulation runs, and its table `env.unwrapped.P`, which the
# dynamic program reads).
#
# * The **random policy** has an exact success probability too: evaluate the uniform policy
#   $\pi(a|s) = 1/4$ for the env's 100-step time limit, $V_{k+1} = R_\pi + P_\pi V_k$, $k = 1..100$.
#   1000 simulated episodes must land within a few standard errors $\sqrt{p(1-p)/n}$ of it.
# * The trained agent's success rate is an estimate from 1000 episodes; the optimal policy's success
#   probability is exact. A learned greedy policy cannot beat the optimum by more than sampling error.

# %%
n = len(res.trained_returns)
se = np.sqrt(res.optimal_success * (1 - res.optimal_success) / n)
assert res.trained_returns.mean() <= res.optimal_success + 3 * se, "beats the optimum: something is wrong"
print(f"trained {res.trained_returns.mean():.3f} vs optimal {res.optimal_success:.4f} (s.e. {se:.3f})")
se_r = np.sqrt(res.random_exact * (1 - res.random_exact) / n)
print(f"random  {res.random_returns.mean():.3f} vs exact {res.random_exact:.4f} (s.e. {se_r:.4f})")
assert abs(res.random_returns.mean() - res.random_exact) < 3 * se_r

# %% [markdown]
# ## Results / 结果
#
# The checked cell prints each acceptance criterion and its threshold (what must hold on any machine);
# the measured values, which vary with the CPU's floating-point kernels, follow in the next cell.

# %%
# NBVAL_CHECK_OUTPUT
report = overview.make_report(res, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print(report.summary())

# %% [markdown]
# ## Play: how much training is enough? / 动手：训练多少才够？
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
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Tables, not networks.** FrozenLake has 16 states, so $Q$ is a 16 × 4 table. An LLM's state space
#   (all token prefixes) is astronomically large; the policy and value are networks that generalise
#   between states, and nothing is ever visited twice.
# - **Exact oracles.** Here $P$ is known, so the optimum and the random policy's success are computed
#   exactly. In RLHF the reward is a learned model that can be exploited (over-optimisation
#   {cite}`gao2023overoptimization`), and no optimum is known.
# - **Action space.** 4 actions here, a 32k–150k-token vocabulary in an LLM: exploration by ε-random
#   tokens would produce gibberish; LLMs explore by sampling from their own softmax (temperature).
# - **Scale.** A real RLHF run collects millions of tokens per update across many GPUs; the token MDP
#   itself is unchanged.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** FrozenLake 4×4, 6000 Q-learning episodes + 2 × 1000 evaluation episodes:
#   the whole page executes in 9 s (38 s while the machine was shared with a training run), peak RAM
#   0.38 GB, on the 2-core CI CPU.
# - **Full (`toy=False`):** 8×8 lake, 60000 episodes: about 10× the toy, a minute on one CPU core.
#   Tabular NumPy code: a GPU does not help.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 回报满足递推 $G_t = r_{t+1} + \gamma G_{t+1}$；价值函数是回报的期望。 · The return obeys
#   $G_t = r_{t+1} + \gamma G_{t+1}$; value functions are its expectations.
# - LLM 生成就是词元级 MDP：状态 = 提示 + 前缀，动作 = 下一个词元，奖励在 EOS 给出。 · LLM generation is
#   a token-level MDP: state = prompt + prefix, action = next token, reward at EOS.
# - 词元 MDP 的转移已知且确定，未知的是奖励。 · The token MDP's transition is known and deterministic; the
#   reward is what is unknown and learned.
# - 算法按四条轴分类：学什么、用谁的数据、数据从哪来、有没有模型。 · Four axes: what is learned, whose
#   data, where data comes from, model-based or model-free.
# - 表格 Q-learning 把 $Q(s,a)$ 向一步自举目标推进，ε-贪心保证探索。 · Tabular Q-learning moves $Q(s,a)$
#   towards a one-step bootstrapped target; ε-greedy keeps exploring.
# - 模拟得到的成功率要与由转移表精确算出的值在抽样误差内一致。 · Simulated success rates must match exact
#   values from the transition table within sampling error.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `discounted_return(rewards, gamma)` that returns $G_0 = \sum_k \gamma^k r_{k+1}$
#    for one finished episode (`rewards[k]` is $r_{k+1}$), then run
#    `llmcore.exercises.check_discounted_return(discounted_return)`. Bonus: compute it with the recursion
#    $G_t = r_{t+1} + \gamma G_{t+1}$ from the end.
# 2. Set `epsilon_final=0.3` in the play cell's config. The online success rate during training drops —
#    does the greedy policy's?
# 3. Replace Q-learning by SARSA (`algo="sarsa"`). Which learns faster on this lake, and why might the
#    answer differ on a cliff?
# 4. In the token MDP with reward only at EOS and $\gamma = 1$, what is $G_t$ for every $t$ of one reply?
#    What does that imply for which tokens get credit, without a critic?
# 5. Add your own algorithm to `ALGORITHMS` in `llmcore/core/registry.py` and re-run the map cell.
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Backwards, one multiply-add per step:
#
#    ```python
#    def discounted_return(rewards, gamma):
#        g = 0.0
#        for r in reversed(rewards):
#            g = r + gamma * g
#        return g
#    ```
#
#    Common mistakes the checker catches: forgetting $\gamma$, or starting the powers at $\gamma^1$.
# 2. No: the greedy policy is read from $Q$, and Q-learning is off-policy, so its $Q$ still estimates
#    the greedy policy's values; only the *online* rate falls (more random steps into holes).
# 3. On this lake both reach similar greedy success; on a cliff, SARSA prices in its own exploration and
#    takes a safer path (next-but-one chapter).
# 4. $G_t = R$ for every $t$: every token of the reply gets the same credit, good tokens and bad alike.
#    A critic $V(s_t)$ (PPO) or a group baseline (GRPO) is what lets some tokens count more than others.
# 5. The map and the table are read from the registry, so the new entry appears in both.
# :::
#
# ## References / 参考文献
#
# Sutton & Barto {cite}`sutton2018`, ch. 1 and 6; Watkins & Dayan {cite}`watkins1992`; gymnasium
# {cite}`towers2024gymnasium`. Full entries: [bibliography](../../book/bibliography.md).
