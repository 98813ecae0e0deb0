"""Figures of the Memory & RAG chapter: the pipeline diagram, chunking, pipeline comparison, HNSW, memory."""

from __future__ import annotations

import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from llmcore.core.plotting import PALETTE

#: (x, y, label, colour index) of the diagram's boxes
_BOXES = {
    "q": (0.01, 0.55, "question", 7),
    "qu": (0.185, 0.55, "query understanding\nrewrite / decompose /\nHyDE document", 4),
    "bm25": (0.38, 0.78, "BM25\n(sparse, exact terms)", 0),
    "dense": (0.38, 0.32, "MiniLM embedding\n+ faiss (flat / HNSW)", 2),
    "rrf": (0.58, 0.55, "reciprocal rank\nfusion (RRF)", 3),
    "rr": (0.74, 0.55, "rerank top-20\n(sentence max-sim)", 1),
    "llm": (0.90, 0.55, "top-k chunks\n-> LLM context", 7),
    "mem": (0.58, 0.08, "memory: window | summary |\nvector store of past turns", 5),
}
_EDGES = (("q", "qu"), ("qu", "bm25"), ("qu", "dense"), ("bm25", "rrf"), ("dense", "rrf"), ("rrf", "rr"),
          ("rr", "llm"), ("mem", "llm"))


def plot_pipeline(ax):
    """The retrieval pipeline and the memory beside it, as boxes and arrows. Returns ``ax``."""
    w, h = 0.14, 0.2
    for x, y, label, c in _BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y - h / 2), w, h, boxstyle="round,pad=0.01", fc=PALETTE[c], ec="k",
                                    lw=0.8, alpha=0.35 if c != 7 else 0.12))
        ax.text(x + w / 2, y, label, ha="center", va="center", fontsize=7.5)
    for a, b in _EDGES:
        xa, ya = _BOXES[a][:2]
        xb, yb = _BOXES[b][:2]
        start = (xa + w / 2, ya + h / 2) if a == "mem" else (xa + w + 0.005, ya)
        end = (xb + w / 2, yb - h / 2) if a == "mem" else (xb - 0.005, yb)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, lw=0.8))
    ax.text(0.38 + w / 2, 0.55, "offline: chunk the corpus,\nindex chunks once (cached)", ha="center",
            va="center", fontsize=7, style="italic", color="0.3")
    ax.set_xlim(0, 1.05), ax.set_ylim(-0.05, 0.92), ax.axis("off")
    return ax


def plot_chunking(ax, chunking: dict, k: int = 5):
    """recall@k of BM25 and dense for each chunker (grouped bars), answerable fraction as a line."""
    names = list(chunking)
    x = np.arange(len(names))
    for j, r in enumerate(("BM25", "dense")):
        vals = [chunking[n][r][f"recall@{k}"] for n in names]
        ax.bar(x + (j - 0.5) * 0.36, vals, 0.36, color=PALETTE[0 if r == "BM25" else 2], label=r)
    ax.plot(x, [chunking[n]["answerable"] for n in names], "k_", ms=28, mew=2, label="answerable (a chunk holds it)")
    ax.set_xticks(x, [f"{n}\n({chunking[n]['chunks']} chunks)" for n in names])
    ax.set_ylabel(f"recall@{k}"), ax.set_ylim(0, 1.22), ax.legend(fontsize=8, loc="upper center", ncol=3)
    return ax


def plot_pipelines(ax, table: dict, metric: str = "mrr"):
    """One metric per pipeline, lexical vs paraphrased questions (horizontal grouped bars)."""
    names = list(table)[::-1]
    y = np.arange(len(names))
    for j, kind in enumerate(("lexical", "paraphrase")):
        ax.barh(y + (j - 0.5) * 0.38, [table[n][kind][metric] for n in names], 0.38,
                color=PALETTE[0 if kind == "lexical" else 1], label=f"{kind} questions")
    ax.set_yticks(y, names), ax.set_xlabel("MRR@10" if metric == "mrr" else metric), ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_hnsw(ax, recall: dict):
    """HNSW recall@10 against the exact top-10 as the search beam widens."""
    ef = list(recall)
    ax.plot(ef, [recall[e] for e in ef], "o-", color=PALETTE[2])
    ax.set_xscale("log", base=2), ax.set_xlabel("efSearch"), ax.set_ylabel("recall@10 vs exact")
    ax.set_ylim(0, 1.05), ax.axhline(1, color="0.6", lw=0.8, ls="--")
    return ax


def plot_memory(ax, memory: dict, distances: tuple, window: int):
    """Fraction of questions whose fact is in the memory's context, vs how many turns ago it was said."""
    for j, (name, by_d) in enumerate(memory.items()):
        ax.plot(distances, [by_d[d] for d in distances], "o-", color=PALETTE[j], label=name)
    ax.axvline(window + 0.5, color="0.5", ls=":", lw=1)
    ax.text(window + 0.7, 0.5, f"window = {window} turns", fontsize=8, color="0.4")
    ax.set_xscale("log", base=2), ax.set_xlabel("turns between the fact and the question")
    ax.set_ylabel("fact in context"), ax.set_ylim(-0.03, 1.05), ax.legend(fontsize=8)
    return ax
