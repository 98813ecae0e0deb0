r"""ReAct, Plan-and-Execute, Self-Ask and the direct answer, over the one LLM interface.

Each pattern is a Python *generator*: it yields a :class:`Request` (the conversation the model must
answer) and receives the model's :class:`~llmcore.agents.llm.Reply`; it calls tools itself and finally
returns ``(answer, failure)``. The driver :func:`run_episodes` runs many episodes in lockstep, so the
requests of all episodes at the same stage go to the model as one batch
(:meth:`~llmcore.agents.llm.ChatLLM.chat_batch`). With ``llm=None`` it answers every request with the
pattern's own *gold* reply (teacher forcing): that is how the fine-tuning traces are written, so the
traces and the agent loops cannot drift apart.

* **ReAct** (Yao et al., 2023): ``Thought -> Action -> Observation`` until ``Answer:``; one growing
  conversation; at most ``max_steps`` model calls.
* **Plan-and-Execute** (Wang et al., 2023, Plan-and-Solve; LangChain's plan-and-execute agent): a
  planner writes a numbered plan once; an executor call per step turns the step and the results so far
  into one tool call; the last step's result is the answer. A tool error or a malformed step sends the
  failure back to the planner (at most ``max_replans`` times).
* **Self-Ask** (Press et al., 2023): ``Are follow up questions needed here: Yes.`` then ``Follow up:``
  sub-questions, each answered by a tool (``Intermediate answer:``), until ``So the final answer is:``.
* **direct**: the same model answers the question in one reply without tools (the baseline).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from llmcore.agents.agent_orchestration.world import (
    TOOL_SCHEMAS,
    Task,
    Toolbox,
    World,
    normalize_answer,
    render_tools,
)
from llmcore.agents.llm import ChatLLM, Message, Reply, Validator, answer_validator, parse_reply
from llmcore.core.errors import LLMCoreError

PATTERNS = ("react", "plan_execute", "self_ask", "direct")
TOOLS_LINE = render_tools(TOOL_SCHEMAS)
SYSTEM = {
    "react": TOOLS_LINE + "\nreact: thought, action, then Answer:",
    "self_ask": TOOLS_LINE + "\nself-ask: follow up questions, then the final answer.",
    "plan": TOOLS_LINE + "\nplan: one step per line.",
    "execute": TOOLS_LINE + "\nexecute the step with one action.",
    "direct": "answer directly without tools.",
}
REACT_DONE, SELF_ASK_DONE, DIRECT_DONE = "Answer:", "So the final answer is:", "Answer:"


def _needs_tool_call(text: str) -> str | None:
    return f"expected an Action: tool call, got {text[:60]!r}"


def _plan_steps(text: str) -> list[str]:
    return [line.split(". ", 1)[1].strip() for line in text.splitlines()
            if line[:1].isdigit() and ". " in line and line.split(". ", 1)[1].strip()]


def _valid_plan(text: str) -> str | None:
    return None if text.startswith("Plan:") and _plan_steps(text) else f"expected 'Plan:' and numbered steps, got {text[:60]!r}"


NO_TOOLS = ("plan", "direct")  #: request kinds offered no tools (an Action: line there is malformed)
VALIDATORS: dict[str, Validator] = {"react": answer_validator(REACT_DONE), "self_ask": answer_validator(SELF_ASK_DONE),
                                    "direct": answer_validator(DIRECT_DONE), "plan": _valid_plan,
                                    "execute": _needs_tool_call}


@dataclass
class Request:
    """One model call an episode needs: the conversation, the validator of a text reply, the gold reply."""

    messages: list[Message]
    kind: str  # a SYSTEM/VALIDATORS key
    gold: str  # the reply a perfect agent writes here (teacher forcing, training traces)

    @property
    def validate(self) -> Validator:
        return VALIDATORS[self.kind]


Pattern = Generator[Request, Reply, tuple[str, str]]


def _act(name: str, **args) -> str:
    return "Action: " + json.dumps({"name": name, "arguments": args})


def _tool_msg(reply: Reply, content: str) -> Message:
    return {"role": "tool", "tool_call_id": reply.tool_call.id, "content": content}


def _gold_calls(task: Task) -> list[tuple[str, str]]:
    """The gold tool path: ``(thought, action line)`` per hop. Thoughts name the step, never a name or a
    number: every name is copied once (into the action's JSON), not twice, and each copy is a chance of error."""
    out = [("find the capital", _act("search", query=f"{task.country} capital")),
           ("look up its population", _act("lookup", key=task.capital))]
    if task.op:
        out.append(("compute the result", _act("calculator", expression=task.expression)))
    return out


def react(task: Task, box: Toolbox, max_steps: int = 6) -> Pattern:
    """ReAct: one conversation of thought/action/observation turns, ended by ``Answer:``."""
    msgs: list[Message] = [{"role": "system", "content": SYSTEM["react"]}, {"role": "user", "content": task.question}]
    gold = [f"Thought: {t}\n{a}" for t, a in _gold_calls(task)] + [f"Thought: done\n{REACT_DONE} {task.answer}"]
    return (yield from _tool_loop(msgs, "react", gold, REACT_DONE, box, max_steps))


def _tool_loop(msgs: list[Message], kind: str, gold: list[str], done: str, box: Toolbox, max_steps: int,
               observation_prefix: str = "") -> Pattern:
    """The loop ReAct and Self-Ask share: each reply is a tool call (its observation, after
    ``observation_prefix``, joins the conversation) or the final answer after ``done``."""
    for step in range(max_steps):
        reply = yield Request(list(msgs), kind, gold[min(step, len(gold) - 1)])
        if reply.failed:
            return "", "malformed output"
        if reply.tool_call is None:
            return normalize_answer(reply.text.split(done, 1)[1]), ""
        msgs += [reply.message(), _tool_msg(reply, observation_prefix + box.call(reply.tool_call))]
    return "", "step budget"


def self_ask(task: Task, box: Toolbox, max_steps: int = 6) -> Pattern:
    """Self-Ask: follow-up questions, each answered by a tool call, then ``So the final answer is:``."""
    msgs: list[Message] = [{"role": "system", "content": SYSTEM["self_ask"]},
                           {"role": "user", "content": task.question}]
    follow = [f'what is the capital of "{task.country}"?', f'what is the population of "{task.capital}"?']
    if task.op:
        follow.append(f"what is {task.population} {task.op} {task.k}?")
    gold = [("Are follow up questions needed here: Yes.\n" if i == 0 else "") + f"Follow up: {q}\n{a}"
            for i, (q, (_, a)) in enumerate(zip(follow, _gold_calls(task)))] + [f"{SELF_ASK_DONE} {task.answer}"]
    return (yield from _tool_loop(msgs, "self_ask", gold, SELF_ASK_DONE, box, max_steps, "Intermediate answer: "))


def plan_execute(task: Task, box: Toolbox, max_replans: int = 1) -> Pattern:
    """Plan once, execute each step with one tool call, replan (at most ``max_replans``) on a failure."""
    plan_msgs: list[Message] = [{"role": "system", "content": SYSTEM["plan"]},
                                {"role": "user", "content": task.question}]
    steps = [f'search the capital of "{task.country}"', "lookup the population of the capital"]
    if task.op:
        steps.append(f"calculate it {task.op} {task.k}")
    gold_plan = "Plan:\n" + "\n".join(f"{i + 1}. {s}" for i, s in enumerate(steps))
    gold_acts = [a for _, a in _gold_calls(task)]
    failure = ""
    for _ in range(max_replans + 1):
        plan = yield Request(list(plan_msgs), "plan", gold_plan)
        if plan.failed:
            return "", "malformed output"
        known: list[str] = []
        for i, step in enumerate(_plan_steps(plan.text)):
            ex = [{"role": "system", "content": SYSTEM["execute"]},
                  {"role": "user", "content": f"step: {step}\nknown: {'; '.join(known) or 'none'}"}]
            reply = yield Request(ex, "execute", gold_acts[min(i, len(gold_acts) - 1)])
            if reply.failed or reply.tool_call is None:
                failure, note = "malformed output", f"step {i + 1} could not be executed"
                break
            obs = box.call(reply.tool_call)
            if obs.startswith("error"):
                failure, note = "tool error", f"step {i + 1} failed: {obs}"
                break
            known.append(f"{i + 1}: {obs}")
        else:
            return (normalize_answer(known[-1]), "") if known else ("", "empty plan")
        plan_msgs += [plan.message(), {"role": "user", "content": note + ". replan."}]
    return "", failure


def direct(task: Task, box: Toolbox) -> Pattern:
    """The same model answering in one reply, without tools."""
    reply = yield Request([{"role": "system", "content": SYSTEM["direct"]}, {"role": "user", "content": task.question}],
                          "direct", f"{DIRECT_DONE} {task.answer}")
    if reply.failed:
        return "", "malformed output"
    return normalize_answer(reply.text.split(DIRECT_DONE, 1)[1]), ""


PATTERN_FNS: dict[str, Callable[..., Pattern]] = {"react": react, "plan_execute": plan_execute, "self_ask": self_ask,
                                                  "direct": direct}


@dataclass
class Episode:
    """One task run by one pattern: the answer, its grade, and what it cost."""

    task: Task
    pattern: str
    answer: str = ""
    failure: str = ""  # "" | "wrong answer" | "malformed output" | "tool error" | "step budget" | "empty plan"
    calls: int = 0  # model calls (requests answered)
    attempts: int = 0  # completions drawn (calls + retries)
    failed_parses: int = 0  # malformed completions caught
    tool_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    pairs: list[tuple[list[Message], str]] = field(default_factory=list)  # (conversation, reply text) per call

    @property
    def correct(self) -> bool:
        return self.answer == self.task.answer

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def retries(self) -> int:
        return self.attempts - self.calls


def gold_reply(req: Request, tools: list[dict] | None = TOOL_SCHEMAS) -> Reply:
    """The gold reply as if a model had written it (teacher forcing)."""
    text, call = parse_reply(req.gold, tools)
    return Reply(text, call, req.gold)


def run_episodes(llm: ChatLLM | None, pattern: str, tasks: list[Task], world: World, **kw) -> list[Episode]:
    """Run ``pattern`` on every task in lockstep; ``llm=None`` answers with the gold replies.

    Every step, the pending requests are grouped by kind (one validator per batch) and sent to
    ``llm.chat_batch``; an episode ends when its generator returns. ``kw`` go to the pattern
    (``max_steps``, ``max_replans``).
    """
    if pattern not in PATTERN_FNS:
        raise LLMCoreError(f"unknown pattern {pattern!r}; valid: {', '.join(PATTERNS)}")
    eps = [Episode(t, pattern) for t in tasks]
    boxes = [Toolbox(world) for _ in tasks]
    gens = [PATTERN_FNS[pattern](t, b, **kw) for t, b in zip(tasks, boxes)]
    pending = {i: next(g) for i, g in enumerate(gens)}
    while pending:
        by_kind: dict[str, list[int]] = {}
        for i, req in pending.items():
            by_kind.setdefault(req.kind, []).append(i)
        for kind, idx in by_kind.items():
            reqs = [pending[i] for i in idx]
            tools = None if kind in NO_TOOLS else TOOL_SCHEMAS
            if llm is None:
                replies = [gold_reply(r, tools) for r in reqs]
            else:
                replies = llm.chat_batch([r.messages for r in reqs], tools, VALIDATORS[kind])
            for i, req, rep in zip(idx, reqs, replies):
                ep = eps[i]
                ep.calls += 1
                ep.attempts += rep.attempts
                ep.failed_parses += len(rep.errors)
                ep.prompt_tokens += rep.prompt_tokens
                ep.completion_tokens += rep.completion_tokens
                ep.pairs.append((req.messages, rep.raw))
                try:
                    pending[i] = gens[i].send(rep)
                except StopIteration as stop:
                    ep.answer, ep.failure = stop.value
                    del pending[i]
    for ep, box in zip(eps, boxes):
        ep.tool_calls = len(box.log)
        if not ep.failure and not ep.correct:
            ep.failure = "wrong answer"
    return eps
