"""Self-checking exercises of the agent-orchestration chapter.

* :func:`check_calculator` -- a safe integer calculator (``+ - *``, parentheses, unary minus) by walking
  Python's ``ast``, compared with the agents' own tool :func:`llmcore.agents.agent_orchestration.calculate`;
* :func:`check_search_score` -- the fact base's word-overlap score, compared with the ``search`` tool's.
"""

from __future__ import annotations

from collections.abc import Callable

from llmcore.agents.agent_orchestration import calculate
from llmcore.agents.agent_orchestration.world import words
from llmcore.exercises.checking import run_cases

_EXPRESSIONS = ("47 * 6", "12 + 30", "99 - 17", "2 * (3 + 4)", "-5 + 8", "10 - 2 - 3", "2 + 3 * 4", "(1 + 2) * (3 - 7)",
                " 7*8 ")


def check_calculator(fn: Callable) -> int:
    """``fn(expression: str) -> int``: the value of integer arithmetic with ``+ - *``, parentheses and unary
    minus, respecting precedence (no ``eval``!)."""
    return run_cases("check_calculator", fn, [({"expression": e}, calculate(e)) for e in _EXPRESSIONS], atol=0)


_PAIRS = (("capital of koriba", "the capital of koriba is zamute."),
          ("capital of koriba", "the river of koriba is lomu."),
          ("Capital of KORIBA?", "the capital of koriba is zamute."),
          ("population of zamute", "the capital of koriba is zamute."),
          ("zz", "the capital of koriba is zamute."),
          ("river 12 of 12", "the river of teba is 12."))


def check_search_score(fn: Callable) -> int:
    """``fn(query: str, fact: str) -> int``: the number of distinct lower-cased words (runs of ``a-z0-9``)
    that the query and the fact share -- the ``search`` tool ranks facts by it."""
    return run_cases("check_search_score", fn,
                     [({"query": q, "fact": f}, len(words(q) & words(f))) for q, f in _PAIRS], atol=0)
