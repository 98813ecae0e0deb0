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
# # CUDA / Precision / 算子与混合精度
#
# **中文摘要：** 大模型的速度由两件事决定：算子把数据从显存搬到计算单元要多少字节、每个字节上做多少次运算
# （算术强度），以及每个数用几位来存。本章先讲 GPU 的执行模型（网格、线程块/program、分块），用 Triton
# 从零写出四个算子——向量加、在线（online）融合 softmax、RMSNorm 前向与反向、带小型 autotune 列表的分块矩阵乘——
# 在 CPU 上用 Triton 解释器以小尺寸运行并逐一与 torch 对齐（每个算子给出容差）；用本机实测的矩阵乘峰值
# FLOP/s 和拷贝带宽画出 roofline，把各算子按算术强度放上去，并实测融合与未融合的 softmax/RMSNorm 的速度比。
# 然后从比特位出发推导 fp32/tf32/bf16/fp16/fp8 的范围、精度与次正规数，与 `torch.finfo` 逐项相等；测量各格式
# 求和的舍入误差与 Kahan 补偿求和；展示 fp16 梯度在不做 loss scaling 时下溢为 0 的比例，实现动态 loss scaler
# 并与 `torch.amp.GradScaler` 逐步一致（scale 与跳过的步）；在小语言模型上比较 fp32 与 bf16 autocast 的训练曲线
# （GPU 上再加 fp16+loss scaling）；最后用 `torch._int_mm` 的 INT8 GEMM 和解码阶段"每个 token 读多少字节权重"
# 解释量化为什么能加速。
#
# **Learning goals**
# - read a GPU kernel as a grid of programs over tiles, and write four of them in Triton (vector add, online
#   softmax, RMSNorm forward + backward, an autotuned tiled matmul) that equal torch within stated tolerances;
# - place a kernel on a roofline from its arithmetic intensity, with both ceilings measured on your machine,
#   and see fusion as a move to the right;
# - derive every number of `torch.finfo` from the bit layout of fp32, bf16, fp16 and fp8, and tf32's;
# - measure rounding error in a long sum and remove it with Kahan summation;
# - explain why fp16 training needs loss scaling and bf16 does not, and write a dynamic loss scaler that
#   equals `torch.amp.GradScaler` step for step;
# - explain why weight quantization speeds up decoding: it is memory-bound, so bytes per weight set tokens/s.
#
# **Prerequisites:** [Attention](../02_architecture/02_attention.ipynb) (online softmax, the FlashAttention
# Triton kernel); [Transformer core](../02_architecture/01_transformer.ipynb) (RMSNorm, the tiny LM);
# [Decoding](../02_architecture/06_decoding.ipynb) (INT8/INT4 weight quantization).
#
# ```{note}
# This page was executed on a 2-core CPU **without a GPU**: the Triton kernels ran in Triton's interpreter
# (`TRITON_INTERPRET=1`, numpy on CPU tensors, tiny sizes), the roofline ceilings and kernel timings are the
# CPU's, mixed precision used CPU autocast (bf16 and fp16), and the CUDA version of the C++ extension was not
# compiled. With `device="cuda"` on a GPU the same cells compile the Triton kernels, time them on the
# GPU's roofline and train with CUDA autocast; that path has not been run for this page.
# ```

# %% tags=["parameters"]
toy = True  # True: interpreted kernels at tiny sizes, 150-step LM runs (CPU, ~15 s); False: GPU sizes, 2000 steps
device = "auto"  # "cuda": compiled Triton kernels and GPU timings (a clear error when there is no GPU)
seed = 0

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf,kernels] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import llmcore.core.triton_env as triton_env  # noqa: I001 -- first: the Triton interpreter on a machine without CUDA

import matplotlib.pyplot as plt
import torch

from llmcore.core import pick_device, seed_everything, show_source, use_style
from llmcore.engineering import cuda_precision
from llmcore.engineering.cuda_precision import cpp_ext, formats, kernels, mixed, plots, quant_gemm, roofline

dev = pick_device(device)  # device="cuda" without a GPU stops here with one clear LLMCoreError
seed_everything(seed)
use_style()
cfg = cuda_precision.KernelsConfig.for_mode(toy)
mode = "interpreted (TRITON_INTERPRET=1, CPU tensors)" if triton_env.INTERPRET else "compiled (CUDA)"
print(f"device={dev}, toy={toy}, seed={seed}; Triton kernels: {mode}")

# %% [markdown]
# ## Theory / 理论
#
# ### The execution model / 执行模型
#
# A GPU runs a kernel as a **grid** of thread blocks; each block runs on one streaming multiprocessor (SM),
# its threads grouped in warps of 32 that execute in lock-step. Memory is a hierarchy: a large, slow
# high-bandwidth memory (HBM, ~3 TB/s on an H100), an L2 cache, and per-SM shared memory/registers that are
# fast but small (~228 KB per SM). A kernel is fast when each byte it brings from HBM into the SM is reused
# many times there.
#
# Triton {cite}`tillet2019triton` lets us write the *block* rather than the thread: a **program** is one
# block; `tl.program_id(axis)` says which one; `tl.arange(0, BLOCK)` is a vector of offsets;
# `tl.load(ptr + offs, mask=...)` brings a whole tile into registers and `tl.store` writes one back; the
# compiler maps tile operations onto threads, vector units and tensor cores. The tiled matmul below is the
# canonical example: the program that owns tile $(i, j)$ of $C$ walks along $K$, loading one tile of $A$'s
# row panel and one of $B$'s column panel per step and accumulating $A_{ik}B_{kj}$ in fp32 registers, so
# each loaded element is used `BLOCK` times.

# %%
fig, ax = plt.subplots(figsize=(8, 5.4))
plots.plot_tiled_matmul(ax)
plt.show()

# %% [markdown]
# ### The roofline / Roofline 模型
#
# A kernel doing $F$ FLOPs and moving $Q$ bytes has **arithmetic intensity** $I = F/Q$. With peak compute
# $P$ and bandwidth $B$, its speed is bounded by {cite}`williams2009roofline`
#
# $$
# \text{FLOP/s} \le \min(P,\ B \cdot I), \qquad I^* = P / B \ \text{(ridge point)} .
# $$
#
# Element-wise and normalisation kernels have $I < 1$ FLOP/byte (vector add: 1 FLOP per 12 bytes in fp32),
# far left of any ridge ($I^* \approx$ 300 FLOP/byte for an H100 in bf16): they are **memory-bound**, and the
# only way to speed them up is to move fewer bytes. A large matmul has $I = 2n^3 / (3 \cdot 4 n^2) = n/6$ and is
# compute-bound. **Fusion** computes a chain of element-wise ops in one pass: a softmax written as
# `max, x - m, exp, sum, / s` moves 8 arrays of size $MN$; fused, it reads $x$ once (twice in our two-pass
# online version, from cache) and writes $y$ once — same FLOPs, 4x fewer bytes, 4x higher $I$.
#
# **Online softmax** {cite}`milakov2018online` makes the fused pass possible for rows longer than a tile:
# keep a running maximum $m$ and normaliser $\ell$, and on each new tile $x_{[t]}$
#
# $$
# m' = \max(m, \max_j x_j), \qquad \ell' = \ell\, e^{m - m'} + \sum_j e^{x_j - m'}, \qquad
# y = e^{x - m}/\ell \ \text{at the end}.
# $$
#
# **RMSNorm backward.** With $r = (\tfrac1N\sum_j x_j^2 + \epsilon)^{-1/2}$, $\hat x = x r$, $y = \hat x \odot w$
# and $g = \partial L/\partial y \odot w$, differentiating $r$ gives
#
# $$
# \frac{\partial L}{\partial x} = r\Big(g - \hat x\,\tfrac1N \textstyle\sum_j g_j \hat x_j\Big), \qquad
# \frac{\partial L}{\partial w} = \textstyle\sum_{\text{rows}} \frac{\partial L}{\partial y} \odot \hat x ,
# $$
#
# one row per program again, reusing the $r$ saved by the forward.
#
# ### Number formats / 数值格式
#
# A float with $E$ exponent bits (bias $b = 2^{E-1}-1$) and $M$ mantissa bits stores
# $x = (-1)^s\,2^{e-b}(1 + m/2^M)$ for $0 < e < 2^E - 1$ and the subnormals $(-1)^s\,2^{1-b}\,m/2^M$ for $e = 0$.
# Hence machine epsilon $2^{-M}$ (unit roundoff $u = 2^{-M-1}$), smallest normal $2^{1-b}$, smallest subnormal
# $2^{1-b-M}$ and largest $2^{2^E-2-b}(2 - 2^{-M})$ — except fp8 E4M3 {cite}`micikevicius2022fp8`, which
# keeps the top exponent for numbers (only `S.1111.111` is NaN): $2^{8} \cdot 1.75 = 448$. **bf16** keeps
# fp32's 8 exponent bits (same range, $10^{\pm 38}$) with 7 mantissa bits; **fp16** has 10 mantissa bits but
# only 5 exponent bits: nothing below $2^{-24} \approx 6\times 10^{-8}$, nothing above 65504. **tf32** is how
# tensor cores read fp32 inputs: fp32's range with fp16's 10 mantissa bits.
#
# **Summation.** Adding $N$ numbers left to right in a format with unit roundoff $u$ has error up to
# $(N-1)u\sum|x_i|$; in fp16, once the running sum reaches 2048 the spacing is 2 and adding a value below 1
# changes nothing. **Kahan** summation {cite}`kahan1965` carries the lost low-order part in a compensation
# $c$ and brings the bound down to $(2u + O(Nu^2))\sum|x_i|$ {cite}`higham2002accuracy`.
#
# ### Mixed precision and loss scaling / 混合精度与损失缩放
#
# Mixed-precision training {cite}`micikevicius2018mixed` runs matmuls in 16 bits and keeps fp32 *master
# weights*, optimizer state and reductions. With fp16, small gradients underflow to 0. Scaling the loss by
# $S$ scales every gradient by $S$ (the chain rule is linear), lifting them above $2^{-24}$; the fp32
# gradients are divided by $S$ before the step. The **dynamic** scaler backs $S$ off (×½) and skips the step
# when any gradient is inf/NaN, and doubles it after `growth_interval` clean steps. bf16 has fp32's exponent
# range and needs no scaling — one reason it became the default for LLM training.
#
# ### Why quantization accelerates / 量化为什么能加速
#
# Decoding one token multiplies a vector by every weight matrix: $2KN$ FLOPs over $KN$ weights of $b$ bytes,
# $I = 2/b$ FLOP/byte — deep in the memory-bound region. Time per token ≈ weight bytes / bandwidth, so
# halving the bytes per weight (fp16 → INT8 → INT4, W8A16/W4A16) nearly doubles tokens/s. For large batches
# (prefill, training) the matmul becomes compute-bound and the win comes from INT8 tensor cores instead:
# $x W^\top \approx (s_x s_w^\top) \odot (q_x q_w^\top)$ with $q_x q_w^\top$ an exact int32 GEMM
# {cite}`dettmers2022llmint8`.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
plots.plot_bit_layouts(axes[0])
plots.plot_representable(axes[1])
plt.show()

# %% [markdown]
# ## The implementation / 实现
#
# The online softmax kernel: one program per row, two loops over column tiles (statistics, then output).
# Masked lanes load $-\infty$, which contributes $e^{-\infty} = 0$ to the normaliser.

# %%
show_source(kernels.python_fn(kernels._softmax_kernel))

# %% [markdown]
# RMSNorm's forward saves $r$ per row; its backward is the formula above, one row per program. The partial
# $\partial L/\partial w$ of each row is reduced by torch (a second tiny kernel on a GPU). `RMSNormFn` plugs
# both into autograd.

# %%
show_source(kernels.python_fn(kernels._rmsnorm_bwd_kernel), kernels.RMSNormFn)

# %% [markdown]
# The tiled matmul and its autotune list: `triton.autotune` runs each block shape once per new `(M, N, K)`
# and keeps the fastest (on a GPU with Triton's CUDA-event timer; under the interpreter with a wall clock).

# %%
show_source(kernels.python_fn(kernels._matmul_kernel))
print("autotune list (BLOCK_M, BLOCK_N, BLOCK_K):", kernels.MATMUL_BLOCKS)

# %% [markdown]
# The format fields are computed from bit patterns with integer arithmetic only (Python `Fraction`s) —
# no `torch.finfo` inside:

# %%
show_source(formats.decode, formats.kahan_sum)

# %% [markdown]
# Our dynamic loss scaler has `GradScaler`'s four calls — `scale`, `unscale_`, `step`, `update`:

# %%
show_source(mixed.DynamicLossScaler)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# One call runs every part: the four kernels against torch, the two measured ceilings and the kernel
# timings, the format table and sums; training runs of the tiny LM on the same batches from the same
# initialisation — fp32 and bf16 autocast (plus fp16 autocast with our scaler on a GPU: fp16 matmuls on a
# CPU are ~8x slower than fp32) — the fp16 underflow count on the trained model, and a short fp16-autocast
# pair, our scaler vs `torch.amp.GradScaler`; then the INT8 GEMMs and the decode sweep.

# %%
res = cuda_precision.experiment(cfg, dev, seed)
print(f"matmul autotune picked {res.best_matmul} ({res.triton_mode})")

# %% [markdown]
# ### Kernels vs torch / 算子与 torch 对照
#
# Tolerances (fp32): vector add must be exact; softmax and RMSNorm differ from torch only in the order of a
# row's sum ($\sim N u$ relative); the matmul sums $K$ products in another order ($\sim K u \max|a||b|$).

# %%
for c in res.kernel_checks:
    print(f"{c.name:26s} {c.shape:28s} max|triton - torch| = {c.max_abs_err:.2e}  (tol {c.tol:g})")
assert all(c.passed for c in res.kernel_checks)

# %% [markdown]
# ### The roofline, measured here / 本机实测的 roofline
#
# The roof is drawn from two measurements on this machine: a large fp32 matmul (peak FLOP/s) and a large
# `copy_` (bytes/s). Each kernel sits at its formula intensity and its measured FLOP rate (on CPU: torch's
# kernels for the same operations; the interpreter's speed means nothing). The arrows go from the unfused
# chain to the fused kernel: same FLOPs, fewer bytes.

# %%
fig, ax = plt.subplots(figsize=(7.5, 4.8))
plots.plot_roofline(ax, res.ceilings, res.points, f"Roofline on {res.device} (measured ceilings)")
plt.show()
print(f"peak (matmul {res.ceilings.matmul_n}^3): {res.ceilings.flops / 1e9:.1f} GFLOP/s; "
      f"copy: {res.ceilings.bandwidth / 1e9:.1f} GB/s; ridge {res.ceilings.ridge:.1f} FLOP/byte")
for op, ratio in roofline.fusion_speedups(res.points).items():
    print(f"{op}: unfused / fused time = {ratio:.2f}x  ({cfg.fuse_rows} x {cfg.fuse_cols} fp32, one run)")

# %% [markdown]
# The ratios are measured side by side in one run and vary with the machine; `benchmarks/kernel_fusion.py`
# repeats them over sizes and seeds (numbers in [the benchmarks page](../../book/benchmarks.md)). On this
# CPU torch's `softmax` is one fused pass and beats the five-op chain severalfold, but torch's CPU
# `F.rms_norm` is *not* a single fused pass: it runs no faster than the unfused chain (ratio ≈ 1 or below). The
# one-loop C++ RMSNorm below is, and when its build is cached it is timed too ("C++ fused").
#
# ### Formats from their bits = `torch.finfo` / 从比特位推出的格式表

# %%
print(f"{'format':11s} {'E':>2} {'M':>2} {'max':>11} {'eps':>10} {'min normal':>11} {'min subnormal':>13} | torch")
for r in res.table:
    o = r["ours"]
    same = "n/a (no dtype)" if r["torch"] is None else ("equal" if all(o[k] == v for k, v in r["torch"].items())
                                                         else "DIFFERENT")
    print(f"{r['format']:11s} {r['E']:>2} {r['M']:>2} {o['max']:>11.4g} {o['eps']:>10.3g} {o['smallest_normal']:>11.3g} "
          f"{o['smallest_subnormal']:>13.3g} | {same}")
assert formats.table_mismatches(res.table) == 0

# %% [markdown]
# Summing `cfg.sum_n` uniform(0, 1) values (4096 in toy mode): the naive running sum stalls once the
# spacing of the format exceeds the addends; Kahan stays within $2u$.

# %%
s = res.sums
for name in s.naive:
    print(f"{name:5s} u={s.unit_roundoff[name]:.1e}  naive rel. error {s.naive[name]:.2e}   "
          f"Kahan {s.kahan[name]:.2e}  (ratio {s.naive[name] / max(s.kahan[name], 1e-30):.0f}x)")

# %% [markdown]
# ### fp16 underflow, loss scaling and GradScaler / fp16 下溢、损失缩放与 GradScaler
#
# The gradient of the loss with respect to the logits is $(p - \text{onehot})/(B(T-1))$ per token. Once the
# model is trained, most of the $p_i$ are tiny, and $p_i / (B(T-1))$ falls below half of fp16's smallest
# subnormal $2^{-24}$: those entries round to 0 when the gradient enters the fp16 model. Below: the trained
# fp32 model's logits gradients on a fresh batch, computed once in fp32 and once with the whole model in
# fp16, without and with a loss scale $S$ that shifts them right.

# %%
fig, ax = plt.subplots(figsize=(7.5, 3.6))
plots.plot_grad_hist(ax, res.underflow, "logits")
plt.show()
u = res.underflow
for kind in ("logits", "params"):
    print(f"{kind:6s} gradients flushed to 0 in fp16: {u.unscaled[kind]:.2%} unscaled, "
          f"{u.scaled[kind]:.2%} with S = {u.loss_scale:g}")

# %% [markdown]
# Left: the fp16-autocast pair starts at
# torch's default $S = 2^{16}$ and grows every `growth_interval` clean steps until the scaled backward
# overflows fp16; both scalers then skip the same steps and back off to the same $S$, and the two models end
# bit-for-bit equal. Right: fp32 vs bf16 autocast (and fp16 + scaling on a GPU) on the same batches.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
plots.plot_scale(axes[0], res.scaler)
plots.plot_training(axes[1], res.runs)
plt.show()
eq = res.scaler
print(f"skipped steps: ours {eq['ours'].skipped}, GradScaler {eq['torch'].skipped}; "
      f"steps with a different scale: {eq['scale_mismatches']}; max |param diff| {eq['param_max_diff']:.1e}")
for name, r in res.runs.items():
    print(f"{name:22s} final val loss {r.val:.4f} nats/token   ({r.wall_s:.1f} s for {len(r.loss)} steps)")

# %% [markdown]
# ### INT8 GEMM and memory-bound decode / INT8 矩阵乘与访存受限的解码
#
# First the equalities: `torch._int_mm` against exact integer arithmetic, the INT8 GEMM built on it against
# the kit's `int8_matmul` (same quantizer, `quantize_absmax`), and `_weight_int8pack_mm` (W8A16) against
# the matmul with its dequantized weight. Then decode at batch 1: four distinct `(2048, 2048)` weight
# matrices per token (64 MB in fp32, past the caches) in fp32, bf16 and INT8. Tokens/s should follow
# bandwidth / bytes; a set small enough to stay in the CPU's last-level cache (16 MB of INT8 here may)
# can beat that line, which a GPU's 50 MB L2 does not allow for a real model's gigabytes of weights.

# %%
for k, v in res.int8.items():
    print(f"{k:48s} {v:.2e}")
fig, ax = plt.subplots(figsize=(6.5, 4))
plots.plot_decode(ax, res.decode)
plt.show()
for p in res.decode:
    print(f"{p.name:14s} {p.weight_bytes / 1e6:7.1f} MB/token  {p.tokens_per_s:8.1f} tokens/s  {p.gbps:6.1f} GB/s")
print("W4A16 (arithmetic): 0.5 byte/weight + fp16 scales per group of 128 -> "
      f"{cfg.decode_layers * cfg.decode_k * cfg.decode_n * (0.5 + 2 * 2 / 128) / 1e6:.1f} MB/token")

# %% [markdown]
# ### The same kernel as a C++ extension / 同一个算子的 C++ 扩展
#
# `torch.utils.cpp_extension.load_inline` compiles a C++ (or CUDA) source with the system compiler and
# imports it. Compiling against libtorch's headers takes ~25 s on the 2-core CI machine — half of this page's
# time budget — so the page **loads a cached build when one exists** (the unit tests and the cell below with
# `build=True` create it in `output/torch_extensions/`) and otherwise only shows the source.

# %%
print(cpp_ext.CPP_SOURCE.strip())
build = False  # True: compile now (about a minute on 2 cores the first time)
target = "cuda" if dev.type == "cuda" else "cpu"
if build or cpp_ext.is_built(target):
    ext, secs = cpp_ext.build(target)
    x_demo, w_demo = torch.randn(64, 256).to(dev), torch.rand(256).to(dev)
    err = (cpp_ext.rmsnorm_ext(ext, x_demo, w_demo) - torch.nn.functional.rms_norm(x_demo, (256,), w_demo, 1e-6))
    print(f"{target} extension loaded in {secs:.1f} s; max |ext - torch| = {err.abs().max():.1e}")
else:
    print(f"no cached {target} build in {cpp_ext.build_dir(cpp_ext.ext_name(target))}: set build=True to compile it")

# %% [markdown]
# ### Cross-checks against torch / 与 torch 的交叉验证
#
# Every oracle here is torch itself: `torch.softmax`, `F.rms_norm` and its autograd, `torch.matmul`,
# `torch.finfo` and `Tensor.view`, `torch.amp.GradScaler`, and the int32 arithmetic of `torch._int_mm`.

# %%
assert all(c.passed for c in res.kernel_checks), "a Triton kernel differs from torch"
assert formats.table_mismatches(res.table) == 0, "the bit-twiddled table differs from torch.finfo"
assert eq["scale_mismatches"] == 0 and eq["skipped_equal"] and eq["param_max_diff"] == 0.0
assert res.int8["int_mm exact (max int diff)"] == 0
print("kernels = torch, formats = torch.finfo, our scaler = GradScaler, _int_mm exact")

# %% [markdown]
# ## Results / 结果
#
# Each criterion with its threshold (what holds on any machine); the measured values follow.

# %%
# NBVAL_CHECK_OUTPUT
report = cuda_precision.make_report(res, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print(report.summary())

# %% [markdown]
# ## Play: rounding in a long sum / 动手：长求和中的舍入
#
# Pick a format and a length: the naive sum stalls where the format's spacing passes the addends.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def show_sum(fmt: str = "bf16", n: int = 1024) -> None:
    f = formats.BY_NAME[fmt]
    x = formats.round_to(torch.rand(1, n, generator=torch.Generator().manual_seed(seed)), f)
    exact = float(x.double().sum())
    print(f"{fmt}, n={n}: exact {exact:.2f}  naive {float(formats.naive_sum(x, f)):.2f}  "
          f"Kahan {float(formats.kahan_sum(x, f)):.2f}")


widgets.interact(show_sum, fmt=widgets.Dropdown(options=["fp32", "bf16", "fp16", "tf32"], value="bf16"),
                 n=widgets.IntSlider(value=1024, min=64, max=4096, step=64));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Interpreter, not hardware.** On this CPU the Triton kernels run in Triton's interpreter: the results
#   are the kernels' real arithmetic, but their speed means nothing; the roofline points are torch's CPU
#   kernels. On a GPU the same cells time the compiled kernels.
# - **Production kernels** (Liger, Apex, FlashAttention, cuBLAS) fuse more (RMSNorm + residual add,
#   softmax + cross-entropy), use `num_warps`/`num_stages` and larger autotune spaces, and reduce the
#   RMSNorm weight gradient per SM rather than per row.
# - **Autocast on CPU** stands in for CUDA autocast; fp16 on CPU is slow and never used in practice. fp8
#   training (per-tensor scaling, Transformer Engine) appears here only as formats.
# - **Decode** here is one matrix–vector product per layer on a CPU, without attention or the KV cache;
#   the W8A16 kernel is torch's `_weight_int8pack_mm`; INT4 is given as arithmetic only.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** interpreted kernels at 16 x 128 / 64 x 72 sizes, a 64 MB copy and a 1024^3 matmul for
#   the ceilings, two 150-step runs of a 2-layer, d=64 byte-level LM and two 48-step fp16 runs: the closed
#   loop (`python run.py --module kernels --toy`) takes 15 s wall, peak RAM 0.7 GB, on the 2-core CI CPU with
#   no GPU; the whole page (plots included) executes in 22-25 s, 0.75 GB. Compiling the C++ extension once: ~25 s.
# - **Full (`toy=False`, GPU):** compiled kernels at 1024^2 sizes, GPU ceilings, a d=256 4-layer LM for 2000
#   steps per run: minutes on one GPU (not run for this page).
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - GPU 算子 = 网格中的 program（线程块）处理数据块；Triton 以块为单位编程。 · A kernel is a grid of
#   programs over tiles; Triton programs the block, not the thread.
# - 算术强度 $I=F/Q$ 决定算子受访存还是算力限制；融合减少字节、把算子右移。 · Arithmetic intensity decides
#   memory- vs compute-bound; fusion moves fewer bytes and shifts a kernel right on the roofline.
# - 在线 softmax 用运行最大值与归一化因子一遍统计整行，使融合成为可能。 · Online softmax keeps a running
#   max and normaliser, which makes a fused row-wise kernel possible.
# - 浮点格式的范围与精度完全由指数位与尾数位决定；bf16 范围同 fp32，fp16 会下溢。 · Exponent bits set the
#   range and mantissa bits the precision: bf16 has fp32's range, fp16 underflows.
# - fp16 训练需要动态 loss scaling；我们的实现与 GradScaler 逐步一致。 · fp16 training needs dynamic loss
#   scaling; ours matches GradScaler step for step.
# - 解码受访存限制：每个权重的字节数决定每秒 token 数，量化因此加速。 · Decoding is memory-bound: bytes per
#   weight set tokens per second, which is why quantization speeds it up.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `loss_scale_update(scale, streak, found_inf, growth_factor, backoff_factor,
#    interval)` returning `(new_scale, new_streak)` for one step of a dynamic loss scaler, and check it
#    with `llmcore.exercises.check_loss_scale_update(loss_scale_update)`.
# 2. Write a LayerNorm forward kernel in Triton (subtract the mean, divide by the standard deviation, scale
#    and shift) following `_rmsnorm_fwd_kernel`, and compare it with `torch.nn.functional.layer_norm`.
# 3. Compute the arithmetic intensity of the attention score matmul $QK^\top$ for one head with sequence
#    length $n$ and head size $d$ in bf16. For which $n$ does it pass this machine's ridge point?
# 4. Why does fp16's naive sum of uniform(0, 1) values stall near 2048 while bf16's stalls near 256? Predict
#    the stall value for tf32 and check it with the play cell.
# 5. Re-run the scaler comparison with `growth_interval=2000` (torch's default). How many of the 48 steps
#    are skipped, and why do real runs skip so few?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. ```python
#    def loss_scale_update(scale, streak, found_inf, growth_factor, backoff_factor, interval):
#        if found_inf:
#            return scale * backoff_factor, 0          # back off and restart the streak
#        streak += 1
#        if streak == interval:
#            return scale * growth_factor, 0            # grow after `interval` clean steps
#        return scale, streak
#    ```
# 2. Two reductions per row (mean, then variance of $x - \mu$), then `(x - mu) * rstd * w + b`; the
#    difference from `layer_norm` should be ~1e-6 in fp32.
# 3. $F = 2n^2 d$, $Q = 2(2nd + n^2)$ bytes, so $I = n d/(2d + n)$, which tends to $d$ for long
#    sequences: with $d = 64$ it never exceeds 64 FLOP/byte, below an H100's ridge (~300) — one reason
#    FlashAttention fuses the two matmuls and the softmax.
# 4. The sum stalls when half the spacing exceeds the addends' mean (0.5): spacing $2^{e-M}$ at sum
#    $2^e$, so it stalls at $2^{M}$ to $2^{M+1}$: fp16 ($M = 10$) ~2048, bf16 ($M = 7$) ~256, tf32 ($M = 10$) ~2048.
# 5. With no growth for 2000 steps the scale stays at $2^{16}$, below this model's overflow edge (the pair
#    above first overflows near $2^{19}$), so no step is skipped; production scalers grow rarely and skip a
#    handful of steps per thousand.
# :::
#
# ## References / 参考文献
#
# Triton {cite}`tillet2019triton`; online softmax {cite}`milakov2018online`; roofline
# {cite}`williams2009roofline`; mixed precision {cite}`micikevicius2018mixed`; fp8 {cite}`micikevicius2022fp8`;
# Kahan {cite}`kahan1965`; Higham {cite}`higham2002accuracy`; LLM.int8() {cite}`dettmers2022llmint8`.
# Full entries: [bibliography](../../book/bibliography.md).
