"""The Memory & RAG checkers accept a correct solution and reject plausible mistakes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llmcore.exercises import check_bm25_scores, check_reciprocal_rank_fusion


def bm25_scores(corpus, query, k1=1.5, b=0.75, eps=0.25):
    n, avgdl = len(corpus), sum(map(len, corpus)) / len(corpus)
    vocab = list(dict.fromkeys(t for d in corpus for t in d))
    df = {t: sum(t in d for d in corpus) for t in vocab}
    idf = {t: math.log(n - df[t] + 0.5) - math.log(df[t] + 0.5) for t in vocab}
    floor = eps * sum(idf.values()) / len(idf)
    idf = {t: (v if v >= 0 else floor) for t, v in idf.items()}
    out = np.zeros(n)
    for t in query:
        for i, d in enumerate(corpus):
            f = d.count(t)
            out[i] += idf.get(t, 0.0) * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
    return out


def rrf(rankings, k):
    score = {}
    for r in rankings:
        for pos, d in enumerate(r, 1):
            score[d] = score.get(d, 0) + 1 / (k + pos)
    return sorted(score, key=lambda d: -score[d])


def test_bm25_checker():
    assert check_bm25_scores(bm25_scores) == 5
    # hand case: one document, one query term it contains once: idf = ln(0.5 / 1.5) < 0, mean idf = itself
    assert bm25_scores([["a"]], ["a"])[0] == pytest.approx(0.25 * math.log(0.5 / 1.5))
    with pytest.raises(AssertionError):  # no length normalisation
        check_bm25_scores(lambda corpus, query: bm25_scores(corpus, query, b=0.0))


def test_rrf_checker():
    assert check_reciprocal_rank_fusion(rrf) == 5
    with pytest.raises(AssertionError):  # concatenation instead of fusion
        check_reciprocal_rank_fusion(lambda rankings, k: list(dict.fromkeys(d for r in rankings for d in r)))
