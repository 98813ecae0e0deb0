r"""What the MoE chapter draws: the routing table of a text, the layer diagram, the results figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from llmcore.architecture.moe.closed_loop import MoELM, MoEResult
from llmcore.architecture.tokenizer import ByteTokenizer
from llmcore.core.errors import LLMCoreError


# ---- what the chapter shows ------------------------------------------------------------------------
def route_table(model: MoELM, text: str) -> list[dict]:
    """The widget's table: for each byte of ``text``, the experts it is sent to in every layer."""
    ids = torch.tensor(ByteTokenizer().encode(text), dtype=torch.long)[None]
    if ids.shape[1] == 0:
        raise LLMCoreError("type some text: an empty string has no tokens to route")
    routes = model.routes(ids.to(next(model.parameters()).device))
    return [{"byte": bytes([int(t)]).decode("utf-8", "replace") if t < 256 else f"<{int(t)}>",
             **{f"layer {j}": sorted(int(e) for e in r[i]) for j, r in enumerate(routes)}}
            for i, t in enumerate(ids[0])]


def plot_moe_diagram():
    """The mechanism: router scores, top-k choice, capacity buffers, the gated sum (drawn, not measured)."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 5)
    ax.axis("off")
    ax.grid(False)
    toks = ["x1", "x2", "x3", "x4"]
    routes = [(0, 2), (2, 3), (0, 2), (2, 1)]  # expert 2 gets 4 assignments, capacity 3: x4's is dropped
    for i, t in enumerate(toks):
        ax.text(0.5, 4.2 - i, t, ha="center", va="center", bbox={"boxstyle": "round", "fc": "#e8f1fa"})
    ax.text(1.9, 4.7, "router\nsoftmax(W_r x), top-k", ha="center", fontsize=9)
    for e in range(4):
        y = 4.2 - e
        ax.add_patch(plt.Rectangle((4.2, y - 0.35), 1.6, 0.7, fc="#fde9d9", ec="#D55E00"))
        ax.text(5.0, y, f"expert {e}", ha="center", va="center", fontsize=9)
        for s in range(3):  # capacity C = 3 slots
            ax.add_patch(plt.Rectangle((3.3 + 0.25 * s, y - 0.2), 0.22, 0.4, fc="white", ec="grey", lw=0.8))
    ax.text(3.65, 4.7, "capacity\nC slots", ha="center", fontsize=9)
    count = [0] * 4
    for i, (a, b) in enumerate(routes):
        for e in (a, b):
            count[e] += 1
            dropped = count[e] > 3
            ax.annotate("", xy=(3.25, 4.2 - e), xytext=(0.85, 4.2 - i),
                        arrowprops={"arrowstyle": "->", "color": "#CC0000" if dropped else "#0072B2",
                                    "ls": "--" if dropped else "-", "lw": 1.0})
    ax.text(2.0, 0.0, "red dashed: over capacity -> dropped (residual only)", color="#CC0000", fontsize=8,
            ha="center")
    for e in range(4):
        ax.annotate("", xy=(7.6, 2.7), xytext=(5.8, 4.2 - e), arrowprops={"arrowstyle": "->", "color": "grey"})
    ax.text(8.4, 2.7, "y = sum_k g_k E_k(x)\n(+ shared expert)", ha="center", va="center",
            bbox={"boxstyle": "round", "fc": "#e6f4ea"}, fontsize=9)
    ax.set_title("Top-2 routing with capacity: sort by expert, one batched matmul each, gated sum back")
    return fig


def plot_results(res: MoEResult):
    """Training loss of the three LMs, expert load over training (aux on/off, layer 0), capacity sweep."""
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6), gridspec_kw={"width_ratios": [1.2, 1, 1, 0.05, 1.1]})
    ax = axes[0]
    w = 20
    smooth = {name: np.convolve(c, np.ones(w) / w, mode="valid") for name, c in res.curves.items()}
    for name in ("moe", "moe_noaux"):
        ax.plot(np.arange(len(smooth[name])) + w, smooth["dense"] - smooth[name],
                label=f"dense - {name} (val gap {res.val['dense'] - res.val[name]:+.3f})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="step", ylabel="train loss gap (nats/byte, smoothed)", title="> 0: MoE ahead (equal active params)")
    ax.legend(fontsize=8)
    for ax, name in zip(axes[1:3], ("moe", "moe_noaux")):
        h = res.load_history[name][:, 0, :]  # (logs, E) layer 0
        im = ax.imshow(h.T, aspect="auto", cmap="viridis", vmin=0, vmax=0.5,
                       extent=(0, len(h) * res.cfg.log_every, res.cfg.n_experts - 0.5, -0.5))
        ax.set(xlabel="step", ylabel="expert", title=f"layer-0 load share, {'aux on' if name == 'moe' else 'aux off'}")
        ax.grid(False)
    fig.colorbar(im, cax=axes[3])
    axes[3].set_title("share", fontsize=9)
    fig.subplots_adjust(wspace=0.6)
    ax = axes[4]
    cf = [r["capacity_factor"] for r in res.capacity]
    ax.plot(cf, [r["dropped"] for r in res.capacity], "o-", label="dropped fraction")
    ax.set(xlabel="capacity factor", ylabel="dropped fraction", title="capacity sweep (eval)")
    ax2 = ax.twinx()
    ax2.plot(cf, [r["val"] for r in res.capacity], "s-", color="#D55E00", label="val loss")
    ax2.set_ylabel("val loss", color="#D55E00")
    ax2.grid(False)
    return fig
