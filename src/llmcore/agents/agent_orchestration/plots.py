"""Figures of the agent-orchestration chapter: the three patterns' control flow drawn from real episodes,
and the results (success, cost, the fine-tune's loss)."""

from __future__ import annotations

import json

from matplotlib.patches import FancyBboxPatch

from llmcore.agents.agent_orchestration.world import TOOL_SCHEMAS
from llmcore.agents.llm import parse_reply

COLOURS = {"model": "#9ecae1", "tool": "#a1d99b", "answer": "#fdae6b", "fail": "#fcbba1"}
TITLES = {"react": "ReAct", "plan_execute": "Plan-and-Execute", "self_ask": "Self-Ask", "direct": "direct answer"}


def _events(ep) -> list[tuple[str, str]]:
    """(kind, label) per step of an episode: the model's calls and the tools' answers, in order."""
    out = []
    for k, (msgs, raw) in enumerate(ep.pairs):
        if ep.pattern == "plan_execute" and msgs[0]["content"].endswith("plan: one step per line."):
            n = sum(line[:1].isdigit() for line in raw.splitlines())
            out.append(("model", f"planner\n{n}-step plan"))
            continue
        try:
            text, call = parse_reply(raw, TOOL_SCHEMAS)
        except ValueError:
            out.append(("fail", "malformed\nreply"))
            continue
        if call is None:
            out.append(("answer", "answer\n" + raw.strip().splitlines()[-1][-18:]))
            continue
        head = text.splitlines()[0][:22] if text else ("executor" if ep.pattern == "plan_execute" else "")
        arg = next(iter(call.arguments.values()))
        out.append(("model", f"{head}\n{call.name}({json.dumps(arg)[:16]})"))
        nxt = ep.pairs[k + 1][0] if k + 1 < len(ep.pairs) else None
        obs = ""
        if nxt is not None and nxt[-1]["role"] == "tool":
            obs = nxt[-1]["content"].replace("Intermediate answer: ", "")
        elif nxt is not None and "known:" in nxt[-1]["content"]:
            obs = nxt[-1]["content"].rsplit(": ", 1)[-1]
        elif ep.pattern == "plan_execute":
            obs = ep.answer
        out.append(("tool", f"{call.name}\n{obs[:22]}"))
    if ep.pattern == "plan_execute" and not ep.failure:
        out.append(("answer", f"answer = last result\n{ep.answer}"))
    return out


def plot_pattern_traces(ax, episodes: dict, question: str = ""):
    """Draw one real episode per pattern on ``ax``: a lane per pattern, a box per model call (blue), tool
    answer (green) and final answer (orange), arrows in execution order. Returns ``ax``."""
    lanes = list(episodes)
    width = max(len(_events(ep)) for ep in episodes.values())
    ax.set_xlim(-2.2, width * 1.25)
    ax.set_ylim(-len(lanes) * 1.25 + 0.2, 0.9)
    ax.axis("off")
    for r, p in enumerate(lanes):
        y = -r * 1.25
        ax.text(-2.1, y, TITLES.get(p, p), fontsize=9, fontweight="bold", va="center")
        ev = _events(episodes[p])
        for k, (kind, label) in enumerate(ev):
            x = k * 1.25
            ax.add_patch(FancyBboxPatch((x, y - 0.4), 1.05, 0.8, boxstyle="round,pad=0.02", fc=COLOURS[kind],
                                        ec="#555555", lw=0.6))
            ax.text(x + 0.525, y, label, fontsize=5.6, ha="center", va="center", family="monospace")
            if k + 1 < len(ev):
                ax.annotate("", xy=(x + 1.25, y), xytext=(x + 1.05, y), arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_title("One held-out task, three control flows (blue: model call, green: tool, orange: answer)"
                 + (f"\n{question!r}" if question else ""), fontsize=9)
    return ax


def plot_results(axes, res):
    """Three panels: success per pattern vs the direct answer (with the 0.9 / 0.3 thresholds); model calls
    and tokens per task; the fine-tune's loss per step."""
    rows = res.table()
    names = [TITLES.get(r["pattern"], r["pattern"]) for r in rows]
    succ = [r["success"] for r in rows]
    ax = axes[0]
    ax.bar(names, succ, color=["#3182bd"] * (len(rows) - 1) + ["#bdbdbd"])
    ax.axhline(0.9, color="g", ls="--", lw=1, label="agent target 0.9")
    ax.axhline(0.3, color="r", ls=":", lw=1, label="direct ceiling 0.3")
    for i, s in enumerate(succ):
        ax.text(i, s + 0.02, f"{s:.2f}", ha="center", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("held-out success")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7, loc="center right")
    ax = axes[1]
    calls = [r["model calls"] for r in rows]
    toks = [r["tokens"] for r in rows]
    ax.bar(names, toks, color="#9ecae1")
    for i, (c, t) in enumerate(zip(calls, toks)):
        ax.text(i, t, f"{c:.1f} calls", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("tokens per task (prompt + completion)")
    ax.tick_params(axis="x", labelsize=7)
    ax = axes[2]
    ax.plot(res.metrics["loss"], lw=1)
    ax.set_xlabel("fine-tune step")
    ax.set_ylabel("masked loss (assistant tokens)")
    ax.set_yscale("log")
    return axes
