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
# “检查器”不给标准答案，用 GRPO 把留出集准确率提高 15 个百分点以上；并与“同样步数继续 SFT”的对照组比较，
# 讨论什么时候带验证器的强化学习才划算；最后验证我们的优势计算与 TRL 的公式一致，并实测省掉 critic
# 带来的显存节省。
#
# **Learning goals**
# - write GRPO's group-normalised advantage, clipped objective and k3 KL penalty as a few tensor lines;
# - fine-tune the pretrained book LM with a verifier only (no labels, no reward model) and watch
#   accuracy, reward, response length, KL and clipping over training;
# - compare with more supervised fine-tuning on labelled answers, and say when RL with a checker pays;
# - measure why GRPO needs no critic (model-state memory vs PPO-RLHF).
#
# **Prerequisites:** [PPO / DPO](03_ppo_dpo.ipynb) (clipped surrogate, KL to a reference);
# [Policy gradient & actor-critic](04_pg_ac.ipynb); [SFT](01_sft.ipynb) (the warm start); the book LM
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

from llmcore.alignment import grpo as G
from llmcore.alignment import sft, tasks
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed, threads=G.THREADS)  # one torch thread: see G.THREADS
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, G={group_size}, beta={beta}")

# %% [markdown]
# ## Theory
#
# PPO-RLHF {cite}`ouyang2022instructgpt` trains four networks: the policy, a frozen reference, a reward
# model and a **value model** (critic) that is as large as the policy and supplies the baseline for
# GAE. GRPO {cite}`shao2024deepseekmath` drops the critic. For a prompt $q$ it samples a group
# $o_1, \dots, o_G \sim \pi_{\theta_\text{old}}(\cdot \mid q)$, scores each with a reward $r_i$ and uses
# the group's own statistics as the baseline:
#
# $$
# \hat A_{i,t} = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G) + \epsilon}
# \qquad \text{for every token } t \text{ of } o_i .
# $$
#
# The objective keeps PPO's clipped importance ratio {cite}`schulman2017ppo_rlhf` and adds a KL penalty to
# the reference policy, estimated token by token with the **k3** estimator {cite}`schulman2020klapprox`:
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
# With $r = \pi_\text{ref}/\pi$ and samples from $\pi$: k1 $= -\log r$ is unbiased but often negative,
# k2 $= \tfrac12 (\log r)^2$ is biased with low variance, k3 $= (r - 1) - \log r$ is unbiased *and*
# non-negative (because $\mathbb E_\pi[r] = 1$). DeepSeek-R1 {cite}`deepseek2025r1` trains with
# **verifiable rewards**: a program checks the answer and its format, so there is no reward model to
# over-optimise either. Dr. GRPO {cite}`liu2025drgrpo` points out that dividing by the std and by
# $|o_i|$ biases the update (toward easy/hard prompts and toward long wrong answers); TRL
# {cite}`vonwerra2020trl` exposes the choice as `scale_rewards`.

# %% [markdown]
# ## The task and the verifier
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
# ## The implementation
#
# Four small functions carry the algorithm: the group advantage, the KL estimators, the loss and one
# round of sample → score → normalise → update.

# %%
show_source(G.group_advantages, G.kl_estimators, G.grpo_loss, G.grpo_round)

# %% [markdown]
# ### Cross-check: our advantages equal TRL's group-normalised formula
#
# TRL's `GRPOTrainer` (with `scale_rewards="group"`) computes the advantages inline in
# `_generate_and_score_completions`: `rewards - mean_grouped_rewards` divided by
# `nanstd(grouped) + 1e-4`. We evaluate those same lines, with TRL's own `nanstd`, on random rewards,
# and check the KL estimators against the exact KL of a categorical distribution.

# %%
from trl.trainer.utils import nanstd

gen = torch.Generator().manual_seed(seed)
rewards = torch.randint(0, 2, (12 * group_size,), generator=gen).float() + 0.1 * torch.rand(12 * group_size,
                                                                                           generator=gen)
mean_g = torch.nanmean(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size, dim=0)
std_g = nanstd(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size, dim=0)
trl_adv = (rewards - mean_g) / (std_g + 1e-4)
ours = G.group_advantages(rewards, group_size, "group")
err_adv = float((ours - trl_adv).abs().max())
assert err_adv < 1e-6, err_adv

p = torch.softmax(torch.randn(50, generator=gen), 0)
q = torch.softmax(torch.randn(50, generator=gen), 0)
exact_kl = float((p * (p / q).log()).sum())
x = torch.multinomial(p, 200_000, replacement=True, generator=gen)
est = {k: float(v.mean()) for k, v in G.kl_estimators(p[x].log(), q[x].log()).items()}
assert abs(est["k1"] - exact_kl) < 0.02 and abs(est["k3"] - exact_kl) < 0.02
print(f"max |ours - TRL| advantage = {err_adv:.1e}; KL(p||q) = {exact_kl:.4f}, "
      + ", ".join(f"{k} ≈ {v:.4f}" for k, v in est.items()))

# %% [markdown]
# ## The closed loop
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
#    answers, with as many sequences per step as GRPO samples and the same peak learning rate (held
#    constant).

# %%
cfg = dataclasses.replace(G.default_config(toy), group_size=group_size, beta=beta)
res = G.experiment(toy=toy, device=dev, seed=seed, cfg=cfg)
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
# $G$ responses get the same reward (all right or all wrong) have zero advantage and teach nothing — a
# fifth to a third of them here. And the learning rate is small ($7 \cdot 10^{-5}$, decayed linearly to 0 as in
# TRL's default schedule) for a reason: at $10^{-4}$ the greedy accuracy gains less and oscillates,
# at $3 \cdot 10^{-4}$ it collapses (seed 0: 0.62 → 0.33 in 40 rounds of 8 × 8); with a fixed number of
# samples per round, more distinct prompts (32 × $G$=4) beat bigger groups.
#
# ### What the pretraining bought
#
# The warm start fine-tunes the book LM, which already knows digits and how text continues, so it
# reaches the 60 % band in 145-185 steps of 64 problems (seeds 0-4). The same recipe from random
# weights — same architecture, data, optimiser and number of steps, printed above the plots — has
# barely begun to add (seed 0, 170 steps: 0.06 held-out accuracy against the book LM's 0.625, a gain of
# about 57 points). Without the pretrained start, a partial warm start in the 60 % band, and with it
# the whole GRPO experiment, would cost several times more steps.
#
# ### Why no critic is needed: memory
#
# PPO-RLHF holds the policy and a value model of the same size in training (weights, gradients and two
# AdamW moments each) plus a frozen reference and a frozen reward model. GRPO holds the trained policy
# and the frozen reference. Counted from the tensors actually allocated for this model:

# %%
n = res.n_params
print(f"{'method':<6} {'models held':<48} {'model-state MB':>14}")
print(f"{'GRPO':<6} {'policy (trained) + reference (frozen)':<48} {res.memory['GRPO'] / 2**20:>14.3f}")
print(f"{'PPO':<6} {'policy + value (trained) + reference + reward':<48} {res.memory['PPO'] / 2**20:>14.3f}")
print(f"ratio GRPO/PPO = {res.memory['GRPO'] / res.memory['PPO']:.2f}  ({n:,} parameters per model)")

# %% tags=["nbval-ignore-output"]
print(f"wall-clock (shared 2-core CPU, inflated by load): GRPO {res.grpo_s:.1f} s, SFT control {res.control_s:.1f} s")

# %% [markdown]
# ### When does RL with a verifier pay?
#
# Here the control wins or ties: with correct labels for every training problem, supervised learning
# gets a dense, per-token signal ("the next digit is 7") at a lower cost per step (no sampling), while
# GRPO gets one scalar per response and learns nothing from groups that are all right or all wrong.
# GRPO's advantage is that it needs **no labels, only a checker**: it pays when answers are cheap to
# verify but expensive or impossible to demonstrate (proofs, code with tests, long reasoning chains
# whose intermediate steps nobody wrote down), when there are many correct answers and imitation of one
# of them is the wrong target, and to sharpen a model that already solves a task some of the time.

# %% [markdown]
# ## Results

# %% tags=["nbval-ignore-output"]
report = G.make_report(res, toy, str(dev), seed)
print(report.summary())  # trained numbers: they move with the seed and the CPU's kernels

# %%
# NBVAL_CHECK_OUTPUT
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()
assert res.acc_grpo - res.acc_start >= 0.15

# %% [markdown]
# ## Play: what the group advantage gives a right answer
#
# A prompt the model solves with probability $p$: sample a group of $G$ binary rewards, normalise.
# A correct answer gets a large push when it is rare ($p$ small) and almost none when the model
# already gets it right; groups where all rewards agree give zero advantage.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_advantages(p: float = 0.3, G_: int = 8) -> None:
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(2000 * G_, generator=g) < p).float()
    adv = G.group_advantages(r, G_)
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
# ## Exercises
#
# 1. Set `scale_rewards="none"` (Dr. GRPO) and `"batch"` in `GRPOConfig`. Which prompts get more
#    weight with the per-group std, and does accuracy change?
# 2. Set `beta = 0`. Does the KL grow without bound? Does accuracy suffer on this task, where the reward
#    cannot be hacked?
# 3. Replace k3 by k1 in `grpo_loss`. Plot the per-token KL estimate: how often is it negative?
# 4. Give the control the same *wall-clock* as GRPO instead of the same number of steps.
# 5. Make the reward sparse: drop the format bonus and require the answer reversed. How does the
#    fraction of zero-std groups evolve, and what does that do to learning?
#
# ## References
#
# DeepSeekMath (GRPO) {cite}`shao2024deepseekmath`; DeepSeek-R1 {cite}`deepseek2025r1`; PPO
# {cite}`schulman2017ppo_rlhf`; KL estimators {cite}`schulman2020klapprox`; Dr. GRPO {cite}`liu2025drgrpo`;
# TRL {cite}`vonwerra2020trl`; InstructGPT {cite}`ouyang2022instructgpt`. Full entries:
# [bibliography](../../book/bibliography.md).
