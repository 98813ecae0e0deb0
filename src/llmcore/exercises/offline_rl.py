r"""Self-checking exercises of Part 6 (offline RL).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the implementation the
chapter shows (imported from :mod:`llmcore.offline_rl`, never retyped here).

* :func:`check_behaviour_cloning` — offline RL: tabular BC, :math:`\hat\beta(a|s) = n(s,a)/n(s)`;
* :func:`check_cql_loss` — BCQ / CQL: :math:`\alpha[\log\sum_{a'}e^{Q(s,a')} - Q(s,a)] + \tfrac12(Q(s,a)-y)^2`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from llmcore.exercises.checking import run_cases
from llmcore.offline_rl.bcq_cql import cql_loss
from llmcore.offline_rl.offline_rl import Dataset, empirical_mdp


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_behaviour_cloning(fn: Callable) -> int:
    r"""``fn(obs, actions, n_states, n_actions) -> probs``: the tabular behaviour-cloning policy ``(S, A)`` from a
    dataset's integer states and actions ``(N,)``: the fraction of times each action was taken in each state,
    and the uniform distribution in states the data never visit."""
    rng = _rng("behaviour_cloning")
    cases = []
    for S, A, N in ((1, 2, 3), (3, 2, 5), (5, 4, 20), (6, 3, 4), (10, 4, 200)):
        obs, act = rng.integers(S, size=N), rng.integers(A, size=N)
        z = np.zeros(N)
        data = Dataset("case", obs, act, z, obs, z.astype(bool), z.astype(bool), np.full((N, A), 1 / A), z[:1])
        cases.append(({"obs": obs, "actions": act, "n_states": S, "n_actions": A},
                      empirical_mdp(data, S, A, 0.9).behaviour))
    return run_cases("check_behaviour_cloning", fn, cases)


def check_cql_loss(fn: Callable) -> int:
    r"""``fn(q, actions, target, alpha) -> loss``: the discrete CQL(H) loss averaged over a batch, ``q (B, A)``,
    ``actions (B,)`` (long), ``target (B,)`` float64 tensors, ``alpha`` a float; returns a scalar (tensor or float):
    :math:`\frac1B\sum_i \alpha\,[\log\sum_{a'} e^{Q(s_i,a')} - Q(s_i,a_i)] + \tfrac12 (Q(s_i,a_i) - y_i)^2`."""
    rng = _rng("cql_loss")
    cases = []
    for B, A, alpha in ((1, 2, 1.0), (4, 2, 0.0), (8, 3, 0.5), (16, 4, 5.0), (5, 6, 1e-3)):
        q = torch.tensor(rng.normal(size=(B, A)) * 3)
        a = torch.tensor(rng.integers(A, size=B))
        y = torch.tensor(rng.normal(size=B) * 3)
        cases.append(({"q": q, "actions": a, "target": y, "alpha": alpha}, float(cql_loss(q, a, y, alpha)[0])))
    return run_cases("check_cql_loss", fn, cases, atol=1e-9)
