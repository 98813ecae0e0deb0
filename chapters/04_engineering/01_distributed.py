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
# # Distributed Training (Megatron) / 分布式训练
#
# **中文摘要：** 大模型放不进一张卡，也算不完于一张卡，于是要把计算切开：张量并行（TP）把一层的矩阵按列/按行
# 切到多张卡上，用一对共轭算子 $f$/$g$ 完成前向和反向的 all-reduce；流水线并行（PP）把层切成若干 stage，
# 用 GPipe 或 1F1B 调度 micro-batch，代价是流水线"气泡" $(p-1)/(m+p-1)$；专家并行（EP）把 MoE 的专家放在
# 不同进程上，用 all-to-all 分发和收回 token。本章全部运行在真实的 `torch.distributed` 上（CPU 用 gloo，
# GPU 用 NCCL）：逐字节统计每种方案的通信量并与解析公式对照，验证 TP/PP/EP 的输出和梯度与单进程模型一致
# （1e-5），实测流水线气泡，并比较 Prefill/Decode 分离（PD 分离）与混合部署下的首 token 时延（TTFT）
# 和每 token 时延（TPOT）。理论部分推导环形 all-reduce 的字节数、$f/g$ 算子的梯度、气泡公式，画出张量并行的
# 列/行切分图和 GPipe/1F1B 调度图，并用"延迟 + 字节/带宽"（α–β）模型按公开的链路规格估算每种并行的通信时间，
# 说明为什么张量并行放在节点内（NVLink），流水线并行和数据并行可以跨节点。注意：本页的流水线和 PD 计时是
# 在 CPU 上按代价模型补齐（padding）的**模拟**，不是 GPU 实测。
#
# **Learning goals**
# - build collectives (ring all-reduce = reduce-scatter + all-gather, all-to-all) from point-to-point
#   messages and *measure* their traffic: $2(n-1)/n \cdot S$ bytes per rank for an all-reduce;
# - split a transformer block Megatron-style (column/row-parallel linears, heads across ranks) and see
#   why exactly two all-reduces per block per direction suffice;
# - schedule a pipeline (GPipe, 1F1B), draw its timeline and measure its bubble;
# - dispatch MoE tokens to experts on other ranks with differentiable `all_to_all`;
# - separate prefill from decode and read the TTFT / TPOT trade-off;
# - launch process groups from a notebook that never hang: a dead or stuck rank is one clear error;
# - estimate each parallelism's communication time with the α–β (latency + bytes/bandwidth) model and
#   decide where it goes: tensor parallelism inside a node, pipeline and data parallelism across nodes.
#
# **Prerequisites:** [Transformer core](../02_architecture/01_transformer.ipynb) (attention, MLP);
# PyTorch autograd (`torch.autograd.Function`).
#
# ```{note}
# The runs in this book were executed on a 2-core CPU with gloo. The NCCL path (`device="cuda"`, one
# GPU per rank) is implemented and refuses clearly when GPUs are missing, but it was **not** exercised
# when this page was built (no GPU was available).
# ```

# %% tags=["parameters"]
toy = True  # True: tiny models, 2 gloo ranks (CPU, ~1 min); False: larger models (a GPU per rank: NCCL)
device = "auto"  # "auto": NCCL if there is one GPU per rank, else gloo on CPU
seed = 0
world = 2  # ranks for TP / PP / EP (PD always uses 2: prefill + decode)

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

from llmcore.core import pick_device, progress, seed_everything, show_source, use_style
from llmcore.engineering import dist_utils, distributed, expert_parallel, pd_disagg, pipeline, tensor_parallel

dev = pick_device(device)  # validates the knob: device="cuda" without a GPU is a clear error
seed_everything(seed)
use_style()
backend, dev_type = dist_utils.resolve_backend(device, world)
cfg = distributed.DistConfig.for_mode(toy, seed, world)
print(f"backend={backend} ({dev_type}), ranks={world}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory / 理论
#
# ### Why split a model at all / 为什么要切分
#
# Training a model of $\Psi$ parameters with Adam in mixed precision keeps $16\Psi$ bytes of model states
# (the [ZeRO chapter](04_zero.ipynb) derives this): 112 GB for a 7B model, more than one 80 GB GPU holds
# before a single activation is stored. And a training run of $D$ tokens costs about $6\Psi D$ FLOPs
# (2 per parameter per token forward, 4 backward): $6 \cdot 7\cdot10^9 \cdot 2\cdot10^{12} \approx 8\cdot10^{22}$
# for 2T tokens, almost seven GPU-years at 400 TFLOP/s. So the work is split along three axes, which compose
# ("3-D parallelism", {cite}`narayanan2021megatron`):
#
# * **data parallelism (DP, 数据并行)** — every rank holds the whole model and a slice of the batch;
#   gradients are all-reduced once per step;
# * **tensor parallelism (TP, 张量并行)** — every rank holds a slice of *every* weight matrix; activations
#   are all-reduced inside every layer;
# * **pipeline parallelism (PP, 流水线并行)** — every rank holds a contiguous slice of *layers*; activations
#   and their gradients pass between neighbours;
#
# plus **expert parallelism (EP, 专家并行)** for MoE layers: every rank holds some experts, tokens travel
# to them by all-to-all. 模型放不进一张卡（显存），也算不完于一张卡（算力），所以要沿数据、张量、流水线
# 三个维度切分；三者可以组合使用。
#
# ### Collectives and what they cost / 集合通信及其代价
#
# With $n$ ranks in a ring and a tensor of $S$ bytes, **ring reduce-scatter** takes $n-1$ steps; in each,
# every rank sends one chunk of $S/n$ bytes to its right neighbour and adds the chunk arriving from the
# left. After $n-1$ steps rank $r$ holds the complete sum of chunk $r$. **Ring all-gather** circulates the
# finished chunks the same way, without adding. An **all-reduce** is the two in a row
# {cite}`patarasuk2009ring`:
#
# $$
# \text{bytes sent per rank} = \underbrace{\tfrac{n-1}{n} S}_{\text{reduce-scatter}}
#   + \underbrace{\tfrac{n-1}{n} S}_{\text{all-gather}} = \frac{2(n-1)}{n}\,S ,
# $$
#
# which tends to $2S$ — independent of $n$ — the reason ring all-reduce scales. 环形 all-reduce 每个 rank
# 发送 $2(n-1)/n \cdot S$ 字节，几乎与进程数无关。
#
# **The α–β model.** Each of the $2(n-1)$ steps also pays a fixed latency $\alpha$ (launching the transfer,
# synchronising neighbours), and bytes move at the link bandwidth $\beta$ (bytes/s, one direction). So
#
# $$
# T_{\text{all-reduce}}(S, n) = 2(n-1)\,\alpha + \frac{2(n-1)}{n}\,\frac{S}{\beta},\qquad
# T_{\text{reduce-scatter}} = T_{\text{all-gather}} = (n-1)\,\alpha + \frac{n-1}{n}\,\frac{S}{\beta},\qquad
# T_{\text{send}} = \alpha + \frac{S}{\beta}.
# $$
#
# Small messages are latency-bound ($2(n-1)\alpha$ grows with $n$; tree algorithms cut it to
# $O(\log n)\,\alpha$), large ones bandwidth-bound. The byte term is exactly what `Comm` counts on the wire
# below, so the model's only assumptions are $\alpha$ and $\beta$ — properties of the link, the subject of
# the placement section.

# %% [markdown]
# ### Tensor parallelism / 张量并行
#
# Megatron-LM {cite}`shoeybi2019megatron` splits the MLP $Z = \mathrm{act}(XA)\,B$ as
# $A = [A_1, \dots, A_n]$ by columns and $B = [B_1; \dots; B_n]$ by rows. Because the activation acts
# elementwise, $\mathrm{act}(XA) = [\mathrm{act}(XA_1), \dots, \mathrm{act}(XA_n)]$, and a row-split
# product is a sum of block products:
#
# $$
# Z = \sum_{i=1}^{n} \mathrm{act}(X A_i)\, B_i ,
# $$
#
# each term local to rank $i$ and one sum (an all-reduce) at the end. (Splitting $A$ by *rows* instead
# would need a sum *before* the nonlinearity — a second all-reduce.) Two conjugate operators carry the
# communication. $g$ is that final sum: an all-reduce forward; its backward is the identity, since
# $\partial Z/\partial Z_i = I$ hands every rank the same upstream gradient. $f$ sits where the replicated
# $X$ enters: the identity forward, and an all-reduce backward, because $X$ feeds every rank's branch and
# the chain rule sums the branches:
#
# $$
# \frac{\partial L}{\partial X} = \sum_{i=1}^{n} \frac{\partial L}{\partial Y_i}\,A_i^{\top}
# \qquad (Y_i = XA_i).
# $$
#
# Attention splits by heads in the same way (Q/K/V column-parallel, the output projection row-parallel).
# A block therefore costs **2 all-reduces forward and 2 backward** of the activation $(B, T, d)$, and each
# rank stores $1/n$ of the block's weights. 列切分 $A$、行切分 $B$，中间的激活函数留在本地；前向和反向各只需
# 一次 all-reduce（$g$ 和 $f$）。The block split here is the book's own LLaMA block
# ([Transformer chapter](../02_architecture/01_transformer.ipynb)): its SwiGLU MLP
# $(\mathrm{SiLU}(XA) \odot XC)\,B$ splits $A$ and $C$ by columns alike, the product stays local, and the
# count is the same; query and key/value heads are split together, so grouped-query attention stays local too.

# %%
fig, ax = plt.subplots(figsize=(9, 3.6))
tensor_parallel.plot_column_row_split(ax, n=2)
plt.show()

# %% [markdown]
# ### Pipeline parallelism / 流水线并行
#
# Cut $L$ layers into $p$ stages, the batch into $m$ micro-batches, and let every forward of a micro-batch
# on a stage take $t_f$ and every backward $t_b$. **GPipe** {cite}`huang2019gpipe` runs all forwards, then
# all backwards. Micro-batch $i$ reaches the last stage at $(i + p - 1)\,t_f$, so the last forward ends at
# $(m + p - 1)\,t_f$; the backwards drain the same way in $(m + p - 1)\,t_b$. The makespan is
# $(m+p-1)(t_f+t_b)$, of which each stage is busy $m(t_f+t_b)$, so the idle fraction — the **bubble
# (气泡)** — is
#
# $$
# \text{bubble} = 1 - \frac{m(t_f+t_b)}{(m+p-1)(t_f+t_b)} = \frac{p-1}{m+p-1}.
# $$
#
# **1F1B** {cite}`narayanan2021megatron` (PipeDream-flush) has stage $r$ run $p-r-1$ warm-up forwards and
# then alternate one forward, one backward. Its makespan — and so its bubble — is the same, but a
# micro-batch's activations are freed as soon as its backward has run, so stage $r$ never stashes more
# than $p-r$ micro-batches instead of $m$. That is why 1F1B is the default: the bubble shrinks only with
# more micro-batches ($m \gg p$), and only 1F1B can afford many. 气泡只取决于 $p$ 和 $m$；1F1B 不缩小气泡，
# 而是把每个 stage 暂存的激活从 $m$ 份降到至多 $p-r$ 份。The diagrams below are computed from the
# dependencies alone (`pipeline.ideal_timeline`: an op starts when its stage is free and its input has
# arrived), with $t_b = 2t_f$.

# %%
fig, axes = plt.subplots(2, 1, figsize=(9, 4.8))
pipeline.plot_schedule_diagram(axes[0], "gpipe", p=4, m=8)
pipeline.plot_schedule_diagram(axes[1], "1f1b", p=4, m=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Expert parallelism / 专家并行
#
# A top-$k$ MoE layer {cite}`shazeer2017moe,lepikhin2020gshard` routes each token to $k$ experts and mixes
# their outputs with renormalised gates, $y = \sum_{j=1}^k g_j(x)\,E_{e_j}(x)$. With experts spread over
# ranks, a forward is *route → all-to-all dispatch → local experts → all-to-all combine*; the backward is
# the same two all-to-alls reversed (the transpose of a permutation is its inverse). If a rank holds $N$
# tokens of $d$ values and routing is uniform, a fraction $(n-1)/n$ of its $Nk$ rows leave the rank in each
# all-to-all, so one forward plus backward sends about $4 \cdot \tfrac{n-1}{n} N k d$ values per rank —
# the same order as one TP all-reduce of the activation, but paid only in MoE layers.
#
# ### Placement: a bandwidth time model / 放置：带宽时间模型
#
# Which axis goes on which link? Put the α–β model's numbers on a 7B-like job (d = 4096, 32 layers,
# sequence 4096, TP = 8, PP = 4, DP = 8, 16 micro-batches per step) and compare each axis's communication
# with the compute it accompanies. The link numbers are **assumptions** from public peak specs (one
# direction per GPU; α is an assumed order of magnitude of one ring step, not a spec), and the GPU is
# assumed to achieve 400 TFLOP/s in bf16:

# %%
print(f"{'link (assumption)':<46}{'β GB/s':>8}{'α µs':>6}  spec")
for link in distributed.LINKS.values():
    print(f"{link.name:<46}{link.bandwidth / 1e9:>8.1f}{link.latency * 1e6:>6.0f}  {link.spec}")
print()
print(f"{'axis':<5}{'communication':<50}{'compute':>10}{'NVLink 4':>11}{'IB NDR':>11}{'ratio NVL':>10}{'ratio IB':>9}")
for row in distributed.placement_table(distributed.PlacementConfig(), inside="nvlink4", across="ib_ndr"):
    print(f"{row['dim']:<5}{row['what']:<50}{row['compute_s'] * 1e3:>8.2f}ms{row['inside_s'] * 1e3:>9.2f}ms"
          f"{row['across_s'] * 1e3:>9.2f}ms{row['inside_ratio']:>10.2f}{row['across_ratio']:>9.2f}")

# %% [markdown]
# Read the ratios (communication / compute, no overlap):
#
# * **TP inside a node.** Four all-reduces of the whole activation per layer cost about 0.45× the layer's
#   compute on NVLink but over 3× on InfiniBand — TP across nodes would make communication dominate.
#   Its messages are also on the critical path (the next matmul needs the sum). So TP ≤ GPUs per node (8).
# * **PP across nodes.** One activation each way per micro-batch per stage: about 11% of a stage's compute
#   even on InfiniBand, and point-to-point, so it overlaps with the next micro-batch.
# * **DP across nodes (outermost).** One gradient all-reduce per *step*, amortised over all micro-batches
#   and overlapped with the backward: under 10% on InfiniBand.
#
# 张量并行每层都要 all-reduce，必须放在节点内的 NVLink 上；流水线并行只在 stage 之间点对点传激活，数据并行
# 每步只做一次梯度 all-reduce，都可以跨节点。The measured bytes in this chapter are exact; the times in this
# table are a model whose inputs are stated above — a reader with real hardware should replace $\alpha$ and
# $\beta$ by what `nccl-tests` measures.

# %% [markdown]
# ## Launching real process groups from a notebook / 在 notebook 中启动真实的进程组
#
# `dist_utils.launch(fn, world, args)` starts `world` processes, joins them in a process group and returns each
# rank's return value. Three engineering details make it usable in a notebook and in tests:
#
# * the worker functions live in the `llmcore` package, so child processes can import them;
# * children come from a **forkserver** that imported torch once, so a group starts in ~0.1 s;
# * the rendezvous store is opened *by the parent* on port 0: the OS picks a free port and the parent
#   holds it, so two jobs on one machine cannot collide; and every collective has a timeout, so a rank
#   that dies or hangs becomes one `DistributedError`.
#
# 每个 rank 是一个真实的进程；一个进程被杀死或卡住时，整个作业在几秒内以一条清楚的错误结束，而不是永远挂起。

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
dist_utils.launch(dist_utils.collectives_worker, 2, (8, seed))  # the first job also starts the forkserver (imports torch once)
print(f"first job (forkserver start): {time.perf_counter() - t0:.2f} s")
t0 = time.perf_counter()
dist_utils.launch(dist_utils.collectives_worker, 2, (8, seed))
print(f"second job: {time.perf_counter() - t0:.2f} s")
# A rank that is killed mid-job (SIGKILL on rank 1 after three all-reduces) fails the job in well
# under a second, with the root cause first:
t0 = time.perf_counter()
try:
    dist_utils.launch(dist_utils.failing_worker, 2, ("kill",), timeout_s=30, collective_timeout_s=5)
except dist_utils.DistributedError as e:
    print(str(e).splitlines()[0])
    print(f"... reported after {time.perf_counter() - t0:.2f} s")
# A rank that hangs: rank 0's all-reduce times out after 2 s, the launcher kills rank 1.
t0 = time.perf_counter()
try:
    dist_utils.launch(dist_utils.failing_worker, 2, ("hang",), timeout_s=30, collective_timeout_s=2)
except dist_utils.DistributedError as e:
    print(str(e).splitlines()[0])
    print(f"... reported after {time.perf_counter() - t0:.2f} s")

# %% [markdown]
# ## The implementation / 实现
#
# `Comm` implements the collectives on `isend`/`irecv` and counts every byte it hands to `isend`.
# Reduce-scatter sends chunk $(r - k) mod n$ at step $k$ and adds the incoming chunk into its own copy;
# all-gather circulates the finished chunks:

# %%
show_source(dist_utils.Comm.reduce_scatter, dist_utils.Comm.all_gather)

# %% [markdown]
# The two conjugate operators are `autograd.Function`s whose `forward` and `backward` are the identity and
# an all-reduce, in opposite order. The linear layers only take their slice of the weight and put $f$ (column)
# or $g$ (row) around the local matmul:

# %%
show_source(tensor_parallel._CopyToParallel, tensor_parallel._ReduceFromParallel, tensor_parallel.ColumnParallelLinear, tensor_parallel.RowParallelLinear)

# %% [markdown]
# A pipeline stage's whole behaviour is its list of operations; the runner just executes it, receiving
# inputs from the left and gradients from the right:

# %%
show_source(pipeline.schedule_ops)

# %% [markdown]
# The expert-parallel MoE layer: route, count how many rows go to each rank, exchange the counts, then
# dispatch, compute and combine with two differentiable all-to-alls:

# %%
show_source(expert_parallel.ExpertParallelMoE.forward)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# One call runs every check on real process groups: collectives, the TP block, the pipeline for GPipe and
# 1F1B over $m \in \{1, 2, 4, 8\}$, the EP MoE layer, and the PD serving experiment.
#
# ```{important}
# **The timings on this page are a simulation.** The values, gradients and bytes are real (computed and
# sent by real processes), but the pipeline's and the PD experiment's *times* follow a cost model: to make
# the timeline show the *schedule* rather than processes fighting over two CPU cores, each pipeline
# forward is padded to 20 ms and each backward to 40 ms (the real compute of the tiny model is far
# shorter), and the PD ops are padded to a GPU-like cost. A GPU run can set `pad=False` to time the real
# compute. 本页流水线与 PD 的计时是按代价模型补齐的模拟；数值、梯度和字节数是真实的。
# ```

# %%
steps = ["collectives", "tensor parallel", "pipeline", "expert parallel", "PD disaggregation"]
bar = progress(total=len(steps), desc="distributed checks")
t_start = time.perf_counter()
coll = dist_utils.launch(dist_utils.collectives_worker, cfg.world, (cfg.collective_numel, seed), backend=backend)
bar.update()
tp = dist_utils.launch(tensor_parallel.tp_worker, cfg.world, (cfg.tp,), backend=backend)
bar.update()
pcs = distributed.pp_configs(cfg)
pp_raw = dist_utils.launch(pipeline.pp_worker, cfg.world, (pcs,), backend=backend)
pp = {(c.schedule, c.micro_batches): [pp_raw[r][k] for r in range(cfg.world)] for k, c in enumerate(pcs)}
bar.update()
ep = dist_utils.launch(expert_parallel.ep_worker, cfg.world, (cfg.ep,), backend=backend)
bar.update()
pd_raw = dist_utils.launch(pd_disagg.pd_worker, 2, (cfg.pd,), backend="gloo")
res = distributed.DistResult(cfg, backend, coll, tp, pp, ep, pd_disagg.summarize(pd_raw, cfg.pd),
                   pd_raw[0][0]["kv_sent_bytes"], pd_disagg.expected_kv_bytes(cfg.pd))
bar.update()
bar.close()

# %% tags=["nbval-ignore-output"]
print(f"all process groups: {time.perf_counter() - t_start:.1f} s wall (shared 2-core CPU)")

# %% [markdown]
# ### Equivalence: every parallel model equals the single-process model / 等价性：并行模型等于单进程模型
#
# Each rank builds the single-process reference with the same seed, runs it, and compares its own shard:
# outputs, the input gradient, and every parameter gradient (a column-parallel weight is compared with
# its rows of the reference gradient, a row-parallel weight with its columns, replicated RMSNorms with the
# whole gradient).

# %%
print(f"TP: max |out - ref| = {max(r['out_err'] for r in res.tp):.1e}, "
      f"max |grad - ref| = {max(r['max_grad_err'] for r in res.tp):.1e}, "
      f"params per rank {res.tp[0]['params_local']} of {res.tp[0]['params_full']}")
print(f"PP: max |loss - ref| = {max(r['loss_err'] for v in res.pp.values() for r in v):.1e}, "
      f"max |grad - ref| = {max(r['grad_err'] for v in res.pp.values() for r in v):.1e}")
print(f"EP: max |out - ref| = {max(r['out_err'] for r in res.ep):.1e}, "
      f"max |grad - ref| = {max(r['grad_err'] for r in res.ep):.1e}; rows sent per rank "
      f"{[r['send_rows'] for r in res.ep]}")

# %% [markdown]
# ### Pipeline timelines and the bubble (simulated timing) / 流水线时间线与气泡（模拟计时）
#
# The same schedules as in the theory diagrams, now executed by two processes with padded ops
# ($t_f$ = 20 ms, $t_b$ = 40 ms). The measured bubble is the real idle time of that run — a check that the
# implementation follows the schedule, not a measurement of hardware.

# %%
m_show = 4
fig, axes = plt.subplots(2, 1, figsize=(8, 1.4 + 0.9 * cfg.world), sharex=True)
pipeline.plot_timeline(res.pp[("gpipe", m_show)], axes[0], f"GPipe, p={cfg.world}, m={m_show}")
pipeline.plot_timeline(res.pp[("1f1b", m_show)], axes[1], f"1F1B, p={cfg.world}, m={m_show}")
plt.show()
distributed.plot_bubbles(res)
plt.show()

# %% tags=["nbval-ignore-output"]
for row in distributed.bubble_table(res):
    print(f"{row['schedule']:>5} m={row['m']}: bubble in the padded (simulated-time) run {row['measured']:.3f}, "
          f"(p-1)/(m+p-1) = {row['formula']:.3f}, peak stashed micro-batches per stage {row['peak_stash']}")

# %% [markdown]
# ### Communication: bytes on the wire vs the formulas / 通信量：实测字节与公式
#
# Every byte below was counted at `isend`; the analytic column is the closed form of each scheme.

# %%
print(f"{'scheme':<24}{'formula':<28}{'measured':>10}{'analytic':>10}")
for row in distributed.bytes_table(res):
    print(f"{row['scheme']:<24}{row['formula']:<28}{row['measured']:>10}{row['analytic']:>10.0f}")

# %% [markdown]
# ### Cross-check: our ring collectives against gloo's own / 交叉验证：与 gloo 自带的集合通信对照
#
# The library collectives (`dist.all_reduce`, `reduce_scatter_tensor`, `all_gather_into_tensor`,
# `all_to_all_single`) are the production reference.

# %%
worst = max(max(r["all_reduce_err"], r["reduce_scatter_err"], r["all_gather_err"], r["all_to_all_err"])
            for r in res.collectives)
assert worst < 1e-5, worst
for r in res.collectives:
    assert r["all_reduce_sent"] == dist_utils.ring_all_reduce_bytes(r["numel_bytes"], cfg.world)
print(f"ring vs library collectives: max |diff| = {worst:.1e}; all-reduce bytes = 2(n-1)/n·S on every rank")

# %% [markdown]
# ## Prefill / decode disaggregation / 预填充与解码分离
#
# Serving has two phases {cite}`zhong2024distserve,patel2024splitwise`: **prefill** processes the whole
# prompt (compute-bound, produces the KV cache and the first token: TTFT) and **decode** produces one token
# per step for every running request (memory-bound: TPOT). A *colocated* worker interleaves them, and every
# prefill stalls the decodes in flight. A *disaggregated* system runs prefills on one worker and ships the
# KV cache — $2 \times \text{layers} \times \text{kv\_heads} \times \text{head\_dim} \times \text{prompt length}$
# values per request ($= 2 \times \text{layers} \times d \times$ length here, as the model has as many key/value
# heads as query heads) — to a decode-only worker. The served model is the book's `Llama` with the kit's
# KV-cache protocol: the prefill fills a dynamic cache, the decode worker rebuilds one from the shipped tensor.
# Both systems below use the same two processes; ops are padded to a GPU-like cost model
# (prefill 6 ms + 0.3 ms/token, decode step 24 ms + 1 ms/request), so TTFT and TPOT below are
# **simulated times** (the tokens and the KV bytes are real). The decode worker polls a
# counter in the group's key-value store between steps to learn that a KV cache is on its way. The greedy tokens of both systems
# are checked against single-process generation.

# %%
show_source(pd_disagg.serve_colocated, pd_disagg.serve_decode)

# %%
pd_disagg.plot_tradeoff(res.pd)
plt.show()

# %% tags=["nbval-ignore-output"]
for row in res.pd:
    c, d = row["colocated"], row["disaggregated"]
    print(f"{row['rate']:>5.0f} req/s | TTFT mean colocated {c['ttft_mean_ms']:6.1f} ms, disaggregated "
          f"{d['ttft_mean_ms']:6.1f} ms | TPOT p90 colocated {c['tpot_p90_ms']:5.1f} ms, disaggregated "
          f"{d['tpot_p90_ms']:5.1f} ms | worst gap {c['max_gap_ms']:5.1f} vs {d['max_gap_ms']:5.1f} ms")

# %% [markdown]
# Read the plot as a trade-off: the decode-only worker is never interrupted, so its TPOT stays near one
# decode step at every load, while the colocated workers' TPOT grows with the number of prefills that cut
# in. The price is on the prefill side: one prefill worker instead of two colocated ones, plus the KV
# transfer, so TTFT grows faster with load — in practice the prefill and decode pools are sized separately
# to meet both targets.

# %% [markdown]
# ## Results / 结果

# %%
# NBVAL_CHECK_OUTPUT
report = distributed.make_report(res, toy, device, seed)
stable = ["ranks", "GPipe peak stashed micro-batches (stage 0)"]
print("\n".join(f"{k}: {report.metrics[k]:g}" for k in stable))
print("\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}" for c in report.criteria))
assert report.passed, report.failures()

# %% [markdown]
# ## Play: micro-batches vs bubble / 动手：micro-batch 数与气泡
#
# Re-run the pipeline (2 ranks, 1F1B, padded ops: simulated time) with a different number of micro-batches
# and watch the bubble and the timeline change.

# %% tags=["nbval-ignore-output"]
from dataclasses import replace

import ipywidgets as widgets


def play(m: int = 4, schedule: str = "1f1b") -> None:
    c = replace(cfg.pp, micro_batches=m, schedule=schedule, batch=4 * m)
    ranks = [r[0] for r in dist_utils.launch(pipeline.pp_worker, 2, ([c],))]
    pipeline.plot_timeline(ranks, title=f"{schedule}, m={m}: bubble {pipeline.measured_bubble(ranks):.3f} "
                                  f"(formula {pipeline.bubble_formula(2, m):.3f})")
    plt.show()


widgets.interact(play, m=widgets.IntSlider(value=4, min=1, max=8, description="micro-batches"),
                 schedule=widgets.Dropdown(options=["1f1b", "gpipe"], value="1f1b"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Simulated time.** On 2 CPU cores the pipeline and PD timings are padded to a cost model; bytes,
#   values and gradients are real. Megatron-LM and vLLM/DistServe time real GPU kernels over NCCL.
# - **Scale.** 2 ranks (4 in the tests), a 10k-parameter block; Megatron runs TP = 8 inside a node,
#   PP over tens of nodes and DP over the rest, with models of 10⁹–10¹² parameters.
# - **Collectives.** Our ring collectives are `isend`/`irecv` loops with one chunk in flight; NCCL pipelines
#   many chunks over several rings/trees and NVLink/NVSwitch, and overlaps communication with compute
#   (and, in Megatron, replaces TP's all-reduce with reduce-scatter + all-gather under sequence parallelism).
# - **Schedules.** Production pipelines use interleaved 1F1B (virtual stages, bubble $(p-1)/(vm+p-1)$) or
#   zero-bubble variants that split the backward; ours are plain GPipe and 1F1B.
# - **Expert parallelism.** No capacity factor, no token dropping, no load-balancing loss here (the
#   [MoE chapter](../02_architecture/03_moe.ipynb) trains them); production EP overlaps the all-to-all with
#   expert compute.
# - **The time model.** The α–β table uses assumed link numbers and no overlap; real placement is decided
#   with measured bus bandwidth and profiles.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** 2 gloo ranks on the 2-core CPU. `run.py --module distributed --toy`: 31 s wall,
#   peak RSS 0.30 GB (largest single process; each rank is its own process of similar size), measured with
#   `/usr/bin/time -v` at load average ≈ 2.6. Executing the whole page (with the launcher demo and the
#   play cell) with `tools/execute.py`: 37 s in this build (load average ≈ 1–2); 55–86 s in earlier builds
#   under heavier load (see [benchmarks](../../book/benchmarks.md)).
# - **Full (`toy=False`):** a 256-wide block, 1M-element collectives, m up to 32, 64 PD requests: meant for
#   one GPU per rank with NCCL; not measured here (no GPU). The padded pipeline alone takes
#   2 schedules × 2 repeats × $\sum_m (m+p-1) \cdot 60$ ms ≈ 17 s of simulated time.
# - **GPU:** no GPU figures were recorded for this chapter (see [benchmarks](../../book/benchmarks.md)).
#   With several GPUs (or nodes), the TP/PP/EP checks run under torchrun:
#   `torchrun --nproc-per-node N -m llmcore.engineering.distributed`.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 环形 all-reduce = reduce-scatter + all-gather，每个 rank 发送 $2(n-1)/n\cdot S$ 字节，几乎与 $n$ 无关。 ·
#   A ring all-reduce sends $2(n-1)/n \cdot S$ bytes per rank, nearly independent of the number of ranks.
# - 通信时间 ≈ 延迟 + 字节/带宽（α–β 模型）：小消息受延迟限制，大消息受带宽限制。 · Communication time is
#   latency plus bytes over bandwidth: small messages are latency-bound, large ones bandwidth-bound.
# - 张量并行：列切分 $A$、行切分 $B$，每个 block 前向、反向各两次 all-reduce。 · Tensor parallelism splits
#   $A$ by columns and $B$ by rows: two all-reduces per block in each direction.
# - 流水线气泡 $(p-1)/(m+p-1)$ 只取决于 stage 数和 micro-batch 数；1F1B 把暂存激活降到至多 $p-r$ 份。 ·
#   The bubble depends only on stages and micro-batches; 1F1B bounds the stashed activations by $p-r$.
# - 专家并行用两次 all-to-all 分发、收回 token，反向是同样两次 all-to-all 的逆。 · Expert parallelism moves
#   tokens with two all-to-alls, and the backward runs them in reverse.
# - 张量并行放在节点内（NVLink），流水线和数据并行可以跨节点（InfiniBand）。 · Keep tensor parallelism inside
#   a node on NVLink; put pipeline and data parallelism across nodes.
# - 所有并行方式的输出和梯度都与单进程模型一致（1e-5），实测字节数与公式完全相等。 · Every parallel model
#   matches the single-process outputs and gradients, and the bytes on the wire equal the formulas.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `ring_allreduce_bytes(size_bytes, n)` (bytes one rank sends) and
#    `allreduce_time(size_bytes, n, bandwidth, latency)` (the α–β time of a ring all-reduce) and check them
#    with `llmcore.exercises.check_ring_allreduce_bytes(ring_allreduce_bytes)` and
#    `llmcore.exercises.check_allreduce_time(allreduce_time)`. At what message size does an 8-rank
#    all-reduce on the NVLink assumption above stop being latency-bound?
# 2. **Self-checked.** Write `pipeline_bubble(p, m)` and check it with
#    `llmcore.exercises.check_pipeline_bubble(pipeline_bubble)`. How many micro-batches keep the bubble
#    under 5% with $p = 8$ stages?
# 3. **Self-checked.** Write `split(weight, rank, world, kind)` that returns the slice of an `nn.Linear`
#    weight `(out, in)` held by `rank` for `kind="column"` and `kind="row"`, and check it with
#    `llmcore.exercises.check_column_parallel_split(split)`. Why does the row-parallel layer keep its whole bias?
# 4. Megatron's *sequence parallelism* replaces the $g$ all-reduce by a reduce-scatter and the $f$ identity by
#    an all-gather along the sequence. Show that the bytes per block are unchanged and that LayerNorm
#    activations shrink by $n$. Implement it with `Comm.reduce_scatter` / `Comm.all_gather`.
# 5. Add the *interleaved* 1F1B schedule ($v$ model chunks per rank) to `schedule_ops`, derive its bubble
#    $(p-1)/(v\,m + p - 1)$ and check it with `pipeline.ideal_timeline`.
# 6. In `ExpertParallelMoE`, cap each expert at a *capacity* of $c \cdot N k / E$ tokens and drop the rest.
#    How do the bytes and the equivalence test change?
# 7. Re-run the placement table on a cluster without NVLink or InfiniBand:
#    `distributed.placement_table(inside="pcie4", across="eth100")`. Which axis can still be placed, and where?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Reduce-scatter and all-gather each send $n-1$ chunks of $S/n$:
#
#    ```python
#    def ring_allreduce_bytes(size_bytes, n):
#        return 2 * (n - 1) / n * size_bytes
#
#    def allreduce_time(size_bytes, n, bandwidth, latency):
#        return 2 * (n - 1) * latency + ring_allreduce_bytes(size_bytes, n) / bandwidth
#    ```
#
#    The two terms are equal when $S/n \cdot 1/\beta = \alpha$, i.e. $S = n\alpha\beta = 8 \cdot 3\,\mu s
#    \cdot 450$ GB/s ≈ 11 MB; below that the latency term dominates. The checkers reject the $n\to\infty$
#    limit $2S$, a reduce-scatter alone, and a time without the latency term.
# 2. `return (p - 1) / (m + p - 1)`. With $p = 8$: $7/(m+7) < 0.05 \iff m > 133$, so $m = 134$ — which is
#    why 1F1B's bounded activation memory matters.
# 3. `return weight.chunk(world, dim=0 if kind == "column" else 1)[rank]` — `nn.Linear` stores
#    $A^\top$ (out × in), so Megatron's column split of $A$ is a split of the weight's *rows*. The row-parallel
#    output is a sum of partial products; adding the bias on every rank would count it $n$ times, so it
#    is added once after $g$.
# 4. A reduce-scatter plus an all-gather move $2 \cdot (n-1)/n \cdot S$ — the bytes of one all-reduce; between
#    them each rank holds only $T/n$ positions, so LayerNorm/dropout activations shrink by $n$.
# 5. Each rank runs $v$ chunks of $L/(pv)$ layers; the fill and drain take $(p-1)$ chunk-times of
#    $(t_f + t_b)/v$ while the work is $m(t_f+t_b)$, giving $(p-1)/(vm + p - 1)$.
# 6. Dropped rows are neither sent nor computed, so bytes fall; the single-process reference must drop
#    the same tokens (same capacity rule, same order) for the equivalence to hold.
# 7. TP costs about 4.9× its compute even on PCIe inside the node (12.5× on 100 GbE): on such hardware TP
#    does not pay, and one shards with ZeRO/FSDP instead. PP (0.17 / 0.44) and DP (0.12 / 0.30) still fit,
#    DP best, since its all-reduce overlaps the backward.
# :::
#
# ## References / 参考文献
#
# Megatron-LM {cite}`shoeybi2019megatron,narayanan2021megatron`; GPipe {cite}`huang2019gpipe`; ring
# all-reduce {cite}`patarasuk2009ring`; MoE {cite}`shazeer2017moe,lepikhin2020gshard`; PD disaggregation
# {cite}`zhong2024distserve,patel2024splitwise`. Full entries: [bibliography](../../book/bibliography.md).
