"""What the kernels chapter draws: the execution model, bit layouts, representable values, the roofline,
training curves and the loss scale, gradient magnitudes, and decode speed vs bytes per weight."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, Rectangle

from llmcore.engineering.cuda_precision import formats
from llmcore.engineering.cuda_precision.mixed import MixedResult, Underflow
from llmcore.engineering.cuda_precision.quant_gemm import DecodePoint
from llmcore.engineering.cuda_precision.roofline import Ceilings, KernelPoint


def plot_tiled_matmul(ax: Axes, tiles: int = 4) -> None:
    """A grid of programs over C; program (1, 2) walks A's row panel and B's column panel in BLOCK_K steps."""
    ax.set_aspect("equal")
    ax.axis("off")
    pm, pn = 1, 2

    def grid(x0, y0, nr, nc, hi=None, label="", step=None):
        for i in range(nr):
            for j in range(nc):
                on = hi is not None and hi(i, j)
                ax.add_patch(Rectangle((x0 + j, y0 + nr - 1 - i), 1, 1, fc="#f4a261" if on else "#eef2f7",
                                       ec="#555", lw=0.8))
                if on and step is not None:
                    ax.text(x0 + j + 0.5, y0 + nr - 0.5 - i, step(i, j), ha="center", va="center", fontsize=8)
        ax.text(x0 + nc / 2, y0 + nr + 0.3, label, ha="center", va="bottom", fontsize=10)

    grid(0, 0, tiles, tiles, lambda i, j: i == pm, "A (M x K)", lambda i, j: f"k{j}")
    grid(tiles + 1.5, tiles + 1.5, tiles, tiles, lambda i, j: j == pn, "B (K x N)", lambda i, j: f"k{i}")
    grid(tiles + 1.5, 0, tiles, tiles, lambda i, j: (i, j) == (pm, pn), "C = A @ B (M x N)")
    for i in range(tiles):
        for j in range(tiles):
            ax.text(tiles + 2 + j, tiles - 0.5 - i, f"({i},{j})", ha="center", va="center", fontsize=6.5,
                    color="#333" if (i, j) != (pm, pn) else "k")
    ax.add_patch(FancyArrowPatch((tiles, tiles - pm - 0.5), (tiles + 1.5 + pn, tiles - pm - 0.5), arrowstyle="->",
                                 mutation_scale=12, color="#c0392b"))
    ax.add_patch(FancyArrowPatch((tiles + 2 + pn, tiles + 1.5), (tiles + 2 + pn, tiles - pm), arrowstyle="->",
                                 mutation_scale=12, color="#c0392b"))
    ax.text(0, -0.9, "grid = (M / BLOCK_M, N / BLOCK_N) programs, one per C tile; program (1, 2) loads A tile k and "
            "B tile k,\nmultiplies them with tl.dot, accumulates in fp32 registers for k = 0..K/BLOCK_K-1, stores once",
            fontsize=8.5, va="top")
    ax.set_xlim(-0.5, 2 * tiles + 2)
    ax.set_ylim(-2.2, 2 * tiles + 2.3)


def plot_bit_layouts(ax: Axes) -> None:
    """Sign / exponent / mantissa boxes of every format, drawn to scale (one box per bit)."""
    ax.axis("off")
    for r, f in enumerate(formats.FORMATS):
        y = len(formats.FORMATS) - 1 - r
        bits = ["s"] + ["e"] * f.exp_bits + ["m"] * f.man_bits
        for i, b in enumerate(bits):
            ax.add_patch(Rectangle((i * 0.3, y), 0.3, 0.7, fc={"s": "#e76f51", "e": "#2a9d8f", "m": "#e9c46a"}[b],
                                   ec="w", lw=0.5))
        ax.text(-0.2, y + 0.35, f.name, ha="right", va="center", fontsize=9)
        ax.text(len(bits) * 0.3 + 0.2, y + 0.35, f"1 + {f.exp_bits} + {f.man_bits}", va="center", fontsize=8)
    ax.set_xlim(-2.2, 33 * 0.3 + 2)
    ax.set_ylim(-0.5, len(formats.FORMATS))
    ax.set_title("sign (red) | exponent (teal) | mantissa (yellow)", fontsize=10)


def plot_representable(ax: Axes) -> None:
    """Every positive finite fp8 value (E4M3fn, E5M2) on a log axis: spacing doubles every binade."""
    for y, name in enumerate(("fp8 e4m3fn", "fp8 e5m2")):
        v = formats.all_values(formats.BY_NAME[name]).numpy()
        v = v[v > 0]
        f = formats.BY_NAME[name]
        normal = v >= 2.0 ** (1 - f.bias)
        ax.plot(v[normal], np.full(normal.sum(), y), "|", ms=14, color="#2a9d8f")
        ax.plot(v[~normal], np.full((~normal).sum(), y), "|", ms=14, color="#e76f51")
        ax.text(v.max() * 1.5, y, f"max {v.max():g}", va="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yticks([0, 1], ["E4M3fn", "E5M2"])
    ax.set_ylim(-0.7, 1.7)
    ax.set_xlabel("value (log2 axis); red = subnormal")
    ax.set_title("Every positive fp8 value", fontsize=10)


def plot_roofline(ax: Axes, ceil: Ceilings, points: dict[str, KernelPoint], title: str = "") -> None:
    """Measured ceilings (min of the copy line and the matmul roof) and each kernel at its intensity."""
    lo = min(min(p.intensity for p in points.values()) / 2, 0.02)
    hi = max(max(p.intensity for p in points.values()) * 2, ceil.ridge * 8)
    xs = np.logspace(math.log10(lo), math.log10(hi), 200)
    ax.loglog(xs, np.minimum(ceil.flops, ceil.bandwidth * xs) / 1e9, "k-", lw=2,
              label=f"roof: {ceil.bandwidth / 1e9:.1f} GB/s, {ceil.flops / 1e9:.1f} GFLOP/s")
    ax.axvline(ceil.ridge, color="k", ls=":", lw=1)
    ax.text(ceil.ridge * 1.1, ceil.flops / 1e9 * 0.05, f"ridge {ceil.ridge:.1f} FLOP/B", fontsize=8)
    colors = {"softmax": "#e76f51", "RMSNorm": "#2a9d8f"}
    for name, p in points.items():
        op = name.split(" ")[0]
        c = colors.get(op, "#264653")
        marker = "o" if "unfused" not in name else "x"
        ax.loglog(p.intensity, p.achieved / 1e9, marker, color=c, ms=8, label=f"{name}: {p.achieved / 1e9:.2f}")
    for op, c in colors.items():
        a, b = points.get(f"{op} (unfused)"), points.get(f"{op} (fused)")
        if a and b:
            ax.annotate("", (b.intensity, b.achieved / 1e9), (a.intensity, a.achieved / 1e9),
                        arrowprops={"arrowstyle": "->", "color": c})
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "Roofline, ceilings measured on this machine", fontsize=10)


def plot_training(ax: Axes, runs: dict[str, MixedResult], window: int = 10) -> None:
    """Training loss per step (moving average) of each precision."""
    for name, r in runs.items():
        x = np.convolve(r.loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(x)) + window, x, label=f"{name} (val {r.val:.3f})", lw=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (nats/token)")
    ax.legend(fontsize=8)
    ax.set_title("Same batches, same init: fp32 vs low precision", fontsize=10)


def plot_scale(ax: Axes, eq: dict) -> None:
    """Loss scale per step, ours vs torch's GradScaler, skipped steps marked."""
    a, b = eq["ours"], eq["torch"]
    ax.semilogy(b.scale, color="#999", lw=4, label="torch.amp.GradScaler")
    ax.semilogy(a.scale, color="#c0392b", lw=1.2, label="ours (DynamicLossScaler)")
    ax.plot(a.skipped, [a.scale[i] for i in a.skipped], "kv", ms=5, label="skipped step (inf/NaN grad)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss scale S")
    ax.legend(fontsize=8)
    ax.set_title("Dynamic loss scaling, step for step", fontsize=10)


def plot_grad_hist(ax: Axes, u: Underflow, kind: str = "logits") -> None:
    """log2 |g| of the fp32 gradients with fp16's underflow lines, unscaled and shifted by the loss scale."""
    g = u.grads_fp32[kind]
    g = g[g != 0].abs().double().log2().numpy()
    bins = np.arange(math.floor(g.min()) - 1, math.ceil(g.max() + math.log2(u.loss_scale)) + 2)
    ax.hist(g, bins=bins, alpha=0.6, label="|g| (fp32)")
    ax.hist(g + math.log2(u.loss_scale), bins=bins, alpha=0.6, label=f"|S g|, S = 2^{math.log2(u.loss_scale):.0f}")
    ax.axvline(-24, color="k", ls="--", lw=1)
    ax.axvline(-14, color="k", ls=":", lw=1)
    ax.axvline(math.log2(65504), color="#c0392b", ls="--", lw=1)
    ymax = ax.get_ylim()[1]
    ax.text(-24.3, ymax * 0.9, "fp16 smallest\nsubnormal 2^-24", ha="right", fontsize=7)
    ax.text(-13.7, ymax * 0.9, "smallest\nnormal 2^-14", fontsize=7)
    ax.text(math.log2(65504) - 0.3, ymax * 0.25, "max 65504", ha="right", fontsize=7, color="#c0392b")
    ax.set_xlabel("log2 |gradient|")
    ax.set_ylabel("count")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"{kind} gradients: {u.unscaled[kind]:.1%} flush to 0 in fp16, {u.scaled[kind]:.2%} with scaling",
                 fontsize=10)


def plot_decode(ax: Axes, points: list[DecodePoint]) -> None:
    """Tokens/s against weight bytes read per token: a memory-bound kernel follows bandwidth / bytes."""
    b = np.array([p.weight_bytes for p in points]) / 1e6
    t = np.array([p.tokens_per_s for p in points])
    ax.loglog(b, t, "o", ms=8)
    for p, x, y in zip(points, b, t):
        ax.annotate(f"{p.name}\n{p.gbps:.1f} GB/s", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ref = points[0]
    xs = np.array([b.min() / 1.5, b.max() * 1.5])
    ax.loglog(xs, ref.tokens_per_s * (ref.weight_bytes / 1e6) / xs, "k--", lw=1, label="tokens/s ∝ 1 / bytes")
    ax.set_xlabel("weight MB read per token")
    ax.set_ylabel("tokens/s (batch 1)")
    ax.legend(fontsize=8)
    ax.set_title("Decode: fewer bytes per weight, more tokens/s", fontsize=10)


def representable_count(name: str) -> int:
    """Number of finite non-negative values of a format (for the text)."""
    return int(formats.all_values(formats.BY_NAME[name]).numel())


__all__ = ["plot_tiled_matmul", "plot_bit_layouts", "plot_representable", "plot_roofline", "plot_training",
           "plot_scale", "plot_grad_hist", "plot_decode", "representable_count"]
