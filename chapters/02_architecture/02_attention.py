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
# MHA / GQA / MQA 的 KV 缓存大小与验证集损失对照表，并在参数量相同的条件下用多个随机种子比较三者的损失，
# 看清楚差距是否超出种子之间的波动。理论部分推导缩放点积注意力中 $1/\sqrt D$ 的来源、KV 缓存的大小公式，
# 以及在线 softmax 的不变量（为什么分块计算得到的结果是精确的）。
#
# **Learning goals**
# - write MHA, GQA and MQA as one function whose only knob is the number of key/value heads;
# - know what the KV cache costs per token and how GQA/MQA divide it;
# - derive the online softmax and use it to compute exact attention tile by tile (FlashAttention);
# - read a Triton kernel and run it without a GPU;
# - measure memory instead of assuming it;
# - compare architectures fairly: equal parameter count, several seeds, paired differences.
#
# **Prerequisites:** [Transformer core](01_transformer.ipynb) (the tiny LLaMA, its training loop and corpus).

# %% tags=["parameters"]
toy = True  # True: N up to 2048 for the memory sweep, 300-step KV-variant runs (CPU); False: N to 8192, 3000 steps
device = "auto"
seed = 0
kv_seeds = 2  # seeds of the equal-size MHA/GQA/MQA comparison (with 3 the toy run took 103 s: over its 90 s budget)
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

from llmcore.architecture import attention, flash_triton
from llmcore.architecture.pretrained import corpus_ids, unigram_loss
from llmcore.core import pick_device, seed_everything, show_source, use_style
from llmcore.core.triton_env import INTERPRET

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}, Triton interpreter: {INTERPRET}")

# %% [markdown]
# ## Theory / 理论
#
# ### Scaled dot-product attention / 缩放点积注意力
#
# A query $q_i \in \mathbb R^D$ scores every key $k_j$ by a dot product, the scores become weights by a
# softmax, and the output is the weighted mean of the values {cite}`vaswani2017attention`:
#
# $$ o_i = \sum_j p_{ij} v_j, \qquad p_{ij} = \frac{e^{s_{ij}}}{\sum_{j'} e^{s_{ij'}}}, \qquad
#    s_{ij} = \frac{q_i \cdot k_j}{\sqrt D} + M_{ij}, $$
#
# or for all rows at once $O = \mathrm{softmax}(QK^\top/\sqrt D + M)\,V$. **Why $\sqrt D$:** if the
# entries of $q$ and $k$ are independent with mean 0 and variance 1, then
# $\mathrm{Var}(q\cdot k) = \sum_{d=1}^{D}\mathrm{Var}(q_d k_d) = D$. Without the scale the scores' spread grows
# like $\sqrt D$, the softmax saturates to a one-hot vector and its gradient
# $\partial p_i/\partial s_j = p_i(\delta_{ij} - p_j)$ vanishes; dividing by $\sqrt D$ keeps the scores at unit
# variance whatever the head size. The **causal mask** $M_{ij} = -\infty$ for $j > i$ (else 0) gives the
# future weight $e^{-\infty} = 0$: token $i$ sees only tokens $\le i$, so one forward pass trains every
# position's next-token prediction at once.
#
# 中文：每个查询向量与所有键做点积得到打分，softmax 把打分变成权重，输出是值向量的加权平均。除以 $\sqrt D$
# 是为了让打分的方差保持为 1，避免 softmax 饱和、梯度消失；因果掩码让第 $i$ 个词元只能看到它之前的词元。
#
# ### Heads and groups: MHA, GQA, MQA / 多头与分组
#
# With $H$ query heads of size $D = d/H$, each head runs its own attention; head $h$ reads key/value
# head $g(h)$:
#
# $$ O_h = \mathrm{softmax}\!\left(\frac{Q_h K_{g(h)}^\top}{\sqrt D} + M\right) V_{g(h)}, \qquad
#    g(h) = \lfloor h / G \rfloor,\quad G = H / K, $$
#
# where $K$ is the number of key/value heads and $G$ the group size: $G$ consecutive query heads share one
# key/value head. The only knob is $K$:
#
# | variant | KV heads $K$ | KV cache per token | attention weights per layer |
# |---|---|---|---|
# | MHA {cite}`vaswani2017attention` | $H$ | $2 L H D$ values | $4d^2$ |
# | GQA {cite}`ainslie2023gqa` | $1 < K < H$ | $2 L K D$ | $2d^2 + 2dKD$ |
# | MQA {cite}`shazeer2019mqa` | $1$ | $2 L D$ | $2d^2 + 2dD$ |
#
# ($q$ and $o$ projections are $d \times d$ each; $k$ and $v$ are $d \times KD$.) During generation every
# past token's keys and values are re-read at every step, so decoding is bound by the bytes of the
# **KV cache** $= 2 \cdot L \cdot K \cdot D \cdot \text{bytes} \cdot \text{tokens} \cdot \text{batch}$
# {cite}`pope2023efficiently`. Llama-3-8B ($L = 32$, $H = 32$, $K = 8$, $D = 128$, bf16) stores
# $2 \cdot 32 \cdot 8 \cdot 128 \cdot 2 = 131{,}072$ bytes = 128 KiB per token; with MHA it would be 512 KiB,
# so an 8k-token context costs 1 GiB instead of 4 GiB per sequence.
#
# 中文：$K$ 个键值头、每组 $G=H/K$ 个查询头共享一个键值头。KV 缓存按 $K$ 成比例缩小：GQA/MQA 省的是推理时
# 反复读取的显存带宽，代价是注意力的表达能力变弱——这个代价有多大，要在参数量相同、多个随机种子下测量。
#
# Ainslie et al. also show that a trained MHA model can be **converted**: average the key/value
# projections of each group's heads, then uptrain briefly. The diagram shows which key/value head each
# query head reads.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 2.9))
for ax, kv in zip(axes, (8, 2, 1)):
    attention.plot_head_grouping(ax, n_heads=8, n_kv_heads=kv)
fig.suptitle("Head grouping: boxes of one colour share a key/value head (bottom); its width ~ KV cache", fontsize=10, y=1.06)
plt.show()

# %% [markdown]
# ### The online softmax / 在线 softmax
#
# The softmax of a row needs its maximum (for stability) and its normaliser before any output can be
# formed — or does it? Process the keys of a row in tiles and keep three running statistics after the
# tiles seen so far: the maximum $m$, the normaliser $\ell = \sum_{j \text{ seen}} e^{s_j - m}$ and the
# unnormalised output $a = \sum_{j \text{ seen}} e^{s_j - m} v_j$. A new tile with scores $s_j$ updates them by
# {cite}`milakov2018online,dao2022flashattention`
#
# $$ m' = \max\!\big(m, \max_{j \in \text{tile}} s_j\big), \quad
#    \ell' = e^{m - m'}\ell + \sum_{j \in \text{tile}} e^{s_j - m'}, \quad
#    a' = e^{m - m'} a + \sum_{j \in \text{tile}} e^{s_j - m'} v_j . $$
#
# **Why it is exact.** Induction on the tiles: if $\ell = \sum_{\text{seen}} e^{s_j - m}$, then
# $e^{m - m'}\ell = \sum_{\text{seen}} e^{s_j - m'}$ — multiplying by $e^{m-m'}$ only moves the reference point
# from $m$ to $m'$ — and adding the new tile's terms gives $\ell' = \sum_{\text{seen} \cup \text{tile}} e^{s_j - m'}$;
# the same holds for $a$. After the last tile, $m$ is the row maximum and
# $a / \ell = \sum_j e^{s_j - m} v_j / \sum_j e^{s_j - m} = \sum_j p_j v_j$: the exact attention output, in any
# tile order. Every exponent is $\le 0$, so nothing overflows. Only one $B_q \times B_k$ tile of scores
# exists at a time: extra memory $O(N(D + B_k))$ instead of $O(N^2)$.
#
# 中文：在线 softmax 只保存每行的最大值 $m$、归一化因子 $\ell$ 和未归一化的输出 $a$；遇到更大的最大值时，用
# $e^{m-m'}$ 把旧的累加量换算到新的参考点。归纳可证最后的 $a/\ell$ 与一次性计算的 softmax 完全相同。

# %% [markdown]
# ## The implementation / 实现
#
# `naive_attention` is the formula with the whole $N \times N$ score matrix (K and V copied to $H$ heads);
# `grouped_query_attention` reshapes the $H$ query heads into $(K, G)$ groups and lets broadcasting share
# each key/value head without copying it; `mha_to_gqa` is Ainslie et al.'s mean-pooling conversion.

# %%
show_source(attention.naive_attention, attention.grouped_query_attention, attention.mha_to_gqa)

# %% [markdown]
# ### FlashAttention: exact attention without the $N \times N$ matrix / 不构造 $N \times N$ 矩阵的精确注意力
#
# The online-softmax step is one small function — the whole idea of FlashAttention's forward pass:

# %%
show_source(attention.online_softmax_update)

# %% [markdown]
# `flash_attention` wraps it in two loops: query tiles outside, key tiles inside (FlashAttention-2's order
# {cite}`dao2024flashattention2`). With a causal mask, tiles entirely above the diagonal are skipped and only
# tiles that cross it are masked. On a GPU the speed-up comes from keeping the tiles in on-chip SRAM, which
# the Triton kernel below expresses; in torch on a CPU the loop shows the memory saving, not the speed.

# %%
show_source(attention.flash_attention)

# %% [markdown]
# The same algorithm as a Triton kernel {cite}`tillet2019triton`: each program instance owns `BLOCK_M`
# query rows of one (batch, head) and loops over key tiles. Without a GPU, `llmcore.core.triton_env` sets
# `TRITON_INTERPRET=1` *before* importing Triton, and the interpreter runs the kernel on CPU tensors.

# %%
show_source(flash_triton._flash_fwd_kernel.fn if hasattr(flash_triton._flash_fwd_kernel, "fn") else flash_triton._flash_fwd_kernel)

# %% [markdown]
# ## Cross-check: every variant equals PyTorch's SDPA / 交叉验证：每个变体都等于 PyTorch 的 SDPA
#
# Random $q, k, v$ (batch 2, 4 query heads, $N = 70$, $D = 16$ — not a multiple of the tile sizes, so the
# ragged edge is tested too; the Triton kernel gets batch 1 and $N = 40$ because the CPU interpreter is
# slow), for $K = 4, 2, 1$ and causal or not, against `torch.nn.functional.scaled_dot_product_attention`
# in fp32.

# %%
errors, triton_errors = attention.equivalence_checks(seed, n=70, triton_n=triton_n)
for key in errors:
    print(f"{key:<34} max|diff| = {errors[key]:.1e}")
for key in triton_errors:
    print(f"{key:<34} max|diff| = {triton_errors[key]:.1e}")
assert max(errors.values()) < 1e-5 and max(triton_errors.values()) < 1e-5

# %% [markdown]
# ## Memory: quadratic vs linear, measured / 显存：二次与线性增长的实测
#
# `PeakMemory` is a `TorchDispatchMode`: it sees every tensor that every torch op creates and frees, and
# records the peak of live bytes — a measurement of what the code allocates, on any device (on CUDA
# compare `torch.cuda.max_memory_allocated`, which `benchmarks/attention_memory.py` prints).

# %%
show_source(attention.PeakMemory)

# %%
ns = [256, 512, 1024, 2048] if toy else [512, 1024, 2048, 4096, 8192]
mem = attention.memory_sweep(ns, seed=seed)
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
# ## KV cache size vs quality on the tiny LM / 微型模型上的 KV 缓存大小与质量
#
# The tiny LM's architecture with 4 query heads is trained three times with the same budget and seed:
# 4 KV heads (MHA), 2 (GQA) and 1 (MQA). The MHA model is then converted to GQA-2 and MQA by
# mean-pooling its key/value heads — first as is, then after uptraining for 10% of the original steps.

# %%
show_source(attention.kv_variants_table)

# %%
rows = attention.kv_variants_table(toy=toy, seed=seed, device=str(dev))
print(f"{'variant':<28}{'KV heads':>9}{'KV bytes/token':>16}{'params':>9}{'val loss':>10}")
for r in rows:
    print(f"{r['variant']:<28}{r['kv_heads']:>9}{r['kv_bytes_per_token']:>16}{r['params']:>9}{r['val_loss']:>10.4f}")

# %% [markdown]
# Two things in this table are solid: the KV bytes (a formula) and the **conversion** result — pooling a
# trained MHA model without uptraining costs far more than any trained variant (the heads were not trained to
# be averaged), and a short uptraining recovers most of it, which is Ainslie et al.'s recipe (~5% of the
# pre-training compute). What the table can *not* support is a ranking of the trained variants by loss: it is
# one seed, and the models differ in size — dropping key/value heads also drops parameters (134k → 126k →
# 122k). The next section fixes both before drawing any conclusion.

# %% [markdown]
# ### Equal size, several seeds / 参数量相同、多个随机种子
#
# A fair comparison changes one thing. `equal_size_ffn` gives the weights that GQA/MQA free in the
# key/value projections to the SwiGLU layer instead ($2dD$ per dropped head and layer, $3d$ per hidden
# unit), so all three models have the same parameter count (GQA-2 is 128 weights, 0.1%, short because
# 4096 / 192 is not an integer). Each is trained with the same recipe for every seed; a seed changes both
# the initialisation and the batch order. Because MHA and GQA trained with the same seed see the same
# batches, the **paired** difference $\mathcal L_{\text{GQA}}(s) - \mathcal L_{\text{MHA}}(s)$ cancels part of
# the seed-to-seed noise that both share.

# %%
show_source(attention.equal_size_ffn)

# %%
mha_row = next(r for r in rows if r["variant"] == "MHA")  # seed-0 MHA above: same config and recipe, reused
seed_rows = attention.kv_seed_sweep(tuple(seed + i for i in range(kv_seeds)), toy=toy, device=str(dev),
                            known={("MHA", seed): mha_row["val_loss"]})
summary = attention.seed_summary(seed_rows)
print(f"{'variant':<8}{'KV heads':>9}{'FFN':>6}{'params':>9}" + "".join(f"{'seed ' + str(s):>10}" for s in
      sorted({r['seed'] for r in seed_rows})) + f"{'mean':>9}{'- MHA (paired)':>17}")
for name, kv in attention.KV_VARIANTS:
    mine = [r for r in seed_rows if r["variant"] == name]
    st = summary[name]
    print(f"{name:<8}{kv:>9}{mine[0]['ffn_hidden']:>6}{mine[0]['params']:>9}"
          + "".join(f"{r['val_loss']:>10.4f}" for r in mine) + f"{st['mean']:>9.4f}"
          + (f"{st['diff_mean']:>+10.4f} ± {st['diff_std']:.4f}" if name != "MHA" else f"{'':>17}"))
fig, ax = plt.subplots(figsize=(5.5, 3))
for x, (name, _) in enumerate(attention.KV_VARIANTS):
    losses = [r["val_loss"] for r in seed_rows if r["variant"] == name]
    ax.plot([x] * len(losses), losses, "o", alpha=0.6, color=f"C{x}")
    ax.plot([x - 0.2, x + 0.2], [np.mean(losses)] * 2, "k-", lw=2)
ax.set_xticks(range(3), [n for n, _ in attention.KV_VARIANTS]), ax.set_ylabel("val loss (nats/byte)")
ax.set_title(f"equal parameter count, {kv_seeds} seeds (dots) and their mean (bar)", fontsize=9)
plt.show()

# %% [markdown]
# **What the seeds say.** The seed-to-seed spread of one variant (about 0.05–0.1 nats here) is as large as
# the gaps between variants in the single-seed table above, and at equal size the order can flip: with
# seed 0, equal-size GQA-2 is *better* than the smaller GQA-2 of the table and equal-size MQA is worse than the
# smaller MQA. With three seeds (0, 1, 2; measured once with `kv_seeds = 3`, 103 s on this CPU) the paired
# differences were GQA-2 − MHA $= +0.05 \pm 0.10$ and MQA − MHA $= +0.15 \pm 0.10$ nats/byte (mean ± sample
# std over seeds): **GQA-2 is indistinguishable from MHA at this scale, MQA is probably somewhat worse**, and
# neither statement is strong — a standard error of $0.10/\sqrt 3 \approx 0.06$ makes the MQA gap about
# 2.6 standard errors, the GQA gap less than one. That matches the published picture at scale (GQA close to
# MHA, MQA measurably worse {cite}`ainslie2023gqa`), but this toy could not establish it on its own: a claim
# about loss needs equal size and enough seeds that the gap exceeds the noise. The KV-cache saving, in
# contrast, is exact.
#
# 中文：单个种子的差距与种子之间的波动同样大，不能据此给三种变体排名。参数量相同、三个种子下，GQA-2 与 MHA
# 无法区分，MQA 可能略差（约 2.6 个标准误），与论文在大模型上的结论一致，但本玩具实验本身不足以证明；
# KV 缓存的节省则是精确的。

# %% [markdown]
# ## Results / 结果
#
# The checked cell prints each criterion (what holds on any machine, with its measured value); every
# measured metric follows in the next cell.

# %%
# NBVAL_CHECK_OUTPUT
tr_ids, va_ids = corpus_ids()
res = attention.AttentionResult(errors, triton_errors, mem, rows, unigram_loss(tr_ids, va_ids, 264), seed_rows)
report = attention.make_report(res, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print("\n".join(f"{k}: {round(v, 4)}" for k, v in report.metrics.items()))

# %% [markdown]
# ## Play: tile sizes / 动手：分块大小
#
# The tile size trades memory for the number of loop iterations (on a GPU: for SRAM use and parallelism).
# The result is the same for every tile size.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def tiles(block: int = 128, n: int = 1024) -> None:
    q, k, v = (torch.randn(1, 1, n, 64) for _ in range(3))
    peak = attention.peak_memory(attention.flash_attention, q, k, v, True, block, block)
    err = attention.max_error_vs_sdpa(lambda *a, **c: attention.flash_attention(*a, block_q=block, block_k=block, **c), q, k, v, True)
    naive = attention.peak_memory(attention.naive_attention, q, k, v, True)
    print(f"N={n}, tile {block}x{block}: tiled peak {peak / 2**20:.2f} MiB vs naive {naive / 2**20:.2f} MiB; "
          f"max|diff vs SDPA| = {err:.1e}")


widgets.interact(tiles, block=widgets.Dropdown(options=[32, 64, 128, 256, 512], value=128),
                 n=widgets.Dropdown(options=[256, 512, 1024, 2048], value=1024));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Speed.** Our tiled attention is a Python loop over tiles: it shows the memory saving, not the speed.
#   FlashAttention's speed comes from fusing the loop into one GPU kernel that keeps tiles in on-chip SRAM
#   and never writes scores to HBM (an IO-complexity argument), plus a backward pass that recomputes the
#   scores from the saved log-sum-exp per row. The Triton kernel here is forward-only and untuned.
# - **Precision.** Production kernels compute in bf16/fp16 with fp32 accumulators; every check here is fp32.
# - **Scale of the KV comparison.** Two layers, $d = 64$, 4 query heads, 300 steps, 2–3 seeds. Published
#   comparisons train billion-parameter models for hundreds of billions of tokens; here GQA/MQA save
#   almost nothing (the cache is tiny) and the loss gaps are within seed noise.
# - **Decoding.** Production servers store the KV cache in pages (the inference chapter) and read it with
#   a decode-specialised kernel (one query row against a long cache, split across the sequence).
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page, `run.py --module attention --toy`):** 75 s wall and 0.51 GB peak RAM on the 2-core CPU
#   with the default 2 seeds in the equal-size comparison, measured under load with `/usr/bin/time -v`; with
#   3 seeds it took 103 s, over the 90 s toy budget. Without the comparison (SDPA checks, Triton interpreter,
#   memory sweep to $N = 2048$, the 5-model KV table) the loop took 30 s: each extra 300-step model costs about 9 s.
# - **Full (`toy=False`):** 3000-step runs, 5 seeds and $N$ up to 8192: roughly 20 × the training time of the
#   toy, about 25–30 min on this CPU; minutes on one GPU. The naive $N = 8192$ score matrix alone is
#   256 MiB per head in fp32.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 注意力 $=\mathrm{softmax}(QK^\top/\sqrt D + M)V$；除以 $\sqrt D$ 让打分方差为 1，避免 softmax 饱和。 ·
#   Scaled dot-product attention divides by $\sqrt D$ so the scores keep unit variance and the softmax does not saturate.
# - MHA、GQA、MQA 只差键值头数 $K$；KV 缓存为 $2LKD$ 个值每词元，随 $K$ 成比例缩小。 · MHA, GQA and MQA
#   differ only in the number of key/value heads; the KV cache per token is $2LKD$ values.
# - 训练好的 MHA 可以按组平均池化成 GQA，短暂继续训练即可恢复大部分损失。 · A trained MHA model converts to
#   GQA by mean-pooling each group's heads, and a short uptraining recovers most of the loss.
# - 在线 softmax 只保存 $m$、$\ell$、$a$ 三个量，分块计算的结果与一次性计算完全相同。 · The online softmax keeps
#   a running max, normaliser and output; tile by tile it gives exactly the same result.
# - 分块注意力的额外显存随序列长度线性增长，朴素实现二次增长（实测）。 · Tiled attention's extra memory grows
#   linearly with the sequence length, naive attention's quadratically, as measured.
# - 比较架构要在参数量相同、多个种子下看成对差值；单个种子的差距可能只是噪声。 · Compare architectures at
#   equal size over several seeds with paired differences; a single-seed gap can be noise.
# ```

# %% [markdown]
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `online_softmax_update(m, ell, acc, s, v)` that folds one tile of scores
#    `s (R, C)` and values `v (C, D)` into the running row max `m (R, 1)`, normaliser `ell (R, 1)` and
#    unnormalised output `acc (R, D)`, and returns the three updated tensors. Check it with
#    `llmcore.exercises.check_online_softmax(online_softmax_update)`.
# 2. **Self-checked.** Write `repeat_kv(x, n_rep)` that expands key/value heads `(B, K, S, D)` to
#    `(B, K * n_rep, S, D)` so that query head $h$ reads key/value head $\lfloor h / n_{rep} \rfloor$; check it with
#    `llmcore.exercises.check_repeat_kv(repeat_kv)`. Why is `x.repeat(1, n_rep, 1, 1)` wrong?
# 3. Instead of mean-pooling, keep only the first head of each group (Ainslie et al. compare both). Which
#    starts better, and which recovers faster with the same uptraining?
# 4. Write the backward pass of `flash_attention`: which statistics from the forward pass must be kept
#    (hint: the log-sum-exp per row), and what is recomputed?
# 5. Change the Triton kernel to skip the mask computation on tiles entirely below the diagonal. Check it
#    still equals SDPA.
# 6. Using the KV formula, how many tokens of cache fit in 80 GB for Llama-2-70B (80 layers, 64 query heads,
#    8 KV heads, D = 128, fp16), and how many would fit with MHA?
# 7. Run the equal-size comparison with `kv_seeds = 5`. How large must the MQA − MHA gap be, relative to the
#    paired standard deviation, before you would call it real?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Three lines after the new maximum:
#
#    ```python
#    def online_softmax_update(m, ell, acc, s, v):
#        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
#        alpha = torch.exp(m - m_new)                   # moves the old sums to the new reference point
#        p = torch.exp(s - m_new)
#        return m_new, alpha * ell + p.sum(-1, keepdim=True), alpha * acc + p @ v
#    ```
#
#    The checker rejects an `acc` that is not rescaled, exponentials taken against the old maximum (they
#    overflow or are off by $e^{m'-m}$) and a missing `m` in the returned tuple.
# 2. `x.repeat_interleave(n_rep, dim=1)`, or without a copy until the reshape:
#    `x[:, :, None].expand(B, K, n_rep, S, D).reshape(B, K * n_rep, S, D)`. `repeat` *tiles* the heads
#    (k0, k1, k0, k1), so query head 1 would read key/value head 1 instead of 0: the groups must be consecutive.
# 3. First-head selection starts worse (it throws away the other heads' information) and recovers more
#    slowly; Ainslie et al. report mean-pooling best.
# 4. Keep the output $O$ and the per-row log-sum-exp $L = m + \log \ell$. In the backward pass recompute
#    each score tile from $Q, K$ and $P = e^{S - L}$ from $L$, so the $N \times N$ matrix is never stored;
#    with $D_i = \sum_d dO_{id} O_{id}$: $dV = P^\top dO$, $dP = dO\,V^\top$, $dS = P \odot (dP - D)$,
#    $dQ = dS\,K/\sqrt D$, $dK = dS^\top Q/\sqrt D$.
# 5. A tile is entirely below the diagonal when its last column is at most its first row (plus the cache
#    offset); there the `tl.where` can be skipped. The SDPA check of this chapter must still pass.
# 6. Per token: $2 \cdot 80 \cdot 8 \cdot 128 \cdot 2 = 327{,}680$ bytes (320 KiB), so 80 GB hold about
#    244,000 tokens (ignoring the weights); MHA needs 8 × as much, about 30,500 tokens.
# 7. With $n$ seeds the standard error of the mean paired difference is $\sigma/\sqrt n$; a gap of more than
#    about 2–3 standard errors (a paired $t$-test) is unlikely to be noise. With $\sigma \approx 0.1$ and 5 seeds
#    that is a gap of about 0.1–0.13 nats.
# :::
#
# ## References / 参考文献
#
# Vaswani et al. {cite}`vaswani2017attention`; MQA {cite}`shazeer2019mqa`; GQA {cite}`ainslie2023gqa`;
# KV-cache cost in inference {cite}`pope2023efficiently`; online softmax {cite}`milakov2018online`; FlashAttention {cite}`dao2022flashattention` and FlashAttention-2
# {cite}`dao2024flashattention2`; Triton {cite}`tillet2019triton`. Full entries:
# [bibliography](../../book/bibliography.md).
