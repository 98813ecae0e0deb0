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
# # PPO / DPO / PPO 与 DPO 偏好对齐
#
# **中文摘要：** 偏好对齐让模型的输出更符合“人类更喜欢哪一个”。本章从预训练的书中模型 (book LM)
# 出发：先在两位数加法上做 SFT（两种回答风格各半），再用一个 `llmcore` 能对任意回答计算的“真实奖励”
# （答对得 1 分，回答简洁再加 0.5 分）代替人类判断：它给 SFT 模型的采样回答两两标注偏好，也在留出的
# 提示上衡量对齐到底得到了什么——并且把“答对”和“风格”分开统计，免得风格上的胜利掩盖了正确率的下降。
# 我们在冻结的 SFT 特征（`<eos>` 隐状态与回答的对数似然）上训练 Bradley–Terry 奖励模型（留出配对
# 准确率 ≥ 90%），用策略、参考模型、价值头、逐 token KL 惩罚、GAE 与裁剪损失搭建 PPO-RLHF，观察真实
# 奖励上升而 KL 有界；再让 PPO 在没有 KL 惩罚的情况下优化一个较弱的代理奖励（只读 `<eos>` 隐状态、
# 看不出答案对错），出现奖励过优化——代理奖励上升而真实奖励下降（Gao 等人的现象）。DPO（及 IPO 变体）
# 把奖励模型“藏进”策略里：我们的损失与 TRL `DPOTrainer` 在同一模型、同一批数据上一致（1e-5），DPO 在
# 至少 70% 的留出提示上胜过 SFT，在提高简洁风格的同时正确率不降（容差 2 个百分点）。最后比较 SFT、PPO、
# DPO，并给出预训练起点相对随机初始化（同样步数）的收益。
#
# **Learning goals**
# - write the Bradley–Terry preference model and see DPO as a reward model hidden in the policy;
# - implement DPO and IPO from sequence log-probabilities and match TRL's `DPOTrainer` exactly;
# - read DPO's training curves: implicit reward margin, chosen / rejected log-probabilities;
# - evaluate alignment by its parts: a win on a mixed reward can hide a loss of correctness;
# - train a Bradley–Terry reward model and run PPO-RLHF (policy, reference, value head, per-token KL,
#   GAE, clipped losses); watch reward over-optimisation appear when a flawed proxy is optimised without KL;
# - derive the optimum of the KL-regularised objective, and tell online alignment (PPO: the policy writes its
#   own data) from offline alignment (DPO: fixed pairs) by what each can and cannot fix.
#
# **Prerequisites:** [Supervised fine-tuning](01_sft.ipynb); [Policy gradient & actor-critic](03_pg_ac.ipynb)
# (PPO's clipped surrogate); [GAE](../01_foundation_rl/03_gae.ipynb); the book LM of
# [the Transformer chapter](../02_architecture/01_transformer.ipynb) (the pretrained start).

# %% tags=["parameters"]
toy = True  # True: the 2M-parameter book LM, 500 SFT steps, 2x25 PPO iterations, 60 DPO steps (CPU); False: larger
device = "auto"
seed = 0
beta = 0.5  # DPO's β: the strength of the implicit KL constraint to the SFT reference

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import copy
import dataclasses
import warnings

import datasets
import matplotlib.pyplot as plt
import numpy as np
import torch

from llmcore.alignment import ppo_dpo, sft, tasks
from llmcore.core import jobs, pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed, threads=ppo_dpo.THREADS)  # one torch thread: see ppo_dpo.THREADS
use_style()
# the TRL cross-check below builds a 16-pair dataset twice: no per-call `datasets` bars, and no deprecation
# warnings that TRL's own calls into transformers raise (they say nothing about our code or results)
datasets.disable_progress_bars()
warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
print(f"device={dev}, toy={toy}, seed={seed}, beta={beta}")

# %% [markdown]
# ## Theory / 理论
#
# ### The RLHF pipeline / RLHF 流程
#
# **RLHF** {cite}`ziegler2019finetuning,ouyang2022instructgpt` has three stages: (1) supervised fine-tuning on
# demonstrations; (2) a **reward model** $r_\phi(x, y)$ fitted to comparisons $y_w \succ y_l$ of responses the
# SFT model wrote; (3) **reinforcement learning** that maximises the reward model's score while a KL penalty
# keeps the policy close to the SFT model (the *reference*). DPO replaces stages 2–3 by one supervised loss on
# the same comparisons. The diagram shows who produces which data.

# %%
fig, ax = plt.subplots(figsize=(13, 4.2))
ppo_dpo.plot_rlhf_pipeline(ax)
plt.show()

# %% [markdown]
# ### Bradley–Terry: a reward from comparisons / Bradley–Terry：从比较中学奖励
#
# People compare more reliably than they score. Bradley–Terry {cite}`bradley1952rank` assumes each response
# has a latent utility $r(x,y)$ and that a comparison is won with probability
#
# $$
# P(y_w \succ y_l \mid x) = \sigma\big(r(x, y_w) - r(x, y_l)\big) = \frac{e^{r(x,y_w)}}{e^{r(x,y_w)} + e^{r(x,y_l)}}
# $$
#
# (it is what you get if each utility carries independent Gumbel noise and the larger noisy utility wins).
# Maximum likelihood over labelled pairs gives the reward-model loss — logistic regression on the score
# *difference*:
#
# $$
# \mathcal L_\text{RM}(\phi) = -\mathbb E_{(x, y_w, y_l)} \log \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big).
# $$
#
# Only differences enter, so $r_\phi$ is identified up to a constant per prompt; its scale is set by how
# deterministic the labels are. That is why the chapter standardises the score before RL: a KL coefficient
# $\beta$ only means something relative to the reward's scale.
#
# ### The KL-regularised objective and its optimum / KL 正则化目标及其最优解
#
# Stage 3 maximises, for each prompt $x$,
#
# $$
# J(\pi) = \mathbb E_{y \sim \pi(\cdot\mid x)}\big[r(x, y)\big] - \beta\, \mathrm{KL}\big(\pi(\cdot\mid x) \,\|\, \pi_\text{ref}(\cdot\mid x)\big).
# $$
#
# Write $Z(x) = \sum_y \pi_\text{ref}(y\mid x)\, e^{r(x,y)/\beta}$ and
# $\pi^*(y\mid x) = \pi_\text{ref}(y\mid x)\, e^{r(x,y)/\beta} / Z(x)$. Then $r = \beta\log\frac{\pi^*}{\pi_\text{ref}} + \beta\log Z$,
# and substituting,
#
# $$
# J(\pi) = \mathbb E_{y\sim\pi}\Big[\beta \log\frac{\pi^*(y|x)}{\pi_\text{ref}(y|x)} + \beta\log Z(x) - \beta\log\frac{\pi(y|x)}{\pi_\text{ref}(y|x)}\Big]
# = \beta \log Z(x) - \beta\,\mathrm{KL}\big(\pi \,\|\, \pi^*\big).
# $$
#
# So $J$ is maximised exactly at $\pi = \pi^*$: the aligned policy is the reference **reweighted** by
# $e^{r/\beta}$. Small $\beta$ lets the reward dominate (and its errors with it); large $\beta$ stays near the
# reference. 最优策略是参考策略按 $e^{r/\beta}$ 重新加权的结果：$\beta$ 越小，奖励（以及奖励模型的错误）影响越大。
#
# ### PPO on the token-level MDP / 词元级 MDP 上的 PPO
#
# PPO {cite}`schulman2017ppo_rlhf` optimises $J$ by sampling. The response is generated token by token — the
# token-level MDP of the [overview](../01_foundation_rl/00_overview.ipynb): state = prompt + prefix, action =
# next token. Since $\log\frac{\pi(y|x)}{\pi_\text{ref}(y|x)} = \sum_t \log\frac{\pi(y_t|\cdot)}{\pi_\text{ref}(y_t|\cdot)}$
# and $\mathrm{KL}(\pi\|\pi_\text{ref}) = \mathbb E_{y\sim\pi}\log\frac{\pi(y|x)}{\pi_\text{ref}(y|x)}$, the KL term splits
# into a per-token reward, and the RM score arrives at the last token:
#
# $$
# r_t = -\beta \log\frac{\pi(y_t\mid x, y_{<t})}{\pi_\text{ref}(y_t\mid x, y_{<t})} + [\,t = T\,]\; r_\phi(x, y).
# $$
#
# A value head $V(x, y_{<t})$ on the policy's trunk, [GAE](../01_foundation_rl/03_gae.ipynb) ($\gamma = 1$) turns
# these rewards into advantages $\hat A_t$, and the losses are PPO's clipped surrogate and a clipped value loss
# ($\rho_t = \pi_\theta(y_t|\cdot)/\pi_{\theta_\text{old}}(y_t|\cdot)$):
#
# $$
# \mathcal L^\text{clip} = -\mathbb E_t \min\big(\rho_t \hat A_t, \operatorname{clip}(\rho_t, 1 \pm \varepsilon) \hat A_t\big),
# \qquad
# \mathcal L^V = \tfrac12 \mathbb E_t \max\big((V_t - \hat R_t)^2,\, (V^\text{old}_t + \operatorname{clip}(V_t - V^\text{old}_t, \pm\varepsilon) - \hat R_t)^2\big).
# $$
#
# ### DPO: the reward model hidden in the policy / DPO：藏在策略里的奖励模型
#
# **DPO** {cite}`rafailov2023dpo` inverts the optimum: any policy $\pi_\theta$ *defines* a reward
# $r_\theta(x, y) = \beta \log\frac{\pi_\theta(y\mid x)}{\pi_\text{ref}(y\mid x)} + \beta\log Z(x)$ for which it is
# optimal. Put that reward into Bradley–Terry: $Z(x)$ is the same for both responses of a pair and cancels,
#
# $$
# \mathcal L_\text{DPO}(\theta) = -\mathbb E \log\sigma\Big(\beta \log\frac{\pi_\theta(y_w\mid x)}{\pi_\text{ref}(y_w\mid x)}
# - \beta \log\frac{\pi_\theta(y_l\mid x)}{\pi_\text{ref}(y_l\mid x)}\Big),
# $$
#
# so fitting the reward model *is* training the policy. $\hat r_\theta = \beta\log\frac{\pi_\theta}{\pi_\text{ref}}$ is
# DPO's **implicit reward**. Its gradient shows what it does:
#
# $$
# \nabla_\theta \mathcal L_\text{DPO} = -\beta\, \mathbb E\Big[\sigma\big(\hat r_\theta(x, y_l) - \hat r_\theta(x, y_w)\big)
# \big(\nabla_\theta\log\pi_\theta(y_w|x) - \nabla_\theta\log\pi_\theta(y_l|x)\big)\Big]:
# $$
#
# push the chosen response up and the rejected one down, weighted by how wrongly the implicit reward still
# orders the pair. Nothing in it fixes where the probability taken from $y_l$ goes — only the *difference*
# is constrained, so the chosen log-probability can fall too (seen below). **IPO** {cite}`azar2024ipo`
# replaces the log-sigmoid, which keeps pushing the margin to infinity on deterministic preferences, by a
# squared loss that targets the margin $1/(2\beta)$.
#
# ### Online vs offline alignment / 在线对齐与离线对齐
#
# The two methods differ in **who generates the data they learn from**:
#
# | | PPO-RLHF (online) | DPO (offline) |
# |---|---|---|
# | responses | sampled from the *current* policy $\pi_\theta$, fresh every iteration | sampled once from $\pi_\text{SFT}$ (or any other source), fixed |
# | labels | the reward model scores every new response | the preference labels of the fixed pairs |
# | models in memory while training | policy (+ value head), reference, reward model | policy, reference |
#
# **What online can fix that offline cannot.** PPO sees its own new behaviour: if the policy drifts to a
# response the SFT model rarely wrote, that response is sampled, scored and corrected. DPO only ever sees the
# pairs; it raises $\log\pi_\theta(y_w) - \log\pi_\theta(y_l)$ on them and gets *no feedback* on whatever the
# moved probability now prefers, so it can only reweight behaviour that the pairs cover, and errors that
# never appear in a pair are never corrected.
#
# **What online cannot fix.** Its only judge is the reward model, trained on SFT samples. Scoring the
# policy's new, off-distribution responses is exactly where a learned reward is least reliable, and the
# optimiser actively searches for its mistakes: reward **over-optimisation** {cite}`gao2023overoptimization`,
# shown below. The KL penalty is the price that keeps the policy where the reward model is right. Offline
# DPO cannot exploit a reward model (it has none), and is cheaper: no sampling in the loop, no RM, two models.
# Production systems mix the two — iterate DPO on fresh samples from the current policy, labelled by a reward
# model (iterative or "online" DPO).
#
# 在线（PPO）：策略每轮自己生成回答，由奖励模型打分，能纠正自己新出现的错误，但唯一的裁判是奖励模型，
# 策略会主动寻找它的漏洞（奖励过优化），因此需要 KL 惩罚。离线（DPO）：只从 SFT 模型事先生成的固定偏好对中学习，
# 不需要奖励模型和采样，更便宜，但无法得到关于自己新行为的反馈，只能在偏好对覆盖的范围内重新加权。

# %% [markdown]
# ## The setting: a true reward in place of human judgement / 设定：用真实奖励代替人类判断
#
# Two-digit addition again. The policy starts from the **book LM** (a 2M-parameter LLaMA pretrained on the
# book's corpus) fine-tuned for 500 steps on SFT data that answers in two styles: terse `"42"` and wordier
# `"42 ok"` (half each). The **true reward** is $r^*(x, y) = \mathbb 1[\text{correct}] + 0.5\cdot\mathbb 1[\text{terse}]$:
# a correct terse answer scores 1.5, a correct wordy one 1.0, a wrong terse one 0.5. It is computed by a
# program, so it can label as many comparisons as we like *and* measure what alignment really achieved
# on held-out prompts. It mixes two things, so we also report them apart: the **correct rate** (the sum
# is right, either style) and the **terse rate** (the preferred format, right or wrong).

# %%
show_source(ppo_dpo.true_reward, tasks.check_arith)

# %% [markdown]
# ## The implementation / 实现
#
# The preference data come first. `make_pairs` samples $k$ responses per prompt from a model, scores them with
# the true reward and keeps the best and the worst as (chosen, rejected). Called once with the SFT model, it
# produces the *fixed* data set of both the reward model and DPO: this is the offline step.

# %%
show_source(ppo_dpo.make_pairs)

# %% [markdown]
# The two preference losses are a few lines each and share their shape: a log-sigmoid of a difference. The
# reward model's difference is of scores; DPO's is of log-ratios to the reference, scaled by $\beta$.

# %%
show_source(ppo_dpo.bradley_terry_loss, ppo_dpo.dpo_loss)

# %% [markdown]
# DPO needs only the summed log-probability of each response under the policy and under the frozen
# reference — one teacher-forced forward pass each. Because the pairs are fixed, `train_dpo` computes the
# reference's log-probabilities once, before the first step; nothing is sampled while it trains.

# %%
show_source(ppo_dpo.sequence_logprobs, ppo_dpo.train_dpo)

# %% [markdown]
# PPO's two clipped losses work token by token on the response mask; the ratio $\rho_t$ compares the policy
# being optimised with the one that sampled the batch.

# %%
show_source(ppo_dpo.ppo_policy_loss, ppo_dpo.ppo_value_loss)

# %% [markdown]
# ## Closed loop 1: SFT → reward model → PPO-RLHF / 闭环一：SFT → 奖励模型 → PPO-RLHF
#
# 1. **SFT**: the book LM fine-tuned on both styles for 500 steps of 32 problems (seed 0: greedy held-out
#    accuracy 0.77; sampled, it answers wordily a third of the time, so the true reward has room to grow).
#    For seed 0 this warm start ships with the package (`llmcore/data/arith_sft`, HF layout), like the book
#    LM: its training is 42 s of CPU that would not fit this page's budget beside the closed loops. The
#    recipe `python -m llmcore.alignment.ppo_dpo` remakes it, bit for bit on the CPU that made it, and the
#    unit tests re-run its first steps against the logged losses. Any other seed trains it here.
# 2. **Pairs:** for ~1000 training prompts sample 4 responses from the SFT model (T=1), score them with
#    the true reward, keep the best as *chosen* and the worst as *rejected* (ties dropped). Held-out
#    pairs come from the 400 held-out prompts.
# 3. **Reward model:** a Bradley–Terry head on features of the *frozen* SFT model: the hidden state at the
#    response's `<eos>` (the usual read-out) and the response's log-likelihood (sum and minimum over its
#    tokens). Why not fine-tune the trunk, as production RMs do: at this budget a fine-tuned `<eos>`
#    read-out learns the style in a few dozen steps but not the sums (seed 0: held-out accuracy 0.88 after
#    100 steps with correct-vs-wrong pairs at 0.55; 0.90 after 200 steps of the upper half, those pairs at
#    0.68); the SFT model already knows the sums, and its likelihood of an answer is where that knowledge
#    can be read (this RM: about 0.93, trained in seconds). Its score is standardised (mean 0, std 1 on
#    the training responses) so that the KL coefficient below means the same thing on every seed.
# 4. **PPO-RLHF:** 64 prompts per iteration, one sampled response each; per-token reward
#    $-\beta\log(\pi/\pi_\text{ref})$ plus the RM score on the last token; a value head on the policy's
#    trunk; GAE ($\gamma = 1, \lambda = 0.95$, the RL chapter's `compute_gae`); two clipped epochs per batch;
#    KL penalty $\beta = 0.1$.
# 5. **Over-optimisation:** the same PPO without the KL penalty against a *weaker proxy*, the `<eos>`
#    read-out alone (no likelihood features): it ranks the styles perfectly and correct-vs-wrong pairs
#    barely above chance. This run takes twice the step (`overopt_lr` = 2e-4) so that the policy drifts far
#    within the same 25 iterations (at 1e-4 some seeds had hardly left the reference).

# %%
show_source(ppo_dpo.RewardModel, ppo_dpo.ppo_rlhf)

# %%
cfg = ppo_dpo.DPOConfig(beta=beta)
if not toy:
    cfg = dataclasses.replace(cfg, steps=90, batch_pairs=64, n_pair_prompts=4096, n_eval_prompts=400)
# Closed loop 2 (DPO) and the warm-start comparison do not depend on this loop: they run in a worker process
# on the second core meanwhile. Each job seeds itself, so the numbers equal those of a run one after another.
dpo_job = jobs.background(ppo_dpo.dpo_with_comparison, toy, dev, seed, cfg, parallel=dev.type == "cpu")
rl = ppo_dpo.rlhf_experiment(toy=toy, device=dev, seed=seed)
print(f"reward model: {rl.n_pairs} training pairs, pair accuracy train {rl.rm_acc_train:.3f}, "
      f"held-out {rl.rm_acc_heldout:.3f} (correctness-only pairs {rl.rm_acc_kinds['correctness']:.3f}, "
      f"style-only {rl.rm_acc_kinds['style']:.3f})")
print(f"read-out-only RM: held-out {rl.weak_acc_heldout:.3f} (correctness-only pairs "
      f"{rl.weak_acc_kinds['correctness']:.3f}, style-only {rl.weak_acc_kinds['style']:.3f})")
print(f"held-out true reward: SFT {rl.sft_heldout:.3f}, PPO (KL on) {rl.ppo_heldout:.3f}, "
      f"PPO (weak RM, KL off) {rl.nokl_heldout:.3f}")

# %%
fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
axes[0].plot(rl.rm_losses)
axes[0].axhline(np.log(2), color="k", ls=":", lw=0.8)
axes[0].set(title=f"RM Bradley–Terry loss (held-out acc {rl.rm_acc_heldout:.2f})", xlabel="step")
for r, name, ls in [(rl.ppo, "RM, KL on (β=0.1)", "-"), (rl.ppo_nokl, "weak RM, KL off", "--")]:
    hh = r.history
    x = np.arange(5, len(hh["true_reward"]) + 1)
    axes[1].plot(x, ppo_dpo.smooth(hh["true_reward"]), ls, label=f"true, {name}")
    axes[1].plot(x, ppo_dpo.smooth(hh["proxy_reward"]), ls, alpha=0.6, label=f"proxy (RM), {name}")
    axes[2].plot(hh["kl"], ls, label=name)
    axes[3].plot(hh["clip_frac"], ls, label=name)
    axes[4].plot(hh["entropy"], ls, label=name)
axes[1].set(title="reward (5-iteration means; proxies on their own scales)", xlabel="PPO iteration")
axes[1].legend(fontsize=7)
axes[2].set(title="KL to reference (per sequence)", xlabel="PPO iteration")
axes[3].set(title="clipped-token fraction", xlabel="PPO iteration")
axes[4].set(title="policy entropy (per token)", xlabel="PPO iteration")
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# With the KL penalty the true reward rises and the KL stays below a nat or so: the policy drops the wordy
# style, and the likelihood features keep it from trading correctness for it. Against the weaker proxy
# with no KL penalty the policy follows the reward model wherever it leads: the **proxy** reward climbs
# while the **true** reward, after an early rise, falls and the KL runs to several nats -- that proxy
# learned "terse is good" but not "the sum is right", and nothing holds the policy near the responses the
# proxy was fitted on. This is the over-optimisation of Gao et al. {cite}`gao2023overoptimization`: every
# learned reward is wrong somewhere, and the KL price is what keeps the policy where it is right.

# %% [markdown]
# ## Closed loop 2: SFT → preference pairs → DPO / 闭环二：SFT → 偏好对 → DPO
#
# 1. **SFT** with both styles as above (the same warm start).
# 2. **Pairs:** built the same way (best-of-4 vs worst-of-4 by the true reward); no reward model.
# 3. **DPO** from the SFT weights, the SFT model frozen as the reference.
# 4. **Evaluate** on 200 held-out prompts: 8 sampled responses each from SFT and from DPO, mean true
#    reward per prompt; DPO "beats" SFT on a prompt when its mean is higher. Because a win on the mixed
#    reward can be bought with style alone (an earlier version of this chapter won 79% of the prompts
#    while greedy correctness fell from 0.905 to 0.835), correctness and style are checked apart: DPO must
#    remove at least half of the SFT model's wordy answers and may lose at most 2 points of correctness,
#    sampled or greedy.

# %%
res, ws = dpo_job.result()  # started beside PPO-RLHF above: ppo_dpo.dpo_experiment, then the comparison
win = float(np.mean(res.dpo_prompt_reward > res.sft_prompt_reward))
print(f"{res.n_pairs} preference pairs; DPO beats SFT on {win:.1%} of held-out prompts")
for key in ("correct", "terse"):
    print(f"  {key:>7} rate (sampled): SFT {res.sft_sampled[key].mean():.3f} -> DPO {res.dpo_sampled[key].mean():.3f}; "
          f"greedy: SFT {res.sft_stats[key]:.3f} -> DPO {res.dpo_stats[key]:.3f}")

# %%
h = res.history
steps = np.arange(1, len(h["loss"]) + 1)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
axes[0].plot(steps, h["loss"], label="DPO loss")
axes[0].plot(steps, h["reward_acc"], label="implicit-reward accuracy")
axes[0].axhline(np.log(2), color="k", ls=":", lw=0.8)
axes[0].set(xlabel="step", title="loss (log 2 at the start) and pair accuracy")
axes[0].legend(fontsize=8)
axes[1].plot(steps, h["margin"])
axes[1].set(xlabel="step", title=r"implicit reward margin $\beta(\Delta_w - \Delta_l)$")
axes[2].plot(steps, h["logp_chosen"], label="chosen")
axes[2].plot(steps, h["logp_rejected"], label="rejected")
axes[2].set(xlabel="step", title=r"$\log\pi_\theta(y\mid x)$ of the batch's pairs")
axes[2].legend(fontsize=8)
fig.tight_layout()
plt.show()

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
jit = np.random.default_rng(0).normal(0, 0.01, (2, len(res.sft_prompt_reward)))
axes[0].scatter(res.sft_prompt_reward + jit[0], res.dpo_prompt_reward + jit[1], s=10, alpha=0.5)
axes[0].plot([0, 1.5], [0, 1.5], "k--", lw=0.8)
axes[0].set(xlabel="SFT: mean true reward", ylabel="DPO: mean true reward",
            title=f"held-out prompts: DPO above the diagonal on {win:.0%}")
x = np.arange(2)
for i, (name, st) in enumerate([("SFT", res.sft_sampled), ("DPO", res.dpo_sampled)]):
    axes[1].bar(x + 0.35 * i, [st["correct"].mean(), st["terse"].mean()], 0.35, label=name)
axes[1].set(xticks=x + 0.175, xticklabels=["correct rate", "terse rate"], ylim=(0, 1.05),
            title="the two parts of the true reward (sampled)")
axes[1].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Style or correctness? / 风格还是正确性？
#
# The true reward adds 1 for a right sum and 0.5 for the terse style, so "DPO beats SFT on most prompts" can
# mean two very different things. The cell below reads the chapter's own numbers and says which one happened.
# It matters because it has gone both ways: an earlier version of this chapter (a 120k-parameter model trained
# from scratch, DPO learning rate $2\times10^{-4}$) won 79% of the prompts while greedy correctness fell from 0.905 to 0.835 — **style won over
# correctness**: the policy learned the easy, visible preference (drop " ok") and paid for it with wrong sums,
# and the mixed reward still called that a win. The pairs carry both signals, but unequally: every
# best-of-4 vs worst-of-4 pair whose two answers differ in style teaches terseness, while only pairs with one
# right and one wrong sum teach correctness, and the style difference is the same short suffix (" ok") in every
# such pair, which the log-ratio moves easily. Today's book-LM start knows the sums better and DPO takes small
# steps ($2\times10^{-5}$, β = 0.5), so the policy stays closer to the reference; and the criteria below require both: at least half of the wordy answers removed, and at most
# 2 points of correctness lost.
#
# DPO 的胜率可以只靠风格取得：本章早期版本（从零训练的 12 万参数模型、学习率 $2\times10^{-4}$）在 79% 的提示上胜出，贪心正确率却从 0.905
# 降到 0.835——风格压倒了正确性。因此本章把正确率与简洁率分开检验。

# %%
d_correct = res.dpo_sampled["correct"].mean() - res.sft_sampled["correct"].mean()
d_terse = res.dpo_sampled["terse"].mean() - res.sft_sampled["terse"].mean()
d_greedy = res.dpo_stats["correct"] - res.sft_stats["correct"]
print(f"DPO vs SFT on {len(res.sft_prompt_reward)} held-out prompts: wins {win:.0%}; terse rate {d_terse:+.3f}, "
      f"correct rate {d_correct:+.3f} (sampled), greedy accuracy {d_greedy:+.3f}")
if min(d_correct, d_greedy) < -ppo_dpo.CORRECT_BOUND:
    print("-> style won over correctness: the win is bought with terseness while the sums got worse")
elif max(d_correct, d_greedy) <= ppo_dpo.CORRECT_BOUND:
    print("-> the win is style: correctness is unchanged within 2 points")
else:
    print(f"-> both parts improved: terseness {'more' if d_terse > d_correct else 'less'} than correctness "
          "(sampled rates); the win is not style alone")

# %% [markdown]
# The rejected log-probability falls fast; the chosen one moves much less and can fall too. The loss only sees
# their difference, so probability mass can leave the chosen responses too (it goes to responses that
# are in neither set); this is a known property of DPO, and the reason β and the number of steps matter.
#
# ### Cross-check: our loss equals TRL's `DPOTrainer` / 交叉验证：与 TRL 的 `DPOTrainer` 一致
#
# The trained policy and the SFT reference are copied into Hugging Face `LlamaForCausalLM`s; 16 pairs go
# to TRL {cite}`vonwerra2020trl` as text, which TRL tokenizes (with the book tokenizer's own
# `tokenizer.json` plus one pre-tokenizer step that isolates digits, as `tasks.encode` does, so the ids
# are ours), collates and scores with its own forward passes in `DPOTrainer._compute_loss`. TRL's default
# `bf16=True` runs the *reference* under bf16 autocast, so the comparison sets `bf16=False`.

# %%
for lt, err in res.trl_err.items():
    print(f"{lt:>7}: |ours - TRL| = {err:.1e}")
    assert err < 1e-5, (lt, err)

# %% [markdown]
# ### SFT vs PPO vs DPO / SFT、PPO 与 DPO 的比较
#
# True reward from sampled responses on held-out prompts, the sequence-level KL to the SFT reference
# (Monte-Carlo, $y \sim \pi$), the models each method keeps in memory while it trains, and their
# model-state bytes (weights, plus gradients and two AdamW moments for the trained ones; fp32).

# %%
n = rl.n_params
w = 4 * n  # bytes of one model's fp32 weights
vh = 4 * (rl.ppo.policy.config.d_model + 1)  # value head
table = [("SFT", rl.sft_heldout, 0.0, "policy", 4 * w),
         ("PPO (KL on)", rl.ppo_heldout, rl.ppo_kl_heldout, "policy+value head, reference, RM", 4 * (w + vh) + 2 * w),
         ("PPO (weak, no KL)", rl.nokl_heldout, rl.nokl_kl_heldout, "policy+value head, reference, RM", 4 * (w + vh) + 2 * w),
         ("DPO", float(res.dpo_prompt_reward.mean()), res.kl_dpo, "policy, reference", 4 * w + w)]
print(f"{'method':<17} {'true reward':>11} {'KL to SFT':>9}  {'models held':<34} {'model-state MB':>14}")
for name, r, kl, models, mem in table:
    print(f"{name:<17} {r:>11.3f} {kl:>9.3f}  {models:<34} {mem / 2**20:>14.3f}")

# %% tags=["nbval-ignore-output"]
print("wall-clock on the shared 2-core CPU (inflated by other jobs' load):")
print(f"  reward model {rl.rm_s:.1f} s; PPO (KL on) {rl.ppo.wall_s:.1f} s, PPO (weak RM, KL off) {rl.ppo_nokl.wall_s:.1f} s "
      f"for {rl.ppo.cfg.iters} iterations; DPO {res.dpo_s:.1f} s for {cfg.steps} steps")

# %% [markdown]
# ### The pretrained start against a random one, at equal steps / 同样步数下：预训练起点与随机起点
#
# The same warm start from random weights (same architecture, same 500 steps, same data): how well it
# adds, and what true reward PPO and DPO would start from. For seed 0 both warm starts ship with the package
# (the same recipe, `init="scratch"`); the worker process above evaluated them.

# %% tags=["nbval-ignore-output"]
for init, st in ws.items():
    print(f"{init:>8}: greedy held-out accuracy {st['correct']:.3f}, terse {st['terse']:.3f}, "
          f"sampled true reward {st['reward']:.3f}")
print(f"gain of the pretrained start: {ws['book_lm']['correct'] - ws['scratch']['correct']:+.3f} accuracy, "
      f"{ws['book_lm']['reward'] - ws['scratch']['reward']:+.3f} true reward")

# %% [markdown]
# ## Results / 结果

# %% tags=["nbval-ignore-output"]
rlhf_report = ppo_dpo.rlhf_report(rl, toy, str(dev), seed)
report = ppo_dpo.dpo_report(res, toy, str(dev), seed)
for rep in (rlhf_report, report):  # trained numbers: they move with the seed and the CPU's kernels
    for name, value in rep.metrics.items():
        print(f"{name}: {int(value) if value.is_integer() and value > 1 else round(value, 4)}")
    print("\n".join(str(c) for c in rep.criteria))

# %%
# NBVAL_CHECK_OUTPUT
for c in rlhf_report.criteria + report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert rlhf_report.passed, rlhf_report.failures()
assert report.passed, report.failures()
assert rl.rm_acc_heldout >= 0.90 and win >= 0.70

# %% [markdown]
# ## Play: β, the strength of the constraint / 动手：约束强度 β
#
# A short DPO run (20 steps, 256 pairs) from the SFT model for the β you choose. Small β lets the policy
# move far from the reference: it adopts the preferred style quickly, but the answers' correctness -- a
# subtler signal in the pairs -- can degrade. Large β keeps it close.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

play_pairs = ppo_dpo.make_pairs(res.ref, tasks.arith_split(res.task)[0][:300], res.task, 4,
                          torch.Generator().manual_seed(0))
play_eval = tasks.arith_split(res.task)[1][:100]


def play_beta(b: float = 0.5) -> None:
    pol = copy.deepcopy(res.ref).train()
    for p in pol.parameters():
        p.requires_grad_(True)
    hist = ppo_dpo.train_dpo(pol, res.ref, play_pairs, res.task, dataclasses.replace(cfg, beta=b, steps=20),
                       desc=f"DPO beta={b}")
    st = {k: float(v.mean()) for k, v in ppo_dpo.sampled_stats(pol.eval(), play_eval, res.task, 4,
                                                        torch.Generator().manual_seed(7)).items()}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(hist["logp_chosen"], label="chosen")
    ax.plot(hist["logp_rejected"], label="rejected")
    ax.set(title=f"beta={b}: sampled correct {st['correct']:.2f}, terse {st['terse']:.2f}", xlabel="step",
           ylabel="log-prob")
    ax.legend()
    plt.show()


widgets.interact(play_beta, b=widgets.FloatLogSlider(value=0.5, base=10, min=-2, max=0.5, step=0.25,
                                                     description="beta", continuous_update=False));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **The labeller.** Real preference labels come from people (or a strong model acting as judge), are noisy
#   and disagree; here a program computes $r^*$, so the same function labels the pairs *and* grades the
#   result — which is what lets the chapter measure over-optimisation and separate style from correctness.
# - **The reward model.** Production RMs are the SFT model itself (or a larger one) with the LM head replaced
#   by a scalar head and the *whole trunk* fine-tuned on hundreds of thousands of comparisons. Ours trains
#   a linear head on frozen features, including the SFT model's log-likelihood of the answer; at this
#   budget a fine-tuned read-out learns the style but not the sums (see closed loop 1).
# - **PPO at scale.** InstructGPT-style PPO holds four large models (policy, value model, reference, RM) —
#   often the value model is a separate network, not a head — generates with a dedicated inference engine,
#   and uses a mixture with pretraining gradients (PPO-ptx); KL coefficients are often adapted to a target
#   KL. Our value head shares the policy's trunk and β is fixed.
# - **DPO data.** Real DPO data are human-labelled pairs, often from *other* models' outputs (off-policy);
#   ours are sampled from the SFT policy itself. Production pipelines also iterate: sample from the current
#   policy, label, train again (online / iterative DPO), which moves DPO towards the online column of the
#   table above.
# - **Sequence length.** Responses here are 3–6 tokens; with long responses the length of $y_w$ and $y_l$
#   starts to matter (DPO's summed log-probabilities favour short answers or long ones depending on the data),
#   the reason for IPO's and SimPO's length normalisation.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** the page executes in **56–63 s from empty caches** (papermill, kernel start included;
#   idle 2-core CPU, 2026-12-01) with peak RAM 1.1–1.2 GB per process, one torch thread each. The seed-0 SFT
#   warm starts, book LM and scratch, ship with the package (500 steps, about 42 s of one core each, made by
#   the recipe `python -m llmcore.alignment.ppo_dpo`). This process runs PPO-RLHF: two reward models and two
#   25-iteration PPO runs, 44 s. A worker process on the second core meanwhile runs DPO, 60 steps with the
#   TRL cross-check and the evaluations (27 s), and evaluates the two warm starts (`jobs.background`). The
#   same page in one process with the warm starts trained took 184 s. Another seed trains its two warm starts
#   first, one on each core (about 40 s more).
# - **Full (`toy=False`):** PPO 200 iterations of 128 prompts (16× the toy's rollouts, for each of the two PPO
#   runs) and DPO on the pairs of 4096 prompts: by the toy's rate (about 19 s per 25 × 64 rollouts) some 5
#   minutes per PPO run on this CPU, and a fraction of that on one GPU (an estimate: no GPU figures are recorded
#   for this chapter in the [benchmarks page](../../book/benchmarks.md)).
# - **Memory.** The model-state table above is the part that scales: PPO keeps policy + value head with
#   gradients and AdamW moments, plus a frozen reference and a reward model; DPO drops the RM and the value
#   head. For a 7B model in bf16 with fp32 AdamW that is roughly 112 GB of policy state plus 14 GB per frozen
#   copy — why PPO-RLHF needs several GPUs and DPO fits on fewer.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - Bradley–Terry 把比较变成对分数差的逻辑回归；奖励只确定到一个常数，尺度需要标准化。 · Bradley–Terry
#   turns comparisons into logistic regression on score differences; the reward is fixed only up to a constant.
# - KL 正则化目标的最优解是 $\pi^* \propto \pi_\text{ref}\,e^{r/\beta}$：参考策略按奖励重新加权。 · The
#   KL-regularised optimum is $\pi^* \propto \pi_\text{ref} e^{r/\beta}$: the reference reweighted by the reward.
# - PPO-RLHF 把 KL 拆成逐词元奖励，奖励模型分数加在最后一个词元上，再用 GAE 与裁剪损失优化。 · PPO-RLHF
#   splits the KL into per-token rewards, adds the RM score at the last token, and optimises with GAE and clipping.
# - 没有 KL 约束时，策略会利用奖励模型的漏洞：代理奖励上升、真实奖励下降（过优化）。 · Without the KL price the
#   policy exploits the reward model: the proxy rises while the true reward falls (over-optimisation).
# - DPO 把奖励模型藏进策略：代入最优解后 $Z(x)$ 消去，只需策略与参考模型的对数概率。 · DPO hides the reward
#   model in the policy: $Z(x)$ cancels, leaving log-probabilities of the policy and the reference.
# - 在线（PPO）能纠正自己新产生的行为，但受制于奖励模型；离线（DPO）更便宜，但只能在固定偏好对上重新加权。 ·
#   Online PPO corrects its own new behaviour but trusts a learned judge; offline DPO is cheaper but only
#   reweights what the fixed pairs cover.
# - 混合奖励上的胜利可能只是风格：正确性与风格要分开评估。 · A win on a mixed reward can be style alone:
#   evaluate correctness and style apart.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `dpo(logp_c, logp_r, ref_c, ref_r, beta)` — DPO's loss from the four tensors
#    `(B,)` of summed response log-probabilities — and check it with `llmcore.exercises.check_dpo_loss(dpo)`.
#    Then show that it is `bradley_terry_loss` applied to the implicit rewards.
# 2. **Self-checked.** Write the reward model's loss `bt(r_chosen, r_rejected)` and check it with
#    `llmcore.exercises.check_bradley_terry_loss(bt)`. Why is `torch.log(torch.sigmoid(d))` a worse way to
#    write it than `F.logsigmoid(d)`?
# 3. Set `beta = 0.1` in the parameters cell, then raise DPO's `lr` to 5e-5. The preferred style wins
#    faster; what happens to the correct rate, the KL and the win rate? Explain with the chosen/rejected
#    log-prob curves.
# 4. Switch to IPO (`DPOConfig(loss_type="ipo")`). With IPO's length-normalised margin target
#    $1/(2\beta)$, which β gives a comparable KL?
# 5. Build pairs with $k=2$ samples instead of best-of-4 vs worst-of-4. How do the number of pairs and
#    the share of "correctness" (rather than "style") comparisons change, and what does DPO learn?
# 6. Run the over-optimisation experiment with the KL penalty on (`kl_coef` 0.03, 0.1, 0.3 against the
#    read-out-only RM) and plot final true reward against final KL: how much penalty stops the fall, and
#    does the curve match Gao et al.'s $\sqrt{\mathrm{KL}}$ shape?
# 7. Train the standard reward model instead -- the whole trunk fine-tuned, `<eos>` read-out -- for a few
#    hundred steps and measure its held-out accuracy on correctness-only and style-only pairs
#    (`ppo_dpo.pair_kinds`). What does it learn first, and why?
# 8. Add an NLL term on the chosen responses (RPO / TRL's `loss_type=["sigmoid", "sft"]`). Does it stop
#    the chosen log-probability from falling?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Two log-ratios, one difference, one log-sigmoid:
#
#    ```python
#    def dpo(logp_c, logp_r, ref_c, ref_r, beta):
#        return -F.logsigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r))).mean()
#    ```
#
#    It equals `ppo_dpo.bradley_terry_loss(beta * (logp_c - ref_c), beta * (logp_r - ref_r))`: Bradley–Terry on the
#    implicit rewards. The checker rejects forgetting the reference, forgetting β, and flipping the log-ratios.
# 2. `bt = lambda r_chosen, r_rejected: -F.logsigmoid(r_chosen - r_rejected).mean()`. For a large negative
#    difference `torch.sigmoid(d)` underflows to 0 (below about −88 in float32, −745 in float64) and its log
#    is −inf; `logsigmoid` computes $-\log(1 + e^{-d})$ stably. The checker also rejects swapping chosen and
#    rejected and summing instead of averaging.
# 3. Expect the terse rate to saturate within a few steps while the correct rate falls, the KL grows and the
#    win rate may still look good: a small β makes the implicit-reward margin cheap to grow, and the largest
#    log-ratio moves are on the style suffix; the chosen log-probability falls along with the rejected one, so
#    mass moves to responses in neither set — including wrong sums. This is the style-over-correctness
#    failure the criteria guard against.
# 4. IPO's target is on *length-normalised* log-ratio differences, so for a comparable KL β must be larger
#    when responses are short; scan β and compare `res.kl_dpo` — there is no closed-form match, which is the
#    point of measuring.
# 5. With $k=2$ more prompts are dropped as ties (two samples agree more often than four do) and each pair is a
#    random pair rather than the extremes, so fewer pairs differ in both parts at once; count them with
#    `ppo_dpo.pair_kinds`. DPO then learns from a weaker, less style-dominated signal.
# 6. Each coefficient gives one (KL, true reward) point; the fall stops once the KL stays near the range where
#    the proxy was fitted. Gao et al.'s fits are in $d = \sqrt{\mathrm{KL}}$: true reward $\approx d(\alpha - \beta' d)$
#    for best-of-n and $d(\alpha - \beta'\log d)$ for RL — a rise, a peak and a fall. With 3 points and a
#    2M-parameter model expect only the shape, not the constants.
# 7. A fine-tuned read-out learns the style (one visible suffix) within a few dozen steps and the sums much
#    later, if at all at this budget (the chapter's note: correct-vs-wrong pairs 0.55–0.68): style is a surface
#    feature of the final hidden state, correctness needs the arithmetic the LM head's likelihood already
#    encodes.
# 8. The NLL term adds $-\log\pi_\theta(y_w|x)$ to the loss, so the chosen log-probability can no longer fall
#    freely; expect it to stay near or above its start, at the price of a smaller margin for the same β.
# :::
#
# ## References / 参考文献
#
# Bradley & Terry {cite}`bradley1952rank`; RLHF {cite}`ziegler2019finetuning,ouyang2022instructgpt`;
# PPO {cite}`schulman2017ppo_rlhf`; DPO {cite}`rafailov2023dpo`; IPO {cite}`azar2024ipo`; reward
# over-optimisation {cite}`gao2023overoptimization`; TRL {cite}`vonwerra2020trl`. Full entries:
# [bibliography](../../book/bibliography.md).
