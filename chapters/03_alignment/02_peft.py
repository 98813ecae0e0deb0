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
# # PEFT: LoRA, Prefix Tuning and Model Merging / 参数高效微调
#
# **中文摘要：** 参数高效微调（PEFT）冻结预训练权重，只训练很少的新参数。本章从零实现 LoRA（秩、缩放
# 系数 alpha、dropout、目标模块、合并与拆分）、在冻结的 INT4 量化底座上训练 LoRA 的 QLoRA、前缀微调
# （Prefix Tuning）与提示微调（Prompt Tuning），以及模型融合：任务算术（Task Arithmetic）、TIES 与 DARE。
# 以上一章的 SFT 小模型为底座，让它学会一个从未见过的指令说法（"caps {s}"）：LoRA 与 Hugging Face PEFT
# 的 `get_peft_model` 在相同 A/B 权重下 logits 一致（1e-6），合并后再拆分可还原底座权重；只训练约 2.5% 参数
# 的 LoRA 与全参数微调相差不到 5 个百分点；再比较不同秩、不同模型宽度下的可训练参数占比。最后融合两个
# 不同任务的微调模型，如实报告：在这个 12 万参数的玩具规模上，融合模型达不到单任务准确率的 80%，
# TIES 明显优于简单平均。
#
# **Learning goals**
# - write a LoRA layer (rank $r$, scale $\alpha/r$, dropout, target modules), merge it into the weight and
#   unmerge it again, and check it against PEFT's `get_peft_model` with the same $A, B$;
# - train LoRA over a frozen INT4 base (QLoRA), prefix tuning and prompt tuning, and compare trainable share,
#   optimizer memory and accuracy against full fine-tuning;
# - see why the LoRA share shrinks with model width, and how accuracy depends on the rank;
# - merge two task fine-tunes by task arithmetic, TIES and DARE, choose their $\lambda$ on a validation split,
#   and measure sign conflicts between task vectors.
#
# **Prerequisites:** [SFT](01_sft.ipynb) (the SFT model, task families, packing, exact match);
# [Decoding & quantization](../02_architecture/06_decoding.ipynb) (group-wise INT4);
# [Transformer core](../02_architecture/01_transformer.ipynb) (attention's $q, k, v, o$ projections).

# %% tags=["parameters"]
toy = True  # True: the ~118k-parameter SFT model, 150 steps per adaptation (CPU); False: the larger SFT model
device = "auto"  # "cpu" | "cuda" | "auto"
seed = 0

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from llmcore.alignment import peft as P
from llmcore.alignment import sft as S
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory
#
# **LoRA** {cite}`hu2022lora`. Fine-tuning changes a weight $W_0 \in \mathbb R^{d_\text{out} \times d_\text{in}}$
# by some $\Delta W$. LoRA bets that a low-rank $\Delta W$ is enough and learns its two factors, with $W_0$ frozen:
#
# $$
# h = W_0 x + \frac{\alpha}{r}\, B A\, \mathrm{dropout}(x), \qquad
# A \in \mathbb R^{r \times d_\text{in}},\; B \in \mathbb R^{d_\text{out} \times r},\; B_0 = 0 .
# $$
#
# $B_0 = 0$ makes the adapted model start exactly at the base. A LoRA'd $d \times d$ linear trains $r(2d)$
# numbers instead of $d^2$, so the trainable share falls like $2r/d$ as the model widens. Because the update is
# linear, it can be **merged**, $W \leftarrow W_0 + \frac{\alpha}{r}BA$ (no inference overhead), and
# **unmerged**, $W \leftarrow W - \frac{\alpha}{r}BA$ (swap adapters on one base).
#
# **QLoRA** {cite}`dettmers2023qlora` stores the frozen $W_0$ in 4 bits (here the group-wise INT4 of the
# decoding chapter) and trains $A, B$ in full precision: $h = \mathrm{dequant}(W_0^{\text{int4}})\,x +
# \frac{\alpha}{r}BAx$. The base shrinks to 4-bit codes plus fp16 group scales (about 5–6x smaller than fp32 at group size 16);
# the adapters are all the optimizer sees.
#
# **Prefix tuning** {cite}`li2021prefix` learns, for every layer, $P$ key and value vectors that every token can
# attend to: $\mathrm{Attn}(q, [K_\text{prefix}; K], [V_\text{prefix}; V])$. **Prompt tuning**
# {cite}`lester2021prompt` learns only $P$ input embeddings placed before the prompt.
#
# **Model merging.** With fine-tunes $\theta_i$ of one base $\theta_0$ and task vectors $\tau_i = \theta_i -
# \theta_0$, *task arithmetic* {cite}`ilharco2023taskarith` builds $\theta_0 + \lambda\sum_i \tau_i$; plain
# averaging of the models is the special case $\lambda = 1/n$, which shrinks every task's own vector to $1/n$.
# **TIES** {cite}`yadav2023ties` (1) *trims* each $\tau_i$ to its top-$k$ magnitudes, (2) *elects* a sign per
# coordinate, $\gamma = \mathrm{sgn}\sum_i \hat\tau_i$, and (3) takes the *disjoint mean* over the tasks that
# agree with it:
#
# $$
# \tau_m^{(j)} = \frac{1}{|\mathcal A_j|}\sum_{i \in \mathcal A_j} \hat\tau_i^{(j)}, \qquad
# \mathcal A_j = \{\, i : \mathrm{sgn}\,\hat\tau_i^{(j)} = \gamma^{(j)} \,\}, \qquad
# \theta = \theta_0 + \lambda\, \tau_m .
# $$
#
# Where only one task moved a coordinate, the disjoint mean keeps that task's full value (averaging would halve
# it); where tasks disagree in sign, the minority is dropped instead of cancelling the majority.
# **DARE** {cite}`yu2024dare` drops each delta coordinate with probability $p$ and rescales the survivors by
# $1/(1-p)$ (unbiased), before a TIES-style merge.

# %% [markdown]
# ## LoRA from scratch
#
# `LoRALinear` wraps a frozen linear (fp32, or `QuantLinear` in INT4 for QLoRA); `apply_lora` swaps the
# target linears of a model in place. The names `lora_A` / `lora_B` and the initialisation follow PEFT, which is
# what lets us copy our weights into PEFT's model and compare.

# %%
show_source(P.LoRALinear, P.apply_lora, P.to_peft)

# %% [markdown]
# ## Prefix and prompt tuning
#
# Our attention layers already accept a KV cache object; prefix tuning passes one whose `update` puts the learned
# keys and values in front of each layer's own. Prompt tuning replaces the embeddings of $P$ placeholder tokens
# at the start of each packed conversation.

# %%
show_source(P.PrefixCache, P.PrefixTuning, P.PromptTuning.packed_logits)

# %% [markdown]
# ## Model merging
#
# Merges act on state dicts: the trimmed top-$k$, the elected sign, the disjoint mean, DARE's random drop.

# %%
show_source(P.trim, P.ties_tensor, P.dare, P.merge_models)

# %% [markdown]
# ## The closed loop
#
# The base is the SFT chapter's model (loaded from its cache, or trained if missing). It was trained on
# `"upper: {s}"` and `"{a}+{b}="`; asked `"caps {s}"` it answers 0 % correctly. **Task A** is that phrasing.
# Each method adapts a copy of the base to task A with the same budget (150 AdamW steps of 16 packed rows) and
# its own learning rate; exact match is measured on 200 held-out prompts. LoRA sits on the attention's `q_proj`,
# `v_proj` and `o_proj` with $r = 4$, $\alpha = 8$, and the rank sweep repeats it for $r \in \{1, 2, 4, 8\}$.
#
# For merging, a second task fine-tune learns **task B**, addition asked as `"sum of {a}+{b}="`. Each
# task-specific fine-tune is full fine-tuning whose batches are half new task, half replayed SFT data (so the
# shared skills stay in place). Each merge method's $\lambda$ (and TIES' density $k$) is chosen by the mean exact
# match on a *validation* split (inputs from the training bucket, 100 per task), then scored once on the test set.

# %%
show_source(P.adapt, P.replay_data, P.merge_grid)

# %%
t0 = time.perf_counter()
res = P.experiment(toy=toy, seed=seed, device=dev)
elapsed = time.perf_counter() - t0

# %% tags=["nbval-ignore-output"]
print(f"closed loop: {elapsed:.1f} s (the SFT model loaded from the cache when the SFT chapter ran first). "
      "Wall times depend on the machine's load.")

# %% [markdown]
# ### Methods: trainable share, optimizer memory, accuracy
#
# AdamW keeps two fp32 moments per trainable parameter, so optimizer memory is $8 \times$ trainable bytes.

# %%
print(f"SFT model before adaptation: EM {res.base_em['upper@t1']:.3f} on task A ('caps {{s}}')\n")
print(f"{'method':28s} {'trainable':>9s} {'trainable %':>11s} {'optimizer bytes':>15s} {'EM':>6s}")
for r in res.rows:
    print(f"{r['method']:28s} {r['trainable']:9d} {r['trainable %']:11.2f} {r['optimizer bytes']:15d} {r['EM']:6.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for name, ls in res.losses.items():
    if name.startswith("task fine-tune"):
        continue
    axes[0].semilogy(np.convolve(ls, np.ones(10) / 10, mode="valid"), label=name)
axes[0].set_xlabel("step"), axes[0].set_ylabel("loss (10-step mean)"), axes[0].legend(fontsize=8)
axes[0].set_title("adapting the SFT model to 'caps {s}'")
ranks = list(res.rank_sweep)
axes[1].plot(ranks, [res.rank_sweep[r]["EM"] for r in ranks], "o-", label="LoRA (q, v, o)")
axes[1].axhline(res.rows[0]["EM"], color="k", ls="--", label="full fine-tuning")
for r in ranks:
    axes[1].annotate(f"{res.rank_sweep[r]['trainable %']:.1f}%", (r, res.rank_sweep[r]["EM"]),
                     textcoords="offset points", xytext=(4, -12), fontsize=8)
axes[1].set_xscale("log", base=2), axes[1].set_xticks(ranks, [str(r) for r in ranks])
axes[1].set_xlabel("LoRA rank r (label: trainable %)"), axes[1].set_ylabel("held-out EM"), axes[1].set_ylim(0, 1.05)
axes[1].set_title("rank sweep"), axes[1].legend()
plt.show()

# %% [markdown]
# Prefix tuning learns the task partly; prompt tuning, even with a large learning rate (0.1) and the soft
# prompt initialised from the embeddings of the text `"<bos><|user|>upper:"`, barely moves: its loss starts very
# high (likely because the two-layer base never saw any token before `<bos>`), and eight input vectors are a
# weak handle on a 64-wide, two-layer model. Lester et al. found the same trend in the other direction: prompt tuning
# only matches fine-tuning at billions of parameters (exercise 3).
#
# ### The LoRA share shrinks with width
#
# The toy model is so narrow ($d = 64$) that the embedding table is a large part of it and rank 4 is 1/16 of the
# width, so LoRA trains a few percent. Counting the same architecture at larger widths (same depth, $r = 4$ on
# q, v, o; no training) shows the share falling like $1/d$:

# %%
print(f"{'d_model':>8s} {'LoRA trainable %':>17s}")
for d, f in res.width_sweep.items():
    print(f"{d:8d} {100 * f:17.3f}")

# %% [markdown]
# ### Cross-check: our LoRA = PEFT's LoRA; merge then unmerge restores $W_0$
#
# The base is exported with `to_hf()` to a `transformers.LlamaForCausalLM`, wrapped by PEFT's
# `get_peft_model` with the same rank, alpha and targets, and our $A, B$ (with a random non-zero $B$) are copied
# into it. Logits must agree on every real token of a padded batch.

# %%
assert res.peft_max_diff < 1e-6, res.peft_max_diff
assert res.merge_unmerge_diff < 1e-6, res.merge_unmerge_diff
print(f"max |our LoRA logits - PEFT logits| = {res.peft_max_diff:.1e}")
print(f"max |W after merge + unmerge - W0|   = {res.merge_unmerge_diff:.1e}")

# %% [markdown]
# ## Merging two task fine-tunes
#
# Validation exact match (mean of the two tasks) over the whole grid, the chosen setting per method, and the
# test exact match of each merged model:

# %%
names = list(res.single)
print("single-task fine-tunes (test EM):", {t: round(a, 3) for t, a in res.single.items()})
print(f"sign conflicts: {res.sign_conflicts:.1%} of the coordinates both tasks moved "
      f"({res.sign_conflicts_trimmed:.1%} after trimming each to its top 20%)\n")
print(f"{'merge':16s} {'chosen on validation':22s} " + " ".join(f"{t:>9s}" for t in names)
      + "   worst / single")
for m, d in res.merges.items():
    keep = min(d[t] / res.single[t] for t in names)
    print(f"{m:16s} {res.chosen[m]:22s} " + " ".join(f"{d[t]:9.3f}" for t in names) + f"   {keep:14.2f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for t, curve in res.scale_curve.items():
    axes[0].plot(list(curve), list(curve.values()), "o-", label=t)
axes[0].set_xlabel(r"$\lambda$ in $\theta_0 + \lambda\,\tau_{task}$ (one task vector alone)")
axes[0].set_ylabel("test EM on that task"), axes[0].set_ylim(0, 1.05), axes[0].legend()
axes[0].set_title("a scaled-down task vector loses its task")
labels = [f"{m}\n{c}" for m, c in zip([v[0] for v in res.val_scores], [v[1] for v in res.val_scores])]
colors = {"average": "#999999", "task arithmetic": "#0072B2", "TIES": "#D55E00", "DARE-TIES": "#009E73"}
axes[1].bar(range(len(labels)), [v[2] for v in res.val_scores], color=[colors[v[0]] for v in res.val_scores])
axes[1].set_xticks(range(len(labels)), [v[1] for v in res.val_scores], rotation=90, fontsize=7)
axes[1].set_ylabel("validation EM (mean of 2 tasks)")
axes[1].set_title("merge grid (grey avg, blue TA, orange TIES, green DARE)")
plt.show()

# %% [markdown]
# **What this shows, honestly.** TIES (and task arithmetic with $\lambda = 1$) keep far more than plain averaging:
# averaging is $\lambda = 1/2$, and the left plot shows that half of a task vector carries almost none of its
# task — at this scale the function is strongly non-linear along $\tau$. TIES' disjoint mean keeps the full
# magnitude where only one task moved, and drops the minority sign where the tasks disagree (a large share
# here). But no merge keeps 80 % of *both* tasks: **the acceptance criterion "merged model keeps ≥ 80 % of each
# task's single-task accuracy" is not met in toy mode.** In a 118k-parameter, 64-wide model, the two fine-tunes
# reuse the same few weights for different jobs, so each task vector is a large perturbation on the other task's
# inputs; merging works in large pretrained models because their task vectors are small relative to the weights
# and nearly orthogonal in effect {cite}`ilharco2023taskarith,yadav2023ties`. We tried, and report as negative
# results: smaller learning rates, longer or larger-batch fine-tunes, more replay, LoRA-based task vectors,
# attention-only or MLP-only fine-tunes, sparse fine-tunes (a top-5 % gradient mask per task), two phrasings
# of the same family, and linearised (tangent-space) fine-tuning, whose single-task accuracy stayed below 20 %
# — none kept 80 % of both tasks; the best reached about half.
#
# A second round aimed at the causes (same tasks, hyperparameters chosen on validation, test EM given as
# task A / task B; measured with separate scripts, not run here):
#
# - *Small task vectors by construction* (proximal fine-tuning, loss $+\,\mu\lVert\theta-\theta_0\rVert^2$,
#   $\mu$ from $10^{-3}$ to $3\cdot10^{-2}$): $\lVert\tau\rVert$ fell from 8.2 / 7.4 to 1.7 / 1.9
#   ($\lVert\theta_0\rVert = 51$), $\cos(\tau_A, \tau_B)$ stayed at 0.21–0.26, and the best merge kept 0.61 / 0.50
#   (singles 0.985 / 0.975).
# - *Where the damage comes from:* adding $\tau_B$ to the task-A fine-tune drops A to 0.51, but a random vector
#   with $\tau_B$'s per-tensor scale only to 0.87, so the interference is specific, not a matter of size.
#   $\tau_B$'s attention weights alone drop A to 0.61 (its MLP weights to 0.88, its embeddings to 0.90).
# - *Orthogonal is not enough:* SGD fine-tunes without replay give orthogonal task vectors (cos −0.02), yet every
#   merge scores at most 0.01 on A.
# - *RegMean* (each linear set to the least-squares fit of both fine-tunes' outputs on their own inputs,
#   Jin et al. 2023): 0.50 / 0.41.
# - *SGD instead of AdamW* (momentum 0.9, lr 0.03, 300 steps; $\lVert\tau\rVert \approx 2$, cos 0.24): 0.865 / 0.555.
# - *The same, with task vectors measured from a control fine-tune* (same recipe, replay data only), so the
#   drift both fine-tunes share is added once, not twice: seed 0 passes (0.825 / 0.845 of 0.99 / 0.97), seeds 1
#   and 2 do not (0.54 / 0.605 and 0.56 / 0.715). A control on the very same batches (task rows unscored) made the
#   task-specific vectors orthogonal (cos 0.008) and still merged to about 0.53 / 0.52 (seed 1). One seed in
#   three is not a result, so the chapter keeps the plain recipe.
# - *Flat minima* (SAM, $\rho = 0.05$): 0.69 / 0.34; with $\rho = 0.2$, or with SGD, task B was no longer learned
#   (≤ 0.09). Task B is fragile anyway: the plain AdamW fine-tune with batch-order seed 1 reaches only 0.04.
# - *A wider base* ($d = 128$, 436k parameters): its SFT alone takes 90 s, over this chapter's budget, and
#   merging got worse: singles 0.52 / 0.87, orthogonal task vectors (cos −0.003), best merge 0.115 / 0.625.
# - *Tasks the base half knows:* none among the templates. The SFT model scores exactly 0 % on every unseen
#   template phrasing and on 7–10-letter strings (100 % on 3–6 letters), so every fine-tune has to learn a new
#   routing.
#
# A third round tested the explanations that were left (seed 0 unless stated):
#
# - *A base that already half knows the tasks*, made by 100–250 extra steps on SFT data with 5–15 % of rows in
#   each new phrasing. With 5 % and 100 steps the base scores 0.675 / 0.005, the fine-tunes 1.0 / 0.985, the
#   best merge 0.63 / 0.715. With 10 % and 150 steps the base already scores **0.94 on A, yet task arithmetic
#   keeps 0.41 and TIES 0.28 of it**: the B fine-tune never sees A's phrasing, forgets it, and $\tau_B$ carries
#   that forgetting into the merge. With 15 % and 250 steps the base scores 0.98 / 0.98 before any fine-tune,
#   and every merge "passes" — which then says nothing about merging.
# - *Less input overlap:* both prompts above start with a lowercase word. Asking B as `"{a}+{b}?"` (digits
#   first; the SFT model scores 0.055) with a gentler fine-tune (lr $10^{-3}$, 400 steps) passes with seed 0
#   (TIES 0.925 / 0.88 of 1.0 / 1.0) and, by task arithmetic, with seed 2 (0.91 / 0.78 of 1.0 / 0.965), and
#   fails with seed 3 (best 0.63 / 0.88 of 0.985 / 0.995). Seed 1's SFT model is itself weak (0.65 held-out,
#   see the SFT chapter), so its fine-tunes are too. With three quarters of each fine-tune's rows replayed,
#   seeds 0 and 3 pass (TIES 0.91 / 0.87 and 0.745 / 0.91 of 0.995 / 1.0 and 0.905 / 0.995) and seed 2 fails
#   (task arithmetic 0.71 / 0.79 of 0.99 / 0.92). Not adopted: two of three is not robust either.
# - *A 7× larger base* ($d = 128$, 4 layers, 838k parameters, 3000 SFT steps: 6 min here, 0.993 on its own
#   tasks): the best merge keeps 0.185 / 0.265 (fine-tunes lr $3\cdot10^{-3}$, 300 steps) or 0.29 / 0.575
#   (lr $5\cdot10^{-4}$, 600 steps; singles 0.96 / 0.895). Growing the model within CPU reach does not help.
# - *Telling each fine-tune to leave other prompts alone:* 20–30 % of its rows are prompts of the other families
#   and phrasings answered by the SFT model itself (self-distillation). Task B is then hardly learned (0.03–0.12
#   with 150–300 steps; one mix reached 0.71 in 200), and no merge keeps more than 0.34 / 0.24.
# - *A base trained on two phrasings per family* (transfer to the third: 0 %): best merge 0.535 / 0.145.
# - *The SFT chapter's seed-robust recipe* (3000 steps, lr $5\cdot10^{-3}$, weight decay 0.1) as the base:
#   TIES 0.29 / 0.775 of 0.99 / 0.985 (and prefix tuning no longer learns task A).
#
# No setting keeps 80 % of both tasks on every seed we ran; the closest passes on two of three. What the
# criterion assumes — task vectors that act only on their own task's inputs — is a property of large, broadly
# pretrained models; a model trained from scratch on two task families gives each fine-tune the same few
# shared circuits to rewire.

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = P.make_report(res, toy, str(dev), seed)
print(report.summary(digits=3))
full, lora = res.rows[0], res.rows[1]
ties, avg = res.merges["TIES"], res.merges["average"]
assert res.peft_max_diff < 1e-6 and res.merge_unmerge_diff < 1e-6
assert 100 * (full["EM"] - lora["EM"]) <= 5.0 and lora["trainable %"] < 5.0
assert all(a > b for a, b in zip(list(res.width_sweep.values()), list(res.width_sweep.values())[1:]))
assert sum(ties.values()) > sum(avg.values())
failed = [c.name for c in report.failures()]
assert set(failed) <= {"TIES merge: worst task EM / single-task EM"}, failed  # not met at toy scale (see above)
print("criteria not met:", failed)

# %% [markdown]
# ## Play: merge the two task vectors yourself
#
# Pick a merge method, $\lambda$ and TIES' density; the merged model is built from the two task vectors above
# and scored on 100 test prompts per task (about a second).

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def play(method: str = "ties", lam: float = 1.4, density: float = 1.0) -> None:
    spec = P.MergeSpec(method, lam=lam, density=density, seed=seed)
    merged = P.merge_models(res.base, res.taus, spec)
    for t in names:
        acc, _ = S.exact_match(merged, res.tests[t][:100])
        print(f"{t:10s} EM {acc:.2f}   (single-task {res.single[t]:.2f})")


widgets.interact(play, method=widgets.Dropdown(options=["average", "task_arithmetic", "ties", "dare_ties"],
                                               value="ties"),
                 lam=widgets.FloatSlider(value=1.4, min=0.2, max=2.0, step=0.1),
                 density=widgets.FloatSlider(value=1.0, min=0.1, max=1.0, step=0.1));

# %% [markdown]
# ## Exercises
#
# 1. Put LoRA on all seven linears (`P.ALL_LINEARS`) and on `q_proj, v_proj` only. How do trainable share and
#    EM move? Which single module matters most for learning a new phrasing?
# 2. Set LoRA dropout to 0.1 and alpha to $r$ instead of $2r$. Which of the two changes the rank sweep more, and
#    why does $\alpha / r$ act like a learning-rate multiplier for $B$?
# 3. Prompt tuning: move the soft prompt *after* `<bos><|user|>` (a change to `pack` and `PromptTuning`), or
#    train 10x longer. Which one fixes the high initial loss?
# 4. Merge with a larger share of replay in each task fine-tune (`P.replay_data(..., replay=0.75)`), or merge
#    two LoRA fine-tunes instead of full ones. Does the sign-conflict share fall, and does the merge improve?
# 5. Run with `toy=False` on a GPU (a 4-layer, 192-wide SFT model). Does merging keep more of each task as the
#    model grows?
#
# ## References
#
# LoRA {cite}`hu2022lora`; QLoRA {cite}`dettmers2023qlora`; prefix tuning {cite}`li2021prefix`; prompt tuning
# {cite}`lester2021prompt`; task arithmetic {cite}`ilharco2023taskarith`; TIES-merging {cite}`yadav2023ties`;
# DARE {cite}`yu2024dare`. Full entries: [bibliography](../../book/bibliography.md).
