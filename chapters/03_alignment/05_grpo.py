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
# # DeepSeek GRPO / DeepSeek GRPO 推理对齐
#
# **中文摘要：** GRPO（组相对策略优化）是 DeepSeekMath 与 DeepSeek-R1 使用的强化学习算法：对每个提示
# 采样一组 $G$ 个回答，用可验证的奖励（答案是否正确、格式是否合规）打分，再用组内均值和标准差把奖励
# 归一化为优势——组本身就是基线，因此不需要价值网络（critic）。目标函数沿用 PPO 的裁剪比率，并用 k3
# 估计量对参考策略加 KL 惩罚。本章从预训练的本书语言模型（book LM，约 200 万参数）出发，先在两位数
# 加法上做一次“故意不完整”的 SFT（准确率约 60%，并与同样步数从随机初始化训练的模型对比），再只给
# “检查器”不给标准答案，用 GRPO 显著提高留出集准确率（400 个留出题上的精确 McNemar 配对检验；在随机种子与
# CPU 内核的 30 个组合上提高 12.5–28 个百分点），并用 pass@1 与 pass@8 说明这是“锐化”：正确答案本来就能
# 采样到，GRPO 让贪心解码选中它；并与“同样步数继续 SFT”的对照组比较，
# 讨论什么时候带验证器的强化学习才划算；最后直接调用 TRL 的 GRPOTrainer 代码核对优势与损失，并实测
# GRPO 与本书自己的 PPO-RLHF（共享主干的价值头）以及独立价值模型的 PPO 各占多少模型状态内存。
# 理论部分说明组均值为什么是 $V(q)$ 的蒙特卡洛估计、它与 PPO 的逐词元 GAE 优势有何不同，并用图对比两者。
#
# **Learning goals**
# - write GRPO's group-normalised advantage, clipped objective and k3 KL penalty as a few tensor lines;
# - fine-tune the pretrained book LM with a verifier only (no labels, no reward model) and watch
#   accuracy, reward, response length, KL and clipping over training;
# - compare with more supervised fine-tuning on labelled answers, and say when RL with a checker pays;
# - see where the group baseline comes from (a Monte-Carlo estimate of $V(q)$) and how it differs from
#   PPO's per-token critic;
# - measure what dropping the critic saves: model-state bytes of GRPO, of the book's own PPO-RLHF (a value
#   head on a shared trunk) and of PPO with a separate value model.
#
# **Prerequisites:** [PPO / DPO](04_ppo_dpo.ipynb) (clipped surrogate, KL to a reference);
# [Policy gradient & actor-critic](03_pg_ac.ipynb); [SFT](01_sft.ipynb) (the warm start); the book LM
# of Part 2.

# %% tags=["parameters"]
toy = True  # True: the ~2M-parameter book LM, 40 GRPO rounds x 32 prompts (CPU, ~1-2 minutes); False: 300 x 64
device = "auto"
seed = 0
group_size = 4  # G: responses sampled per prompt
beta = 0.04  # KL coefficient (k3 estimator)

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

from llmcore.alignment import grpo, sft, tasks
from llmcore.alignment.data_eval import metrics
from llmcore.core import jobs, pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed, threads=grpo.THREADS)  # one torch thread: see grpo.THREADS
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, G={group_size}, beta={beta}")

# %% [markdown]
# ## Theory / 理论
#
# ### From PPO's critic to a group baseline / 从 PPO 的评论家到组基线
#
# In the token-level MDP of an LLM the state is the prompt plus the prefix, the action is the next token and
# a verifiable reward arrives once, at `<eos>`. PPO-RLHF {cite}`ouyang2022instructgpt` estimates a per-token
# advantage with GAE on a learned **value model** (critic) $V_\phi(q, o_{<t})$; with $\gamma = \lambda = 1$ and
# only a final reward $r$, GAE's advantage telescopes to $\hat A_t = r - V_\phi(q, o_{<t})$ — the critic's job is
# to predict, at every prefix, how the response will be scored. That critic must be trained alongside the
# policy, from the same sparse signal, and in InstructGPT and TRL's `PPOTrainer` it is a second network as
# large as the reward model. GRPO {cite}`shao2024deepseekmath` drops it. For a prompt $q$ it samples a group
# $o_1, \dots, o_G \sim \pi_{\theta_\text{old}}(\cdot \mid q)$, scores each with a reward $r_i$ and uses the group's
# own statistics as the baseline:
#
# $$
# \hat A_{i,t} = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G) + \epsilon}
# \qquad \text{for every token } t \text{ of } o_i .
# $$
#
# **Why this is a baseline.** $\bar r = \frac1G\sum_j r_j$ is a Monte-Carlo estimate of
# $V^{\pi}(q) = \mathbb E_{o\sim\pi(\cdot|q)}[r(q, o)]$, the value of the *prompt* — the same quantity the critic
# predicts at $t = 0$. Subtracting it centres the rewards: within each group the advantages sum to zero, so
# responses better than the model's average on that prompt are pushed up and worse ones down, whatever the
# prompt's difficulty. (Strictly, $\bar r$ includes $r_i$ itself, which correlates the baseline with the
# action and scales the advantage by $(G-1)/G$; the leave-one-out mean of RLOO removes that.) Two things
# are lost compared with a critic: the baseline is per *prompt*, not per prefix, so every token of $o_i$
# gets the same $\hat A_i$ — no credit assignment inside the response — and it costs $G$ samples per prompt.
# Dividing by the group's std makes every prompt's advantages unit-scale; a group whose rewards are all
# equal (all right or all wrong) has $\hat A = 0$ and gives no policy-gradient signal at all.
# 中文要点：组均值是提示词价值 $V(q)$ 的蒙特卡洛估计，组就是基线；代价是同一回答的所有词元共享一个优势，
# 而且奖励全相同的组没有策略梯度信号。
#
# ### The objective / 目标函数
#
# GRPO keeps PPO's clipped importance ratio {cite}`schulman2017ppo_rlhf` (the [policy-gradient chapter](03_pg_ac.ipynb)
# derives it), averages it over the tokens of each response and over the group, and puts the KL to the
# reference policy into the loss — not into the reward, as PPO-RLHF does — estimated token by token with the
# **k3** estimator {cite}`schulman2020klapprox`:
#
# $$
# \mathcal J(\theta) = \frac1G \sum_{i=1}^G \frac1{|o_i|} \sum_{t} \Big[ \min\big(\rho_{i,t} \hat A_{i,t},\,
# \operatorname{clip}(\rho_{i,t}, 1 - \varepsilon, 1 + \varepsilon) \hat A_{i,t}\big)
# - \beta\, \hat{\mathbb D}_{i,t} \Big],
# \qquad \rho_{i,t} = \frac{\pi_\theta(o_{i,t} \mid q, o_{i,<t})}{\pi_{\theta_\text{old}}(o_{i,t} \mid q, o_{i,<t})},
# $$
#
# $$
# \hat{\mathbb D}_{i,t} = \frac{\pi_\text{ref}(o_{i,t} \mid \cdot)}{\pi_\theta(o_{i,t} \mid \cdot)}
# - \log \frac{\pi_\text{ref}(o_{i,t} \mid \cdot)}{\pi_\theta(o_{i,t} \mid \cdot)} - 1 \;\ge 0 .
# $$
#
# **Why k3.** With $r = \pi_\text{ref}/\pi$ evaluated at samples from $\pi$, $\mathbb E_\pi[r] = \sum_y \pi(y)
# \pi_\text{ref}(y)/\pi(y) = 1$, so $\mathbb E_\pi[r - 1] = 0$ and adding $r - 1$ to the naive estimator
# k1 $= -\log r$ (unbiased, but negative for many samples) keeps it unbiased; and since $\log r \le r - 1$
# for every $r > 0$, k3 $= (r - 1) - \log r \ge 0$ sample by sample — lower variance and never negative. k2
# $= \tfrac12(\log r)^2$ is also non-negative but biased. DeepSeek-R1 {cite}`deepseek2025r1` trains with
# **verifiable rewards**: a program checks the answer and its format, so there is no reward model to
# over-optimise either. Dr. GRPO {cite}`liu2025drgrpo` points out that dividing by the std and by $|o_i|$
# biases the update (toward prompts that are nearly always right or wrong, and toward long wrong
# answers); TRL {cite}`vonwerra2020trl` exposes the choices as `scale_rewards` and `loss_type`.
#
# The diagram contrasts the two ways of getting an advantage; the GRPO numbers are computed by
# `grpo.group_advantages` itself on four made-up responses to `12+34=`.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
grpo.plot_advantage_paths(axes[0], "grpo", group_size=4)
grpo.plot_advantage_paths(axes[1], "ppo")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The task and the verifier / 任务与验证器
#
# Two-digit addition. A prompt is `<bos>` + `"37+05="`; the required answer format is the digits of the
# sum followed by `<eos>`. The verifier reads a response and returns *(correct, terse format)*; the
# reward is $r = \mathbb 1[\text{correct}] + 0.1 \cdot \mathbb 1[\text{format}]$. 400 problems are held
# out and never trained on.

# %%
show_source(tasks.check_arith)
task = sft.ArithConfig()
train, heldout = tasks.arith_split(task)
print(f"{len(train)} training problems, {len(heldout)} held out; e.g. {tasks.arith_prompt_text(*heldout[0])!r}")
for ids in (tasks.encode("42") + [tasks.EOS], tasks.encode("42"), tasks.encode("42 ok") + [tasks.EOS]):
    print(f"{tasks.decode_arith_response(ids)}  ->  (correct, terse, verbose) = {tasks.check_arith(37, 5, ids)}")

# %% [markdown]
# ## The implementation / 实现
#
# The group advantage: view the rewards as `(groups, G)`, centre each row, divide by its std (or not, or
# by the batch's — TRL's three `scale_rewards` options).

# %%
show_source(grpo.group_advantages)

# %% [markdown]
# The three KL estimators, one line each, and the loss: the clipped surrogate minus $\beta\,$k3 per token,
# averaged over each response's own tokens (the mask), then over the responses.

# %%
show_source(grpo.kl_estimators, grpo.grpo_loss)

# %% [markdown]
# One round ties them together: sample $G$ responses per prompt at temperature 1, score them with the
# verifier, normalise in groups, compute the old and reference log-probabilities once, then take
# `inner_epochs` gradient steps on the same batch (the second is off-policy, which is where the clip acts).

# %%
show_source(grpo.grpo_round)

# %% [markdown]
# ### Check: the KL estimators against the exact KL / 核对：KL 估计量与精确 KL
#
# For two categorical distributions the exact KL is a sum; sampling 200,000 tokens from $p$, k1 and k3 must
# both be close to it (unbiased), k2 need not be.

# %%
gen = torch.Generator().manual_seed(seed)
p = torch.softmax(torch.randn(50, generator=gen), 0)
q = torch.softmax(torch.randn(50, generator=gen), 0)
exact_kl = float((p * (p / q).log()).sum())
x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
est = {k: float(v.mean()) for k, v in grpo.kl_estimators(p[x].log(), q[x].log()).items()}
assert abs(est["k1"] - exact_kl) < 0.02 and abs(est["k3"] - exact_kl) < 0.02
print(f"KL(p||q) = {exact_kl:.4f}; " + ", ".join(f"{k} ≈ {v:.4f}" for k, v in est.items()))

# %% [markdown]
# ## The closed loop / 闭环实验
#
# 1. **SFT warm start:** the pretrained book LM, fine-tuned with prompt-masked supervised training
#    (batches of 64 problems, AdamW at $10^{-3}$), stopped at the first check (every 5 steps) where
#    greedy accuracy on 200 training problems reaches 60 % — a deliberately half-trained model, so
#    there is room to improve. The checks are fine because the book LM learns fast there: about 10
#    points per 10 steps, with swings of as much in single checks. For comparison, the same warm start
#    from random weights (same architecture, data and optimiser) for exactly as many steps.
# 2. **GRPO:** each round samples 32 training prompts × $G$ responses at temperature 1, scores them with
#    the verifier only (the true answers are never shown to the policy), and takes two gradient steps on
#    the batch (the second is slightly off-policy, so the clip can act).
# 3. **Control:** from the same start, the same number of optimiser steps of *more SFT* on labelled
#    answers, with as many sequences in total as GRPO samples (GRPO's two steps per round reuse one batch
#    of samples, so the control takes half a round's worth of new sequences per step) and the same peak
#    learning rate (held constant).

# %%
cfg = dataclasses.replace(grpo.default_config(toy), group_size=group_size, beta=beta)
# The from-scratch warm start and the SFT control do not depend on the GRPO run: they train in a worker
# process on the second core meanwhile (after waiting for the book LM warm start, which they both need).
# The job seeds itself, so its numbers equal those grpo.experiment(scratch=True, control=True) computes here.
side = jobs.background(grpo.comparisons, cfg, dev, seed, parallel=dev.type == "cpu")
res = grpo.experiment(toy=toy, device=dev, seed=seed, cfg=cfg, scratch=False, control=False)
res.acc_scratch, (res.control_acc, res.acc_sft_control, res.control_s) = side.result()
print(f"SFT warm start: {res.warm_start_steps} steps; held-out accuracy from the book LM {res.acc_start:.3f}, "
      f"from random weights (same steps) {res.acc_scratch:.3f}")
print(f"held-out accuracy: SFT start {res.acc_start:.3f} -> GRPO {res.acc_grpo:.3f}; "
      f"SFT control {res.acc_sft_control:.3f}")

# %%
h = res.history
rounds = np.arange(1, len(h["reward"]) + 1)
fig, axes = plt.subplots(2, 3, figsize=(12, 6))
ax = axes[0, 0]
ax.plot(res.eval_steps, res.eval_acc, "o-", label="GRPO (verifier only)")
ctl_x = np.arange(len(res.control_acc)) * cfg.eval_every
ax.plot(ctl_x, res.control_acc, "s--", label="more SFT (labels), same optimiser steps")
ax.axhline(res.acc_start, color="k", lw=0.8, ls=":")
ax.set(title="held-out greedy accuracy", xlabel="round", ylim=(0, 1.02))
ax.legend(fontsize=8)
for ax, key, title in [(axes[0, 1], "reward", "mean sampled reward (T=1)"),
                       (axes[0, 2], "length", "response length (tokens)"),
                       (axes[1, 0], "kl", "KL to reference (k3, per token)"),
                       (axes[1, 1], "clip_frac", "clipped-token fraction"),
                       (axes[1, 2], "zero_std_frac", "groups with zero reward std")]:
    ax.plot(rounds, h[key], alpha=0.4)
    k = 5
    ax.plot(rounds[k - 1:], np.convolve(h[key], np.ones(k) / k, "valid"), lw=2)
    ax.set(title=title, xlabel="round")
fig.tight_layout()
plt.show()

# %% [markdown]
# Three things to read off the plots. The sampled reward (temperature 1) sits well below the greedy
# accuracy: the half-trained policy spreads its probability over several plausible sums (its samples
# are almost never malformed, just wrong), and GRPO *sharpens* that distribution toward the answers
# it already half-knows, so the greedy answer improves before most samples do. Groups in which all
# $G$ responses get the same reward (all right and terse, or all wrong in the same format) have zero
# advantage and give no policy-gradient signal — only the KL term acts on them. In single rounds that was
# between about a tenth and two fifths of the 32 groups, a fifth to a third on the 5-round average (the
# bottom-right panel; the cell below prints the range and how many of them were all right). And the
# learning rate is small ($7 \cdot 10^{-5}$, decayed linearly to 0 as in
# TRL's default schedule) for a reason: at $10^{-4}$ the greedy accuracy gains less and oscillates,
# at $3 \cdot 10^{-4}$ it collapses (seed 0: 0.62 → 0.33 in 40 rounds of 8 × 8); with a fixed number of
# samples per round, more distinct prompts (32 × $G$=4) beat bigger groups.

# %% tags=["nbval-ignore-output"]
zero, zero_right = np.array(h["zero_std_frac"]), np.array(h["zero_std_right_frac"])
smooth = np.convolve(zero, np.ones(5) / 5, "valid")
print(f"groups with zero reward std per round: min {zero.min():.2f}, max {zero.max():.2f}, mean {zero.mean():.2f} "
      f"(5-round average {smooth.min():.2f}-{smooth.max():.2f}); all right: {zero_right.sum() / zero.sum():.0%} of them")

# %% [markdown]
# ### Sharpening, measured: greedy accuracy against pass@8 / 锐化的度量：贪心准确率与 pass@8
#
# Before and after GRPO the loop also samples 8 answers per held-out prompt at temperature 1. **pass@1** is
# the share of sampled answers that are right; **pass@8** the share of prompts with at least one right answer
# among the 8 (`data_eval.metrics.pass_at_k`, the unbiased estimator of the Data & evaluation chapter). And it
# pairs the greedy verdicts on the same 400 prompts: how many GRPO *fixed* (wrong at the start, right after)
# and how many it *broke*. Only those discordant prompts carry evidence, which is what the exact McNemar test
# weighs: under "GRPO is no better" each of them is a fair coin.

# %% tags=["nbval-ignore-output"]
fixed, broke, p_value = metrics.mcnemar_exact(res.correct_start, res.correct_grpo)
n = cfg.eval_samples
print(f"{'':<10} {'greedy':>7} {'pass@1':>7} {f'pass@{n}':>8}")
for when, acc in (("SFT start", res.acc_start), ("GRPO", res.acc_grpo)):
    key = "start" if when == "SFT start" else "grpo"
    print(f"{when:<10} {acc:7.3f} {res.sampled[key]['pass@1']:7.3f} {res.sampled[key]['pass@n']:8.3f}")
print(f"held-out prompts fixed by GRPO: {fixed}, broken: {broke}; exact McNemar p (one-sided) = {p_value:.1e}")

# %% [markdown]
# Read the three columns together. pass@8 is already high before GRPO starts (0.90 for seed 0 on this page;
# 0.825–0.93 over seeds 0–4 × three CPU kernel sets): the right sum is *reachable* for most prompts. What GRPO
# changes is which answer the policy prefers — greedy accuracy (+12.5 to +28 points over those 15 runs) and
# pass@1 (+11 to +21) rise far more than pass@8 (+3 to +11). RL with a verifier here mostly **sharpens** the
# distribution towards answers the model could already produce; it teaches little the model never samples
# (the same observation recent studies make on large reasoning models).
#
# That also explains why the *size* of the gain is not a property of GRPO alone. Over 30 toy runs (seeds 0–4 ×
# three CPU kernel sets × two warm-start stopping rules) the gain was 12.5–28 points, median about 20.5, and it
# is set mostly by the warm start: on the weakest start (0.6775) every variant we tried ended at 0.75–0.82 — a
# learning rate anywhere from $3.5\cdot10^{-5}$ to $3\cdot10^{-4}$, 60 rounds instead of 40, 48 prompts per
# round, groups of 8, temperature 0.7, no KL term, four inner steps, gradient clipping and warm-up (all in
# `book/benchmarks.md`). So the report's criterion is the *evidence* that GRPO improved the model — the exact
# McNemar p-value on the 400 paired held-out verdicts must be below $10^{-4}$ (the weakest run measured:
# 65 fixed, 15 broken, $p = 7\cdot10^{-9}$) — and the gain itself is reported, not gated.

# %% [markdown]
# ### What the pretraining bought / 预训练带来了什么
#
# The warm start fine-tunes the book LM, which already knows digits and how text continues, so it
# reaches the 60 % band in 145-185 steps of 64 problems (seeds 0-4). The same recipe from random
# weights — same architecture, data, optimiser and number of steps, printed above the plots — has
# barely begun to add (seed 0, 170 steps: 0.06 held-out accuracy against the book LM's 0.625, a gain of
# about 57 points). Without the pretrained start, a partial warm start in the 60 % band, and with it
# the whole GRPO experiment, would cost several times more steps.
#
# ### What dropping the critic saves: memory / 去掉评论家省下多少内存
#
# The book's own PPO-RLHF ([PPO / DPO chapter](04_ppo_dpo.ipynb)) does *not* train a second network as its
# critic: it puts a `Linear(d, 1)` value head on the policy's trunk, so policy and critic share weights,
# gradients and AdamW moments, and the critic costs $d + 1$ parameters. What it holds beyond GRPO is the
# frozen **reward model** (a copy of the LM with a small head) — and GRPO needs none because its reward is
# a program. Production PPO (TRL's `PPOTrainer`, InstructGPT, OpenRLHF) usually trains a *separate* value
# model, a second LM with a scalar head, because a shared trunk lets the value loss pull on the policy's
# features. `grpo.memory_setups` builds all three from the warm-start model, takes one real AdamW step in each
# (so gradients and moments are allocated) and adds up the bytes of the tensors actually held:

# %%
print(f"{'setup':<28} {'parameters':>11} {'gradients':>10} {'AdamW state':>12} {'total MB':>9} {'/ GRPO':>7}")
for name, part in res.memory_parts.items():
    print(f"{name:<28} {part['parameters'] / 2**20:>11.3f} {part['gradients'] / 2**20:>10.3f} "
          f"{part['optimizer'] / 2**20:>12.3f} {part['total'] / 2**20:>9.3f} "
          f"{part['total'] / res.memory['GRPO']:>7.2f}")
print(f"({res.n_params:,} parameters per model; formula for GRPO, 16 B per trained + 4 B per frozen parameter: "
      f"{20 * res.n_params / 2**20:.3f} MB)")

# %% [markdown]
# So against the book's own shared-trunk PPO, GRPO holds about 5/6 of the model state, and the sixth it
# saves is the reward model, not the critic: with a verifier as the reward, PPO with a value head would
# hold almost exactly what GRPO holds. Against PPO with a separate value model it holds half (the
# report's criterion checks that ratio). What the group baseline really buys at the book's scale is not
# memory but not having to *learn* a value function from one sparse reward per response; at production
# scale, where the critic is a second multi-billion-parameter network, it is memory and compute as well.
# Activations are not counted: GRPO's $G$ samples per prompt cost activation memory and sampling time that
# PPO's one sample does not.

# %% tags=["nbval-ignore-output"]
print(f"wall-clock (shared 2-core CPU, inflated by load): GRPO {res.grpo_s:.1f} s, SFT control {res.control_s:.1f} s")

# %% [markdown]
# ### Cross-check: TRL's GRPOTrainer on the same model / 交叉验证：在同一模型上运行 TRL 的 GRPOTrainer
#
# Rather than retyping TRL's formulas, we run its code. `grpo.trl_grpo_check` copies the SFT start to an HF
# `LlamaForCausalLM`, builds a real `trl.GRPOTrainer` around it with the book's verifier as its reward
# function and calls its own `_generate_and_score_completions`: TRL samples $G$ completions for 8 prompts,
# scores them and normalises the rewards in groups with its code; we apply `group_advantages` to the
# rewards TRL's reward call received. Then TRL's `_compute_loss` (`loss_type="grpo"`) runs on that batch,
# with the old log-probabilities perturbed so that part of the tokens is clipped, against our `grpo_loss`
# on the same token ids.

# %%
start = sft.arith_sft_model(res.task, dev, seed)  # the warm start (cached by config hash)
trl_out = grpo.trl_grpo_check(start, res.task, cfg, seed=seed)
assert trl_out["adv_err"] < 1e-5 and trl_out["loss_err"] < 1e-4, trl_out
print(f"max |ours - TRL| advantage = {trl_out['adv_err']:.1e} ({trl_out['zero_std_groups']:.0%} of TRL's groups "
      f"had zero std); GRPO loss: TRL {trl_out['loss_trl']:.6f}, ours {trl_out['loss_ours']:.6f} "
      f"({trl_out['clip_frac']:.0%} of tokens clipped)")

# %% [markdown]
# ### When does RL with a verifier pay? / 带验证器的强化学习什么时候划算？
#
# Here the control wins or ties: with correct labels for every training problem, supervised learning
# gets a dense, per-token signal ("the next digit is 7") at a lower cost per step (no sampling), while
# GRPO gets one scalar per response and learns nothing from groups that are all right or all wrong.
# GRPO's advantage is that it needs **no labels, only a checker**: it pays when answers are cheap to
# verify but expensive or impossible to demonstrate (proofs, code with tests, long reasoning chains
# whose intermediate steps nobody wrote down), when there are many correct answers and imitation of one
# of them is the wrong target, and to sharpen a model that already solves a task some of the time.

# %% [markdown]
# ## Results / 结果

# %% tags=["nbval-ignore-output"]
report = grpo.make_report(res, toy, str(dev), seed)
for name, value in report.metrics.items():  # trained numbers: they move with the seed and the CPU's kernels
    print(f"{name}: {value:.0f}" if float(value).is_integer() else f"{name}: {value:.4g}")

# %%
# NBVAL_CHECK_OUTPUT
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %% [markdown]
# ## Play: what the group advantage gives a right answer / 动手：组优势给正确答案多少推力
#
# A prompt the model solves with probability $p$: sample a group of $G$ binary rewards, normalise.
# A correct answer gets a large push when it is rare ($p$ small) and almost none when the model
# already gets it right; groups where all rewards agree give zero advantage.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_advantages(p: float = 0.3, G_: int = 8) -> None:
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(2000 * G_, generator=g) < p).float()
    adv = grpo.group_advantages(r, G_)
    right, wrong = adv[r == 1], adv[r == 0]
    zero = float((r.view(-1, G_).std(1) == 0).float().mean())
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist([right.numpy(), wrong.numpy()], bins=40, label=["correct", "wrong"])
    ax.set(title=f"p={p:.2f}, G={G_}: mean A(correct)={right.mean():.2f}, "
                 f"zero-signal groups={zero:.0%}", xlabel="advantage")
    ax.legend()
    plt.show()


widgets.interact(show_advantages, p=widgets.FloatSlider(value=0.3, min=0.05, max=0.95, step=0.05),
                 G_=widgets.IntSlider(value=8, min=2, max=32, description="G"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Scale and task.** A 2M-parameter model on 2-digit addition with a 1–4-token answer; DeepSeekMath and R1
#   train 7B–671B models on competition maths with chains of thought thousands of tokens long, with larger
#   groups, sampling with an inference engine (vLLM) while training with DeepSpeed or FSDP.
# - **Outcome reward only.** Our verifier scores the final answer. DeepSeekMath also tries *process*
#   supervision (a reward per reasoning step; {cite}`lightman2023verify`), which gives each step its own
#   advantage instead of one per response. Future work for this chapter: a multi-step task with a
#   scratchpad (`12+34=46;46+7=53`) and a step checker, comparing outcome with step-checked rewards.
# - **No reward model, no critic.** The reward is a program; PPO-RLHF's reward model and value head are
#   gone. With a learned reward model GRPO can be over-optimised like PPO.
# - **Normalisation.** We use the original per-group std and per-response token mean (`loss_type="grpo"` in
#   TRL; its default is now `"dapo"`, a token mean over the batch); Dr. GRPO drops both the std and the
#   length normalisation.
# - **Two inner steps, one clip range.** Production recipes vary the number of inner steps, use asymmetric
#   clip ranges (DAPO's $\varepsilon_{high} > \varepsilon_{low}$) and filter out zero-std groups before the update.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (`python run.py --module grpo --toy`, no SFT cache):** SFT warm start of the book LM + 40 GRPO rounds
#   of 32 prompts × 4, and 8 samples per held-out prompt before and after (pass@1 / pass@8): **67 s wall, 65 s CPU,
#   peak RSS 0.96 GB** on the 2-core CI CPU, measured with `/usr/bin/time -v` while other jobs ran (load average
#   1.4–2). It uses one torch thread (`grpo.THREADS`), so
#   the numbers do not depend on the number of cores. The page adds the more-SFT control, the from-scratch warm start and the
#   TRL cross-check (wall-clock of GRPO and of the control printed above). The control and the scratch start run in
#   a worker process on the second core while GRPO runs (`grpo.comparisons`): **the page executes in 75–79 s from
#   empty caches** (papermill, kernel start included, idle 2-core CPU, 2026-12-01), against 110 s with all of
#   it in one process.
# - **Full (`toy=False`):** 300 rounds of 64 prompts × $G$ = 8 — about 30× the toy's sampled tokens; a GPU run,
#   not yet measured (no GPU figures on the benchmarks page).
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - GRPO 对每个提示采样 $G$ 个回答，用组均值（提示价值 $V(q)$ 的蒙特卡洛估计）作基线，不需要价值网络。
#   · GRPO samples a group per prompt and uses the group mean, a Monte-Carlo estimate of $V(q)$, as the baseline.
# - 同一回答的所有词元共享一个优势；奖励全相同的组没有策略梯度信号，只剩 KL 项。
#   · Every token of a response shares one advantage; a group with equal rewards gives no policy-gradient signal.
# - 目标沿用 PPO 的裁剪概率比，KL 用 k3 估计量直接放进损失：无偏且逐样本非负。
#   · The objective keeps PPO's clipped ratio and puts a k3 KL estimate, unbiased and non-negative, into the loss.
# - 在这里 GRPO 主要是“锐化”：pass@8 几乎不变，贪心准确率与 pass@1 上升——它把已经能采样到的正确答案变成首选。
#   · Here GRPO sharpens: pass@8 barely moves while greedy accuracy and pass@1 rise — reachable answers become the preferred ones.
# - 可验证奖励由程序给出，没有奖励模型可被“钻空子”；只要有检查器、无需标注答案。
#   · A verifier is the reward: no reward model to over-optimise, and no labelled answers needed.
# - 与本书共享主干的 PPO 相比，GRPO 省下的约 1/6 内存来自奖励模型而非评论家；与独立价值模型的 PPO 相比省一半。
#   · Against the book's shared-trunk PPO, GRPO saves about a sixth (the reward model); against a separate critic, half.
# - 有标注时，同样步数的监督微调在这个任务上更好；强化学习在“易验证、难示范”的任务上才划算。
#   · With labels, more SFT wins on this task; RL with a checker pays where answers are easy to verify but hard to demonstrate.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `group_advantages(rewards, group_size)` for a float tensor `rewards (N,)` laid out
#    group after group: $(r_i - \bar r_g)/(s_g + 10^{-4})$ with the unbiased std $s_g$ of each group. Check it with
#    `llmcore.exercises.check_group_advantages(group_advantages)`. What does your function return for a group
#    whose rewards are all equal, and why must it not be `nan`?
# 2. Set `scale_rewards="none"` (Dr. GRPO) and `"batch"` in `GRPOConfig`. Which prompts get more weight with
#    the per-group std, and does accuracy change?
# 3. Set `beta = 0`. Does the KL grow without bound? Does accuracy suffer on this task, where the reward
#    cannot be hacked?
# 4. Replace k3 by k1 in `grpo_loss`. Plot the per-token KL estimate: how often is it negative?
# 5. Replace the group mean by the leave-one-out mean $\frac1{G-1}\sum_{j\ne i} r_j$ (RLOO). Show that the
#    advantages are the mean-centred ones times $G/(G-1)$, and say why that matters most for small $G$.
# 6. Make the reward sparse: drop the format bonus and require the answer reversed. How does the fraction of
#    zero-std groups evolve, and what does that do to learning?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. View the rewards as `(groups, G)`; `torch.std` is unbiased by default:
#
#    ```python
#    def group_advantages(rewards, group_size):
#        g = rewards.view(-1, group_size)
#        return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).reshape(-1)
#    ```
#
#    An all-equal group gives $0/(0 + 10^{-4}) = 0$: no push either way. Without the $\epsilon$ it would be
#    $0/0 = $ `nan`, and one `nan` in the loss poisons every parameter. The checker rejects the batch mean and
#    std, the biased (`unbiased=False`, NumPy's default) std, and a missing $\epsilon$.
# 2. Dividing by a small std (a prompt the model nearly always gets right, or nearly always wrong) enlarges
#    that group's advantages, so such prompts weigh more per sample; `"none"` weighs a prompt by its reward
#    spread instead; `"batch"` keeps the ranking within a group but one scale for all groups.
# 3. Without the penalty nothing pulls the policy back to the reference; with a checker that cannot be
#    fooled, the risk to watch is a loss of diversity (falling entropy), not reward hacking.
# 4. k1 $= \log\pi - \log\pi_\text{ref}$ is negative whenever the sampled token is more likely under the
#    reference than under the policy; near the reference that is a large share of the tokens.
# 5. $r_i - \frac1{G-1}\sum_{j\ne i}r_j = r_i - \frac{G\bar r - r_i}{G-1} = \frac{G}{G-1}(r_i - \bar r)$; after
#    dividing by the std the factor is a constant rescaling, but without the std (`"none"`) it enlarges
#    every step by $G/(G-1)$ — 4/3 for $G = 4$ — and the baseline no longer contains $r_i$ itself.
# 6. At the start almost every group is all wrong: zero std, no signal, so learning stalls until lucky
#    samples appear; this is why a warm start that already solves the task some of the time is needed.
# :::
#
# ## References / 参考文献
#
# DeepSeekMath (GRPO) {cite}`shao2024deepseekmath`; process supervision {cite}`lightman2023verify`; DeepSeek-R1 {cite}`deepseek2025r1`; PPO
# {cite}`schulman2017ppo_rlhf`; KL estimators {cite}`schulman2020klapprox`; Dr. GRPO {cite}`liu2025drgrpo`;
# TRL {cite}`vonwerra2020trl`; InstructGPT {cite}`ouyang2022instructgpt`. Full entries:
# [bibliography](../../book/bibliography.md).
