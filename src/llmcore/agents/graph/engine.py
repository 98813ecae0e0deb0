r"""An asynchronous state-graph engine: typed state with reducers, nodes, conditional edges, fan-out/fan-in,
cycles with a step limit, checkpoints after every step, crash resume and ``interrupt`` for a human.

Execution model (bulk-synchronous, as in Pregel and LangGraph). A run is a sequence of **supersteps**
:math:`k = 1, 2, \dots`. The set of triggered nodes :math:`T_k` runs concurrently on the same snapshot
:math:`s_{k-1}` of the state; node :math:`v` returns a partial update :math:`u_v` (a dict over some keys). The
new state folds every update into the old one key by key, with that key's reducer :math:`\oplus_c`, the
updates taken in node-name order:

.. math::

    s_k[c] = (\cdots((s_{k-1}[c] \oplus_c u_{v_1}[c]) \oplus_c u_{v_2}[c]) \cdots), \quad
    v_1 < v_2 < \dots \in T_k \text{ that wrote } c,

where a key without a reducer takes the last value and may be written by at most one node per superstep
(two writers in one step are a race, rejected). Because the order is the node names', never the order in which
concurrent branches finish, the result does not depend on timing. The next trigger set is

.. math::

    T_{k+1} = \bigcup_{v \in T_k} \mathrm{succ}(v, s_{k-1} \oplus u_v) \;\cup\; \{d : \text{every source of a
    join into } d \text{ has run since } d\text{'s last trigger}\},

where :math:`\mathrm{succ}` follows plain edges and evaluates conditional routers on the node's *own* view
(the step's start state plus its own update — a router never sees a sibling's write, so routing is as
timing-independent as the state). The run stops when :math:`T_{k+1} = \emptyset` (every path reached
``END``) and fails with :class:`StepLimitError` when it would need more than ``step_limit`` supersteps.

After every superstep the state, the next trigger set and the join progress are written to a
:class:`~llmcore.agents.graph.checkpoint.SQLiteCheckpointer`; a node that finishes inside a step that later
fails (or pauses for a human) has its update saved as a *pending write*, so a resumed run re-executes only
what did not finish.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import threading
import time
import typing
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmcore.agents.graph.checkpoint import SQLiteCheckpointer
from llmcore.core.errors import LLMCoreError

START = "__start__"
END = "__end__"


class GraphError(LLMCoreError):
    """A malformed graph, a bad update or a bad resume (one clear line, like every LLMCoreError)."""


class StepLimitError(GraphError):
    """The run needed more supersteps than ``step_limit`` (a cycle without a reachable exit)."""


class Interrupt(Exception):  # noqa: N818 -- a control-flow signal, like StopIteration, not an error
    """Raised inside a node by :func:`interrupt` to pause the run for a human; carries the payload shown."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


@dataclass(frozen=True)
class Command:
    """``graph.ainvoke(Command(resume=value), thread_id=...)`` resumes a paused run with the human's ``value``.

    With several nodes paused in one step, ``resume`` is a dict ``{node: value}``.
    """

    resume: Any


class _TaskContext:
    """What :func:`interrupt` needs inside one running node: the human's answers given so far."""

    def __init__(self, resumes: Sequence[Any] = ()) -> None:
        self.resumes = list(resumes)
        self.calls = 0

    def interrupt(self, value: Any) -> Any:
        self.calls += 1
        if self.calls <= len(self.resumes):
            return self.resumes[self.calls - 1]
        raise Interrupt(value)


_TASK: contextvars.ContextVar[Any] = contextvars.ContextVar("llmcore_graph_task", default=None)


def interrupt(value: Any) -> Any:
    """Pause the run and show ``value`` to a human; on resume the node runs again and this returns the answer.

    The node is re-executed *from its start* when the run resumes (nothing of a paused node is saved), so the
    code before ``interrupt`` must be safe to repeat. The k-th call in a node returns the k-th answer.
    """
    ctx = _TASK.get()
    if ctx is None:
        raise GraphError("interrupt() called outside a running graph node")
    return ctx.interrupt(value)


# ---- typed state -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Channel:
    """One state key: its declared type (``origin`` for an isinstance check) and its reducer (None: last value)."""

    name: str
    origin: type | None
    reducer: Callable[[Any, Any], Any] | None

    def empty(self) -> Any:
        """The value a reducer starts from (``list()`` for a list key, ``0`` for an int, ...); None otherwise."""
        if self.reducer is not None and self.origin is not None:
            try:
                return self.origin()
            except TypeError:
                return None
        return None


def channels_of(schema: type) -> dict[str, Channel]:
    """Read a ``TypedDict`` schema: ``Annotated[T, reducer]`` gives key, type and reducer."""
    try:
        hints = typing.get_type_hints(schema, include_extras=True)
    except Exception as exc:
        raise GraphError(f"state schema {schema!r} is not a TypedDict with resolvable annotations: {exc}") from exc
    if not hints:
        raise GraphError(f"state schema {getattr(schema, '__name__', schema)!r} declares no keys")
    out = {}
    for key, hint in hints.items():
        reducer = None
        if typing.get_origin(hint) is typing.Annotated:
            base, *meta = typing.get_args(hint)
            reducer = next((m for m in meta if callable(m)), None)
            hint = base
        origin = typing.get_origin(hint) or hint
        out[key] = Channel(key, origin if isinstance(origin, type) else None, reducer)
    return out


def apply_updates(state: dict[str, Any], updates: Iterable[tuple[str, dict[str, Any] | None]],
                  channels: dict[str, Channel]) -> dict[str, Any]:
    r"""Fold node updates into ``state`` (one superstep): reducers in node-name order, one writer per plain key.

    ``updates``: ``(node, partial_update)`` pairs. Returns a new dict; ``state`` is not modified.
    """
    new = dict(state)
    writers: dict[str, str] = {}
    for node, upd in sorted(updates, key=lambda nu: nu[0]):
        for key, value in (upd or {}).items():
            ch = channels.get(key)
            if ch is None:
                raise GraphError(f"node {node!r} wrote unknown key {key!r}; the state has {sorted(channels)}")
            if ch.reducer is None:
                if key in writers:
                    raise GraphError(f"nodes {writers[key]!r} and {node!r} both wrote {key!r} in one step; "
                                     f"give {key!r} a reducer (Annotated[T, reducer]) to merge them")
                writers[key] = node
                new[key] = value
            else:
                cur = new.get(key, ch.empty())
                new[key] = value if cur is None else ch.reducer(cur, value)
            if ch.origin is not None and new[key] is not None and not isinstance(new[key], ch.origin):
                raise GraphError(f"node {node!r} made {key!r} a {type(new[key]).__name__}; the schema says "
                                 f"{ch.origin.__name__}")
    return new


# ---- the graph ----------------------------------------------------------------------------------------

@dataclass
class _Branch:
    router: Callable[[dict], Any]
    path_map: dict[Hashable, str] | None


@dataclass
class Span:
    """One node execution: which step, when it started and ended (seconds since the run began)."""

    step: int
    node: str
    start: float
    end: float


@dataclass
class RunResult:
    """What one ``ainvoke`` produced.

    ``trace[0]`` is the state after the input (or the checkpoint resumed from), ``trace[k]`` after superstep k;
    ``steps[k-1]`` the sorted nodes of superstep k; ``routes`` ``(step, source, sorted targets)`` of every
    conditional edge taken; ``interrupts`` ``{node: payload}`` when the run paused (``status == "interrupted"``).
    """

    state: dict[str, Any]
    trace: list[dict[str, Any]]
    steps: list[list[str]]
    routes: list[tuple[int, str, tuple[str, ...]]]
    status: str = "done"
    interrupts: dict[str, Any] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    first_step: int = 1


class StateGraph:
    """Build a graph: ``add_node``, ``add_edge`` (a list of sources = a join), ``add_conditional_edges``."""

    def __init__(self, schema: type) -> None:
        self.schema = schema
        self.channels = channels_of(schema)
        self.nodes: dict[str, Callable] = {}
        self.edges: dict[str, list[str]] = {}
        self.joins: list[tuple[tuple[str, ...], str]] = []
        self.branches: dict[str, list[_Branch]] = {}

    def add_node(self, name: str, fn: Callable) -> StateGraph:
        """``fn(state) -> partial update`` (a dict or None); sync or ``async``."""
        if not isinstance(name, str) or not name or name in (START, END) or name.startswith("join:"):
            raise GraphError(f"bad node name {name!r}")
        if name in self.nodes:
            raise GraphError(f"node {name!r} is already in the graph")
        if not callable(fn):
            raise GraphError(f"node {name!r}: {fn!r} is not callable")
        self.nodes[name] = fn
        return self

    def add_edge(self, source: str | Sequence[str], target: str) -> StateGraph:
        """``a -> b``; with a list of sources, ``b`` runs once after *all* of them have run (fan-in barrier)."""
        if isinstance(source, str):
            self.edges.setdefault(source, []).append(target)
        else:
            if not source:
                raise GraphError("a join needs at least one source")
            self.joins.append((tuple(source), target))
        return self

    def add_conditional_edges(self, source: str, router: Callable[[dict], Any],
                              path_map: dict[Hashable, str] | Sequence[str] | None = None) -> StateGraph:
        """After ``source`` runs, ``router(state)`` names the next node(s): a name, a list of names (fan-out) or
        ``END``; with ``path_map`` the router returns keys that the map translates."""
        if not callable(router):
            raise GraphError(f"router for {source!r} is not callable")
        if path_map is not None and not isinstance(path_map, dict):
            path_map = {p: p for p in path_map}
        self.branches.setdefault(source, []).append(_Branch(router, path_map))
        return self

    def _validate(self) -> None:
        known = set(self.nodes) | {END}
        sources = set(self.edges) | set(self.branches) | {s for srcs, _ in self.joins for s in srcs}
        for s in sources:
            if s != START and s not in self.nodes:
                raise GraphError(f"edge from unknown node {s!r}; nodes: {sorted(self.nodes)}")
        targets = [t for ts in self.edges.values() for t in ts] + [t for _, t in self.joins]
        targets += [t for bs in self.branches.values() for b in bs if b.path_map for t in b.path_map.values()]
        for t in targets:
            if t not in known:
                raise GraphError(f"edge to unknown node {t!r}; nodes: {sorted(self.nodes)}")
        if START not in self.edges and START not in self.branches:
            raise GraphError("the graph has no entry: add_edge(START, first_node)")

    def compile(self, checkpointer: SQLiteCheckpointer | None = None, step_limit: int = 25) -> CompiledGraph:
        """Check the graph and return a runnable one (``step_limit`` supersteps per invocation)."""
        self._validate()
        if not isinstance(step_limit, int) or step_limit < 1:
            raise GraphError(f"step_limit={step_limit!r} must be a positive int")
        return CompiledGraph(self, checkpointer, step_limit)


class CompiledGraph:
    """A validated graph bound to a checkpointer; run it with ``await ainvoke(...)`` or ``invoke(...)``."""

    def __init__(self, graph: StateGraph, checkpointer: SQLiteCheckpointer | None, step_limit: int) -> None:
        self.graph = graph
        self.checkpointer = checkpointer
        self.step_limit = step_limit

    # -- routing --------------------------------------------------------------------------------------
    def successors(self, node: str, view: dict[str, Any], step: int,
                   routes: list[tuple[int, str, tuple[str, ...]]]) -> list[str]:
        """Triggers a finished ``node`` emits: plain edges, routed targets, ``join:<i>:<node>`` marks."""
        g = self.graph
        out = list(g.edges.get(node, []))
        for br in g.branches.get(node, []):
            picked = br.router(view)
            picked = [picked] if isinstance(picked, str) or not isinstance(picked, Iterable) else list(picked)
            if br.path_map is not None:
                try:
                    picked = [br.path_map[p] for p in picked]
                except KeyError as exc:
                    raise GraphError(f"router of {node!r} returned {exc.args[0]!r}, not in its path map "
                                     f"{sorted(map(str, br.path_map))}") from None
            for p in picked:
                if p != END and p not in g.nodes:
                    raise GraphError(f"router of {node!r} returned unknown node {p!r}; nodes: {sorted(g.nodes)}")
            routes.append((step, node, tuple(sorted(picked))))
            out += picked
        out += [f"join:{i}:{node}" for i, (srcs, _) in enumerate(g.joins) if node in srcs]
        return [t for t in out if t != END]

    def _commit_triggers(self, triggers: Iterable[str], barriers: dict[str, list[str]]) -> list[str]:
        nxt: set[str] = set()
        for t in triggers:
            if t.startswith("join:"):
                _, i, src = t.split(":", 2)
                seen = set(barriers.get(i, [])) | {src}
                srcs, target = self.graph.joins[int(i)]
                if seen >= set(srcs):
                    nxt.add(target)
                    barriers.pop(i, None)
                else:
                    barriers[i] = sorted(seen)
            else:
                nxt.add(t)
        return sorted(nxt)

    # -- one node ---------------------------------------------------------------------------------------
    async def _run_node(self, node: str, state: dict[str, Any], step: int, resumes: Sequence[Any],
                        t0: float, spans: list[Span], thread_id: str) -> tuple[dict, list[str], list]:
        ck = self.checkpointer
        token = _TASK.set(_TaskContext(resumes))
        start = time.perf_counter() - t0
        try:
            out = self.graph.nodes[node](copy.deepcopy(state))
            if inspect.isawaitable(out):
                out = await out
        finally:
            _TASK.reset(token)
            spans.append(Span(step, node, start, time.perf_counter() - t0))
        if out is not None and not isinstance(out, dict):
            raise GraphError(f"node {node!r} returned {type(out).__name__}; a node returns a dict update or None")
        out = out or {}
        view = apply_updates(state, [(node, out)], self.graph.channels)
        own_routes: list = []
        triggers = self.successors(node, view, step, own_routes)
        if ck is not None:  # saved the moment it finishes: a crash of a sibling later in the step keeps it
            ck.save_pending(thread_id, step, node, {"update": out, "triggers": triggers, "routes": own_routes})
        return out, triggers, own_routes

    # -- the loop ----------------------------------------------------------------------------------------
    async def ainvoke(self, inp: dict[str, Any] | Command | None, thread_id: str = "default") -> RunResult:
        """Run from ``inp`` (a fresh start), resume a paused run (``Command``) or a crashed one (``None``)."""
        ck = self.checkpointer
        resume: dict[str, list[Any]] = {}
        pending: dict[str, dict] = {}
        if isinstance(inp, dict):
            state = apply_updates({k: ch.empty() for k, ch in self.graph.channels.items() if ch.empty() is not None},
                                  [("__input__", inp)], self.graph.channels)
            routes: list = []
            nxt = self._commit_triggers(self.successors(START, state, 0, routes), {})
            step, barriers = 0, {}
            if ck is not None:
                ck.reset(thread_id)
                ck.save(thread_id, 0, state, nxt, barriers, routes)
        elif inp is None or isinstance(inp, Command):
            if ck is None:
                raise GraphError("resuming needs a checkpointer: compile(checkpointer=SQLiteCheckpointer(path))")
            saved = ck.latest(thread_id)
            if saved is None:
                raise GraphError(f"thread {thread_id!r} has no checkpoint to resume from")
            step, state, nxt, barriers = saved["step"], saved["state"], saved["next"], saved["barriers"]
            pending = ck.pending(thread_id, step + 1)
            paused = ck.interrupts(thread_id, step + 1)
            if isinstance(inp, Command):
                if not paused:
                    raise GraphError(f"thread {thread_id!r} is not waiting for a human (no pending interrupt)")
                answers = inp.resume if len(paused) > 1 else {next(iter(paused)): inp.resume}
                if not isinstance(answers, dict) or set(answers) != set(paused):
                    raise GraphError(f"several nodes wait for a human ({sorted(paused)}): "
                                     "resume with Command(resume={node: value, ...})")
                resume = {n: paused[n]["resumes"] + [answers[n]] for n in paused}
            elif paused:
                raise GraphError(f"thread {thread_id!r} waits for a human at {sorted(paused)}: "
                                 "resume with Command(resume=value)")
        else:
            raise GraphError(f"ainvoke takes a state dict, a Command or None, not {type(inp).__name__}")

        res = RunResult(state=state, trace=[state], steps=[], routes=[], first_step=step + 1)
        t0 = time.perf_counter()
        executed = 0
        while nxt:
            if executed >= self.step_limit:
                raise StepLimitError(f"step limit {self.step_limit} reached without finishing (nodes still "
                                     f"triggered: {nxt}); raise step_limit or give the cycle an exit")
            step += 1
            todo = [n for n in nxt if n not in pending]
            outs = await asyncio.gather(*(self._run_node(n, state, step, resume.get(n, ()), t0, res.spans, thread_id)
                                          for n in todo), return_exceptions=True)
            done = dict(pending)
            paused_now: dict[str, Any] = {}
            error: BaseException | None = None
            for n, out in zip(todo, outs):
                if isinstance(out, Interrupt):
                    paused_now[n] = out.value
                elif isinstance(out, BaseException):
                    error = error or out
                else:
                    done[n] = {"update": out[0], "triggers": out[1], "routes": out[2]}
            if error is not None:
                raise error
            if paused_now:
                if ck is None:
                    raise GraphError("interrupt() needs a checkpointer to resume from")
                for n, value in paused_now.items():
                    ck.save_interrupt(thread_id, step, n, value, resume.get(n, []))
                res.status, res.interrupts = "interrupted", paused_now
                res.state = apply_updates(state, [(n, d["update"]) for n, d in done.items()], self.graph.channels)
                return res
            state = apply_updates(state, [(n, d["update"]) for n, d in done.items()], self.graph.channels)
            step_routes = sorted(r for n in sorted(done) for r in done[n]["routes"])
            res.routes += step_routes
            nxt = self._commit_triggers([t for n in sorted(done) for t in done[n]["triggers"]], barriers)
            res.trace.append(state)
            res.steps.append(sorted(done))
            executed += 1
            pending, resume = {}, {}
            if ck is not None:
                ck.save(thread_id, step, state, nxt, barriers, step_routes)
        res.state = state
        return res

    def invoke(self, inp: dict[str, Any] | Command | None, thread_id: str = "default") -> RunResult:
        """Synchronous ``ainvoke`` (see :func:`run_sync`)."""
        return run_sync(self.ainvoke(inp, thread_id))


def run_sync(coro: typing.Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion: ``asyncio.run`` here, or in a worker thread when this thread already runs an
    event loop (a Jupyter kernel does), where ``asyncio.run`` is not allowed."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["err"] = exc

    th = threading.Thread(target=work)
    th.start()
    th.join()
    if "err" in box:
        raise box["err"]
    return box["out"]
