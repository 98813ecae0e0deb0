r"""Pipeline parallelism: stages on ranks, micro-batches, GPipe and 1F1B schedules, the bubble.

A model of :math:`L` layers is cut into :math:`p` consecutive *stages*, one per rank. A batch is split
into :math:`m` micro-batches; stage :math:`r` receives each micro-batch's activation from :math:`r-1`
(``recv``), runs its layers and sends the result to :math:`r+1` (``send``); backward goes the other way
with gradients. Two schedules (Huang et al., 2019; Narayanan et al., 2021):

* **GPipe** — all forwards, then all backwards. Every stage stashes the activations of all :math:`m`
  micro-batches.
* **1F1B** (PipeDream-flush) — after :math:`p-r-1` warm-up forwards, stage :math:`r` alternates one
  forward and one backward, so it never stashes more than :math:`p-r` micro-batches.

With forward time :math:`t_f` and backward time :math:`t_b` per micro-batch and stage, both schedules
take :math:`(m+p-1)(t_f+t_b)` and keep each device busy for :math:`m(t_f+t_b)` of it, so the idle
fraction (the *bubble*) is

.. math:: \text{bubble} = \frac{p-1}{m+p-1}.

The toy pads every forward to ``t_forward_s`` and every backward to ``t_backward_s`` (the real compute
of the tiny model takes far less), so the measured timeline shows the *schedule*, not the noise of four
processes sharing a 2-core CPU; pass ``pad=False`` to time the raw compute instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from llmcore.engineering.dist_utils import Comm, sync, worker_device


@dataclass
class PPConfig:
    width: int = 16          # hidden size H of every layer
    layers_per_stage: int = 2
    batch: int = 16           # global batch B, split into m micro-batches
    micro_batches: int = 4    # m
    schedule: str = "1f1b"    # "gpipe" | "1f1b"
    t_forward_s: float = 0.02
    t_backward_s: float = 0.04
    pad: bool = True
    repeats: int = 2          # timing: keep the least-disturbed run (smallest makespan) of this many
    seed: int = 0


def make_model(n_layers: int, width: int, seed: int) -> nn.Sequential:
    """The single-process reference: ``n_layers`` x (Linear(H, H) → tanh)."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for _ in range(n_layers):
        mods += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*mods)


def schedule_ops(kind: str, p: int, m: int, r: int) -> list[tuple[str, int]]:
    """The ordered ``("F"|"B", micro_batch)`` operations stage ``r`` of ``p`` runs for ``m`` micro-batches."""
    if kind == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if kind == "1f1b":
        warm = min(p - r - 1, m)
        ops = [("F", i) for i in range(warm)]
        for i in range(m - warm):  # steady state: one forward, one backward
            ops += [("F", warm + i), ("B", i)]
        ops += [("B", i) for i in range(m - warm, m)]
        return ops
    raise ValueError(f"unknown schedule {kind!r}; valid: gpipe, 1f1b")


def bubble_formula(p: int, m: int) -> float:
    """Idle fraction of a flushed pipeline: :math:`(p-1)/(m+p-1)`."""
    return (p - 1) / (m + p - 1)


def _wait_until(t_end: float) -> None:
    while True:
        left = t_end - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left if left > 2e-3 else 0)


def run_pipeline(rank: int, world: int, cfg: PPConfig, comm: Comm, stage: nn.Module,
                 xs: list[torch.Tensor], ys: list[torch.Tensor]) -> dict[str, Any]:
    """Execute this rank's schedule once (forward + backward over all micro-batches).

    ``xs``/``ys`` are the micro-batch inputs (used by stage 0) and targets (used by the last stage).
    Returns the timeline events ``(op, micro, t0, t1)`` in ``perf_counter`` seconds (system-wide
    monotonic clock, comparable across processes), the loss, and the peak number of stashed micro-batches.
    """
    p, m, H = world, cfg.micro_batches, cfg.width
    mb = cfg.batch // m
    dev = xs[0].device
    first, last = rank == 0, rank == p - 1
    stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    events, sends, peak, loss_sum = [], [], 0, 0.0
    dist.barrier()
    for op, i in schedule_ops(cfg.schedule, p, m, rank):
        if op == "F":
            if first:
                x = xs[i]
            else:
                x = comm.recv(torch.empty(mb, H, device=dev), rank - 1).requires_grad_(True)
            sync(dev)
            t0 = time.perf_counter()
            out = stage(x)
            if last:
                out = F.mse_loss(out, ys[i]) / m  # mean over the micro-batch; /m -> mean over the batch
                loss_sum += out.item()
            sync(dev)
            if cfg.pad:
                _wait_until(t0 + cfg.t_forward_s)
            t1 = time.perf_counter()
            if not last:
                sends.append(comm.send(out.detach(), rank + 1, tag="pp.activation"))
            stash[i] = (x, out)
            peak = max(peak, len(stash))
        else:
            x, out = stash.pop(i)
            grad = None if last else comm.recv(torch.empty(mb, H, device=dev), rank + 1)
            sync(dev)
            t0 = time.perf_counter()
            torch.autograd.backward(out, grad)
            sync(dev)
            if cfg.pad:
                _wait_until(t0 + cfg.t_backward_s)
            t1 = time.perf_counter()
            if not first:
                sends.append(comm.send(x.grad, rank - 1, tag="pp.gradient"))
        events.append((op, i, t0, t1))
    for w in sends:
        w.wait()
    dist.barrier()
    return {"events": events, "loss": loss_sum, "peak_stash": peak}


def pp_worker(rank: int, world: int, cfgs: list[PPConfig]) -> list[dict[str, Any]]:
    """Run each config: pipeline vs the single-process model (loss, grads), timeline, bytes."""
    out = []
    for cfg in cfgs:
        L = cfg.layers_per_stage * world
        dev = worker_device(rank)
        ref = make_model(L, cfg.width, cfg.seed).to(dev)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        X = torch.randn(cfg.batch, cfg.width, generator=g).to(dev)
        Y = torch.randn(cfg.batch, cfg.width, generator=g).to(dev)
        ref_loss = F.mse_loss(ref(X), Y)
        ref_loss.backward()

        lo, hi = 2 * cfg.layers_per_stage * rank, 2 * cfg.layers_per_stage * (rank + 1)
        stage = make_model(L, cfg.width, cfg.seed)[lo:hi].to(dev)  # same seed -> same weights as ref[lo:hi]
        best = None
        for _rep in range(max(1, cfg.repeats)):  # every repeat is checked; the timing keeps the fastest
            stage.zero_grad(set_to_none=True)
            comm = Comm()
            res = run_pipeline(rank, world, cfg, comm, stage, list(X.chunk(cfg.micro_batches)),
                               list(Y.chunk(cfg.micro_batches)))
            # on the rank's device: an NCCL group only reduces CUDA tensors
            span = torch.tensor([res["events"][0][2], -res["events"][-1][3]], dtype=torch.float64, device=dev)
            dist.all_reduce(span, op=dist.ReduceOp.MIN)  # the same makespan on every rank
            res["makespan"] = -span[1].item() - span[0].item()
            if best is None or res["makespan"] < best[0]["makespan"]:
                best = (res, comm)
        res, comm = best
        ref_params = list(ref[lo:hi].parameters())
        grad_err = max((a.grad - b.grad).abs().max().item() for a, b in zip(stage.parameters(), ref_params))
        mb_bytes = cfg.batch // cfg.micro_batches * cfg.width * 4
        expected = cfg.micro_batches * mb_bytes * ((rank < world - 1) + (rank > 0))
        res.update(
            rank=rank, schedule=cfg.schedule, micro_batches=cfg.micro_batches, stages=world,
            loss_err=abs(res["loss"] - ref_loss.item()) if rank == world - 1 else 0.0,
            grad_err=grad_err, sent_bytes=comm.sent_bytes(), expected_bytes=expected,
            busy=sum(t1 - t0 for _o, _i, t0, t1 in res["events"]),
        )
        out.append(res)
    return out


def measured_bubble(ranks: list[dict[str, Any]]) -> float:
    """``1 - sum(busy) / (p * makespan)`` from the per-rank timelines of one run."""
    t0 = min(r["events"][0][2] for r in ranks)
    t1 = max(r["events"][-1][3] for r in ranks)
    return 1.0 - sum(r["busy"] for r in ranks) / (len(ranks) * (t1 - t0))


def plot_timeline(ranks: list[dict[str, Any]], ax=None, title: str = ""):
    """Gantt chart: one row per rank, forward blue, backward orange, micro-batch index written inside."""
    import matplotlib.pyplot as plt

    from llmcore.core.plotting import PALETTE

    if ax is None:
        _fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(ranks)))
    t0 = min(r["events"][0][2] for r in ranks)
    for r in ranks:
        for op, i, a, b in r["events"]:
            color = PALETTE[0] if op == "F" else PALETTE[1]
            ax.barh(r["rank"], (b - a) * 1e3, left=(a - t0) * 1e3, color=color, edgecolor="white", height=0.8)
            ax.text((a - t0 + (b - a) / 2) * 1e3, r["rank"], str(i), ha="center", va="center", fontsize=7,
                    color="white")
    ax.set_yticks([r["rank"] for r in ranks], [f"stage {r['rank']}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(title)
    ax.grid(False)
    return ax


# -- the schedule as a picture: an idealised timeline from the dependencies alone ------------------------


def ideal_timeline(kind: str, p: int, m: int, t_f: float = 1.0, t_b: float = 2.0) -> list[dict[str, Any]]:
    r"""Start and end of every op of ``schedule_ops(kind, p, m, r)`` on every stage, with constant op times.

    No processes and no clocks: each stage runs its ops in schedule order, as early as the data allows —
    ``F(r, i)`` after ``F(r-1, i)`` has produced the activation, ``B(r, i)`` after ``B(r+1, i)`` has
    produced the gradient. Returns the per-rank ``{"rank", "events", "busy"}`` dicts of :func:`run_pipeline`,
    so :func:`measured_bubble` applies; for both schedules it gives exactly :math:`(p-1)/(m+p-1)` when
    ``t_b`` is any multiple of ``t_f`` (checked in the tests).
    """
    ops = [schedule_ops(kind, p, m, r) for r in range(p)]
    done: dict[tuple[str, int, int], float] = {}
    free, nxt = [0.0] * p, [0] * p
    events: list[list[tuple[str, int, float, float]]] = [[] for _ in range(p)]
    while any(nxt[r] < len(ops[r]) for r in range(p)):
        progressed = False
        for r in range(p):
            if nxt[r] == len(ops[r]):
                continue
            op, i = ops[r][nxt[r]]
            dep = ("F", r - 1, i) if op == "F" and r > 0 else ("B", r + 1, i) if op == "B" and r < p - 1 else None
            if dep is not None and dep not in done:
                continue
            t0 = max(free[r], done.get(dep, 0.0))
            t1 = t0 + (t_f if op == "F" else t_b)
            done[(op, r, i)], free[r] = t1, t1
            events[r].append((op, i, t0, t1))
            nxt[r] += 1
            progressed = True
        if not progressed:
            raise RuntimeError(f"schedule {kind!r} deadlocks for p={p}, m={m}")
    return [{"rank": r, "events": ev, "busy": sum(b - a for _o, _i, a, b in ev)} for r, ev in enumerate(events)]


def plot_schedule_diagram(ax, kind: str = "1f1b", p: int = 4, m: int = 8, t_f: float = 1.0, t_b: float = 2.0):
    """Draw the idealised schedule (:func:`ideal_timeline`): forwards blue, backwards orange with the
    micro-batch index inside, the idle bubble hatched grey, and the stash (micro-batches whose activations
    a stage holds) written at the end of each row. Returns ``ax``."""
    from matplotlib.patches import Rectangle

    from llmcore.core.plotting import PALETTE

    ranks = ideal_timeline(kind, p, m, t_f, t_b)
    end = max(r["events"][-1][3] for r in ranks)
    for r in ranks:
        ax.add_patch(Rectangle((0, r["rank"] - 0.4), end, 0.8, facecolor="0.93", edgecolor="0.6", hatch="///",
                               lw=0, zorder=0))
        live = peak = 0
        for op, i, a, b in r["events"]:
            live += 1 if op == "F" else -1
            peak = max(peak, live)
            ax.add_patch(Rectangle((a, r["rank"] - 0.4), b - a, 0.8, facecolor=PALETTE[0] if op == "F" else PALETTE[1],
                                   edgecolor="white", lw=1, zorder=1))
            ax.text((a + b) / 2, r["rank"], str(i), ha="center", va="center", fontsize=7, color="white", zorder=2)
        ax.text(end + 0.3, r["rank"], f"stash ≤ {peak}", va="center", fontsize=7)
    bubble = measured_bubble(ranks)
    ax.set_xlim(0, end * 1.12)
    ax.set_ylim(p - 0.5, -0.5)
    ax.set_yticks(range(p), [f"stage {r}" for r in range(p)])
    ax.set_xlabel(r"time (units of $t_f$; $t_b = %g\,t_f$)" % (t_b / t_f))
    ax.set_title(f"{'GPipe' if kind == 'gpipe' else '1F1B'}, p={p}, m={m}: bubble {bubble:.3f} "
                 f"= (p-1)/(m+p-1) = {p - 1}/{m + p - 1}", fontsize=9)
    ax.grid(False)
    return ax
