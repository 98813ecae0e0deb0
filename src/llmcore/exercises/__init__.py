"""Self-checking exercises: ``check_<name>(fn)`` runs your function on hidden cases against the book's
reference implementation, prints one PASS line, or raises an AssertionError that says which input,
what was expected and what came back.

    >>> from llmcore.exercises import check_gae
    >>> check_gae(my_gae)  # doctest: +SKIP
    PASS check_gae: 6 hidden cases agree with the book's reference implementation
"""

from llmcore.exercises.engineering import (  # Part 4 (engineering)
    check_allreduce_time,
    check_column_parallel_split,
    check_pipeline_bubble,
    check_ring_allreduce_bytes,
    check_zero_memory,
)
from llmcore.exercises.foundation_rl import (
    check_bellman_q,
    check_discounted_return,
    check_double_q_target,
    check_gae,
)

__all__ = ["check_bellman_q", "check_discounted_return", "check_double_q_target", "check_gae"]
__all__ += ["check_allreduce_time", "check_column_parallel_split", "check_pipeline_bubble",  # Part 4
            "check_ring_allreduce_bytes", "check_zero_memory"]
