"""The data & evaluation closed loop: clean and dedup a raw corpus, decontaminate, generate-then-filter,
attack, judge -- each measured against planted ground truth, with datasketch and scikit-learn as oracles."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from datasketch import MinHash, MinHashLSH
from sklearn.metrics import cohen_kappa_score

from llmcore.alignment import sft
from llmcore.alignment.data_eval import clean as C
from llmcore.alignment.data_eval import dedup as D
from llmcore.alignment.data_eval import llm_tests
from llmcore.alignment.data_eval import metrics as E
from llmcore.alignment.data_eval import models as Mo
from llmcore.architecture.book_lm import load_book_lm
from llmcore.architecture.pretrained import tiny_lm
from llmcore.core.corpus import book_corpus
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError
from llmcore.core.progress import progress
from llmcore.core.report import Report

#: torch threads for these sparse linear models: one is fastest on a shared 2-core machine (fixed: reproducible)
THREADS = 1
PLANTED_JUNK = ("boilerplate", "garbage", "repeated", "symbols")


@dataclass
class DataEvalConfig:
    """Every knob of the closed loop. ``for_mode(toy)`` is the one place ``toy`` becomes numbers."""

    # raw corpus and cleaning
    n_real: int = 2000  # real docstrings drawn from the shipped corpus (training part)
    n_junk: int = 40  # planted documents of each junk kind, and real documents given a PII string
    n_near: int = 100  # planted near-duplicates (copies of real documents with word edits)
    edit_rate: float = 0.05  # share of a copy's words edited (at least one edit)
    # near-dedup
    shingle: int = 3  # word n-gram size of the shingles
    num_perm: int = 128  # MinHash permutations K
    bands: int = 32  # LSH bands b (rows r = num_perm // bands)
    threshold: float = 0.5  # near-duplicate Jaccard threshold
    minhash_seed: int = 1  # permutation seed (datasketch's default)
    # decontamination
    n_leak_docs: int = 20  # held-out validation docstrings planted inside training documents
    decon_n: int = 13  # n-gram size of the overlap test (GPT-3's 13)
    leak_frac: float = 0.5  # share of the QA test questions leaked into the QA training data
    # models
    train: Mo.TrainConfig = field(default_factory=Mo.TrainConfig)
    n_seed_items: int = 300  # labelled items the synthetic-data teacher is trained on
    temperature: float = 1.0  # teacher sampling temperature
    typo_rates: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)
    n_samples: int = 20  # samples per question for pass@k
    ks: tuple[int, ...] = (1, 5)
    p_first: float = 0.35  # simulated annotators: share of votes for slot A whatever it says
    p_verbose: float = 0.25  # ... and for the verbose answer when only one is verbose
    n_boot: int = 1000  # bootstrap resamples
    n_calib: int = 20_000  # draws of the synthetic, perfectly calibrated model
    # the same tests on the book's LMs (llm_tests)
    sft_toy: bool = True  # attack the SFT chapter's toy model (False: its full-mode model)
    n_attack: int = 200  # held-out SFT test prompts per attack
    llm_typo_rates: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    n_ppl_docs: int = 100  # real validation docstrings scored by the book LM (and up to n_junk of each junk kind)
    ppl_keep: float = 0.95  # the perplexity filter keeps this share of real documents

    def __post_init__(self) -> None:
        if self.num_perm % self.bands or not 0 < self.threshold < 1 or self.n_real < 100:
            raise LLMCoreError(f"need num_perm divisible by bands, 0 < threshold < 1 and n_real >= 100, got "
                               f"{self.num_perm}, {self.bands}, {self.threshold}, {self.n_real}")
        if not 0 < self.leak_frac <= 1:
            raise LLMCoreError(f"leak_frac must be in (0, 1], got {self.leak_frac}")

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands

    @classmethod
    def for_mode(cls, toy: bool = True) -> DataEvalConfig:
        if toy:
            return cls()
        return cls(n_real=100_000, n_junk=400, n_near=1000, num_perm=256, bands=64, n_samples=100,
                   train=Mo.TrainConfig(buckets=1 << 18, epochs=100), n_boot=10_000, n_calib=200_000,
                   sft_toy=False, n_attack=1000, n_ppl_docs=1000)


@dataclass
class DataEvalResult:
    cfg: DataEvalConfig
    metrics: dict[str, float] = field(default_factory=dict)
    removed_by_rule: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> kind -> count
    pipeline: list[tuple[str, int]] = field(default_factory=list)  # (stage, documents left)
    near_est: np.ndarray | None = None  # estimated J of verified pairs
    planted_exact_j: np.ndarray | None = None  # exact J of the planted pairs
    robustness: dict[float, float] = field(default_factory=dict)  # typo rate -> accuracy
    taxonomy: dict[str, dict[str, float]] = field(default_factory=dict)  # perturbation -> accuracy, flips, hijacked
    reliability: tuple = ()
    calibrated_reliability: tuple = ()
    judge: dict[str, float] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)  # (perturbed question, clean model's answer)
    llm_attacks: llm_tests.AttackResult | None = None  # the attacks on the SFT model
    perplexity: dict[str, dict] = field(default_factory=dict)  # the book LM's perplexity filter, per doc kind
    perplexity_scores: dict[str, np.ndarray] = field(default_factory=dict)  # doc kind -> each document's perplexity
    self_preference: dict[str, dict[str, float]] = field(default_factory=dict)  # judge -> generator -> share
    model: Mo.BagClassifier | None = None  # the clean QA model (the attacks' target)
    packages: tuple[str, ...] = ()
    test_items: list[Mo.Item] = field(default_factory=list)


def exact_pairs(sets: list[set[str]], threshold: float) -> set[tuple[int, int]]:
    """All pairs with exact Jaccard >= threshold, by a sparse incidence product (the brute-force ground truth)."""
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for i, s in enumerate(sets):
        for x in s:
            rows.append(i)
            cols.append(vocab.setdefault(x, len(vocab)))
    X = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), len(vocab)))
    inter = sp.triu(X @ X.T, k=1).tocoo()
    size = np.array([len(s) for s in sets])
    j = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    keep = j >= threshold
    return set(zip(inter.row[keep].tolist(), inter.col[keep].tolist()))


def datasketch_check(sets: list[set[str]], sigs: np.ndarray, cfg: DataEvalConfig) -> tuple[int, int]:
    """``(signatures that differ from datasketch.MinHash, size of the symmetric difference of the candidate
    pairs with datasketch.MinHashLSH)`` -- both 0 when ours equal the library's."""
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    theirs = []
    for i, s in enumerate(sets):
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.minhash_seed)
        m.update_batch([x.encode("utf-8") for x in s])
        theirs.append(m)
        lsh.insert(i, m)
    bad_sigs = sum(not np.array_equal(m.hashvalues, s) for m, s in zip(theirs, sigs))
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(theirs) for j in lsh.query(m) if j != i}
    return bad_sigs, len(pairs ^ D.lsh_candidates(sigs, cfg.bands, cfg.rows))


def verdict(p: np.ndarray, tie: float = 1e-6) -> np.ndarray:
    """+1 (slot A preferred), -1 (slot B) or 0 (a tie, ``|p - 1/2| <= tie``) for ``p (N,)`` = P(A > B)."""
    return np.where(np.abs(p - 0.5) <= tie, 0, np.sign(p - 0.5)).astype(int)


def position_flips(p_ab: np.ndarray, p_ba: np.ndarray) -> float:
    """Share of pairs whose preferred *answer* changes when the two answers swap slots: the judge picks the
    same slot both times (asked A,B and then B,A). Ties are not flips."""
    va, vb = verdict(p_ab), verdict(p_ba)
    return float(np.mean((va != 0) & (va == vb)))


def accuracy(model, texts, y) -> np.ndarray:
    return (Mo.predict_proba(model, texts).argmax(1) == y).astype(float)


def experiment(cfg: DataEvalConfig, seed: int = 0) -> DataEvalResult:
    res = DataEvalResult(cfg)
    mt = res.metrics
    bar = progress(total=9, desc="data & evaluation")
    # 1. raw corpus -> rules -> PII -> exact dedup -> near dedup ----------------------------------------------
    corpus = book_corpus()
    rng = random.Random(seed)
    real = rng.sample(corpus.docs_train, min(cfg.n_real, len(corpus.docs_train)))
    # held-out validation docstrings (the book LM's evaluation text) quoted inside training documents
    raw = C.build_raw_corpus(real, cfg.n_junk, cfg.n_near, cfg.edit_rate, seed,
                             leaks=rng.sample(corpus.docs_val, cfg.n_leak_docs))
    res.pipeline.append(("raw", len(raw.docs)))
    norm = [C.normalize(d) for d in raw.docs]
    kept, removed = C.apply_rules(norm)
    res.removed_by_rule = {r: dict(Counter(raw.kinds[i] for i in idx)) for r, idx in removed.items()}
    res.pipeline.append(("quality rules", len(kept)))
    gone = {i for idx in removed.values() for i in idx}
    for kind in PLANTED_JUNK:
        idx = [i for i, k in enumerate(raw.kinds) if k == kind]
        mt[f"planted {kind} removed"] = np.mean([i in gone for i in idx])
    mt["junk removed (planted kinds)"] = np.mean([i in gone for i, k in enumerate(raw.kinds) if k in PLANTED_JUNK])
    mt["real documents kept by the rules"] = np.mean([i not in gone for i, k in enumerate(raw.kinds) if k == "real"])
    masked, pii_counts = {}, Counter()
    for i in kept:
        masked[i], c = C.mask_pii(norm[i])
        pii_counts += c
    planted_pii = [(i, s) for i, _, s in raw.pii if i in masked]
    mt["planted PII masked"] = np.mean([s not in masked[i] for i, s in planted_pii]) if planted_pii else 1.0
    mt["PII strings masked (all)"] = sum(pii_counts.values())
    ex_kept, ex_drop = C.exact_dedup([masked[i] for i in kept])
    kept = [kept[j] for j in ex_kept]
    res.pipeline.append(("exact dedup", len(kept)))
    dups = [i for i, k in enumerate(raw.kinds) if k == "exact dup"]
    mt["planted exact duplicates removed"] = np.mean([i not in kept for i in dups])
    bar.update()
    # near dedup on what is left
    sets = [D.shingles(masked[i], cfg.shingle) for i in kept]
    sigs = D.signatures(sets, cfg.num_perm, cfg.minhash_seed)
    bad_sigs, bad_pairs = datasketch_check(sets, sigs, cfg)
    mt["signatures differing from datasketch"] = bad_sigs
    mt["LSH candidate pairs differing from datasketch"] = bad_pairs
    found = D.near_duplicates(sigs, cfg.bands, cfg.rows, cfg.threshold)
    pos = {doc: p for p, doc in enumerate(kept)}
    planted = {(pos[a], pos[b]) for a, b in raw.near_pairs if a in pos and b in pos}
    truth = exact_pairs(sets, cfg.threshold)
    got = {(i, j) for i, j, _ in found}
    mt["near-dup pairs reported"] = len(got)
    mt["near-dup pairs in truth (exact J >= threshold)"] = len(truth)
    mt["natural near-dup pairs (not planted)"] = len(truth - planted)
    mt["near-dup precision (exact J >= threshold)"] = len(got & truth) / max(len(got), 1)
    mt["near-dup recall (planted)"] = len(got & planted) / max(len(planted), 1)
    mt["near-dup recall (all true pairs)"] = len(got & truth) / max(len(truth), 1)
    res.near_est = np.array([e for _, _, e in found])
    res.planted_exact_j = np.array([D.jaccard(sets[a], sets[b]) for a, b in planted])
    est_err = [abs(D.estimate_jaccard(sigs[a], sigs[b]) - D.jaccard(sets[a], sets[b])) for a, b in planted]
    mt["mean |J_hat - J| (planted pairs)"] = float(np.mean(est_err))
    drop = D.drop_near_duplicates(len(kept), found)
    kept = [d for p, d in enumerate(kept) if p not in set(drop)]
    res.pipeline.append(("near dedup", len(kept)))
    bar.update()
    # decontamination against the book LM's held-out validation docstrings
    # (the evaluation texts go through the same normalisation and masking as the training side)
    evals = [C.mask_pii(C.normalize(v))[0] for v in corpus.docs_val]
    flagged, _ = D.contaminated([masked[i] for i in kept], evals, cfg.decon_n)
    flagged_docs = {kept[i] for i in flagged}
    mt["planted leaks flagged (recall)"] = np.mean([h in flagged_docs for h in raw.leak_hosts if h in set(kept)])
    mt["documents flagged as contaminated"] = len(flagged_docs)
    kept = [d for d in kept if d not in flagged_docs]
    res.pipeline.append(("decontaminated", len(kept)))
    bar.update()

    # 2. the QA task: clean, contaminated, decontaminated models ----------------------------------------------
    packages, items = Mo.task_items()
    train_items, test_items = Mo.split_items(items)
    te_q = [Mo.question(it, 0) for it in test_items]
    te_y = np.array([packages.index(it.package) for it in test_items])
    qrng = random.Random(f"qa:{seed}")
    train_docs = [Mo.qa_text(it, qrng.randrange(len(Mo.TEMPLATES))) for it in train_items]
    leak = qrng.sample(test_items, int(cfg.leak_frac * len(test_items)))
    contaminated_docs = train_docs + [Mo.qa_text(it, 0) for it in leak]
    qrng.shuffle(contaminated_docs)

    def fit(docs: list[str]):
        qs = [d[3:d.rindex(" A: ")] for d in docs]
        ys = [packages.index(d[d.rindex(" A: ") + 4:]) for d in docs]
        return Mo.train_classifier(qs, ys, cfg.train, seed)

    clean_model = fit(train_docs)
    contaminated_model = fit(contaminated_docs)
    hit_train, hit_eval = D.contaminated(contaminated_docs, te_q, cfg.decon_n)
    decon_docs = [d for i, d in enumerate(contaminated_docs) if i not in set(hit_train)]
    decon_model = fit(decon_docs)
    res.model, res.packages, res.test_items = clean_model, packages, test_items
    acc_clean = accuracy(clean_model, te_q, te_y)
    acc_cont = accuracy(contaminated_model, te_q, te_y)
    acc_decon = accuracy(decon_model, te_q, te_y)
    leaked_set = set(leak)
    on_leak = np.array([it in leaked_set for it in test_items])
    mt["QA accuracy gain on the leaked items (contaminated - clean)"] = acc_cont[on_leak].mean() - acc_clean[on_leak].mean()
    mt["QA accuracy gain on the unleaked items (contaminated - clean)"] = \
        acc_cont[~on_leak].mean() - acc_clean[~on_leak].mean()
    mt["QA test items"] = len(test_items)
    mt["QA accuracy: clean training data"] = acc_clean.mean()
    mt["QA accuracy: contaminated"] = acc_cont.mean()
    mt["QA accuracy: decontaminated"] = acc_decon.mean()
    mt["leaked test questions flagged (recall)"] = np.mean([te_q.index(Mo.question(it, 0)) in set(hit_eval)
                                                            for it in leak])
    mt["training docs flagged that were not leaks"] = sum(
        not any(contaminated_docs[i] == Mo.qa_text(it, 0) for it in leaked_set) for i in hit_train)
    mt["contamination gap (paired bootstrap p)"] = E.paired_bootstrap(acc_cont, acc_clean, cfg.n_boot, seed)[1]
    for name, a in (("clean", acc_clean), ("contaminated", acc_cont)):
        m, lo, hi = E.bootstrap_ci(a, cfg.n_boot, seed=seed)
        mt[f"QA accuracy {name}: 95% CI low"], mt[f"QA accuracy {name}: 95% CI high"] = lo, hi
    bar.update()

    # 3. evaluation harness on the clean model: pass@k, label perplexity, calibration ---------------------
    probs = Mo.predict_proba(clean_model, te_q)
    samples = Mo.sample_labels(probs, cfg.n_samples, np.random.default_rng(seed))
    c = (samples == te_y[:, None]).sum(1)
    for k in cfg.ks:
        mt[f"pass@{k} (unbiased, n={cfg.n_samples})"] = np.mean([E.pass_at_k(cfg.n_samples, int(ci), k) for ci in c])
        mt[f"pass@{k} (naive plug-in)"] = np.mean([E.pass_at_k_naive(cfg.n_samples, int(ci), k) for ci in c])
    mt["pass@1 minus mean share correct"] = mt[f"pass@1 (unbiased, n={cfg.n_samples})"] - c.mean() / cfg.n_samples
    mt["label perplexity (clean model)"] = E.perplexity(np.log(probs[np.arange(len(te_y)), te_y]))
    res.reliability = E.reliability(probs.max(1), probs.argmax(1) == te_y)
    mt["ECE (clean model)"] = res.reliability[0]
    crng = np.random.default_rng(seed)
    p_cal = crng.random(cfg.n_calib)
    res.calibrated_reliability = E.reliability(p_cal, crng.random(cfg.n_calib) < p_cal)
    mt["ECE (synthetic calibrated model)"] = res.calibrated_reliability[0]
    bar.update()

    # 4. synthetic data: generate (teacher samples) then filter (the corpus verifier) -----------------------
    srng = random.Random(f"synthetic:{seed}")
    seed_items = srng.sample(train_items, cfg.n_seed_items)
    seed_set = set(seed_items)
    pool = [it for it in train_items if it not in seed_set]
    teacher = Mo.train_classifier([Mo.question(it, 0) for it in seed_items],
                                  [packages.index(it.package) for it in seed_items], cfg.train, seed)
    pool_q = [Mo.question(it, 0) for it in pool]
    pool_y = np.array([packages.index(it.package) for it in pool])
    gen = Mo.sample_labels(Mo.predict_proba(teacher, pool_q, cfg.temperature), 1, np.random.default_rng(seed))[:, 0]
    accepted = np.flatnonzero(gen == pool_y)  # the verifier: does the corpus put this def in that package?
    unfiltered = np.random.default_rng(seed + 1).choice(len(pool), len(accepted), replace=False)
    mt["synthetic: verifier acceptance"] = len(accepted) / len(pool)
    mt["synthetic: label accuracy of the unfiltered sample"] = float(np.mean(gen[unfiltered] == pool_y[unfiltered]))
    students = {}
    for name, idx in (("filtered", accepted), ("unfiltered", unfiltered)):
        st = Mo.train_classifier([pool_q[i] for i in idx], [int(gen[i]) for i in idx], cfg.train, seed)
        students[name] = accuracy(st, te_q, te_y)
        mt[f"synthetic: student accuracy, {name}"] = students[name].mean()
    mt["synthetic: teacher accuracy"] = accuracy(teacher, te_q, te_y).mean()
    mt["synthetic: filtered vs unfiltered (paired bootstrap p)"] = E.paired_bootstrap(
        students["filtered"], students["unfiltered"], cfg.n_boot, seed)[1]
    bar.update()

    # 5. adversarial tests against the clean model ------------------------------------------------------------
    arng = random.Random(f"adv:{seed}")
    for rate in cfg.typo_rates:
        qs = [Mo.perturb(it, "typos", arng, it, packages, rate) for it in test_items]
        res.robustness[rate] = float(accuracy(clean_model, qs, te_y).mean())
    base_pred = Mo.predict_proba(clean_model, te_q).argmax(1)
    for kind in Mo.PERTURBATIONS:
        others = [arng.choice([o for o in train_items if o.package != it.package]) for it in test_items]
        qs = [Mo.perturb(it, kind, arng, o, packages) for it, o in zip(test_items, others)]
        pred = Mo.predict_proba(clean_model, qs).argmax(1)
        target = np.array([packages.index(o.package) for o in others]) if kind == "distractor" else \
            np.array([packages.index(q.rsplit(" ", 1)[1].rstrip(".")) if kind == "injection" else -1 for q in qs])
        res.taxonomy[kind] = {"accuracy": float(np.mean(pred == te_y)),
                              "broken (right -> wrong)": float(np.mean((base_pred == te_y) & (pred != te_y))),
                              "hijacked (answers the planted package)": float(np.mean(pred == target)),
                              "fixed (wrong -> right)": float(np.mean((base_pred != te_y) & (pred == te_y)))}
        if kind == "clean":
            res.examples = list(zip(qs[:1], [packages[p] for p in pred[:1]]))
        else:
            res.examples.append((qs[0], packages[pred[0]]))
    mt["robustness: accuracy drop at the largest typo rate"] = res.robustness[cfg.typo_rates[0]] - \
        res.robustness[cfg.typo_rates[-1]]
    mt["robustness: accuracy drop from a distractor clause"] = res.taxonomy["clean"]["accuracy"] - \
        res.taxonomy["distractor"]["accuracy"]
    bar.update()

    # 6. LLM-as-a-judge: position and verbosity bias, mitigations, agreement ----------------------------------
    jrng = random.Random(f"judge:{seed}")
    judge = Mo.train_judge(Mo.make_pairs(train_items, packages, jrng, cfg.p_first, cfg.p_verbose), cfg.train, seed)
    tp = Mo.make_pairs(test_items, packages, jrng)
    truth_ab = tp.truth.numpy().astype(int)
    p_ab, p_ba = Mo.judge_prob(judge, tp), Mo.judge_prob(judge, tp.swapped())
    p_sw = Mo.judge_prob(judge, tp, swap_average=True)
    p_sw_ba = Mo.judge_prob(judge, tp.swapped(), swap_average=True)
    raw_verdict, sw_verdict = (p_ab > 0.5).astype(int), (p_sw > 0.5).astype(int)
    jm = res.judge
    jm["position flips on swap (raw)"] = position_flips(p_ab, p_ba)
    jm["position flips on swap (swap-and-average)"] = position_flips(p_sw, p_sw_ba)
    jm["slot A chosen (raw)"] = float(raw_verdict.mean())
    jm["accuracy vs truth (raw)"] = float(np.mean(raw_verdict == truth_ab))
    jm["accuracy vs truth (swap-and-average)"] = float(np.mean(sw_verdict == truth_ab))
    jm["kappa vs truth (raw)"] = E.cohen_kappa(raw_verdict, truth_ab)
    jm["kappa vs truth (swap-and-average)"] = E.cohen_kappa(sw_verdict, truth_ab)
    jm["|kappa - sklearn|"] = max(abs(E.cohen_kappa(raw_verdict, truth_ab) - cohen_kappa_score(raw_verdict, truth_ab)),
                                  abs(E.cohen_kappa(sw_verdict, truth_ab) - cohen_kappa_score(sw_verdict, truth_ab)))
    # verbosity: the same (right) package, once terse and once verbose, in random slots
    vt = Mo.make_pairs(test_items, packages, jrng)
    same = Mo.Pairs(vt.questions, vt.m_a, vt.m_a, torch.ones_like(vt.v_a), torch.zeros_like(vt.v_a), vt.truth, vt.label)
    jm["prefers the verbose copy (swap-averaged)"] = float(np.mean(
        verdict(Mo.judge_prob(judge, same, swap_average=True)) > 0))
    jm["prefers the verbose copy (swap-averaged, length-controlled)"] = float(np.mean(
        verdict(Mo.judge_prob(judge, same, swap_average=True, length_control=True)) > 0))
    # verbose wrong answer against terse right answer
    vw = Mo.Pairs(tp.questions, tp.m_a, tp.m_b, 1 - tp.truth, tp.truth, tp.truth, tp.label)
    jm["right terse beats wrong verbose (swap-averaged)"] = float(np.mean(
        (Mo.judge_prob(judge, vw, swap_average=True) > 0.5) == truth_ab.astype(bool)))
    jm["right terse beats wrong verbose (length-controlled)"] = float(np.mean(
        (Mo.judge_prob(judge, vw, swap_average=True, length_control=True) > 0.5) == truth_ab.astype(bool)))
    jm["learned position bias b"] = float(judge.position.detach())
    bar.update()

    # 7. the attacks and the perplexity filter on the book's own LMs (inference on cached models) -----------
    scfg = sft.toy_config(cfg.sft_toy, seed)
    sft_lm = sft.sft_model(scfg)[0].cpu()  # trained (and cached) by the SFT chapter; trained here if missing
    torch.set_num_threads(THREADS)  # training the SFT model (cache miss) seeds with the book's thread count
    res.llm_attacks = llm_tests.attack_suite(
        sft_lm, sft.test_set(scfg.families, n=cfg.n_attack, templates=scfg.templates, full=scfg.full), seed,
        cfg.llm_typo_rates, scfg.full)
    blm = load_book_lm()
    val_docs = random.Random(f"ppl:{seed}").sample(corpus.docs_val, min(cfg.n_ppl_docs, len(corpus.docs_val)))
    ppl_real = llm_tests.doc_perplexities(blm.model, blm.tokenizer, val_docs)
    ppl_junk = {k: llm_tests.doc_perplexities(blm.model, blm.tokenizer,
                                              [d for d, kd in zip(raw.docs, raw.kinds) if kd == k])
                for k in PLANTED_JUNK}
    res.perplexity = llm_tests.perplexity_filter(ppl_real, ppl_junk, cfg.ppl_keep)
    res.perplexity_scores = {"real": ppl_real, **ppl_junk}
    # self-preference: the book LM and the tiny byte LM judge each other's samples against the human text
    tiny = tiny_lm()
    lms = {"book LM": (blm.model, blm.tokenizer), "tiny LM": (tiny.model, tiny.tokenizer)}
    torch.set_num_threads(THREADS)  # (a cache miss trains the tiny LM with the book's thread count)
    res.self_preference = sp = llm_tests.self_preference(lms, val_docs, seed=seed)
    mt["self-preference gap (mean over judges of own - other judge's share for that generator)"] = float(np.mean(
        [sp[a][a] - sp[b][a] for a, b in (("book LM", "tiny LM"), ("tiny LM", "book LM"))]))
    mt["|book LM perplexity - exp(HF loss)| / perplexity"] = abs(
        ppl_real[0] - llm_tests.hf_perplexity(blm.model, blm.tokenizer, val_docs[0])) / ppl_real[0]
    bar.update()
    bar.close()
    return res


def make_report(res: DataEvalResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and the acceptance criteria (the thresholds live here only)."""
    rep = Report("data_eval", "Data & Evaluation / 数据与评估", toy, device, seed)
    mt, jm = res.metrics, res.judge
    for k, v in {**mt, **{f"judge: {k}": v for k, v in jm.items()}}.items():
        rep.metric(k, v)
    for rate, acc in res.robustness.items():
        rep.metric(f"robustness: accuracy at typo rate {rate:g}", acc)
    for rule, kinds in res.removed_by_rule.items():
        rep.metric(f"rule '{rule}': documents removed", sum(kinds.values()))
    rep.check("MinHash signatures differing from datasketch", mt["signatures differing from datasketch"], "==", 0)
    rep.check("LSH candidate pairs differing from datasketch.MinHashLSH",
              mt["LSH candidate pairs differing from datasketch"], "==", 0)
    rep.check("near-dup precision (reported pairs with exact J >= threshold)",
              mt["near-dup precision (exact J >= threshold)"], ">=", 0.95)
    rep.check("near-dup recall on planted near-duplicates", mt["near-dup recall (planted)"], ">=", 0.95)
    rep.check("planted junk removed by the quality rules", mt["junk removed (planted kinds)"], ">=", 0.95)
    rep.check("real documents kept by the quality rules", mt["real documents kept by the rules"], ">=", 0.85)
    rep.check("planted PII strings masked", mt["planted PII masked"], ">=", 1.0)
    rep.check("planted exact duplicates removed", mt["planted exact duplicates removed"], ">=", 1.0)
    rep.check("planted validation-docstring leaks flagged", mt["planted leaks flagged (recall)"], ">=", 1.0)
    rep.check("leaked QA test questions flagged", mt["leaked test questions flagged (recall)"], ">=", 1.0)
    rep.check("contamination inflates QA accuracy (contaminated - clean)",
              mt["QA accuracy: contaminated"] - mt["QA accuracy: clean training data"], ">=", 0.05)
    rep.check("decontamination removes the inflation (|decontaminated - clean|)",
              abs(mt["QA accuracy: decontaminated"] - mt["QA accuracy: clean training data"]), "<=", 0.02)
    rep.check("filtered synthetic data beats unfiltered (student accuracy gain)",
              mt["synthetic: student accuracy, filtered"] - mt["synthetic: student accuracy, unfiltered"], ">=", 0.1)
    rep.check("ECE of a perfectly calibrated synthetic model", mt["ECE (synthetic calibrated model)"], "<", 0.02)
    rep.check("|pass@1 - mean share of correct samples| (unbiasedness at k=1)",
              abs(mt["pass@1 minus mean share correct"]), "<", 1e-9)
    rep.check("typos cut accuracy (drop at the largest rate)",
              mt["robustness: accuracy drop at the largest typo rate"], ">=", 0.15)
    rep.check("a distractor clause cuts accuracy", mt["robustness: accuracy drop from a distractor clause"], ">=", 0.15)
    rep.check("judge: position flips on swap (raw)", jm["position flips on swap (raw)"], ">=", 0.1)
    rep.check("judge: position flips after swap-and-average", jm["position flips on swap (swap-and-average)"], "<=", 0.0)
    rep.check("judge: kappa gain from swap-and-average",
              jm["kappa vs truth (swap-and-average)"] - jm["kappa vs truth (raw)"], ">=", 0.1)
    rep.check("judge: |our kappa - sklearn cohen_kappa_score|", jm["|kappa - sklearn|"], "<", 1e-12)
    rep.check("judge: verbosity bias (verbose copy preferred, swap-averaged)",
              jm["prefers the verbose copy (swap-averaged)"], ">=", 0.7)
    rep.check("judge: verbose copy preferred after length control",
              jm["prefers the verbose copy (swap-averaged, length-controlled)"], "<=", 0.0)
    la, pf = res.llm_attacks, res.perplexity
    for kind, shares in la.shares.items():
        for what, share in shares.items():
            rep.metric(f"SFT model under '{kind}': {what}", share)
    for rate, em in la.typo_curve.items():
        rep.metric(f"SFT model EM at typo rate {rate:g}", em)
    for kind, d in pf.items():
        for what, v in d.items():
            rep.metric(f"perplexity filter, {kind}: {what}", v)
    for judge, row in res.self_preference.items():
        for gen, share in row.items():
            rep.metric(f"judge {judge} prefers {gen}'s sample over the human text", share)
    rep.check("self-preference: a judge favours its own model's samples (mean gap over the two judges)",
              mt["self-preference gap (mean over judges of own - other judge's share for that generator)"], ">=", 0.1)
    rep.check("book LM perplexity = exp(HF LlamaForCausalLM loss) (relative difference)",
              mt["|book LM perplexity - exp(HF loss)| / perplexity"], "<", 1e-5)
    rep.check("SFT model: typos (largest rate) cut exact match by",
              la.typo_curve[res.cfg.llm_typo_rates[0]] - la.typo_curve[res.cfg.llm_typo_rates[-1]], ">=", 0.15)
    rep.check("SFT model: a distractor signature cuts exact match by", la.em("clean") - la.em("distractor"), ">=", 0.3)
    rep.check("perplexity filter removes planted encoding garbage", pf["garbage"]["removed"], ">=", 0.9)
    rep.check("repeated text fools the perplexity filter (AUROC of perplexity as a detector)",
              pf["repeated"]["AUROC"], "<", 0.5)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The closed loop (CPU only: sparse linear models and hashing; ``device`` is recorded)."""
    res = experiment(DataEvalConfig.for_mode(toy), seed)
    rep = make_report(res, toy, str(device), seed)
    rep.notes += [f"{q!r} -> {a}" for q, a in res.examples]
    return rep
