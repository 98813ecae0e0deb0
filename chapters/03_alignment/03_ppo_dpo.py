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
#   GAE, clipped losses); watch reward over-optimisation appear when a flawed proxy is optimised without KL.
#
# **Prerequisites:** [Supervised fine-tuning](01_sft.ipynb); [Policy gradient & actor-critic](04_pg_ac.ipynb)
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

import matplotlib.pyplot as plt
import numpy as np
import torch

from llmcore.alignment import ppo_dpo as P
from llmcore.alignment import sft, tasks
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed, threads=P.THREADS)  # one torch thread: see P.THREADS
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, beta={beta}")

# %% [markdown]
# ## Theory
#
# **RLHF** {cite}`ziegler2019finetuning,ouyang2022instructgpt` has three stages: supervised fine-tuning;
# a **reward model** $r_\phi(x, y)$ fitted to human comparisons $y_w \succ y_l$ with the Bradley–Terry
# model {cite}`bradley1952rank`
#
# $$
# P(y_w \succ y_l \mid x) = \sigma\big(r(x, y_w) - r(x, y_l)\big), \qquad
# \mathcal L_\text{RM} = -\mathbb E \log \sigma\big(r_\phi(x, y_w) - r_\phi(x, y_l)\big);
# $$
#
# and **RL** that maximises the reward while staying close to the SFT reference:
#
# $$
# \max_\pi\; \mathbb E_{x, y \sim \pi}\big[r_\phi(x, y)\big] - \beta\, \mathrm{KL}\big(\pi(\cdot\mid x) \,\|\, \pi_\text{ref}(\cdot\mid x)\big).
# $$
#
# PPO {cite}`schulman2017ppo_rlhf` optimises it token by token: the per-token reward is
# $r_t = -\beta \log\frac{\pi(y_t\mid\cdot)}{\pi_\text{ref}(y_t\mid\cdot)}$ plus $r_\phi(x, y)$ at the last
# token, a value head gives $V(x, y_{<t})$, GAE turns rewards and values into advantages, and the
# losses are clipped:
#
# $$
# \mathcal L^\text{clip} = -\mathbb E_t \min\big(\rho_t \hat A_t, \operatorname{clip}(\rho_t, 1 \pm \varepsilon) \hat A_t\big),
# \qquad
# \mathcal L^V = \tfrac12 \mathbb E_t \max\big((V_t - \hat R_t)^2,\, (V^\text{old}_t + \operatorname{clip}(V_t - V^\text{old}_t, \pm\varepsilon) - \hat R_t)^2\big).
# $$
#
# **DPO** {cite}`rafailov2023dpo` notices that the KL-regularised objective has a closed-form optimum,
# $\pi^*(y\mid x) \propto \pi_\text{ref}(y\mid x)\exp(r(x, y)/\beta)$, so
# $r(x, y) = \beta \log\frac{\pi^*(y\mid x)}{\pi_\text{ref}(y\mid x)} + \beta\log Z(x)$. Substituting this
# into Bradley–Terry, $Z(x)$ cancels and the reward model disappears:
#
# $$
# \mathcal L_\text{DPO} = -\mathbb E \log\sigma\Big(\beta \log\frac{\pi_\theta(y_w\mid x)}{\pi_\text{ref}(y_w\mid x)}
# - \beta \log\frac{\pi_\theta(y_l\mid x)}{\pi_\text{ref}(y_l\mid x)}\Big).
# $$
#
# $\beta \log\frac{\pi_\theta(y\mid x)}{\pi_\text{ref}(y\mid x)}$ is DPO's **implicit reward**. **IPO**
# {cite}`azar2024ipo` replaces the log-sigmoid, which keeps pushing the margin to infinity on
# deterministic preferences, by a squared loss that targets the margin $1/(2\beta)$.

# %% [markdown]
# ## The setting: a true reward in place of human judgement
#
# Two-digit addition again. The policy starts from the **book LM** (a 2M-parameter LLaMA pretrained on the
# book's corpus) fine-tuned for 500 steps on SFT data that answers in two styles: terse `"42"` and wordier
# `"42 ok"` (half each). The **true reward** is $r^*(x, y) = \mathbb 1[\text{correct}] + 0.5\cdot\mathbb 1[\text{terse}]$:
# a correct terse answer scores 1.5, a correct wordy one 1.0, a wrong terse one 0.5. It is computed by a
# program, so it can label as many comparisons as we like *and* measure what alignment really achieved
# on held-out prompts. It mixes two things, so we also report them apart: the **correct rate** (the sum
# is right, either style) and the **terse rate** (the preferred format, right or wrong).

# %%
show_source(P.true_reward, tasks.check_arith, P.sampled_stats)

# %% [markdown]
# ## The implementation
#
# The losses are a few lines each; DPO needs only the summed log-probabilities of each response under
# the policy and under the frozen reference.

# %%
show_source(P.bradley_terry_loss, P.dpo_loss, P.sequence_logprobs, P.make_pairs, P.train_dpo)

# %%
show_source(P.ppo_policy_loss, P.ppo_value_loss)

# %% [markdown]
# ## Closed loop 1: SFT → reward model → PPO-RLHF
#
# 1. **SFT**: the book LM fine-tuned on both styles for 500 steps of 32 problems (seed 0: greedy held-out
#    accuracy 0.85; sampled, it answers wordily a third of the time, so the true reward has room to grow).
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
#    barely above chance.

# %%
show_source(P.RewardModel, P.ppo_rlhf)

# %%
rl = P.rlhf_experiment(toy=toy, device=dev, seed=seed)
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
    axes[1].plot(x, P.smooth(hh["true_reward"]), ls, label=f"true, {name}")
    axes[1].plot(x, P.smooth(hh["proxy_reward"]), ls, alpha=0.6, label=f"proxy (RM), {name}")
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
# ## Closed loop 2: SFT → preference pairs → DPO
#
# 1. **SFT** with both styles as above (the same cached model).
# 2. **Pairs:** built the same way (best-of-4 vs worst-of-4 by the true reward); no reward model.
# 3. **DPO** from the SFT weights, the SFT model frozen as the reference.
# 4. **Evaluate** on 200 held-out prompts: 8 sampled responses each from SFT and from DPO, mean true
#    reward per prompt; DPO "beats" SFT on a prompt when its mean is higher. Because a win on the mixed
#    reward can be bought with style alone (an earlier version of this chapter won 79% of the prompts
#    while greedy correctness fell from 0.905 to 0.835), correctness and style are checked apart: DPO must
#    remove at least half of the SFT model's wordy answers and may lose at most 2 points of correctness,
#    sampled or greedy.

# %%
cfg = P.DPOConfig(beta=beta)
if not toy:
    cfg = dataclasses.replace(cfg, steps=90, batch_pairs=64, n_pair_prompts=4096, n_eval_prompts=400)
res = P.dpo_experiment(toy=toy, device=dev, seed=seed, cfg=cfg)
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
# The rejected log-probability falls fast; the chosen one moves much less and can fall too. The loss only sees
# their difference, so probability mass can leave the chosen responses too (it goes to responses that
# are in neither set); this is a known property of DPO, and the reason β and the number of steps matter.
#
# ### Cross-check: our loss equals TRL's `DPOTrainer`
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
# ### SFT vs PPO vs DPO
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
# ### The pretrained start against a random one, at equal steps
#
# The same warm start from random weights (same architecture, same 500 steps, same data): how well it
# adds, and what true reward PPO and DPO would start from.

# %% tags=["nbval-ignore-output"]
ws = P.warm_start_comparison(cfg, dev, seed)
for init, st in ws.items():
    print(f"{init:>8}: greedy held-out accuracy {st['correct']:.3f}, terse {st['terse']:.3f}, "
          f"sampled true reward {st['reward']:.3f}")
print(f"gain of the pretrained start: {ws['book_lm']['correct'] - ws['scratch']['correct']:+.3f} accuracy, "
      f"{ws['book_lm']['reward'] - ws['scratch']['reward']:+.3f} true reward")

# %% [markdown]
# ## Results

# %% tags=["nbval-ignore-output"]
rlhf_report = P.rlhf_report(rl, toy, str(dev), seed)
print(rlhf_report.summary())  # trained numbers: they move with the seed and the CPU's kernels
report = P.dpo_report(res, toy, str(dev), seed)
print(report.summary())

# %%
# NBVAL_CHECK_OUTPUT
for c in rlhf_report.criteria + report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert rlhf_report.passed, rlhf_report.failures()
assert report.passed, report.failures()
assert rl.rm_acc_heldout >= 0.90 and win >= 0.70

# %% [markdown]
# ## Play: β, the strength of the constraint
#
# A short DPO run (20 steps, 256 pairs) from the SFT model for the β you choose. Small β lets the policy
# move far from the reference: it adopts the preferred style quickly, but the answers' correctness -- a
# subtler signal in the pairs -- can degrade. Large β keeps it close.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

play_pairs = P.make_pairs(res.ref, tasks.arith_split(res.task)[0][:300], res.task, 4,
                          torch.Generator().manual_seed(0))
play_eval = tasks.arith_split(res.task)[1][:100]


def play_beta(b: float = 0.5) -> None:
    pol = copy.deepcopy(res.ref).train()
    for p in pol.parameters():
        p.requires_grad_(True)
    hist = P.train_dpo(pol, res.ref, play_pairs, res.task, dataclasses.replace(cfg, beta=b, steps=20),
                       desc=f"DPO beta={b}")
    st = {k: float(v.mean()) for k, v in P.sampled_stats(pol.eval(), play_eval, res.task, 4,
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
# ## Exercises
#
# 1. Set `beta = 0.1` in the parameters cell, then raise DPO's `lr` to 5e-5. The preferred style wins
#    faster; what happens to the correct rate, the KL and the win rate? Explain with the chosen/rejected
#    log-prob curves.
# 2. Switch to IPO (`DPOConfig(loss_type="ipo")`). With IPO's length-normalised margin target
#    $1/(2\beta)$, which β gives a comparable KL?
# 3. Build pairs with $k=2$ samples instead of best-of-4 vs worst-of-4. How do the number of pairs and
#    the share of "correctness" (rather than "style") comparisons change, and what does DPO learn?
# 4. Run the over-optimisation experiment with the KL penalty on (`kl_coef` 0.03, 0.1, 0.3 against the
#    read-out-only RM) and plot final true reward against final KL: how much penalty stops the fall, and
#    does the curve match Gao et al.'s $\sqrt{\mathrm{KL}}$ shape?
# 5. Train the standard reward model instead -- the whole trunk fine-tuned, `<eos>` read-out -- for a few
#    hundred steps and measure its held-out accuracy on correctness-only and style-only pairs
#    (`P.pair_kinds`). What does it learn first, and why?
# 6. Add an NLL term on the chosen responses (RPO / TRL's `loss_type=["sigmoid", "sft"]`). Does it stop
#    the chosen log-probability from falling?
#
# ## References
#
# Bradley & Terry {cite}`bradley1952rank`; RLHF {cite}`ziegler2019finetuning,ouyang2022instructgpt`;
# PPO {cite}`schulman2017ppo_rlhf`; DPO {cite}`rafailov2023dpo`; IPO {cite}`azar2024ipo`; reward
# over-optimisation {cite}`gao2023overoptimization`; TRL {cite}`vonwerra2020trl`. Full entries:
# [bibliography](../../book/bibliography.md).
