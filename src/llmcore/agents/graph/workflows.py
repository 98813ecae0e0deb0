"""The chapter's workloads, as graphs of deterministic Python nodes (so two engines can be compared exactly).

* :func:`research_graph` — plan, a *conditional fan-out* to the search tools the question needs (async, run
  concurrently), draft, then a *conditional loop* critique -> revise -> critique until the score reaches a
  target or the revision budget is spent;
* :func:`fanout_graph` / :func:`chain_graph` — ``n`` slow tools in parallel (a fan-in barrier) or in a chain;
* :func:`approval_graph` — a tool call that waits for a human (``interrupt``): approve, reject or edit;
* :func:`loop_graph` — a cycle with no exit, stopped by the step limit.

The nodes stand in for LLM calls and tools: they are pure functions of the state (plus ``asyncio.sleep`` for
latency), which is what makes "the same state trace in LangGraph and in ours" a checkable claim.
"""

from __future__ import annotations

import asyncio
import operator
import os
import signal
from collections.abc import Callable
from typing import Annotated, TypedDict

from llmcore.agents.graph.engine import END, START, StateGraph, interrupt

#: what each search tool "knows": (keyword, fact) pairs; a tool returns the facts whose keyword is in the question
FACTS: dict[str, list[tuple[str, str]]] = {
    "docs": [("checkpoint", "docs: LangGraph saves a checkpoint after every superstep"),
             ("reducer", "docs: a reducer merges concurrent writes to one key"),
             ("interrupt", "docs: interrupt() pauses a node until a human resumes it")],
    "code": [("checkpoint", "code: SQLite rows keyed by (thread, step)"),
             ("parallel", "code: asyncio.gather runs one superstep's nodes together"),
             ("reducer", "code: operator.add concatenates lists")],
    "papers": [("parallel", "papers: Pregel runs vertices in bulk-synchronous supersteps"),
               ("state", "papers: Harel statecharts add hierarchy and concurrency to state machines")],
    "web": [("state", "web: a state machine is a graph of states and guarded transitions"),
            ("interrupt", "web: human-in-the-loop approval gates risky tool calls")],
}
SOURCES = tuple(FACTS)


class ResearchState(TypedDict):
    """The research workflow's typed state; ``Annotated[..., reducer]`` keys merge concurrent writes."""

    question: str
    sources: list[str]                              # last value: chosen by `plan`
    evidence: Annotated[list[str], operator.add]    # appended by every search tool of the fan-out
    draft: str
    revisions: Annotated[int, operator.add]         # each `revise` adds 1
    score: int
    log: Annotated[list[str], operator.add]         # every node appends its name


def plan(state: ResearchState) -> dict:
    """Pick the tools whose facts mention a word of the question (all four if none does)."""
    words = set(state["question"].lower().replace("?", "").split())
    picked = [s for s in SOURCES if any(k in words for k, _ in FACTS[s])]
    return {"sources": picked or list(SOURCES), "log": ["plan"]}


def route_sources(state: ResearchState) -> list[str]:
    """Conditional fan-out: one search node per planned source."""
    return [f"search_{s}" for s in state["sources"]]


def make_search(source: str, delay: float = 0.0, kill: bool = False) -> Callable:
    """An async search tool over ``FACTS[source]`` that takes ``delay`` seconds (``kill``: SIGKILL its process)."""
    async def search(state: ResearchState) -> dict:
        if kill:  # the injected crash: after the other tools of the step are done, the process is killed --
            await asyncio.sleep(2 * delay + 0.05)  # no exception, no cleanup, no goodbye
            os.kill(os.getpid(), signal.SIGKILL)
        await asyncio.sleep(delay)
        words = set(state["question"].lower().replace("?", "").split())
        found = [fact for k, fact in FACTS[source] if k in words] or [f"{source}: nothing on this question"]
        return {"evidence": found, "log": [f"search_{source}"]}
    search.__name__ = f"search_{source}"
    return search


def draft(state: ResearchState) -> dict:
    """Write a draft from the evidence (sorted: the text does not depend on which tool answered first)."""
    return {"draft": " | ".join(sorted(state["evidence"])), "log": ["draft"]}


def critique(state: ResearchState) -> dict:
    """Score the draft: 20 per distinct fact, 15 per revision, at most 100."""
    facts = len({e for e in state["evidence"] if "nothing" not in e})
    return {"score": min(100, 20 * facts + 15 * state["revisions"]), "log": ["critique"]}


def make_route_critique(target: int, max_revisions: int) -> Callable:
    """The loop's guard: revise while the score is below ``target`` and the budget lasts."""
    def route_critique(state: ResearchState) -> str:
        return "revise" if state["score"] < target and state["revisions"] < max_revisions else "finish"
    return route_critique


def revise(state: ResearchState) -> dict:
    return {"draft": state["draft"] + " [revised]", "revisions": 1, "log": ["revise"]}


def finish(state: ResearchState) -> dict:
    return {"draft": f"ANSWER({state['score']}): {state['draft']}", "log": ["finish"]}


def research_graph(delay: float = 0.0, target: int = 90, max_revisions: int = 3, kill_in: str | None = None,
                   fail: Callable[[str], None] | None = None) -> StateGraph:
    """The research workflow (diagram in the chapter). ``kill_in``: the search source whose tool kills the
    process; ``fail(node)``: called at the start of every node (a test raises from it to inject a crash)."""
    def wrap(name: str, fn: Callable) -> Callable:
        if fail is None:
            return fn
        if asyncio.iscoroutinefunction(fn):
            async def afn(state: dict) -> dict:
                fail(name)
                return await fn(state)
            return afn

        def sfn(state: dict) -> dict:
            fail(name)
            return fn(state)
        return sfn

    g = StateGraph(ResearchState)
    g.add_node("plan", wrap("plan", plan))
    for s in SOURCES:
        g.add_node(f"search_{s}", wrap(f"search_{s}", make_search(s, delay, kill=(s == kill_in))))
        g.add_edge(f"search_{s}", "draft")
    for name, fn in (("draft", draft), ("critique", critique), ("revise", revise), ("finish", finish)):
        g.add_node(name, wrap(name, fn))
    g.add_edge(START, "plan")
    g.add_conditional_edges("plan", route_sources, [f"search_{s}" for s in SOURCES])
    g.add_edge("draft", "critique")
    g.add_conditional_edges("critique", make_route_critique(target, max_revisions),
                            {"revise": "revise", "finish": "finish"})
    g.add_edge("revise", "critique")
    g.add_edge("finish", END)
    return g


# ---- fan-out of slow tools ---------------------------------------------------------------------------------

class ToolState(TypedDict):
    n: int
    results: Annotated[list[int], operator.add]
    total: int


def make_tool(i: int, delay: float) -> Callable:
    async def tool(state: ToolState) -> dict:
        await asyncio.sleep(delay)  # a slow API call: the event loop runs the other tools meanwhile
        return {"results": [i * i]}
    return tool


def collect(state: ToolState) -> dict:
    return {"total": sum(state["results"])}


def fanout_graph(n: int, delay: float) -> StateGraph:
    """``dispatch`` -> ``tool_0 .. tool_{n-1}`` in one superstep -> a join barrier -> ``collect``."""
    g = StateGraph(ToolState)
    g.add_node("dispatch", lambda state: None)
    tools = [f"tool_{i:03d}" for i in range(n)]
    for i, t in enumerate(tools):
        g.add_node(t, make_tool(i, delay))
        g.add_edge("dispatch", t)
    g.add_node("collect", collect)
    g.add_edge(START, "dispatch")
    g.add_edge(tools, "collect")
    g.add_edge("collect", END)
    return g


def chain_graph(n: int, delay: float) -> StateGraph:
    """The same ``n`` tools one after another: what the fan-out saves."""
    g = StateGraph(ToolState)
    prev = START
    for i in range(n):
        g.add_node(f"tool_{i:03d}", make_tool(i, delay))
        g.add_edge(prev, f"tool_{i:03d}")
        prev = f"tool_{i:03d}"
    g.add_node("collect", collect)
    g.add_edge(prev, "collect")
    g.add_edge("collect", END)
    return g


# ---- human in the loop -----------------------------------------------------------------------------------

class ApprovalState(TypedDict):
    request: str
    call: dict                                   # the proposed tool call {"name", "args"}
    decision: str
    outbox: Annotated[list[str], operator.add]   # what the tool really did (empty if it never ran)
    log: Annotated[list[str], operator.add]


def propose(state: ApprovalState) -> dict:
    to, _, body = state["request"].partition(":")
    return {"call": {"name": "send_email", "args": {"to": to.strip(), "body": body.strip()}}, "log": ["propose"]}


def approve(state: ApprovalState) -> dict:
    """Ask the human; the answer is ``{"action": "approve" | "reject" | "edit", "args": {...}}``."""
    answer = interrupt({"question": "send this email?", "call": state["call"]})
    action = answer.get("action") if isinstance(answer, dict) else None
    if action == "edit":
        return {"decision": "edit", "call": {**state["call"], "args": {**state["call"]["args"], **answer["args"]}},
                "log": ["approve"]}
    return {"decision": action if action in ("approve", "reject") else "reject", "log": ["approve"]}


def route_decision(state: ApprovalState) -> str:
    return "execute" if state["decision"] in ("approve", "edit") else END


def execute(state: ApprovalState) -> dict:
    args = state["call"]["args"]
    return {"outbox": [f"to={args['to']} body={args['body']}"], "log": ["execute"]}


def approval_graph() -> StateGraph:
    """``propose`` -> ``approve`` (waits for a human) -> ``execute`` or END."""
    g = StateGraph(ApprovalState)
    g.add_node("propose", propose)
    g.add_node("approve", approve)
    g.add_node("execute", execute)
    g.add_edge(START, "propose")
    g.add_edge("propose", "approve")
    g.add_conditional_edges("approve", route_decision, {"execute": "execute", END: END})
    g.add_edge("execute", END)
    return g


# ---- a cycle without an exit ---------------------------------------------------------------------------

class LoopState(TypedDict):
    ticks: Annotated[int, operator.add]


def loop_graph(counter: list[int]) -> StateGraph:
    """``tick -> tick -> ...`` forever; ``counter[0]`` counts the executions."""
    def tick(state: LoopState) -> dict:
        counter[0] += 1
        return {"ticks": 1}
    g = StateGraph(LoopState)
    g.add_node("tick", tick)
    g.add_edge(START, "tick")
    g.add_edge("tick", "tick")
    return g
