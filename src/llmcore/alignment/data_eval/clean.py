r"""Cleaning a raw text corpus: normalisation, heuristic quality rules, PII masking, exact dedup, junk injection.

The raw corpus is real text -- docstrings of the shipped CPython snapshot (:mod:`llmcore.core.corpus`) --
plus junk planted by :func:`build_raw_corpus` with a known kind per document, so every rule's removals
can be counted and every planted item checked:

* **normalisation** (:func:`normalize`): Unicode NFKC, control characters dropped, runs of spaces
  collapsed, line ends stripped -- what exact dedup hashes;
* **quality rules** (:data:`RULES`), in the style of Gopher's (Rae et al. 2021) and C4's (Raffel et al.
  2020) heuristics. Each rule is a predicate ``doc -> bool`` ("remove"); :func:`apply_rules` runs them in
  order and charges each removed document to the *first* rule that fires;
* **PII masking** (:func:`mask_pii`): e-mail addresses, phone numbers, IPv4 addresses and API-key-like
  tokens replaced by typed placeholders (masked, not removed);
* **exact dedup** (:func:`exact_dedup`): sha256 of the normalised text, first occurrence kept.

Near-duplicates (one word changed) survive exact dedup; they are :mod:`.dedup`'s job.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmcore.core.errors import LLMCoreError

# ---- normalisation ---------------------------------------------------------------------------------------
_SPACES = re.compile(r"[ \t\u00a0]+")


def normalize(text: str) -> str:
    """NFKC, control characters (except newline/tab) removed, spaces collapsed, lines stripped, outer blank
    lines dropped. Idempotent: ``normalize(normalize(t)) == normalize(t)``."""
    t = unicodedata.normalize("NFKC", text)
    t = "".join(ch for ch in t if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    lines = [_SPACES.sub(" ", line).strip() for line in t.split("\n")]
    return "\n".join(lines).strip()


def text_hash(text: str) -> str:
    """sha256 of the normalised text (the exact-dedup key)."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def exact_dedup(docs: Sequence[str]) -> tuple[list[int], list[int]]:
    """``(kept, dropped)`` indices: a document is dropped when its normalised text was seen before."""
    seen: set[str] = set()
    kept, dropped = [], []
    for i, d in enumerate(docs):
        h = text_hash(d)
        (dropped if h in seen else kept).append(i)
        seen.add(h)
    return kept, dropped


# ---- quality rules ---------------------------------------------------------------------------------------
_WORD = re.compile(r"\S+")
STOP_WORDS = frozenset("the be to of and that have with a in is for it or an as this by on not if".split())
BOILERPLATE = ("all rights reserved", "cookie policy", "terms of use", "click here", "subscribe",
               "javascript", "lorem ipsum", "privacy policy")
#: what mojibake and broken decoding leave behind: the replacement character, UTF-8 read as cp1252/latin-1
_GARBAGE = re.compile("[\ufffd\u00c3\u00c2\u00e2\u20ac\u0153\u2122\u00a4\u00a6\u00b9]")


def _words(doc: str) -> list[str]:
    return _WORD.findall(doc)


@dataclass(frozen=True)
class Rule:
    """A quality rule: ``name``, what it tests (``why``), and ``fires(doc) -> True`` to remove."""

    name: str
    why: str
    fires: Callable[[str], bool]


def _too_few_words(doc: str) -> bool:
    return len(_words(doc)) < 5


def _garbage_chars(doc: str) -> bool:
    return len(_GARBAGE.findall(doc)) > 0.02 * max(len(doc), 1)


def _mean_word_length(doc: str) -> bool:
    w = _words(doc)
    mean = sum(len(x) for x in w) / max(len(w), 1)
    return not 2.5 <= mean <= 12


def _alpha_words(doc: str) -> bool:
    w = _words(doc)
    return sum(any(c.isalpha() for c in x) for x in w) < 0.6 * max(len(w), 1)


def _no_stop_words(doc: str) -> bool:
    return not any(x.lower() in STOP_WORDS for x in _words(doc))


def _duplicate_lines(doc: str) -> bool:
    lines = [x for x in doc.split("\n") if x.strip()]
    if len(lines) < 4:
        return False
    counts = Counter(lines)
    return sum(c for c in counts.values() if c > 1) > 0.3 * len(lines)


def _boilerplate(doc: str) -> bool:
    low = doc.lower()
    return sum(p in low for p in BOILERPLATE) >= 2


#: Applied in this order; a removed document is charged to the first rule that fires.
RULES: tuple[Rule, ...] = (
    Rule("too few words", "fewer than 5 words (Gopher: 50 for web pages; docstrings are short)", _too_few_words),
    Rule("encoding garbage", "more than 2% of characters are U+FFFD or mojibake (UTF-8 read as cp1252)",
         _garbage_chars),
    Rule("mean word length", "mean word length outside [2.5, 12] characters (Gopher: [3, 10])", _mean_word_length),
    Rule("alphabetic words", "fewer than 60% of words contain a letter (Gopher: 80%)", _alpha_words),
    Rule("stop words", "no English stop word at all (Gopher asks for 2 of 'the, be, to, of, ...')", _no_stop_words),
    Rule("duplicate lines", "more than 30% of lines are repeats (Gopher's repetition filter)", _duplicate_lines),
    Rule("boilerplate", "two or more web boilerplate phrases (C4: cookie policy, javascript, lorem ipsum)",
         _boilerplate),
)


def apply_rules(docs: Sequence[str], rules: Sequence[Rule] = RULES) -> tuple[list[int], dict[str, list[int]]]:
    """Run the rules in order: ``(kept indices, {rule name: indices it removed})``."""
    removed: dict[str, list[int]] = {r.name: [] for r in rules}
    kept = []
    for i, d in enumerate(docs):
        for r in rules:
            if r.fires(d):
                removed[r.name].append(i)
                break
        else:
            kept.append(i)
    return kept, removed


# ---- PII ------------------------------------------------------------------------------------------------
PII_PATTERNS: dict[str, re.Pattern] = {
    "EMAIL": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    "KEY": re.compile(r"\b(?:sk|ghp|AKIA)[-_]?[A-Za-z0-9]{16,}\b"),
    "IP": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "PHONE": re.compile(r"(?<![\w.])\+?\d{1,3}[ -]\(?\d{3}\)?[ -]\d{3}[ -]\d{4}\b"),
}


def mask_pii(text: str) -> tuple[str, Counter]:
    """Replace PII-like strings by ``<EMAIL>``, ``<KEY>``, ``<IP>``, ``<PHONE>``; return the text and the counts."""
    counts: Counter = Counter()
    for kind, pat in PII_PATTERNS.items():
        text, n = pat.subn(f"<{kind}>", text)
        counts[kind] += n
    return text, counts


# ---- the raw corpus: real docstrings plus planted junk ----------------------------------------------------
JUNK_KINDS = ("boilerplate", "garbage", "repeated", "symbols", "exact dup", "near dup")


@dataclass
class RawCorpus:
    """Documents with the kind of each (``"real"`` or a :data:`JUNK_KINDS` entry), the planted near-duplicate
    pairs ``(original, copy)`` with their number of word edits, and the PII strings planted (and where)."""

    docs: list[str]
    kinds: list[str]
    near_pairs: list[tuple[int, int]]
    near_edits: list[int]
    pii: list[tuple[int, str, str]]  # (doc index, kind, the planted string)
    leak_hosts: list[int]  # real documents that quote a held-out evaluation text


def _mojibake(text: str) -> str:
    """UTF-8 bytes of ``text`` read back as cp1252 (what a wrong charset header does), twice."""
    for _ in range(2):
        text = text.encode("utf-8").decode("cp1252", errors="replace")
    return text


def edit_words(text: str, n_edits: int, rng: random.Random, vocab: Sequence[str]) -> str:
    """``n_edits`` random word edits (substitute a word from ``vocab``, delete one, or insert one)."""
    words = text.split()
    for _ in range(n_edits):
        op, j = rng.randrange(3), rng.randrange(len(words))
        if op == 0:
            words[j] = rng.choice(vocab)
        elif op == 1 and len(words) > 1:
            del words[j]
        else:
            words.insert(j, rng.choice(vocab))
    return " ".join(words)


def build_raw_corpus(real: Sequence[str], n_junk: int, n_near: int, edit_rate: float, seed: int,
                     leaks: Sequence[str] = ()) -> RawCorpus:
    """``real`` documents plus ``n_junk`` junk documents of each kind in ``boilerplate, garbage, repeated,
    symbols, exact dup`` and ``n_near`` near-duplicates (copies of real documents of >= 30 words with
    ``round(edit_rate * words)`` word edits, at least one), shuffled; PII strings planted into
    ``n_junk`` real documents and each of ``leaks`` (held-out evaluation texts) quoted at the end of
    another real document, both before any copy is made (so the copies carry them too).
    """
    if n_junk < 0 or n_near < 0 or not 0 < edit_rate < 0.5:
        raise LLMCoreError(f"need n_junk, n_near >= 0 and 0 < edit_rate < 0.5, got {n_junk}, {n_near}, {edit_rate}")
    rng = random.Random(f"raw:{seed}")
    vocab = sorted({w for d in real[:500] for w in d.split() if w.isalpha()})
    docs = list(real)
    kinds = ["real"] * len(docs)
    pii: list[tuple[int, str]] = []
    for i in rng.sample(range(len(real)), n_junk):  # PII inside otherwise good documents
        user = "".join(rng.choice("abcdefghij") for _ in range(6))
        fake = [("EMAIL", f"{user}@mail{rng.randrange(99)}.example.org"),
                ("PHONE", f"+1 {rng.randrange(200, 999)}-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"),
                ("IP", f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"),
                ("KEY", "sk-" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(24)))]
        kind, s = fake[rng.randrange(4)]
        docs[i] = f"{docs[i]}\nContact: {s} for details."
        pii.append((i, kind, s))
    hosts = rng.sample([i for i in range(len(real)) if i not in {p[0] for p in pii}], len(leaks))
    for h, text in zip(hosts, leaks):
        docs[h] = f"{docs[h]}\n\nAs the documentation puts it: {text}"
    extra: list[tuple[str, str, int]] = []  # (text, kind, source index or -1)
    for _ in range(n_junk):
        base = rng.choice(real)
        extra.append((" ".join(rng.sample(BOILERPLATE, 4)).capitalize() + ". " + " ".join(base.split()[:8])
                      + " Home | About | Contact. Copyright 2024, all rights reserved.", "boilerplate", -1))
        extra.append((_mojibake("“Smart quotes” — naïve café résumé ½ €5 ✓ ") * 3 + base[:40], "garbage", -1))
        line = rng.choice(real).split("\n")[0][:100]
        extra.append(("\n".join([line] * rng.randint(6, 12)), "repeated", -1))
        extra.append((" ".join(rng.choice(["#####", "----", "|", "==>", "{}", "0x1f", "***", "&&"])
                               for _ in range(rng.randint(8, 30))), "symbols", -1))
        j = rng.randrange(len(real))
        extra.append(("  " + docs[j].replace("\n", " \n").replace(" ", "  ", 3) + "\n\n", "exact dup", j))
    long_ids = [i for i, d in enumerate(real) if len(d.split()) >= 30]
    near_src = rng.sample(long_ids, n_near)
    for j in near_src:
        n_edits = max(1, round(edit_rate * len(real[j].split())))
        extra.append((edit_words(docs[j], n_edits, rng, vocab), f"near dup:{n_edits}", j))
    # shuffle the extra documents in after the real ones (the originals keep their indices)
    rng.shuffle(extra)
    near_pairs, near_edits = [], []
    for text, kind, src in extra:
        if kind.startswith("near dup"):
            near_pairs.append((src, len(docs)))
            near_edits.append(int(kind.split(":")[1]))
            kind = "near dup"
        docs.append(text)
        kinds.append(kind)
    return RawCorpus(docs, kinds, near_pairs, near_edits, pii, hosts)
