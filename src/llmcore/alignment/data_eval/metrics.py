r"""Evaluation metrics: exact match, pass@k, perplexity, calibration (ECE), bootstrap CIs, paired tests, Cohen's kappa.

**pass@k** (Chen et al. 2021). Draw $n \ge k$ samples per problem, $c$ of them correct. The probability that
at least one of $k$ samples drawn *without replacement* from the $n$ is correct is

$$ \text{pass@}k = 1 - \binom{n-c}{k} \Big/ \binom{n}{k}
   = 1 - \prod_{i=n-c+1}^{n} \Big(1 - \frac{k}{i}\Big), $$

an unbiased estimator of $1-(1-p)^k$; the naive plug-in $1 - (1 - c/n)^k$ is biased (low for small $n$).
The product form avoids huge binomials.

**Expected calibration error.** Bin the predictions by confidence $\hat p$ into $M$ equal-width bins:
$\text{ECE} = \sum_m \frac{|B_m|}{N}\,|\text{acc}(B_m) - \text{conf}(B_m)|$; the reliability diagram plots
acc against conf per bin. A model whose stated probabilities are the true ones has ECE $\to 0$ as $N$ grows.

**Bootstrap.** Resample the $N$ per-item scores with replacement $B$ times; the 2.5 and 97.5 percentiles of
the resampled means are a 95% interval. For two models on the *same* items, resample item indices once per
draw for both (paired) and report the share of draws where the difference is $\le 0$ (a one-sided p-value).

**Exact McNemar test.** Two models graded right/wrong on the *same* $N$ items: only the discordant items carry
evidence, $b$ = wrong under A and right under B, $c$ = right under A and wrong under B. Under H0 (B is no
better than A) each discordant item is a fair coin, so the one-sided p-value is the binomial tail
$p = \Pr[X \ge b],\ X \sim \mathrm{Bin}(b + c, \tfrac12) = 2^{-(b+c)} \sum_{i=b}^{b+c} \binom{b+c}{i}$ — exact,
and unlike the bootstrap not limited to a resolution of $1/B$.

**Cohen's kappa.** Agreement beyond chance: $\kappa = (p_o - p_e)/(1 - p_e)$ with observed agreement $p_o$
and $p_e = \sum_c p_1(c)\,p_2(c)$ from the two raters' marginals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from llmcore.core.errors import LLMCoreError


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference (after stripping outer whitespace)."""
    if len(predictions) != len(references) or not references:
        raise LLMCoreError(f"need equally many predictions and references, got {len(predictions)}, {len(references)}")
    return float(np.mean([p.strip() == r.strip() for p, r in zip(predictions, references)]))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (product form of $1 - \\binom{n-c}{k}/\\binom{n}{k}$)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise LLMCoreError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_naive(n: int, c: int, k: int) -> float:
    """The biased plug-in $1 - (1 - c/n)^k$ (sampling *with* replacement from the n)."""
    return 1.0 - (1.0 - c / n) ** k


def perplexity(token_logprobs: np.ndarray) -> float:
    """$\\exp(-\\frac1T\\sum_t \\log p_t)$ of ``(T,)`` natural-log token probabilities."""
    lp = np.asarray(token_logprobs, dtype=float)
    if lp.size == 0:
        raise LLMCoreError("perplexity of zero tokens is undefined")
    return float(np.exp(-lp.mean()))


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """``(ECE, conf per bin (M,), acc per bin (M,), count per bin (M,))``; empty bins have NaN conf/acc.

    ``confidence (N,)`` in [0, 1], ``correct (N,)`` 0/1; bin ``m`` is ``(m/M, (m+1)/M]`` (0 goes to the first).
    """
    p = np.asarray(confidence, dtype=float)
    y = np.asarray(correct, dtype=float)
    if p.shape != y.shape or p.ndim != 1 or len(p) == 0 or n_bins < 1:
        raise LLMCoreError(f"need 1-d confidence and correct of one length and n_bins >= 1, got {p.shape}, {y.shape}")
    b = np.clip(np.ceil(p * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(b, weights=p, minlength=n_bins) / count
        acc = np.bincount(b, weights=y, minlength=n_bins) / count
    ece = float(np.nansum(count / len(p) * np.abs(acc - conf)))
    return ece, conf, acc, count


def bootstrap_ci(scores: np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: percentile bootstrap interval of the mean of ``scores (N,)``."""
    s = np.asarray(scores, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(s), (n_boot, len(s)))
    means = s[idx].mean(1)
    return float(s.mean()), float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def paired_bootstrap(scores_a: np.ndarray, scores_b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """``(mean(a - b), p)`` where ``p`` = share of paired resamples with ``mean(a - b) <= 0`` (H0: a is not better)."""
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise LLMCoreError(f"paired scores need one shape, got {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))
    return float(d.mean()), float(np.mean(d[idx].mean(1) <= 0))


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """``(b, c, p)``: items only B gets right, items only A gets right, and the exact one-sided McNemar
    p-value of "B is better than A" (the binomial tail above) for bool arrays ``(N,)`` on the same items."""
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1:
        raise LLMCoreError(f"paired verdicts need one (N,) shape, got {a.shape} and {b_.shape}")
    b, c = int((~a & b_).sum()), int((a & ~b_).sum())
    n = b + c
    tail = sum(math.comb(n, i) for i in range(b, n + 1))  # exact integers: no overflow, no rounding
    return b, c, float(Fraction(tail, 2 ** n))


def cohen_kappa(r1: Sequence, r2: Sequence) -> float:
    """$\\kappa = (p_o - p_e) / (1 - p_e)$ for two raters' labels of the same items."""
    a, b = np.asarray(r1), np.asarray(r2)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise LLMCoreError(f"kappa needs two 1-d label arrays of one length, got {a.shape}, {b.shape}")
    labels = np.union1d(a, b)
    po = float(np.mean(a == b))
    pe = float(sum(np.mean(a == c) * np.mean(b == c) for c in labels))
    return 1.0 if pe == 1.0 else (po - pe) / (1.0 - pe)
