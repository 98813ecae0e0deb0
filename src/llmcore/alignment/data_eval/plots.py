"""Figures of the data & evaluation chapter: the pipeline diagram, the LSH S-curve, robustness, calibration, judge."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from llmcore.alignment.data_eval.dedup import s_curve
from llmcore.core.plotting import PALETTE

STAGES = (("raw corpus", "docstrings + planted\njunk, copies, PII, leaks"),
          ("normalise", "NFKC, control chars,\nwhitespace"),
          ("quality rules", "Gopher / C4 heuristics:\nfirst rule that fires"),
          ("PII masking", "e-mail, phone, IP, key\n-> <EMAIL> ..."),
          ("exact dedup", "sha256 of the\nnormalised text"),
          ("near dedup", "shingles -> MinHash\n-> LSH bands -> verify"),
          ("decontaminate", "13-gram overlap with\nheld-out eval sets"))


def plot_pipeline(ax, counts: Sequence[tuple[str, int]] | None = None):
    """The cleaning pipeline as boxes and arrows; ``counts`` (stage, documents left) from a run are written
    under the stages they belong to. Returns ``ax``."""
    left = dict(counts or [])
    n = len(STAGES)
    for k, (name, what) in enumerate(STAGES):
        x = k / n
        ax.add_patch(FancyBboxPatch((x + 0.008, 0.35), 1 / n - 0.03, 0.4, boxstyle="round,pad=0.01",
                                    fc=PALETTE[5] if k else PALETTE[4], ec="k", lw=0.8, alpha=0.8))
        ax.text(x + 0.5 / n - 0.007, 0.66, name, ha="center", va="center", fontsize=8, weight="bold")
        ax.text(x + 0.5 / n - 0.007, 0.48, what, ha="center", va="center", fontsize=6.2)
        key = {"raw corpus": "raw", "quality rules": "quality rules", "exact dedup": "exact dedup",
               "near dedup": "near dedup", "decontaminate": "decontaminated"}.get(name)
        if key in left:
            ax.text(x + 0.5 / n - 0.007, 0.25, f"{left[key]:,} docs", ha="center", fontsize=7.5, color=PALETTE[1])
        if k < n - 1:
            ax.add_patch(FancyArrowPatch((x + 1 / n - 0.022, 0.55), (x + 1 / n + 0.008, 0.55),
                                         arrowstyle="-|>", mutation_scale=9, lw=0.8))
    ax.set_xlim(0, 1), ax.set_ylim(0.15, 0.8), ax.axis("off")
    return ax


def plot_s_curve(ax, bands: int, rows: int, threshold: float, planted_j: np.ndarray | None = None):
    """$P(\\text{candidate}) = 1 - (1 - J^r)^b$ with the threshold and the planted pairs' exact Jaccard."""
    j = np.linspace(0, 1, 201)
    ax.plot(j, s_curve(j, bands, rows), color=PALETTE[0], label=f"b={bands}, r={rows}")
    for b, r, c in ((bands // 2, rows * 2, PALETTE[2]), (bands * 2 if bands * 2 * (rows // 2) else bands, max(rows // 2, 1),
                                                         PALETTE[3])):
        ax.plot(j, s_curve(j, b, r), color=c, lw=1, ls="--", label=f"b={b}, r={r}")
    ax.axvline(threshold, color="k", lw=0.8, ls=":", label=f"threshold {threshold}")
    if planted_j is not None and len(planted_j):
        ax.plot(planted_j, np.full(len(planted_j), -0.04), "|", color=PALETTE[1], ms=8, label="planted pairs (exact J)")
    ax.set_xlabel("Jaccard similarity J"), ax.set_ylabel("P(candidate pair)")
    ax.set_ylim(-0.08, 1.04), ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax


def plot_robustness(ax, robustness: dict[float, float]):
    rates = sorted(robustness)
    ax.plot([100 * r for r in rates], [robustness[r] for r in rates], "o-", color=PALETTE[0])
    ax.set_xlabel("typo rate (% of letters)"), ax.set_ylabel("accuracy"), ax.set_ylim(0, 1)
    return ax


def plot_taxonomy(ax, taxonomy: dict[str, dict[str, float]]):
    kinds = list(taxonomy)
    cols = ("broken (right -> wrong)", "hijacked (answers the planted package)", "fixed (wrong -> right)")
    w = 0.27
    for i, col in enumerate(cols):
        ax.bar(np.arange(len(kinds)) + (i - 1) * w, [taxonomy[k][col] for k in kinds], w, label=col,
               color=PALETTE[i + 1])
    ax.set_xticks(range(len(kinds)), kinds, fontsize=8), ax.set_ylabel("share of test questions")
    ax.legend(fontsize=7)
    return ax


def plot_reliability(ax, rel: tuple, label: str, color: str = PALETTE[0]):
    ece, conf, acc, count = rel
    ok = count > 0
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot(conf[ok], acc[ok], "o-", color=color, label=f"{label} (ECE {ece:.3f})")
    ax.set_xlabel("confidence"), ax.set_ylabel("accuracy"), ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_judge(ax, judge: dict[str, float]):
    rows = [("position flips on swap", "position flips on swap (raw)", "position flips on swap (swap-and-average)"),
            ("accuracy vs truth", "accuracy vs truth (raw)", "accuracy vs truth (swap-and-average)"),
            ("kappa vs truth", "kappa vs truth (raw)", "kappa vs truth (swap-and-average)"),
            ("prefers the verbose copy", "prefers the verbose copy (swap-averaged)",
             "prefers the verbose copy (swap-averaged, length-controlled)")]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [judge[a] for _, a, _ in rows], 0.4, color=PALETTE[1], label="before mitigation")
    ax.bar(x + 0.2, [judge[b] for _, _, b in rows], 0.4, color=PALETTE[2], label="swap-and-average (+ length control)")
    ax.set_xticks(x, [r[0] for r in rows], fontsize=8), ax.set_ylim(0, 1), ax.legend(fontsize=7)
    return ax


def plot_outcomes(ax, shares: dict[str, dict[str, float]]):
    """Stacked bars: per attack, the share of each outcome class (``llm_tests.OUTCOMES``), summing to 1."""
    kinds = list(shares)
    bottom = np.zeros(len(kinds))
    for i, cls in enumerate(next(iter(shares.values()))):
        v = np.array([shares[k][cls] for k in kinds])
        ax.bar(range(len(kinds)), v, 0.6, bottom=bottom, label=cls, color=PALETTE[i % len(PALETTE)])
        bottom += v
    ax.set_xticks(range(len(kinds)), kinds, fontsize=8), ax.set_ylabel("share of test prompts"), ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_perplexities(ax, scores: dict[str, np.ndarray], threshold: float):
    """Each document kind's token perplexities (log scale, one dot per document) and the filter's threshold."""
    rng = np.random.default_rng(0)  # horizontal jitter only
    for i, p in enumerate(scores.values()):
        ax.scatter(i + rng.uniform(-0.2, 0.2, len(p)), p, s=7, alpha=0.6, color=PALETTE[i % len(PALETTE)])
        ax.plot([i - 0.3, i + 0.3], [np.median(p)] * 2, color="k", lw=1.5)
    ax.axhline(threshold, color=PALETTE[1], ls="--", lw=1, label="threshold (keeps 95% of real docs)")
    ax.set_yscale("log"), ax.set_xticks(range(len(scores)), list(scores), fontsize=8)
    ax.set_ylabel("book LM token perplexity"), ax.legend(fontsize=7)
    return ax
