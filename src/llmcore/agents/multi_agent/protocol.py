"""The message protocol of the multi-agent chapter: a pydantic schema, an in-process bus with loop and timeout
detection, and per-agent cost and latency accounting.

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
import re
import time
from collections import defaultdict
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
    """Cost and latency of one agent.

    Bus side: messages sent/received, content words sent, seconds spent waiting in ``recv`` and how many of
    those waits timed out. Model side (filled by the agent loop): LLM calls, prompt and completion tokens
    (counted with the book's tokenizer), tool calls and seconds spent inside tools.
    """

    sent: int = 0
    received: int = 0
    tokens: int = 0  # whitespace words of the contents this agent sent (what travelled on the bus)
    wait_s: float = 0.0
    timeouts: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_prompt_tokens: int = 0  # the longest context one call of this agent saw
    tool_calls: int = 0
    tool_s: float = 0.0


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

    def note(self, raw: dict[str, Any]) -> AgentMessage:
        """Validate and log a message that is not queued (a tool call/result or an approval, for the trace)."""
        msg = validate_message(raw)
        self.log.append(msg)
        self.stats[msg.sender].tokens += _tokens(msg.content)
        return msg


def describe(msg: AgentMessage, width: int = 80) -> str:
    """One line for a trace listing: ``sender -> recipient intent  <the gist of the content>``."""
    c = msg.content
    if isinstance(c, dict):
        gist = " ".join(str(c[k]) for k in ("ref", "answer", "task", "tool", "args", "action", "call") if k in c)
    else:
        gist = c
    return f"{msg.sender:>13} -> {msg.recipient:<13} {msg.intent:<16} {' '.join(str(gist).split())[:width]}"
