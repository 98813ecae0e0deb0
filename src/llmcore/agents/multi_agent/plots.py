"""Figures of the multi-agent chapter: the three topologies, a message trace, the single-vs-team comparison."""

from __future__ import annotations

from collections.abc import Sequence

from llmcore.agents.multi_agent.protocol import AgentMessage

INTENT_COLOURS = {"task": "#1f77b4", "handoff": "#9467bd", "result": "#2ca02c", "error": "#d62728",
                  "tool_call": "#7f7f7f", "tool_result": "#bcbd22", "approval_request": "#ff7f0e",
                  "approval": "#8c564b"}


def _node(ax, xy, text, colour="#eef3fb"):
    ax.annotate(text, xy, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.3", "fc": colour, "ec": "#333"})


def _arrow(ax, a, b, colour="#444", style="-|>", rad=0.0, label=""):
    ax.annotate("", b, a, arrowprops={"arrowstyle": style, "color": colour, "lw": 1.2, "shrinkA": 14, "shrinkB": 14,
                                      "connectionstyle": f"arc3,rad={rad}"})
    if label:
        mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        ax.text(mid[0], mid[1], label, fontsize=7, color=colour, ha="center", va="bottom")


def plot_topologies(axes) -> None:
    """Three panels: one agent with every tool; a supervisor star; a mesh (planner -> workers -> writer, with a
    worker-to-worker handoff). Dashed: tool calls over MCP; orange: the human's approval."""
    ax = axes[0]
    _node(ax, (0.5, 0.75), "agent\n(all tools,\none context)")
    _node(ax, (0.5, 0.2), "MCP server\n(stdio)", "#f4f4f4")
    _node(ax, (0.12, 0.2), "human", "#fde9d9")
    _arrow(ax, (0.5, 0.75), (0.5, 0.2), style="<|-|>", label="tools/call")
    _arrow(ax, (0.5, 0.75), (0.12, 0.2), "#ff7f0e", "<|-|>", label="approve?")
    ax.set_title("single agent")
    ax = axes[1]
    _node(ax, (0.5, 0.85), "supervisor")
    ws = [(0.12, 0.45), (0.37, 0.45), (0.63, 0.45), (0.88, 0.45)]
    for (x, y), n in zip(ws, ("researcher_1", "researcher_2", "researcher_3", "operator")):
        _node(ax, (x, y), n.replace("_", "\n"))
        _arrow(ax, (0.5, 0.85), (x, y), "#1f77b4", rad=0.1)
        _arrow(ax, (x, y), (0.5, 0.85), "#2ca02c", rad=0.1)
    _node(ax, (0.5, 0.08), "MCP server", "#f4f4f4")
    for x, y in ws:
        _arrow(ax, (x, y), (0.5, 0.08), "#7f7f7f", "-")
    _node(ax, (0.95, 0.08), "human", "#fde9d9")
    _arrow(ax, (0.88, 0.45), (0.95, 0.08), "#ff7f0e", "<|-|>")
    ax.set_title("supervisor / workers (star)")
    ax = axes[2]
    _node(ax, (0.12, 0.85), "planner")
    _node(ax, (0.88, 0.85), "writer")
    for (x, y), n in zip(ws, ("researcher_1", "researcher_2", "researcher_3", "operator")):
        _node(ax, (x, y - 0.05), n.replace("_", "\n"))
        if n != "operator":
            _arrow(ax, (0.12, 0.85), (x, y - 0.05), "#1f77b4")
        _arrow(ax, (x, y - 0.05), (0.88, 0.85), "#2ca02c")
    _arrow(ax, (0.12, 0.4), (0.88, 0.4), "#9467bd", rad=0.35)
    ax.text(0.5, 0.2, "handoff", fontsize=7, color="#9467bd", ha="center")
    _arrow(ax, (0.12, 0.85), (0.88, 0.85), "#9467bd", label="plan")
    _node(ax, (0.5, 0.08), "MCP server", "#f4f4f4")
    ax.set_title("decentralised mesh (peer to peer)")
    for ax in axes:
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.0)
        ax.axis("off")


def plot_trace(ax, trace: Sequence[AgentMessage], title: str) -> None:
    """A sequence diagram: one lane per agent, one arrow per message in order, coloured by intent."""
    lanes: list[str] = []
    for m in trace:
        for n in (m.sender, m.recipient):
            if n not in lanes:
                lanes.append(n)
    x = {n: i for i, n in enumerate(lanes)}
    for i in range(len(lanes)):
        ax.plot([i, i], [0, len(trace) + 1], color="#ccc", lw=1, zorder=0)
    for k, m in enumerate(trace, 1):
        a, b = x[m.sender], x[m.recipient]
        colour = INTENT_COLOURS.get(m.intent, "#333")
        if a == b:  # a note to itself (a timeout)
            ax.plot([a], [k], "X", color=colour, ms=8)
        else:
            ax.annotate("", (b, k), (a, k), arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.1})
        label = "stop" if m.content == "stop" else m.intent
        if isinstance(m.content, str) and m.content.startswith("TIMEOUT"):
            label = m.content
        if isinstance(m.content, dict) and "ref" in m.content:
            label += f" {m.content['ref']}"
        if m.intent == "error" and isinstance(m.content, dict):
            label += ": " + str(m.content.get("answer", ""))[7:30]
        ax.text((a + b) / 2 + (0.35 if a == b else 0), k - 0.15, label, fontsize=6, ha="center", color=colour)
    ax.set_xticks(range(len(lanes)), [n.replace("_", "\n") for n in lanes], fontsize=7)
    ax.set_ylim(len(trace) + 1, 0)
    ax.set_ylabel("message #")
    ax.set_title(title)
    handles = [ax.plot([], [], color=c, label=i)[0] for i, c in INTENT_COLOURS.items()
               if any(m.intent == i for m in trace)]
    ax.legend(handles=handles, fontsize=6, loc="lower left")


def plot_comparison(axes, summaries: dict[str, dict[str, float]], by_k: dict[str, dict[int, float]]) -> None:
    """Bars of success, steps, tokens and wall time per system; success against sub-questions per task."""
    names = list(summaries)
    colours = ["#7f7f7f", "#1f77b4", "#2ca02c"]
    for ax, (key, label) in zip(axes[:4], (("success", "task success"), ("steps", "LLM calls / task"),
                                          ("tokens", "tokens / task"), ("wall_s", "wall time, all tasks (s)"))):
        vals = [summaries[n][key] for n in names]
        ax.bar(names, vals, color=colours)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.2f}" if key == "success" else f"{v:.0f}" if v > 10 else f"{v:.1f}",
                    ha="center", va="bottom", fontsize=7)
        ax.set_title(label)
    ax = axes[4]
    for n, c in zip(names, colours):
        ks = sorted(by_k[n])
        ax.plot(ks, [by_k[n][k] for k in ks], "o-", color=c, label=n)
    ax.set_xticks(sorted(next(iter(by_k.values()))))
    ax.set_xlabel("sub-questions per research task")
    ax.set_ylabel("success")
    ax.set_ylim(-0.05, 1.1)
    ax.legend(fontsize=7)
    ax.set_title("research: success vs k")
