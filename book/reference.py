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
# # Technical Reference: Memory & Compute / 核心技术参考：显存与算力估算
#
# **中文摘要：** 这一页是可执行的速查表：给定一个解码器的结构，计算参数量（稠密与 MoE 的总参数/激活参数）、
# 训练算力 $6ND$、权重/梯度/Adam 状态的字节数、ZeRO 0–3 各阶段每张卡的显存、带 GQA 的 KV 缓存大小，以及
# 各种量化格式节省的存储。预置的真实模型配置（Llama-3-8B/70B、Mixtral-8x7B、Qwen2.5）的参数量与
# transformers 在 `meta` 设备上按配置实例化的模型逐一核对（不下载任何权重）。最后用我们自己的话简述从稠密到
# MoE、以及智能体架构的演进。
#
# The functions live in `llmcore.core.calculator`; this page shows them, checks them, and gives you sliders.

# %% tags=["parameters"]
toy = True  # the page is cheap either way; kept for the book's uniform parameters cell
device = "auto"  # unused: everything here is arithmetic (and meta-device models)
seed = 0
preset = "Llama-3-8B"  # the model the worked example uses

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

from llmcore.core import calculator as C
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
GiB = 2**30

# %% [markdown]
# ## Parameters
#
# For a LLaMA-family decoder with vocabulary $V$, width $d$, FFN width $f$, $L$ layers, $H$ query heads,
# $K$ key/value heads of size $D$:
#
# $$
# \Psi = \underbrace{V d}_{\text{embedding}} + L\big(\underbrace{2 d H D + 2 d K D}_{\text{attention}}
# + \underbrace{3 d f}_{\text{SwiGLU}} + \underbrace{2d}_{\text{norms}}\big) + d + \underbrace{V d}_{\text{head, unless tied}} .
# $$
#
# A mixture-of-experts layer has $E$ copies of the FFN and a $d \times E$ router; only $k$ experts run per
# token, so the **active** parameters use $k \cdot 3 d f$ instead of $E \cdot 3 d f$.

# %%
show_source(C.param_count)

# %% [markdown]
# ### Check: the formula vs transformers, on the `meta` device
#
# `AutoModelForCausalLM.from_config(...)` under `torch.device("meta")` builds the real module tree with
# shape-only tensors: no memory, no download. Its parameter count must equal ours for every preset.

# %%
# NBVAL_CHECK_OUTPUT
lines = [f"{'model':<14} {'ours (total)':>16} {'transformers meta':>18} {'active':>16}"]
for name, cfg in C.PRESETS.items():
    ours, hf = C.param_count(cfg), C.hf_meta_param_count(cfg)
    lines.append(f"{name:<14} {ours['total']:>16,} {hf:>18,} {ours['active']:>16,}")
    assert ours["total"] == hf, name
print("\n".join(lines))
assert C.param_count(C.PRESETS["Llama-3-8B"])["total"] == 8_030_261_248

# %% [markdown]
# ## Training compute: $C \approx 6ND$
#
# Each parameter does a multiply-add (2 FLOPs) per token in the forward pass and about twice that in the
# backward pass, so training on $D$ tokens costs $\approx 6ND$ FLOPs {cite}`kaplan2020scaling` (attention's
# $O(S^2)$ term is small at these sequence lengths; for MoE use the active parameters).

# %%
cfg = C.PRESETS[preset]
pc = C.param_count(cfg)
flops = C.training_flops(pc["active"], 15e12)
print(f"{preset}: 6 x {pc['active'] / 1e9:.2f}B params x 15T tokens = {flops:.2e} FLOPs "
      f"= {flops / (1e15 * 3600 * 24):,.0f} days on one 1-PFLOP/s accelerator at 100% utilisation")

# %% [markdown]
# ## Model-state memory and ZeRO
#
# Mixed-precision Adam keeps 2-byte weights and gradients plus fp32 master weights, momentum and variance
# ($K = 12$ bytes) per parameter: $16\Psi$ bytes. ZeRO {cite}`rajbhandari2020zero` shards the optimizer state
# (stage 1), then the gradients (2), then the weights (3) over $N_d$ data-parallel ranks:

# %%
show_source(C.model_state_bytes)

# %%
fig, ax = plt.subplots(figsize=(7, 3.2))
ranks = [1, 2, 4, 8, 16, 32, 64]
for stage in range(4):
    ax.plot(ranks, [C.model_state_bytes(pc["total"], stage, n)["total"] / GiB for n in ranks], "o-",
            label=f"ZeRO-{stage}")
ax.set_xscale("log", base=2), ax.set_yscale("log")
ax.set_xlabel("data-parallel ranks $N_d$"), ax.set_ylabel("GiB per rank (model states)")
ax.set_title(f"{preset}: weights + gradients + Adam state per rank"), ax.legend()
plt.show()

# %% [markdown]
# ## KV cache and quantization
#
# $$
# \text{KV bytes} = 2 \times L \times K \times D \times \text{bytes} \times \text{tokens} \times \text{batch}
# $$
#
# ($2 L K D \cdot$ bytes per token and per sequence). GQA stores $K < H$ heads; the
# [Decoding chapter](../chapters/02_architecture/06_decoding.ipynb) checks this formula against a real cache.
# Weight bytes per format: fp32 4, bf16 2, INT8 and FP8 1, INT4 ½ plus a scale and zero point per group.

# %%
print(f"{'model':<14} {'KV / token (bf16)':>18} {'KV 8k x 1':>10} {'bf16 weights':>13} {'int4 g128':>10}")
for name, c in C.PRESETS.items():
    n = C.param_count(c)["total"]
    print(f"{name:<14} {C.kv_cache_bytes(c, 1) / 2**10:>14.0f} KiB {C.kv_cache_bytes(c, 8192) / GiB:>6.2f} GiB "
          f"{C.weight_bytes(n, 'bf16') / GiB:>9.1f} GiB {C.weight_bytes(n, 'int4 (g=128)') / GiB:>6.1f} GiB")

# %% [markdown]
# ## Dense → MoE
#
# A dense model spends every parameter on every token. A mixture-of-experts layer {cite}`shazeer2017moe`
# replaces the FFN by $E$ expert FFNs and a router that sends each token to $k$ of them, so capacity (total
# parameters, what the model can store) and cost per token (active parameters, what each token pays) come
# apart. Mixtral-8x7B {cite}`jiang2024mixtral` holds ~47B parameters but runs ~13B per token — it trains and
# decodes at roughly the FLOPs of a 13B dense model, yet must keep all 47B in memory, and its experts must see
# balanced load (auxiliary losses, capacity factors {cite}`fedus2022switch`). The table shows the two numbers
# side by side; the [MoE chapter](../chapters/02_architecture/03_moe.ipynb) builds the router, load balancing and
# capacity, and trains a small MoE LM against a dense one at equal active parameters.

# %%
for name, c in C.PRESETS.items():
    p = C.param_count(c)
    kind = f"MoE {c.num_experts} experts, top-{c.experts_per_token}" if c.is_moe else "dense"
    print(f"{name:<14} {kind:<26} total {p['total'] / 1e9:6.2f}B  active {p['active'] / 1e9:6.2f}B "
          f"({100 * p['active'] / p['total']:.0f}%)")

# %% [markdown]
# **The price of expert parallelism.** Spread the $E$ experts over $N$ ranks and every token's $k$ assignments
# travel: with uniform routing each leaves its rank with probability $(N-1)/N$, goes out to its expert
# (dispatch) and comes back (combine), and the backward retraces both all-to-alls. Per token, over the $L$ MoE
# layers, in $b$-byte activations:
#
# $$\text{EP bytes per token} = L \cdot 2\,k\,d\,b\,\frac{N-1}{N} \cdot 2 \quad(\text{forward and backward}).$$
#
# The [distributed chapter](../chapters/04_engineering/01_distributed.ipynb) counts the bytes its gloo
# all-to-all really sends and checks them against this expression's routing-exact form.

# %%
for name, c in C.PRESETS.items():
    if c.is_moe:
        per_token = C.ep_all_to_all_bytes(c, ranks=c.num_experts)  # one expert per rank, bf16
        print(f"{name:<14} EP over {c.num_experts} ranks: {per_token / 2**20:.2f} MiB per token "
              f"(forward + backward, bf16), {per_token * 4e6 / 2**40:.1f} TiB per 4M-token batch")

# %% [markdown]
# ## The evolution of agent architectures
#
# Language-model agents grew in layers, each adding a loop around the one before:
# 1. **Prompted completion** — one call, no state: the model answers from its weights.
# 2. **Tool use and ReAct** {cite}`yao2023react` — the model alternates reasoning and actions (search,
#    code, calculators) and reads their observations; the loop is still one linear trace.
# 3. **Planning and memory** — plan-then-execute, self-reflection and retrieval give the loop a longer
#    horizon; memory (RAG, scratchpads) lets it carry state beyond the context window.
# 4. **Graphs and state machines** — orchestration frameworks make the loop explicit: nodes, conditional
#    edges, cycles with limits, checkpoints that resume after failures.
# 5. **Multi-agent systems** — several specialised agents exchange validated messages under roles and
#    protocols, with humans approving critical steps; training them end to end with RL (agentic RL) closes
#    the loop between the agent and its environment.
#
# Part 5 of the book builds these layers; the memory numbers above are what each extra agent or longer
# context costs at serving time.

# %% [markdown]
# ## Calculator
#
# Pick a preset or edit the shape (0 on the layers / KV-heads sliders keeps the preset's value); the readout gives parameters, training FLOPs, per-rank ZeRO memory and
# serving memory (weights in the chosen format + KV cache).

# %% tags=["nbval-ignore-output"]
from dataclasses import replace

import ipywidgets as widgets


def calculator(preset: str = "Llama-3-8B", layers: int = 0, kv_heads: int = 0, tokens_T: float = 15.0,
               zero_stage: int = 0, ranks: int = 8, fmt: str = "bf16", context: int = 8192,
               batch: int = 1) -> None:
    base = C.PRESETS[preset]  # 0 on a slider = the preset's own value
    c = replace(base, num_layers=layers or base.num_layers, num_kv_heads=kv_heads or base.num_kv_heads)
    p = C.param_count(c)
    z = C.model_state_bytes(p["total"], zero_stage, ranks)
    inf = C.inference_memory(c, fmt, context, batch)
    print(f"{c.name} with L={c.num_layers}, K={c.num_kv_heads}: total {p['total']:,} params, active {p['active']:,}")
    print(f"training: 6ND = {C.training_flops(p['active'], tokens_T * 1e12):.3e} FLOPs for {tokens_T:g}T tokens")
    print(f"ZeRO-{zero_stage} on {ranks} ranks: weights {z['weights'] / GiB:.1f} + grads {z['gradients'] / GiB:.1f}"
          f" + Adam {z['optimizer'] / GiB:.1f} = {z['total'] / GiB:.1f} GiB per rank")
    print(f"serving ({fmt}): weights {inf['weights'] / GiB:.1f} GiB + KV cache ({batch} x {context} tokens, bf16) "
          f"{inf['kv_cache'] / GiB:.2f} GiB = {inf['total'] / GiB:.1f} GiB")


widgets.interact(calculator, preset=list(C.PRESETS),
                 layers=widgets.IntSlider(value=0, min=0, max=128, description="layers (0=preset)"),
                 kv_heads=widgets.IntSlider(value=0, min=0, max=64, description="KV heads (0=preset)"),
                 tokens_T=widgets.FloatLogSlider(value=15, base=10, min=-1, max=2, description="tokens (T)"),
                 zero_stage=widgets.IntSlider(value=0, min=0, max=3), ranks=widgets.IntSlider(value=8, min=1, max=512),
                 fmt=list(C.QUANT_FORMATS), context=widgets.IntSlider(value=8192, min=512, max=131072, step=512),
                 batch=widgets.IntSlider(value=1, min=1, max=256));  # noqa: E703 (hides the widget repr)

# %% [markdown]
# ## References
#
# Kaplan et al. {cite}`kaplan2020scaling` (6ND); Rajbhandari et al. {cite}`rajbhandari2020zero` (ZeRO);
# Ainslie et al. {cite}`ainslie2023gqa` (GQA); Shazeer et al. {cite}`shazeer2017moe`, Fedus et al.
# {cite}`fedus2022switch` and Jiang et al. {cite}`jiang2024mixtral` (MoE); Yao et al. {cite}`yao2023react`
# (ReAct); Dettmers et al. {cite}`dettmers2022llmint8` and Frantar et al. {cite}`frantar2023gptq` (quantization).
