"""Multi-agent systems (WIP for the ``multi_agent`` row): a validated message protocol, a message bus with loop
and timeout detection and per-agent accounting, and the book's tools served and consumed over MCP (stdio).

Protocol. Every message is an :class:`AgentMessage` ``(sender, recipient, intent, content, trace_id, hop)``
validated by pydantic: unknown fields, bad names, an unknown intent or a hop count past the limit are rejected
with one :class:`~llmcore.core.errors.LLMCoreError` line. ``trace_id`` ties together every message caused by one
user task; ``hop`` counts how many agents the task has passed through.

Loops and deadlocks. A message whose ``(sender, recipient, intent, content)`` already travelled in the same trace
is a *loop* (two agents handing the same thing back and forth); the bus refuses it and records it. A receive
that waits longer than its timeout returns ``None`` instead of blocking forever, so a supervisor can reassign
the work of a worker that hangs — no deadlock under timeouts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmcore.core.errors import LLMCoreError

Intent = Literal["task", "result", "handoff", "tool_call", "tool_result", "approval_request", "approval", "error"]
NAME = r"^[a-z][a-z0-9_]{0,31}$"
MAX_HOPS = 16


class AgentMessage(BaseModel):
    """One message on the bus (the protocol schema)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sender: str = Field(pattern=NAME)
    recipient: str = Field(pattern=NAME)
    intent: Intent
    content: str | dict[str, Any]
    trace_id: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    hop: int = Field(default=0, ge=0, le=MAX_HOPS)


def validate_message(raw: dict[str, Any] | AgentMessage) -> AgentMessage:
    """``raw`` as a validated :class:`AgentMessage`, or one :class:`LLMCoreError` line naming the first problem."""
    if isinstance(raw, AgentMessage):
        return raw
    try:
        return AgentMessage.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "message"
        raise LLMCoreError(f"invalid agent message: {where}: {err['msg']} ({len(exc.errors())} problem(s))") from None


class LoopDetected(LLMCoreError):
    """The same message travelled twice in one trace: two agents are handing work back and forth."""


@dataclass
class AgentStats:
    """Cost and latency of one agent: messages, content tokens (whitespace words) and seconds waited for."""

    sent: int = 0
    received: int = 0
    tokens: int = 0
    wait_s: float = 0.0
    timeouts: int = 0


def _tokens(content: str | dict) -> int:
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    return len(re.findall(r"\S+", text))


@dataclass
class Bus:
    """An in-process message bus: one asyncio queue per registered agent, a log, loop detection, accounting."""

    queues: dict[str, asyncio.Queue] = field(default_factory=dict)
    log: list[AgentMessage] = field(default_factory=list)
    loops: list[AgentMessage] = field(default_factory=list)
    stats: dict[str, AgentStats] = field(default_factory=lambda: defaultdict(AgentStats))
    _seen: set[tuple] = field(default_factory=set)

    def register(self, name: str) -> None:
        if not re.match(NAME, name):
            raise LLMCoreError(f"bad agent name {name!r} (lower-case letters, digits, _)")
        self.queues.setdefault(name, asyncio.Queue())

    def send(self, raw: dict[str, Any] | AgentMessage) -> AgentMessage:
        """Validate and deliver; raises :class:`LoopDetected` for a message already seen in its trace."""
        msg = validate_message(raw)
        if msg.recipient not in self.queues:
            raise LLMCoreError(f"unknown recipient {msg.recipient!r}; agents: {sorted(self.queues)}")
        key = (msg.trace_id, msg.sender, msg.recipient, msg.intent, json.dumps(msg.content, sort_keys=True))
        if key in self._seen:
            self.loops.append(msg)
            raise LoopDetected(f"loop in trace {msg.trace_id}: {msg.sender} -> {msg.recipient} "
                               f"{msg.intent} repeated")
        self._seen.add(key)
        self.log.append(msg)
        st = self.stats[msg.sender]
        st.sent += 1
        st.tokens += _tokens(msg.content)
        self.queues[msg.recipient].put_nowait(msg)
        return msg

    async def recv(self, name: str, timeout: float) -> AgentMessage | None:
        """The next message for ``name``, or ``None`` after ``timeout`` seconds (counted as a timeout)."""
        t = time.perf_counter()
        try:
            msg = await asyncio.wait_for(self.queues[name].get(), timeout)
        except asyncio.TimeoutError:
            self.stats[name].timeouts += 1
            msg = None
        else:
            self.stats[name].received += 1
        self.stats[name].wait_s += time.perf_counter() - t
        return msg

    def trace(self, trace_id: str) -> list[AgentMessage]:
        return [m for m in self.log if m.trace_id == trace_id]


# ---- supervisor / workers ---------------------------------------------------------------------------------

async def worker(bus: Bus, name: str, tools: dict[str, Any], timeout: float, hang: bool = False) -> None:
    """Serve ``{"tool", "args"}`` tasks until a ``"stop"`` task; ``hang``: receive work and never answer."""
    while True:
        msg = await bus.recv(name, timeout)
        if msg is None:
            continue
        if msg.content == "stop":
            return
        if hang:
            continue
        call = msg.content if isinstance(msg.content, dict) else {}
        try:
            out: Any = tools[call["tool"]](**call["args"])
            intent = "result"
        except Exception as exc:  # a failing tool is reported back, not fatal to the worker
            out, intent = f"{type(exc).__name__}: {exc}", "error"
        bus.send({"sender": name, "recipient": msg.sender, "intent": intent, "trace_id": msg.trace_id,
                  "hop": msg.hop + 1, "content": {"id": call.get("id"), "out": out}})


async def supervise(bus: Bus, name: str, workers: list[str], calls: list[dict], trace_id: str,
                    timeout: float) -> dict[int, Any]:
    """Hand ``calls`` (``{"id", "tool", "args"}``) to ``workers`` round-robin; a call whose worker does not answer
    within ``timeout`` is handed to the next worker (each worker tried at most once per call)."""
    results: dict[int, Any] = {}
    tried: dict[int, list[str]] = {c["id"]: [] for c in calls}
    todo = list(calls)
    k = 0
    while todo:
        for c in todo:
            w = next((workers[(k + j) % len(workers)] for j in range(len(workers))
                      if workers[(k + j) % len(workers)] not in tried[c["id"]]), None)
            if w is None:
                raise LLMCoreError(f"call {c['id']} failed on every worker {workers}")
            tried[c["id"]].append(w)
            k += 1
            bus.send({"sender": name, "recipient": w, "intent": "task", "trace_id": trace_id, "hop": 1,
                      "content": {**c, "attempt": len(tried[c["id"]])}})
        waiting = {c["id"] for c in todo}
        while waiting:
            msg = await bus.recv(name, timeout)
            if msg is None:  # someone hangs: stop waiting, re-send what is missing
                break
            results[msg.content["id"]] = msg.content["out"]
            waiting.discard(msg.content["id"])
        todo = [c for c in todo if c["id"] in waiting]
    for w in workers:
        bus.send({"sender": name, "recipient": w, "intent": "task", "trace_id": trace_id, "content": "stop"})
    return results


# ---- the book's tools over MCP ---------------------------------------------------------------------------

def book_tools() -> dict[str, Any]:
    """The tools the MCP server offers (plain functions, so a test can call them directly too)."""
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def word_count(text: str) -> int:
        """Number of whitespace-separated words in a text."""
        return len(text.split())

    def lookup(key: str) -> str:
        """Look a term up in the book's glossary of Part 5."""
        return GLOSSARY.get(key.lower(), f"no entry for {key!r}")
    return {"add": add, "word_count": word_count, "lookup": lookup}


GLOSSARY = {
    "superstep": "one bulk-synchronous round of a graph run",
    "reducer": "the function that merges concurrent writes to one state key",
    "mcp": "the Model Context Protocol: tools, resources and prompts over JSON-RPC",
}


def serve_mcp() -> None:
    """Run the book's tools as an MCP server on stdin/stdout (``python -m llmcore.agents.multi_agent``)."""
    from mcp.server.mcpserver import MCPServer  # optional dependency (the agents extra)

    server = MCPServer("llmcore-book-tools")
    for fn in book_tools().values():
        server.tool()(fn)
    server.run("stdio")


@asynccontextmanager
async def mcp_client(python: str = sys.executable):
    """Start the book's MCP server as a child process and yield an initialised ``ClientSession`` over stdio."""
    from mcp.client.session import ClientSession  # optional dependency (the agents extra)
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=python, args=["-m", "llmcore.agents.multi_agent"],
                                   env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def mcp_call(session: Any, name: str, arguments: dict[str, Any]) -> Any:
    """Call a tool on an MCP session and return its structured result (or its text)."""
    res = await session.call_tool(name, arguments)
    if res.is_error:
        raise LLMCoreError(f"MCP tool {name!r} failed: {res.content[0].text if res.content else '?'}")
    if res.structured_content is not None and "result" in res.structured_content:
        return res.structured_content["result"]
    return res.content[0].text


if __name__ == "__main__":
    serve_mcp()
