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
# 再与 PyTorch 自带的 `ZeroRedundancyOptimizer` 和 FSDP2 `fully_shard` 交叉验证。
#
# **Learning goals**
# - account for model-state memory: $(P + G + K)\Psi$ bytes per rank under DDP, and what each ZeRO stage
#   divides by $N$;
# - implement ZeRO-1/2/3 with reduce-scatter and all-gather, and ZeRO-3's gather-on-demand / free-after-use;
# - measure that communication stays at DDP's $2\Psi$ for stages 1–2 and rises to $3\Psi$ for stage 3;
# - trade recomputation for activation memory with checkpointing.
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
from llmcore.engineering import dist_utils as D
from llmcore.engineering import zero as Z

dev = pick_device(device)  # validates the knob: device="cuda" without a GPU is a clear error
seed_everything(seed)
use_style()
backend, dev_type = D.resolve_backend(device, 4)
print(f"backend={backend} ({dev_type}), toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory — where the memory goes
#
# Training with Adam keeps, for each of the $\Psi$ parameters, the parameter ($P$ bytes), its gradient
# ($G$) and the optimizer states ($K$). In mixed precision {cite}`rajbhandari2020zero` $P = G = 2$ (fp16)
# and $K = 12$ (fp32 master copy, momentum, variance); our fp32 toy has $P = G = 4$, $K = 8$. Per rank:
#
# | | parameters | gradients | optimizer | total |
# |---|---|---|---|---|
# | DDP | $P\Psi$ | $G\Psi$ | $K\Psi$ | $(P+G+K)\Psi$ |
# | ZeRO-1 ($P_{os}$) | $P\Psi$ | $G\Psi$ | $K\Psi/N$ | |
# | ZeRO-2 ($P_{os+g}$) | $P\Psi$ | $G\Psi/N$ | $K\Psi/N$ | |
# | ZeRO-3 ($P_{os+g+p}$) | $P\Psi/N$ | $G\Psi/N$ | $K\Psi/N$ | $(P+G+K)\Psi/N$ |
#
# The paper's Figure 1 ($\Psi = 7.5$B, $N = 64$, mixed precision): 120 GB → 31.4 → 16.6 → 1.9 GB per GPU.

# %%
for s, name in enumerate(["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"]):
    f = Z.zero_formula(7.5e9, 64, s, Z.MIXED_PRECISION)
    print(f"{name:<7} {f['total'] / 1e9:6.1f} GB per GPU")
assert [round(Z.zero_formula(7.5e9, 64, s)["total"] / 1e9, 1) for s in range(4)] == [120.0, 31.4, 16.6, 1.9]

# %% [markdown]
# **Communication.** DDP all-reduces the gradient: $2\Psi$ (ring, per rank, up to the factor $(n-1)/n$).
# ZeRO-1/2 reduce-scatter the gradient ($\Psi$) and all-gather the updated parameters ($\Psi$): still
# $2\Psi$. ZeRO-3 all-gathers each layer's parameters in forward *and again* in backward, and
# reduce-scatters its gradient: $3\Psi$ — 1.5× DDP.
#
# ## The implementation
#
# Every `nn.Linear`'s weight and bias become one flat buffer padded to a multiple of $N$; rank $r$ owns
# slice $r$. ZeRO-1 and ZeRO-2 keep the full buffer and give Adam a *view* of the slice; ZeRO-2 reduce-scatters
# each layer's gradient from a hook as soon as the layer's backward is done and frees the full gradient.

# %%
show_source(Z.ZeroEngine.step, Z.ZeroEngine._make_hook)

# %% [markdown]
# ZeRO-3 replaces each `nn.Linear` by a `ShardedLinear` that owns only its
# slice. A custom autograd function gathers the full weight for the forward, frees it, gathers it again in
# backward, and reduce-scatters the weight gradient straight into the owner's slice:

# %%
show_source(Z._GatheredLinear)

# %% [markdown]
# ## The closed loop
#
# The same data, the same initial weights: DDP (torch `DistributedDataParallel` + Adam), our ZeRO-1, 2, 3
# and ZeRO-3 with CPU offload of Adam's states on $N = 1, 2, 4$ ranks; on $N = 2$ also torch's
# `ZeroRedundancyOptimizer` and FSDP2 `fully_shard`. Every variant trains 8 steps.

# %%
worlds = (1, 2, 4)
runs = {}
t_start = time.perf_counter()
cfg = Z.ZeroConfig(seed=seed, device=dev_type) if toy else Z.ZeroConfig(
    sizes=(512, 2048, 2048, 2048, 512), batch=256, steps=20, lr=1e-3, seed=seed, device=dev_type)
for n in progress(worlds, desc="process groups"):
    variants = Z.ALL_VARIANTS if n == main_world else ("ddp", "zero1", "zero2", "zero3", "zero3_offload")
    runs[n] = D.launch(Z.zero_worker, n, (cfg, variants), backend=backend)[0]
ckpt = Z.checkpoint_experiment(seed=seed, device=dev_type, **({} if toy else {"depth": 32, "width": 1024,
                                                                            "batch": 1024}))
res = Z.ZeroResult(cfg, runs, ckpt, backend)
if dev_type == "cuda":  # offload's real saving on one GPU
    r1 = D.launch(Z.zero_worker, 1, (cfg, ("zero3", "zero3_offload")), backend="nccl")[0]
    res.cuda_offload = {v["name"]: v.get("cuda_max_allocated") for v in r1}

# %% tags=["nbval-ignore-output"]
print(f"all runs: {time.perf_counter() - t_start:.1f} s wall (shared 2-core CPU)")

# %% [markdown]
# ### Loss: every stage is DDP, step for step

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
# ### Cross-check: torch's ZeroRedundancyOptimizer and FSDP2

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
# ### Memory per rank: measured vs the formula
#
# "Measured" is the bytes of the distinct tensors each rank holds after a step: parameter buffers, gradient
# buffers and Adam's `exp_avg`, `exp_avg_sq`, `step`. The black marks are the formula with
# $(P, G, K) = (4, 4, 8)$. Offloaded optimizer states sit in host memory (light blue).

# %%
table = Z.memory_table(res)
print(f"{'N':>2} {'variant':<14}{'params':>8}{'grads':>8}{'optim':>8}{'offload':>8}{'total':>8}{'formula':>9}{'ratio':>7}")
for r in table:
    print(f"{r['N']:>2} {r['variant']:<14}{r['params']:>8}{r['grads']:>8}{r['optim']:>8}{r['optim_offloaded']:>8}"
          f"{r['measured_total']:>8}{r['formula_total']:>9.0f}{r['ratio']:>7.3f}")

# %%
Z.figures(res)  # saves the figures next to the report; the memory chart again here, inline
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
# ### Transient memory and communication
#
# ZeRO-2 never holds more than one layer's full gradient; ZeRO-3 never more than one layer's full
# parameters. Bytes sent per step per rank, counted on the wire, against $2\Psi$ and $3\Psi$:

# %%
n = max(worlds)
for name in ("zero1", "zero2", "zero3"):
    v = res.variant(n, name)
    f = Z.comm_formula_bytes(v["padded_psi"], n, Z.STAGE_OF[name])
    print(f"N={n} {name}: sent {v['sent_bytes_per_step']:.0f} B/step, formula {f:.0f} "
          f"({'3' if name == 'zero3' else '2'}(n-1)/n·4Ψ); peak full-gradient bytes {v['peak_full_grad_bytes']}, "
          f"peak gathered-parameter bytes {v['peak_gathered_param_bytes']}")

# %% [markdown]
# ## Activation checkpointing
#
# The model states are not all: backward needs the activations of the forward. Checkpointing
# {cite}`chen2016checkpoint` keeps only each segment's input and recomputes the segment during backward:
# activation memory falls roughly by the segment length, time rises by about one extra forward (≈ +30%).
# Our implementation is a 15-line autograd function; its gradients are compared with no checkpointing and
# with `torch.utils.checkpoint`.

# %%
show_source(Z._Checkpoint)

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
          f"bytes; grads vs none {r['grad_err']:.0e}, vs torch.utils.checkpoint {r['grad_err_vs_torch']:.0e}")

# %% tags=["nbval-ignore-output"]
for r in res.ckpt:
    print(f"checkpoint every {r['every']}: fwd+bwd {1e3 * r['time_s']:.1f} ms "
          f"({r['time_s'] / base['time_s']:.2f}x)" + (f", CUDA peak {r['cuda_peak']} B" if r["cuda_peak"] else ""))

# %% [markdown]
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = Z.make_report(res, toy, device, seed)
print(report.summary())
assert report.passed, report.failures()

# %% [markdown]
# ## Play: how many GPUs does a model need?
#
# The formula for a real model: pick $\Psi$ and $N$ and see the per-GPU model-state memory of each stage
# (mixed precision, $K = 12$).

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def play(billions: float = 7.0, n_gpus: int = 8) -> None:
    psi = billions * 1e9
    vals = [Z.zero_formula(psi, n_gpus, s)["total"] / 2**30 for s in range(4)]
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.bar(["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"], vals)
    ax.axhline(80, color="k", ls="--", lw=1, label="80 GiB GPU")
    ax.set(ylabel="GiB per GPU", title=f"Ψ = {billions:g}B on {n_gpus} GPUs")
    ax.legend()
    plt.show()


widgets.interact(play, billions=widgets.FloatLogSlider(value=7, base=10, min=-1, max=3, description="Ψ (B)"),
                 n_gpus=widgets.IntSlider(value=8, min=1, max=1024, description="GPUs"));

# %% [markdown]
# ## Exercises
#
# 1. Switch the toy to mixed precision: fp16/bf16 parameters and gradients with an fp32 master copy inside the
#    optimizer. Check that the measured bytes follow $(2 + 2 + 12)\Psi$ and its ZeRO divisions.
# 2. ZeRO-3 gathers each layer twice per step. *Prefetch* the next layer's all-gather while the current
#    layer computes (`async_op=True`) and measure the time saved with `pad`-style delays.
# 3. ZeRO++ quantizes the all-gathered weights to int8. What happens to the $3\Psi$ communication and to the
#    loss-equals-DDP test?
# 4. Combine checkpointing with ZeRO-3: which transient buffers now dominate peak memory?
#
# ## References
#
# ZeRO {cite}`rajbhandari2020zero`; ZeRO-Offload {cite}`ren2021zerooffload`; PyTorch FSDP
# {cite}`zhao2023fsdp`; activation checkpointing {cite}`chen2016checkpoint`. Full entries:
# [bibliography](../../book/bibliography.md).
