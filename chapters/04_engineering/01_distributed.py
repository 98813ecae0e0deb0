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
# 和每 token 时延（TPOT）。
#
# **Learning goals**
# - build collectives (ring all-reduce = reduce-scatter + all-gather, all-to-all) from point-to-point
#   messages and *measure* their traffic: $2(n-1)/n \cdot S$ bytes per rank for an all-reduce;
# - split a transformer block Megatron-style (column/row-parallel linears, heads across ranks) and see
#   why exactly two all-reduces per block per direction suffice;
# - schedule a pipeline (GPipe, 1F1B), draw its timeline and measure its bubble;
# - dispatch MoE tokens to experts on other ranks with differentiable `all_to_all`;
# - separate prefill from decode and read the TTFT / TPOT trade-off;
# - launch process groups from a notebook that never hang: a dead or stuck rank is one clear error.
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
from llmcore.engineering import dist_utils as D
from llmcore.engineering import distributed as M
from llmcore.engineering import expert_parallel as EP
from llmcore.engineering import pd_disagg as PD
from llmcore.engineering import pipeline as PP
from llmcore.engineering import tensor_parallel as TP

dev = pick_device(device)  # validates the knob: device="cuda" without a GPU is a clear error
seed_everything(seed)
use_style()
backend, dev_type = D.resolve_backend(device, world)
cfg = M.DistConfig.for_mode(toy, seed, world)
print(f"backend={backend} ({dev_type}), ranks={world}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Launching real process groups from a notebook
#
# `launch` starts `world` processes, joins them in a process
# group and returns each rank's return value. Three engineering details make it usable in a notebook
# and in tests:
#
# * the worker functions live in the `llmcore` package, so child processes can import them;
# * children come from a **forkserver** that imported torch once, so a group starts in ~0.1 s;
# * the rendezvous store is opened *by the parent* on port 0: the OS picks a free port and the parent
#   holds it, so two jobs on one machine cannot collide; and every collective has a timeout, so a rank
#   that dies or hangs becomes one `DistributedError`.

# %%
show_source(D.launch)

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
D.launch(D.collectives_worker, 2, (8, seed))  # the first job also starts the forkserver (imports torch once)
print(f"first job (forkserver start): {time.perf_counter() - t0:.2f} s")
t0 = time.perf_counter()
D.launch(D.collectives_worker, 2, (8, seed))
print(f"second job: {time.perf_counter() - t0:.2f} s")
# A rank that is killed mid-job (SIGKILL on rank 1 after three all-reduces) fails the job in well
# under a second, with the root cause first:
t0 = time.perf_counter()
try:
    D.launch(D.failing_worker, 2, ("kill",), timeout_s=30, collective_timeout_s=5)
except D.DistributedError as e:
    print(str(e).splitlines()[0])
    print(f"... reported after {time.perf_counter() - t0:.2f} s")
# A rank that hangs: rank 0's all-reduce times out after 2 s, the launcher kills rank 1.
t0 = time.perf_counter()
try:
    D.launch(D.failing_worker, 2, ("hang",), timeout_s=30, collective_timeout_s=2)
except D.DistributedError as e:
    print(str(e).splitlines()[0])
    print(f"... reported after {time.perf_counter() - t0:.2f} s")

# %% [markdown]
# ## Theory 1 — collectives and what they cost
#
# With $n$ ranks in a ring and a tensor of $S$ bytes, **ring reduce-scatter** takes $n-1$ steps; in each,
# every rank sends one chunk of $S/n$ bytes to its right neighbour and adds the chunk arriving from the
# left. **Ring all-gather** circulates the finished chunks the same way. An **all-reduce** is the two in
# a row {cite}`patarasuk2009ring`:
#
# $$
# \text{bytes sent per rank} = \underbrace{\tfrac{n-1}{n} S}_{\text{reduce-scatter}}
#   + \underbrace{\tfrac{n-1}{n} S}_{\text{all-gather}} = \frac{2(n-1)}{n}\,S ,
# $$
#
# independent of $n$ for large $n$ — the reason ring all-reduce scales. `Comm`
# implements the collectives on `isend`/`irecv` and counts every byte it hands to `isend`.

# %%
show_source(D.Comm.reduce_scatter, D.Comm.all_gather)

# %% [markdown]
# ## Theory 2 — tensor parallelism
#
# Megatron-LM {cite}`shoeybi2019megatron` splits the MLP $Y = \mathrm{GeLU}(XA)\,B$ as
# $A = [A_1, \dots, A_n]$ by columns and $B = [B_1; \dots; B_n]$ by rows, so that
#
# $$
# Y = \sum_{i=1}^{n} \mathrm{GeLU}(X A_i)\, B_i ,
# $$
#
# each term local to rank $i$ and one sum (an all-reduce) at the end. Two conjugate operators carry the
# communication: $f$ is the identity forward and an all-reduce backward (the gradient of the replicated
# input $X$ is the sum of partial gradients), $g$ is an all-reduce forward and the identity backward.
# Attention splits by heads in the same way. A block therefore costs **2 all-reduces forward and 2
# backward** of the activation $(B, T, d)$. The block split here is the book's own LLaMA block
# ([Transformer chapter](../02_architecture/01_transformer.ipynb)): its SwiGLU MLP
# $(\mathrm{SiLU}(XA) \odot XC)\,B$ splits $A$ and $C$ by columns alike, the product stays local, and the
# count is the same; query and key/value heads are split together, so grouped-query attention stays local too.

# %%
show_source(TP._CopyToParallel, TP._ReduceFromParallel, TP.ColumnParallelLinear, TP.RowParallelLinear)

# %% [markdown]
# ## Theory 3 — pipeline parallelism
#
# Cut $L$ layers into $p$ stages, the batch into $m$ micro-batches. **GPipe** {cite}`huang2019gpipe`
# runs all forwards then all backwards; **1F1B** {cite}`narayanan2021megatron` interleaves one forward
# and one backward after a warm-up of $p-r-1$ forwards on stage $r$. Both finish in
# $(m+p-1)(t_f+t_b)$ while each stage works $m(t_f+t_b)$, so the idle fraction is
#
# $$
# \text{bubble} = \frac{p-1}{m+p-1},
# $$
#
# but 1F1B keeps at most $p-r$ micro-batches of activations alive instead of $m$.

# %%
show_source(PP.schedule_ops)

# %% [markdown]
# ## Theory 4 — expert parallelism
#
# A top-$k$ MoE layer {cite}`shazeer2017moe,lepikhin2020gshard` routes each token to $k$ experts and mixes
# their outputs with renormalised gates. With experts spread over ranks, a forward is *route → all-to-all
# dispatch → local experts → all-to-all combine*; the backward is the same two all-to-alls reversed.

# %%
show_source(EP.ExpertParallelMoE.forward)

# %% [markdown]
# ## The closed loop
#
# One call runs every check on real process groups: collectives, the TP block, the pipeline for GPipe and
# 1F1B over $m \in \{1, 2, 4, 8\}$, the EP MoE layer, and the PD serving experiment. To make the pipeline
# timeline show the *schedule* rather than four processes fighting over two CPU cores, each forward is
# padded to 20 ms and each backward to 40 ms (the real compute is far shorter); a GPU run can set
# `pad=False`.

# %%
steps = ["collectives", "tensor parallel", "pipeline", "expert parallel", "PD disaggregation"]
bar = progress(total=len(steps), desc="distributed checks")
t_start = time.perf_counter()
coll = D.launch(D.collectives_worker, cfg.world, (cfg.collective_numel, seed), backend=backend)
bar.update()
tp = D.launch(TP.tp_worker, cfg.world, (cfg.tp,), backend=backend)
bar.update()
pcs = M.pp_configs(cfg)
pp_raw = D.launch(PP.pp_worker, cfg.world, (pcs,), backend=backend)
pp = {(c.schedule, c.micro_batches): [pp_raw[r][k] for r in range(cfg.world)] for k, c in enumerate(pcs)}
bar.update()
ep = D.launch(EP.ep_worker, cfg.world, (cfg.ep,), backend=backend)
bar.update()
pd_raw = D.launch(PD.pd_worker, 2, (cfg.pd,), backend="gloo")
res = M.DistResult(cfg, backend, coll, tp, pp, ep, PD.summarize(pd_raw, cfg.pd),
                   pd_raw[0][0]["kv_sent_bytes"], PD.expected_kv_bytes(cfg.pd))
bar.update()
bar.close()

# %% tags=["nbval-ignore-output"]
print(f"all process groups: {time.perf_counter() - t_start:.1f} s wall (shared 2-core CPU)")

# %% [markdown]
# ### Equivalence: every parallel model equals the single-process model
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
# ### Pipeline timelines and the bubble

# %%
m_show = 4
fig, axes = plt.subplots(2, 1, figsize=(8, 1.4 + 0.9 * cfg.world), sharex=True)
PP.plot_timeline(res.pp[("gpipe", m_show)], axes[0], f"GPipe, p={cfg.world}, m={m_show}")
PP.plot_timeline(res.pp[("1f1b", m_show)], axes[1], f"1F1B, p={cfg.world}, m={m_show}")
plt.show()
M.plot_bubbles(res)
plt.show()

# %% tags=["nbval-ignore-output"]
for row in M.bubble_table(res):
    print(f"{row['schedule']:>5} m={row['m']}: measured bubble {row['measured']:.3f}, "
          f"(p-1)/(m+p-1) = {row['formula']:.3f}, peak stashed micro-batches per stage {row['peak_stash']}")

# %% [markdown]
# ### Communication: bytes on the wire vs the formulas
#
# Every byte below was counted at `isend`; the analytic column is the closed form of each scheme.

# %%
print(f"{'scheme':<24}{'formula':<28}{'measured':>10}{'analytic':>10}")
for row in M.bytes_table(res):
    print(f"{row['scheme']:<24}{row['formula']:<28}{row['measured']:>10}{row['analytic']:>10.0f}")

# %% [markdown]
# ### Cross-check: our ring collectives against gloo's own
#
# The library collectives (`dist.all_reduce`, `reduce_scatter_tensor`, `all_gather_into_tensor`,
# `all_to_all_single`) are the production reference.

# %%
worst = max(max(r["all_reduce_err"], r["reduce_scatter_err"], r["all_gather_err"], r["all_to_all_err"])
            for r in res.collectives)
assert worst < 1e-5, worst
for r in res.collectives:
    assert r["all_reduce_sent"] == D.ring_all_reduce_bytes(r["numel_bytes"], cfg.world)
print(f"ring vs library collectives: max |diff| = {worst:.1e}; all-reduce bytes = 2(n-1)/n·S on every rank")

# %% [markdown]
# ## Prefill / decode disaggregation
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
# (prefill 6 ms + 0.3 ms/token, decode step 24 ms + 1 ms/request). The decode worker polls a
# counter in the group's key-value store between steps to learn that a KV cache is on its way. The greedy tokens of both systems
# are checked against single-process generation.

# %%
show_source(PD.serve_colocated, PD.serve_decode)

# %%
PD.plot_tradeoff(res.pd)
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
# ## Results

# %%
# NBVAL_CHECK_OUTPUT
report = M.make_report(res, toy, device, seed)
stable = ["ranks", "GPipe peak stashed micro-batches (stage 0)"]
print("\n".join(f"{k}: {report.metrics[k]:g}" for k in stable))
print("\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}" for c in report.criteria))
assert report.passed, report.failures()

# %% [markdown]
# ## Play: micro-batches vs bubble
#
# Re-run the pipeline (2 ranks, 1F1B) with a different number of micro-batches and watch the bubble and the
# timeline change.

# %% tags=["nbval-ignore-output"]
from dataclasses import replace

import ipywidgets as widgets


def play(m: int = 4, schedule: str = "1f1b") -> None:
    c = replace(cfg.pp, micro_batches=m, schedule=schedule, batch=4 * m)
    ranks = [r[0] for r in D.launch(PP.pp_worker, 2, ([c],))]
    PP.plot_timeline(ranks, title=f"{schedule}, m={m}: bubble {PP.measured_bubble(ranks):.3f} "
                                  f"(formula {PP.bubble_formula(2, m):.3f})")
    plt.show()


widgets.interact(play, m=widgets.IntSlider(value=4, min=1, max=8, description="micro-batches"),
                 schedule=widgets.Dropdown(options=["1f1b", "gpipe"], value="1f1b"));

# %% [markdown]
# ## Exercises
#
# 1. Megatron's *sequence parallelism* replaces the $g$ all-reduce by a reduce-scatter and the $f$ identity by
#    an all-gather along the sequence. Show that the bytes per block are unchanged and that LayerNorm
#    activations shrink by $n$. Implement it with `Comm.reduce_scatter` / `Comm.all_gather`.
# 2. Add the *interleaved* 1F1B schedule ($v$ model chunks per rank). Derive its bubble
#    $(p-1)/(v\,m + p - 1)$ and measure it.
# 3. In `ExpertParallelMoE`, cap each expert at a *capacity* of $c \cdot N k / E$ tokens and drop the rest.
#    How do the bytes and the equivalence test change?
# 4. Replace `Comm.all_reduce` by a tree all-reduce. Count its bytes and latency terms against the ring's.
# 5. In the PD experiment, give the prefill worker two ranks (three processes in all). Where does TTFT go?
#
# ## References
#
# Megatron-LM {cite}`shoeybi2019megatron,narayanan2021megatron`; GPipe {cite}`huang2019gpipe`; ring
# all-reduce {cite}`patarasuk2009ring`; MoE {cite}`shazeer2017moe,lepikhin2020gshard`; PD disaggregation
# {cite}`zhong2024distserve,patel2024splitwise`. Full entries: [bibliography](../../book/bibliography.md).
