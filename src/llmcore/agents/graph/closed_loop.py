"""The Mesh & State Machine closed loop: our engine against LangGraph, fan-out timing, crash resume, a human.

One :class:`MeshConfig` holds every knob; :func:`experiment` runs the whole loop and returns a :class:`MeshResult`;
:func:`make_report` holds the thresholds; :func:`run` is the registry's entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmcore.agents.graph import workflows
from llmcore.agents.graph.bridge import run_langgraph, to_langgraph
from llmcore.agents.graph.checkpoint import SQLiteCheckpointer
from llmcore.agents.graph.engine import Command, RunResult, StepLimitError, run_sync
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report

CPU = torch.device("cpu")
TITLE = "Mesh & State Machine / 异步编排与状态机"

#: the research workload: questions chosen so that every route is taken (1, 2 and 4 tools in the fan-out; the
#: revise loop run 0, 1 and 3 times; the revision budget hit)
QUESTIONS = (
    "How does a checkpoint work with a reducer?",
    "what is a state machine",
    "why parallel?",
    "hello",
    "parallel interrupt state?",
    "how does a reducer merge parallel writes?",
)

#: the human's three possible answers to the approval gate
HUMAN_ANSWERS = ({"action": "approve"}, {"action": "reject"}, {"action": "edit", "args": {"body": "see you at 10"}})


@dataclass
class MeshConfig:
    """Every knob of the closed loop (``for_mode`` is the one place where ``toy`` becomes numbers)."""

    questions: tuple[str, ...] = QUESTIONS  # research tasks run in both engines
    target_score: int = 90        # critique score that ends the revise loop
    max_revisions: int = 3        # revision budget (the loop's exit when the score never gets there)
    n_tools: int = 8              # slow tools in the fan-out timing
    tool_delay_s: float = 0.05    # each tool's asyncio.sleep (a stand-in for API latency)
    step_limit: int = 7           # step limit of the no-exit cycle (the same number is LangGraph's recursion_limit)
    kill_question: str = "parallel interrupt state?"  # the run whose process is SIGKILLed mid fan-out
    fail_at: tuple[str, int] = ("critique", 2)        # the in-process crash: this node's k-th call raises
    kill_process: bool = True     # also resume after a killed subprocess (needs a second Python: ~3 s)

    @classmethod
    def for_mode(cls, toy: bool) -> MeshConfig:
        if toy:
            return cls()
        return cls(n_tools=64, tool_delay_s=0.2, step_limit=50)

    def validate(self) -> None:
        check_range("n_tools", self.n_tools, 1, 10_000)
        check_range("tool_delay_s", self.tool_delay_s, 0.0, 60.0)
        check_range("max_revisions", self.max_revisions, 0, 1000)
        check_range("step_limit", self.step_limit, 1, 100_000)
        if not self.questions:
            raise LLMCoreError("questions must not be empty")


@dataclass
class MeshResult:
    cfg: MeshConfig
    ours: list[RunResult]                      # per question
    theirs: list[RunResult]
    limit_calls: tuple[int, int]               # node executions before the step limit stopped (ours, LangGraph)
    human: list[dict[str, Any]]                # per human answer: both final states and payloads
    crash: dict[str, Any]                      # in-process injected failure, then resume
    kill: dict[str, Any]                       # SIGKILLed process, then resume in this one
    timing: dict[str, float]                   # fan-out vs chain wall times
    spans: dict[str, list] = field(default_factory=dict)
    checkpoints: int = 0                       # committed checkpoints of one research run
    steps_run: int = 0


async def _equality(cfg: MeshConfig) -> tuple[list[RunResult], list[RunResult]]:
    ours, theirs = [], []
    for q in cfg.questions:
        g = workflows.research_graph(target=cfg.target_score, max_revisions=cfg.max_revisions)
        ours.append(await g.compile().ainvoke({"question": q}))
        log: list = []
        theirs.append(await run_langgraph(to_langgraph(g, routes=log), {"question": q}, log))
    return ours, theirs


async def _step_limit(cfg: MeshConfig) -> tuple[int, int]:
    from langgraph.errors import GraphRecursionError  # optional dependency (the agents extra)

    ours, theirs = [0], [0]
    try:
        await workflows.loop_graph(ours).compile(step_limit=cfg.step_limit).ainvoke({"ticks": 0})
        ours[0] = -1  # did not stop: fails the criterion
    except StepLimitError:
        pass
    try:
        await run_langgraph(to_langgraph(workflows.loop_graph(theirs)), {"ticks": 0}, [], step_limit=cfg.step_limit)
        theirs[0] = -1
    except GraphRecursionError:
        pass
    return ours[0], theirs[0]


async def _human(folder: Path) -> list[dict[str, Any]]:
    from langgraph.checkpoint.memory import InMemorySaver

    out = []
    request = {"request": "ana@example.org: lunch at noon?"}
    for k, answer in enumerate(HUMAN_ANSWERS):
        db = folder / f"approval_{k}.sqlite"
        first = await workflows.approval_graph().compile(checkpointer=SQLiteCheckpointer(db)).ainvoke(request, "t")
        # the human answers later, from a fresh graph object reading the same file
        second = await workflows.approval_graph().compile(checkpointer=SQLiteCheckpointer(db)).ainvoke(
            Command(resume=answer), "t")
        log: list = []
        app = to_langgraph(workflows.approval_graph(), checkpointer=InMemorySaver(), routes=log)
        lg_first = await run_langgraph(app, request, log, thread_id="t")
        lg_second = await run_langgraph(app, Command(resume=answer), log, thread_id="t")
        out.append({"answer": answer, "paused": first.status == "interrupted" and lg_first.status == "interrupted",
                    "payload_equal": sorted(map(json.dumps, first.interrupts.values()))
                    == sorted(map(json.dumps, lg_first.interrupts.values())),
                    "ours": second.state, "theirs": lg_second.state, "outbox": second.state["outbox"]})
    return out


async def _crash(cfg: MeshConfig, folder: Path, reference: dict) -> dict[str, Any]:
    node, k = cfg.fail_at
    calls = {"n": 0}

    def fail(name: str) -> None:
        if name == node:
            calls["n"] += 1
            if calls["n"] == k:
                raise RuntimeError(f"injected failure in {name!r} (call {k})")

    q = "hello"
    db = folder / "crash.sqlite"
    g = workflows.research_graph(target=cfg.target_score, max_revisions=cfg.max_revisions, fail=fail)
    try:
        await g.compile(checkpointer=SQLiteCheckpointer(db)).ainvoke({"question": q}, "crash")
        raised = ""
    except RuntimeError as exc:
        raised = str(exc)
    at = SQLiteCheckpointer(db).latest("crash")["step"]
    fresh = workflows.research_graph(target=cfg.target_score, max_revisions=cfg.max_revisions)
    ck = SQLiteCheckpointer(db)
    resumed = await fresh.compile(checkpointer=ck).ainvoke(None, "crash")
    return {"raised": raised, "crashed_after_step": at, "state": resumed.state, "reference": reference[q],
            "history": ck.history("crash")}


def _kill(cfg: MeshConfig, folder: Path) -> dict[str, Any]:
    """Run the research graph in a child process that SIGKILLs itself inside the fan-out; resume here."""
    db = folder / "killed.sqlite"
    code = ("import asyncio, sys; from llmcore.agents.graph import workflows; "
            "from llmcore.agents.graph.checkpoint import SQLiteCheckpointer; "
            "g = workflows.research_graph(delay=float(sys.argv[3]), kill_in='web').compile("
            "checkpointer=SQLiteCheckpointer(sys.argv[1])); asyncio.run(g.ainvoke({'question': sys.argv[2]}, 'k'))")
    env = dict(os.environ)
    src = str(Path(workflows.__file__).resolve().parents[3])  # .../src, for a checkout that is not installed
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code, str(db), cfg.kill_question, str(cfg.tool_delay_s)],
                          env=env, capture_output=True, text=True, timeout=120)
    ck = SQLiteCheckpointer(db)
    at = ck.latest("k")["step"]
    pending = sorted(ck.pending("k", at + 1))
    g = workflows.research_graph(delay=cfg.tool_delay_s, target=cfg.target_score, max_revisions=cfg.max_revisions)
    resumed = run_sync(g.compile(checkpointer=ck).ainvoke(None, "k"))
    first_step = [s.node for s in resumed.spans if s.step == at + 1]
    return {"returncode": proc.returncode, "killed_after_step": at, "pending_saved": pending,
            "rerun_in_killed_step": sorted(first_step), "state": resumed.state, "history": ck.history("k"),
            "stderr": proc.stderr[-500:]}


async def _timing(cfg: MeshConfig) -> tuple[dict[str, float], dict[str, list]]:
    n, d = cfg.n_tools, cfg.tool_delay_s
    out, spans = {}, {}
    for name, g in (("fanout", workflows.fanout_graph(n, d)), ("chain", workflows.chain_graph(n, d))):
        t = time.perf_counter()
        r = await g.compile(step_limit=n + 2).ainvoke({"n": n})  # the chain needs n + 1 supersteps
        out[name] = time.perf_counter() - t
        spans[name] = r.spans
        out[f"{name}_total"] = r.state["total"]
    log: list = []
    app = to_langgraph(workflows.fanout_graph(n, d), routes=log)
    t = time.perf_counter()
    r = await run_langgraph(app, {"n": n}, log)
    out["langgraph_fanout"] = time.perf_counter() - t
    out["langgraph_total"] = r.state["total"]
    out["sum_of_delays"], out["max_delay"] = n * d, d
    return out, spans


def experiment(cfg: MeshConfig | None = None, toy: bool = True, show_progress: bool = True) -> MeshResult:
    """Run every part of the closed loop (one progress bar over the parts)."""
    cfg = cfg or MeshConfig.for_mode(toy)
    cfg.validate()
    parts = ["LangGraph equality", "step limit", "human approval", "crash + resume", "killed process + resume",
             "fan-out timing"]
    bar = progress(total=len(parts), desc="mesh") if show_progress else progress(total=len(parts), disable=True)
    with tempfile.TemporaryDirectory(prefix="llmcore_mesh_") as tmp:
        folder = Path(tmp)
        ours, theirs = run_sync(_equality(cfg))
        bar.update()
        limit = run_sync(_step_limit(cfg))
        bar.update()
        human = run_sync(_human(folder))
        bar.update()
        reference = {q: r.state for q, r in zip(cfg.questions, ours)}
        if "hello" not in reference:
            reference["hello"] = run_sync(workflows.research_graph(
                target=cfg.target_score, max_revisions=cfg.max_revisions).compile().ainvoke({"question": "hello"})).state
        crash = run_sync(_crash(cfg, folder, reference))
        crash["trace"] = run_sync(workflows.research_graph(
            target=cfg.target_score, max_revisions=cfg.max_revisions).compile().ainvoke({"question": "hello"})).trace
        bar.update()
        kill: dict[str, Any] = {}
        if cfg.kill_process:
            kill = _kill(cfg, folder)
            ref = run_sync(workflows.research_graph(target=cfg.target_score, max_revisions=cfg.max_revisions)
                              .compile().ainvoke({"question": cfg.kill_question}))
            kill["reference"], kill["trace"] = ref.state, ref.trace
        bar.update()
        timing, spans = run_sync(_timing(cfg))
        bar.update()
        ck = SQLiteCheckpointer(folder / "count.sqlite")
        r = run_sync(workflows.research_graph(target=cfg.target_score, max_revisions=cfg.max_revisions)
                        .compile(checkpointer=ck).ainvoke({"question": cfg.questions[0]}))
        checkpoints, steps_run = ck.count("default"), len(r.steps)
    bar.close()
    return MeshResult(cfg, ours, theirs, limit, human, crash, kill, timing, spans, checkpoints, steps_run)


def _all_equal(pairs) -> float:
    return float(all(a == b for a, b in pairs))


def make_report(res: MeshResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and the acceptance criteria (every threshold of the chapter lives here)."""
    rep = Report("mesh", TITLE, toy, device, seed)
    cfg = res.cfg
    rep.metric("research tasks", len(res.ours))
    rep.metric("supersteps per task (mean)", sum(len(r.steps) for r in res.ours) / len(res.ours))
    rep.metric("revise-loop iterations (total)", sum(r.state["revisions"] for r in res.ours))
    rep.metric("fan-out width (max)", max(len(r.state["sources"]) for r in res.ours))
    t = res.timing
    ratio = t["fanout"] / t["chain"]
    rep.metric("fan-out wall s", t["fanout"])
    rep.metric("chain wall s", t["chain"])
    rep.metric("LangGraph fan-out wall s", t["langgraph_fanout"])
    rep.metric("fan-out / chain wall ratio", ratio)
    rep.metric("fan-out wall / slowest tool", t["fanout"] / t["max_delay"] if t["max_delay"] else float("nan"))
    rep.check("state trace equals LangGraph's (every task, every superstep)",
              _all_equal((a.trace, b.trace) for a, b in zip(res.ours, res.theirs)), "==", 1)
    rep.check("nodes per superstep equal LangGraph's", _all_equal((a.steps, b.steps) for a, b in zip(res.ours, res.theirs)),
              "==", 1)
    rep.check("routing decisions equal LangGraph's", _all_equal((a.routes, b.routes) for a, b in zip(res.ours, res.theirs)),
              "==", 1)
    rep.check("final state equals LangGraph's", _all_equal((a.state, b.state) for a, b in zip(res.ours, res.theirs)),
              "==", 1)
    rep.check("the workload takes the revise loop and a fan-out of >= 2",
              float(any(r.state["revisions"] > 0 for r in res.ours) and any(len(r.steps[1]) >= 2 for r in res.ours)),
              "==", 1)
    rep.check("step limit stops the no-exit cycle after as many node calls as LangGraph's recursion_limit",
              float(res.limit_calls[0] == res.limit_calls[1] == cfg.step_limit), "==", 1)
    rep.check("one checkpoint per superstep (+ the input)", float(res.checkpoints == res.steps_run + 1), "==", 1)
    h = res.human
    rep.check("interrupt pauses both engines with the same payload", float(all(x["paused"] and x["payload_equal"] for x in h)),
              "==", 1)
    rep.check("resumed with the human's answer: final state equals LangGraph's (approve, reject, edit)",
              _all_equal((x["ours"], x["theirs"]) for x in h), "==", 1)
    rep.check("a rejected tool call is not executed; an edited one runs with the edit",
              float(h[1]["outbox"] == [] and len(h[2]["outbox"]) == 1 and HUMAN_ANSWERS[2]["args"]["body"] in h[2]["outbox"][0]),
              "==", 1)
    c = res.crash
    rep.check("resume after an injected exception gives the uninterrupted final state",
              float(bool(c["raised"]) and c["state"] == c["reference"]), "==", 1)
    rep.check("... and its checkpoint history equals the uninterrupted state trace", float(c["history"] == c["trace"]), "==", 1)
    if res.kill:
        k = res.kill
        rep.metric("killed process: step of the last checkpoint", k["killed_after_step"])
        rep.check("resume after SIGKILL mid fan-out gives the uninterrupted final state and trace",
                  float(k["returncode"] != 0 and k["state"] == k["reference"] and k["history"] == k["trace"]), "==", 1)
        rep.check("... re-running only the tool that did not finish (the others' writes were saved)",
                  float(k["rerun_in_killed_step"] == ["search_web"] and len(k["pending_saved"]) >= 1), "==", 1)
    rep.check("fan-out of N slow tools: wall / chain wall (~1/N)", ratio, "<", 0.5)
    rep.check("fan-out tools give the chain's result", float(t["fanout_total"] == t["chain_total"] == t["langgraph_total"]),
              "==", 1)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The registry's entry point. Deterministic nodes: ``seed`` is recorded, nothing random is drawn;
    ``device`` is validated and recorded (no tensors are used)."""
    res = experiment(toy=toy)
    rep = make_report(res, toy, str(device), seed)
    rep.notes.append(f"fan-out of {res.cfg.n_tools} tools x {res.cfg.tool_delay_s}s: "
                     f"{res.timing['fanout']:.3f}s vs chain {res.timing['chain']:.3f}s")
    return rep
