r"""Agents behind the one LLM interface: a single ReAct agent, a supervisor with workers, a decentralised mesh.

**The model.** Every decision goes through :class:`~llmcore.agents.llm.ChatLLM` (OpenAI chat messages in, a
text-protocol tool call or an ``Answer:`` out, parsed and validated by the interface). The backend here is
:class:`PolicyLM`: a *scripted* policy (:func:`book_policy`, :func:`coordinator_policy`) that reads the visible
conversation and writes the reply a tool-using model would write — the decisions are rules, not learned. It
bills every call like a real model: prompt tokens are the book tokenizer's count of the exact chat rendering
(:func:`~llmcore.agents.llm.chat_ids`), and a conversation longer than ``context_tokens`` (the book LM's 512)
is an error, as it would be for :class:`~llmcore.agents.llm.LocalLM`.

**Context windows.** Before each call an agent keeps its system and task messages and as many of the most
recent messages as fit the window (:func:`fit_context`, a sliding window like most agent frameworks'). A single
agent that reads a ~110-token passage per sub-question runs out of window on a task of several sub-questions:
old results slide out, it searches them again, and its loop guard stops it. A worker sees one sub-question, a
supervisor sees one short line per worker answer: *context isolation* is the mechanical reason a team can
succeed where one agent with the same rules fails.

**Recovery.** A worker stops when it repeats the same tool call ``loop_limit`` times (loop detection) and
reports an error; a coordinator whose ``wait`` times out, or that gets an error back, hands the part to another
worker (never the same one twice: the bus rejects a repeated message as a loop). Tool errors and timeouts come
back as ``ERROR: ...`` observations; the policy retries a transient error once and takes the fallback route
(``rate_table``) after a timeout or a second failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from llmcore.agents.llm import (
    ChatLLM,
    Completion,
    Message,
    ToolCall,
    answer_validator,
    function_schema,
    message_text,
)
from llmcore.agents.multi_agent.hitl import ApprovalGate
from llmcore.agents.multi_agent.protocol import Bus, LoopDetected
from llmcore.agents.multi_agent.tools import ToolBox
from llmcore.agents.rag.corpus import Doc, find_entries
from llmcore.agents.rag.retrieval import tokenize
from llmcore.architecture.book_lm import book_tokenizer
from llmcore.core.errors import LLMCoreError

Policy = Callable[[Sequence[Message], Sequence[dict]], str]
ANSWER = answer_validator("Answer:")
RESEARCH = "Research: name the method each question describes."
DELEGATE = function_schema("delegate", "Send part `ref` of the task to worker `to`.",
                           to=("string", "worker name"), ref=("string", "part id, e.g. Q2"))
WAIT = function_schema("wait", "Wait for the next message from a worker.")
HANDOFF = function_schema("handoff", "Pass this whole task to a peer who has the tools for it.",
                          to=("string", "peer name"))
SKILL = {"research": "search", "convert": "rate_live", "email": "send_email"}  # the first tool a part needs


# ---- the model: a scripted policy billed like a real one ---------------------------------------------------
@lru_cache(maxsize=65536)
def _text_tokens(role: str, text: str) -> int:
    return 1 + len(book_tokenizer().encode(text))  # <|role|> + the text


def message_tokens(msg: Message) -> int:
    """Tokens ``msg`` adds to a book-LM prompt (its role token + its text, as :func:`chat_ids` renders it)."""
    return _text_tokens(msg["role"], message_text(msg))


def prompt_tokens(messages: Sequence[Message]) -> int:
    """``len(chat_ids(book_tokenizer(), messages))``: ``<bos>`` + every message + ``<|assistant|>``."""
    return 2 + sum(message_tokens(m) for m in messages)


def window_mask(sizes: Sequence[int], roles: Sequence[str], budget: int) -> list[int]:
    r"""Which messages a sliding context window keeps: 1 = kept, 0 = dropped.

    ``sizes[i]`` is message ``i``'s token count, ``roles[i]`` its role; messages 0 and 1 (system, task) are always
    kept; of the rest the longest *suffix* $i \ge j$ is kept such that

    $$ 2 + \text{sizes}_0 + \text{sizes}_1 + \sum_{i \ge j} \text{sizes}_i \le \text{budget} $$

    (2 = ``<bos>`` + ``<|assistant|>``), and then leading ``tool`` messages of the suffix are dropped too (a tool
    result whose call slid out is an orphan). The head alone over ``budget`` is one :class:`LLMCoreError` line.
    """
    head = 2 + sum(sizes[:2])
    if head > budget:
        raise LLMCoreError(f"the system and task messages take {head} tokens, over the context budget of {budget}")
    j, used = len(sizes), head
    while j > 2 and used + sizes[j - 1] <= budget:
        j -= 1
        used += sizes[j]
    while j < len(sizes) and roles[j] == "tool":
        j += 1
    return [1, 1][:len(sizes)] + [int(i >= j) for i in range(2, len(sizes))]


def fit_context(messages: list[Message], budget: int) -> list[Message]:
    """The messages a model with a ``budget``-token window is shown (:func:`window_mask` on book-tokenizer counts)."""
    mask = window_mask([message_tokens(m) for m in messages], [m["role"] for m in messages], budget)
    return [m for m, keep in zip(messages, mask) if keep]


class PolicyLM(ChatLLM):
    """A :class:`ChatLLM` whose replies come from a rule ``policy(messages, tools) -> text``.

    Why not :class:`~llmcore.agents.llm.ScriptedLM`: that one bills nothing; this one counts prompt and
    completion tokens with the book's tokenizer and enforces the model's context length, so the comparison of
    single and multi-agent costs measures what a real model of that size would be billed and allowed.
    """

    def __init__(self, policy: Policy, context_tokens: int = 512, **kw) -> None:
        super().__init__(max_retries=0, **kw)
        self.policy, self.context_tokens = policy, context_tokens

    def complete(self, conversations, tools, temperature, seed):
        out = []
        for conv in conversations:
            n = prompt_tokens(conv)
            if n > self.context_tokens:
                raise LLMCoreError(f"a conversation of {n} tokens does not fit the model's context of "
                                   f"{self.context_tokens}")
            text = self.policy(conv, tools or ())
            out.append(Completion(text, n, len(book_tokenizer().encode(text)) + 1))
        return out


def looping(policy: Policy) -> Policy:
    """A faulty model: once it has called a tool it repeats that same call forever (a worker stuck in a loop)."""
    def stuck(messages: Sequence[Message], tools: Sequence[dict]) -> str:
        for m in messages:
            if m["role"] == "assistant" and m.get("tool_calls"):
                return message_text({"role": "assistant", "content": None, "tool_calls": m["tool_calls"][:1]})
        return policy(messages, tools)
    return stuck


def action(name: str, **arguments: Any) -> str:
    return ToolCall(name, arguments).text()


# ---- reading a conversation ---------------------------------------------------------------------------
def history(messages: Sequence[Message]) -> list[tuple[str, dict, str | None]]:
    """``(tool, arguments, observation or None)`` for every visible tool call, in order."""
    calls: dict[str, tuple[str, dict]] = {}
    order: list[str] = []
    seen: dict[str, str] = {}
    for m in messages:
        for tc in m.get("tool_calls") or ():
            fn = tc["function"]
            args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
            calls[tc["id"]] = (fn["name"], args)
            order.append(tc["id"])
        if m["role"] == "tool":
            seen[m["tool_call_id"]] = m["content"]
    return [(*calls[i], seen.get(i)) for i in order]


def questions(task: str) -> dict[str, str]:
    """``{"Q1": question, ...}`` of a research task."""
    return dict(re.findall(r"^(Q\d+): (.+)$", task, re.M))


def peers(system: str, key: str) -> dict[str, list[str]]:
    """``{"name": [tools]}`` from a system line ``<key>: a=search; b=rate_live,calculator``."""
    m = re.search(rf"^{key}: (.+)$", system, re.M)
    if not m:
        return {}
    return {n.strip(): t.split(",") for n, t in (p.split("=") for p in m.group(1).split("; "))}


def read_answer(question: str, passage: str) -> str:
    """The signature of the entry in ``passage`` whose first sentence shares the most words with ``question``
    (the agent's reading step; ``unknown`` when the passage has no entry)."""
    entries = find_entries(Doc(0, "", passage))
    if not entries:
        return "unknown"
    q = set(tokenize(question))

    def overlap(e) -> float:
        s = set(tokenize(e.sentence))
        return len(q & s) / max(1, len(s))
    return max(entries, key=overlap).answer


def kind_of(task: str) -> str:
    if task.startswith("Research:"):
        return "research"
    if task.startswith("Convert"):
        return "convert"
    if task.startswith("Email"):
        return "email"
    raise LLMCoreError(f"unknown task kind: {task[:40]!r}")


# ---- the worker / single-agent policy -------------------------------------------------------------------
def book_policy(messages: Sequence[Message], tools: Sequence[dict]) -> str:
    """What a tool-using model would reply next, given the visible conversation (rules, deterministic).

    research: search each question not yet answered in view, read the passage, answer ``Q1: sig; Q2: sig``;
    convert: ``rate_live`` -> retry once on a transient error -> ``rate_table`` after a timeout or a second
    error -> ``calculator`` -> answer; email: ``send_email`` -> answer with what happened. A task that needs a
    tool this agent lacks is handed to a peer who has it.
    """
    task = next(m["content"] for m in messages if m["role"] == "user")
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    offered = {t["function"]["name"] for t in tools}
    kind = kind_of(task)
    if SKILL[kind] not in offered:
        able = [n for n, ts in peers(system, "Peers").items() if SKILL[kind] in ts]
        if "handoff" in offered and able:
            return f"Thought: I have no {SKILL[kind]} tool.\n" + action("handoff", to=able[0])
        return f"Answer: cannot do this task (no {SKILL[kind]} tool)"
    hist = history(messages)
    if kind == "research":
        qs = questions(task)
        got = {a["query"]: obs for name, a, obs in hist if name == "search" and obs and not obs.startswith("ERROR")}
        for q in qs.values():
            if q not in got:
                return action("search", query=q)
        return "Answer: " + "; ".join(f"{ref}: {read_answer(q, got[q])}" for ref, q in qs.items())
    if kind == "convert":
        m = re.match(r"Convert ([\d.]+) ([A-Z]{3}) to ([A-Z]{3}), then add a ([\d.]+)% fee", task)
        amount, base, quote, fee = m.group(1), m.group(2), m.group(3), m.group(4)
        calc = [obs for name, _, obs in hist if name == "calculator" and obs and not obs.startswith("ERROR")]
        if calc:
            return f"Answer: {calc[-1]} {quote}"
        rate = next((obs for name, _, obs in hist if name.startswith("rate_") and obs and not obs.startswith("ERROR")),
                    None)
        if rate is not None:
            return action("calculator", expression=f"{amount} * {rate} * (1 + {fee} / 100)")
        live = [obs for name, _, obs in hist if name == "rate_live"]
        if not live or (len(live) == 1 and "timeout" not in (live[0] or "")):
            return action("rate_live", base=base, quote=quote)  # first try, or one retry after a transient error
        return "Thought: the live API failed; take the fallback route.\n" + action("rate_table", base=base, quote=quote)
    m = re.match(r"Email (\S+): (.+)$", task, re.S)
    sent = [obs for name, _, obs in hist if name == "send_email" and obs]
    if sent:
        return "Answer: not sent (" + sent[-1][7:] + ")" if sent[-1].startswith("ERROR") else f"Answer: {sent[-1]}"
    return action("send_email", to=m.group(1), body=m.group(2))


# ---- the coordinator policy (supervisor, mesh planner, mesh writer) ----------------------------------------
def parts_of(task: str) -> dict[str, str]:
    """How a coordinator splits a task: one part per research question, else the whole task as ``T1``."""
    if kind_of(task) == "research":
        return {ref: f"{RESEARCH}\n{ref}: {q}" for ref, q in questions(task).items()}
    return {"T1": task}


LEDGER = "Ledger:"


def fold_ledger(task: str, messages: Sequence[Message]) -> dict[str, dict[str, Any]]:
    """A coordinator's ledger, folded from its whole transcript by the runtime (not by the model): the task split
    into parts (:func:`parts_of`), and per part its kind, the workers tried, the status (``open``, ``waiting``,
    ``failed``, ``done``) and the answer. ``Plan:`` lines in the task (``Q1@researcher_1``) count as delegations
    already made (the mesh's writer inherits the planner's plan); a ``TIMEOUT`` fails every part still waiting;
    a late duplicate answer is ignored."""
    parts = parts_of(task.split("\nPlan: ")[0])
    led = {r: {"kind": kind_of(p), "tried": [], "status": "open", "answer": ""} for r, p in parts.items()}
    plan = re.search(r"^Plan: (.+)$", task, re.M)
    for item in plan.group(1).split("; ") if plan else ():
        ref, w = item.split("@")
        led[ref]["tried"].append(w)
        led[ref]["status"] = "waiting"
    for name, args, obs in history(messages):
        if name == "delegate" and args.get("ref") in led:
            led[args["ref"]]["tried"].append(args["to"])
            led[args["ref"]]["status"] = "waiting" if obs and not obs.startswith("ERROR") else "failed"
        elif name == "wait" and obs:
            if obs.startswith("TIMEOUT"):
                for v in led.values():
                    if v["status"] == "waiting":
                        v["status"] = "failed"
                continue
            ref, _, body = obs.partition(" from ")
            if ref not in led or led[ref]["status"] == "done":
                continue
            body = body.split(": ", 1)[1]
            led[ref]["status"] = "failed" if body.startswith("ERROR") else "done"
            led[ref]["answer"] = "" if body.startswith("ERROR") else body.removeprefix("Answer: ")
    return led


def ledger_message(led: dict[str, dict[str, Any]]) -> Message:
    """The ledger as the one user message a coordinator's model reads instead of the task text and its transcript
    (one short line per part, as Magentic-One's progress ledger): its prompt does not grow with the work done."""
    lines = [f"{r} | {v['kind']} | {v['status']} | tried={','.join(v['tried']) or '-'} | {v['answer']}"
             for r, v in led.items()]
    return {"role": "user", "content": "\n".join([LEDGER, *lines])}


def coordinator_policy(messages: Sequence[Message], tools: Sequence[dict]) -> str:
    """Read the ledger: delegate every open part to a worker with its skill (round-robin), re-delegate a failed
    part to a worker not yet tried (give up when none is left), ``wait`` while parts are out, then compose the
    answer. A planner (no ``wait`` tool) stops after delegating every part once and answers with its plan."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    workers = peers(system, "Workers")
    note = next(m["content"] for m in reversed(messages) if m["role"] == "user" and m["content"].startswith(LEDGER))
    led = {}
    for line in note.splitlines()[1:]:
        ref, kind, status, tried, answer = line.split(" | ", 4)
        led[ref] = {"kind": kind, "status": status, "tried": [t for t in tried[6:].split(",") if t != "-"],
                    "answer": answer}
    planner = "wait" not in {t["function"]["name"] for t in tools}
    for i, (ref, v) in enumerate(led.items()):
        if v["status"] in ("open", "failed"):
            able = [w for w in workers if SKILL[v["kind"]] in workers[w]] or list(workers)
            ring = able[i % len(able):] + able[:i % len(able)]
            free = [w for w in ring if w not in v["tried"]]
            if free and not (planner and v["tried"]):
                return action("delegate", to=free[0], ref=ref)
            if not planner:
                v["status"], v["answer"] = "done", "unknown"  # every able worker failed: give up on this part
    if planner:
        return "Answer: Plan: " + "; ".join(f"{r}@{v['tried'][-1]}" for r, v in led.items())
    if any(v["status"] == "waiting" for v in led.values()):
        return action("wait")
    return "Answer: " + "; ".join(v["answer"] for v in led.values())


# ---- one agent's loop ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """How an agent's episode ended: ``answer`` text, an ``error``, or a ``handoff`` to a peer."""

    kind: str
    text: str
    steps: int
    to: str = ""


@dataclass
class Runtime:
    """What every agent loop shares: the bus (messages, accounting), the MCP tools, the approval gate."""

    bus: Bus
    toolbox: ToolBox
    gate: ApprovalGate | None
    context_tokens: int = 512
    reserve_tokens: int = 64  # room kept for the reply
    loop_limit: int = 3  # the same tool call this many times in one episode is a loop
    recv_timeout_s: float = 1.0
    gated: tuple[str, ...] = ("send_email",)


async def run_agent(rt: Runtime, name: str, llm: ChatLLM, tools: list[dict], messages: list[Message],
                    trace_id: str, max_steps: int, special: Callable[[ToolCall], Any] | None = None,
                    render: Callable[[list[Message]], list[Message]] | None = None) -> Outcome:
    """A ReAct loop: fit the window, ask the model, run its tool call (MCP, through the approval gate for a gated
    tool, or ``special`` for ``delegate``/``wait``), append the observation; until an answer, a handoff, a loop or
    ``max_steps``. ``render`` maps the whole transcript to what the model is shown (a coordinator's ledger)."""
    st = rt.bus.stats[name]
    counts: dict[str, int] = {}
    for step in range(1, max_steps + 1):
        visible = fit_context(render(messages) if render else messages, rt.context_tokens - rt.reserve_tokens)
        reply = llm.chat(visible, tools=tools, validate=ANSWER)
        st.llm_calls += 1
        st.prompt_tokens += reply.prompt_tokens
        st.completion_tokens += reply.completion_tokens
        st.max_prompt_tokens = max(st.max_prompt_tokens, reply.prompt_tokens)
        if reply.failed:
            return Outcome("error", f"ERROR: malformed model output: {reply.error}", step)
        call = reply.tool_call
        if call is None:
            return Outcome("answer", reply.text, step)
        call = ToolCall(call.name, call.arguments, f"call_{step}")
        messages.append({"role": "assistant", "content": reply.text or None, "tool_calls": [call.to_openai()]})
        if call.name == "handoff":
            return Outcome("handoff", reply.text, step, call.arguments["to"])
        key = json.dumps([call.name, call.arguments], sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= rt.loop_limit and call.name != "wait":
            return Outcome("error", f"ERROR: loop: {call.name} {json.dumps(call.arguments)[:60]} called "
                                    f"{counts[key]} times", step)
        if special is not None and call.name in ("delegate", "wait"):
            obs = await special(call)
        else:
            obs = await tool_call(rt, name, call, trace_id)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": obs})
    return Outcome("error", f"ERROR: no answer in {max_steps} steps", max_steps)


async def tool_call(rt: Runtime, name: str, call: ToolCall, trace_id: str) -> str:
    """One tool call over MCP, logged on the bus; a gated tool first goes to the human (reject: not run)."""
    st = rt.bus.stats[name]
    args = dict(call.arguments)
    if call.name in rt.gated:
        if rt.gate is None:
            return f"ERROR: {call.name} needs a human's approval and no one is there to give it"
        decision, args = await rt.gate.review(rt.bus, name, call.name, args, trace_id)
        if decision == "reject":
            return "ERROR: rejected by the human"
    rt.bus.note({"sender": name, "recipient": "mcp", "intent": "tool_call", "trace_id": trace_id,
                 "content": {"tool": call.name, "args": args}})
    t = time.perf_counter()
    ok, text = await rt.toolbox.call(call.name, args)
    st.tool_calls += 1
    st.tool_s += time.perf_counter() - t
    rt.bus.note({"sender": "mcp", "recipient": name, "intent": "tool_result" if ok else "error",
                 "trace_id": trace_id, "content": text[:200]})
    return text


# ---- systems: one agent, a supervisor team, a mesh --------------------------------------------------------
@dataclass
class TeamSpec:
    """Who is on the team: researcher names, the operator, and faults to inject (``{name: "loop"|"hang"}``)."""

    researchers: tuple[str, ...] = ("researcher_1", "researcher_2", "researcher_3")
    operator: str = "operator"
    faults: dict[str, str] = field(default_factory=dict)

    def tools_of(self, name: str) -> tuple[str, ...]:
        return ("search",) if name in self.researchers else ("rate_live", "rate_table", "calculator", "send_email")

    @property
    def workers(self) -> tuple[str, ...]:
        return (*self.researchers, self.operator)

    def line(self, key: str, names: Sequence[str]) -> str:
        return f"{key}: " + "; ".join(f"{n}={','.join(self.tools_of(n))}" for n in names)


def system_prompt(role: str, extra: str = "") -> Message:
    text = (f"You are {role}. Call a tool with an Action line, or reply 'Answer: ...' when done." +
            (f"\n{extra}" if extra else ""))
    return {"role": "system", "content": text}


async def single_agent(rt: Runtime, task: str, trace_id: str, max_steps: int, policy: Policy = book_policy) -> str:
    """One agent with every tool: the baseline."""
    llm = PolicyLM(policy, rt.context_tokens)
    messages = [system_prompt("a research and operations assistant"), {"role": "user", "content": task}]
    rt.bus.note({"sender": "user", "recipient": "agent", "intent": "task", "trace_id": trace_id, "content": task})
    out = await run_agent(rt, "agent", llm, rt.toolbox.only(("search", "rate_live", "rate_table", "calculator",
                                                              "send_email")), messages, trace_id, max_steps)
    rt.bus.note({"sender": "agent", "recipient": "user", "intent": "result" if out.kind == "answer" else "error",
                 "trace_id": trace_id, "content": out.text})
    return out.text


async def serve_worker(rt: Runtime, name: str, spec: TeamSpec, max_steps: int, mesh: bool) -> None:
    """A worker: take a task from the bus, run its own episode, send the answer (or error) to ``reply_to``; hand a
    task it has no tool for to a peer (mesh). Stops on ``"stop"``. Faults: ``hang`` never answers; ``loop`` runs
    a model that repeats its first tool call."""
    fault = spec.faults.get(name)
    policy = looping(book_policy) if fault == "loop" else book_policy
    llm = PolicyLM(policy, rt.context_tokens)
    tools = rt.toolbox.only(spec.tools_of(name)) + ([HANDOFF] if mesh else [])
    peer_line = spec.line("Peers", [w for w in spec.workers if w != name])
    while True:
        msg = await rt.bus.recv(name, 3600.0)  # idle until work or "stop" arrives (stop is always sent)
        if msg is None:
            continue
        if msg.content == "stop":
            return
        if fault == "hang":
            continue
        c = msg.content
        messages = [system_prompt(f"{name}, a worker", peer_line if mesh else ""),
                    {"role": "user", "content": c["task"]}]
        out = await run_agent(rt, name, llm, tools, messages, msg.trace_id, max_steps)
        if out.kind == "handoff":
            try:
                rt.bus.send({"sender": name, "recipient": out.to, "intent": "handoff", "trace_id": msg.trace_id,
                             "hop": msg.hop + 1, "content": c})
                continue
            except LLMCoreError as exc:
                out = Outcome("error", f"ERROR: handoff failed: {exc}", out.steps)
        try:
            rt.bus.send({"sender": name, "recipient": c["reply_to"], "trace_id": msg.trace_id, "hop": msg.hop + 1,
                         "intent": "result" if out.kind == "answer" else "error",
                         "content": {"ref": c["ref"], "answer": out.text}})
        except LoopDetected:
            pass  # this exact answer was delivered before (the part came back after a timeout): the bus logged it


async def coordinate(rt: Runtime, name: str, task: str, workers_line: str, trace_id: str, max_steps: int,
                     reply_to: str, planner: bool = False) -> Outcome:
    """A coordinator's episode (:func:`coordinator_policy`): ``delegate`` sends a part on the bus (``reply_to``
    gets the answer), ``wait`` receives the next answer or times out."""
    parts = parts_of(task.split("\nPlan: ")[0])

    async def special(call: ToolCall) -> str:
        if call.name == "delegate":
            ref, to = call.arguments["ref"], call.arguments["to"]
            if ref not in parts:
                return f"ERROR: no part {ref!r}"
            try:
                rt.bus.send({"sender": name, "recipient": to, "intent": "task", "trace_id": trace_id, "hop": 1,
                             "content": {"ref": ref, "task": parts[ref], "reply_to": reply_to}})
            except LoopDetected as exc:
                return f"ERROR: {exc}"
            except LLMCoreError as exc:
                return f"ERROR: {exc}"
            return "sent"
        msg = await rt.bus.recv(name, rt.recv_timeout_s)
        if msg is None:
            text = f"TIMEOUT: no answer in {rt.recv_timeout_s:g} s"
            rt.bus.note({"sender": name, "recipient": name, "intent": "error", "trace_id": trace_id, "content": text})
            return text
        return f"{msg.content['ref']} from {msg.sender}: {msg.content['answer']}"

    llm = PolicyLM(coordinator_policy, rt.context_tokens)
    messages = [system_prompt(f"{name}, a coordinator", workers_line), {"role": "user", "content": task}]
    tools = [DELEGATE] if planner else [DELEGATE, WAIT]

    def render(msgs: list[Message]) -> list[Message]:  # the model sees the ledger, not the task text + transcript
        return [msgs[0], ledger_message(fold_ledger(task, msgs))]
    return await run_agent(rt, name, llm, tools, messages, trace_id, max_steps, special, render)


async def team(rt: Runtime, task: str, trace_id: str, spec: TeamSpec, mesh: bool, max_steps: int,
               coordinator_steps: int) -> str:
    """Run one task on a team. ``mesh=False``: a supervisor delegates by skill and collects the answers.
    ``mesh=True``: a planner that knows only the researchers sends every part out, workers hand what they cannot
    do to a peer, and answers go straight to a writer who collects, recovers and answers."""
    for n in (*spec.workers, "supervisor", "planner", "writer"):
        rt.bus.register(n)
    workers = [asyncio.create_task(serve_worker(rt, w, spec, max_steps, mesh)) for w in spec.workers]
    boss = "writer" if mesh else "supervisor"
    rt.bus.note({"sender": "user", "recipient": "planner" if mesh else boss, "intent": "task",
                 "trace_id": trace_id, "content": task})
    try:
        if mesh:
            plan = await coordinate(rt, "planner", task, spec.line("Workers", spec.researchers), trace_id,
                                    coordinator_steps, reply_to="writer", planner=True)
            rt.bus.send({"sender": "planner", "recipient": "writer", "intent": "handoff", "trace_id": trace_id,
                         "content": {"ref": "plan", "task": plan.text.removeprefix("Answer: ")}})
            early, got = [], None
            while got is None or got.sender != "planner":  # a fast worker's answer may arrive before the plan
                if got is not None:
                    early.append(got)
                got = await rt.bus.recv("writer", rt.recv_timeout_s)
                if got is None:
                    break
            for m in early:
                rt.bus.queues["writer"].put_nowait(m)
            full = task + "\n" + (got.content["task"] if got else "Plan: ")
            out = await coordinate(rt, "writer", full, spec.line("Workers", spec.workers), trace_id,
                                   coordinator_steps, reply_to="writer")
        else:
            out = await coordinate(rt, "supervisor", task, spec.line("Workers", spec.workers), trace_id,
                                   coordinator_steps, reply_to="supervisor")
    finally:
        for w in spec.workers:
            rt.bus.send({"sender": boss, "recipient": w, "intent": "task", "trace_id": trace_id, "content": "stop"})
        await asyncio.wait_for(asyncio.gather(*workers), 10 * rt.recv_timeout_s)  # every worker stops: no deadlock
        for n in (boss, *spec.workers):  # drop late answers so that the next task starts clean
            while not rt.bus.queues[n].empty():
                rt.bus.queues[n].get_nowait()
    rt.bus.note({"sender": boss, "recipient": "user", "intent": "result" if out.kind == "answer" else "error",
                 "trace_id": trace_id, "content": out.text})
    return out.text
