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
# # Mixture of Experts / 混合专家模型 (MoE)
#
# **中文摘要：** 混合专家模型把 Transformer 的前馈层换成 $E$ 个"专家"，由路由器为每个词元挑选其中 $k$ 个：
# 总参数随 $E$ 增长，而每个词元的计算量（激活参数）只随 $k$ 增长。本章从零实现 top-k 路由（Mixtral 约定）、
# Switch 风格 top-1、带噪声的 top-k 与专家选择（expert choice）路由；负载均衡的辅助损失、路由器 z-loss、
# 容量因子与丢弃词元、DeepSeekMoE 的共享专家以及 DeepSeek-V3 的无辅助损失偏置均衡；按专家排序后
# 每个专家一次批量矩阵乘的分组计算，并与逐词元循环实测对比速度。我们的 MoE 层与 HF 的
# `MixtralSparseMoeBlock`、`Qwen2MoeSparseMoeBlock`（共享专家）在拷贝权重后输出与路由 logits 一致到 1e-6。
# 闭环实验：在本书语料上，激活参数相同、训练步数相同时，MoE 语言模型的验证损失低于稠密模型；去掉辅助损失后
# 专家负载坍缩到少数专家（用负载熵与最大份额度量）；扫描容量因子，观察丢弃比例与损失。专家并行
# （`all_to_all` 分发与合并）复用分布式一章的 gloo 实现。
#
# **Learning goals**
# - write a sparse MoE layer (router, top-k gates, experts) and see why total and active parameters differ;
# - derive the Switch load-balancing loss and watch the load collapse without it;
# - compute an expert's capacity, which tokens are dropped, and what dropping costs;
# - implement grouped (sorted) dispatch and measure it against the per-token loop;
# - match Hugging Face's Mixtral and Qwen2-MoE blocks weight for weight;
# - know what expert parallelism sends over the wire.
#
# **Prerequisites:** [Transformer core](01_transformer.ipynb) (the LLaMA decoder, its training loop, the tiny
# LM and the corpus); for expert parallelism, the all-to-all section of
# [Distributed training](../04_engineering/01_distributed.ipynb).

# %% tags=["parameters"]
toy = True  # True: 200-step runs of the tiny LM's size (CPU, about 1 min); False: 2000 steps, 16 experts (GPU)
device = "auto"
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
import torch

from llmcore.architecture import moe
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
cfg = moe.MoEConfig.for_mode(toy)
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory / 理论
#
# ### The sparse layer / 稀疏层
#
# A dense Transformer block applies one feed-forward network (FFN) to every token. An MoE block
# {cite}`shazeer2017moe,lepikhin2020gshard` holds $E$ FFNs ("experts") $E_1 \dots E_E$ and a router
# $W_r \in \mathbb R^{E \times d}$. For a token $x$:
#
# $$ \ell = W_r x, \qquad p = \operatorname{softmax}(\ell), \qquad
#    \mathcal T_k(x) = \text{the } k \text{ experts of largest } p_e, \qquad
#    y = \sum_{e \in \mathcal T_k(x)} g_e\, E_e(x). $$
#
# Mixtral {cite}`jiang2024mixtral` renormalises the gates over the chosen experts,
# $g_e = p_e / \sum_{e' \in \mathcal T_k} p_{e'}$ (equal to a softmax over the $k$ largest logits). With $k = 1$
# that gate is always 1 and the router gets no gradient, so Switch {cite}`fedus2022switch` uses the raw
# probability $g_e = p_e$. Each token runs $k$ experts, so with experts of hidden size $F$ the FFN costs
#
# $$ \text{FLOPs/token} = \underbrace{2dE}_{\text{router}} + k \cdot \underbrace{2 \cdot 3 d F}_{\text{SwiGLU expert}}
#    \quad\text{while the parameters are}\quad dE + E \cdot 3dF . $$
#
# *Active* parameters (those a token touches) grow with $k$, *total* parameters with $E$: that is the point.
#
# ### Load balancing / 负载均衡
#
# Nothing in the LM loss asks the router to spread tokens: an expert that is slightly better early gets more
# tokens, learns more and wins more — the load collapses onto a few experts. Switch adds
#
# $$ \mathcal L_\text{aux} = E \sum_{e=1}^{E} f_e P_e, \qquad
#    f_e = \frac{1}{N}\#\{(x, j): \text{slot } j \text{ of } x \text{ chose } e\}, \qquad
#    P_e = \frac1N \sum_x p_e(x). $$
#
# $f$ is not differentiable but $P$ is; the product is smallest ($= k$) when both are uniform, so the gradient
# pushes probability away from overloaded experts. ST-MoE {cite}`zoph2022stmoe` adds the router z-loss
# $\operatorname{mean}_x (\log \sum_e e^{\ell_e})^2$ to keep logits small. DeepSeek-V3 {cite}`deepseek2024v3`
# drops the aux loss and instead adds a per-expert bias $b_e$ to the scores used for the *choice* (not the
# gates), nudging $b_e \mathrel{+}= \gamma\,\operatorname{sign}(\bar n - n_e)$ after each step. DeepSeekMoE
# {cite}`dai2024deepseekmoe` (and Qwen2-MoE) add *shared* experts that every token uses.
#
# ### Capacity / 容量
#
# Batched hardware wants fixed shapes, so each expert gets $C = \lceil c \cdot Nk/E \rceil$ slots ($c$ = capacity
# factor). Assignments beyond $C$ are *dropped*: the token skips that expert and the residual connection carries
# it on. At most $E \cdot C \approx cNk$ of the $Nk$ assignments fit, so the dropped fraction is
# $\ge 1 - c$ for $c < 1$, whatever the router does. *Expert choice* routing {cite}`zhou2022expertchoice`
# inverts the choice: each expert takes its $C$ best tokens — balanced by construction, but a token may get
# no expert at all.

# %%
fig = moe.plot_moe_diagram()
plt.show()

# %% [markdown]
# ## The implementation / 实现
#
# Routing is one softmax, one `topk` and a gather. The bias (DeepSeek-V3) only enters the choice:

# %%
show_source(moe.route_topk)

# %% [markdown]
# The aux loss and the capacity rule. The capacity rule gives every token's first choice priority over any
# second choice, then goes in token order — a running count per expert (`cumsum` of one-hot rows):

# %%
show_source(moe.load_balancing_loss)
show_source(moe.capacity_keep)

# %% [markdown]
# Grouped dispatch: flatten the $(N, k)$ assignments, drop the ones with gate 0, sort by expert, run each
# expert *once* on its contiguous block of rows, and scatter-add the gated results back. The naive
# alternative, `forward_loop`, calls an expert for every (token, slot): same numbers, $Nk$ tiny matmuls.

# %%
show_source(moe.MoE.dispatch)
show_source(moe.MoE.forward)

# %% [markdown]
# ## Cross-check: our block equals Hugging Face's / 交叉验证：与 HF 的 MoE 块一致
#
# Transformers 5.x stores the experts fused: `gate_up_proj (E, 2F, d)` = [gate; up] and `down_proj (E, d, F)`.
# `copy_to_hf` stacks our per-expert weights into those tensors; `hf_check` builds a top-2-of-4 Mixtral block
# and a Qwen2-MoE block (raw top-k probabilities, `norm_topk_prob=False`, plus a sigmoid-gated shared expert)
# and compares the outputs and the router logits.

# %%
show_source(moe.copy_to_hf)
hf_err = moe.hf_check(seed)
assert max(hf_err.values()) < 1e-6, hf_err

# %% tags=["nbval-ignore-output"]
print({k: f"{v:.1e}" for k, v in hf_err.items()})

# %% [markdown]
# ## The closed loop: MoE vs dense at equal active parameters / 闭环：激活参数相同的 MoE 与稠密模型
#
# Both language models keep the attention, embeddings and norms of the book's tiny LM (one trunk, identical for
# both) and learn their feed-forward layers from a fresh initialisation, on the same batches, for the same number
# of steps: the dense model a SwiGLU MLP of hidden size $kF + \lceil E/3 \rceil$ (so its active parameters are
# *at least* the MoE's, router included), the MoE model $E = 8$ SwiGLU experts of $F = 88$, top-2. A third run
# trains the same MoE without the aux loss. Then the capacity factor is swept on the trained MoE (at evaluation)
# and the two dispatches are timed side by side on the same layer and input.

# %%
t0 = time.perf_counter()
res = moe.experiment(cfg, dev, seed)
print(f"closed loop: {time.perf_counter() - t0:.1f} s")

# %% tags=["nbval-ignore-output"]
print({k: f"{v:,}" for k, v in res.params.items()})
print("FLOPs per token (FFN):", res.flops_per_token)
print("validation loss (nats/byte):", {k: round(v, 4) for k, v in res.val.items()})
for name in ("moe", "moe_noaux"):
    print(name, "load per layer (entropy / log E, max share, CV):",
          [(round(s["entropy"], 3), round(s["max_share"], 3), round(s["cv"], 2)) for s in res.load[name]])
print("capacity sweep:", [(r["capacity_factor"], round(r["dropped"], 3), round(r["val"], 3)) for r in res.capacity])
t = res.timing
print(f"dispatch on {cfg.timing_tokens} tokens: per-token loop {t['loop_s'] * 1e3:.1f} ms, grouped "
      f"{t['grouped_s'] * 1e3:.2f} ms -> {t['ratio']:.1f}x (max |diff| {t['max_diff']:.1e})")

# %%
fig = moe.plot_results(res)
plt.show()

# %% [markdown]
# Read the figure left to right. The first panel is the smoothed training-loss gap, dense minus MoE: above zero
# the MoE model is ahead at the same step with the same active parameters. It has about 2.7 x the
# feed-forward parameters, and each token uses only two experts' worth. With the
# aux loss every expert keeps a share near $1/E$; without it the load drifts onto a few experts within the first
# tens of steps and stays there. The capacity sweep shows the price of fixed shapes: below $c = 1$ the dropped
# fraction follows $1 - c$ and the loss rises steeply; above $c \approx 1.5$ almost nothing is dropped.
#
# The dispatch line above is time only. Memory goes the other way at inference: measured side by side
# (`benchmarks/moe_dispatch.py`, [benchmarks](../../book/benchmarks.md)), grouping is 19–26 × faster but holds about
# 5 × the loop's transient peak in a forward pass (it materialises all $Nk$ gathered rows and expert activations at
# once), and 1.1–1.2 × *less* in training, where the loop's many small autograd nodes cost more.
#
# 中文：激活参数与步数相同，MoE 的损失更低；有辅助损失时各专家份额接近 $1/E$，没有时负载很快集中到少数专家；
# 容量因子小于 1 时丢弃比例约为 $1-c$，损失明显上升。

# %% [markdown]
# ## Expert parallelism / 专家并行
#
# With experts on different ranks, each rank routes its own tokens, sends every (token, slot) row to the rank
# that owns its expert with one `all_to_all`, runs its local experts, and sends the results back with a second
# `all_to_all`. The distributed chapter implements this on gloo with *this* layer
# (`llmcore.engineering.expert_parallel.ExpertParallelMoE` copies the kit's `MoE` experts) and checks it there:
# outputs and gradients equal the single-process layer, and the bytes on the wire equal
# $2 \cdot (\text{rows out} + \text{rows in}) \cdot d \cdot 4$ per forward + backward; a unit test of this chapter
# repeats the check with SwiGLU experts. Per token and layer, with uniform routing over $n$ ranks, EP moves
# $2k \frac{n-1}{n} d$ values forward (dispatch + combine) and as many backward.

# %%
show_source(moe.MoELM.forward)

# %% [markdown]
# ## Results / 结果
#
# The checked cell prints each criterion's verdict; the measured values follow in the next cell.

# %%
# NBVAL_CHECK_OUTPUT
report = moe.make_report(res, hf_err, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print("\n".join(f"{k}: {round(v, 4)}" for k, v in report.metrics.items()))

# %% [markdown]
# ## Play: where does a token go? / 动手：词元被送往哪些专家？
#
# Type some text: the table lists, for every byte, the two experts it is routed to in each layer of the trained
# MoE model (aux loss on). Spaces, letters and punctuation tend to take different experts.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_routes(text: str = "def parse(self, data):") -> None:
    rows = moe.route_table(res.models["moe"], text)
    for r in rows:
        print(f"{r['byte']!r:>6}  " + "  ".join(f"{k}: {v}" for k, v in r.items() if k != "byte"))


widgets.interact(show_routes, text=widgets.Text(value="def parse(self, data):"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Scale.** Two layers, $d = 64$, 8 experts, 200 steps on a trunk taken from the tiny LM. Trained from
#   scratch at this size for a few hundred steps, the MoE model is *not* better than the dense one (each expert
#   sees $k/E$ of the data and the early loss is dominated by seed noise); the advantage at equal compute is a
#   large-scale result {cite}`fedus2022switch`. Sharing a pretrained trunk is close to sparse upcycling
#   {cite}`komatsuzaki2023upcycling`.
# - **Capacity.** Training here is dropless (like Mixtral and MegaBlocks); the capacity factor is swept at
#   evaluation only. Switch and GShard train with $c \approx 1.25$ and drop during training too.
# - **Dispatch.** Our grouped dispatch loops over experts in Python; production kernels (MegaBlocks, grouped
#   GEMM, DeepEP) run all experts in one kernel and overlap the all-to-all with compute.
# - **Expert parallelism** runs on gloo with 2 CPU ranks in the distributed chapter; real systems combine EP
#   with data, tensor and pipeline parallelism and route to limit cross-node traffic.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy:** this page executed in 34 s (the closed loop 27 s: three 200-step runs, the capacity sweep and the
#   timing) with the tiny LM cached; `run.py --module moe --toy` took 48.7 s wall and 0.60 GB peak RAM
#   (`/usr/bin/time -v`), both on the shared 2-core CPU. A cold cache first trains the tiny LM (about 40–60 s).
# - **Full (`toy=False`):** 2000 steps of batch $32 \times 256$, 16 experts: roughly $10 \times 4 \times 2$ the toy's
#   compute per run, tens of minutes on this CPU, a few minutes on one GPU.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - MoE 的总参数随专家数 $E$ 增长，每个词元的计算随 $k$ 增长。 · Total parameters grow with $E$, compute per
#   token with $k$.
# - 没有负载均衡损失，路由会坍缩到少数专家；Switch 辅助损失 $E\sum_e f_e P_e$ 在均匀时最小。 · Without a
#   balancing loss the router collapses onto a few experts; $E\sum_e f_e P_e$ is smallest when the load is uniform.
# - 容量 $C=\lceil cNk/E\rceil$；$c<1$ 时至少丢弃 $1-c$ 的分配。 · Capacity $C=\lceil cNk/E\rceil$; below
#   $c = 1$ at least $1-c$ of the assignments are dropped.
# - 按专家排序后批量计算，比逐词元循环快一个数量级，结果相同。 · Sorting by expert and running each expert
#   once is an order of magnitude faster than the per-token loop, with the same result.
# - 专家并行用两次 all-to-all：分发与合并。 · Expert parallelism is two all-to-alls: dispatch and combine.
# ```

# %% [markdown]
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `load_balancing_loss(probs, idx, n_experts)` (Switch's $E\sum_e f_e P_e$, with $f_e$
#    counting all $k$ slots) and check it with `llmcore.exercises.check_load_balancing_loss(load_balancing_loss)`.
# 2. **Self-checked.** Write `capacity_keep(idx, n_experts, cap)`: a bool `(N, k)` mask of the assignments that
#    fit in `cap` slots per expert, first choices before second choices, then token order. Check it with
#    `llmcore.exercises.check_capacity_keep(capacity_keep)`.
# 3. Train the MoE with `router="switch"` and `top_k=1`, `expert_ff=176` (same active parameters). Is it better
#    or worse than top-2 with half-size experts? Why does the Switch gate $p_e \approx 1/E$ at initialisation
#    slow the start?
# 4. Replace the aux loss with DeepSeek-V3's bias balancing (`bias_rate=1e-3`, `aux_coef=0`). Does the load
#    stay flat? Does the loss change?
# 5. With $E = 64$ experts on $n = 8$ ranks, $k = 8$, $d = 7168$ in bf16 (DeepSeek-V3's sizes), how many bytes
#    does one token send per MoE layer forward under uniform routing?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. ```python
#    def load_balancing_loss(probs, idx, n_experts):
#        f = torch.bincount(idx.reshape(-1), minlength=n_experts).float() / idx.shape[0]
#        return n_experts * (f * probs.mean(0)).sum()
#    ```
#    Dividing by $Nk$ instead of $N$ gives $1$ instead of $k$ at balance (and disagrees with HF for $k > 1$).
# 2. ```python
#    def capacity_keep(idx, n_experts, cap):
#        N, k = idx.shape
#        flat = idx.t().reshape(-1)                       # slot-major
#        onehot = torch.nn.functional.one_hot(flat, n_experts)
#        pos = (onehot.cumsum(0) * onehot).sum(-1) - 1     # rank within the expert
#        return (pos < cap).view(k, N).t()
#    ```
# 3. Top-1 Switch starts with gates $\approx 1/E$, so the MoE output is $E$ times smaller than the dense MLP's
#    and learns more slowly at first; top-2 renormalised gates sum to 1.
# 4. Compare `moe.load_stats` of the two runs: the bias pushes every expert's count toward the mean without a
#    loss term and without touching the gates (DeepSeek-V3 reports better loss than with an aux loss at scale;
#    at this size expect a difference within seed noise). `test_bias_balancing_moves_toward_underloaded_experts`
#    shows one update.
# 5. Dispatch: $k\frac{n-1}{n} d \cdot 2$ bytes $= 8 \cdot \frac78 \cdot 7168 \cdot 2 \approx 100$ KB, and the
#    same again for the combine: about 200 KB per token per layer.
# :::
#
# ## References / 参考文献
#
# Sparsely-gated MoE {cite}`shazeer2017moe`; GShard {cite}`lepikhin2020gshard`; Switch Transformer
# {cite}`fedus2022switch`; ST-MoE {cite}`zoph2022stmoe`; expert choice {cite}`zhou2022expertchoice`; Mixtral
# {cite}`jiang2024mixtral`; DeepSeekMoE {cite}`dai2024deepseekmoe`; DeepSeek-V3 {cite}`deepseek2024v3`; sparse
# upcycling {cite}`komatsuzaki2023upcycling`. Full entries: [bibliography](../../book/bibliography.md).
