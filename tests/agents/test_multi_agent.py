"""Multi-agent plumbing (WIP row): the protocol schema, loop and timeout detection on the bus, accounting, and a
real MCP round trip over stdio against the book's tool server."""

from __future__ import annotations

import asyncio

import pytest

from llmcore.agents.multi_agent import (
    AgentMessage,
    Bus,
    LoopDetected,
    book_tools,
    mcp_call,
    mcp_client,
    supervise,
    validate_message,
    worker,
)
from llmcore.core.errors import LLMCoreError

GOOD = {"sender": "planner", "recipient": "worker_1", "intent": "task", "content": "count the words",
        "trace_id": "0123abcd", "hop": 1}


def test_schema_accepts_a_message_and_rejects_bad_ones():
    msg = validate_message(GOOD)
    assert isinstance(msg, AgentMessage) and msg.hop == 1
    for bad, where in ((dict(GOOD, intent="gossip"), "intent"), (dict(GOOD, sender="Bad Name"), "sender"),
                       (dict(GOOD, trace_id="xyz"), "trace_id"), (dict(GOOD, hop=99), "hop"),
                       (dict(GOOD, extra=1), "extra")):
        with pytest.raises(LLMCoreError, match=f"invalid agent message: {where}"):
            validate_message(bad)


def test_bus_detects_a_loop_and_counts_tokens():
    async def go():
        bus = Bus()
        for name in ("planner", "worker_1"):
            bus.register(name)
        bus.send(GOOD)
        bus.send(dict(GOOD, sender="worker_1", recipient="planner", intent="handoff"))
        with pytest.raises(LoopDetected, match="planner -> worker_1 task repeated"):
            bus.send(GOOD)  # the same task handed back again: a loop
        got = await bus.recv("worker_1", timeout=0.1)
        return bus, got
    bus, got = asyncio.run(go())
    assert got == validate_message(GOOD) and len(bus.loops) == 1 and len(bus.log) == 2
    assert bus.stats["planner"].sent == 1 and bus.stats["planner"].tokens == 3  # "count the words"
    with pytest.raises(LLMCoreError, match="unknown recipient"):
        bus.send(dict(GOOD, recipient="nobody"))


def test_receive_times_out_instead_of_deadlocking():
    async def go():
        bus = Bus()
        bus.register("planner")
        return bus, await bus.recv("planner", timeout=0.05)
    bus, got = asyncio.run(go())
    assert got is None and bus.stats["planner"].timeouts == 1 and bus.stats["planner"].wait_s >= 0.04


def test_mcp_round_trip_over_stdio():
    async def go():
        async with mcp_client() as session:
            listed = await session.list_tools()
            names = sorted(t.name for t in listed.tools)
            schema = next(t for t in listed.tools if t.name == "add").input_schema
            return names, schema, await mcp_call(session, "add", {"a": 2, "b": 40}), \
                await mcp_call(session, "word_count", {"text": "a b c"}), await mcp_call(session, "lookup", {"key": "MCP"})
    names, schema, added, words, entry = asyncio.run(go())
    tools = book_tools()
    assert names == sorted(tools)
    assert schema["required"] == ["a", "b"] and schema["properties"]["a"]["type"] == "integer"
    assert added == 42 == tools["add"](2, 40)
    assert words == 3 and entry == tools["lookup"]("mcp")


def test_supervisor_reassigns_the_work_of_a_hanging_worker():
    async def go():
        bus = Bus()
        for n in ("boss", "w_ok", "w_hang"):
            bus.register(n)
        tools = book_tools()
        calls = [{"id": i, "tool": "add", "args": {"a": i, "b": 10}} for i in range(4)]
        workers = [asyncio.create_task(worker(bus, "w_hang", tools, 0.05, hang=True)),
                   asyncio.create_task(worker(bus, "w_ok", tools, 0.05))]
        out = await supervise(bus, "boss", ["w_hang", "w_ok"], calls, "feedbeef", timeout=0.2)
        await asyncio.wait_for(asyncio.gather(*workers), 2)  # both stop: no deadlock
        return bus, out
    bus, out = asyncio.run(go())
    assert out == {i: i + 10 for i in range(4)}
    hung = [m.content["id"] for m in bus.log if m.recipient == "w_hang" and m.content != "stop"]
    assert hung == [0, 2]  # round-robin gave it calls 0 and 2; both were redone by w_ok
    assert bus.stats["boss"].timeouts == 1 and bus.stats["w_ok"].sent == 4
