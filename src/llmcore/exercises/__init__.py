"""Self-checking exercises: ``check_<name>(fn)`` runs your function on hidden cases against the book's
reference implementation, prints one PASS line, or raises an AssertionError that says which input,
what was expected and what came back.

    >>> from llmcore.exercises import check_gae
    >>> check_gae(my_gae)  # doctest: +SKIP
    PASS check_gae: 6 hidden cases agree with the book's reference implementation
"""

from llmcore.exercises.architecture import check_online_softmax, check_repeat_kv, check_rmsnorm, check_rope
from llmcore.exercises.foundation_rl import (
    check_bellman_q,
    check_discounted_return,
    check_double_q_target,
    check_gae,
)

__all__ = ["check_bellman_q", "check_discounted_return", "check_double_q_target", "check_gae",
           "check_online_softmax", "check_repeat_kv", "check_rmsnorm", "check_rope"]
