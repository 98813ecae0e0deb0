r"""Self-checking exercises of the data & evaluation chapter (Part 3).

* :func:`check_pass_at_k` — the unbiased pass@k estimator :math:`1 - \binom{n-c}{k}/\binom{n}{k}`;
* :func:`check_jaccard_estimate` — the MinHash estimate of Jaccard similarity from two signatures.

Each compares the reader's function with the reference the chapter shows (imported from :mod:`llmcore`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmcore.alignment.data_eval.dedup import estimate_jaccard, signatures
from llmcore.alignment.data_eval.metrics import pass_at_k
from llmcore.exercises.checking import run_cases


def check_pass_at_k(fn: Callable) -> int:
    r"""``fn(n, c, k) -> float``: the probability that at least one of ``k`` samples drawn without replacement
    from ``n`` samples, ``c`` of them correct, is correct: :math:`1 - \binom{n-c}{k}/\binom{n}{k}` (1.0 when
    :math:`n - c < k`)."""
    cases = [({"n": n, "c": c, "k": k}, pass_at_k(n, c, k))
             for n, c, k in ((1, 0, 1), (1, 1, 1), (5, 2, 2), (10, 0, 3), (10, 8, 3), (10, 3, 10), (20, 5, 5),
                             (100, 1, 1), (200, 3, 100), (50, 49, 2))]
    return run_cases("check_pass_at_k", fn, cases, atol=1e-9)


def check_jaccard_estimate(fn: Callable) -> int:
    r"""``fn(sig_a, sig_b) -> float``: the MinHash estimate :math:`\hat J` -- the share of positions where two
    ``(K,)`` signatures agree."""
    rng = np.random.default_rng(24)
    cases = []
    for k, overlap in ((16, 0.0), (64, 0.5), (128, 0.9), (128, 1.0)):
        universe = [f"s{i}" for i in range(200)]
        a = set(rng.choice(universe, 60, replace=False).tolist())
        keep = set(list(sorted(a))[:int(overlap * 60)])
        b = keep | set(rng.choice(universe[100:] if overlap < 1 else [], 60 - len(keep), replace=False).tolist()) \
            if overlap < 1 else set(a)
        sig = signatures([a, b], k, 1)
        cases.append(({"sig_a": sig[0], "sig_b": sig[1]}, estimate_jaccard(sig[0], sig[1])))
    return run_cases("check_jaccard_estimate", fn, cases, atol=1e-12)
