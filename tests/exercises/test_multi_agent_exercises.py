"""The context-window checker accepts a correct window and rejects the usual wrong ones."""

from __future__ import annotations

import pytest

from llmcore.exercises import check_context_window


def good(sizes, roles, budget, keep_orphans=False, oldest=False):
    keep = [1, 1] + [0] * (len(sizes) - 2)
    used = 2 + sizes[0] + sizes[1]
    order = range(2, len(sizes)) if oldest else range(len(sizes) - 1, 1, -1)
    for i in order:
        if used + sizes[i] > budget:
            break
        keep[i], used = 1, used + sizes[i]
    if not keep_orphans:
        for i in range(2, len(sizes)):
            if keep[i] and roles[i] == "tool" and not keep[i - 1]:
                keep[i] = 0
            elif keep[i]:
                break
    return keep


def test_accepts_a_window(capsys):
    assert check_context_window(good) == 9
    assert capsys.readouterr().out.startswith("PASS check_context_window")
    # hand case: head 10 + 20 + 2 framing = 32; the newest pair (30 + 40) fits 104, the tool result of 100 does not
    assert good([10, 20, 30, 100, 30, 40], ["system", "user", "assistant", "tool", "assistant", "tool"], 104) == \
        [1, 1, 0, 0, 1, 1]


@pytest.mark.parametrize("wrong", [
    lambda sizes, roles, budget: good(sizes, roles, budget, keep_orphans=True),  # shows a result without its call
    lambda sizes, roles, budget: good(sizes, roles, budget, oldest=True),        # keeps the oldest, not the newest
])
def test_rejects(wrong):
    with pytest.raises(AssertionError, match="check_context_window: case"):
        check_context_window(wrong)
