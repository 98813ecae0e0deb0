r"""Self-checking exercise of Part 5 (Multi-Agent Systems).

* :func:`check_context_window` — which messages a sliding context window keeps: the system and task messages
  always, then the longest suffix of the rest that fits the budget, without a tool result whose call slid out.
  The expected answer is the book's :func:`llmcore.agents.multi_agent.agents.window_mask`, the function every agent
  of the chapter uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmcore.agents.multi_agent.agents import window_mask
from llmcore.exercises.checking import run_cases


def _conversation(rng: np.random.Generator, n_pairs: int) -> tuple[list[int], list[str]]:
    sizes = [int(rng.integers(10, 60)), int(rng.integers(20, 120))]
    roles = ["system", "user"]
    for _ in range(n_pairs):
        sizes += [int(rng.integers(15, 40)), int(rng.integers(5, 220))]
        roles += ["assistant", "tool"]
    return sizes, roles


def check_context_window(fn: Callable) -> int:
    r"""``fn(sizes, roles, budget) -> keep``: ``sizes`` the token count of each message, ``roles`` their roles
    (``system``, ``user``, then ``assistant``/``tool`` pairs), ``budget`` the window in tokens. Return a 0/1 list
    ``keep`` (1 = the model is shown that message): messages 0 and 1 always; of the rest the longest suffix whose
    tokens, plus messages 0 and 1, plus 2 framing tokens, fit ``budget``; then drop leading ``tool`` messages of
    that suffix (their call is gone)."""
    rng = np.random.default_rng(sum(map(ord, "context_window")))
    cases = [([10, 20], ["system", "user"], 100),
             ([10, 20, 30, 100, 30, 40], ["system", "user", "assistant", "tool", "assistant", "tool"], 104),
             ([10, 20, 30, 100, 30, 40], ["system", "user", "assistant", "tool", "assistant", "tool"], 210),
             ([10, 20, 30, 100, 30, 40], ["system", "user", "assistant", "tool", "assistant", "tool"], 1000)]
    for n, budget in ((3, 300), (6, 448), (8, 448), (10, 900), (5, 250)):
        sizes, roles = _conversation(rng, n)
        cases.append((sizes, roles, max(budget, 2 + sizes[0] + sizes[1])))
    return run_cases("check_context_window", fn,
                     [({"sizes": s, "roles": r, "budget": b}, window_mask(s, r, b)) for s, r, b in cases])
