"""The MoE chapter's checkers accept the book's reference and a rewrite, and reject plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from llmcore.architecture.moe import capacity_keep, load_balancing_loss
from llmcore.exercises import check_capacity_keep, check_load_balancing_loss


def rewritten_aux(probs, idx, n_experts):
    f = torch.zeros(n_experts)
    for e in idx.reshape(-1).tolist():
        f[e] += 1.0 / idx.shape[0]
    return n_experts * sum(f[e] * probs[:, e].mean() for e in range(n_experts))


def rewritten_keep(idx, n_experts, cap):
    N, k = idx.shape
    used, keep = [0] * n_experts, torch.zeros(N, k, dtype=torch.bool)
    for j in range(k):
        for n in range(N):
            e = int(idx[n, j])
            keep[n, j] = used[e] < cap
            used[e] += 1
    return keep


def test_aux_checker(capsys):
    assert check_load_balancing_loss(load_balancing_loss) == 6
    assert check_load_balancing_loss(rewritten_aux) == 6
    assert "PASS check_load_balancing_loss" in capsys.readouterr().out
    with pytest.raises(AssertionError):  # divides by N k: 1 instead of k at balance
        check_load_balancing_loss(lambda probs, idx, n_experts: load_balancing_loss(probs, idx, n_experts) / idx.shape[1])


def test_capacity_checker():
    assert check_capacity_keep(capacity_keep) == 6
    assert check_capacity_keep(rewritten_keep) == 6

    def token_major(idx, n_experts, cap):  # second choices of early tokens before first choices of later ones
        N, k = idx.shape
        return rewritten_keep(idx.reshape(1, -1), n_experts, cap).reshape(N, k) if k > 1 else capacity_keep(idx, n_experts, cap)

    with pytest.raises(AssertionError):
        check_capacity_keep(token_major)
