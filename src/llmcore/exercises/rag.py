r"""Self-checking exercises of Part 5 (Memory & RAG).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the implementation the
chapter shows (imported from :mod:`llmcore.agents.rag`, never retyped here).

* :func:`check_bm25_scores` — Okapi BM25 with rank_bm25's idf floor;
* :func:`check_reciprocal_rank_fusion` — :math:`\mathrm{RRF}(d) = \sum_r 1/(k + \mathrm{rank}_r(d))`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmcore.agents.rag.retrieval import BM25, rrf
from llmcore.exercises.checking import run_cases


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_bm25_scores(fn: Callable) -> int:
    r"""``fn(corpus, query) -> scores``: ``corpus`` a list of token lists, ``query`` a token list (repeats count);
    returns the ``(N,)`` Okapi BM25 scores with ``k1=1.5, b=0.75``, idf :math:`\ln\frac{N-n_t+0.5}{n_t+0.5}` and a
    negative idf replaced by :math:`0.25\times` the mean idf over the vocabulary."""
    rng = _rng("bm25_scores")
    words = list("abcdefghij")
    cases = []
    for n_docs, vocab, q_len in ((1, 3, 1), (3, 4, 2), (5, 6, 3), (8, 10, 4), (20, 10, 6)):
        corpus = [[words[i] for i in rng.integers(vocab, size=rng.integers(1, 9))] for _ in range(n_docs)]
        query = [words[i] for i in rng.integers(vocab + 1, size=q_len)] if vocab < 10 else list("aajz")
        cases.append(({"corpus": corpus, "query": query}, BM25(corpus).scores(query)))
    return run_cases("check_bm25_scores", fn, cases, atol=1e-9)


def check_reciprocal_rank_fusion(fn: Callable) -> int:
    """``fn(rankings, k) -> fused``: ``rankings`` a list of rankings (lists of ids, best first), ``k`` the RRF
    constant; returns all ids, sorted by :math:`\\sum_r 1/(k + \\mathrm{rank}_r)` (ranks from 1), ties in the order
    the ids are first met reading the rankings one after the other."""
    rng = _rng("reciprocal_rank_fusion")
    cases = [({"rankings": [[1, 2, 3], [3, 1]], "k": 60}, rrf([[1, 2, 3], [3, 1]], 60))]
    for n_rankings, n_ids, k in ((1, 5, 60), (2, 8, 60), (3, 20, 10), (4, 30, 1)):
        rankings = [list(rng.permutation(n_ids)[:rng.integers(1, n_ids + 1)]) for _ in range(n_rankings)]
        cases.append(({"rankings": rankings, "k": k}, rrf(rankings, k)))
    return run_cases("check_reciprocal_rank_fusion", fn, cases, atol=0)
