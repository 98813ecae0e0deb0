r"""Near-duplicate detection with MinHash + LSH, and n-gram decontamination.

**Shingles.** A document becomes the set $S$ of its word $n$-grams (:func:`shingles`). Two documents are
near-duplicates when the Jaccard similarity $J(A, B) = |A\cap B| / |A\cup B|$ is at least a threshold.

**MinHash** (Broder 1997). For a random permutation $\pi$ of the hash space,
$\Pr[\min \pi(A) = \min \pi(B)] = J(A, B)$. With $K$ permutations the signature
$\operatorname{sig}(A)_k = \min_{s\in A} \pi_k(h(s))$ gives the unbiased estimate
$\hat J = \frac1K\sum_k [\operatorname{sig}(A)_k = \operatorname{sig}(B)_k]$, variance $J(1-J)/K$.
We use datasketch 2.0's ``affine32`` permutations exactly: $h$ = first 4 bytes of SHA-1 (little endian),
pre-mixed by the MurmurHash3 finalizer, then $\pi_k(h) = a_k h + b_k \bmod 2^{32}$ with odd $a_k$, all
$(a_k, b_k)$ drawn from ``numpy.random.RandomState(seed)`` -- so our signatures equal ``datasketch.MinHash``'s.

**LSH banding.** Cut the $K = b\cdot r$ signature into $b$ bands of $r$ rows; two documents are a
*candidate pair* when all $r$ rows of some band agree. The probability is the S-curve
$P(J) = 1 - (1 - J^r)^b$, steepest near $J^\* \approx (1/b)^{1/r}$; candidates are then verified with
$\hat J \ge$ threshold. Work is linear in the number of documents (hash buckets), not quadratic.

**Decontamination.** A training document is contaminated when it shares a word $n$-gram (GPT-3 used
$n = 13$) with an evaluation item (:func:`contaminated`).

Shapes: ``N`` documents, ``K`` permutations, ``b`` bands of ``r`` rows.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from llmcore.core.errors import LLMCoreError

_TOKEN = re.compile(r"\w+")
_FMIX32 = (16, np.uint32(0x85EBCA6B), 13, np.uint32(0xC2B2AE35), 16)  # MurmurHash3's 32-bit finalizer


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+``)."""
    return _TOKEN.findall(text.lower())


def shingles(text: str, n: int = 3) -> set[str]:
    """The set of word ``n``-grams of ``text`` (the whole text if it has fewer than ``n`` words)."""
    w = words(text)
    if len(w) < n:
        return {" ".join(w)} if w else set()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def sha1_hash32(data: bytes) -> int:
    """datasketch's default hash: the first 4 bytes of SHA-1, little endian."""
    return int.from_bytes(hashlib.sha1(data).digest()[:4], "little")


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer on ``uint32`` (a bijection that spreads structured inputs)."""
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> np.uint32(s1))
    h = h * m1
    h = h ^ (h >> np.uint32(s2))
    h = h * m2
    return h ^ (h >> np.uint32(s3))


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` each ``(K,)`` uint32: the affine permutations, odd ``a`` (drawn as datasketch draws them)."""
    if num_perm < 1:
        raise LLMCoreError(f"num_perm must be >= 1, got {num_perm}")
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def minhash(items: Iterable[str], perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``(K,)`` uint32 signature of a set of strings: $\\min_s (a_k\\,\\mathrm{fmix}(h(s)) + b_k) \\bmod 2^{32}$.

    The empty set gets all ``2**32 - 1`` (datasketch's empty value)."""
    a, b = perms
    hv = np.array([sha1_hash32(s.encode("utf-8")) for s in items], dtype=np.uint32)
    if hv.size == 0:
        return np.full(a.shape, np.iinfo(np.uint32).max, dtype=np.uint32)
    phv = fmix32(hv)[:, None] * a[None, :] + b[None, :]  # (|S|, K), uint32 arithmetic wraps mod 2^32
    return phv.min(axis=0)


def signatures(sets: Sequence[set[str]], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """``(N, K)`` signatures of ``N`` shingle sets."""
    perms = permutations(num_perm, seed)
    return np.stack([minhash(s, perms) for s in sets]) if sets else np.zeros((0, num_perm), np.uint32)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """$\\hat J$: the share of the ``K`` positions where two signatures agree."""
    return float(np.mean(sig_a == sig_b))


def s_curve(j: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """$P(\\text{candidate}) = 1 - (1 - J^r)^b$."""
    return 1.0 - (1.0 - np.asarray(j, dtype=float) ** rows) ** bands


def lsh_candidates(sigs: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Candidate pairs ``(i, j)``, ``i < j``: documents whose signatures agree on all ``rows`` rows of some band.

    ``sigs (N, K)`` with ``bands * rows <= K`` (the first ``bands * rows`` columns are used, as in datasketch).
    """
    if bands < 1 or rows < 1 or bands * rows > sigs.shape[1]:
        raise LLMCoreError(f"need bands * rows <= num_perm ({sigs.shape[1]}), got {bands} x {rows}")
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        block = np.ascontiguousarray(sigs[:, band * rows:(band + 1) * rows])
        for i in range(len(sigs)):
            buckets[block[i].tobytes()].append(i)
        for members in buckets.values():
            pairs.update(itertools.combinations(members, 2))
    return pairs


def near_duplicates(sigs: np.ndarray, bands: int, rows: int, threshold: float) -> list[tuple[int, int, float]]:
    """LSH candidates verified by the signature estimate: ``(i, j, J_hat)`` with ``J_hat >= threshold``."""
    out = []
    for i, j in sorted(lsh_candidates(sigs, bands, rows)):
        est = estimate_jaccard(sigs[i], sigs[j])
        if est >= threshold:
            out.append((i, j, est))
    return out


def drop_near_duplicates(n_docs: int, pairs: Iterable[tuple[int, int, float]]) -> list[int]:
    """Indices to drop: for each near-duplicate pair the later document (union-find would also merge chains;
    a later document is dropped if it duplicates any earlier one)."""
    return sorted({max(i, j) for i, j, _ in pairs if max(i, j) < n_docs})


# ---- decontamination ---------------------------------------------------------------------------------
def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of word ``n``-grams of ``text`` as tuples (empty if it has fewer than ``n`` words)."""
    w = words(text)
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def contaminated(train_docs: Sequence[str], eval_items: Sequence[str], n: int = 13) -> tuple[list[int], list[int]]:
    """``(train indices, eval indices)`` that share at least one word ``n``-gram.

    An eval item shorter than ``n`` words is matched by all of its words as one gram (so short test
    prompts are still caught), as the GPT-3 paper's "dirty" check does with its minimum-length rule."""
    index: dict[tuple[str, ...], set[int]] = defaultdict(set)
    for e, item in enumerate(eval_items):
        w = words(item)
        k = min(n, len(w))
        for i in range(len(w) - k + 1):
            index[tuple(w[i:i + k])].add(e)
    sizes = sorted({len(g) for g in index})
    hit_train, hit_eval = set(), set()
    for t, doc in enumerate(train_docs):
        w = words(doc)
        for k in sizes:
            for i in range(len(w) - k + 1):
                found = index.get(tuple(w[i:i + k]))
                if found:
                    hit_train.add(t)
                    hit_eval |= found
    return sorted(hit_train), sorted(hit_eval)
