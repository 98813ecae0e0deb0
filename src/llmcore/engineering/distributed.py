r"""Distributed training (Megatron-style) on ``torch.distributed``: the chapter's closed loop.

One call of :func:`experiment` starts real process groups (gloo on CPU, NCCL when there is a GPU per
rank) with :func:`~llmcore.engineering.dist_utils.launch` and checks, on ``world`` ranks:

* ring collectives built from ``isend``/``irecv`` equal the library's, and the bytes each rank sends
  equal the closed forms (ring all-reduce :math:`2(n-1)/n \cdot S`);
* tensor parallelism (:mod:`~llmcore.engineering.tensor_parallel`), pipeline parallelism with GPipe and
  1F1B (:mod:`~llmcore.engineering.pipeline`) and expert parallelism
  (:mod:`~llmcore.engineering.expert_parallel`) give the single-process outputs **and gradients**;
* the measured pipeline bubble follows :math:`(p-1)/(m+p-1)`;
* prefill/decode disaggregation (:mod:`~llmcore.engineering.pd_disagg`) vs colocated serving: TTFT, TPOT.

Run it from a terminal with ``python run.py --module distributed``, or under ``torchrun``:
``torchrun --nproc-per-node 2 -m llmcore.engineering.distributed`` (TP/PP/EP checks, env:// rendezvous).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.distributed as dist

from llmcore.core.errors import LLMCoreError
from llmcore.core.report import Report
from llmcore.engineering.dist_utils import (
    collectives_worker,
    init_from_env,
    launch,
    resolve_backend,
    ring_all_reduce_bytes,
    ring_gather_bytes,
    torchrun_entry,
)
from llmcore.engineering.expert_parallel import EPConfig, ep_worker
from llmcore.engineering.pd_disagg import PDConfig, expected_kv_bytes, pd_worker, summarize
from llmcore.engineering.pipeline import PPConfig, bubble_formula, measured_bubble, pp_worker
from llmcore.engineering.tensor_parallel import TPConfig, tp_worker

MODULE = "distributed"
TITLE = "Distributed Training (Megatron) / 分布式训练"


@dataclass
class DistConfig:
    world: int = 2
    collective_numel: int = 1024
    tp: TPConfig = field(default_factory=TPConfig)
    pp_micro_batches: tuple[int, ...] = (1, 2, 4, 8)
    pp: PPConfig = field(default_factory=PPConfig)
    ep: EPConfig = field(default_factory=EPConfig)
    pd: PDConfig | None = field(default_factory=PDConfig)
    bubble_tolerance: float = 0.05

    @classmethod
    def for_mode(cls, toy: bool, seed: int = 0, world: int = 2) -> DistConfig:
        if toy:
            return cls(world=world, tp=TPConfig(seed=seed), pp=PPConfig(seed=seed), ep=EPConfig(seed=seed),
                       pd=PDConfig(seed=seed))
        return cls(world=world, collective_numel=1 << 20,
                   tp=TPConfig(batch=8, seq=128, d_model=256, n_heads=8, d_ff=1024, seed=seed),
                   pp_micro_batches=(1, 2, 4, 8, 16, 32), pp=PPConfig(width=256, batch=256, seed=seed),
                   ep=EPConfig(tokens_per_rank=512, d_model=128, d_ff=256, seed=seed),
                   pd=PDConfig(n_requests=64, rates=(8.0, 16.0, 24.0, 32.0), seed=seed))


@dataclass
class DistResult:
    cfg: DistConfig
    backend: str
    collectives: list[dict[str, Any]]
    tp: list[dict[str, Any]]
    pp: dict[tuple[str, int], list[dict[str, Any]]]
    ep: list[dict[str, Any]]
    pd: list[dict[str, Any]] | None = None
    pd_kv_sent: int = 0
    pd_kv_expected: int = 0


def pp_configs(cfg: DistConfig) -> list[PPConfig]:
    from dataclasses import replace

    return [replace(cfg.pp, schedule=s, micro_batches=m)
            for s in ("gpipe", "1f1b") for m in cfg.pp_micro_batches]


def experiment(toy: bool = True, device: str = "auto", seed: int = 0, world: int = 2,
               cfg: DistConfig | None = None, with_pd: bool = True) -> DistResult:
    """Launch the process groups and collect every rank's measurements."""
    cfg = cfg or DistConfig.for_mode(toy, seed, world)
    if cfg.world < 2:
        raise LLMCoreError(f"world must be >= 2 for the parallelism checks, got {cfg.world}")
    backend, _dev = resolve_backend(device, cfg.world)
    coll = launch(collectives_worker, cfg.world, (cfg.collective_numel, seed), backend=backend)
    tp = launch(tp_worker, cfg.world, (cfg.tp,), backend=backend)
    pcs = pp_configs(cfg)
    pp_raw = launch(pp_worker, cfg.world, (pcs,), backend=backend)
    pp = {(c.schedule, c.micro_batches): [pp_raw[r][k] for r in range(cfg.world)] for k, c in enumerate(pcs)}
    ep = launch(ep_worker, cfg.world, (cfg.ep,), backend=backend)
    res = DistResult(cfg, backend, coll, tp, pp, ep)
    if with_pd and cfg.pd is not None:
        pd_raw = launch(pd_worker, 2, (cfg.pd,), backend="gloo")  # CPU tensors: gloo
        res.pd = summarize(pd_raw, cfg.pd)
        res.pd_kv_sent = pd_raw[0][0]["kv_sent_bytes"]
        res.pd_kv_expected = expected_kv_bytes(cfg.pd)
    return res


# -- a bandwidth (alpha-beta) time model for placement ------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One interconnect in the α–β model: a message step costs ``latency`` (α, s) plus bytes / ``bandwidth``
    (β⁻¹, bytes/s in one direction per GPU). Values are *assumptions* taken from public peak specs."""

    name: str
    bandwidth: float
    latency: float
    spec: str


#: public peak link specs (one direction, per GPU); α is an assumed order of magnitude of one NCCL ring
#: step, not a spec. Achieved NCCL bus bandwidth is typically 70-90% of the peak.
LINKS = {
    "nvlink4": Link("NVLink 4 (H100 SXM, inside a node)", 450e9, 3e-6,
                    "900 GB/s bidirectional per GPU -> 450 GB/s per direction"),
    "pcie4": Link("PCIe 4.0 x16 (inside a node, no NVLink)", 32e9, 5e-6, "16 GT/s x 16 lanes ~ 32 GB/s per direction"),
    "ib_ndr": Link("InfiniBand NDR (across nodes, 1 NIC per GPU)", 50e9, 6e-6, "400 Gb/s per port = 50 GB/s"),
    "eth100": Link("100 Gb Ethernet / RoCE (across nodes)", 12.5e9, 10e-6, "100 Gb/s = 12.5 GB/s"),
}


def collective_time(kind: str, size_bytes: float, n: int, link: Link) -> float:
    r"""α–β time of one collective of a ``size_bytes`` tensor over ``n`` ranks in a ring on ``link``.

    A ring all-reduce is :math:`2(n-1)` steps that each move :math:`S/n` bytes per rank:

    .. math:: T_{\text{all-reduce}} = 2(n-1)\,\alpha + \frac{2(n-1)}{n}\,\frac{S}{\beta};

    reduce-scatter, all-gather and (pairwise) all-to-all are half of it, :math:`(n-1)\alpha +
    \tfrac{n-1}{n} S/\beta`; a point-to-point ``send`` is :math:`\alpha + S/\beta`. The byte terms are
    :func:`~llmcore.engineering.dist_utils.ring_all_reduce_bytes` and ``ring_gather_bytes`` — the counts
    the chapter measures on the wire.
    """
    if n < 1 or size_bytes < 0:
        raise LLMCoreError(f"collective_time needs n >= 1 and size_bytes >= 0, got n={n}, size_bytes={size_bytes}")
    if kind == "send":
        return link.latency + size_bytes / link.bandwidth
    if n == 1:
        return 0.0
    if kind == "all_reduce":
        return 2 * (n - 1) * link.latency + ring_all_reduce_bytes(size_bytes, n) / link.bandwidth
    if kind in ("reduce_scatter", "all_gather", "all_to_all"):
        return (n - 1) * link.latency + ring_gather_bytes(size_bytes, n) / link.bandwidth
    raise LLMCoreError(f"unknown collective {kind!r}; valid: all_reduce, reduce_scatter, all_gather, all_to_all, send")


@dataclass
class PlacementConfig:
    """A 3-D parallel training job for the placement table (defaults: a LLaMA-2-7B-like shape on 256 GPUs)."""

    d_model: int = 4096
    n_layers: int = 32
    params: float = 6.7e9
    seq: int = 4096
    micro_batch: int = 1
    micro_batches: int = 16     # m per step (gradient accumulation through the pipeline)
    tp: int = 8
    pp: int = 4
    dp: int = 8
    bytes_per_value: int = 2    # bf16 activations and gradients
    gpu_flops: float = 400e12   # achieved bf16 FLOP/s per GPU (assumed ~40% of an H100's dense peak)


def placement_table(cfg: PlacementConfig | None = None, inside: str = "nvlink4",
                    across: str = "ib_ndr") -> list[dict[str, Any]]:
    r"""Per-step communication time of TP, PP and DP on an intra-node and an inter-node link, against the
    compute it accompanies (α–β model, no overlap).

    * **TP** (``tp`` ranks): 4 all-reduces of the activation ``micro_batch·seq·d·bytes`` per layer per
      micro-batch, against that layer's share of compute :math:`6 \cdot 12 d^2 \cdot \text{tokens} / (tp \cdot F)`;
    * **PP** (``pp`` stages): one activation forward and one gradient backward per micro-batch per stage
      boundary, against the stage's compute (``n_layers/pp`` layers);
    * **DP** (``dp`` replicas): one all-reduce of this GPU's gradient shard ``params/(tp·pp)·bytes`` per step,
      against the step's compute (``micro_batches`` micro-batches through the stage).
    """
    cfg = cfg or PlacementConfig()
    tokens = cfg.micro_batch * cfg.seq
    act = tokens * cfg.d_model * cfg.bytes_per_value
    layer_s = 6 * 12 * cfg.d_model**2 * tokens / (cfg.tp * cfg.gpu_flops)
    stage_s = layer_s * cfg.n_layers / cfg.pp
    grad = cfg.params / (cfg.tp * cfg.pp) * cfg.bytes_per_value
    dims = [
        ("TP", f"4 all-reduces of {act / 1e6:.1f} MB per layer per micro-batch", cfg.tp,
         lambda link: 4 * collective_time("all_reduce", act, cfg.tp, link), layer_s),
        ("PP", f"2 sends of {act / 1e6:.1f} MB per micro-batch per stage", cfg.pp,
         lambda link: 2 * collective_time("send", act, cfg.pp, link), stage_s),
        ("DP", f"1 all-reduce of {grad / 1e6:.0f} MB gradient per step", cfg.dp,
         lambda link: collective_time("all_reduce", grad, cfg.dp, link), stage_s * cfg.micro_batches),
    ]
    rows = []
    for name, what, n, comm, compute_s in dims:
        t_in, t_out = comm(LINKS[inside]), comm(LINKS[across])
        rows.append({"dim": name, "n": n, "what": what, "compute_s": compute_s, "inside_s": t_in, "across_s": t_out,
                     "inside_ratio": t_in / compute_s, "across_ratio": t_out / compute_s})
    return rows


# -- tables ---------------------------------------------------------------------------------------


def bubble_table(res: DistResult) -> list[dict[str, Any]]:
    rows = []
    for (sched, m), ranks in res.pp.items():
        rows.append({"schedule": sched, "m": m, "p": res.cfg.world,
                     "measured": measured_bubble(ranks), "formula": bubble_formula(res.cfg.world, m),
                     "peak_stash": [r["peak_stash"] for r in ranks]})
    return rows


def bytes_table(res: DistResult) -> list[dict[str, Any]]:
    """Per-rank bytes sent (rank 0), measured on the wire vs the closed form, for every scheme."""
    n = res.cfg.world
    c0, tp0, ep0 = res.collectives[0], res.tp[0], res.ep[0]
    S = c0["numel_bytes"]
    pp0 = res.pp[("1f1b", res.cfg.pp_micro_batches[-1])]
    return [
        {"scheme": "ring all-reduce", "formula": "2(n-1)/n·S", "measured": c0["all_reduce_sent"],
         "analytic": ring_all_reduce_bytes(S, n)},
        {"scheme": "ring reduce-scatter", "formula": "(n-1)/n·S", "measured": c0["reduce_scatter_sent"],
         "analytic": ring_gather_bytes(S, n)},
        {"scheme": "ring all-gather", "formula": "(n-1)/n·S", "measured": c0["all_gather_sent"],
         "analytic": ring_gather_bytes(S, n)},
        {"scheme": "TP block fwd+bwd", "formula": "4 all-reduces of B·T·d·4", "measured": tp0["sent_bytes"],
         "analytic": tp0["analytic_bytes"]},
        {"scheme": "PP 1F1B (all stages)", "formula": "2(p-1)·B·H·4",
         "measured": sum(r["sent_bytes"] for r in pp0),
         "analytic": 2 * (n - 1) * res.cfg.pp.batch * res.cfg.pp.width * 4},
        {"scheme": "EP all-to-all fwd+bwd", "formula": "2·(rows out + rows in)·d·4",
         "measured": ep0["sent_activation_bytes"], "analytic": ep0["expected_activation_bytes"]},
    ]


def make_report(res: DistResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report(MODULE, TITLE, toy, device, seed)
    n = res.cfg.world
    rep.metric("ranks", n)
    rep.notes.append(f"backend: {res.backend}")
    coll_err = max(max(r["all_reduce_err"], r["reduce_scatter_err"], r["all_gather_err"], r["all_to_all_err"])
                   for r in res.collectives)
    rep.check("ring collectives vs library collectives (max abs diff)", coll_err, "<", 1e-5)
    tp_out = max(r["out_err"] for r in res.tp)
    tp_grad = max(max(r["max_grad_err"], r["x_grad_err"]) for r in res.tp)
    rep.check("TP block output vs single process (max abs diff)", tp_out, "<", 1e-5)
    rep.check("TP block gradients vs single process (max abs diff)", tp_grad, "<", 1e-5)
    pp_loss = max(r["loss_err"] for ranks in res.pp.values() for r in ranks)
    pp_grad = max(r["grad_err"] for ranks in res.pp.values() for r in ranks)
    rep.check("PP loss vs single process, GPipe and 1F1B, all m (max abs diff)", pp_loss, "<", 1e-5)
    rep.check("PP gradients vs single process (max abs diff)", pp_grad, "<", 1e-5)
    rep.check("EP MoE output vs single process (max abs diff)", max(r["out_err"] for r in res.ep), "<", 1e-5)
    rep.check("EP MoE gradients (experts, router, input) vs single process", max(r["grad_err"] for r in res.ep),
              "<", 1e-5)
    bt = bubble_table(res)
    dev_b = max(abs(r["measured"] - r["formula"]) for r in bt)
    rep.metric("max |measured bubble - (p-1)/(m+p-1)|", dev_b)
    rep.check("pipeline bubble within noise of (p-1)/(m+p-1)", dev_b, "<", res.cfg.bubble_tolerance)
    m_max = res.cfg.pp_micro_batches[-1]
    rep.check("1F1B peak stashed micro-batches (stage 0) <= p",
              max(res.pp[("1f1b", m_max)][0]["peak_stash"], 0), "<=", n)
    rep.metric("GPipe peak stashed micro-batches (stage 0)", res.pp[("gpipe", m_max)][0]["peak_stash"])
    bad_bytes = max(abs(row["measured"] - row["analytic"]) for row in bytes_table(res))
    every_rank = max(abs(r["all_reduce_sent"] - ring_all_reduce_bytes(r["numel_bytes"], n)) for r in res.collectives)
    rep.check("bytes sent minus analytic formula, every scheme (max abs)", max(bad_bytes, every_rank), "==", 0)
    if res.pd is not None:
        hi = res.pd[-1]
        for mode in ("colocated", "disaggregated"):
            rep.metric(f"PD {mode} mean TTFT ms @ {hi['rate']:g} req/s", hi[mode]["ttft_mean_ms"])
            rep.metric(f"PD {mode} p90 TPOT ms @ {hi['rate']:g} req/s", hi[mode]["tpot_p90_ms"])
        ok = all(row[m]["tokens_match"] for row in res.pd for m in ("colocated", "disaggregated"))
        rep.check("PD greedy tokens equal single-process generation (both systems)", int(ok), "==", 1)
        rep.check("PD KV-cache bytes sent minus 2·layers·d·len·4 per request", res.pd_kv_sent - res.pd_kv_expected,
                  "==", 0)
        rep.metric(f"PD p90 TPOT disaggregated / colocated @ {hi['rate']:g} req/s",
                   hi["disaggregated"]["tpot_p90_ms"] / hi["colocated"]["tpot_p90_ms"])
        # the mechanism: a colocated worker's decodes stall behind prefills, a decode-only worker's never do
        rep.check(f"PD worst inter-token gap disaggregated / colocated @ {hi['rate']:g} req/s",
                  hi["disaggregated"]["max_gap_ms"] / hi["colocated"]["max_gap_ms"], "<", 1.0)
    return rep


# -- plots ----------------------------------------------------------------------------------------


def plot_bubbles(res: DistResult, ax=None):
    import matplotlib.pyplot as plt

    if ax is None:
        _fig, ax = plt.subplots(figsize=(5, 3.2))
    ms = np.array(res.cfg.pp_micro_batches)
    p = res.cfg.world
    grid = np.linspace(1, ms.max(), 100)
    ax.plot(grid, (p - 1) / (grid + p - 1), color="black", lw=1, label="(p-1)/(m+p-1)")
    for sched, marker in (("gpipe", "o"), ("1f1b", "s")):
        ax.plot(ms, [measured_bubble(res.pp[(sched, int(m))]) for m in ms], marker, label=f"{sched} measured")
    ax.set(xlabel="micro-batches m", ylabel="bubble fraction", title=f"pipeline bubble, p = {p}", xscale="log")
    ax.legend()
    return ax


def figures(res: DistResult) -> list[str]:
    import matplotlib.pyplot as plt

    from llmcore.core.plotting import save_figure, use_style
    from llmcore.engineering.pd_disagg import plot_tradeoff
    from llmcore.engineering.pipeline import plot_timeline

    use_style()
    paths = []
    m = res.cfg.pp_micro_batches[min(2, len(res.cfg.pp_micro_batches) - 1)]
    fig, axes = plt.subplots(2, 1, figsize=(7, 1.2 + 0.9 * res.cfg.world), sharex=True)
    plot_timeline(res.pp[("gpipe", m)], axes[0], f"GPipe, p={res.cfg.world}, m={m}")
    plot_timeline(res.pp[("1f1b", m)], axes[1], f"1F1B, p={res.cfg.world}, m={m}")
    paths.append(save_figure(fig, MODULE, "pipeline_timeline"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    plot_bubbles(res, ax)
    paths.append(save_figure(fig, MODULE, "pipeline_bubble"))
    plt.close(fig)
    if res.pd is not None:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        plot_tradeoff(res.pd, axes)
        paths.append(save_figure(fig, MODULE, "pd_tradeoff"))
        plt.close(fig)
    return paths


def run(toy: bool = True, device: str = "auto", seed: int = 0) -> Report:
    from llmcore.core.device import pick_device

    pick_device(device)  # a clear error for device="cuda" without a GPU
    res = experiment(toy=toy, device=device, seed=seed)
    rep = make_report(res, toy, device, seed)
    rep.figures += figures(res)
    return rep


def torchrun_main() -> None:
    """``torchrun --nproc-per-node N -m llmcore.engineering.distributed``: TP/PP/EP on env:// rendezvous
    (NCCL on GPUs, gloo on CPU; multi-node with torchrun's own ``--nnodes``/``--rdzv-endpoint`` flags)."""
    rank, world = init_from_env()
    tp = tp_worker(rank, world, TPConfig())
    pp = pp_worker(rank, world, [PPConfig(micro_batches=4)])[0]
    ep = ep_worker(rank, world, EPConfig())
    line = (f"rank {rank}/{world}: TP out {tp['out_err']:.1e} grad {tp['max_grad_err']:.1e} | PP grad "
            f"{pp['grad_err']:.1e} | EP out {ep['out_err']:.1e} grad {ep['grad_err']:.1e}\n")
    os.write(1, line.encode())  # one write per rank: the ranks' lines never interleave
    dist.destroy_process_group()


if __name__ == "__main__":
    torchrun_entry(torchrun_main)
