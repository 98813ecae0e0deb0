"""The data & evaluation checkers accept the book's reference and a correct rewrite, and reject wrong answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcore.alignment.data_eval.dedup import estimate_jaccard
from llmcore.alignment.data_eval.metrics import pass_at_k, pass_at_k_naive
from llmcore.exercises import check_jaccard_estimate, check_pass_at_k


def comb_pass_at_k(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_accepts_reference_and_binomials(capsys):
    assert check_pass_at_k(pass_at_k) == 10
    assert check_pass_at_k(comb_pass_at_k) == 10  # math.comb(a, k) is 0 for a < k
    assert capsys.readouterr().out.splitlines()[-1].startswith("PASS check_pass_at_k")


@pytest.mark.parametrize("wrong", [pass_at_k_naive, lambda n, c, k: c / n,
                                   lambda n, c, k: 1 - math.comb(n - c, k) / math.comb(n, k - 1 or 1)])
def test_pass_at_k_rejects(wrong):
    with pytest.raises(AssertionError, match="check_pass_at_k: case"):
        check_pass_at_k(wrong)


def test_jaccard_estimate():
    assert check_jaccard_estimate(estimate_jaccard) == 4
    assert check_jaccard_estimate(lambda sig_a, sig_b: np.count_nonzero(sig_a == sig_b) / len(sig_a)) == 4
    with pytest.raises(AssertionError, match="check_jaccard_estimate"):
        check_jaccard_estimate(lambda sig_a, sig_b: len(set(sig_a) & set(sig_b)) / len(set(sig_a) | set(sig_b)))
