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
# # Decoding Strategy: Samplers, KV Cache, Speculative Decoding and Quantization / 解码策略：采样、KV 缓存、投机解码与量化
#
# **中文摘要：** 语言模型每一步只给出下一个词元的 logits，"怎么选"决定了生成的质量和速度。本章在本书训练的
# 微型 LLaMA 上实现贪心、温度、top-k、top-p、重复惩罚与束搜索，并逐一与 Hugging Face 的 logits
# processor 和 `generate(num_beams=...)` 逐位比对；实现一个连续、预分配、支持 GQA 的 KV 缓存，验证有无缓存
# 生成的词元完全相同、缓存字节数等于公式 $2 \times L \times K \times D \times \text{bytes} \times
# \text{tokens} \times B$；实现投机解码（小模型起草、大模型一次验证），输出与目标模型贪心解码逐字相同；
# 最后实现 INT8（absmax / 零点，逐张量 / 逐通道）、分组 INT4（两个值打包进一个字节）、LLM.int8 离群值分解、
# FP8（E4M3/E5M2）与 INT8 KV 缓存，用真实存储字节和困惑度衡量每种方案。
#
# **Learning goals**
# - write every logits processor of `generate` as one line of tensor code, and prove it equals HF's;
# - see why a KV cache turns $O(S^2)$ work per generated token into $O(S)$, and account for its bytes
#   (GQA/MQA divide them by $H/K$);
# - understand why speculative decoding is *exact* for greedy decoding and what the acceptance rate buys;
# - quantize weights to INT8/INT4/FP8 with real packed storage and measure what it costs in perplexity.
#
# **Prerequisites:** [Transformer core](01_transformer.ipynb) (the tiny LLaMA and its training),
# [Attention](02_attention.ipynb) (MHA/GQA/MQA).
#
# ```{note}
# This chapter is GPU-backed: with `device="cuda"` the same cells also report
# `torch.cuda.max_memory_allocated` and tokens/s (section *On a GPU*). The executed copy in the book was run
# on a 2-core CPU: **no GPU run has been recorded yet** (the session that wrote the chapter had no GPU);
# memory figures below are byte-accounted.
# ```

# %% tags=["parameters"]
toy = True  # True: short generations, 16 validation windows for perplexity (CPU, ~1 min); False: longer runs
device = "auto"  # "cuda" adds allocator peaks and tokens/s for weights and KV cache
seed = 0
play_prompt = "Return the "  # the prompt whose next-token distribution the play cell shows

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from llmcore.architecture import decoding as D
from llmcore.architecture import kv_cache
from llmcore.architecture import quantization as Q
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory
#
# **Sampling.** Given logits $\ell \in \mathbb R^V$ for the next token, the processors of HF `generate` run in
# this order: the repetition penalty {cite}`keskar2019ctrl`, then temperature $\tau$:
#
# $$
# \ell_i \leftarrow
# \begin{cases}\ell_i/\theta & \ell_i > 0\\ \ell_i\,\theta & \ell_i \le 0\end{cases}\ (i \in \text{context}),
# \qquad p_i = \frac{e^{\ell_i/\tau}}{\sum_j e^{\ell_j/\tau}} ,
# $$
#
# then top-$k$ keeps the $k$ largest logits and top-$p$ (nucleus, {cite}`holtzman2020curious`) keeps the smallest
# set of most likely tokens whose mass reaches $p$; greedy is $\arg\max_i \ell_i$. **Beam search** keeps the
# $n$ partial sequences with the largest $\sum_t \log p(y_t \mid y_{<t})$.
#
# **KV cache.** At step $t$ attention needs $K_{1..t}, V_{1..t}$ of every layer. Without a cache the model
# recomputes all of them (a forward pass over $t$ tokens, $O(t^2)$ attention work); with a cache it computes
# only the new token's $q, k, v$ and appends {cite}`pope2023efficiently`. The cache holds
#
# $$
# \text{bytes} = 2 \times L \times K \times D \times \text{bytes per element} \times \text{tokens} \times B ,
# $$
#
# keys and values ($2$) for $L$ layers, $K$ key/value heads of size $D$. The often quoted
# "$2 L K D \cdot$ bytes" is the cost **per token and per sequence**; multiply by tokens and batch.
# Grouped-query attention {cite}`ainslie2023gqa` and multi-query attention {cite}`shazeer2019mqa` shrink $K$
# below the number of query heads $H$, and with it the cache.
#
# **Speculative decoding** {cite}`leviathan2023speculative,chen2023accelerating`. A cheap draft model proposes
# $d_1..d_k$; the target scores $[x_{\text{last}}, d_1..d_k]$ in *one* forward pass, giving its own greedy
# tokens $p_0..p_k$. Accept the longest prefix with $d_{i+1} = p_i$ ($n$ tokens) and append $p_n$. Every
# emitted token is one the target would have chosen, so the output equals the target's greedy output; each
# target pass yields $n+1 \ge 1$ tokens. With acceptance rate $\alpha$ per token, the expected number is
# $(1-\alpha^{k+1})/(1-\alpha)$.
#
# **Quantization.** Symmetric absmax INT8: $s = \max|W|/127$, $q = \mathrm{round}(W/s)$; asymmetric
# (zero-point): $s = (\max - \min)/255$ (stored in fp16, rounded *up* so that the grid still reaches $\max$ and
# every weight stays within $s/2$), $z = -128 - \mathrm{round}(\min/s)$; group-wise INT4 gives each group of
# $g$ weights its own $(s, z)$ with $q \in [0, 15]$ and packs two $q$ per byte (as GPTQ/AWQ
# {cite}`frantar2023gptq,lin2024awq` checkpoints do). LLM.int8() {cite}`dettmers2022llmint8` multiplies the few
# outlier input features in floating point and the rest in INT8. FP8 {cite}`micikevicius2022fp8` is a float with
# 4 exponent / 3 mantissa bits (E4M3, max 448) or 5/2 (E5M2, max 57344).
# Flash Attention {cite}`dao2022flashattention`, the third topic of this row, is built and measured in the
# [Attention](02_attention.ipynb) chapter.

# %% [markdown]
# ## The implementation
#
# Each processor is one line of tensor code, written to match HF's definition bit for bit.

# %%
show_source(D.apply_repetition_penalty, D.apply_top_k, D.apply_top_p, D.process_logits)

# %% [markdown]
# Every cache of the book follows one protocol (`llmcore.architecture.kv_cache`): the model's attention
# calls `update(layer, k, v)` (its `kv_cache` hook) and attends over what it returns; `seq_len` tells the
# model where the new positions start; `crop(n)` rolls back. The static cache is one pre-allocated tensor per
# keys/values for all layers, shape `(L, B, K, S_max, D)`, written in place; `update` returns views of the
# filled part. The dynamic cache (`torch.cat` per step) and the INT8 cache (below) are the same protocol, and
# so is the paged cache of the inference-engine chapter.

# %%
show_source(kv_cache.StaticKVCache.reserve, kv_cache.StaticKVCache.update, kv_cache.StaticKVCache.crop,
            D.speculative_generate)

# %%
show_source(Q.quantize_int4, Q.pack_int4, Q.fp8_round, Q.llm_int8_matmul)

# %% [markdown]
# ## The closed loop
#
# The target model is the book's tiny byte-level LLaMA (trained once in the Transformer chapter and cached);
# the draft is the same recipe at half the width and one layer. `experiment` runs every measurement of this
# chapter; the cells below read its results.

# %%
res = D.experiment(toy=toy, device=device, seed=seed)
target_lm, draft_lm = D.load_models(dev)
target, tok = target_lm.model, target_lm.tokenizer
print(f"target: {target.num_params():,} params, draft: {draft_lm.model.num_params():,} params")
print("beam search (4 beams), best sequence:", repr(tok.decode(res.beam_ours[0].tolist())))

# %% [markdown]
# ### Samplers and beam search vs Hugging Face
#
# Same logits in, same logits out: the maximum absolute difference is exactly zero for every processor, and
# our beam search returns the same four sequences, in the same order, as HF `generate(num_beams=4)` on the
# HF-exported model (no end-of-sequence token, so every beam runs to the end).

# %%
for name, diff in res.sampler_diff.items():
    print(f"{name:<16} max |ours - HF| = {diff}")
print("beam search equals HF generate(num_beams=4):", res.beam_equal)

# %% [markdown]
# ### KV cache: identical tokens, bytes by the formula
#
# Greedy decoding with the static cache and with full recomputation produce the same tokens, for the trained
# MHA model and for GQA ($K = 2$) and MQA ($K = 1$) variants; the bytes of the filled cache equal the formula.

# %%
print(f"{'model':<22} {'same tokens':>11} {'cache bytes':>12} {'formula':>10}")
for name in res.cache_equal:
    got, formula = res.cache_bytes[name]
    print(f"{name:<22} {str(res.cache_equal[name]):>11} {got:>12,} {formula:>10,}")

# %% [markdown]
# Time per generated token as the sequence grows. Without a cache each step is a forward pass over the
# whole sequence, so the cost grows with length; with the cache it stays nearly flat. (Wall-clock on a
# shared 2-core CPU: noisy; the benchmark `benchmarks/kv_cache.py` measures the 512-token ratio.)

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(6.5, 3.2))
for name, label in (("none", "no cache (recompute)"), ("static", "static KV cache")):
    t = np.array(res.timing[name][1:]) * 1e3
    k = 8
    smooth = np.convolve(t, np.ones(k) / k, mode="valid")
    ax.plot(np.arange(len(smooth)) + 8 + k, smooth, label=label)
ax.set_xlabel("sequence length (tokens)"), ax.set_ylabel("ms per new token"), ax.legend()
ax.set_title("Decode step time vs length (tiny LM, CPU)")
plt.show()
ratio = sum(res.timing["none"]) / sum(res.timing["static"])
print(f"total decode time, no cache / cache = {ratio:.1f}x over {len(res.timing['none'])} tokens")
print("wall seconds per stage of experiment():", {k: round(v, 1) for k, v in res.stage_s.items()})

# %% [markdown]
# ### Speculative decoding
#
# For each draft length $k$ the output equals the target's greedy output; the acceptance rate falls with
# $k$ (later guesses depend on earlier ones) while tokens per target pass rise. On a GPU the target pass
# costs about the same for 1 or $k+1$ tokens (memory-bound), so tokens per target pass is the speed-up
# before the draft's cost; on this CPU the tiny target is barely more expensive than the draft, so the
# wall-clock speed-up (ignored by the checker) is small or below 1.

# %% tags=["nbval-ignore-output"]
ks = [r.k for r in res.spec]
fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
ax[0].plot(ks, [r.acceptance_rate for r in res.spec], "o-", label="measured acceptance")
ax[0].set_xlabel("draft length k"), ax[0].set_ylabel("acceptance rate"), ax[0].set_ylim(0, 1)
ax[1].plot(ks, [r.tokens_per_target_call for r in res.spec], "o-", label="tokens per target pass")
ax[1].plot(ks, [res.spec_base_s / r.wall_s for r in res.spec], "s--", label="wall-clock speed-up (CPU)")
ax[1].axhline(1, color="k", lw=0.8)
ax[1].set_xlabel("draft length k"), ax[1].legend()
plt.show()
for r in res.spec:
    print(f"k={r.k}: acceptance {r.acceptance_rate:.3f}, {r.tokens_per_target_call:.2f} tokens/target pass, "
          f"wall speed-up {res.spec_base_s / r.wall_s:.2f}x")

# %% [markdown]
# ### Quantization: bytes, error, perplexity
#
# Storage is counted from the tensors actually kept (`int8`, packed `uint8`, `float8_*`, plus fp16 scales and
# zero points). The embedding and the tied output head stay in fp32; the table covers the seven linear layers
# of each block. INT4 uses groups of $g = 16$ (the tiny model's widths are 64 and 176); at LLM sizes
# $g = 128$ makes the scale overhead ~6% instead of ~38%.

# %%
q = res.quant
base = q["fp32"]["ppl"]
fp16 = 2 * q["fp32"]["numel"]
print(f"{'scheme':<15} {'bytes/fp16':>10} {'data/fp16':>9} {'rel. error':>10} {'perplexity':>10} {'Δ%':>7}")
for s, row in q.items():
    err = row.get("err_rel_fro", 0.0)
    print(f"{s:<15} {row['bytes'] / fp16:>10.3f} {row['data_bytes'] / fp16:>9.3f} {err:>10.4f} "
          f"{row['ppl']:>10.4f} {100 * (row['ppl'] / base - 1):>+7.2f}")
print(f"INT8 KV cache: {res.kv_int8['int8_bytes']:,} bytes vs {res.kv_int8['fp32_bytes']:,} fp32 "
      f"({res.kv_int8['int8_bytes'] / res.kv_int8['fp32_bytes']:.3f}x, scales included); perplexity "
      f"{q['fp32']['ppl_int8_kv']:.4f} ({100 * (q['fp32']['ppl_int8_kv'] / base - 1):+.2f}%); greedy tokens agree "
      f"on {res.kv_int8['token_agreement']:.3f} of the steps (first divergence at "
      f"step {res.kv_int8['first_divergence']}: near-ties flip)")
print("our FP8 rounding equals torch's float8 casts:", res.fp8_equal)

# %%
names = [s for s in q if s != "fp32"]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
ax[0].bar(names, [q[s]["bytes"] / fp16 for s in names], color="C0", label="total (with scales)")
ax[0].bar(names, [q[s]["data_bytes"] / fp16 for s in names], color="C1", alpha=0.8, label="values only")
ax[0].set_ylabel("bytes / fp16 bytes"), ax[0].legend(), ax[0].tick_params(axis="x", rotation=45)
ax[1].bar(names, [100 * (q[s]["ppl"] / base - 1) for s in names], color="C2")
ax[1].axhline(1, color="k", ls="--", lw=0.8), ax[1].axhline(5, color="r", ls="--", lw=0.8)
ax[1].set_ylabel("perplexity increase (%)"), ax[1].tick_params(axis="x", rotation=45)
fig.suptitle("Weight quantization of the tiny LM")
plt.show()

# %% [markdown]
# ### LLM.int8(): why outlier features matter
#
# Activations of large models have a few feature dimensions with huge magnitudes. Absmax INT8 per token then
# wastes its 255 levels on one value; the decomposition keeps those features in floating point.

# %%
g = torch.Generator().manual_seed(seed)
x = torch.randn(32, 64, generator=g)
x[:, 5] *= 50  # one emergent outlier feature
w = target.model.layers[0].self_attn.q_proj.weight.detach().cpu()
exact = x @ w.T
mixed, n_out = Q.llm_int8_matmul(x, w, threshold=6.0)
naive = Q.int8_matmul(x, w)
print(f"outlier features: {n_out}; max error INT8 everywhere {float((naive - exact).abs().max()):.4f}, "
      f"LLM.int8 {float((mixed - exact).abs().max()):.4f}")
assert (mixed - exact).abs().max() < (naive - exact).abs().max()

# %% [markdown]
# ### On a GPU
#
# With `device="cuda"` the experiment also decodes on the GPU and reports `torch.cuda.max_memory_allocated`
# for the weights and the KV cache and tokens/s (fp32 vs INT8 cache, fp32 vs INT8 weights). This copy was
# executed on a CPU, so the cell prints the byte-accounted numbers instead; **no GPU run has been done yet.**

# %% tags=["nbval-ignore-output"]
if res.cuda:
    for name, row in res.cuda.items():
        print(f"{name:<26} {row['tokens_per_s']:8.0f} tok/s  weights {row['weights_mem'] / 2**20:7.2f} MiB  "
              f"peak {row['peak_mem'] / 2**20:7.2f} MiB  KV {row['kv_mem'] / 2**20:7.2f} MiB")
else:
    prompt = torch.tensor([tok.encode(play_prompt)], device=dev)
    for name, kind in (("fp32 cache", "static"), ("int8 cache", "int8")):
        r = D.measure_decode(target, prompt, 64, cache=kind)
        print(f"{name:<12} {r['tokens_per_s']:7.0f} tok/s, weights {r['weights_bytes']:,} B, "
              f"KV {r['cache_bytes']:,} B ({r['memory_source']})")

# %% [markdown]
# ### Cross-checks

# %%
assert max(res.sampler_diff.values()) == 0.0, "a sampler differs from HF's logits processor"
assert res.beam_equal, "beam search differs from HF generate(num_beams=4)"
assert all(res.cache_equal.values()), "cached and uncached greedy decoding differ"
assert all(a == b for a, b in res.cache_bytes.values()), "cache bytes differ from the formula"
assert res.spec_equal, "speculative decoding changed the target's greedy output"
assert all(res.fp8_equal.values()), "our FP8 rounding differs from torch's casts"
print("all cross-checks passed")

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = D.make_report(res, toy, str(dev), seed)
print(report.summary())
assert report.passed, report.failures()

# %% [markdown]
# ## Play: temperature, top-k and top-p
#
# The tiny LM's next-token distribution after `play_prompt`, before (grey) and after the processors
# (colour). Low temperature sharpens it, top-k and top-p cut its tail.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

play_ids = torch.tensor([tok.encode(play_prompt)], device=dev)
with torch.no_grad():
    play_logits = target(play_ids)[:, -1].float().cpu()


def show_distribution(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
    cfg = D.SamplerConfig(greedy=False, temperature=temperature, top_k=top_k or None, top_p=top_p)
    p0 = torch.softmax(play_logits, -1)[0]
    p = torch.softmax(D.process_logits(play_logits, play_ids.cpu(), cfg), -1)[0]
    order = torch.argsort(p0, descending=True)[:30]
    labels = [repr(tok.decode([int(i)])) for i in order]
    fig, ax = plt.subplots(figsize=(9, 3))
    ax.bar(range(30), p0[order], color="lightgrey", label="model")
    ax.bar(range(30), p[order], color="C0", alpha=0.8, label="after processors")
    ax.set_xticks(range(30), labels, rotation=90, fontsize=7), ax.legend()
    ax.set_title(f"T={temperature:.2f}, top-k={top_k or 'off'}, top-p={top_p:.2f}: "
                 f"{int((p > 0).sum())} tokens kept")
    plt.show()


widgets.interact(show_distribution,
                 temperature=widgets.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.05),
                 top_k=widgets.IntSlider(value=0, min=0, max=50, description="top-k (0=off)"),
                 top_p=widgets.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05));

# %% [markdown]
# ## Exercises
#
# 1. Add end-of-sequence handling and HF's length penalty to `beam_search` and check it against
#    `generate(num_beams=4, length_penalty=...)` with `eos_token_id` set.
# 2. Implement *stochastic* speculative sampling (accept $d$ with probability $\min(1, p(d)/q(d))$, otherwise
#    resample from $\max(0, p - q)$) and check empirically that token frequencies match the target's.
# 3. Quantize only the MLP, or only attention, to INT4: which hurts perplexity more? Try $g = 32$ and $g = 64$
#    with zero-padding of the last group.
# 4. Use the INT8 KV cache with a GQA model: by how much do GQA and INT8 together shrink the cache of
#    Llama-3-8B at 8k tokens? (Use the [Technical Reference](../../book/reference.ipynb) calculator.)
#
# ## References
#
# Holtzman et al. {cite}`holtzman2020curious` (nucleus sampling); Keskar et al. {cite}`keskar2019ctrl`
# (repetition penalty); Pope et al. {cite}`pope2023efficiently` (inference and the KV cache); Shazeer
# {cite}`shazeer2019mqa` and Ainslie et al. {cite}`ainslie2023gqa` (MQA/GQA); Leviathan et al.
# {cite}`leviathan2023speculative` and Chen et al. {cite}`chen2023accelerating` (speculative decoding); Dettmers
# et al. {cite}`dettmers2022llmint8` (LLM.int8); Frantar et al. {cite}`frantar2023gptq` and Lin et al.
# {cite}`lin2024awq` (4-bit weights); Micikevicius et al. {cite}`micikevicius2022fp8` (FP8); Dao et al.
# {cite}`dao2022flashattention` (FlashAttention). Full entries: [bibliography](../../book/bibliography.md).
