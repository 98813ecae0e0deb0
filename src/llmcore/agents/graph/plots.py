"""Figures of the chapter: a state graph's diagram (drawn from the graph object itself) and a run's timeline."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from llmcore.agents.graph.engine import END, START, Span, StateGraph


def _layers(g: StateGraph) -> dict[str, int]:
    """Breadth-first depth from START over every kind of edge (an edge back to a visited node is a cycle)."""
    succ: dict[str, list[str]] = {}
    for s, ts in g.edges.items():
        succ.setdefault(s, []).extend(ts)
    for srcs, t in g.joins:
        for s in srcs:
            succ.setdefault(s, []).append(t)
    for s, brs in g.branches.items():
        for br in brs:
            succ.setdefault(s, []).extend(br.path_map.values() if br.path_map else [])
    depth, frontier = {START: 0}, [START]
    while frontier:
        nxt = []
        for s in frontier:
            for t in succ.get(s, []):
                if t not in depth:
                    depth[t] = depth[s] + 1
                    nxt.append(t)
        frontier = nxt
    if END in depth:  # END goes below everything
        depth[END] = max(depth.values()) + 1
    return depth


def plot_graph(ax: plt.Axes, g: StateGraph, title: str = "") -> dict[str, tuple[float, float]]:
    """Draw ``g`` top-down: boxes = nodes, solid = edges, dashed blue = conditional edges (labelled with the
    router's key), green = a join barrier's inputs, curved = edges that close a cycle. Returns the positions."""
    depth = _layers(g)
    rows: dict[int, list[str]] = {}
    for n, d in sorted(depth.items(), key=lambda kv: (kv[1], kv[0])):
        rows.setdefault(d, []).append(n)
    pos = {}
    for d, names in rows.items():
        for i, n in enumerate(names):
            pos[n] = ((i - (len(names) - 1) / 2) * 1.6, -d)

    def arrow(a: str, b: str, style: str, color: str, label: str = "") -> None:
        if a not in pos or b not in pos:
            return
        back = depth.get(b, 0) <= depth.get(a, 0)
        skip = depth.get(b, 0) - depth.get(a, 0) > 1  # jumps over a layer: bend it around the nodes between
        rad = 0.5 if back else -0.35 if skip else 0.0
        ax.annotate("", xy=pos[b], xytext=pos[a],
                    arrowprops=dict(arrowstyle="-|>", color=color, ls=style, lw=1.2, shrinkA=14, shrinkB=14,
                                    connectionstyle=f"arc3,rad={rad}"))
        if label:
            (xa, ya), (xb, yb) = pos[a], pos[b]
            off = 0.45 if back else 0.0
            ax.text((xa + xb) / 2 + off, (ya + yb) / 2, label, fontsize=7, color=color, ha="center",
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none"))

    for s, ts in g.edges.items():
        for t in ts:
            arrow(s, t, "-", "0.35")
    for srcs, t in g.joins:
        for s in srcs:
            arrow(s, t, "-", "tab:green")
    for s, brs in g.branches.items():
        for br in brs:
            for key, t in (br.path_map or {}).items():
                arrow(s, t, "--", "tab:blue", "" if key == t else str(key))
    for n, (x, y) in pos.items():
        special = n in (START, END)
        ax.text(x, y, "START" if n == START else "END" if n == END else n, ha="center", va="center",
                fontsize=7 if not special else 7, color="white" if special else "black",
                bbox=dict(boxstyle="circle,pad=0.3" if special else "round,pad=0.35",
                          fc="0.25" if special else "#fdf3d0", ec="0.3"))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.3, max(xs) + 1.3)
    ax.set_ylim(min(p[1] for p in pos.values()) - 0.6, 0.6)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return pos


def plot_timeline(ax: plt.Axes, spans: Sequence[Span], title: str = "") -> None:
    """One bar per node execution (x = seconds since the run began), coloured by superstep."""
    order = sorted(spans, key=lambda s: (s.start, s.node))
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(order):
        ax.barh(i, max(s.end - s.start, 1e-4), left=s.start, color=cmap(s.step % 10), height=0.8)
    ax.set_yticks(range(len(order)), [s.node for s in order], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run began")
    if title:
        ax.set_title(title, fontsize=10)
