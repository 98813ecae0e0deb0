"""Figures of the diffusion chapter: the mechanism diagrams and the experiment's plots."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from llmcore.architecture.diffusion.experiment import DiffusionResult, SampleEval
from llmcore.architecture.diffusion.schedules import add_noise, make_schedule
from llmcore.core.plotting import PALETTE


def show_images(ax, x: torch.Tensor, nrow: int, title: str = "", pad: int = 1) -> None:
    """Tile ``x (B, 1, H, W)`` in [-1, 1] into ``nrow`` rows on ``ax`` (white ink on black, like the data)."""
    x = x.detach().clamp(-1, 1).cpu().numpy()[:, 0]
    B, H, W = x.shape
    ncol = int(np.ceil(B / nrow))
    canvas = np.full((nrow * (H + pad) - pad, ncol * (W + pad) - pad), np.nan)
    for i in range(B):
        r, c = divmod(i, ncol)
        canvas[r * (H + pad):r * (H + pad) + H, c * (W + pad):c * (W + pad) + W] = x[i]
    ax.imshow(canvas, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    ax.set_facecolor("white")
    if title:
        ax.set_title(title, fontsize=9)


def plot_forward_process(axes, x0: torch.Tensor, T: int = 100, ts=(0, 10, 25, 50, 75, 99), seed: int = 0) -> None:
    """Top: one digit noised by ``q(x_t|x_0)`` at several ``t`` (cosine schedule); bottom: the signal and noise
    scales :math:`\\sqrt{\\bar\\alpha_t}`, :math:`\\sqrt{1-\\bar\\alpha_t}` of the linear and cosine schedules.
    ``axes``: a row of ``len(ts)`` axes and one wide axis."""
    row, curve = axes
    s = make_schedule(T, "cosine")
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    for ax, t in zip(row, ts):
        xt = add_noise(s, x0[None], noise[None], torch.tensor([t]))
        show_images(ax, xt, 1, f"t={t}")
    for kind, color in (("linear", PALETTE[0]), ("cosine", PALETTE[1])):
        ab = make_schedule(T, kind).alphas_cumprod.numpy()
        curve.plot(np.sqrt(ab), color=color, label=rf"{kind}: $\sqrt{{\bar\alpha_t}}$ (signal)")
        curve.plot(np.sqrt(1 - ab), color=color, ls="--", label=rf"{kind}: $\sqrt{{1-\bar\alpha_t}}$ (noise)")
    curve.set_xlabel("timestep t"), curve.legend(fontsize=7, ncol=2)
    curve.set_title("forward process q(x_t | x_0): signal fades, noise grows", fontsize=9)


def _box(ax, xy, text, color, w=0.26, h=0.075):
    ax.add_patch(FancyBboxPatch((xy[0] - w / 2, xy[1] - h / 2), w, h, boxstyle="round,pad=0.01",
                                fc=color, ec="k", lw=0.8, alpha=0.9))
    ax.text(*xy, text, ha="center", va="center", fontsize=8)


def _arrow(ax, a, b, **kw):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=10, lw=0.9, color="k", **kw))


def plot_dit_block(ax) -> None:
    """The DiT block with adaLN-Zero: the conditioning c = emb(t) + emb(y) regresses six vectors per block
    (shift, scale, gate for the attention and the MLP branch); the gates start at zero."""
    ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.axis("off")
    col = {"norm": "#fde0c5", "op": "#c6dbef", "mod": "#d9f0d3", "cond": "#f2f2f2"}
    ys = [0.06, 0.17, 0.28, 0.39, 0.5, 0.62, 0.73, 0.84, 0.95]
    x0 = 0.3
    labels = [("tokens x (B, N, d)", "cond"), ("LayerNorm", "norm"), ("scale γ1, shift β1", "mod"),
              ("self-attention", "op"), ("× gate α1, + x", "mod"), ("LayerNorm", "norm"),
              ("scale γ2, shift β2", "mod"), ("MLP", "op"), ("× gate α2, + x", "mod")]
    for y, (t, c) in zip(ys, labels):
        _box(ax, (x0, y), t, col[c])
    for a, b in zip(ys[:-1], ys[1:]):
        _arrow(ax, (x0, a + 0.038), (x0, b - 0.038))
    # residual paths, on the left of the stack
    left = x0 - 0.13
    for a, b in ((ys[0], ys[4]), (ys[4], ys[8])):
        ax.plot([left, left - 0.06, left - 0.06], [a, a, b], color="0.4", lw=0.8)
        _arrow(ax, (left - 0.06, b), (left, b))
    ax.text(left - 0.08, (ys[0] + ys[4]) / 2, "residual", rotation=90, fontsize=7, ha="right", va="center",
            color="0.4")
    _box(ax, (0.8, 0.16), "timestep t, class y", col["cond"], w=0.3)
    _box(ax, (0.8, 0.32), "c = MLP(sin(t)) + E[y]", col["cond"], w=0.3)
    _box(ax, (0.8, 0.52), "Linear(SiLU(c)) → 6d\nzero-initialised", col["mod"], w=0.3, h=0.1)
    _arrow(ax, (0.8, 0.2), (0.8, 0.28)), _arrow(ax, (0.8, 0.36), (0.8, 0.47))
    for y in (ys[2], ys[4], ys[6], ys[8]):
        _arrow(ax, (0.65, 0.52), (x0 + 0.13, y), ls=":")
    ax.text(0.8, 0.66, "at init: α1 = α2 = 0\n⇒ block(x) = x", ha="center", fontsize=8, color=PALETTE[3])
    ax.set_title("DiT block with adaLN-Zero conditioning", fontsize=10)


def plot_digit_grid(ax, grid: torch.Tensor, per_row: int = 10) -> None:
    """``grid (10, n, 1, 8, 8)``: one row per requested digit, the first ``per_row`` samples."""
    show_images(ax, grid[:, :per_row].reshape(-1, 1, 8, 8), 10)
    ax.set_ylabel("requested digit 0 … 9")


def plot_guidance(axes, sweep: list[SampleEval], per_class: int) -> None:
    """Left: accuracy and within-class diversity vs the guidance scale; right: samples of one digit per scale."""
    ax, img = axes
    ws = [float(e.label.split("=")[1]) for e in sweep]
    ax.plot(ws, [e.accuracy for e in sweep], "o-", color=PALETTE[0], label="accuracy (judge)")
    ax.set_xlabel("guidance scale w"), ax.set_ylabel("accuracy", color=PALETTE[0]), ax.set_ylim(0, 1.05)
    ax2 = ax.twinx()
    ax2.plot(ws, [e.diversity for e in sweep], "s--", color=PALETTE[1], label="diversity")
    ax2.set_ylabel("within-class diversity", color=PALETTE[1]), ax2.grid(False)
    ax.set_title("classifier-free guidance: accuracy up, diversity down", fontsize=9)
    digit = 3
    rows = torch.cat([e.samples[digit * per_class:digit * per_class + 8] for e in sweep])
    show_images(img, rows, len(sweep), f"digit {digit}, rows w = " + ", ".join(f"{w:g}" for w in ws))


def plot_samplers(ax, samplers: list[SampleEval], ref_fd: float) -> None:
    """Fréchet distance and accuracy against network evaluations per sample, DDIM step counts vs DDPM."""
    nfe = [e.nfe for e in samplers]
    ax.plot(nfe, [e.fd for e in samplers], "o-", color=PALETTE[0])
    for e in samplers:
        ax.annotate(f"{e.label}\nacc {e.accuracy:.2f}", (e.nfe, e.fd), fontsize=7, xytext=(3, 4),
                    textcoords="offset points")
    ax.axhline(ref_fd, color="k", ls=":", label="floor: train vs held-out images")
    ax.set_xscale("log"), ax.set_xlabel("network evaluations per sample (CFG: 2 per step)")
    ax.set_ylabel("Fréchet distance (judge features)"), ax.legend(fontsize=8)
    ax.set_title("DDIM with few steps vs DDPM's full chain", fontsize=9)


def plot_losses(ax, res: DiffusionResult) -> None:
    for name, color in (("unet", PALETTE[0]), ("dit", PALETTE[1]), ("latent", PALETTE[2])):
        loss = np.asarray(res.losses[name])
        k = 20
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(smooth)) + k, smooth, color=color,
                label=f"{name} ({res.params[name] / 1e3:.0f}k params)")
    ax.set_xlabel("optimiser step"), ax.set_ylabel("diffusion loss (20-step mean)"), ax.set_yscale("log")
    ax.legend(fontsize=8), ax.set_title("training loss at equal steps and batch", fontsize=9)


def plot_trajectory(axes, traj) -> None:
    """One row of ``x_t`` and one of the predicted ``x0_hat`` after each sampler step."""
    top, bottom = axes
    show_images(top, torch.stack([x[0] for _, x, _ in traj]), 1, "x_t after each step (t = "
                + ", ".join(str(t) for t, _, _ in traj) + ")")
    show_images(bottom, torch.stack([x0[0] for _, _, x0 in traj]), 1, "predicted clean image x̂0")
