"""The superstep-schedule checker accepts a correct simulation and rejects the usual wrong answers."""

from __future__ import annotations

import numpy as np
import pytest

from llmcore.exercises import check_superstep_schedule


def good(nodes, edges, joins, plain_joins=False, bfs=False):
    runs, seen, frontier = [], {i: set() for i in range(len(joins))}, {nodes[0]}
    first: dict[str, int] = {}
    while frontier:
        runs.append(sorted(frontier))
        nxt = set()
        for a in frontier:
            first.setdefault(a, len(runs))
            nxt |= {b for x, b in edges if x == a}
            for i, (srcs, b) in enumerate(joins):
                if a in srcs:
                    if plain_joins:
                        nxt.add(b)
                        continue
                    seen[i].add(a)
                    if seen[i] >= set(srcs):
                        nxt.add(b)
                        seen[i] = set()
        if bfs:  # wrong: a node runs only once, at its shortest distance
            nxt = {n for n in nxt if n not in first}
        frontier = nxt
    out = np.zeros((len(nodes), len(runs)))
    for k, ran in enumerate(runs):
        for n in ran:
            out[nodes.index(n), k] = 1
    return out


def test_accepts_a_simulation(capsys):
    assert check_superstep_schedule(good) == 8
    assert capsys.readouterr().out.startswith("PASS check_superstep_schedule")
    # hand case: a diamond with one long arm -- d runs after c (step 3) and again after b2 (step 4)
    runs = good(["a", "b", "b2", "c", "d"], [("a", "b"), ("b", "b2"), ("a", "c"), ("b2", "d"), ("c", "d")], [])
    assert runs[4].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("wrong", [
    lambda nodes, edges, joins: good(nodes, edges, joins, plain_joins=True),  # a join that does not wait
    lambda nodes, edges, joins: good(nodes, edges, joins, bfs=True),          # every node once
])
def test_rejects(wrong):
    with pytest.raises(AssertionError, match="check_superstep_schedule: case"):
        check_superstep_schedule(wrong)
