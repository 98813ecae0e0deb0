r"""Self-checking exercises of the policy-gradient chapters (Part 3: PG / actor-critic, GRPO).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore`, never retyped here).

* :func:`check_reinforce_returns` — REINFORCE's reward-to-go :math:`G_t = \sum_{k \ge t} \gamma^{k-t} r_{k+1}`;
* :func:`check_ppo_clip_loss` — PPO's clipped surrogate loss
  :math:`-\frac1B\sum_b \min(\rho_b A_b, \mathrm{clip}(\rho_b, 1-\epsilon, 1+\epsilon) A_b)`;
* :func:`check_group_advantages` — GRPO's :math:`(r_i - \bar r_g)/(\mathrm{std}_g + 10^{-4})` per group.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmcore.alignment.grpo import group_advantages
from llmcore.alignment.pg_ac import ppo_clip_objective
from llmcore.exercises.checking import run_cases
from llmcore.foundation_rl.gae import discounted_returns


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(map(ord, name)))  # fixed hidden cases per checker


def check_reinforce_returns(fn: Callable) -> int:
    r"""``fn(rewards, gamma) -> returns``: the reward-to-go of every step of one finished episode,
    :math:`G_t = \sum_{k=t}^{T-1}\gamma^{k-t} r_{k+1}`, for a float tensor ``rewards (T,)`` (``rewards[k]``
    is :math:`r_{k+1}`); returns ``(T,)``. REINFORCE weights :math:`\nabla\log\pi(a_t|s_t)` by ``returns[t]``."""
    g = _gen("reinforce_returns")
    cases = []
    for T, gamma in ((1, 0.9), (2, 0.5), (5, 0.0), (6, 1.0), (10, 0.99), (30, 0.9)):
        r = torch.round(torch.randn(T, generator=g, dtype=torch.float64) * 100) / 100
        ref = discounted_returns(r[:, None], torch.zeros(T, 1, dtype=torch.float64),
                                 torch.zeros(1, dtype=torch.float64), gamma)[:, 0]
        cases.append(({"rewards": r, "gamma": gamma}, ref))
    return run_cases("check_reinforce_returns", fn, cases)


def check_ppo_clip_loss(fn: Callable) -> int:
    r"""``fn(ratio, adv, clip) -> loss``: PPO's clipped surrogate *loss* (to minimise), the scalar
    :math:`-\mathrm{mean}_b \min(\rho_b A_b,\ \mathrm{clip}(\rho_b, 1-\epsilon, 1+\epsilon)A_b)` for float tensors
    ``ratio (B,)``, ``adv (B,)`` and ``clip`` :math:`=\epsilon`."""
    g = _gen("ppo_clip_loss")
    cases = []
    for B, clip in ((1, 0.2), (4, 0.2), (16, 0.1), (64, 0.2), (64, 0.3), (256, 0.2)):
        ratio = torch.exp(0.4 * torch.randn(B, generator=g, dtype=torch.float64))  # both sides of the clip range
        adv = torch.randn(B, generator=g, dtype=torch.float64)
        cases.append(({"ratio": ratio, "adv": adv, "clip": clip}, -ppo_clip_objective(ratio, adv, clip).mean()))
    # hand-made: one sample in each of the four regions (A > 0 / A < 0, ratio above / below the range)
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0], dtype=torch.float64)
    cases.append(({"ratio": ratio, "adv": adv, "clip": 0.2}, -ppo_clip_objective(ratio, adv, 0.2).mean()))
    return run_cases("check_ppo_clip_loss", fn, cases)


def check_group_advantages(fn: Callable) -> int:
    r"""``fn(rewards, group_size) -> advantages``: GRPO's group-relative advantages for a float tensor
    ``rewards (N,)`` laid out group after group (``N = n_groups * group_size``):
    :math:`\hat A_i = (r_i - \bar r_g)/(s_g + 10^{-4})` with :math:`s_g` the *unbiased* (``n - 1``) standard
    deviation of the group (as ``torch.std`` and TRL compute it). A group whose rewards are all equal gets 0."""
    g = _gen("group_advantages")
    cases = []
    for n_groups, size in ((1, 2), (3, 4), (8, 4), (4, 8), (2, 16)):
        correct = (torch.rand(n_groups * size, generator=g) < 0.5).double()
        terse = (torch.rand(n_groups * size, generator=g) < 0.7).double()
        r = correct + 0.1 * terse
        if n_groups > 2:  # an all-right and an all-wrong group: zero std, zero advantage
            r[:size], r[size:2 * size] = 1.1, 0.0
        cases.append(({"rewards": r, "group_size": size}, group_advantages(r, size, "group")))
    r = torch.round(torch.randn(12, generator=g, dtype=torch.float64) * 100) / 100  # continuous rewards
    cases.append(({"rewards": r, "group_size": 3}, group_advantages(r, 3, "group")))
    return run_cases("check_group_advantages", fn, cases, atol=1e-5)


__all__ = ["check_group_advantages", "check_ppo_clip_loss", "check_reinforce_returns"]
