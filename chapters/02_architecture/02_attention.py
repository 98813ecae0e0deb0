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
# # Attention Mechanisms / 注意力机制
#
# **中文摘要：** 注意力是 Transformer 的核心，也是推理时显存的主要消耗者。本章实现多头注意力（MHA）、
# 分组查询注意力（GQA）和多查询注意力（MQA）——三者只差"键值头的数量"这一个参数——并演示如何把训练好的
# MHA 模型按组平均池化成 GQA/MQA；然后实现 FlashAttention 的前向计算：按块（tile）遍历键值、用在线
# softmax 累积结果，从不构造 $N \times N$ 的注意力矩阵，先用 PyTorch 写，再写成 Triton 内核（CPU 上用
# `TRITON_INTERPRET=1` 解释执行，GPU 上编译）。所有变体都与 `scaled_dot_product_attention` 对比到 1e-5；
# 实测朴素注意力的峰值显存随序列长度二次增长、分块注意力线性增长；最后在微型语言模型上给出
# MHA / GQA / MQA 的 KV 缓存大小与验证集损失对照表。
#
# **Learning goals**
# - write MHA, GQA and MQA as one function whose only knob is the number of key/value heads;
# - know what the KV cache costs per token and how GQA/MQA divide it;
# - derive the online softmax and use it to compute exact attention tile by tile (FlashAttention);
# - read a Triton kernel and run it without a GPU;
# - measure memory instead of assuming it.
#
# **Prerequisites:** [Transformer core](01_transformer.ipynb) (the tiny LLaMA, its training loop and corpus).

# %% tags=["parameters"]
toy = True  # True: N up to 2048 for the memory sweep, 300-step KV-variant runs (CPU); False: N to 8192, 3000 steps
device = "auto"
seed = 0
triton_n = 40  # sequence length for the Triton check (the CPU interpreter is slow: keep it small)

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf,kernels] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from llmcore.architecture import attention as A
from llmcore.architecture import flash_triton as FT
from llmcore.core import pick_device, seed_everything, show_source, use_style
from llmcore.core.triton_env import INTERPRET

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, Triton interpreter: {INTERPRET}")

# %% [markdown]
# ## Theory: one knob, three variants
#
# With $H$ query heads of size $D$, scaled dot-product attention for head $h$ is
# {cite}`vaswani2017attention`
#
# $$ O_h = \mathrm{softmax}\!\left(\frac{Q_h K_{g(h)}^\top}{\sqrt D} + M\right) V_{g(h)}, $$
#
# where $g(h)$ says which key/value head query head $h$ reads. With $K$ key/value heads and groups of
# $G = H/K$ consecutive query heads, $g(h) = \lfloor h / G \rfloor$:
#
# | variant | KV heads $K$ | KV cache per token |
# |---|---|---|
# | MHA {cite}`vaswani2017attention` | $H$ | $2 L H D$ values |
# | GQA {cite}`ainslie2023gqa` | $1 < K < H$ | $2 L K D$ |
# | MQA {cite}`shazeer2019mqa` | $1$ | $2 L D$ |
#
# During generation every past token's keys and values are re-read at every step, so the cache size
# (and the memory bandwidth to read it) is what GQA/MQA cut. Ainslie et al. also show that a trained MHA
# model can be **converted**: average the key/value projections of each group's heads, then (optionally)
# uptrain briefly.

# %%
show_source(A.naive_attention, A.grouped_query_attention, A.mha_to_gqa)

# %% [markdown]
# ## FlashAttention: exact attention without the $N \times N$ matrix
#
# Softmax needs the row maximum and the row sum before any output can be formed — or does it? Split the
# keys of a row into tiles. After tile $t$ keep $m$ (max so far), $\ell$ (sum of $e^{s_j - m}$ so far) and
# the unnormalised output $a = \sum_j e^{s_j - m} v_j$. A new tile with scores $s_j$ updates them by
# {cite}`milakov2018online,dao2022flashattention`
#
# $$ m' = \max\!\big(m, \max_j s_j\big), \quad
#    \ell' = e^{m - m'}\ell + \sum_j e^{s_j - m'}, \quad
#    a' = e^{m - m'} a + \sum_j e^{s_j - m'} v_j , $$
#
# and at the end $o = a / \ell$ exactly. Only one $B_q \times B_k$ tile of scores exists at a time, so the
# extra memory is $O(N(D + B_k))$ instead of $O(N^2)$. With a causal mask, tiles entirely above the
# diagonal are skipped. FlashAttention-2 {cite}`dao2024flashattention2` orders the loops this way (queries
# outside, keys inside); the real speed-up comes from keeping tiles in on-chip SRAM, which the Triton
# kernel below expresses.

# %%
show_source(A.flash_attention)

# %% [markdown]
# The same algorithm as a Triton kernel {cite}`tillet2019triton`: each program instance owns `BLOCK_M`
# query rows of one (batch, head) and loops over key tiles. Without a GPU, `llmcore.core.triton_env` sets
# `TRITON_INTERPRET=1` *before* importing Triton, and the interpreter runs the kernel on CPU tensors.

# %%
show_source(FT._flash_fwd_kernel.fn if hasattr(FT._flash_fwd_kernel, "fn") else FT._flash_fwd_kernel)

# %% [markdown]
# ## Cross-check: every variant equals PyTorch's SDPA
#
# Random $q, k, v$ (batch 2, 4 query heads, $N = 70$, $D = 16$ — not a multiple of the tile sizes, so the
# ragged edge is tested too; the Triton kernel gets batch 1 and $N = 40$ because the CPU interpreter is
# slow), for $K = 4, 2, 1$ and causal or not, against `torch.nn.functional.scaled_dot_product_attention`
# in fp32.

# %%
errors, triton_errors = A.equivalence_checks(seed, n=70, triton_n=triton_n)
for key in errors:
    print(f"{key:<34} max|diff| = {errors[key]:.1e}")
for key in triton_errors:
    print(f"{key:<34} max|diff| = {triton_errors[key]:.1e}")
assert max(errors.values()) < 1e-5 and max(triton_errors.values()) < 1e-5

# %% [markdown]
# ## Memory: quadratic vs linear, measured
#
# `PeakMemory` is a `TorchDispatchMode`: it sees every tensor that every torch op creates and frees, and
# records the peak of live bytes — a measurement of what the code allocates, on any device (on CUDA
# compare `torch.cuda.max_memory_allocated`, which `benchmarks/attention_memory.py` prints).

# %%
show_source(A.PeakMemory)

# %%
ns = [256, 512, 1024, 2048] if toy else [512, 1024, 2048, 4096, 8192]
mem = A.memory_sweep(ns, seed=seed)
N = np.array(mem["N"])
fig, ax = plt.subplots(figsize=(6, 3.4))
ax.loglog(N, np.array(mem["naive"]) / 2**20, "o-", label="naive (scores + probabilities)")
ax.loglog(N, np.array(mem["flash"]) / 2**20, "s-", label="tiled (128 x 128 tiles)")
ax.loglog(N, mem["naive"][0] / 2**20 * (N / N[0]) ** 2, "k:", lw=1, label=r"$\propto N^2$")
ax.loglog(N, mem["flash"][0] / 2**20 * (N / N[0]), "k--", lw=1, label=r"$\propto N$")
ax.set_xlabel("sequence length N"), ax.set_ylabel("peak extra memory (MiB)"), ax.legend(fontsize=8)
ax.set_title("one head, D = 64, causal, fp32", fontsize=10)
plt.show()
for n, a, b in zip(N, mem["naive"], mem["flash"]):
    print(f"N={n:>5}: naive {a / 2**20:8.2f} MiB   tiled {b / 2**20:6.2f} MiB   ratio {b / a:.3f}")

# %% [markdown]
# ## KV cache size vs quality on the tiny LM
#
# The tiny LM's architecture with 4 query heads is trained three times with the same budget and seed:
# 4 KV heads (MHA), 2 (GQA) and 1 (MQA). The MHA model is then converted to GQA-2 and MQA by
# mean-pooling its key/value heads — first as is, then after uptraining for 10% of the original steps.

# %%
show_source(A.kv_variants_table)

# %%
rows = A.kv_variants_table(toy=toy, seed=seed, device=str(dev))
print(f"{'variant':<28}{'KV heads':>9}{'KV bytes/token':>16}{'params':>9}{'val loss':>10}")
for r in rows:
    print(f"{r['variant']:<28}{r['kv_heads']:>9}{r['kv_bytes_per_token']:>16}{r['params']:>9}{r['val_loss']:>10.4f}")

# %% [markdown]
# Fewer KV heads shrink the cache proportionally at a small cost in loss when the model is trained that
# way. Pooling a trained MHA model without uptraining costs much more (the heads were not trained to be
# averaged); a short uptraining recovers most of it, which is Ainslie et al.'s recipe (~5% of the
# pre-training compute).

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
from llmcore.architecture.pretrained import corpus_ids, unigram_loss

tr_ids, va_ids = corpus_ids()
res = A.AttentionResult(errors, triton_errors, mem, rows, unigram_loss(tr_ids, va_ids, 264))
report = A.make_report(res, toy, str(dev), seed)
print(report.summary())
assert report.passed, report.failures()

# %% [markdown]
# ## Play: tile sizes
#
# The tile size trades memory for the number of loop iterations (on a GPU: for SRAM use and parallelism).
# The result is the same for every tile size.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def tiles(block: int = 128, n: int = 1024) -> None:
    q, k, v = (torch.randn(1, 1, n, 64) for _ in range(3))
    peak = A.peak_memory(A.flash_attention, q, k, v, True, block, block)
    err = A.max_error_vs_sdpa(lambda *a, **c: A.flash_attention(*a, block_q=block, block_k=block, **c), q, k, v, True)
    naive = A.peak_memory(A.naive_attention, q, k, v, True)
    print(f"N={n}, tile {block}x{block}: tiled peak {peak / 2**20:.2f} MiB vs naive {naive / 2**20:.2f} MiB; "
          f"max|diff vs SDPA| = {err:.1e}")


widgets.interact(tiles, block=widgets.Dropdown(options=[32, 64, 128, 256, 512], value=128),
                 n=widgets.Dropdown(options=[256, 512, 1024, 2048], value=1024));

# %% [markdown]
# ## Exercises
#
# 1. Instead of mean-pooling, keep only the first head of each group (Ainslie et al. compare both). Which
#    starts better, and which recovers faster with the same uptraining?
# 2. Write the backward pass of `flash_attention`: which statistics from the forward pass must be kept
#    (hint: the log-sum-exp per row), and what is recomputed?
# 3. Change the Triton kernel to skip the mask computation on tiles entirely below the diagonal. Check it
#    still equals SDPA.
# 4. Using the KV formula, how many tokens of cache fit in 80 GB for Llama-2-70B (80 layers, 64 query heads,
#    8 KV heads, D = 128, fp16), and how many would fit with MHA?
#
# ## References
#
# Vaswani et al. {cite}`vaswani2017attention`; MQA {cite}`shazeer2019mqa`; GQA {cite}`ainslie2023gqa`;
# online softmax {cite}`milakov2018online`; FlashAttention {cite}`dao2022flashattention` and FlashAttention-2
# {cite}`dao2024flashattention2`; Triton {cite}`tillet2019triton`. Full entries:
# [bibliography](../../book/bibliography.md).
