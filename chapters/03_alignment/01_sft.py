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
# # Supervised Fine-Tuning / 监督微调 (SFT)
#
# **中文摘要：** 监督微调（SFT）用"指令—回答"对训练一个**已经预训练过**的语言模型，使其遵循指令。本章微调本书的
# 预训练模型 book LM（约 200 万参数，在 Python 标准库文本上预训练）：任务是由语料中的标识符重新组合出的函数签名
# （"name of: def open_reader(path, mode):" → "open_reader"；同一段代码、不同指令 → 复制不同的片段），可自动验证，并按实例、按提示模板划分
# 留出集。对话模板只在回答部分计算损失（与 HF 的 `labels=-100` 逐位相同），多条短对话打包进同一行（块对角因果
# 掩码 + 每段重新计数的位置）。300 步后，留出提示上的贪心精确匹配 ≥ 95%；在从未见过的提问方式上仍明显高于 0；
# 同样步数下，从随机初始化开始的同一模型远远落后——这就是"预训练 + 微调"的意义。数据质量实验比较：干净数据、
# 50% 系统性错误、模型自采样数据，以及经验证器过滤的拒绝采样数据。
#
# **Learning goals**
# - build verifiable instruction data: task families, prompt templates, a chat template with special tokens, and
#   held-out splits by instance and by template (an unseen phrasing);
# - write the prompt-masked SFT loss and check it against Hugging Face's `labels = -100` convention;
# - pack short conversations into full rows without cross-contamination (block-diagonal mask, restarted positions);
# - fine-tune a *pretrained* model and measure what pretraining buys: the same steps from random weights;
# - evaluate by exact match under greedy decoding; make synthetic data by rejection sampling against a verifier,
#   and measure how wrong data hurts.
#
# **Prerequisites:** [Transformer core](../02_architecture/01_transformer.ipynb) (the LLaMA, `generate`, and the
# book LM: the pretrained model this chapter starts from); cross-entropy; PyTorch basics.

# %% tags=["parameters"]
toy = True  # True: two identifier tasks, 300 steps of the ~2M-parameter book LM (CPU); False: 7 families, 6000 steps
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
import torch

from llmcore.alignment import sft, tasks
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory / 理论
#
# ### The SFT objective / SFT 的目标
#
# A conversation is a prompt $p = (p_1, \dots, p_m)$ followed by a response $r = (r_1, \dots, r_n)$. A
# causal language model factorises the probability of the whole sequence token by token, and the chain rule
# splits it into a prompt part and a response part:
#
# $$
# \log \pi_\theta(p, r) = \underbrace{\sum_{t=1}^{m} \log \pi_\theta(p_t \mid p_{<t})}_{\text{modelling the user}}
# + \underbrace{\sum_{t=1}^{n} \log \pi_\theta(r_t \mid p, r_{<t})}_{\text{answering the user}} .
# $$
#
# SFT keeps only the second sum {cite}`ouyang2022instructgpt,wei2022flan`: it maximises the likelihood of the
# response *given* the prompt, averaged over every response token of the batch,
#
# $$
# \mathcal L_{\text{SFT}}(\theta) = -\frac{1}{\sum_i n_i}\sum_i \sum_{t=1}^{n_i}
# \log \pi_\theta\!\left(r^{(i)}_t \,\middle|\, p^{(i)}, r^{(i)}_{<t}\right).
# $$
#
# Minimising it is maximum likelihood, i.e. minimising $\mathrm{KL}(\pi_\text{data}(r\mid p)\,\|\,\pi_\theta(r\mid p))$
# over the prompts in the data: the model learns to *imitate the demonstrations*, whatever they contain. The
# prompt is context, not a target — a chatbot is never asked to write the user's question — so spending
# capacity and gradient on it only dilutes the signal (in this chapter's data the prompt is about 80% of the
# tokens). In code the choice is one line: prompt positions get the label $-100$, which the cross-entropy
# ignores (Hugging Face's convention, checked below). Two details matter: the mean is over *tokens of the
# whole batch*, not a mean of per-conversation means (which would weight a 3-token answer like a 30-token
# one), and the `<eos>` that closes the response is a target too — it is how the model learns to stop.
#
# 监督微调只对"回答"部分计算损失：提示词是条件而非目标，其位置的标签设为 $-100$；损失对整个批次中所有回答
# 词元取平均，结尾的 `<eos>` 也是目标——模型正是靠它学会停下。
#
# ### Chat template / 对话模板
#
# A pretrained LM continues text; a chat model must know where the user's turn ends and its own begins. The
# **chat template** marks the turns with special tokens that never occur in ordinary text:
# `<bos><|user|>` prompt `<|assistant|>` response `<eos>`. At inference the prompt is rendered the same way
# and ends with `<|assistant|>`, so the model's first generated token is the first token of its answer, and
# generation stops at `<eos>`. Training and inference must use the *same* template token for token; a
# template mismatch is a classic silent bug of fine-tuned models.
#
# ### Packing / 打包
#
# Conversations here are 16–53 tokens (median 28); padding each batch to its longest wastes compute on padding. Packing
# {cite}`krell2021packing` concatenates them into rows of $L$ tokens. It is only correct with an attention mask
# that keeps the documents of a row apart,
#
# $$
# M_{ts} = [\,s \le t\,] \wedge [\,\mathrm{doc}(s) = \mathrm{doc}(t)\,],
# $$
#
# and with no label crossing a boundary (the first token of a document is never predicted from the previous
# document's last one). With the block-diagonal mask, row $t$ of the attention sees exactly the keys it would
# see if its document ran alone. The positions: we also restart them per document,
# $\mathrm{pos}(t) = t - \mathrm{start}(\mathrm{doc}(t))$, as an unpacked run would number them. With learned
# absolute position embeddings that is required; with RoPE {cite}`su2021roformer` it is not, strictly:
# RoPE rotates $q_m$ and $k_n$ by angles proportional to $m$ and $n$, so
# $\langle R_m q, R_n k\rangle = \langle q, R_{n-m} k\rangle$ depends only on the offset $n - m$, and shifting
# every position of a document by the same constant changes nothing but rounding (exercise 6). Restarting
# still keeps every position inside the range the model was trained on. Both claims are measured: each
# document's logits inside a packed row equal its logits when run alone.
#
# 打包把多条短对话拼成一行：块对角因果掩码让每个词元只看到同一文档中更早的词元；位置编号在每个文档内从 0
# 重新开始。对 RoPE 而言注意力只依赖相对位置，所以重新编号在数学上并非必需，但它让位置始终落在训练见过的范围内。
#
# ### The pretrained start / 预训练起点
#
# The model here is not trained from random weights: it is the book LM, pretrained on the Python standard
# library, so it already knows the identifiers the tasks are about and has learned to copy spans of text. SFT
# only has to teach it the *format* (the chat template) and the *instructions*. We measure what that is worth:
# the same architecture, data and learning-rate schedule from random weights, at equal steps.
#
# ### Data quality and synthesis / 数据质量与合成
#
# Because SFT imitates, the data *is* the specification. LIMA {cite}`zhou2023lima` argued that a small set of
# clean demonstrations goes a long way; the converse is that wrong demonstrations are learned just as
# faithfully. Suppose a fraction $\varepsilon$ of the responses to a prompt are a systematic error $\tilde r$
# (here: the answer written backwards). The likelihood optimum is then $\pi(r\mid p) = 1-\varepsilon$,
# $\pi(\tilde r\mid p) = \varepsilon$: *sampling* reproduces the error at rate $\varepsilon$, and greedy decoding
# keeps the right answer only while $\varepsilon < \tfrac12$ and the model is sure of it. At
# $\varepsilon = \tfrac12$ — the arm below — the two answers tie, and which one greedy decoding returns is decided
# by noise.
#
# When clean demonstrations are scarce, a model can write its own, and a **verifier** can filter them. This
# is the synthesis step of rejection-sampling fine-tuning (RFT {cite}`yuan2023rft`, STaR
# {cite}`zelikman2022star`): for each prompt draw $y \sim \pi_\theta(\cdot\mid p)$, keep it only if
# $v(p, y) = 1$, and fine-tune on what is kept. The kept samples are distributed as
# $\pi_\theta(y \mid p, v = 1) \propto \pi_\theta(y\mid p)\, v(p, y)$, and the SFT gradient on them is a
# policy gradient in disguise:
#
# $$
# \nabla_\theta\, \mathbb E_{y\sim\pi_\theta}[v(p, y)] = \mathbb E_{y\sim\pi_\theta}\big[v(p,y)\,\nabla_\theta\log\pi_\theta(y\mid p)\big]
# = P_\theta(v = 1 \mid p)\;\mathbb E\big[\nabla_\theta \log \pi_\theta(y\mid p) \,\big|\, v = 1\big],
# $$
#
# i.e. REINFORCE with a 0/1 reward (the [policy-gradient chapter](03_pg_ac.ipynb)); GRPO later does the same
# with a baseline. Without the filter, training on one's own samples mostly reinforces what the model already
# does, errors included. In the toy every prompt is *generated* by `llmcore` (task families × phrasings, a
# hash-based train/test split), so the whole data pipeline — generate prompts, answer by program or by the
# model, verify, pack — is code that runs in the chapter.
#
# 数据即规范：SFT 会忠实地模仿数据中的错误。缺少干净示范时，可以让模型自己采样、再由验证器过滤（拒绝采样），
# 只保留正确的回答用于微调；这等价于奖励为 0/1 的策略梯度（REINFORCE）。
#
# The diagram follows one generated conversation through the pipeline, drawn from the real `pack` output.

# %%
fig, ax = plt.subplots(figsize=(13, 3.8))
sft.plot_sft_data_path(ax)
plt.show()

# %% [markdown]
# ## Instruction data generated by `llmcore` / 由 llmcore 生成的指令数据
#
# Each family draws an input, renders it with one of several templates, and knows the exact answer (so the
# checker is string equality — the same verifier later serves GRPO as a reward). A hash of the input decides
# whether it is a train or a test instance, so test prompts are never seen in training. The toy run uses two
# families of Python signatures: `fname` ("name of: def open_reader(path, mode):" → `open_reader`) and `fargs`
# (→ `path, mode`) — the same code, two instructions, so the model must read the instruction. The signatures
# are recombined from the words of the corpus's function names and its argument names, so there are millions
# of them: a model cannot memorise answers (with the 695 real stdlib signatures it did, and its exact match on
# new ones stalled at 0.76–0.85) and has to copy the right span. Training uses two phrasings per family; the
# third is never shown (the unseen-phrasing test).
#
# Task text goes through a fixed pre-tokenization before the BPE (`tasks.encode`): each digit, each run of
# letters, of spaces and of punctuation is encoded on its own, so a word copied from the prompt into the answer
# keeps its token ids (the BPE alone would merge `" lexists"` with its leading space into different ids).

# %%
show_source(tasks.make_examples, tasks.encode_chat)

# %% [markdown]
# `encode_chat` returns the ids and a mask that is True on the response; `labels_for` turns them into the
# labels of the loss — the whole of prompt masking:

# %%
show_source(sft.labels_for)

# %%
cfg = sft.toy_config(toy, seed)
for fam in tasks.FAMILIES:
    e = tasks.make_examples([fam], 1, templates="all", seed=3)[0]
    print(f"{fam:8s} {e.prompt!r:34s} -> {e.response!r}")
ex = tasks.make_examples(cfg.families, 2, seed=seed)
ids, mask = tasks.encode_chat(ex[0])
print("\nchat template:", tasks.render(ids))
print("tokens       :", [tasks.render([i]) for i in ids])
print("token ids    :", ids)
print("labels       :", sft.labels_for(ids, mask), " (-100 = not scored)")

# %% [markdown]
# ## Packing / 打包
#
# `pack` fills rows greedily in order (a conversation that does not fit starts a new row; none is split),
# numbers the documents of a row, restarts the positions, and sets the label of each document's first token to
# $-100$ so that no loss crosses a boundary.

# %%
show_source(sft.pack)

# %% [markdown]
# `packed_mask` builds $M_{ts}$ with one broadcast comparison of document ids and a lower triangle;
# `packed_logits` runs the LLaMA's own layers with that mask and the per-document positions (the model's
# `forward` only knows padding masks, so this wrapper calls its modules directly).

# %%
show_source(sft.packed_mask, sft.packed_logits)

# %%
demo = sft.pack(tasks.make_examples(cfg.families, 8, seed=1), 64)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
axes[0].imshow(sft.packed_mask(demo.doc[:1])[0, 0], cmap="Blues")
axes[0].set_title("block-diagonal causal mask (row 0)")
axes[0].set_xlabel("key position s"), axes[0].set_ylabel("query position t")
axes[1].plot(demo.pos[0].numpy(), ".-", label="position id")
axes[1].plot(demo.doc[0].numpy(), ".-", label="document id")
axes[1].set_xlabel("slot in the packed row"), axes[1].legend()
axes[1].set_title("positions restart in each document")
plt.show()

# %% [markdown]
# ## The closed loop / 闭环实验
#
# Fine-tune the book LM on the generated instructions with the masked loss (300 steps, AdamW, warmup + cosine,
# peak learning rate $10^{-3}$). `sft_model` caches the checkpoint under `output/checkpoints/`. Then: exact
# match on held-out prompts in trained and in unseen phrasings; the same run from random weights, stopped at
# step 100 of the same schedule; the HF cross-check; the packing check; and four data arms.
#
# The optimiser step of `sft.train_packed` (the book's one SFT loop; PEFT and the RL warm starts use it too) is
# AdamW on one function of the packed logits and the labels — the masked loss, a shifted cross-entropy that
# skips the $-100$ labels:

# %%
show_source(sft.masked_loss)

# %% [markdown]
# ### The data arms: synthesis and filtering / 数据组：合成与过滤
#
# The four arms share the same 1500 fresh training prompts (another data seed than the main run) and the same
# budget; only the responses differ: (1) the reference answers the task program computes, (2) the same with
# half of them written backwards (a systematic bug), (3) the SFT model's own samples at temperature 1,
# unfiltered, (4) only those samples the verifier accepts. Arm (4) is the synthetic-data row of the
# knowledge map: prompts generated by code, answers generated by the model, quality enforced by a verifier —
# no human-written or program-written answer enters its training set. `rejection_sample` draws the candidates
# and applies the verifier (`tasks.check`, string equality with the known answer); `arm_data` builds the
# four training sets.

# %%
show_source(sft.rejection_sample, sft.arm_data)

# %% [markdown]
# **What the arms measure.** Each arm is a *second* SFT stage: it starts from the SFT model of the main run
# (which already scores about 100% on these families) and trains 60 more steps at a lower learning rate
# ($3\times10^{-4}$). So the corrupted arm measures how fast a systematic error is learned *over* a skill the
# model already has — closer to forgetting than to "training on noisy data from the start" — and the
# synthetic arms measure whether self-generated data keeps that skill. A full fine-tune from the book LM at
# each noise level would answer the other question (how noise limits what is learned); it costs one
# 300-step run per level and is not part of the toy run.

# %%
t0 = time.perf_counter()
res = sft.experiment(toy=toy, seed=seed, device=dev)
elapsed = time.perf_counter() - t0

# %% tags=["nbval-ignore-output"]
print(f"closed loop: {elapsed:.1f} s (SFT training {res.metrics['train_s']:.1f} s when it ran; "
      "0 when loaded from the cache). Wall times depend on the machine's load.")

# %%
loss = np.array(res.metrics["loss"])
k = res.cfg.compare_at
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].semilogy(np.arange(1, len(loss) + 1), loss, alpha=0.8, label="book LM start")
axes[0].semilogy(np.arange(1, k + 1), res.scratch_losses, alpha=0.8, label="random start (first steps)")
axes[0].axvline(k, color="grey", ls=":")
axes[0].set_xlabel("step"), axes[0].set_ylabel("nats / response token"), axes[0].legend()
axes[0].set_title(f"at step {k}: exact match {res.pretrained_em_at_compare:.0%} vs {res.scratch_em:.0%}")
labels = list(res.ablations)
axes[1].bar(range(len(labels)), [res.ablations[x] for x in labels],
            color=["#999999", "#0072B2", "#D55E00", "#E69F00", "#009E73"][:len(labels)])
axes[1].set_xticks(range(len(labels)), labels, rotation=30, ha="right")
axes[1].set_ylabel("held-out exact match"), axes[1].set_ylim(0, 1.05)
axes[1].set_title(f"same budget, different data (verifier accepted {res.acceptance:.0%} of samples)")
plt.show()

# %% [markdown]
# ### Cross-check: our masked loss = HF's `labels = -100` loss; packed = unpacked / 交叉验证：与 HF 的掩码损失一致，打包与单独运行一致
#
# The model is exported with `to_hf()` to a `transformers.LlamaForCausalLM`; HF computes its loss from
# `labels` where prompt tokens are $-100$. Scoring the prompt too changes the number, so the test can fail.

# %%
assert abs(res.our_loss - res.hf_loss) < 1e-5, (res.our_loss, res.hf_loss)
assert abs(res.unmasked_hf_loss - res.hf_loss) > 1e-3
assert res.pack_max_diff < 1e-4
print(f"ours {res.our_loss:.6f}  HF {res.hf_loss:.6f}  (HF without masking: {res.unmasked_hf_loss:.4f})")
print(f"max |packed - alone| logits: {res.pack_max_diff:.1e}; real-token share: packed "
      f"{res.pack_efficiency:.0%} vs padded {res.pad_efficiency:.0%}")
for p, a, r in res.samples:
    print(f"{p!r:52s} -> {a!r:16s} reference {r!r}")

# %% [markdown]
# ## Results / 结果
#
# Three numbers tell the story. On held-out signatures in the trained phrasings the fine-tuned book LM answers
# ≥ 95% exactly. On the *unseen* phrasing it is clearly above zero but far from perfect: "which function does
# def …: define?" is answered like "name of:" (the words *function* and *define* carry over), while "what does
# def …: take?" mostly is not — a 2M-parameter model pretrained on code has little general language to lean on,
# which is exactly why instruction-tuning data for real models covers many phrasings. And at step 100 the
# pretrained start is far ahead of the same model from random weights, which still has to learn what the
# tokens mean before it can learn the task.
#
# The data arms (seed 0: exact match 1.0 before the second stage). Half the responses written backwards are
# learned at once: exact match falls to about 0.54 in 60 steps — at $\varepsilon = \tfrac12$ the reversed
# answer is as likely as the right one, as the theory says, and greedy decoding picks between them almost at
# random. The model's own samples are mostly right already (the verifier accepts about 96% of them), so the
# unfiltered arm costs little (0.98) and the verifier-filtered arm, trained only on accepted samples, keeps
# the skill (0.99) — synthetic data, written by the model and filtered by a program, is as good as the
# reference answers here. The gap between the two synthetic arms is small *because* acceptance is high; on a
# task the model solves half the time, the unfiltered arm would teach its errors at rate ½ as well.
# Seed-by-seed numbers are on the [robustness page](../../book/robustness.md).

# %% tags=["nbval-ignore-output"]
report = sft.make_report(res, toy, str(dev), seed)
for name, value in report.metrics.items():  # trained numbers: they move with the seed and the CPU's kernels
    print(f"{name}: {int(value) if value.is_integer() and value > 1 else round(value, 3)}")
print("\n".join(str(c) for c in report.criteria))

# %%
# NBVAL_CHECK_OUTPUT
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()
assert res.test_em >= 0.95
assert res.ablations["reference data"] - res.ablations["50% corrupted"] > 0.05

# %% [markdown]
# ## Play: ask the SFT model / 动手：向 SFT 模型提问
#
# Type a prompt in a trained phrasing (`"name of: def read_file(path, mode):"`, `"parameters of: def f(a, b):"`)
# or one the model never saw (`"what does def f(a, b): take?"`, `"def f(a, b): what is it called?"`).

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def ask(prompt: str = "name of: def read_file(path, mode):") -> None:
    e = tasks.Example("?", 0, prompt, "", "")
    ans = sft.greedy_answers(res.model, [e], max_new=16)[0]
    print(f"{tasks.render(tasks.prompt_ids(prompt))}{ans}<eos>")


widgets.interact(ask, prompt=widgets.Text(value="name of: def read_file(path, mode):", description="prompt"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Data.** Production SFT sets are human-written and model-written conversations in many domains and
#   languages (tens of thousands to millions), deduplicated, decontaminated against the benchmarks and mixed by
#   hand-tuned proportions. Here the data are two generated tasks whose answers a program knows, so exact
#   match is a perfect metric — real chat has no such checker and is judged by people or by another model.
# - **Synthesis at scale.** RFT/STaR-style pipelines sample many candidates per prompt from a large model,
#   verify them with unit tests, a math checker or a reward model, and deduplicate what is kept; our verifier
#   is string equality and we draw one sample per prompt.
# - **Multi-turn.** Real templates hold a system prompt and many turns, and only the assistant turns are
#   scored; ours has one user and one assistant turn. Tokenizers of production models ship the template as a
#   Jinja string (`tokenizer.apply_chat_template`).
# - **Packing.** Production trainers pass per-document sequence boundaries to a variable-length attention
#   kernel (FlashAttention's `cu_seqlens`) instead of materialising an $L\times L$ mask per row.
# - **Scale.** The book LM has about 2M parameters and was pretrained on one library's source; SFT of real
#   models uses lower learning rates (around $10^{-5}$), LoRA or full fine-tuning on many GPUs, and
#   evaluations of instruction following beyond the training phrasings.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** the page executes in 48–60 s with peak RAM 0.79 GB on the 2-core CPU (measured under
#   load, with the seed-0 SFT checkpoint already cached: the scratch comparison, the four 60-step data arms
#   and the evaluations). Training that checkpoint the first time adds 300 steps of 16 × 64 tokens: from empty
#   caches the page executes in 82 s on the idle 2-core CPU (2026-12-01; 365 s when this notebook's checkpoint
#   was first made, on a heavily shared machine).
# - **Full (`toy=False`):** seven task families, 6000 steps of 32 rows × 128 tokens: 80× the toy's training
#   tokens on the same 2M-parameter model — roughly an hour on this CPU, minutes on one GPU (an estimate: no
#   GPU figures are recorded for this chapter in the [benchmarks page](../../book/benchmarks.md)).
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - SFT 只对回答计分：提示位置的标签为 $-100$，`<eos>` 也是目标。 · SFT scores only the response: prompt
#   labels are $-100$, and the closing `<eos>` is a target too.
# - 损失是整个批次所有回答词元的平均，而不是每条对话平均的平均。 · The loss is a mean over every response
#   token of the batch, not a mean of per-conversation means.
# - 打包需要块对角因果掩码，并且不让标签跨越文档边界；结果与单独运行每条对话一致。 · Packing needs a
#   block-diagonal causal mask and no label across a document boundary; then it equals running each alone.
# - 对 RoPE，注意力只依赖相对位置；位置重置让位置留在训练范围内。 · With RoPE attention depends on
#   relative positions only; restarting them keeps positions in the trained range.
# - 预训练起点在相同步数下远胜随机初始化：微调教的是格式与指令，而不是语言本身。 · A pretrained start
#   beats random weights at equal steps: fine-tuning teaches the format and the instructions, not the language.
# - SFT 忠实地模仿数据，系统性错误同样会被学会；数据即规范。 · SFT imitates its data faithfully, systematic
#   errors included: the data is the specification.
# - 模型自采样并经验证器过滤的数据（拒绝采样）可以替代参考答案；它等价于 0/1 奖励的策略梯度。 ·
#   Self-generated data filtered by a verifier (rejection sampling) can replace reference answers; it is a
#   policy gradient with a 0/1 reward.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `sft_labels(ids, resp_mask)` that returns the HF labels of one conversation (the
#    token id where `resp_mask` is True, `-100` elsewhere) and check it with
#    `llmcore.exercises.check_sft_loss_mask(sft_labels)`.
# 2. **Self-checked.** Write `sft_loss(logits, labels)` for `logits (B, L, V)` and `labels (B, L)`: the mean
#    cross-entropy of `logits[:, t]` against `labels[:, t + 1]` over every label that is not `-100`. Check it
#    with `llmcore.exercises.check_masked_sft_loss(sft_loss)`. Then compute it once more as a mean of per-row
#    means: on which batches do the two differ?
# 3. Train with `mask_prompt=False` for the full budget. Does the final exact match change, or only the speed?
#    Where does the extra loss go (plot the loss on prompt tokens)?
# 4. Add the `fcall` family (`"call lexists on path"` → `lexists(path)`). How many more steps does the model need
#    for ≥ 95%, and which errors remain (look for repeated sub-words)?
# 5. Sample the rejection-sampling arm at temperatures 0.3, 1.0 and 2.0. How do the acceptance rate and the
#    arm's exact match move? Why is temperature 0 useless here?
# 6. Give every document of a packed row continuous positions (`torch.arange(L)` instead of `Packed.pos`) and
#    measure the largest logit difference from running each document alone. Explain the result with RoPE.
# 7. Make the noise ablation a full training per noise level: `sft.train_sft(sft.SFTConfig(corrupt_frac=eps,
#    corrupt_mode="reverse"))` for $\varepsilon \in \{0, 0.1, 0.3, 0.5\}$ from the book LM. Does greedy exact
#    match stay high until $\varepsilon$ approaches ½, as the theory predicts?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. One comprehension:
#
#    ```python
#    def sft_labels(ids, resp_mask):
#        return [i if m else -100 for i, m in zip(ids, resp_mask)]
#    ```
#
#    The checker rejects the unmasked ids, the inverted mask, `0` instead of `-100` (0 is a real token id) and
#    dropping the prompt (the labels must align with the ids).
# 2. Shift the labels, not the logits, and let `cross_entropy` skip `-100`:
#
#    ```python
#    def sft_loss(logits, labels):
#        V = logits.shape[-1]
#        return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
#    ```
#
#    A mean of per-row means weights each conversation equally, whatever its number of response tokens; it
#    equals the token mean only when every row has the same number of scored tokens.
# 3. The mean now runs over every token, and about 79% of them are prompt: the response tokens keep the same
#    per-token gradients but only ~21% of the weight, like a ~5× smaller learning rate on what is evaluated,
#    while the rest goes to predicting the user's (mostly unpredictable, recombined) identifiers. So the
#    reported loss is far higher and not comparable; whether the final exact match changes depends on whether
#    300 steps still suffice at that effective rate — measure it. Plot `masked_loss` with prompt-only labels
#    to see where the extra loss sits.
# 4. `fcall` answers are longer (name, brackets, arguments), so expect more steps; look at the failures: they
#    are copy errors of long identifiers made of several BPE pieces (a piece dropped or repeated).
# 5. Expect the acceptance rate to fall as the temperature rises (more wrong samples) while the accepted
#    samples stay correct, so the filtered arm should hold up better than the unfiltered one. At temperature 0 every
#    sample is the greedy answer: the arm only replays what the model already does and the verifier can at
#    best drop its mistakes — no new correct answers are found.
# 6. The difference stays at float rounding (about $10^{-5}$, the same as with restarted positions): with the
#    block-diagonal mask a token only meets keys of its own document, and RoPE scores depend only on
#    $n - m$, which a constant shift leaves unchanged. With absolute position embeddings it would change every
#    document after the first.
# 7. Expect exact match near 1 for small $\varepsilon$ (the right answer stays the mode) and a collapse
#    towards ½ at $\varepsilon = 0.5$, with sampled answers wrong at rate about $\varepsilon$ throughout.
#    This is the question the chapter's second-stage arms do not answer (they start from a trained model).
# :::
#
# ## References / 参考文献
#
# InstructGPT {cite}`ouyang2022instructgpt`; FLAN {cite}`wei2022flan`; LIMA {cite}`zhou2023lima`;
# rejection-sampling fine-tuning {cite}`yuan2023rft`; STaR {cite}`zelikman2022star`;
# packing without cross-contamination {cite}`krell2021packing`; RoPE {cite}`su2021roformer`; LLaMA
# {cite}`touvron2023llama`. Full entries: [bibliography](../../book/bibliography.md).
