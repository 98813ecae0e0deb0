r"""Self-checking exercises of Part 1 (RL foundations).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.foundation_rl`, never retyped here).

* :func:`check_discounted_return` — overview: :math:`G_0 = \sum_k \gamma^k r_{k+1}`;
* :func:`check_bellman_q` — MDP: :math:`Q(s,a) = R(s,a) + \gamma \sum_{s'} P(s'|s,a) V(s')`;
* :func:`check_double_q_target` — TD: :math:`r + \gamma(1-d)\,Q_B(s', \arg\max_{a'} Q_A(s',a'))`;
* :func:`check_gae` — GAE: :math:`\hat A_t = \delta_t + \gamma\lambda(1-d_t)\hat A_{t+1}`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from llmcore.exercises.checking import run_cases
from llmcore.foundation_rl.gae import compute_gae, discounted_returns
from llmcore.foundation_rl.mdp import TabularMDP, q_from_v
from llmcore.foundation_rl.td_learning import double_q_target


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_discounted_return(fn: Callable) -> int:
    r"""``fn(rewards, gamma) -> float``: the return :math:`G_0 = \sum_{k=0}^{T-1}\gamma^k r_{k+1}` of one
    finished episode, ``rewards`` a 1-D NumPy array ``(T,)`` (``rewards[k]`` is :math:`r_{k+1}`)."""
    rng = _rng("discounted_return")
    cases = []
    for T, gamma in ((1, 0.9), (3, 0.5), (5, 1.0), (8, 0.99), (12, 0.0), (20, 0.9)):
        r = np.round(rng.normal(size=T), 3)
        ref = discounted_returns(torch.tensor(r, dtype=torch.float64)[:, None], torch.zeros(T, 1, dtype=torch.float64),
                                 torch.zeros(1, dtype=torch.float64), gamma)
        cases.append(({"rewards": r, "gamma": gamma}, float(ref[0, 0])))
    return run_cases("check_discounted_return", fn, cases)


def check_bellman_q(fn: Callable) -> int:
    r"""``fn(P, R, gamma, V) -> Q``: one Bellman expectation backup from state values to action values,
    ``P (S, A, S)``, ``R (S, A)``, ``V (S,)`` NumPy arrays; returns ``Q (S, A)``."""
    rng = _rng("bellman_q")
    cases = []
    for S, A, gamma in ((1, 1, 0.9), (2, 2, 0.5), (4, 3, 0.99), (6, 4, 0.0), (5, 2, 1.0)):
        P = rng.random((S, A, S)) ** 3
        P /= P.sum(-1, keepdims=True)
        R, V = np.round(rng.normal(size=(S, A)), 3), np.round(rng.normal(size=S), 3)
        mdp = TabularMDP(P=P, Pc=P, R=R, gamma=gamma, mu0=np.eye(S)[0])
        cases.append(({"P": P, "R": R, "gamma": gamma, "V": V}, q_from_v(mdp, V)))
    return run_cases("check_bellman_q", fn, cases)


def check_double_q_target(fn: Callable) -> int:
    r"""``fn(q_select, q_eval, reward, gamma, terminated) -> float``: Double Q-learning's target for one
    transition; ``q_select``/``q_eval`` are the rows :math:`Q_A(s',\cdot)`, :math:`Q_B(s',\cdot)` ``(A,)``,
    ``terminated`` a bool. Ties in the argmax go to the lowest index (``np.argmax``)."""
    rng = _rng("double_q_target")
    cases = []
    for A, gamma, term in ((2, 1.0, False), (4, 0.9, False), (4, 0.9, True), (10, 0.99, False), (3, 0.5, False),
                           (6, 1.0, True)):
        qa, qb = np.round(rng.normal(size=A), 2), np.round(rng.normal(size=A), 2)
        r = float(np.round(rng.normal(), 2))
        cases.append(({"q_select": qa, "q_eval": qb, "reward": r, "gamma": gamma, "terminated": term},
                      float(double_q_target(qa, qb, r, gamma, term))))
    return run_cases("check_double_q_target", fn, cases)


def check_gae(fn: Callable) -> int:
    r"""``fn(rewards, values, dones, last_value, gamma, lam) -> advantages``: GAE(γ, λ) on ``(T, N)``
    float tensors (``last_value (N,)``; ``dones[t] = 1`` ends the episode at step ``t``). Returning the
    pair ``(advantages, returns)`` is accepted too."""
    rng = _rng("gae")
    cases = []
    for T, N, gamma, lam in ((1, 1, 0.9, 0.8), (3, 1, 0.9, 0.8), (6, 2, 0.99, 0.95), (8, 3, 0.9, 0.0),
                             (8, 3, 0.9, 1.0), (16, 4, 0.97, 0.9)):
        r = torch.tensor(rng.normal(size=(T, N)))
        v = torch.tensor(rng.normal(size=(T, N)))
        d = torch.tensor((rng.random((T, N)) < 0.25).astype(float))
        last = torch.tensor(rng.normal(size=N))
        adv, _ = compute_gae(r, v, d, last, gamma, lam)
        cases.append(({"rewards": r, "values": v, "dones": d, "last_value": last, "gamma": gamma, "lam": lam}, adv))

    def first(**kw):
        out = fn(**kw)
        return out[0] if isinstance(out, tuple) else out

    return run_cases("check_gae", first, cases)
