r"""Self-checking exercise of the Agentic RL chapter.

* :func:`check_per_turn_gae` — GAE over the *turns* of a batch of dialogues of different lengths: the
  per-turn credit of PPO in the multi-turn loop (:func:`llmcore.alignment.agentic_rl.multiturn.per_turn_gae`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmcore.alignment.agentic_rl.multiturn import per_turn_gae
from llmcore.exercises.checking import run_cases


def check_per_turn_gae(fn: Callable) -> int:
    r"""``fn(rewards, values, turn_mask, gamma, lam) -> advantages``: GAE over turns for float tensors
    ``rewards, values, turn_mask`` of shape ``(B, K)`` (``turn_mask[b, k] = 1`` where dialogue ``b`` had a
    turn ``k``; turns are contiguous from 0). The last turn of each dialogue is terminal (nothing after it is
    bootstrapped): :math:`\delta_k = r_k + \gamma V_{k+1}[k+1 \text{ exists}] - V_k`,
    :math:`\hat A_k = \delta_k + \gamma\lambda \hat A_{k+1}`; advantages after the last turn are 0."""
    g = torch.Generator().manual_seed(sum(map(ord, "per_turn_gae")))
    cases = []
    for B, K, gamma, lam in ((1, 1, 1.0, 0.95), (2, 3, 1.0, 1.0), (3, 4, 1.0, 0.0), (4, 6, 0.9, 0.95),
                             (8, 6, 1.0, 0.9), (5, 2, 0.5, 0.5)):
        n = torch.randint(1, K + 1, (B,), generator=g)
        n[0] = K  # one dialogue uses every turn
        tmask = (torch.arange(K)[None] < n[:, None]).double()
        rewards = (torch.full((B, K), -0.1, dtype=torch.float64)
                   + (torch.arange(K)[None] == n[:, None] - 1) * (torch.rand(B, 1, generator=g) < 0.6)) * tmask
        values = torch.round(torch.rand(B, K, generator=g, dtype=torch.float64) * 100) / 100
        cases.append(({"rewards": rewards, "values": values, "turn_mask": tmask, "gamma": gamma, "lam": lam},
                       per_turn_gae(rewards, values, tmask, gamma, lam)[0]))
    return run_cases("check_per_turn_gae", fn, cases)


__all__ = ["check_per_turn_gae"]
