r"""Self-checking exercise of Part 5 (Mesh & State Machine).

* :func:`check_superstep_schedule` — which nodes run in which superstep of a bulk-synchronous graph run: a plain
  edge ``a -> b`` triggers ``b`` in the step after ``a`` runs (once per step, however many edges fire), a join
  ``[a, b] -> c`` triggers ``c`` in the step after the last of its sources has run. The expected answer is
  what the book's engine (:mod:`llmcore.agents.graph`) actually schedules, never a retyped rule.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, TypedDict

import numpy as np

from llmcore.agents.graph.engine import START, StateGraph
from llmcore.exercises.checking import run_cases


class _Log(TypedDict):
    log: Annotated[list[str], operator.add]


def _engine_schedule(nodes: list[str], edges: list[tuple[str, str]],
                     joins: list[tuple[tuple[str, ...], str]]) -> np.ndarray:
    g = StateGraph(_Log)
    for n in nodes:
        g.add_node(n, (lambda name: (lambda state: {"log": [name]}))(n))
    g.add_edge(START, nodes[0])
    for a, b in edges:
        g.add_edge(a, b)
    for srcs, b in joins:
        g.add_edge(list(srcs), b)
    steps = g.compile(step_limit=1000).invoke({}).steps
    out = np.zeros((len(nodes), len(steps)))
    for k, ran in enumerate(steps):
        for n in ran:
            out[nodes.index(n), k] = 1
    return out


def _random_dag(rng: np.random.Generator, k: int) -> tuple[list[str], list, list]:
    nodes = [f"n{i}" for i in range(k)]
    edges, joins = [], []
    for i in range(1, k):
        preds = sorted(set(rng.choice(i, size=min(i, int(rng.integers(1, 3))), replace=False).tolist()))
        if len(preds) == 2 and rng.random() < 0.5:
            joins.append((tuple(nodes[p] for p in preds), nodes[i]))
        else:
            edges += [(nodes[p], nodes[i]) for p in preds]
    return nodes, edges, joins


def check_superstep_schedule(fn: Callable) -> int:
    r"""``fn(nodes, edges, joins) -> runs``: ``nodes`` a list of names (``nodes[0]`` is entered from START),
    ``edges`` a list of ``(a, b)``, ``joins`` a list of ``((a1, a2, ...), b)``; an acyclic graph without routers.
    Return ``runs``, a 0/1 array of shape ``(len(nodes), n_steps)``: ``runs[i, k] = 1`` when ``nodes[i]`` runs in
    superstep ``k + 1``, with one column per superstep up to the last one that runs anything."""
    rng = np.random.default_rng(sum(map(ord, "superstep_schedule")))
    cases = [(["a"], [], []),
             (["a", "b", "c", "d"], [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], []),
             (["a", "b", "b2", "c", "d"], [("a", "b"), ("b", "b2"), ("a", "c")], [(("b2", "c"), "d")]),
             (["a", "b", "b2", "c", "d"], [("a", "b"), ("b", "b2"), ("a", "c"), ("b2", "d"), ("c", "d")], [])]
    cases += [_random_dag(rng, int(k)) for k in (5, 7, 9, 12)]
    return run_cases("check_superstep_schedule", fn,
                     [({"nodes": n, "edges": e, "joins": j}, _engine_schedule(n, e, j)) for n, e, j in cases])
