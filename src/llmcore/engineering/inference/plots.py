"""What the inference chapter draws: the block-table picture, KV utilisation over time, TTFT/TPOT."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, Rectangle

from llmcore.engineering.inference.paged import BlockManager, BlockTable


def demo_pool() -> tuple[BlockManager, dict[str, BlockTable]]:
    """A small pool (12 blocks of 4) with three sequences: A (10 tokens), B = fork of A + 3 tokens (its half-full
    last block copied on write, the first two shared), C (5 tokens) -- the state the diagram shows."""
    m = BlockManager(num_blocks=12, block_size=4, n_layers=1, n_kv_heads=1, head_dim=1)
    m.free.rotate(-1)  # start at block 1: physical order differs from logical order, as in a busy pool
    a = BlockTable()
    m.append_slots(a, 6)
    c = BlockTable()
    m.append_slots(c, 5)
    m.append_slots(a, 4)
    b = m.fork(a)
    m.append_slots(b, 3)
    return m, {"A": a, "B": b, "C": c}


def plot_block_tables(ax, manager: BlockManager | None = None, tables: dict[str, BlockTable] | None = None) -> None:
    """Logical blocks of each sequence (left) -> physical blocks of the pool (right); the fill of each block;
    shared blocks (reference count > 1) hatched."""
    if manager is None:
        manager, tables = demo_pool()
    b, colors = manager.block_size, dict(zip(tables, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    n_phys = manager.num_blocks
    owner = {}
    for name, t in tables.items():
        for blk in t.blocks:
            owner.setdefault(blk, name)
    px = 7.0  # pool column
    for p in range(n_phys):
        y = n_phys - 1 - p
        shared = manager.ref[p] > 1
        ax.add_patch(Rectangle((px, y), 4, 0.8, fill=False, ec="0.6"))
        fill = 0
        for t in tables.values():
            if p in t.blocks:
                j = t.blocks.index(p)
                fill = max(fill, min(b, t.num_tokens - j * b))
        if p in owner:
            ax.add_patch(Rectangle((px, y), 4 * fill / b, 0.8, color=colors[owner[p]], alpha=0.75,
                                   hatch="//" if shared else None, ec="k" if shared else None))
        ax.text(px + 4.2, y + 0.4, f"#{p}" + (f"  ref {manager.ref[p]}" if manager.ref[p] else "  free"),
                va="center", fontsize=7)
    row = n_phys - 1
    for name, t in tables.items():
        ax.text(-0.2, row + 0.4, f"seq {name}\n{t.num_tokens} tok", ha="right", va="center", fontsize=8)
        for j, blk in enumerate(t.blocks):
            y = row - j
            fill = min(b, t.num_tokens - j * b)
            ax.add_patch(Rectangle((0, y), 4, 0.8, fill=False, ec="0.6"))
            ax.add_patch(Rectangle((0, y), 4 * fill / b, 0.8, color=colors[name], alpha=0.75))
            ax.text(2, y + 0.4, f"logical {j} -> #{blk}", ha="center", va="center", fontsize=6.5)
            ax.add_artist(FancyArrowPatch((4, y + 0.4), (px, n_phys - 1 - blk + 0.4), arrowstyle="->",
                                          color=colors[name], lw=0.8, mutation_scale=8))
        row -= len(t.blocks) + 1
    ax.set_xlim(-2.5, 13.5)
    ax.set_ylim(min(row, 0) - 0.5, n_phys + 0.3)
    ax.axis("off")
    ax.set_title(f"block tables -> a pool of {n_phys} blocks of {b} positions (hatched: shared, ref > 1)", fontsize=9)


def plot_utilisation(ax, runs: dict) -> None:
    """Used / allocated KV positions per engine step over wall time, one line per run."""
    for name, r in runs.items():
        st = r.engine.stats
        t0 = st[0].t
        t = np.array([s.t - t0 for s in st])
        u = np.array([s.used_slots / s.allocated_slots if s.allocated_slots else np.nan for s in st])
        ax.plot(t, u, lw=1, label=f"{name} (mean {r.utilisation:.0%})")
    ax.set(xlabel="wall time (s)", ylabel="used / allocated KV", ylim=(0, 1.05))
    ax.legend(fontsize=7)


def plot_latency(axes, requests: list, title: str = "") -> None:
    """TTFT (left) and TPOT (right) of every request, as empirical CDFs."""
    for ax, vals, label in ((axes[0], [r.ttft for r in requests], "TTFT (s)"),
                            (axes[1], [r.tpot for r in requests if r.tpot == r.tpot], "TPOT (s)")):
        v = np.sort(np.array(vals))
        ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post")
        ax.axvline(np.percentile(v, 50), color="k", ls=":", lw=1, label="p50")
        ax.axvline(np.percentile(v, 99), color="r", ls=":", lw=1, label="p99")
        ax.set(xlabel=label, ylabel="fraction of requests")
        ax.legend(fontsize=7)
    if title:
        axes[0].set_title(title, fontsize=9)


def figures(res, out_dir) -> list[str]:
    """Save the chapter's three figures for the report; returns their paths."""
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    plot_block_tables(ax)
    paths.append(str(out_dir / "inference_block_tables.png"))
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    plot_utilisation(ax, {k: res.runs[k] for k in ("continuous", "static", "preempt")})
    paths.append(str(out_dir / "inference_utilisation.png"))
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    plot_latency(axes, res.runs["continuous"].requests)
    paths.append(str(out_dir / "inference_latency.png"))
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
