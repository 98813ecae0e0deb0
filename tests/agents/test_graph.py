"""The state-graph engine: hand-computed cases (reducers, routing, supersteps, resume) paired with the same graphs
run by LangGraph (the oracle)."""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphRecursionError

from llmcore.agents.graph import (
    END,
    START,
    Command,
    GraphError,
    MeshConfig,
    SQLiteCheckpointer,
    StateGraph,
    StepLimitError,
    apply_updates,
    channels_of,
    closed_loop,
    interrupt,
    run_langgraph,
    to_langgraph,
    workflows,
)
from llmcore.core.errors import LLMCoreError


class S(TypedDict):
    log: Annotated[list[str], operator.add]
    n: Annotated[int, operator.add]
    x: int


def both(g: StateGraph, inp: dict, **kw):
    """Run ``g`` in our engine and in LangGraph."""
    ours = asyncio.run(g.compile(**kw).ainvoke(inp))
    log: list = []
    theirs = asyncio.run(run_langgraph(to_langgraph(g, routes=log), inp, log))
    return ours, theirs


def assert_same(ours, theirs):
    assert ours.trace == theirs.trace
    assert ours.steps == theirs.steps
    assert ours.routes == theirs.routes
    assert ours.state == theirs.state


def test_reducers_fold_in_node_name_order_hand_case():
    ch = channels_of(S)
    assert ch["log"].reducer is operator.add and ch["x"].reducer is None and ch["n"].origin is int
    s0 = {"log": ["in"], "n": 1, "x": 0}
    # written by "zeta" then "alpha" -- folded as alpha, zeta: ["in", "a", "z"]; n = 1 + 2 + 3; x last value
    out = apply_updates(s0, [("zeta", {"log": ["z"], "n": 3}), ("alpha", {"log": ["a"], "n": 2, "x": 7})], ch)
    assert out == {"log": ["in", "a", "z"], "n": 6, "x": 7}
    assert s0 == {"log": ["in"], "n": 1, "x": 0}  # not modified


@pytest.mark.parametrize("updates, match", [
    ([("a", {"x": 1}), ("b", {"x": 2})], "both wrote 'x'"),
    ([("a", {"nope": 1})], "unknown key 'nope'"),
    ([("a", {"x": "one"})], "schema says int"),
])
def test_bad_updates_get_one_clear_error(updates, match):
    with pytest.raises(GraphError, match=match):
        apply_updates({"log": [], "n": 0, "x": 0}, updates, channels_of(S))
    assert issubclass(GraphError, LLMCoreError)


def test_bad_graphs_and_bad_routes():
    g = StateGraph(S)
    g.add_node("a", lambda s: None)
    with pytest.raises(GraphError, match="no entry"):
        g.compile()
    g.add_edge(START, "a")
    g.add_edge("a", "ghost")
    with pytest.raises(GraphError, match="unknown node 'ghost'"):
        g.compile()
    g2 = StateGraph(S)
    g2.add_node("a", lambda s: None)
    g2.add_edge(START, "a")
    g2.add_conditional_edges("a", lambda s: "maybe", {"yes": END})
    with pytest.raises(GraphError, match="not in its path map"):
        g2.compile().invoke({"x": 0})
    with pytest.raises(GraphError, match="step_limit"):
        g2.compile(step_limit=0)
    with pytest.raises(GraphError, match="already"):
        g2.add_node("a", lambda s: None)


def test_research_graph_hand_trace_and_langgraph_equality():
    # "checkpoint" and "reducer" are in the docs' and the code's facts: 4 facts -> score 80 < 90 -> one revision
    # -> 80 + 15 = 95 -> finish
    g = workflows.research_graph()
    ours, theirs = both(g, {"question": "How does a checkpoint work with a reducer?"})
    assert ours.steps == [["plan"], ["search_code", "search_docs"], ["draft"], ["critique"], ["revise"],
                          ["critique"], ["finish"]]
    assert ours.routes == [(1, "plan", ("search_code", "search_docs")), (4, "critique", ("revise",)),
                           (6, "critique", ("finish",))]
    assert ours.state["score"] == 95 and ours.state["revisions"] == 1
    assert_same(ours, theirs)
    # no fact at all: four tools, the loop runs out its budget of 3 revisions (score 0 + 3 * 15 = 45)
    ours, theirs = both(g, {"question": "hello"})
    assert ours.state["revisions"] == 3 and ours.state["score"] == 45 and len(ours.steps[1]) == 4
    assert_same(ours, theirs)


def test_write_order_does_not_depend_on_which_branch_finishes_first():
    def make(name, delay):
        async def node(state):
            await asyncio.sleep(delay)
            return {"log": [name]}
        return node
    g = StateGraph(S)
    g.add_node("start", lambda s: {"log": ["start"]})
    for name, delay in (("z", 0.0), ("a", 0.03), ("m", 0.01)):  # finish order z, m, a
        g.add_node(name, make(name, delay))
        g.add_edge("start", name)
    g.add_node("j", lambda s: {"log": ["j"], "x": len(s["log"])})
    g.add_edge(["z", "a"], "j")  # a join of two branches ...
    g.add_edge("m", "j")         # ... and a plain edge: j still runs once, in the next superstep
    g.add_edge(START, "start")
    g.add_edge("j", END)
    ours, theirs = both(g, {"log": ["in"]})
    assert ours.state["log"] == ["in", "start", "a", "m", "z", "j"] and ours.state["x"] == 5
    assert ours.steps == [["start"], ["a", "m", "z"], ["j"]]
    assert_same(ours, theirs)
    tools = [s for s in ours.spans if s.step == 2]
    assert max(s.start for s in tools) < min(s.end for s in tools)  # the three ran concurrently


def test_join_waits_for_branches_of_different_length():
    g = StateGraph(S)
    for name in ("a", "b", "b2", "c", "d"):
        g.add_node(name, (lambda nm: (lambda s: {"log": [nm]}))(name))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "b2")
    g.add_edge("a", "c")
    g.add_edge(["b2", "c"], "d")  # c finishes in step 2, b2 in step 3: d runs in step 4
    g.add_edge("d", END)
    ours, theirs = both(g, {})
    assert ours.steps == [["a"], ["b", "c"], ["b2"], ["d"]]
    assert_same(ours, theirs)


def test_step_limit_matches_langgraph_recursion_limit():
    ours, theirs = [0], [0]
    with pytest.raises(StepLimitError, match="step limit 5"):
        workflows.loop_graph(ours).compile(step_limit=5).invoke({"ticks": 0})
    with pytest.raises(GraphRecursionError):
        asyncio.run(run_langgraph(to_langgraph(workflows.loop_graph(theirs)), {"ticks": 0}, [], step_limit=5))
    assert ours[0] == theirs[0] == 5


def test_crash_resume_reruns_only_what_did_not_finish(tmp_path):
    calls: dict[str, int] = {}
    armed = {"on": True}

    def fail(name):
        calls[name] = calls.get(name, 0) + 1
        if armed["on"] and name == "search_web":
            raise RuntimeError("tool crashed")

    q = "parallel interrupt state?"  # all four tools in one superstep; the web tool crashes
    ref = workflows.research_graph().compile().invoke({"question": q})
    db = tmp_path / "run.sqlite"
    g = workflows.research_graph(fail=fail)
    with pytest.raises(RuntimeError, match="tool crashed"):
        g.compile(checkpointer=SQLiteCheckpointer(db)).invoke({"question": q}, "t")
    ck = SQLiteCheckpointer(db)
    assert ck.latest("t")["step"] == 1 and sorted(ck.pending("t", 2)) == ["search_code", "search_docs", "search_papers"]
    armed["on"] = False
    before = dict(calls)
    resumed = g.compile(checkpointer=ck).invoke(None, "t")
    assert resumed.state == ref.state and ck.history("t") == ref.trace and ck.routes("t") == ref.routes
    assert calls["search_web"] == before["search_web"] + 1 and calls["search_docs"] == before["search_docs"]
    assert ck.count("t") == len(ref.steps) + 1


def test_killed_process_resumes(tmp_path):
    cfg = MeshConfig(tool_delay_s=0.02)
    out = closed_loop._kill(cfg, tmp_path)
    assert out["returncode"] == -9, out["stderr"]  # SIGKILL
    ref = workflows.research_graph(delay=0.0).compile().invoke({"question": cfg.kill_question})
    assert out["killed_after_step"] == 1 and out["rerun_in_killed_step"] == ["search_web"]
    assert out["state"] == ref.state and out["history"] == ref.trace


def test_interrupt_in_a_parallel_step_equals_langgraph(tmp_path):
    def ask(s):
        answer = interrupt({"x": s["x"]})
        return {"log": [f"answer {answer}"]}
    g = StateGraph(S)
    g.add_node("pre", lambda s: {"x": 7})
    g.add_node("ask", ask)
    g.add_node("side", lambda s: {"log": ["side"], "n": 1})
    g.add_edge(START, "pre")
    g.add_edge("pre", "ask")
    g.add_edge("pre", "side")
    g.add_edge("ask", END)
    app = g.compile(checkpointer=SQLiteCheckpointer(tmp_path / "h.sqlite"))
    first = app.invoke({"log": []}, "h")
    assert first.status == "interrupted" and first.interrupts == {"ask": {"x": 7}}
    with pytest.raises(GraphError, match="waits for a human"):
        app.invoke(None, "h")
    done = app.invoke(Command(resume="yes"), "h")
    # the step's writes fold in node-name order: ask's answer before side's
    assert done.state == {"log": ["answer yes", "side"], "n": 1, "x": 7}
    log: list = []
    lg = to_langgraph(g, checkpointer=InMemorySaver(), routes=log)
    lg_first = asyncio.run(run_langgraph(lg, {"log": []}, log, thread_id="h"))
    assert list(lg_first.interrupts.values()) == [{"x": 7}]
    assert asyncio.run(run_langgraph(lg, Command(resume="yes"), log, thread_id="h")).state == done.state
    with pytest.raises(GraphError, match="not waiting for a human"):
        app.invoke(Command(resume="again"), "h")


@pytest.mark.parametrize("answer, outbox", [
    ({"action": "approve"}, ["to=ana@x.org body=hi"]),
    ({"action": "reject"}, []),
    ({"action": "edit", "args": {"body": "bye"}}, ["to=ana@x.org body=bye"]),
])
def test_human_approval_scripted(tmp_path, answer, outbox):
    db = tmp_path / "a.sqlite"
    first = workflows.approval_graph().compile(checkpointer=SQLiteCheckpointer(db)).invoke({"request": "ana@x.org: hi"})
    assert first.status == "interrupted" and first.state["outbox"] == []
    done = workflows.approval_graph().compile(checkpointer=SQLiteCheckpointer(db)).invoke(Command(resume=answer))
    assert done.state["outbox"] == outbox


def test_resume_needs_a_checkpoint_and_bad_config_is_one_error(tmp_path):
    g = workflows.research_graph()
    with pytest.raises(GraphError, match="needs a checkpointer"):
        g.compile().invoke(None)
    with pytest.raises(GraphError, match="no checkpoint"):
        g.compile(checkpointer=SQLiteCheckpointer(tmp_path / "e.sqlite")).invoke(None, "missing")
    with pytest.raises(LLMCoreError, match="n_tools"):
        closed_loop.experiment(MeshConfig(n_tools=0))
    with pytest.raises(LLMCoreError, match="does not exist"):
        SQLiteCheckpointer(tmp_path / "no" / "x.sqlite")
    full = MeshConfig.for_mode(False)
    full.validate()
    assert full.n_tools > MeshConfig.for_mode(True).n_tools
