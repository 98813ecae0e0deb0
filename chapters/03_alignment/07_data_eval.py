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
# # Data & Evaluation / 数据与评估
#
# **中文摘要：** 模型的上限由数据决定，模型的好坏由评估决定。本章在随书发布的 CPython 文档字符串语料上，
# 人为注入样板文字、乱码、重复行、PII 和带已知编辑的近重复文档，然后搭建完整的清洗流水线：规范化、
# Gopher/C4 风格的启发式质量规则（逐条统计删除数）、PII 脱敏、哈希精确去重、MinHash + LSH 近似去重，
# 以及与保留评测集的 13-gram 重叠去污染。我们的 MinHash 签名与 LSH 候选对和 datasketch 逐位相同，
# 注入的近重复被以 ≥95% 的精确率和召回率找回。随后在一个"函数定义在哪个标准库包里"的事实问答任务上：
# 演示评测集泄漏如何虚高分数、去污染后分数回落；用验证器过滤的合成数据胜过未过滤的；用错别字、改写、
# 干扰从句与提示注入攻击模型，画出鲁棒性曲线与失败分类；实现 pass@k 无偏估计、ECE 与可靠性图、
# bootstrap 置信区间和配对显著性检验；最后训练一个成对偏好的评审模型（LLM-as-a-judge），测出它的
# 位置偏差和长度偏差，用"交换取平均"与长度控制消除，并用与 scikit-learn 一致的 Cohen's κ 衡量它与真值的一致性。
#
# **Learning goals**
# - build a cleaning pipeline and read each quality rule's removals, false positives included;
# - derive why MinHash estimates Jaccard similarity and how LSH banding turns it into an S-curve;
#   reproduce datasketch's signatures and candidate pairs bit for bit;
# - find benchmark leaks with n-gram overlap and watch a contaminated score inflate and fall back;
# - see rejection sampling (generate, then filter with a verifier) beat unfiltered synthetic data;
# - compute pass@k without bias, ECE with a reliability diagram, bootstrap intervals and a paired test;
# - attack a model with typos, paraphrases, distractors and injected instructions;
# - measure a judge's position and verbosity bias and remove them (swap-and-average, length control).
#
# **Prerequisites:** [SFT](01_sft.ipynb) (verifiable tasks and rejection sampling); basic probability.

# %% tags=["parameters"]
toy = True  # True: 2,000 docstrings + planted junk, 128 permutations, QA models trained in seconds (CPU)
device = "auto"  # the models here are sparse linear ones: CPU; the device is recorded
seed = 0

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[data,hf] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import math
import random

import matplotlib.pyplot as plt
import numpy as np
from datasketch import MinHash, MinHashLSH
from sklearn.calibration import calibration_curve
from sklearn.metrics import cohen_kappa_score

from llmcore.alignment.data_eval import THREADS, dedup, llm_tests, metrics, models, plots
from llmcore.alignment.data_eval import clean as cleaning
from llmcore.alignment.data_eval import experiment as loop
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed, threads=THREADS)
use_style()
cfg = loop.DataEvalConfig.for_mode(toy)
print(f"device={dev}, toy={toy}, seed={seed}; {cfg.n_real} real docs, K={cfg.num_perm} = {cfg.bands} bands x {cfg.rows} rows")

# %% [markdown]
# ## Theory / 理论
#
# ### The cleaning pipeline / 清洗流水线
#
# Web-scale pretraining corpora are filtered by cheap heuristics before anything learned touches them
# (Gopher's "MassiveText" rules {cite}`rae2021gopher`, C4's line filters {cite}`raffel2020c4`), then
# deduplicated — exact copies by hashing, near copies by MinHash {cite}`broder1997minhash` — because
# duplicates waste compute and make models memorise {cite}`lee2022dedup`. Finally the training data is
# checked against the evaluation sets (decontamination {cite}`brown2020gpt3`). The order matters: cheap
# filters first, so the quadratic-looking steps see fewer documents.

# %%
fig, ax = plt.subplots(figsize=(12, 2.2))
plots.plot_pipeline(ax)
ax.set_title("The pipeline: each stage sees what the previous one kept")
plt.show()

# %% [markdown]
# ### MinHash: a random permutation estimates Jaccard / MinHash 估计 Jaccard
#
# A document is the set $S$ of its word 3-grams (*shingles*); two documents are near-duplicates when
# $J(A, B) = |A\cap B| / |A\cup B| \ge t$. Take a random permutation $\pi$ of the hash space. The smallest
# element of $\pi(A\cup B)$ is equally likely to be any of the $|A\cup B|$ elements, and
# $\min\pi(A) = \min\pi(B)$ exactly when that element lies in $A\cap B$:
#
# $$ \Pr\big[\min \pi(A) = \min \pi(B)\big] = \frac{|A\cap B|}{|A\cup B|} = J(A, B). $$
#
# With $K$ independent permutations the signature $\mathrm{sig}(A)_k = \min_{s\in A}\pi_k(h(s))$ gives the
# unbiased estimate $\hat J = \frac1K\sum_k[\mathrm{sig}(A)_k = \mathrm{sig}(B)_k]$ with variance
# $J(1-J)/K$ — a fixed-size sketch, whatever the document's length. We use datasketch's permutations:
# $\pi_k(h) = a_k\,\mathrm{fmix}(h) + b_k \bmod 2^{32}$, odd $a_k$, drawn from `RandomState(seed)`.
#
# ### LSH banding: from pairs to buckets / LSH 分桶
#
# Comparing all $\binom N2$ signatures is quadratic. Cut each signature into $b$ bands of $r$ rows and hash
# every band: two documents become a *candidate pair* if some band matches in all $r$ rows. One band
# matches with probability $J^r$, so
#
# $$ P(\text{candidate}) = 1 - (1 - J^r)^b , $$
#
# an S-curve whose steep part sits near $J^\* \approx (1/b)^{1/r}$ {cite}`leskovec2014mmds`. Choosing
# $(b, r)$ trades false positives (left of the threshold) against false negatives (right of it); the
# candidates are then verified with $\hat J \ge t$.

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
plots.plot_s_curve(ax, cfg.bands, cfg.rows, cfg.threshold)
ax.set_title(f"LSH S-curves for K={cfg.num_perm}")
plt.show()

# %% [markdown]
# ### Evaluation statistics / 评估统计
#
# **pass@k** {cite}`chen2021codex`. With $n$ samples of which $c$ are correct, the chance that $k$ samples
# drawn *without replacement* contain a correct one is $1 - \binom{n-c}{k}/\binom nk$. Its expectation over
# the binomial $c$ is exactly $1 - (1-p)^k$: unbiased. The plug-in $1 - (1 - c/n)^k$ is not (Jensen: it is
# concave in $c$), and it is what a naive harness reports.
#
# **Calibration** {cite}`guo2017calibration`. A model is calibrated when, of the answers it gives with
# confidence 0.8, 80% are right. ECE bins predictions by confidence and averages $|\text{acc}-\text{conf}|$
# weighted by bin size; for a model whose confidences *are* the probabilities ECE shrinks like
# $1/\sqrt N$.
#
# **Uncertainty** {cite}`efron1993bootstrap`. A test set of $N$ items gives an accuracy with standard
# error $\sqrt{p(1-p)/N}$; the bootstrap estimates the interval by resampling items. Two models scored on
# the *same* items are compared by resampling item indices for both at once (paired), which removes the
# item-difficulty variance both share.
#
# **Agreement** {cite}`cohen1960kappa`. A judge that says "A" 90% of the time agrees with a 50/50 truth
# 50% of the time by chance alone; Cohen's $\kappa = (p_o - p_e)/(1 - p_e)$ subtracts that.
#
# ### Judges and their biases / 评审模型的偏差
#
# LLM judges prefer the answer in a fixed position and longer answers {cite}`zheng2023judge`. Asking twice
# with the answers swapped and averaging, $\tfrac12[P(A\succ B) + 1 - P(B\succ A)]$, is antisymmetric by
# construction, so a position preference cancels exactly; length control {cite}`dubois2024lc` removes the
# part of the score explained by verbosity.

# %% [markdown]
# ## The implementation / 实现
#
# Each quality rule is a predicate; a document is charged to the *first* rule that fires, so the counts
# add up to the removals.

# %%
show_source(cleaning.apply_rules)

# %% [markdown]
# A MinHash signature is one vectorised line: hash every shingle, pre-mix it, apply all $K$ affine
# permutations at once (uint32 arithmetic wraps: that is the $\bmod 2^{32}$), take the column minimum.

# %%
show_source(dedup.minhash)

# %% [markdown]
# Banding puts each document in one bucket per band; every pair inside a bucket is a candidate.

# %%
show_source(dedup.lsh_candidates)

# %% [markdown]
# Decontamination indexes the evaluation items' $n$-grams and scans each training document once.

# %%
show_source(dedup.contaminated)

# %% [markdown]
# pass@k in the product form (no huge binomials), and the reliability bins behind ECE:

# %%
show_source(metrics.pass_at_k, metrics.reliability)

# %% [markdown]
# The judge is asked both ways; the swap-averaged probability is what the mitigation reports:

# %%
show_source(models.judge_prob)

# %% [markdown]
# The attacks on the SFT model change only the prompt; the verifier then sorts every answer into one
# class, so the shares of one attack sum to 1:

# %%
show_source(llm_tests.attack_prompt, llm_tests.outcome)

# %% [markdown]
# Token perplexity is the exponential of the mean negative log-likelihood of each token given the ones
# before it — one forward pass of the book LM per document:

# %%
show_source(llm_tests.token_logprobs)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# One run does everything, under one progress bar: build the raw corpus (2,000 real docstrings plus planted
# junk, near-duplicates, PII and 20 quoted validation docstrings), clean and dedup it, decontaminate; then
# the QA task — *which standard-library package defines* `def connect_read_pipe(protocol, pipe)`? —
# with clean, contaminated and decontaminated training data, synthetic data with and without the verifier,
# the attacks, and the judge. The QA models are linear fastText-style classifiers {cite}`joulin2017fasttext`
# over hashed character n-grams (why not the book LM: see the "differs" box).

# %%
res = loop.experiment(cfg, seed)
report = loop.make_report(res, toy, str(dev), seed)
mt = res.metrics

# %% [markdown]
# ### What the rules removed / 每条规则删了什么
#
# Rows are rules (in order), columns the true kind of each removed document. "real" removals are the rules'
# false positives on genuine docstrings — what a threshold costs.

# %%
kinds = ["real", "boilerplate", "garbage", "repeated", "symbols", "exact dup", "near dup"]
print(f"{'rule':<18}" + "".join(f"{k:>12}" for k in kinds))
for rule, counts in res.removed_by_rule.items():
    print(f"{rule:<18}" + "".join(f"{counts.get(k, 0):>12}" for k in kinds))
fig, ax = plt.subplots(figsize=(12, 2.2))
plots.plot_pipeline(ax, res.pipeline)
ax.set_title("Documents left after each stage (this run)")
plt.show()
print(f"planted PII masked: {mt['planted PII masked']:.0%}; PII strings masked in all: {mt['PII strings masked (all)']:.0f}")

# %% [markdown]
# ### Near-duplicates / 近似重复
#
# Planted copies have 5% of their words edited; their exact Jaccard lands well right of the threshold,
# where the S-curve is ~1. The corpus also holds *natural* near-duplicates (stdlib docstrings that
# differ by a word): a reported pair counts as correct when its exact Jaccard (brute force, by a sparse
# product) is at least the threshold.

# %%
fig, ax = plt.subplots(figsize=(6, 3.2))
plots.plot_s_curve(ax, cfg.bands, cfg.rows, cfg.threshold, res.planted_exact_j)
ax.set_title("Planted pairs sit on the flat top of the S-curve")
plt.show()
print(f"reported {mt['near-dup pairs reported']:.0f} pairs; truth {mt['near-dup pairs in truth (exact J >= threshold)']:.0f} "
      f"({mt['natural near-dup pairs (not planted)']:.0f} natural); precision {mt['near-dup precision (exact J >= threshold)']:.3f}, "
      f"planted recall {mt['near-dup recall (planted)']:.3f}, mean |J_hat - J| {mt['mean |J_hat - J| (planted pairs)']:.3f}")

# %% [markdown]
# ### Cross-check: datasketch and scikit-learn / 交叉验证
#
# The run already compared every signature and the whole candidate set with datasketch; here once more,
# by hand, on two docstrings — and the statistics against scikit-learn and the closed forms.

# %%
doc_a = "Return the number of items in the queue that are not yet processed by the worker"
doc_b = "Return the number of items in the queue that were not yet processed by any worker"
sets = [dedup.shingles(doc_a), dedup.shingles(doc_b)]
ours = dedup.signatures(sets, cfg.num_perm, cfg.minhash_seed)
theirs = []
for s in sets:
    m = MinHash(num_perm=cfg.num_perm, seed=cfg.minhash_seed)
    m.update_batch([x.encode("utf-8") for x in s])
    theirs.append(m)
assert all(np.array_equal(t.hashvalues, o) for t, o in zip(theirs, ours))
assert dedup.estimate_jaccard(ours[0], ours[1]) == theirs[0].jaccard(theirs[1])
lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
lsh.insert("a", theirs[0])
assert (lsh.query(theirs[1]) == ["a"]) == ((0, 1) in dedup.lsh_candidates(ours, cfg.bands, cfg.rows))
assert mt["signatures differing from datasketch"] == 0 and mt["LSH candidate pairs differing from datasketch"] == 0
print(f"exact J = {dedup.jaccard(*sets):.3f}, ours = datasketch = {theirs[0].jaccard(theirs[1]):.3f}")

# pass@k: the product form equals the binomial closed form; the plug-in does not
for n, c, k in ((5, 2, 2), (20, 5, 5), (10, 3, 10)):
    assert abs(metrics.pass_at_k(n, c, k) - (1 - math.comb(n - c, k) / math.comb(n, k))) < 1e-12
assert metrics.pass_at_k(5, 2, 2) == 0.7 and metrics.pass_at_k_naive(5, 2, 2) < 0.7
# Cohen's kappa and the reliability bins against scikit-learn
rng = np.random.default_rng(seed)
r1 = rng.integers(0, 2, 300)
r2 = np.where(rng.random(300) < 0.7, r1, rng.integers(0, 2, 300))
assert abs(metrics.cohen_kappa(r1, r2) - cohen_kappa_score(r1, r2)) < 1e-12
p = rng.random(5000)
y = rng.random(5000) < p
ece, conf, acc, count = metrics.reliability(p, y, 10)
prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
assert np.allclose(acc[count > 0], prob_true) and np.allclose(conf[count > 0], prob_pred)
print("datasketch MinHash / MinHashLSH, sklearn cohen_kappa_score / calibration_curve, pass@k closed form: equal")

# %% [markdown]
# ### Contamination inflates, decontamination deflates / 污染虚高，去污染回落
#
# Half of the QA test questions are leaked into the training data (as QA pairs a web page might quote).
# The leaked items are memorised; the n-gram check finds every leak, and retraining without the flagged
# documents brings the score back to the clean model's.

# %%
for name in ("clean", "contaminated"):
    print(f"{name:>14}: accuracy {mt[f'QA accuracy: {name}' if name == 'contaminated' else 'QA accuracy: clean training data']:.3f} "
          f"(95% bootstrap CI {mt[f'QA accuracy {name}: 95% CI low']:.3f}-{mt[f'QA accuracy {name}: 95% CI high']:.3f})")
print(f"decontaminated: accuracy {mt['QA accuracy: decontaminated']:.3f}; leaks flagged "
      f"{mt['leaked test questions flagged (recall)']:.0%}, clean documents flagged too: "
      f"{mt['training docs flagged that were not leaks']:.0f} (a short test question inside a longer signature)")
print(f"gain on the leaked half {mt['QA accuracy gain on the leaked items (contaminated - clean)']:+.3f}, on the rest "
      f"{mt['QA accuracy gain on the unleaked items (contaminated - clean)']:+.3f}; "
      f"paired bootstrap p (contaminated <= clean): {mt['contamination gap (paired bootstrap p)']:.4f}")
print(f"corpus: {mt['documents flagged as contaminated']:.0f} training docstrings share a 13-gram with the validation "
      f"docstrings; all {cfg.n_leak_docs} planted quotes among them ({mt['planted leaks flagged (recall)']:.0%})")

# %% [markdown]
# ### The evaluation harness / 评估工具
#
# The clean model, sampled 20 times per question: pass@1 equals the mean share of correct samples
# exactly; at $k=5$ the plug-in estimate is biased low. Its confidences are over-confident in the top
# bins; the synthetic model that samples outcomes from its own stated probabilities has ECE ≈ 0.

# %%
for k in cfg.ks:
    print(f"pass@{k}: unbiased {mt[f'pass@{k} (unbiased, n={cfg.n_samples})']:.4f}, naive {mt[f'pass@{k} (naive plug-in)']:.4f}")
print(f"label perplexity {mt['label perplexity (clean model)']:.3f} (8 classes: 8.0 is guessing)")
fig, ax = plt.subplots(figsize=(5, 4))
plots.plot_reliability(ax, res.reliability, "QA classifier")
plots.plot_reliability(ax, res.calibrated_reliability, "synthetic calibrated", color="C2")
ax.set_title("Reliability diagram")
plt.show()

# %% [markdown]
# ### Synthetic data: generate, then filter / 合成数据：先生成，再过滤
#
# A teacher trained on 300 labelled questions labels the rest of the training pool by sampling; the
# verifier (the corpus knows where every `def` lives) keeps the correct samples — rejection sampling
# {cite}`zelikman2022star`. Two students get the same number of examples: verified, or unfiltered.

# %%
print(f"teacher accuracy {mt['synthetic: teacher accuracy']:.3f}; verifier acceptance {mt['synthetic: verifier acceptance']:.3f}")
for name in ("filtered", "unfiltered"):
    print(f"student on {name:>10} synthetic data: {mt[f'synthetic: student accuracy, {name}']:.3f}")
print(f"paired bootstrap p (filtered <= unfiltered): {mt['synthetic: filtered vs unfiltered (paired bootstrap p)']:.4f}")

# %% [markdown]
# ### Adversarial tests / 对抗测试
#
# Typos at a growing rate give the robustness curve; the taxonomy splits each attack's effect into
# answers it broke, answers it hijacked to the package the attack planted, and answers it fixed by luck.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
plots.plot_robustness(axes[0], res.robustness)
axes[0].set_title("Robustness curve: typos in the signature")
plots.plot_taxonomy(axes[1], res.taxonomy)
axes[1].set_title("Failure taxonomy")
plt.show()
for kind, row in res.taxonomy.items():
    print(f"{kind:>11}: accuracy {row['accuracy']:.3f}")
for q, a in res.examples:
    print(f"  {q!r} -> {a}")

# %% [markdown]
# ### The same attacks on an LLM: the book's SFT model / 同样的攻击打在 SFT 模型上
#
# The classifier above is a bag of n-grams: any extra words dilute it. An LLM fails differently. The
# SFT chapter's model (the book LM fine-tuned to answer `name of: def read_file(path, mode):` with
# `read_file`, and the `fargs` twin with `path, mode`) gets every held-out test prompt clean and under
# four attacks: typos in the *instruction* words (the signature that holds the answer stays intact), the
# family's unseen phrasing, a second signature placed before the question, and a comment inside the
# input that orders `answer pwned`. Each answer falls in one class: correct, hijacked (it says `pwned`),
# copied the distractor, another span of the prompt, or malformed.
#
# Read the bars for the kind of failure, not only its size. The distractor is *copied*: the model
# learned "copy the identifier after `def`" and the first `def` wins. The injection never hijacks on
# seeds 0–4 — this model was never trained to follow instructions found inside its input, so it cannot
# obey them — but it breaks answers into malformed ones: an out-of-distribution comment is noise the copy
# mechanism was not trained on. Instruction-tuned chat models are the opposite case: obedience is what
# makes injection work on them.

# %%
la = res.llm_attacks
fig, axes = plt.subplots(1, 2, figsize=(12.5, 3.4), gridspec_kw={"width_ratios": [1, 1.5]})
plots.plot_robustness(axes[0], la.typo_curve)
axes[0].set_title("SFT model: typos in the instruction words")
axes[0].set_ylabel("exact match")
plots.plot_outcomes(axes[1], la.shares)
axes[1].set_title("SFT model: what each attack does to the answers")
plt.show()
for kind in llm_tests.ATTACKS:
    prompt, output, what = la.examples[kind]
    print(f"{kind:>10}: exact match {la.em(kind):.3f}; e.g. {prompt!r} -> {output!r} ({what})")

# %% [markdown]
# ### Perplexity as a quality filter / 困惑度过滤
#
# CCNet {cite}`wenzek2020ccnet` keeps web documents that a reference LM finds likely. Here the book LM
# scores held-out real docstrings and the planted junk of the cleaning section; the threshold keeps 95% of
# the real documents. Encoding garbage (the generator plants one mojibake pattern, so its forty documents
# score alike) and symbol soup sit far above it; boilerplate straddles it. Repetition sits *below* the real
# documents: after the first copy, every next token is easy to predict, so a perplexity filter alone
# keeps repeated text — which is why Gopher's rules count duplicate lines and n-grams as well.
#
# The same number from Hugging Face (`exp` of `LlamaForCausalLM`'s loss on the exported weights) is a
# criterion in the results cell below.

# %%
pf = res.perplexity
fig, ax = plt.subplots(figsize=(8, 3.4))
plots.plot_perplexities(ax, res.perplexity_scores, pf["real"]["threshold"])
ax.set_title("Book LM token perplexity: real docstrings vs planted junk")
plt.show()
for kind, row in pf.items():
    extra = f", AUROC as a junk detector {row['AUROC']:.3f}" if "AUROC" in row else ""
    print(f"{kind:>11}: median perplexity {row['median perplexity']:8.1f}, removed {row['removed']:.0%}{extra}")
print(f"|ours - exp(HF loss)| / perplexity = {mt['|book LM perplexity - exp(HF loss)| / perplexity']:.1e}")

# %% [markdown]
# ### The judge / 评审模型
#
# Trained on preferences from simulated annotators who pick slot A 35% of the time whatever it says and
# the verbose answer 25% of the time, the judge learns both habits. Swapping the answers flips its verdict
# often; swap-and-average never flips and agrees better with the truth; length control removes the taste
# for the verbose copy of the *same* answer.

# %%
fig, ax = plt.subplots(figsize=(8, 3.2))
plots.plot_judge(ax, res.judge)
ax.set_title("Judge biases before and after mitigation")
plt.show()
for k, v in res.judge.items():
    print(f"{k}: {v:.3f}")

# %% [markdown]
# ### Self-preference: an LM judge favours its own text / 自我偏好
#
# A judge that is also a generator can be asked about its own outputs. Two LMs of the book — the book LM
# (BPE, 2M parameters) and the Transformer chapter's tiny byte-level LM — each continue the first 40
# characters of held-out docstrings with a temperature-1 sample; each judge then compares every sample with
# the human continuation of the same prefix, scoring both by its own mean log-likelihood per character.
# The table gives the share of prompts on which the judge prefers the sample. Self-preference is the
# diagonal beating the column: a judge favours its own model's text more than the other judge does — the
# tiny LM prefers its own (weaker) samples more often than the book LM's better ones. A likelihood judge
# does this by construction (its own samples are what it finds likely); LLM judges that read and grade show
# the same bias in published studies {cite}`panickssery2024selfpref`.

# %%
sp = res.self_preference
gap = mt["self-preference gap (mean over judges of own - other judge's share for that generator)"]
print("judge / generator".rjust(18) + "".join(f"{g:>10}" for g in sp))
for judge, row in sp.items():
    print(f"{judge:>18}" + "".join(f"{row[g]:>10.3f}" for g in sp))
print(f"self-preference gap (mean over the two judges): {gap:.3f}")

# %% [markdown]
# ## Results / 结果
#
# The checked cell prints each criterion with its threshold (what holds on any machine); the measured
# values are in the cell after it.

# %%
# NBVAL_CHECK_OUTPUT
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %%
print("\n".join(str(c) for c in report.criteria))

# %% [markdown]
# ## Play: attack the model / 动手：攻击模型
#
# Pick an attack and a typo rate: the clean QA model answers the perturbed test questions.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets


def attack(kind: str = "typos", rate: float = 0.1) -> None:
    r = random.Random(seed)
    others = [r.choice([o for o in res.test_items if o.package != it.package]) for it in res.test_items]
    qs = [models.perturb(it, kind, r, o, res.packages, rate) for it, o in zip(res.test_items, others)]
    y = np.array([res.packages.index(it.package) for it in res.test_items])
    acc = loop.accuracy(res.model, qs, y).mean()
    print(f"{kind} (rate {rate:.2f}): accuracy {acc:.3f} on {len(qs)} questions, e.g. {qs[0]!r}")


widgets.interact(attack, kind=widgets.Dropdown(options=["typos", *models.PERTURBATIONS[2:]], value="typos"),
                 rate=widgets.FloatSlider(value=0.1, min=0.0, max=0.5, step=0.05));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Scale.** Production pipelines clean billions of web pages (Gopher's rules expect ≥ 50 words; ours
#   allow 5 because docstrings are short) and run MinHash-LSH distributed; the maths and the datasketch
#   equality are the same.
# - **Most models are small linear classifiers, not LLMs.** About twenty models are trained per run within a
#   60-second toy budget; one 300-step fine-tune of the book LM takes about a minute here. So
#   contamination, synthetic data, the first set of attacks and the judge use a fastText-style classifier
#   on a fact-recall task. The effects are the same in kind; their sizes are this model's, not an LLM's (a
#   bag model is distracted by any extra words, so "prompt injection" hurts it by dilution, not by
#   obedience). Two measurements use the book's own LMs because they need only inference on cached
#   models: the attacks on the SFT model and the perplexity filter. `toy=False` scales data and buckets
#   and attacks the full-mode SFT model.
# - **Simulated annotators.** The judge's biases come from simulated preferences with a known position
#   habit and length taste, so their size is set by construction; what is measured is that a trained judge
#   inherits them and that the mitigations remove them. Self-preference is measured with likelihood
#   judges (the two LMs scoring text), not with judges that read a rubric and answer "A" or "B"; the book's
#   models are too small to grade that way.
# - **Perplexity** is reported twice: for the classifier's labels and, per token, for the book LM on real
#   and junk documents (the filter above).
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** 2,300 documents cleaned and deduplicated, ~12 classifiers and a judge trained,
#   9 × 200 greedy decodes of the SFT model and 260 documents scored by the book LM: the closed loop takes
#   about 20 s (`run.py --module data_eval --toy`, 25 s per process in the robustness runs, peak RAM
#   ≈ 0.8 GB) when the SFT chapter's model is cached, about a minute more when it must be trained first.
# - **Full (`toy=False`):** all 5,958 training docstrings, 256 permutations, 5× the pass@k samples, 10× the
#   bootstrap draws, 4× the hash buckets and 100 training steps took 36 s on this CPU (seed 0, every
#   criterion PASS) before the LLM tests were added; those now attack the SFT chapter's *full-mode* model
#   (1,000 prompts per attack), which must be trained first — a GPU job (see the SFT chapter's card), not
#   run here.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 清洗顺序：先便宜的启发式规则，再精确去重，再 MinHash-LSH 近似去重，最后去污染。 · Clean in order of
#   cost: heuristic rules, exact dedup, MinHash-LSH near dedup, then decontamination.
# - MinHash 的一个位置相等的概率就是 Jaccard 相似度；K 个置换给出方差 J(1-J)/K 的无偏估计。 · One
#   MinHash position agrees with probability equal to the Jaccard similarity; K permutations give an
#   unbiased estimate with variance J(1-J)/K.
# - LSH 分 b 段、每段 r 行，候选概率为 1-(1-J^r)^b 的 S 曲线。 · LSH banding makes the candidate
#   probability the S-curve 1-(1-J^r)^b, steep near (1/b)^(1/r).
# - 评测集泄漏会虚高分数；n-gram 重叠检测能找到泄漏，去除后分数回落。 · Leaked test items inflate scores;
#   n-gram overlap finds the leaks and removing them deflates the score.
# - 用验证器过滤的合成数据在同等数量下胜过未过滤数据。 · Verifier-filtered synthetic data beats unfiltered
#   data of the same size.
# - pass@k 要用无偏估计 1-C(n-c,k)/C(n,k)；比较两个模型要用配对检验。 · Use the unbiased pass@k
#   estimator, and compare two models with a paired test on the same items.
# - 评审模型有位置偏差和长度偏差：交换取平均与长度控制可以消除；用 Cohen's κ 衡量一致性。 · Judges have
#   position and verbosity bias; swap-and-average and length control remove them; measure agreement with
#   Cohen's kappa.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `pass_at_k(n, c, k)` — the unbiased estimator $1 - \binom{n-c}{k}/\binom nk$
#    — and check it with `llmcore.exercises.check_pass_at_k(pass_at_k)`. Then show with a simulation that
#    the plug-in $1-(1-c/n)^k$ underestimates $1-(1-p)^k$.
# 2. **Self-checked.** Write `jaccard_estimate(sig_a, sig_b)` from two MinHash signatures and check it with
#    `llmcore.exercises.check_jaccard_estimate(jaccard_estimate)`.
# 3. Set `cfg.bands = 16` (8 rows). Where is the S-curve's steep part now, and how do near-dup precision
#    and planted recall change? Which $(b, r)$ would you pick for a threshold of 0.8?
# 4. Lower the stop-word rule to Gopher's "at least two" and count how many real docstrings it removes.
#    Is a rule tuned for web pages right for code documentation?
# 5. Raise `leak_frac` to 1.0. How large is the contamination gap, and why does a test item that is
#    learnable from its identifiers gain less from leaking than one that is not?
# 6. Give the judge's annotators no position habit (`p_first = 0`). What does swap-and-average change now?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Either the product form or the binomials:
#
#    ```python
#    def pass_at_k(n, c, k):
#        if n - c < k:
#            return 1.0
#        return 1.0 - math.comb(n - c, k) / math.comb(n, k)
#    ```
#
#    For $p = 0.2$, $n = 10$, $k = 5$: the unbiased mean is 0.672 (= $1 - 0.8^5$); the plug-in averages
#    about 0.63.
# 2. `np.mean(sig_a == sig_b)`: the share of positions where the minima agree (not a set overlap of the
#    hash values).
# 3. $J^\* \approx (1/16)^{1/8} \approx 0.71$: pairs between 0.5 and 0.7 are now often missed (recall falls),
#    fewer false candidates (precision is already high after verification). For $t = 0.8$ try
#    $b = 8, r = 16$ ($J^\* \approx 0.88$) or $b = 16, r = 8$.
# 4. About a tenth of the real docstrings ("Return True if ..." has one stop word): web rules are too strict
#    for terse technical text — every rule's false positives must be read, not assumed.
# 5. The gap roughly doubles. A memorised item scores whether or not it was learnable; items the clean
#    model already answers gain nothing, so the gap is (share leaked) × (clean error rate) at most.
# 6. The learned position term is near zero, raw flips fall to the judge's uncertainty on hard items, and
#    swap-and-average changes little: it costs two judge calls to buy consistency.
# :::
#
# ## References / 参考文献
#
# Gopher {cite}`rae2021gopher`; C4 {cite}`raffel2020c4`; MinHash {cite}`broder1997minhash`; LSH
# {cite}`leskovec2014mmds`; deduplication {cite}`lee2022dedup`; GPT-3's contamination study
# {cite}`brown2020gpt3`; pass@k {cite}`chen2021codex`; calibration {cite}`guo2017calibration`; bootstrap
# {cite}`efron1993bootstrap`; kappa {cite}`cohen1960kappa`; judges {cite}`zheng2023judge`; length control
# {cite}`dubois2024lc`; fastText {cite}`joulin2017fasttext`; STaR {cite}`zelikman2022star`; prompt
# injection {cite}`perez2022ignore`. Full entries: [bibliography](../../book/bibliography.md).
