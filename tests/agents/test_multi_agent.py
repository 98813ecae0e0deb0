"""Multi-agent systems: the protocol schema, loop and timeout detection on the bus, the context window (against
the LLM interface's own chat rendering), the policies on hand-made conversations, a real MCP server over stdio
(tools, the failing API, timeouts), a faulty team that recovers, the approval gate with a scripted human, and a
small closed loop end to end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from llmcore.agents.llm import chat_ids
from llmcore.agents.multi_agent import closed_loop
from llmcore.agents.multi_agent.agents import (
    RESEARCH,
    Runtime,
    TeamSpec,
    book_policy,
    coordinator_policy,
    fit_context,
    fold_ledger,
    ledger_message,
    prompt_tokens,
    single_agent,
    team,
    window_mask,
)
from llmcore.agents.multi_agent.hitl import ApprovalGate, ScriptedHuman
from llmcore.agents.multi_agent.protocol import AgentMessage, Bus, LoopDetected, validate_message
from llmcore.agents.multi_agent.tools import RATES, ToolBox, ToolWorld, calculate, mcp_call, mcp_client
from llmcore.architecture.book_lm import book_tokenizer
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


def test_context_window_hand_case_and_the_llm_interfaces_rendering():
    roles = ["system", "user", "assistant", "tool", "assistant", "tool"]
    # head 10 + 20 + 2 = 32; newest pair 30 + 40 -> 102 <= 104; the next message (100) does not fit
    assert window_mask([10, 20, 30, 100, 30, 40], roles, 104) == [1, 1, 0, 0, 1, 1]
    # 210 fits the 100-token result too, but its call (30) does not: the orphan result is dropped
    assert window_mask([10, 20, 30, 100, 30, 40], roles, 210) == [1, 1, 0, 0, 1, 1]
    assert window_mask([10, 20, 30, 100, 30, 40], roles, 232) == [1] * 6
    with pytest.raises(LLMCoreError, match="system and task messages take 32 tokens"):
        window_mask([10, 20], roles[:2], 31)
    msgs = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Q1: what?"}]
    for i in range(12):
        msgs += [{"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": "search", "arguments": json.dumps({"query": f"q{i}"})}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": "passage " * (5 + 3 * i)}]
    # our token count equals the LLM interface's own chat rendering with the book tokenizer
    assert prompt_tokens(msgs) == len(chat_ids(book_tokenizer(), msgs))
    kept = fit_context(msgs, 300)
    assert prompt_tokens(kept) <= 300 < prompt_tokens(msgs) and kept[:2] == msgs[:2] and kept[-1] == msgs[-1]
    assert kept[2]["role"] == "assistant" and prompt_tokens(kept[:2] + msgs[len(msgs) - len(kept):]) > 300


def _call(i, name, **args):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}


def test_book_policy_retries_then_takes_the_fallback_route():
    tools = [{"type": "function", "function": {"name": n}} for n in ("rate_live", "rate_table", "calculator")]
    head = [{"role": "system", "content": "s"}, {"role": "user", "content": "Convert 100 EUR to USD, then add a 10% fee."}]
    assert '"rate_live"' in book_policy(head, tools)
    err = head + [_call(1, "rate_live", base="EUR", quote="USD"),
                  {"role": "tool", "tool_call_id": "call_1", "content": "ERROR: 503 service unavailable"}]
    assert '"rate_live"' in book_policy(err, tools)  # a transient error: one retry
    twice = err + [_call(2, "rate_live", base="EUR", quote="USD"),
                   {"role": "tool", "tool_call_id": "call_2", "content": "ERROR: 503 service unavailable"}]
    assert '"rate_table"' in book_policy(twice, tools)  # a second failure: the fallback route
    timeout = head + [_call(1, "rate_live", base="EUR", quote="USD"),
                      {"role": "tool", "tool_call_id": "call_1", "content": "ERROR: timeout: rate_live did not answer"}]
    assert '"rate_table"' in book_policy(timeout, tools)  # a timeout: straight to the fallback
    rate = timeout + [_call(2, "rate_table", base="EUR", quote="USD"), {"role": "tool", "tool_call_id": "call_2",
                                                                       "content": "1.08"}]
    assert '"expression": "100 * 1.08 * (1 + 10 / 100)"' in book_policy(rate, tools)
    assert calculate("100 * 1.08 * (1 + 10 / 100)") == 118.8
    with pytest.raises(ValueError, match="not arithmetic"):
        calculate("__import__('os')")


def test_coordinator_reassigns_a_failed_part_to_a_worker_not_yet_tried():
    task = f"{RESEARCH}\nQ1: Which method: a?\nQ2: Which method: b?"
    system = {"role": "system", "content": "Workers: researcher_1=search; researcher_2=search; operator=rate_live"}
    msgs = [system, {"role": "user", "content": task}]
    tools = [{"type": "function", "function": {"name": n}} for n in ("delegate", "wait")]
    hist = msgs + [_call(1, "delegate", to="researcher_1", ref="Q1"), {"role": "tool", "tool_call_id": "call_1",
                                                                       "content": "sent"},
                   _call(2, "delegate", to="researcher_2", ref="Q2"), {"role": "tool", "tool_call_id": "call_2",
                                                                       "content": "sent"},
                   _call(3, "wait"), {"role": "tool", "tool_call_id": "call_3",
                                      "content": "Q1 from researcher_1: ERROR: loop: search called 3 times"}]
    led = fold_ledger(task, hist)
    assert led["Q1"] == {"kind": "research", "tried": ["researcher_1"], "status": "failed", "answer": ""}
    assert led["Q2"]["status"] == "waiting"
    shown = [system, ledger_message(led)]
    assert shown[1]["content"].splitlines()[1] == "Q1 | research | failed | tried=researcher_1 | "
    assert json.loads(coordinator_policy(shown, tools).split("Action: ")[1]) == \
        {"name": "delegate", "arguments": {"to": "researcher_2", "ref": "Q1"}}  # the operator cannot search
    done = hist + [_call(4, "wait"), {"role": "tool", "tool_call_id": "call_4", "content": "Q2 from researcher_2: Answer: Q2: b()"},
                   _call(5, "delegate", to="researcher_2", ref="Q1"), {"role": "tool", "tool_call_id": "call_5", "content": "sent"},
                   _call(6, "wait"), {"role": "tool", "tool_call_id": "call_6", "content": "Q1 from researcher_2: Answer: Q1: a()"}]
    assert coordinator_policy([system, ledger_message(fold_ledger(task, done))], tools) == "Answer: Q1: a(); Q2: b()"


def test_mcp_server_over_stdio_then_a_faulty_team_and_the_approval_gate(tmp_path: Path):
    """One server process (it takes seconds to start): tools, failures, timeouts; then a team with a looping and a
    hanging worker; then three emails through the approval gate."""
    cfg = closed_loop.MultiAgentConfig(research_ks=(3,), research_per_k=1, n_convert=2, n_email=3)
    tasks = closed_loop.make_tasks(cfg, seed=1)
    research, jpy = tasks[0], tasks[2]
    assert research.k == 3 and "JPY" in jpy.text
    q = "Return a copy of the string with its first character capitalized"

    async def go():
        out = {}
        async with mcp_client(latency_s=0.01) as session:
            out["listed"] = (await session.list_tools()).tools
            box = await ToolBox(session, timeout_s=0.3).load()
            out["found"] = await mcp_call(session, "search", {"query": q})
            out["rates"] = [await box.call("rate_live", {"base": "EUR", "quote": "USD"}),
                            await box.call("rate_live", {"base": "EUR", "quote": "USD"}),
                            await box.call("rate_live", {"base": "USD", "quote": "JPY"}),
                            await box.call("rate_table", {"base": "USD", "quote": "JPY"})]
            out["calls"] = [c[0] for c in box.calls]
            await mcp_call(session, "reset", {})
            bus = Bus()
            human = ScriptedHuman({"bo@example.org": {"action": "reject"},
                                   "cy@example.org": {"action": "edit", "args": {"body": "edited"}}})
            rt = Runtime(bus, box, ApprovalGate(human, tmp_path), recv_timeout_s=0.6)
            spec = TeamSpec(faults={"researcher_2": "loop", "researcher_3": "hang"})
            out["research"] = await team(rt, research.text, "00aa0001", spec, False, 10, 30)
            out["jpy"] = await team(rt, jpy.text, "00aa0002", spec, True, 10, 30)
            out["trace"] = bus.trace("00aa0001")
            for i, to in enumerate(("ana@example.org", "bo@example.org", "cy@example.org")):
                await mcp_call(session, "reset", {})
                ans = await single_agent(rt, f"Email {to}: draft", f"00bb000{i}", 5)
                out[to] = (ans, await mcp_call(session, "outbox", {}))
            out["human"], out["gate"], out["bus"], out["box"] = human, rt.gate, bus, box
        return out
    out = asyncio.run(go())
    world = ToolWorld(latency_s=0.0)
    assert sorted(t.name for t in out["listed"]) == sorted(world.tools())
    schema = next(s for s in out["box"].schemas if s["function"]["name"] == "rate_live")["function"]["parameters"]
    assert schema["required"] == ["base", "quote"] and schema["properties"]["base"]["type"] == "string"
    assert out["found"] == world.passage(q) and "str.capitalize()" in out["found"]  # MCP == in process
    first, second, hung, after = out["rates"]
    assert first[0] is False and "503" in first[1] and second == (True, str(RATES[("EUR", "USD")]))
    assert hung[0] is False and hung[1].startswith("ERROR: timeout") and after == (True, "150.0")  # session still works
    assert out["calls"] == ["rate_live"] * 3 + ["rate_table"]
    # the faulty team: the looping worker is stopped and reported, the hanging one times out; both answers correct
    assert closed_loop.solved(research, out["research"], []) and closed_loop.solved(jpy, out["jpy"], [])
    errors = [m for m in out["trace"] if m.intent == "error" and m.recipient == "supervisor"]
    assert errors and "loop" in errors[0].content["answer"]
    assert out["bus"].stats["supervisor"].timeouts >= 1
    # the approval gate: a rejected call is not executed, an edited one runs with the edit
    assert out["ana@example.org"] == ("Answer: sent to ana@example.org", ["to ana@example.org: draft"])
    assert out["bo@example.org"] == ("Answer: not sent (rejected by the human)", [])
    assert out["cy@example.org"] == ("Answer: sent to cy@example.org", ["to cy@example.org: edited"])
    assert [r["decision"] for r in out["gate"].reviews] == ["approve", "reject", "edit"]
    assert all(r["paused"] and r["resumed"] == "done" for r in out["gate"].reviews)
    assert out["human"].seen[1]["call"] == {"name": "send_email", "args": {"to": "bo@example.org", "body": "draft"}}


def test_config_validation_and_full_mode_tasks():
    with pytest.raises(LLMCoreError, match="faults must name"):
        closed_loop.MultiAgentConfig(faults=(("researcher_9", "loop"),)).validate()
    with pytest.raises(LLMCoreError, match="research_ks"):
        closed_loop.MultiAgentConfig(research_ks=(0,)).validate()
    full = closed_loop.MultiAgentConfig.for_mode(False)
    full.validate()
    tasks = closed_loop.make_tasks(full, seed=0)
    assert len(tasks) == 6 * 5 + 9 + 9 and max(t.k for t in tasks) == 6
    with pytest.raises(LLMCoreError, match="distinct entries"):
        closed_loop.make_tasks(closed_loop.MultiAgentConfig(research_ks=(100,)), seed=0)
