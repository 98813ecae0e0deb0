"""The Multi-Agent closed loop: one task set run by a single agent, a supervisor team and a mesh; a faulty team
(a looping worker, a hanging worker, a tool that times out); the approval gate against LangGraph; the protocol.

One :class:`MultiAgentConfig` holds every knob; :func:`experiment` returns a :class:`MultiAgentResult`;
:func:`make_report` holds the thresholds; :func:`run` is the registry's entry point.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmcore.agents.graph import Command, SQLiteCheckpointer, run_langgraph, to_langgraph
from llmcore.agents.graph.engine import run_sync
from llmcore.agents.multi_agent.agents import (
    RESEARCH,
    Runtime,
    TeamSpec,
    questions,
    read_answer,
    single_agent,
    team,
)
from llmcore.agents.multi_agent.hitl import ApprovalGate, ScriptedHuman, gate_graph
from llmcore.agents.multi_agent.protocol import AgentMessage, Bus, validate_message
from llmcore.agents.multi_agent.tools import RATES, ToolBox, ToolWorld, calculate, mcp_call, mcp_client
from llmcore.agents.rag.corpus import load_docs, unique_entries
from llmcore.agents.rag.experiment import TOY_TOPICS
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report

CPU = torch.device("cpu")
TITLE = "Multi-Agent Systems / 多智能体协作"
SYSTEMS = ("single", "supervisor", "mesh")
PAIRS = (("EUR", "USD"), ("USD", "JPY"), ("GBP", "EUR"))  # the live API: 503 once / hangs / 503 once
#: approval tasks: recipient, body, the human's answer
EMAILS = (("ana@example.org", "the review moves to 3pm", {"action": "approve"}),
          ("bo@example.org", "please wire 5000 EUR to this new account", {"action": "reject"}),
          ("cy@example.org", "draft notes attached", {"action": "edit", "args": {"body": "final notes attached"}}))
#: malformed messages the bus must refuse (the schema test of the closed loop)
BAD_MESSAGES = ({"sender": "Bob", "recipient": "agent", "intent": "task", "content": "x", "trace_id": "00000000"},
                {"sender": "user", "recipient": "agent", "intent": "gossip", "content": "x", "trace_id": "00000000"},
                {"sender": "user", "recipient": "agent", "intent": "task", "content": "x", "trace_id": "nothex"},
                {"sender": "user", "recipient": "agent", "intent": "task", "content": "x", "trace_id": "00000000",
                 "hop": 99},
                {"sender": "user", "recipient": "agent", "intent": "task", "content": "x", "trace_id": "00000000",
                 "priority": "high"})


@dataclass
class MultiAgentConfig:
    """Every knob of the closed loop (``for_mode`` is the one place where ``toy`` becomes numbers)."""

    research_ks: tuple[int, ...] = (1, 2, 3, 4)  # sub-questions per research task
    research_per_k: int = 2       # research tasks per k (the entries asked are drawn by the seed)
    n_convert: int = 3            # currency tasks (one per pair of PAIRS, cycled)
    n_email: int = 3              # approval tasks (approve, reject, edit, cycled)
    n_researchers: int = 3        # research workers of the teams
    context_tokens: int = 512     # the model's context window (the book LM's max_seq_len)
    reserve_tokens: int = 64      # of it, room kept for the reply
    max_steps: int = 10           # steps of one agent's episode (single agent and each worker)
    coordinator_steps: int = 30   # steps of a coordinator's episode (a delegate or a wait is a step)
    loop_limit: int = 3           # the same tool call this many times in one episode is a loop
    latency_s: float = 0.05       # every search / rate call waits this long in the MCP server (network stand-in)
    tool_timeout_s: float = 0.4   # the client gives up on a tool call after this long
    recv_timeout_s: float = 1.5   # a coordinator gives up waiting for a worker after this long
    faults: tuple[tuple[str, str], ...] = (("researcher_2", "loop"), ("researcher_3", "hang"))  # the faulty team
    fault_k: int = 3              # sub-questions of the faulty team's research task

    @classmethod
    def for_mode(cls, toy: bool) -> MultiAgentConfig:
        if toy:
            return cls()
        return cls(research_ks=(1, 2, 3, 4, 5, 6), research_per_k=5, n_convert=9, n_email=9, n_researchers=4)

    def validate(self) -> None:
        check_range("research_per_k", self.research_per_k, 1, 100)
        check_range("n_researchers", self.n_researchers, 2, 16)
        check_range("context_tokens", self.context_tokens, 128, 1_000_000)
        check_range("reserve_tokens", self.reserve_tokens, 0, self.context_tokens - 64)
        check_range("max_steps", self.max_steps, 1, 1000)
        check_range("loop_limit", self.loop_limit, 2, 100)
        check_range("tool_timeout_s", self.tool_timeout_s, self.latency_s * 2 + 0.05, 600)
        if not self.research_ks or min(self.research_ks) < 1:
            raise LLMCoreError(f"research_ks must be positive sub-question counts, got {self.research_ks}")
        names = {f"researcher_{i}" for i in range(1, self.n_researchers + 1)}
        bad = [n for n, f in self.faults if n not in names or f not in ("loop", "hang")]
        if bad or len(self.faults) >= self.n_researchers:
            raise LLMCoreError(f"faults must name fewer than all researchers (researcher_1..{self.n_researchers}) "
                               f"with 'loop' or 'hang'; got {self.faults}")


@dataclass(frozen=True)
class Task:
    """One task: its kind, the user's text, what counts as success (``expected``), the human's answer."""

    kind: str
    text: str
    expected: Any
    k: int = 1  # sub-questions (research)


def research_text(entries) -> str:
    qs = [f"Q{i}: Which method: {e.sentence.rstrip('. ')[:1].lower()}{e.sentence.rstrip('. ')[1:]}?"
          for i, e in enumerate(entries, 1)]
    return RESEARCH + "\n" + "\n".join(q.replace('"', "").replace("*", "") for q in qs)


def answerable(entries) -> list:
    """The entries one ``search`` with the question itself answers: the top passage names the entry and the reading
    step picks it (retrieval quality is the RAG chapter's subject; this one studies coordination)."""
    world = ToolWorld(latency_s=0.0)
    out = []
    for e in entries:
        q = questions(research_text([e]))["Q1"]
        if read_answer(q, world.passage(q)) == e.answer:
            out.append(e)
    return out


def make_tasks(cfg: MultiAgentConfig, seed: int) -> list[Task]:
    """The task set of one seed: research tasks over the RAG corpus (answerable entries drawn by the seed),
    currency tasks through the failing API (amounts and fees drawn by the seed), approval tasks."""
    rng = np.random.default_rng(seed)
    entries = answerable(unique_entries(load_docs(TOY_TOPICS)))
    if max(cfg.research_ks) > len(entries):
        raise LLMCoreError(f"a research task of {max(cfg.research_ks)} sub-questions needs as many distinct entries; "
                           f"the corpus has {len(entries)} answerable ones")
    tasks = []
    for k in cfg.research_ks:
        for _ in range(cfg.research_per_k):
            chosen = [entries[i] for i in rng.choice(len(entries), size=k, replace=False)]
            tasks.append(Task("research", research_text(chosen), tuple(e.answer for e in chosen), k))
    for i in range(cfg.n_convert):
        base, quote = PAIRS[i % len(PAIRS)]
        amount, fee = int(rng.integers(20, 500)), int(rng.choice([5, 10, 15, 20]))
        tasks.append(Task("convert", f"Convert {amount} {base} to {quote}, then add a {fee}% fee.",
                          calculate(f"{amount} * {RATES[(base, quote)]} * (1 + {fee} / 100)")))
    for i in range(cfg.n_email):
        to, body, answer = EMAILS[i % len(EMAILS)]
        to = to.replace("@", f"{i // len(EMAILS) or ''}@")
        final = answer.get("args", {}).get("body", body)
        tasks.append(Task("email", f"Email {to}: {body}", [] if answer["action"] == "reject" else [f"to {to}: {final}"]))
    return tasks


def human_for(cfg: MultiAgentConfig) -> ScriptedHuman:
    answers = {}
    for i in range(cfg.n_email):
        to, _, answer = EMAILS[i % len(EMAILS)]
        answers[to.replace("@", f"{i // len(EMAILS) or ''}@")] = answer
    return ScriptedHuman(answers)


def solved(task: Task, answer: str, outbox: list[str]) -> bool:
    """Did ``answer`` (and the real side effects, ``outbox``) solve ``task``?"""
    if task.kind == "research":
        got = dict(re.findall(r"(Q\d+): (.+?)(?=; Q\d+: |$)", answer.removeprefix("Answer: ")))
        return [got.get(f"Q{i}") for i in range(1, task.k + 1)] == list(task.expected)
    if task.kind == "convert":
        m = re.search(r"Answer: (-?[\d.]+)", answer)
        return bool(m) and abs(float(m.group(1)) - task.expected) <= 1e-6 * max(1.0, abs(task.expected))
    return outbox == task.expected and (("not sent" in answer) == (task.expected == []))


@dataclass
class MultiAgentResult:
    cfg: MultiAgentConfig
    seed: int
    tasks: list[Task]
    runs: dict[str, list[dict[str, Any]]]          # system -> per task: success, steps, tokens, wall, answer
    agents: dict[str, dict[str, dict[str, float]]]  # system -> agent -> accounting
    faulty: dict[str, Any]                         # the faulty team's run: per system, answers and trace
    approvals: list[dict[str, Any]]                # every approval review (paused, payload, answer, decision)
    gate_vs_langgraph: list[bool]                  # per human answer: our gate's final state == LangGraph's
    mcp: dict[str, Any]                            # tools listed over stdio, calls made, MCP vs in-process
    schema: dict[str, int]                         # malformed messages refused / sent, valid messages logged
    logs: dict[str, list[AgentMessage]] = field(default_factory=dict)


def _totals(bus: Bus) -> tuple[int, int]:
    return (sum(s.llm_calls for s in bus.stats.values()),
            sum(s.prompt_tokens + s.completion_tokens for s in bus.stats.values()))


async def _run_system(system: str, session, cfg: MultiAgentConfig, tasks: list[Task], folder: Path, seed: int,
                      spec: TeamSpec, bar) -> tuple[list[dict], Bus, ApprovalGate, ToolBox]:
    bus = Bus()
    box = await ToolBox(session, cfg.tool_timeout_s).load()
    gate = ApprovalGate(human_for(cfg), folder / system)
    (folder / system).mkdir(exist_ok=True)
    rt = Runtime(bus, box, gate, cfg.context_tokens, cfg.reserve_tokens, cfg.loop_limit, cfg.recv_timeout_s)
    rows = []
    for i, task in enumerate(tasks):
        await mcp_call(session, "reset", {})
        trace = f"{seed:04x}{SYSTEMS.index(system):02x}{i:04x}"
        calls0, tokens0 = _totals(bus)
        t = time.perf_counter()
        if system == "single":
            answer = await single_agent(rt, task.text, trace, cfg.max_steps)
        else:
            answer = await team(rt, task.text, trace, spec, system == "mesh", cfg.max_steps, cfg.coordinator_steps)
        wall = time.perf_counter() - t
        outbox = await mcp_call(session, "outbox", {})
        calls1, tokens1 = _totals(bus)
        rows.append({"kind": task.kind, "k": task.k, "success": solved(task, answer, outbox), "steps": calls1 - calls0,
                     "tokens": tokens1 - tokens0, "wall_s": wall, "answer": answer, "outbox": outbox,
                     "messages": len(bus.trace(trace))})
        bar.update()
    return rows, bus, gate, box


async def _faulty(session, cfg: MultiAgentConfig, tasks: list[Task], folder: Path, spec: TeamSpec,
                  seed: int) -> dict[str, Any]:
    """The faulty team: a research task of ``fault_k`` sub-questions and the currency task whose live API hangs."""
    research = next(t for t in tasks if t.kind == "research" and t.k == cfg.fault_k)
    hanging = next(t for t in tasks if t.kind == "convert" and "JPY" in t.text)
    out: dict[str, Any] = {}
    for system in ("supervisor", "mesh"):
        bus = Bus()
        box = await ToolBox(session, cfg.tool_timeout_s).load()
        rt = Runtime(bus, box, ApprovalGate(human_for(cfg), folder), cfg.context_tokens, cfg.reserve_tokens,
                     cfg.loop_limit, cfg.recv_timeout_s)
        runs = []
        for j, task in enumerate((research, hanging)):
            await mcp_call(session, "reset", {})
            trace = f"{seed:04x}f{SYSTEMS.index(system)}{j:04x}"
            t = time.perf_counter()
            answer = await team(rt, task.text, trace, spec, system == "mesh", cfg.max_steps, cfg.coordinator_steps)
            runs.append({"task": task, "answer": answer, "success": solved(task, answer, []),
                         "wall_s": time.perf_counter() - t, "trace": bus.trace(trace), "trace_id": trace,
                         "t0": t})
        out[system] = {"runs": runs, "loops": len(bus.loops),
                       "stats": {n: vars(s).copy() for n, s in bus.stats.items()},
                       "timeouts": bus.stats["supervisor" if system == "supervisor" else "writer"].timeouts,
                       "tool_timeouts": sum(1 for c in box.calls if not c[2] and c[0] == "rate_live"
                                            and c[3] >= cfg.tool_timeout_s * 0.9),
                       "fallback_used": any(c[0] == "rate_table" and c[2] for c in box.calls)}
    return out


async def _gate_vs_langgraph(folder: Path) -> list[bool]:
    """Our approval gate's graph and the same graph in LangGraph, paused and resumed with each human answer."""
    from langgraph.checkpoint.memory import InMemorySaver  # optional dependency (the agents extra)

    same = []
    inp = {"request": "operator wants to call send_email",
           "call": {"name": "send_email", "args": {"to": "ana@example.org", "body": "hi"}}}
    for k, (_, _, answer) in enumerate(EMAILS):
        db = folder / f"gate_{k}.sqlite"
        first = await gate_graph().compile(checkpointer=SQLiteCheckpointer(db)).ainvoke(inp, "t")
        ours = await gate_graph().compile(checkpointer=SQLiteCheckpointer(db)).ainvoke(Command(resume=answer), "t")
        log: list = []
        app = to_langgraph(gate_graph(), checkpointer=InMemorySaver(), routes=log)
        lg_first = await run_langgraph(app, inp, log, thread_id="t")
        theirs = await run_langgraph(app, Command(resume=answer), log, thread_id="t")
        payloads = [sorted(map(json.dumps, r.interrupts.values())) for r in (first, lg_first)]  # LangGraph keys by task id
        same.append(first.status == lg_first.status == "interrupted" and payloads[0] == payloads[1]
                    and ours.state == theirs.state)
    return same


async def _experiment(cfg: MultiAgentConfig, seed: int, folder: Path, bar) -> MultiAgentResult:
    tasks = make_tasks(cfg, seed)
    spec = TeamSpec(tuple(f"researcher_{i}" for i in range(1, cfg.n_researchers + 1)))
    faulty_spec = TeamSpec(spec.researchers, faults=dict(cfg.faults))
    runs, agents, approvals, logs = {}, {}, [], {}
    calls_made = 0
    async with mcp_client(cfg.latency_s) as session:
        listed = sorted(t.name for t in (await session.list_tools()).tools)
        world = ToolWorld(latency_s=0.0)
        probe = {"search": {"query": "Return a copy of the string with its first character capitalized"},
                 "calculator": {"expression": "(2 + 3) * 4 / 8"}, "rate_table": {"base": "EUR", "quote": "USD"}}
        same = []
        for name, args in probe.items():
            over = await mcp_call(session, name, args)
            direct = world.tools()[name](**args)
            direct = await direct if hasattr(direct, "__await__") else direct
            same.append(over == direct)
        bar.update()
        for system in SYSTEMS:
            rows, bus, gate, box = await _run_system(system, session, cfg, tasks, folder, seed, spec, bar)
            runs[system] = rows
            agents[system] = {n: vars(s).copy() for n, s in bus.stats.items() if n not in ("user", "mcp", "human")}
            approvals += gate.reviews
            calls_made += len(box.calls)
            logs[system] = list(bus.log)
            if not all(isinstance(m, AgentMessage) for m in bus.log):
                raise LLMCoreError("an unvalidated message reached the log")
        tool_calls_counted = sum(a["tool_calls"] for sys in agents.values() for a in sys.values())
        faulty = await _faulty(session, cfg, tasks, folder, faulty_spec, seed)
        bar.update()
    refused = 0
    for bad in BAD_MESSAGES:
        try:
            validate_message(bad)
        except LLMCoreError:
            refused += 1
    valid = sum(len(v) for v in logs.values())
    gate_same = await _gate_vs_langgraph(folder)
    bar.update()
    mcp = {"listed": listed, "expected": sorted(ToolWorld.tools(world)), "same_as_in_process": same,
           "calls_over_mcp": calls_made, "tool_calls_counted": tool_calls_counted}
    return MultiAgentResult(cfg, seed, tasks, runs, agents, faulty, approvals, gate_same, mcp,
                            {"refused": refused, "bad": len(BAD_MESSAGES), "valid_logged": valid}, logs)


def experiment(cfg: MultiAgentConfig | None = None, seed: int = 0, toy: bool = True,
               show_progress: bool = True) -> MultiAgentResult:
    """Run the whole closed loop (one progress bar: the MCP check, every task of every system, the faulty team,
    the gate against LangGraph)."""
    cfg = cfg or MultiAgentConfig.for_mode(toy)
    cfg.validate()
    n_tasks = len(cfg.research_ks) * cfg.research_per_k + cfg.n_convert + cfg.n_email
    bar = progress(total=3 * n_tasks + 3, desc="multi-agent", **({} if show_progress else {"disable": True}))
    with tempfile.TemporaryDirectory(prefix="llmcore_multi_") as tmp:
        res = run_sync(_experiment(cfg, seed, Path(tmp), bar))
    bar.close()
    return res


def summary(rows: list[dict[str, Any]], kind: str | None = None) -> dict[str, float]:
    """Success rate, mean steps (LLM calls), mean tokens and total wall seconds over ``rows`` (of one kind)."""
    rows = [r for r in rows if kind is None or r["kind"] == kind]
    return {"success": float(np.mean([r["success"] for r in rows])), "steps": float(np.mean([r["steps"] for r in rows])),
            "tokens": float(np.mean([r["tokens"] for r in rows])), "wall_s": float(sum(r["wall_s"] for r in rows))}


def make_report(res: MultiAgentResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and the acceptance criteria (every threshold of the chapter lives here)."""
    rep = Report("multi_agent", TITLE, toy, device, seed)
    s = {name: summary(rows) for name, rows in res.runs.items()}
    multi_k = [r for r in res.runs["single"] if r["kind"] == "research" and r["k"] >= 2]
    for name in SYSTEMS:
        for key, v in s[name].items():
            rep.metric(f"{name}: {key}", v)
        rep.metric(f"{name}: largest prompt (tokens)", max(a["max_prompt_tokens"] for a in res.agents[name].values()))
    wall = {n: sum(r["wall_s"] for r in res.runs[n] if r["kind"] == "research" and r["k"] >= 2) for n in SYSTEMS}
    rep.metric("research k>=2 wall: supervisor / single", wall["supervisor"] / wall["single"])
    rep.metric("research k>=2 wall: mesh / single", wall["mesh"] / wall["single"])
    m = res.mcp
    rep.check("MCP over stdio: the agent lists the server's tools and every call goes over the wire",
              float(m["listed"] == m["expected"] and m["calls_over_mcp"] == m["tool_calls_counted"] > 0), "==", 1)
    rep.check("MCP tool results equal the same tools called in process", float(all(m["same_as_in_process"])), "==", 1)
    sc = res.schema
    rep.check("the bus refuses every malformed message (schema) and logs only validated ones",
              float(sc["refused"] == sc["bad"] and sc["valid_logged"] > 0), "==", 1)
    rep.check("supervisor team: task success", s["supervisor"]["success"], ">=", 0.9)
    rep.check("mesh team: task success", s["mesh"]["success"], ">=", 0.9)
    rep.check("team beats single agent: success(supervisor) - success(single)",
              s["supervisor"]["success"] - s["single"]["success"], ">=", 0.15)
    rep.check("parallel workers: research wall time supervisor / single (k >= 2)",
              wall["supervisor"] / wall["single"], "<", 0.8)
    rep.metric("single agent: research k>=2 solved", float(np.mean([r["success"] for r in multi_k])))
    f = res.faulty
    for system in ("supervisor", "mesh"):
        runs = f[system]["runs"]
        rep.check(f"faulty {system}: looping + hanging worker, timing-out tool: both tasks solved",
                  float(all(r["success"] for r in runs)), "==", 1)
    sup = f["supervisor"]
    looped = any(m.intent == "error" and isinstance(m.content, dict) and "loop" in str(m.content.get("answer"))
                 for m in sup["runs"][0]["trace"])
    rep.check("... the loop was detected, the hang timed out, the live API timed out and the fallback answered",
              float(looped and sup["timeouts"] >= 1 and sup["tool_timeouts"] >= 1 and sup["fallback_used"]), "==", 1)
    rev = res.approvals
    emails = [(t, r) for t, r in zip(res.tasks, res.runs["single"]) if t.kind == "email"]
    rep.check("every gated call paused (interrupt + SQLite) and resumed with the human's answer",
              float(len(rev) == 3 * len(emails) and all(v["paused"] and v["resumed"] == "done" for v in rev)), "==", 1)
    ok = all(r["success"] for n in SYSTEMS for r in res.runs[n] if r["kind"] == "email")
    rep.check("HITL: a rejected call is not executed (outbox empty), an edited one runs with the edit", float(ok),
              "==", 1)
    rep.check("approval gate equals LangGraph's interrupt/resume (approve, reject, edit)",
              float(all(res.gate_vs_langgraph)), "==", 1)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The registry's entry point. ``seed`` draws the tasks (entries asked, amounts, fees); the agents' policies
    are deterministic rules. ``device`` is validated and recorded (no tensors are used)."""
    res = experiment(toy=toy, seed=seed, show_progress=True)
    rep = make_report(res, toy, str(device), seed)
    s = {n: summary(rows) for n, rows in res.runs.items()}
    rep.notes.append("success single/supervisor/mesh: " + " / ".join(f"{s[n]['success']:.2f}" for n in SYSTEMS))
    return rep
