r"""Self-checking exercises of the Mixture-of-Experts chapter (Part 2).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.architecture.moe`, never retyped here).

* :func:`check_load_balancing_loss` — Switch's :math:`E \sum_e f_e P_e`;
* :func:`check_capacity_keep` — which assignments fit in :math:`C` slots per expert (first choices first).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from llmcore.architecture.moe import capacity_keep, load_balancing_loss
from llmcore.exercises.checking import run_cases


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_load_balancing_loss(fn: Callable) -> int:
    r"""``fn(probs, idx, n_experts) -> loss``: router probabilities ``probs (N, E)`` (float), chosen experts
    ``idx (N, k)`` (long); return :math:`E \sum_e f_e P_e` with :math:`f_e` = (assignments to ``e``) / ``N`` and
    :math:`P_e` = mean of ``probs[:, e]`` (a scalar)."""
    rng = _rng("load_balancing_loss")
    cases = []
    for N, E, k in ((4, 2, 1), (8, 4, 1), (8, 4, 2), (16, 8, 2), (5, 3, 3), (32, 8, 1)):
        probs = torch.tensor(rng.dirichlet(np.ones(E), size=N), dtype=torch.float32)
        idx = probs.topk(k, dim=-1).indices
        cases.append(({"probs": probs, "idx": idx, "n_experts": E}, load_balancing_loss(probs, idx, E)))
    return run_cases("check_load_balancing_loss", fn, cases, atol=1e-5)


def check_capacity_keep(fn: Callable) -> int:
    """``fn(idx, n_experts, cap) -> keep``: ``idx (N, k)`` chosen experts; ``keep (N, k)`` bool, True where the
    assignment gets one of its expert's ``cap`` slots. Priority: every token's first choice (column 0), in
    token order, before any second choice, and so on."""
    rng = _rng("capacity_keep")
    cases = []
    for N, E, k, cap in ((6, 2, 1, 2), (8, 4, 2, 3), (10, 3, 2, 4), (12, 4, 1, 1), (9, 3, 3, 9), (16, 8, 2, 2)):
        idx = torch.stack([torch.tensor(rng.permutation(E)[:k]) for _ in range(N)])
        cases.append(({"idx": idx, "n_experts": E, "cap": cap}, capacity_keep(idx, E, cap)))
    return run_cases("check_capacity_keep", fn, cases)
