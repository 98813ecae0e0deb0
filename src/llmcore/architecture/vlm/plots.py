"""Figures of the VLM chapter: the three connectors, scenes with answers, retrieval and attention, curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import patches

from llmcore.architecture.vlm.experiment import VLMResult, answer, encode_captions, zero_shot_captions
from llmcore.architecture.vlm.scenes import PALETTE, prompt_text


def _box(ax, x, y, w, h, text, colour, size=8):
    ax.add_patch(patches.FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=colour, ec="0.3", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, x0, y0, x1, y1):
    ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": "0.3", "lw": 1})


def plot_connectors():
    """Where the image enters the LM in LLaVA (tokens in the sequence), Flamingo (gated cross-attention
    before each block) and BLIP-2 (a few query tokens in the sequence)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    frozen, train, lm = "#dddddd", "#f6c28b", "#a6cee3"
    for ax, title in zip(axes, ("LLaVA: MLP projector", "Flamingo: resampler + gated x-attn",
                                "BLIP-2: Q-Former")):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 10)
        ax.axis("off")
        ax.set_title(title, fontsize=10)
        _box(ax, 0.2, 0.3, 2.6, 1.2, "frozen ViT\n(CLIP)", frozen)
    a = axes[0]
    _box(a, 0.2, 2.6, 2.6, 1.1, "MLP\nprojector", train)
    _arrow(a, 1.5, 1.5, 1.5, 2.6)
    _box(a, 3.6, 5.2, 6.0, 3.0, "frozen LM (+ LoRA in stage 2)", lm)
    for i in range(6):
        _box(a, 3.8 + i * 0.95, 4.0, 0.8, 0.6, "v" if i < 4 else "t", train if i < 4 else "white", 7)
    _arrow(a, 2.8, 3.2, 3.8, 4.2)
    a.text(6.5, 3.3, "N patch tokens + text", ha="center", fontsize=8)
    f = axes[1]
    _box(f, 0.2, 2.6, 2.6, 1.3, "Perceiver\nresampler\n(L latents)", train)
    _arrow(f, 1.5, 1.5, 1.5, 2.6)
    for k in range(3):
        y = 1.0 + k * 2.9
        _box(f, 5.6, y, 4.0, 1.0, f"frozen LM block {k}", lm)
        _box(f, 5.6, y + 1.2, 4.0, 0.9, "tanh(α)·x-attn, α₀=0", train, 7)
        _arrow(f, 2.8, 3.3, 5.6, y + 1.6)
    f.text(3.6, 0.4, "text only in the sequence", fontsize=8)
    b = axes[2]
    _box(b, 0.2, 2.6, 3.2, 1.7, "Q-Former\nL queries ⇄ text\n(ITC, then VQA)", train)
    _arrow(b, 1.5, 1.5, 1.5, 2.6)
    _box(b, 0.2, 5.0, 3.2, 0.8, "linear", train)
    _arrow(b, 1.8, 4.3, 1.8, 5.0)
    _box(b, 4.4, 5.2, 5.4, 3.0, "frozen LM", lm)
    for i in range(5):
        _box(b, 4.6 + i * 1.0, 4.0, 0.8, 0.6, "q" if i < 2 else "t", train if i < 2 else "white", 7)
    _arrow(b, 3.4, 5.4, 4.6, 4.4)
    b.text(7.0, 3.3, "L query tokens + text", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def show_image(ax, image: torch.Tensor) -> None:
    ax.imshow(PALETTE[image.long()].numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def plot_scenes(res: VLMResult, n: int = 8, split: str = "combo"):
    """``n`` scenes of a test split with their question, the truth and every connector's greedy answer."""
    ss = res.data.combo if split == "combo" else res.data.test
    fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 3.4))
    names = [k for k in ("LLaVA", "Flamingo", "BLIP-2") if k in res.models]
    for i, ax in enumerate(axes):
        show_image(ax, ss.images[i])
        lines = [ss.questions[i], f"truth: {ss.answers[i]}"]
        for k in names:
            got = answer(res.models[k], ss.images[i], ss.questions[i])
            lines.append(f"{k.split(' ')[0]}: {got} {'✓' if got == ss.answers[i] else '✗'}")
        ax.set_xlabel("\n".join(lines), fontsize=7)
    fig.suptitle("held-out colour-shape pairs: question, truth, answers" if split == "combo"
                 else "held-out scenes: question, truth, answers", fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_retrieval_and_attention(res: VLMResult, n: int = 4):
    """Top row: CLIP zero-shot, the three best captions of single-object test images (cosine similarity).
    Bottom row: what Flamingo's resampler latents look at (attention over the patches, averaged over heads)."""
    clip, ss = res.clip.eval(), res.data.combo
    idx = [i for i, objs in enumerate(ss.objects) if len(objs) == 1][:n]
    caps = zero_shot_captions()
    dev = next(clip.parameters()).device
    u = torch.nn.functional.normalize(clip.encode_image(ss.images[idx].to(dev)), dim=-1)
    w = torch.nn.functional.normalize(clip.encode_text(encode_captions(caps).to(dev)), dim=-1)
    sim = (u @ w.T).cpu()
    flam = res.models["Flamingo"].eval()
    two = [i for i, objs in enumerate(ss.objects) if len(objs) == 2][:n]
    flam.resampler(flam.patch_features(ss.images[two].to(dev)))
    att = flam.resampler.layers[-1]["attn"].last_weights.mean(1)[:, :, :flam.vit.n_patches].cpu()  # (n, L, N)
    side = int(round(flam.vit.n_patches ** 0.5))
    L = att.shape[1]
    fig, axes = plt.subplots(2, n * 1, figsize=(2.6 * n, 5.4))
    for j, i in enumerate(idx):
        ax = axes[0, j]
        show_image(ax, ss.images[i])
        top = sim[j].topk(3)
        txt = [f"{'→ ' if k == 0 else ''}{caps[c].removeprefix('a ')} ({s:.2f})"
               for k, (s, c) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]
        ax.set_xlabel("\n".join(txt), fontsize=7)
        ax.set_title(f"truth: {ss.captions[i].removeprefix('a ')}", fontsize=7)
    for j, i in enumerate(two):
        ax = axes[1, j]
        show_image(ax, ss.images[i])
        S = ss.images.shape[-1]
        heat = att[j].view(L, side, side).max(0).values
        heat = torch.nn.functional.interpolate(heat[None, None], size=(S, S), mode="nearest")[0, 0]
        ax.imshow(heat.numpy(), cmap="magma", alpha=0.55, interpolation="nearest")
        ax.set_xlabel(f"max over {L} latents of\nresampler attention", fontsize=7)
    fig.suptitle("CLIP zero-shot retrieval (top) · Flamingo resampler attention (bottom)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_training(res: VLMResult):
    """Loss curves: CLIP and the Q-Former's ITC (contrastive), then each connector's answer loss."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(res.clip_loss, label="CLIP")
    a.plot(res.itc_loss, label="Q-Former ITC")
    a.axhline(np.log(res.cfg.clip_batch), ls="--", c="0.5", lw=0.8, label="log(batch): chance")
    a.set_xlabel("step")
    a.set_ylabel("contrastive loss")
    a.legend()
    for name, c in res.connectors.items():
        b.plot(np.convolve(c.loss, np.ones(10) / 10, mode="valid"), label=name)
    b.set_yscale("log")
    b.set_xlabel("step")
    b.set_ylabel("answer loss (nats/token, 10-step mean)")
    b.legend()
    fig.tight_layout()
    return fig


def ask(model, image: torch.Tensor, question_text: str) -> str:
    """The prompt the LM reads and its greedy answer (for the play cell)."""
    return f"{prompt_text(question_text)} {answer(model, image, question_text)}"
