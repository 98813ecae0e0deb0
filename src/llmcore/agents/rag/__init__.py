"""Memory & RAG: chunking, BM25, dense retrieval, fusion, reranking, query understanding, conversation memory.

Submodules: :mod:`.corpus` (the shipped language-reference pages, located question set, chunkers),
:mod:`.retrieval` (BM25, MiniLM embeddings, exact top-k, RRF, reranker, query rewriting, metrics),
:mod:`.memory` (window, summary and vector memory on a multi-turn task), :mod:`.experiment` (the closed
loop: ``run``), :mod:`.plots` (the diagrams).
"""

from llmcore.agents.rag.experiment import RAGConfig, make_report, run

__all__ = ["RAGConfig", "make_report", "run"]
