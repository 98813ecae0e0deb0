"""The same graph, built in LangGraph: the oracle our engine is checked against.

:func:`to_langgraph` rebuilds one of our :class:`~llmcore.agents.graph.engine.StateGraph` objects node for node,
edge for edge in ``langgraph.graph.StateGraph`` (same schema, same node functions, same routers), so any
difference in the runs is a difference between the two engines. LangGraph is an optional dependency (the
``agents`` extra), imported inside these functions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from llmcore.agents.graph.engine import _TASK, END, START, Command, RunResult, StateGraph


class _LangGraphTask:
    """Routes our :func:`interrupt` to LangGraph's inside a node LangGraph runs."""

    def __init__(self, lg_interrupt: Callable[[Any], Any]) -> None:
        self.lg_interrupt = lg_interrupt

    def interrupt(self, value: Any) -> Any:
        return self.lg_interrupt(value)


def _bridge_node(fn: Callable, lg_interrupt: Callable) -> Callable:
    if inspect.iscoroutinefunction(fn):
        async def anode(state: dict) -> Any:
            token = _TASK.set(_LangGraphTask(lg_interrupt))
            try:
                return await fn(state)
            finally:
                _TASK.reset(token)
        return anode

    def node(state: dict) -> Any:
        token = _TASK.set(_LangGraphTask(lg_interrupt))
        try:
            return fn(state)
        finally:
            _TASK.reset(token)
    return node


def _bridge_router(source: str, router: Callable, path_map: dict | None, log: list, config_type: type) -> Callable:
    def route(state: dict, config: Any) -> Any:
        picked = router(state)
        names = [picked] if isinstance(picked, str) else list(picked)
        if path_map is not None:
            names = [path_map[p] for p in names]
        log.append((int(config["metadata"]["langgraph_step"]), source, tuple(sorted(names))))
        return picked
    # LangGraph hands a router its run config (the superstep number) when the parameter is typed RunnableConfig
    route.__annotations__["config"] = config_type
    return route


def to_langgraph(graph: StateGraph, checkpointer: Any = None, routes: list | None = None) -> Any:
    """Compile ``graph`` in LangGraph; every routing decision is appended to ``routes`` as ``(step, src, targets)``.

    Without a ``checkpointer`` an ``InMemorySaver`` is used: LangGraph reports the state after *every* superstep
    (its debug stream's checkpoint events) only when it checkpoints; its ``values`` stream skips steps that
    wrote nothing.
    """
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END as LG_END
    from langgraph.graph import START as LG_START
    from langgraph.graph import StateGraph as LGStateGraph
    from langgraph.types import interrupt as lg_interrupt

    names = {START: LG_START, END: LG_END}
    log = routes if routes is not None else []
    lg = LGStateGraph(graph.schema)
    for name, fn in graph.nodes.items():
        lg.add_node(name, _bridge_node(fn, lg_interrupt))
    for src, targets in graph.edges.items():
        for t in targets:
            lg.add_edge(names.get(src, src), names.get(t, t))
    for srcs, target in graph.joins:
        lg.add_edge(list(srcs), names.get(target, target))
    for src, branches in graph.branches.items():
        for br in branches:
            pm = None if br.path_map is None else {k: names.get(v, v) for k, v in br.path_map.items()}
            lg.add_conditional_edges(names.get(src, src), _bridge_router(src, br.router, br.path_map, log, RunnableConfig), pm)
    return lg.compile(checkpointer=checkpointer if checkpointer is not None else InMemorySaver())


async def run_langgraph(app: Any, inp: dict | Command | None, routes: list, thread_id: str = "trace",
                        step_limit: int = 25) -> RunResult:
    """Run a compiled LangGraph app and collect what our engine reports: state trace, steps, routes, interrupts."""
    from langgraph.types import Command as LGCommand

    config: dict[str, Any] = {"recursion_limit": step_limit, "configurable": {"thread_id": thread_id}}
    if isinstance(inp, Command):
        inp = LGCommand(resume=inp.resume)
    trace: list[dict] = []
    steps: dict[int, list[str]] = {}
    interrupts: dict[str, Any] = {}
    first = len(routes)
    state: dict = {}
    async for mode, chunk in app.astream(inp, config, stream_mode=["debug", "updates"]):
        if mode == "debug" and chunk["type"] == "checkpoint" and chunk["step"] >= 0:
            state = {k: v for k, v in chunk["payload"]["values"].items() if k != "__interrupt__"}
            trace.append(state)
        elif mode == "debug" and chunk["type"] == "task":
            steps.setdefault(chunk["step"], []).append(chunk["payload"]["name"])
        elif mode == "updates" and "__interrupt__" in chunk:
            for intr in chunk["__interrupt__"]:
                interrupts[intr.id] = intr.value
    status = "interrupted" if interrupts else "done"
    return RunResult(state=state, trace=trace, steps=[sorted(v) for _, v in sorted(steps.items())],
                     routes=sorted(routes[first:]), status=status, interrupts=interrupts)
