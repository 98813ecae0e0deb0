"""Self-checking exercises: ``check_<name>(fn)`` runs your function on hidden cases against the book's
reference implementation, prints one PASS line, or raises an AssertionError that says which input,
what was expected and what came back.

    >>> from llmcore.exercises import check_gae
    >>> check_gae(my_gae)  # doctest: +SKIP
    PASS check_gae: 6 hidden cases agree with the book's reference implementation
"""

from llmcore.exercises.alignment import (
    check_bradley_terry_loss,
    check_dpo_loss,
    check_masked_sft_loss,
    check_sft_loss_mask,
)
from llmcore.exercises.foundation_rl import (
    check_bellman_q,
    check_discounted_return,
    check_double_q_target,
    check_gae,
)

__all__ = ["check_bellman_q", "check_bradley_terry_loss", "check_discounted_return", "check_double_q_target",
           "check_dpo_loss", "check_gae", "check_masked_sft_loss", "check_sft_loss_mask"]
