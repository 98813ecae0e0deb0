"""Diagrams of the chapter: one dialogue's tokens, who wrote them, the loss mask and the per-turn credit."""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from llmcore.alignment import tasks as T
from llmcore.alignment.agentic_rl import user_sim as U

COLORS = {"agent": "#9ECAE1", "user": "#FDD0A2", "tool": "#C7E9C0", "pad": "#F0F0F0", "opening": "#E0E0E0"}


def token_kinds(ids, mask) -> list[str]:
    """Who wrote each token: ``agent`` (mask 1), ``tool`` (a ``<|tool|>`` segment), ``user``, ``opening`` or ``pad``."""
    kinds, role = [], "opening"
    for t, (i, m) in enumerate(zip(ids, mask)):
        if t >= U.W_OPEN and (t - U.W_OPEN) % U.W_TURN == U.W_AGENT:  # an env segment starts
            role = "tool" if i == U.TOOL else "user"
        kinds.append("agent" if m else "pad" if i == U.PAD else role)
    return kinds


def plot_dialogue(ax, ids, mask, turn_adv=None, title: str = ""):
    """Draw a dialogue as rows of token boxes, one row per turn (the opening first), coloured by who wrote
    them; the agent's tokens (mask 1, the only ones trained) are outlined. ``turn_adv (K,)``: write each
    turn's advantage beside its row (the per-turn credit of PPO). Returns ``ax``."""
    ids, mask = [int(i) for i in ids], [int(m) for m in mask]
    kinds = token_kinds(ids, mask)
    n_turns = (len(ids) - U.W_OPEN) // U.W_TURN
    rows = [range(0, U.W_OPEN)] + [range(U.W_OPEN + k * U.W_TURN, U.W_OPEN + (k + 1) * U.W_TURN)
                                   for k in range(n_turns)]
    for r, span in enumerate(rows):
        y = len(rows) - 1 - r
        for j, t in enumerate(span):
            x = j
            ax.add_patch(Rectangle((x, y), 0.95, 0.8, fc=COLORS[kinds[t]], ec="k" if mask[t] else "#999999",
                                   lw=1.6 if mask[t] else 0.5))
            text = "" if ids[t] == U.PAD else T.TOK.decode([ids[t]]).replace("<|", "").replace("|>", "")
            ax.text(x + 0.47, y + 0.4, text, ha="center", va="center", fontsize=7)
        label = "opening" if r == 0 else f"turn {r - 1}"
        ax.text(-0.3, y + 0.4, label, ha="right", va="center", fontsize=8)
        if turn_adv is not None and r > 0:
            ax.text(U.W_TURN + 0.3, y + 0.4, f"$\\hat A_{{{r - 1}}}$={float(turn_adv[r - 1]):+.2f}", va="center",
                    fontsize=8)
    for i, (k, c) in enumerate(COLORS.items()):
        ax.add_patch(Rectangle((i * 2.4, len(rows) + 0.2), 0.5, 0.5, fc=c, ec="k" if k == "agent" else "#999999"))
        ax.text(i * 2.4 + 0.6, len(rows) + 0.45, k + (" (trained)" if k == "agent" else ""), va="center", fontsize=7)
    ax.set_xlim(-2.2, max(U.W_TURN + 2.5, len(COLORS) * 2.4))
    ax.set_ylim(-0.3, len(rows) + 1)
    ax.axis("off")
    ax.set_title(title or "one dialogue: agent tokens (mask 1) vs environment tokens (mask 0)", fontsize=9)
    return ax


def smooth(x, k: int = 3) -> np.ndarray:
    """Running mean over ``k`` rounds (``valid`` part)."""
    x = np.asarray(x, float)
    return np.convolve(x, np.ones(k) / k, "valid") if len(x) >= k else x


__all__ = ["COLORS", "plot_dialogue", "smooth", "token_kinds"]
