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
# # DeepSpeed ZeRO / ZeRO 显存优化
#
# **中文摘要：** 数据并行（DDP）让每张卡都保存一整份"模型状态"：参数、梯度和优化器状态（Adam 的一阶、二阶矩），
# 混合精度下每个参数要 16 字节。ZeRO 把这三样依次切分到 $N$ 个进程上：ZeRO-1 切优化器状态，ZeRO-2 再切梯度
# （反向时 reduce-scatter），ZeRO-3 连参数也切开、在前向/反向用到某层时临时 all-gather、用完即释放。
# 本章在 `torch.distributed` 上从零实现三个阶段、CPU offload 和激活重计算（activation checkpointing），
# 验证它们的 loss 与 DDP 逐步一致（1e-6），逐项测量每个进程持有的参数/梯度/优化器字节数并与论文公式对照，
# 再与 PyTorch 自带的 `ZeroRedundancyOptimizer` 和 FSDP2 `fully_shard` 交叉验证。理论部分推导混合精度下每个参数
# 16 字节的来历和各阶段的显存与通信公式，并画出每个 rank 在各阶段持有哪些状态；实验还用 bf16 参数/梯度 +
# fp32 主参数和 Adam 状态跑一遍混合精度训练，实测每个参数 16 字节，并把公式与 DeepSpeed 自带的显存估算器对照。
#
# **Learning goals**
# - account for model-state memory: $(P + G + K)\Psi$ bytes per rank under DDP, and what each ZeRO stage
#   divides by $N$;
# - implement ZeRO-1/2/3 with reduce-scatter and all-gather, and ZeRO-3's gather-on-demand / free-after-use;
# - measure that communication stays at DDP's $2\Psi$ for stages 1–2 and rises to $3\Psi$ for stage 3;
# - measure the paper's $16\Psi$ in a real mixed-precision run (bf16 parameters and gradients, fp32 master
#   weights and Adam states), and reconcile the formula with DeepSpeed's own memory estimators;
# - trade recomputation for activation memory with checkpointing, and tell its FLOP cost from its
#   wall-clock cost.
#
# **Prerequisites:** [Distributed training](01_distributed.ipynb) (process groups, ring collectives);
# Adam.
#
# ```{note}
# ZeRO is GPU-backed: with CUDA the chapter also reports `torch.cuda.max_memory_allocated`. The pages of
# this book were built on a 2-core CPU with gloo and **no GPU**, so the numbers below are byte-accounted
# (the bytes of the tensors each rank holds), not allocator-measured; the CUDA/NCCL path was not run.
# ```

# %% tags=["parameters"]
toy = True  # True: a 7k-parameter MLP on 1, 2 and 4 gloo ranks (CPU); False: a 10M-parameter MLP (GPUs)
device = "auto"  # "auto": NCCL with one GPU per rank when available, else gloo on CPU
seed = 0
main_world = 2  # the N that also runs torch's ZeroRedundancyOptimizer and FSDP2

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore @ git+https://github.com/llm-core/llm-core@main"])

# %%
import time

import matplotlib.pyplot as plt
import numpy as np

from llmcore.core import pick_device, progress, seed_everything, show_source, use_style
from llmcore.engineering import dist_utils, zero

dev = pick_device(device)  # validates the knob: device="cuda" without a GPU is a clear error
seed_everything(seed)
use_style()
backend, dev_type = dist_utils.resolve_backend(device, 4)
print(f"backend={backend} ({dev_type}), toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory / 理论
#
# ### Where the memory goes / 显存都去哪儿了
#
# Training with Adam keeps, for each of the $\Psi$ parameters, the parameter ($P$ bytes), its gradient
# ($G$) and the optimizer states ($K$) — together the **model states (模型状态)**. In mixed-precision
# training {cite}`rajbhandari2020zero` the forward and backward run in 16-bit, so the parameters and
# gradients the GPU computes with are fp16/bf16: $P = G = 2$. The update cannot be done in 16 bits: bf16
# has 8 significant bits, so a weight $w$ cannot change by less than about $2^{-8}|w|$, and most Adam
# steps ($\text{lr} \approx 10^{-4}$ times a normalised gradient) are smaller and would round to nothing.
# So the optimizer keeps an **fp32 master copy** of the parameters (4 bytes) next to Adam's momentum and
# variance (4 + 4 bytes):
#
# $$
# \underbrace{2}_{\text{fp16 param}} + \underbrace{2}_{\text{fp16 grad}}
# + \underbrace{4 + 4 + 4}_{K = 12:\ \text{fp32 master, } m,\ v} = 16 \text{ bytes per parameter}.
# $$
#
# 混合精度下每个参数占 16 字节：fp16 参数和梯度各 2 字节，优化器状态 12 字节（fp32 主参数、一阶矩、二阶矩）。
# A 7.5B model needs 120 GB of model states per GPU under data parallelism, before any activation. Our fp32
# toy has $P = G = 4$, $K = 8$ (no master copy is needed when the parameters are already fp32); the
# mixed-precision run below measures the 16.
#
# ### Partitioning, stage by stage / 逐级切分
#
# Data parallelism (DDP) replicates all three on every one of the $N$ ranks, although each rank's
# optimizer only *needs* the states of the parameters it updates. ZeRO removes the redundancy step by
# step: stage 1 ($P_{os}$) partitions the optimizer states, stage 2 ($P_{os+g}$) also the gradients, stage
# 3 ($P_{os+g+p}$) also the parameters. Per rank:
#
# | | parameters | gradients | optimizer | total | $N \to \infty$ |
# |---|---|---|---|---|---|
# | DDP | $P\Psi$ | $G\Psi$ | $K\Psi$ | $(P+G+K)\Psi$ | $16\Psi$ |
# | ZeRO-1 ($P_{os}$) | $P\Psi$ | $G\Psi$ | $K\Psi/N$ | $(P+G)\Psi + K\Psi/N$ | $4\Psi$ |
# | ZeRO-2 ($P_{os+g}$) | $P\Psi$ | $G\Psi/N$ | $K\Psi/N$ | $P\Psi + (G+K)\Psi/N$ | $2\Psi$ |
# | ZeRO-3 ($P_{os+g+p}$) | $P\Psi/N$ | $G\Psi/N$ | $K\Psi/N$ | $(P+G+K)\Psi/N$ | $0$ |
#
# (the last column with mixed precision). The diagram draws it for $N = 4$: each rank keeps one quarter
# of every partitioned state, and the four quarters together are exactly one copy.
# 每一级多切分一类状态：ZeRO-1 切优化器状态，ZeRO-2 再切梯度，ZeRO-3 连参数也切；$N$ 个 rank 合起来恰好
# 是一份完整的模型状态。

# %%
fig, ax = plt.subplots(figsize=(10, 3.8))
zero.plot_partitioning(ax, n=4)
fig.tight_layout()
plt.show()

# %% [markdown]
# The paper's Figure 1 ($\Psi = 7.5$B, $N = 64$, mixed precision): 120 GB → 31.4 → 16.6 → 1.9 GB per GPU.

# %%
for s, name in enumerate(["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"]):
    f = zero.zero_formula(7.5e9, 64, s, zero.MIXED_PRECISION)
    print(f"{name:<7} {f['total'] / 1e9:6.1f} GB per GPU")
assert [round(zero.zero_formula(7.5e9, 64, s)["total"] / 1e9, 1) for s in range(4)] == [120.0, 31.4, 16.6, 1.9]

# %% [markdown]
# ### Communication / 通信量
#
# DDP all-reduces the gradient: $2\Psi$ values per rank (ring, up to the factor $(n-1)/n$; see the
# [distributed chapter](01_distributed.ipynb)). A ring all-reduce *is* a reduce-scatter followed by an
# all-gather, and ZeRO-1/2 simply do something useful in between: they reduce-scatter the gradient
# ($\Psi$), so each rank ends with the summed gradient of *its* slice — exactly what its slice of the
# optimizer needs — update that slice, and all-gather the updated parameters ($\Psi$): still $2\Psi$, no
# more than DDP. ZeRO-3 holds no full parameters, so it all-gathers each layer's parameters before its
# forward *and again* before its backward, and reduce-scatters its gradient: $3\Psi$ — 1.5× DDP, the
# price of the last factor $N$. ZeRO-1/2 的通信量与 DDP 相同（$2\Psi$），ZeRO-3 因为前向、反向各 all-gather
# 一次参数，通信量为 $3\Psi$。
#
# ## The implementation / 实现
#
# Every `nn.Linear`'s weight and bias become one flat buffer padded to a multiple of $N$; rank $r$ owns
# slice $r$. ZeRO-1 and ZeRO-2 keep the full buffer and give Adam a *view* of the slice, so the optimizer
# states it creates are slice-sized. `step` is the whole of ZeRO-1: reduce-scatter, Adam on the slice,
# all-gather (with a 16-bit model, Adam runs on fp32 master copies of the slices and the result is cast
# back). ZeRO-2 moves the reduce-scatter into a hook that fires as soon as a layer's gradients are
# complete, and frees the full gradient right there — so at most one layer's full gradient ever exists.

# %%
show_source(zero.ZeroEngine.step, zero.ZeroEngine._make_hook)

# %% [markdown]
# ZeRO-3 replaces each `nn.Linear` by a `ShardedLinear` that owns only its
# slice. A custom autograd function gathers the full weight for the forward, frees it, gathers it again in
# backward, and reduce-scatters the weight gradient straight into the owner's slice:

# %%
show_source(zero._GatheredLinear)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# The same data, the same initial weights: DDP (torch `DistributedDataParallel` + Adam), our ZeRO-1, 2, 3
# and ZeRO-3 with CPU offload of Adam's states on $N = 1, 2, 4$ ranks; on $N = 2$ also torch's
# `ZeroRedundancyOptimizer` and FSDP2 `fully_shard`. Every variant trains 8 steps. A second set of runs
# trains ZeRO-1/2/3 in mixed precision (bf16 parameters, gradients and communication; fp32 master and Adam).

# %%
worlds = (1, 2, 4)
runs, mixed = {}, {}
t_start = time.perf_counter()
cfg = zero.ZeroConfig(seed=seed, device=dev_type) if toy else zero.ZeroConfig(
    sizes=(512, 2048, 2048, 2048, 512), batch=256, steps=20, lr=1e-3, seed=seed, device=dev_type)
for n in progress(worlds, desc="process groups"):
    variants = zero.ALL_VARIANTS if n == main_world else ("ddp", "zero1", "zero2", "zero3", "zero3_offload")
    runs[n] = dist_utils.launch(zero.zero_worker, n, (cfg, variants), backend=backend)[0]
    mixed[n] = dist_utils.launch(zero.zero_worker, n, (cfg, zero.MIXED_VARIANTS), backend=backend)[0]
ckpt = zero.checkpoint_experiment(seed=seed, device=dev_type, **({} if toy else {"depth": 32, "width": 1024,
                                                                            "batch": 1024}))
res = zero.ZeroResult(cfg, runs, ckpt, backend, mixed=mixed)
if dev_type == "cuda":  # offload's real saving on one GPU
    r1 = dist_utils.launch(zero.zero_worker, 1, (cfg, ("zero3", "zero3_offload")), backend="nccl")[0]
    res.cuda_offload = {v["name"]: v.get("cuda_max_allocated") for v in r1}

# %% tags=["nbval-ignore-output"]
print(f"all runs: {time.perf_counter() - t_start:.1f} s wall (shared 2-core CPU)")

# %% [markdown]
# ### Loss: every stage is DDP, step for step / 损失：每个阶段与 DDP 逐步一致

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
for i, v in enumerate(res.runs[main_world]):
    ax.plot(v["losses"], marker="os^v<>d"[i], ms=5, lw=1, alpha=0.8, label=v["name"])
ax.set(xlabel="step", ylabel="global loss", title=f"N = {main_world}: the curves lie on top of each other")
ax.legend(fontsize=7)
plt.show()
for n in worlds:
    ddp = res.variant(n, "ddp")["losses"]
    diffs = {v["name"]: max(abs(a - b) for a, b in zip(v["losses"], ddp)) for v in res.runs[n]}
    print(f"N={n}: max |loss - DDP| over steps: " + ", ".join(f"{k} {d:.0e}" for k, d in diffs.items()))

# %% [markdown]
# ### Cross-check: torch's ZeroRedundancyOptimizer and FSDP2 / 交叉验证：torch 的 ZeroRedundancyOptimizer 与 FSDP2

# %%
zro = max(abs(a - b) for a, b in zip(res.variant(main_world, "zero1")["losses"],
                                     res.variant(main_world, "torch_zero_redundancy")["losses"]))
fsdp = max(abs(a - b) for a, b in zip(res.variant(main_world, "zero3")["losses"],
                                      res.variant(main_world, "torch_fsdp2")["losses"]))
w_fsdp = (res.variant(main_world, "zero3")["final"] - res.variant(main_world, "torch_fsdp2")["final"]).abs().max()
assert zro < 1e-6 and fsdp < 1e-6 and w_fsdp < 1e-6
print(f"our ZeRO-1 vs ZeroRedundancyOptimizer: {zro:.1e}; our ZeRO-3 vs FSDP2: loss {fsdp:.1e}, "
      f"final weights {float(w_fsdp):.1e}")

# %% [markdown]
# ### Memory per rank: measured vs the formula / 每个 rank 的显存：实测与公式
#
# "Measured" is the bytes of the distinct tensors each rank holds after a step: parameter buffers, gradient
# buffers and Adam's `exp_avg`, `exp_avg_sq`, `step`. The black marks are the formula with
# $(P, G, K) = (4, 4, 8)$. Offloaded optimizer states sit in host memory (light blue).

# %%
table = zero.memory_table(res)
print(f"{'N':>2} {'variant':<14}{'params':>8}{'grads':>8}{'optim':>8}{'offload':>8}{'total':>8}{'formula':>9}{'ratio':>7}")
for r in table:
    print(f"{r['N']:>2} {r['variant']:<14}{r['params']:>8}{r['grads']:>8}{r['optim']:>8}{r['optim_offloaded']:>8}"
          f"{r['measured_total']:>8}{r['formula_total']:>9.0f}{r['ratio']:>7.3f}")

# %%
zero.figures(res)  # saves the figures next to the report; the memory chart again here, inline
mt = {(r["N"], r["variant"]): r for r in table}
names = ["ddp", "zero1", "zero2", "zero3", "zero3_offload"]
fig, axes = plt.subplots(1, len(worlds), figsize=(10, 3.2), sharey=True)
for ax, n in zip(axes, worlds):
    bottom = np.zeros(len(names))
    for key, label in (("params", "parameters"), ("grads", "gradients"), ("optim", "optimizer"),
                       ("optim_offloaded", "optimizer on CPU")):
        vals = np.array([mt[(n, v)][key] / 1024 for v in names])
        ax.bar(range(len(names)), vals, bottom=bottom, label=label)
        bottom += vals
    ax.plot(range(len(names)), [mt[(n, v)]["formula_total"] / 1024 for v in names], "k_", ms=20, mew=2,
            label="formula")
    ax.set_xticks(range(len(names)), ["DDP", "Z1", "Z2", "Z3", "Z3+off"])
    ax.set_title(f"N = {n}, Ψ = {res.runs[n][0]['psi']}")
axes[0].set_ylabel("KiB per rank")
axes[-1].legend(fontsize=7)
plt.show()

# %% [markdown]
# ### Mixed precision: the 16Ψ, measured / 混合精度：实测每个参数 16 字节
#
# The same model in bf16: parameters, gradients and every reduce-scatter/all-gather are 16-bit; Adam updates
# fp32 master copies of this rank's slices. The master copy counts as an optimizer state ($K = 4 + 4 + 4$),
# so the formula is the paper's $(2, 2, 12)$. At $N = 1$ every stage holds everything: the measured bytes per
# parameter are the paper's 16 (plus Adam's three 4-byte step counters).

# %%
print(f"{'N':>2} {'variant':<10}{'params':>8}{'grads':>8}{'optim':>8}{'total':>8}{'(2+2+12)Ψ':>11}{'ratio':>7}"
      f"{'B/param':>9}{'Δloss vs fp32':>15}")
for r in zero.mixed_table(res):
    print(f"{r['N']:>2} {r['variant']:<10}{r['params']:>8}{r['grads']:>8}{r['optim']:>8}{r['measured_total']:>8}"
          f"{r['formula_total']:>11.0f}{r['ratio']:>7.3f}{r['bytes_per_param']:>9.3f}{r['loss_rel_diff']:>14.1e}")

# %% [markdown]
# The last column is the largest relative difference from the fp32 DDP loss over the 8 steps: bf16
# rounding moves the loss by about 0.2%, while the fp32 master keeps the updates themselves exact enough
# that training follows the fp32 run.
#
# ### Cross-check: DeepSpeed's own memory estimators / 与 DeepSpeed 的显存估算器对照
#
# DeepSpeed ships `estimate_zero2_model_states_mem_needs` and `estimate_zero3_model_states_mem_needs`. We ran
# them (DeepSpeed 0.19.8, CPU-only, in a scratch environment: DeepSpeed is not a dependency of the book) in
# `tests/engineering/test_zero.py::test_formula_against_deepspeeds_own_estimators`, which runs whenever
# DeepSpeed is importable and passes. Their GPU bytes, without offload, for the paper's $\Psi = 7.5$B on
# $N = 64$:
#
# | | paper / `zero.zero_formula` | DeepSpeed estimator | difference |
# |---|---|---|---|
# | ZeRO-2 | $2\Psi + 14\Psi/N$ = 16.64 GB | $2\Psi + 18\Psi/N$ = 17.11 GB | $+4\Psi/N$: an fp32 copy of the gradient slice |
# | ZeRO-3 | $16\Psi/N$ = 1.88 GB | $18\Psi/N + 4L$ = 2.11 GB + $4L$ | $+4\Psi/N$ fp32 gradient slice, $-2\Psi/N$ (the 16-bit parameter slice is not counted), $+4L$ for gathering the largest layer of $L$ parameters |
#
# DeepSpeed's own comment in the estimator lists its 18 bytes: "2 grads_16bit + 4 grads_32bit + 4
# params_32bit + 8 optimizer_states_32bit". So the formula agrees with the production system once its
# implementation choice — the gradient slice is accumulated in fp32 — is added; the test asserts both
# relations exactly for four $(\Psi, N)$ pairs. ZeRO-3's $4L$ term is the transient gathered-layer buffer
# that our run reports as "peak gathered-parameter bytes" below (there $4 \times 4160$ parameters of the
# largest fp32 layer = 16640 B). DeepSpeed 与论文公式的差别在于它把梯度分片另存一份 fp32（每参数多 4 字节）。
#
# ### Transient memory and communication / 临时显存与通信
#
# ZeRO-2 never holds more than one layer's full gradient; ZeRO-3 never more than one layer's full
# parameters. Bytes sent per step per rank, counted on the wire, against $2\Psi$ and $3\Psi$:

# %%
n = max(worlds)
for name in ("zero1", "zero2", "zero3"):
    v = res.variant(n, name)
    f = zero.comm_formula_bytes(v["padded_psi"], n, zero.STAGE_OF[name])
    print(f"N={n} {name}: sent {v['sent_bytes_per_step']:.0f} B/step, formula {f:.0f} "
          f"({'3' if name == 'zero3' else '2'}(n-1)/n·4Ψ); peak full-gradient bytes {v['peak_full_grad_bytes']}, "
          f"peak gathered-parameter bytes {v['peak_gathered_param_bytes']}")

# %% [markdown]
# ## Activation checkpointing / 激活检查点（重计算）
#
# The model states are not all: backward needs the activations of the forward. Checkpointing
# {cite}`chen2016checkpoint` keeps only each segment's input and recomputes the segment during backward:
# activation memory falls roughly by the segment length. What it costs depends on what one counts:
#
# * **FLOPs.** Every checkpointed segment runs its forward twice. With the backward about twice the forward
#   (a linear layer's backward computes two products, $\partial L/\partial x$ and $\partial L/\partial W$,
#   its forward one), fwd + bwd goes from $1 + 2 = 3$ to $1 + 1 + 2 = 4$ forward units: **+33%**, whatever
#   the segment length. We count the matmul FLOPs at dispatch (`zero.MatmulFlops`) and get exactly 4/3 below.
#   On large GPU models, where matmuls dominate the time, the wall-clock cost is close to this.
# * **Wall-clock on this toy.** The toy MLP is 64 wide; each matmul takes microseconds, so time is
#   dominated by per-op overhead (Python, autograd bookkeeping, and for each segment an extra autograd
#   `Function`, a `detach` and a `torch.autograd.grad` call). The measured ratio is therefore far above
#   4/3 and grows with the *number of segments*: 1.2–2.6× across our executions of this page (the last one
#   is printed below), largest for "every 1". It measures overhead, not recomputation.
#
# 重计算在 FLOPs 上的代价是 +33%（每段多做一次前向）；本页玩具模型太小，墙钟时间主要是每个算子的开销，
# 所以实测的 1.2–2.6 倍反映的是开销，而不是重计算本身。Our implementation is a 15-line autograd
# function; its gradients are compared with no checkpointing and with `torch.utils.checkpoint`.

# %%
show_source(zero._Checkpoint)

# %%
base = res.ckpt[0]
fig, ax = plt.subplots(figsize=(5, 3.2))
for r in res.ckpt:
    x, y = r["saved_bytes"] / base["saved_bytes"], r["time_s"] / base["time_s"]
    ax.scatter(x, y)
    ax.annotate("none" if r["every"] == 0 else f"every {r['every']}", (x, y), fontsize=8)
ax.set(xlabel="activation bytes kept for backward (relative)", ylabel="fwd+bwd time (relative)")
plt.show()
for r in res.ckpt:
    print(f"checkpoint every {r['every']}: kept {r['saved_bytes'] / base['saved_bytes']:.4f} of the activation "
          f"bytes; matmul FLOPs fwd+bwd {r['matmul_flops'] / base['matmul_flops']:.4f}x; grads vs none "
          f"{r['grad_err']:.0e}, vs torch.utils.checkpoint {r['grad_err_vs_torch']:.0e}")

# %% tags=["nbval-ignore-output"]
for r in res.ckpt:
    print(f"checkpoint every {r['every']}: fwd+bwd wall-clock {1e3 * r['time_s']:.1f} ms "
          f"({r['time_s'] / base['time_s']:.2f}x; FLOPs {r['matmul_flops'] / base['matmul_flops']:.2f}x)" + (f", CUDA peak {r['cuda_peak']} B" if r["cuda_peak"] else ""))

# %% [markdown]
# ## Results / 结果

# %%
# NBVAL_CHECK_OUTPUT
report = zero.make_report(res, toy, device, seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
# the measured values behind the verdicts above (not compared by nbval: trained numbers move with the CPU)
print("\n".join(f"{k}: {v:.4g}" for k, v in report.metrics.items()))
print("\n".join(f"{c.name}: {c.value:.4g}" for c in report.criteria))

# %% [markdown]
# ## Play: how many GPUs does a model need? / 动手：一个模型需要多少张 GPU？
#
# The formula for a real model: pick $\Psi$ and $N$ and see the per-GPU model-state memory of each stage
# (mixed precision, $K = 12$).

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def play(billions: float = 7.0, n_gpus: int = 8) -> None:
    psi = billions * 1e9
    vals = [zero.zero_formula(psi, n_gpus, s)["total"] / 2**30 for s in range(4)]
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.bar(["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"], vals)
    ax.axhline(80, color="k", ls="--", lw=1, label="80 GiB GPU")
    ax.set(ylabel="GiB per GPU", title=f"Ψ = {billions:g}B on {n_gpus} GPUs")
    ax.legend()
    plt.show()


widgets.interact(play, billions=widgets.FloatLogSlider(value=7, base=10, min=-1, max=3, description="Ψ (B)"),
                 n_gpus=widgets.IntSlider(value=8, min=1, max=1024, description="GPUs"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Byte accounting, not an allocator.** On CPU we count the bytes of the tensors each rank holds; on a
#   GPU the chapter also reports `torch.cuda.max_memory_allocated`, which adds activations, temporary
#   buffers and allocator fragmentation — DeepSpeed's estimators add a 1.5× buffer factor for the host side.
# - **Mixed precision.** Our mixed-precision run keeps bf16 gradients and no loss scaling (bf16 has fp32's
#   exponent range); DeepSpeed accumulates the gradient slice in fp32 (+4Ψ/N, see the cross-check) and
#   uses dynamic loss scaling with fp16.
# - **Buckets and overlap.** We communicate layer by layer and wait; DeepSpeed and FSDP fuse parameters
#   into buckets, prefetch the next layer's all-gather during the current layer's compute, and overlap
#   the reduce-scatter with the backward.
# - **Offload.** ZeRO-Offload {cite}`ren2021zerooffload` runs Adam on the CPU with a vectorised kernel and
#   overlaps the transfers; ours copies slices synchronously.
# - **Scale.** A 7k-parameter MLP on up to 4 gloo ranks; ZeRO-3/FSDP trains 10¹⁰–10¹² parameters on
#   hundreds of GPUs, where the all-gathers are hidden behind compute.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** $N = 1, 2, 4$ gloo ranks on the 2-core CPU. `run.py --module zero --toy`:
#   11 s wall, peak RSS 0.44 GB (largest single process; every rank is its own process), measured with
#   `/usr/bin/time -v` at load average ≈ 1.5. Executing the whole page with `tools/execute.py`: 14 s in this
#   build; 41–71 s in earlier builds under heavier load (see [benchmarks](../../book/benchmarks.md)).
# - **Full (`toy=False`):** a 10.5M-parameter MLP (512–2048–2048–2048–512), batch 256, 20 steps: its model
#   states are 168 MB per rank under DDP in fp32; meant for one GPU per rank with NCCL. Not measured
#   here (no GPU); on CPU gloo expect minutes per variant.
# - **GPU:** no GPU figures were recorded for this chapter (see [benchmarks](../../book/benchmarks.md)).
#   With several GPUs (or nodes), every stage runs against DDP under torchrun:
#   `torchrun --nproc-per-node N -m llmcore.engineering.zero`.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 混合精度 Adam 每个参数 16 字节：fp16 参数 2、梯度 2，fp32 主参数和两个矩 12；本页实测 16.0。 ·
#   Mixed-precision Adam keeps 16 bytes per parameter, and the mixed-precision run measures 16.0.
# - ZeRO-1 切优化器状态，ZeRO-2 再切梯度，ZeRO-3 连参数也切，每个 rank 的显存依次降到 $4\Psi$、$2\Psi$、$16\Psi/N$。 ·
#   Each stage partitions one more kind of state, down to $16\Psi/N$ per rank for ZeRO-3.
# - ZeRO-1/2 的通信量与 DDP 相同（reduce-scatter + all-gather = all-reduce），ZeRO-3 为 1.5 倍。 · Stages 1 and 2
#   communicate exactly as much as DDP; stage 3 pays 1.5 times that.
# - 每个阶段的损失与 DDP 逐步一致（1e-6），并与 torch 的 ZeroRedundancyOptimizer 和 FSDP2 一致。 · Every stage
#   reproduces the DDP loss step for step and agrees with the torch implementations.
# - DeepSpeed 的估算器比论文公式多 $4\Psi/N$，因为它另存一份 fp32 梯度分片。 · DeepSpeed's estimator adds an
#   fp32 gradient slice to the paper's formula, which explains the difference exactly.
# - 激活重计算在 FLOPs 上多 1/3；小模型上的墙钟时间由算子开销决定，不能代表大模型。 · Checkpointing costs
#   one third more FLOPs; on a tiny model the wall-clock ratio measures overhead instead.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `zero_memory(psi, n, stage, P, G, K)` that returns the per-rank model-state
#    bytes of DDP (`stage=0`) and ZeRO-1/2/3, and check it with `llmcore.exercises.check_zero_memory(zero_memory)`.
#    Then find the smallest $N$ at which a 70B model's ZeRO-3 model states fit in 80 GB.
# 2. Switch the toy's mixed precision from bf16 to fp16 and add dynamic loss scaling (see the CUDA/precision
#    chapter). Which bytes change, and which do not?
# 3. ZeRO-3 gathers each layer twice per step. *Prefetch* the next layer's all-gather while the current
#    layer computes (`async_op=True`) and measure the time saved with `pad`-style delays.
# 4. ZeRO++ quantizes the all-gathered weights to int8. What happens to the $3\Psi$ communication and to the
#    loss-equals-DDP test?
# 5. Combine checkpointing with ZeRO-3: which transient buffers now dominate peak memory?
# 6. Make the checkpointing toy 16× wider (`width=1024`). Does the measured wall-clock ratio approach the
#    FLOP ratio 4/3? Why?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Divide each state by $N$ from the stage at which it is partitioned:
#
#    ```python
#    def zero_memory(psi, n, stage, P, G, K):
#        return psi * (P / (n if stage >= 3 else 1) + G / (n if stage >= 2 else 1) + K / (n if stage >= 1 else 1))
#    ```
#
#    $16 \cdot 70\cdot10^9 / N \le 80\cdot10^9$ gives $N \ge 14$ (before activations and buffers). The checker
#    rejects sharding everything at every stage, swapping which of parameters and gradients is sharded
#    first (its hidden cases include $P \ne G$), and sharding only the optimizer.
# 2. Only the format of the 16-bit tensors changes: the bytes are the same (2 + 2 + 12). fp16's narrow
#    exponent range needs the loss scale to keep small gradients from underflowing; bf16 does not.
# 3. The all-gather of layer $i+1$ overlaps the compute of layer $i$; with delays $t_c$ (compute) and
#    $t_g$ (gather) per layer the step falls from $\sum (t_c + t_g)$ towards $\sum \max(t_c, t_g)$.
# 4. The two parameter all-gathers move 1 byte instead of 2 (bf16) per value: $3\Psi \to 2\Psi$ in bf16
#    units; the loss no longer equals DDP's exactly (quantization error), so the test needs a tolerance.
# 5. The gathered full parameters of the layer being recomputed and the recomputed segment's activations:
#    about one layer's parameters plus one segment's activations.
# 6. Yes: as matmul time grows (∝ width²) the fixed per-op overhead becomes negligible, and the ratio
#    tends to the FLOP ratio, 4/3.
# :::
#
# ## References / 参考文献
#
# ZeRO {cite}`rajbhandari2020zero`; ZeRO-Offload {cite}`ren2021zerooffload`; PyTorch FSDP
# {cite}`zhao2023fsdp`; activation checkpointing {cite}`chen2016checkpoint`. Full entries:
# [bibliography](../../book/bibliography.md).
