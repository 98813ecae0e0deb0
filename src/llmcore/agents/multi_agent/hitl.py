r"""Human-in-the-loop: an approval gate on tool calls, built on the state-graph chapter's ``interrupt``.

A gated tool call (``send_email``) is not sent to the MCP server. The gate starts a one-node graph whose node
is the state-graph chapter's :func:`~llmcore.agents.graph.workflows.approve`: it calls
:func:`~llmcore.agents.graph.interrupt` with the proposed call, so the run *pauses* and its state is committed to
a SQLite checkpoint. The payload goes to the human (``approval_request`` on the bus); the human's answer
(``approval``) resumes the run from the checkpoint with ``Command(resume=answer)``, through a *fresh* compiled
graph — the agent process could have restarted in between. The answer is one of

* ``{"action": "approve"}`` — the call runs as proposed;
* ``{"action": "reject"}`` — the call is **not** run; the agent observes ``ERROR: rejected by the human``;
* ``{"action": "edit", "args": {...}}`` — the call runs with the human's arguments merged in.

:class:`ScriptedHuman` answers from a table (tests and the closed loop); the chapter's ipywidgets panel is the
interactive human.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmcore.agents.graph import END, START, Command, SQLiteCheckpointer, StateGraph
from llmcore.agents.graph.workflows import ApprovalState, approve
from llmcore.agents.multi_agent.protocol import Bus
from llmcore.core.errors import LLMCoreError

Human = Callable[[dict], dict]  #: the interrupt's payload -> ``{"action": ..., "args": {...}}``
ACTIONS = ("approve", "reject", "edit")


def gate_graph() -> StateGraph:
    """``START -> approve -> END``: the state-graph chapter's approval node alone."""
    g = StateGraph(ApprovalState)
    g.add_node("approve", approve)
    g.add_edge(START, "approve")
    g.add_edge("approve", END)
    return g


@dataclass
class ScriptedHuman:
    """A human who answers by the recipient of the proposed email (``answers[to]``; default: approve) and
    remembers every payload shown to them."""

    answers: dict[str, dict] = field(default_factory=dict)
    seen: list[dict] = field(default_factory=list)

    def __call__(self, payload: dict) -> dict:
        self.seen.append(payload)
        answer = self.answers.get(payload["call"]["args"].get("to"), {"action": "approve"})
        if answer.get("action") not in ACTIONS:
            raise LLMCoreError(f"human's action must be one of {ACTIONS}, got {answer.get('action')!r}")
        return answer


@dataclass
class ApprovalGate:
    """Pause a tool call for a human via ``interrupt`` + a SQLite checkpoint; resume with the answer."""

    human: Human
    folder: Path
    reviews: list[dict[str, Any]] = field(default_factory=list)  # per review: paused?, payload, answer, decision
    _ids: itertools.count = field(default_factory=itertools.count)

    async def review(self, bus: Bus, agent: str, tool: str, args: dict, trace_id: str) -> tuple[str, dict]:
        """``(decision, arguments to run with)``; ``decision`` is ``approve``, ``reject`` or ``edit``."""
        thread = f"{trace_id}-{next(self._ids)}"
        db = Path(self.folder) / "approvals.sqlite"
        call = {"name": tool, "args": args}
        paused = await gate_graph().compile(checkpointer=SQLiteCheckpointer(db)).ainvoke(
            {"request": f"{agent} wants to call {tool}", "call": call}, thread)
        payload = paused.interrupts.get("approve")
        bus.note({"sender": agent, "recipient": "human", "intent": "approval_request", "trace_id": trace_id,
                  "content": payload or {}})
        answer = self.human(payload)
        bus.note({"sender": "human", "recipient": agent, "intent": "approval", "trace_id": trace_id,
                  "content": answer})
        done = await gate_graph().compile(checkpointer=SQLiteCheckpointer(db)).ainvoke(Command(resume=answer), thread)
        decision, final = done.state["decision"], done.state["call"]["args"]
        self.reviews.append({"paused": paused.status == "interrupted", "payload": payload, "answer": answer,
                             "decision": decision, "args": final, "resumed": done.status})
        return decision, final
