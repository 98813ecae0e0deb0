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
# # Agentic RL / 智能体强化学习
#
# **中文摘要：** 智能体强化学习（Agentic RL）把语言模型当作在多轮环境里行动的策略：一条轨迹是整段对话，
# 其中模型自己生成的词元（提问、调用工具、下单）与环境产生的词元（用户回答、工具输出）交替出现。本章先写
# 一个“脚本化但带随机性”的用户模拟器：用户要订一张桌子，只有被问到才透露日期和人数，有时回答“不确定”，
# 超过轮数上限就结束对话；奖励是任务成功减去每轮的轮次惩罚，并通过 gymnasium 的 `check_env` 检查。
# 然后让本书的语言模型先在一批“好坏参半”的示范对话上做 SFT（示范者有时重复提问、有时多余确认、有时
# 不调用工具就编造桌号下单），再分别用两种方式做强化学习：对整条轨迹打分的 GRPO，以及带逐轮价值头、按轮做 GAE
# 信用分配的 PPO；工具调用（查询空桌）就在回合里。损失只作用在智能体自己的词元上——我们验证环境词元上的
# 梯度严格为零。结果：两种方法都把留出用户上的成功率提高、把“每次成功所用轮数”降低。后半部分是多智能体
# 强化学习：在自建、通过 PettingZoo API 测试的协作网格环境上，以相同预算比较集中式评论家的 MAPPO 与独立
# 评论家的 IPPO——两者都远超随机策略，但结果是平手，我们用测得的数据解释原因（瓶颈在协调而非评论家）。
#
# **Learning goals**
# - cast a multi-turn dialogue with a user and a tool as an RL episode: states, actions (agent turns), per-turn
#   rewards, and which tokens the policy is responsible for;
# - build a user simulator whose statistics you control, and check it with gymnasium's API checker;
# - train the book LM with trajectory-level GRPO and with PPO whose value head gives per-turn credit, both with
#   a loss mask that leaves user and tool tokens untouched (verified: their gradient is exactly zero);
# - read the result as RL practitioners do: task success, turns per success, KL to the start, and the
#   simulator's own statistics beside them;
# - compare MAPPO's centralised critic $V(s)$ with IPPO's $V(o_i)$ on a cooperative PettingZoo environment,
#   and explain a tie from measured critic quality and a coordination plateau.
#
# **Prerequisites:** [GRPO](05_grpo.ipynb) (group baselines, k3 KL); [PPO / DPO](04_ppo_dpo.ipynb) (value head,
# clipped losses); [GAE](../01_foundation_rl/03_gae.ipynb) (the advantage estimator, here over turns);
# [SFT](01_sft.ipynb) (the loss mask); the agents chapters of Part 5 use the same idea of tools in the loop.

# %% tags=["parameters"]
toy = True  # True: SFT + 8 rounds each of GRPO and PPO on 64 dialogues (CPU, ~1 minute); False: 60 x 256
device = "auto"
seed = 0
group_size = 4  # GRPO: dialogues per user (PPO rolls out the same number)
turn_penalty = 0.1  # c: reward -c per agent turn

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from llmcore.alignment import agentic_rl
from llmcore.alignment.agentic_rl import lm_loop, marl, multiturn, plots, user_sim
from llmcore.core import pick_device, seed_everything, show_source, use_style
from llmcore.core.report import Criterion

dev = pick_device(device)
seed_everything(seed, threads=agentic_rl.THREADS)  # one torch thread, as the other RL chapters
use_style()
cfg = lm_loop.AgenticConfig.for_mode(toy)
cfg = dataclasses.replace(cfg, group_size=group_size, sim=dataclasses.replace(cfg.sim, turn_penalty=turn_penalty))
print(f"device={dev}, toy={toy}, seed={seed}, G={group_size}, turn penalty={turn_penalty}")

# %% [markdown]
# ## Theory / 理论
#
# ### A dialogue is an episode / 一段对话就是一个回合
#
# In single-turn RLHF and in GRPO the episode is one response to one prompt. An **agent** acts over several
# turns: it asks, calls a tool, reads the answer, asks again, acts. The environment — a user, a tool, a
# web page, a code interpreter — writes tokens too, and what it writes depends on what the agent did. Two
# levels of MDP describe the same episode {cite}`zhou2024archer`:
#
# - **turn level**: the state $s_k$ is the dialogue before agent turn $k$, the action $a_k$ is the whole turn
#   (a few tokens, ending in `<eos>`), the environment answers and pays a reward $r_k$; the episode ends when the
#   user leaves. Here $r_k = -c$ for every turn and $+1$ on the last turn if the booking succeeded, so the
#   return is $R = \mathbb 1[\text{success}] - cK$ for a dialogue of $K$ turns.
# - **token level**: inside turn $k$, each token of $a_k$ is an action of the LM with the dialogue so far as
#   its state. The policy's probability of a turn is the product over its tokens,
#   $\pi_\theta(a_k \mid s_k) = \prod_{t \in a_k} \pi_\theta(x_t \mid x_{<t})$.
#
# **Only the agent's tokens are actions.** The environment's tokens are in the context — the model reads them —
# but the policy did not choose them, so they carry no log-probability in the policy gradient. With the
# **agent mask** $m_t \in \{0, 1\}$ (1 on tokens the policy sampled, through its `<eos>`),
#
# $$
# \nabla_\theta J = \mathbb E\Big[\sum_t m_t\, \hat A_t\, \nabla_\theta \log \pi_\theta(x_t \mid x_{<t})\Big],
# \qquad \frac{\partial \mathcal L}{\partial z_{t-1}} = 0 \ \text{ wherever } m_t = 0,
# $$
#
# where $z_{t-1}$ are the logits that predict token $t$. Training on user or tool tokens would teach the model
# to *imitate the environment* (predict the user's answers), and with a reward attached, to make the user say
# what pays — a mistake that is easy to make when the whole dialogue is one token sequence.
#
# ### Two ways to assign credit / 两种信用分配
#
# **GRPO over whole trajectories.** Roll out $G$ dialogues with the *same* user (same seed: same goal and
# opening) and give every agent token of dialogue $i$ the same advantage, its return against the group:
# $\hat A_i = (R_i - \bar R_\text{group}) / \sigma$. Against the GRPO chapter, two changes. $\sigma$ is the
# std over the *batch*, not the group: in a group where three dialogues succeed in 3 turns and one in 4, the
# group std is tiny and would blow a 0.1 difference up to a full unit, while a group where two fail gets the
# same scale — the batch std keeps "one extra turn" small next to "a failed booking". And the episode is long,
# so a good early question and a bad late one share one number; learning which turn was wasteful needs many
# samples.
#
# **PPO with per-turn credit.** A value head reads the hidden state at the `<|assistant|>` token that opens
# turn $k$ — the model has then seen the whole dialogue before the turn — and predicts $V(s_k)$. GAE
# {cite}`schulman2016gae` then runs over *turns*, not tokens:
#
# $$
# \delta_k = r_k + \gamma V(s_{k+1}) - V(s_k), \qquad \hat A_k = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{k+l},
# $$
#
# with the last turn terminal. A redundant question now costs its own $-c$ plus whatever it changes in the
# value of the next state (nothing), so its advantage is about $-c$ however the dialogue ends. Every token of
# turn $k$ gets $\hat A_k$; the policy loss is PPO's clipped surrogate {cite}`schulman2017ppo_rlhf` over the
# masked tokens, plus the clipped value loss and the same k3 KL to the SFT start as GRPO
# {cite}`shao2024deepseekmath`.
#
# ### The user simulator / 用户模拟器
#
# RL on dialogues needs many users, and real ones are slow, expensive and not reproducible. A **user
# simulator** {cite}`schatzmann2007agenda` plays them: a hidden goal (here: a day and a party size), an
# opening that volunteers part of it, answers only to what is asked, noise (an ambiguous `not sure`), and an
# end (the user books, or gives up after `max_turns`). Its statistics set what RL can learn: if users always
# volunteer everything, asking is never needed; if they never answer clearly, nothing is learnable. Below the
# diagram of one dialogue the SFT start might produce — who wrote which token, the mask, and a per-turn
# advantage for each row.

# %%
demo = user_sim.demo_dialogues(user_sim.ScriptedAgent(p_reask=1.0, p_check=1.0), cfg.sim, 8, seed)
ex = next(d for d in demo if d["revealed"] == 1 and d["success"])
rew = torch.tensor([[-turn_penalty] * (ex["turns"] - 1) + [1 - turn_penalty]])
vals = torch.full_like(rew, 0.5)  # an illustrative critic that predicts 0.5 everywhere
adv, _ = multiturn.per_turn_gae(rew, vals, torch.ones_like(rew), 1.0, 0.95)
fig, ax = plt.subplots(figsize=(8, 4.2))
plots.plot_dialogue(ax, ex["ids"], ex["mask"], adv[0])
plt.show()

# %% [markdown]
# ## The simulator and its tool / 模拟器与工具
#
# The agent speaks one action per turn: `ask day`, `ask size`, `check D N` (a confirmation), `find D N` (the
# **tool**: an availability search that returns a table code), `book C`. Booking succeeds only with the code
# the tool returned for the user's real day and size, so the tool call is necessary and a wrong search leads
# to a wrong booking. Every segment has a fixed width (padding is environment), so turn $k$ starts at the same
# position in every dialogue of a batch.

# %%
show_source(user_sim.BookingUser.respond)

# %% [markdown]
# The SFT data come from a scripted **demonstrator** with three habits, each on in a share of its dialogues:
# it re-asks a slot the user already volunteered (50 %), confirms before searching (50 %) — both cost a turn —
# and it skips the tool and books a made-up table code (30 %), which always fails: the agentic version of a
# hallucinated tool result. After a `not sure` it always asks again. The optimal script has none of the
# habits. The simulator's statistics under both (1000 dialogues each):

# %% tags=["nbval-ignore-output"]
sim_demo = user_sim.simulator_stats(cfg.sim, cfg.demonstrator(), n=1000, seed=seed)
sim_opt = user_sim.simulator_stats(cfg.sim, user_sim.ScriptedAgent(), n=1000, seed=seed)
print(f"{'statistic':<32} {'demonstrator':>12} {'optimal':>9}")
for k in sim_demo:
    print(f"{k:<32} {sim_demo[k]:>12.3f} {sim_opt[k]:>9.3f}")

# %% [markdown]
# ### Check: the gymnasium API / 核对：gymnasium 接口检查
#
# `user_sim.BookingEnv` wraps one dialogue as a `gymnasium.Env` (observation: the token ids so far; action:
# one agent turn of `W_AGENT` ids). gymnasium's own `check_env` {cite}`towers2024gymnasium` exercises
# `reset`/`step`, the spaces and seeding; we add that the same seed and the same actions give the same
# observations and rewards.

# %%
checks = agentic_rl.env_checks(cfg.sim, seed)
assert checks == {"check_env": True, "deterministic per seed": True}
print(checks)
env = user_sim.BookingEnv(cfg.sim)
obs, info = env.reset(seed=seed)
for a in [("ask", "day"), ("ask", "size")]:
    obs, r, done, trunc, info = env.step(user_sim.action_ids(a) + [user_sim.PAD])
print(env.render())

# %% [markdown]
# ## The implementation / 实现
#
# A batch of dialogues is rolled out in lock-step: the LM samples `W_AGENT` tokens per turn through the kit's
# KV cache (a row that has emitted `<eos>` is fed `<pad>`, mask 0), each user answers its turn, the answers are
# fed back. The log-probabilities of a finished batch come from one teacher-forced forward. The per-turn
# pieces: GAE over turns with the Part 1 `compute_gae`, and a turn's advantage spread over its tokens.

# %%
show_source(multiturn.per_turn_gae, multiturn.turn_token_advantages)

# %% [markdown]
# One round of each method. GRPO repeats every user `G` times and uses the kit's `group_advantages` and
# `grpo_loss`; PPO reads the value head at the turn openings and uses the PPO chapter's losses.

# %%
show_source(lm_loop.grpo_round, lm_loop.ppo_round)

# %% [markdown]
# The loss-mask check backpropagates a masked policy-gradient loss to the logits and takes the largest
# gradient on the logits that predict agent tokens and on those that predict anything else:

# %%
show_source(multiturn.logit_grad_by_kind)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# 1. **SFT start:** the pretrained book LM, 50 AdamW steps on batches of 32 demonstrator dialogues, loss on the
#    agent's tokens only. It imitates the demonstrator, habits included.
# 2. **GRPO** and **PPO**, each from that start: 8 rounds of 16 users × $G$ = 4 dialogues at temperature 1,
#    one gradient step per round, learning rate $2 \cdot 10^{-4}$, KL coefficient 0.02.
# 3. **Evaluation:** 512 held-out users (seeds never trained on), sampled at temperature 1 — the policy that
#    is trained — with the same random stream for every model.

# %%
res = lm_loop.experiment(cfg, dev, seed)

# %% [markdown]
# ### The loss mask / 损失掩码
#
# Measured on 16 dialogues of the SFT start with random per-turn advantages:

# %%
print(f"[{'PASS' if res.mask_check['environment'] == 0.0 else 'FAIL'}] largest |gradient| on the logits of "
      "environment tokens (opening, user, tool, padding) == 0")
assert res.mask_check["environment"] == 0.0 and res.mask_check["agent"] > 0

# %% tags=["nbval-ignore-output"]
print(f"largest |gradient| on the logits of {res.mask_check['agent tokens']} agent tokens: {res.mask_check['agent']:.2e}; "
      f"on {res.mask_check['environment tokens']} environment tokens: {res.mask_check['environment']:.1f}")

# %% [markdown]
# ### SFT only vs GRPO vs PPO / 仅 SFT、GRPO 与 PPO
#
# "Turns per success" counts every turn spent, failed dialogues included, per successful booking — what a
# deployment pays; "turns of a successful dialogue" is the length of the dialogues that worked.

# %% tags=["nbval-ignore-output"]
rows = [("SFT only", res.start)] + [(m.upper(), s) for m, s in res.final.items()]
keys = ["success", "turns", "turns per success", "turns of a successful dialogue", "return", "tool calls"]
print(f"{'policy':<10}" + "".join(f"{k:>32}" for k in keys))
for name, s in rows:
    print(f"{name:<10}" + "".join(f"{s[k]:>32.3f}" for k in keys))
print(f"(the demonstrator script: success {res.sim_demo['success']:.3f}, turns per success "
      f"{res.sim_demo['turns per success']:.2f}; the optimal script: {res.sim_optimal['success']:.3f}, "
      f"{res.sim_optimal['turns per success']:.2f})")
print(f"wall-clock (shared CPU): SFT {res.sft_s:.1f} s, " + ", ".join(f"{m.upper()} {s:.1f} s" for m, s in res.rl_s.items()))

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
for m in res.history:
    h = res.history[m]
    x = np.arange(1, len(h["success"]) + 1)
    for ax, key in ((axes[0], "success"), (axes[1], "turns")):
        sm = plots.smooth(h[key])  # running mean over 3 rounds
        ax.plot(x, h[key], alpha=0.3)
        ax.plot(x[len(x) - len(sm):], sm, lw=2, label=m.upper())
    axes[2].plot(x, h["kl"], label=m.upper())
names = ["SFT only"] + [m.upper() for m in res.final]
summ = [res.start] + list(res.final.values())
axes[3].bar(np.arange(len(names)) - 0.2, [s["success"] for s in summ], 0.4, label="success")
ax2 = axes[3].twinx()
ax2.bar(np.arange(len(names)) + 0.2, [s["turns per success"] for s in summ], 0.4, color="C3", label="turns / success")
axes[3].set_xticks(range(len(names)), names)
axes[0].set(title="success of the training rollouts", xlabel="round")
axes[1].set(title="turns per dialogue (training rollouts)", xlabel="round")
axes[2].set(title="KL to the SFT start (k3, per token)", xlabel="round")
axes[3].set(title="held-out: success (left), turns/success (right)", ylim=(0, 1))
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Where the turns and the failures come from: the habits, counted per dialogue in the held-out evaluations
# (`multiturn.habits`), next to the script the SFT data came from. "Moves on after 'not sure'" is any turn
# other than asking the same question again (the demonstrator never does it; a policy that does is usually
# guessing), "invalid turns" are sampled token strings that are no action at all.

# %% tags=["nbval-ignore-output"]
hkeys = list(next(iter(res.habits.values())))
print(f"{'policy':<24}" + "".join(f"{k:>27}" for k in hkeys))
for name, h in res.habits.items():
    print(f"{name:<24}" + "".join(f"{h[k]:>27.3f}" for k in hkeys))

# %% [markdown]
# What the policies learned shows in their dialogues with the same held-out user (the first one; sampled):

# %% tags=["nbval-ignore-output"]
for name in ("sft", "grpo", "ppo"):
    print(f"--- {name.upper()}\n{res.examples[name]}\n")

# %% [markdown]
# How to read the habits table. The tool-skipping habit is the one with the largest signal — a booking with
# a made-up code always fails, a difference of 1 in the return — and both methods all but remove it within
# the 8 rounds (the table above), which is where
# most of the success gain comes from: the policy learns to call the tool. The confirmation is a wasted turn
# in every dialogue that has one and needs no context to recognise, and it falls next. Re-asking a slot is
# wasteful only when the opening already gave it, a decision that depends on the context, and it moves least
# in this budget. Per-turn credit is meant for exactly these small, local costs: PPO's advantage for a
# wasted turn is about $-c$ in every dialogue, while GRPO has to infer it from differences between whole
# dialogues of the same user. And success rises above the demonstrator's own rate: RL is not imitation — it
# keeps the demonstrations' good habits and drops the bad ones, which SFT on mixed data cannot do.

# %% [markdown]
# ## Multi-agent RL: MAPPO vs IPPO / 多智能体强化学习：MAPPO 与 IPPO
#
# **中文摘要：** 多个智能体共享一个团队奖励时，每个智能体只能看到局部观测 $o_i$，却要为整个团队的回报
# 负责。CTDE（集中训练、分散执行）的做法是：执行时每个智能体只用自己的策略 $\pi_\theta(a_i\mid o_i)$，
# 训练时评论家可以看全局状态 $s$。MAPPO 用集中式价值 $V_\phi(s)$，IPPO 用每个智能体自己的 $V_\phi(o_i)$；
# 两者的 actor、PPO 裁剪目标、GAE 完全相同，只有评论家的输入不同。我们在自建的网格环境 `SpreadGrid`
# （$N$ 个智能体覆盖 $N$ 个地标，PettingZoo `ParallelEnv`，通过官方 API 测试）上用相同预算和种子比较两者。
#
# ### Theory / 理论
#
# The environment is a decentralised POMDP: at step $t$ every agent $i$ sees only $o_{t,i}$ (its position,
# the landmarks relative to itself, the other agents within its view radius, $t/H$) and the team receives
# one reward
#
# $$
# r_t = -\sum_{l=1}^{N} \min_i \lVert p_i - q_l \rVert_1 - c\,\#\{i<j: p_i = p_j\}.
# $$
#
# **Centralised training, decentralised execution (CTDE).** One actor with shared weights,
# $\pi_\theta(a_i \mid o_i, e_i)$ ($e_i$ the agent's one-hot id), acts on local observations only; the
# critic exists only during training, so it may read anything. Both learners maximise PPO's clipped
# surrogate over all $T \times E \times N$ agent-steps,
#
# $$
# \mathcal L(\theta) = \frac{1}{TEN}\sum_{t,e,i} \min\big(\rho_{t,e,i}\hat A_{t,e,i},\ \mathrm{clip}(\rho_{t,e,i}, 1\pm\varepsilon)\hat A_{t,e,i}\big)
# + \beta\,\mathcal H, \qquad \rho = \frac{\pi_\theta(a_i\mid o_i)}{\pi_{\theta_\text{old}}(a_i\mid o_i)},
# $$
#
# and differ only in the advantage's baseline (GAE from the [GAE chapter](../01_foundation_rl/03_gae.ipynb)):
#
# | | critic | TD error | shapes |
# |---|---|---|---|
# | **MAPPO** {cite}`yu2022mappo` | $V_\phi(s_t)$, global state | $\delta_t = r_t + \gamma V_\phi(s_{t+1}) - V_\phi(s_t)$ | GAE on $(T, E)$, broadcast to $(T,E,N)$ |
# | **IPPO** {cite}`dewitt2020ippo` | $V_\phi(o_{t,i}, e_i)$, local obs | $\delta_{t,i} = r_t + \gamma V_\phi(o_{t+1,i}) - V_\phi(o_{t,i})$ | GAE on $(T, E\cdot N)$ |
#
# A better critic lowers the variance of $\hat A$; it does not change *which* agent gets credit — every agent
# still receives the team's advantage. 中文要点：集中式评论家只改变基线（方差），不解决“功劳归属”。

# %%
show_source(marl.critic_input, marl.advantages)

# %% [markdown]
# ### The environment passes PettingZoo's API checks / 环境通过 PettingZoo API 检查
#
# Why an own environment: PettingZoo ≥ 1.25 no longer ships MPE; `simple_spread` lives in the separate
# `mpe2` package (with a pygame-ce dependency), and its continuous version needs millions of steps, far
# beyond this section's ~25 s CPU budget. `SpreadGrid` keeps its reward and its partial observability on a
# 5 x 5 grid, and is held to the same API contract:
#
# `parallel_api_test` (spaces, dict keys, agent life-cycle), `parallel_seed_test` (same seed, same trajectory),
# the state test (`state()` in `state_space`) and the AEC `api_test` after `parallel_to_aec` — PettingZoo's
# own code is the oracle here; any warning counts as a failure.

# %%
marl_cfg = marl.MARLConfig.for_mode(toy)
env = marl_cfg.env(render_mode="ansi")
env.reset(seed=0)
print(env.render())
for name, ok in marl.api_checks(marl_cfg.env).items():
    print(f"[{'PASS' if ok else 'FAIL'}] {name}")

# %% [markdown]
# ### The experiment / 实验
#
# MAPPO and IPPO are trained with the same seeds (same actor initialisation, same training layouts) and the
# same budget, then their greedy policies are scored on 512 fixed layouts together with two references:
# uniform random moves (score 0) and a full-information planner that re-solves the Hungarian assignment of
# agents to landmarks with SciPy's `linear_sum_assignment` every step (score 1).

# %%
marl_results = marl.compare_seeds(marl_cfg, range(seed, seed + 3))
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
marl.plot_curves(axes[0], marl_results, "return")
marl.plot_curves(axes[1], marl_results, "ev")
axes[0].set_title("team return (mean ± sd over seeds)")
axes[1].set_title("critic explained variance of the λ-return")
plt.show()

# %% tags=["nbval-ignore-output"]
display(Markdown(marl.summary_table(marl_results)))
for r in marl_results:
    print(f"seed {r.seed}: " + ", ".join(f"{k} = {v:.3f}" for k, v in marl.metrics(r).items()))
    for c in marl.criteria(r):
        print("  ", Criterion(*c))

# %% [markdown]
# ### Analysis / 分析
#
# **Both rise well above random, and MAPPO ties IPPO.** On every seed and kernel set we measured, both
# learners close about 40 % of the gap from random to the planner (normalised score 0.38–0.44), and their
# difference is within ±0.03 — the honest result is a tie, not a MAPPO win. Three measurements say why:
#
# 1. *The local observation nearly determines the value.* The critics' explained variance of the λ-return
#    is about the same (≈ 0.8 for both, right panel): every agent sees all landmarks, its own position and
#    $t/H$, and the dense team reward is dominated by terms it can see. A centralised $V(s)$ then has little
#    to add over $V(o_i)$ — as MAPPO's own ablations and de Witt et al. found on dense-reward SMAC maps.
# 2. *The plateau is a coordination failure, not a critic failure.* The learned policies score like the
#    uncoordinated heuristic "every agent walks to its own nearest landmark" (its row in the table: team
#    return ≈ −40 vs ≈ −38 learned, random ≈ −59);
#    a fixed convention "agent $i$ goes to landmark $i$" — representable by the same actor through the id
#    one-hot — reaches −11.5, close to the planner (−7). Reaching it needs all agents to change together;
#    both critics broadcast the same team advantage to every agent, so neither assigns credit to the
#    agent that should deviate. Widening the view to the whole grid (IPPO then sees everything MAPPO does),
#    dropping the collision penalty, more PPO epochs, other learning rates or 3x the budget all left both at
#    0.38–0.46 (seed 0, measured while building this section).
# 3. *Where a centralised critic would help:* when $o_i$ misses what drives the return — sparse or delayed
#    team rewards, hidden teammates that decide the outcome, or per-agent credit (counterfactual baselines
#    as in COMA, value decomposition as in QMIX/VDN). That is where the MAPPO paper reports its gains.
#
# 中文：两者都显著优于随机策略，但 MAPPO 与 IPPO 打平；原因是局部观测已几乎决定价值，而瓶颈在协调（功劳归属），
# 集中式评论家并不解决它。

# %% [markdown]
# ## Results / 结果

# %% tags=["nbval-ignore-output"]
report = agentic_rl.make_report(res, toy, str(dev), seed, marl_results[0])  # both halves, this seed
for name, value in report.metrics.items():  # trained numbers: they move with the seed and the CPU's kernels
    print(f"{name}: {value:.4g}")

# %%
# NBVAL_CHECK_OUTPUT
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %% [markdown]
# ## Play: the simulator's statistics / 动手：模拟器的统计量
#
# How often users volunteer a slot and answer ambiguously decides how much there is to learn. The sliders
# re-run the two scripted agents (no LM, 1000 dialogues each): the gap between them is the room RL has.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_sim(p_reveal: float = 0.5, p_ambiguous: float = 0.3, p_skip: float = 0.3) -> None:
    sim = dataclasses.replace(cfg.sim, p_reveal=p_reveal, p_ambiguous=p_ambiguous)
    agents = {"demonstrator": dataclasses.replace(cfg.demonstrator(), p_skip=p_skip),
              "optimal": user_sim.ScriptedAgent()}
    stats = {k: user_sim.simulator_stats(sim, a, n=1000, seed=seed) for k, a in agents.items()}
    fig, ax = plt.subplots(figsize=(7, 2.8))
    keys = ["success", "turns per success", "return"]
    for i, (k, s) in enumerate(stats.items()):
        ax.bar(np.arange(3) + 0.4 * i - 0.2, [s[q] for q in keys], 0.4, label=k)
    ax.set_xticks(range(3), keys)
    ax.set_title(f"'not sure' answers per dialogue (optimal): {stats['optimal'][chr(39) + 'not sure' + chr(39) + ' answers']:.2f}")
    ax.legend()
    plt.show()


widgets.interact(show_sim, p_reveal=widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1),
                 p_ambiguous=widgets.FloatSlider(value=0.3, min=0.0, max=0.8, step=0.1),
                 p_skip=widgets.FloatSlider(value=0.3, min=0.0, max=1.0, step=0.1));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Scale and task.** A 2M-parameter LM, a two-slot booking with a five-word action language and a scripted
#   user; production agentic RL trains 7B+ models on web, code and tool-use environments with long free-text
#   turns, often with an LM (or a human-written agenda plus an LM) as the user simulator.
# - **Fixed-width turns.** Every segment has a fixed number of tokens so a batch of dialogues stays aligned
#   with no attention masks; real systems pack variable-length turns and carry per-token masks and positions.
# - **Per-turn value at the turn's first token.** ArCHer {cite}`zhou2024archer` trains an off-policy turn-level
#   critic and a token-level actor; we use on-policy PPO with GAE over turns and a value head on the policy's
#   trunk (the book's PPO chapter layout).
# - **Sampled evaluation.** Success and turns are measured by sampling at temperature 1 — the policy being
#   trained — not greedily; greedy decoding of the SFT start would hide its mixed habits behind one argmax.
# - **No reward model.** The simulator knows the goal, so the reward is exact; with human users the success
#   signal itself has to be learned or judged.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (`python run.py --module agentic_rl --toy`):** SFT of the book LM (50 steps × 32 dialogues) + 8 rounds
#   each of GRPO and PPO on 64 dialogues + 3 evaluations of 512 users: **50-52 s wall, peak RSS 1.0 GB** per
#   run on one thread of the 2-core CI CPU (seeds 0-4, native kernels, SFT not cached: SFT 17-18 s, GRPO
#   12-12.5 s, PPO 13.3-14.3 s; the same with `ATEN_CPU_CAPABILITY=avx2`, 60-62 s with `default`). This page:
#   57 s with the kernel start. The multi-agent section adds its own ~25 s. Every criterion passed on all 15
#   cells (seeds 0-4 × native, avx2, default): success gains 15-47 points, turns per success cut by 2.4-5.2.
# - **Full (`toy=False`):** 300 SFT steps on 8000 dialogues, 60 rounds of 256 dialogues per method with two
#   inner steps at $10^{-4}$, 2048 evaluation users — 30× the toy's RL dialogues; a GPU run, not yet measured
#   (its two-inner-step path is unit-tested on a tiny model).
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 多轮智能体的一条轨迹是整段对话；智能体的词元是动作，用户和工具的词元是环境。
#   · A multi-turn episode is a whole dialogue; the agent's tokens are actions, user and tool tokens are the environment.
# - 损失掩码只训练智能体词元：环境词元上的梯度严格为零，否则模型会去模仿甚至“操纵”环境。
#   · The loss mask trains agent tokens only: the gradient on environment tokens is exactly zero, or the model learns to imitate the environment.
# - GRPO 给整条对话一个优势；用批内标准差缩放，避免组内近似平局被放大。
#   · GRPO gives a whole dialogue one advantage; scale it by the batch std so near-ties in a group are not blown up.
# - PPO 的逐轮价值头加按轮 GAE，让多余的一轮单独承担它的轮次惩罚。
#   · PPO with a per-turn value head and GAE over turns charges a wasted turn its own penalty.
# - 用户模拟器的统计量（透露概率、含糊回答、轮数上限）决定了强化学习能学到什么，必须与结果一起报告。
#   · The simulator's statistics (reveal rate, ambiguity, turn limit) decide what RL can learn: report them with the results.
# - 从好坏参半的示范做 SFT 会连坏习惯一起模仿；强化学习保留好习惯、去掉坏习惯，成功率和效率同时提高。
#   · SFT on mixed demonstrations imitates the bad habits too; RL keeps the good ones and drops the rest.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `per_turn_gae(rewards, values, turn_mask, gamma, lam)` for `(B, K)` tensors of a
#    batch of dialogues of different lengths, returning the `(B, K)` advantages (zero after a dialogue's last
#    turn, which is terminal). Check it with `llmcore.exercises.check_per_turn_gae(fn)`.
# 2. Set `scale_rewards="group"` in `AgenticConfig` and rerun GRPO. Which dialogues get large advantages now,
#    and what happens to turns per success?
# 3. Break the mask: train GRPO with `ro.mask` replaced by "every token after the opening". What does the
#    model learn about the user's answers, and what happens to success?
# 4. Raise `p_ambiguous` to 0.6 with the play cell. How do the demonstrator and the optimal script change, and
#    what would you expect RL to gain?
# 5. Replace the scripted user with an LM-based one: fine-tune a second copy of the book LM on the user's side
#    of the dialogues (mask the agent's tokens instead). Which statistics of `simulator_stats` does it match?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Walk back from each dialogue's last turn; nothing is bootstrapped after it:
#
#    ```python
#    def per_turn_gae(rewards, values, turn_mask, gamma, lam):
#        adv = torch.zeros_like(rewards)
#        for b in range(rewards.shape[0]):
#            n, acc = int(turn_mask[b].sum()), 0.0
#            for k in reversed(range(n)):
#                next_v = values[b, k + 1] if k + 1 < n else 0.0
#                acc = rewards[b, k] + gamma * next_v - values[b, k] + gamma * lam * acc
#                adv[b, k] = acc
#        return adv
#    ```
#
#    The checker rejects a version that bootstraps from the value after the last turn, and ones that ignore
#    $\lambda$ or $\gamma$.
# 2. With the group std, a group whose returns differ only by one turn (0.1) gets advantages of about ±1, as
#    large as a success/failure group's: the policy chases turn savings as hard as success and can learn to
#    skip necessary questions (book too early).
# 3. The model is then also trained to predict the user's and the tool's tokens, weighted by the advantage:
#    it learns which answers "pay" — e.g. raises the probability of the table code that led to success — which
#    the environment will never follow; the gradient on environment logits is no longer zero, and the mask
#    check fails.
# 4. Both scripts need more turns (every `not sure` costs a question), and the turn limit starts to cap the
#    optimal script's success; the demonstrator's tool-skipping failures do not depend on it, so the gap in
#    success stays, while the gap in turns grows.
# 5. Train it like the agent's SFT with the complementary mask; compare reveal rates and the `not sure` rate
#    with `simulator_stats` — an LM user drifts from the script where its data are thin.
# :::
#
# ## References / 参考文献
#
# ArCHer, multi-turn RL for LM agents {cite}`zhou2024archer`; agenda-based user simulation
# {cite}`schatzmann2007agenda`; GRPO {cite}`shao2024deepseekmath`; PPO {cite}`schulman2017ppo_rlhf`; GAE
# {cite}`schulman2016gae`; gymnasium {cite}`towers2024gymnasium`; MAPPO {cite}`yu2022mappo`; IPPO
# {cite}`dewitt2020ippo`. Full entries:
# [bibliography](../../book/bibliography.md).
