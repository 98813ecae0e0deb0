r"""The retrieval corpus, its generated question set with located answers, and three chunkers.

**Corpus.** Pages of the Python language reference that ship with llmcore
(:func:`llmcore.core.corpus.load_snapshot`, part ``topics``: what ``help("string-methods")`` shows), so
every reader -- Colab included -- retrieves from the same bytes. A page is a :class:`Doc`.

**Questions with located answers.** API pages are lists of *entries*: a signature line
(``str.capitalize()``) followed by an indented description whose first sentence says what it does.
:func:`find_entries` locates every entry: the *answer span* (the signature, what the question asks
for) and the *evidence span* (the first sentence, what the question paraphrases), as character offsets
into the page. :func:`make_questions` turns the evidence into a question of one of two kinds:

* ``lexical`` -- the first sentence itself ("Which method: return a copy of the string with ...?");
* ``paraphrase`` -- the same sentence through a fixed thesaurus (:data:`THESAURUS`: "give back a duplicate
  of the text with ..."), the vocabulary a user has when they do not know the documentation's words.

The first kind favours exact-term matching (BM25), the second a model of meaning (dense); the chapter
measures both. A chunk is *relevant* to a question when it contains the whole answer span and at least
half of the evidence span (:func:`is_relevant`): a reader given that chunk sees both the description
and the name it has to answer with. Relevance is defined on offsets, so it is the same for every chunker.

**Chunkers** (each returns :class:`Chunk` spans of at most ``max_chars`` characters):
:func:`chunk_fixed` (a sliding window), :func:`chunk_recursive` (split on the coarsest separator that
fits, then merge neighbours, as LangChain's ``RecursiveCharacterTextSplitter``) and
:func:`chunk_structure` (cut at headings and entries first, then recursively inside a section).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from llmcore.core.corpus import load_snapshot
from llmcore.core.errors import LLMCoreError


@dataclass(frozen=True)
class Doc:
    """One page of the corpus."""

    doc_id: int
    title: str
    text: str


@dataclass(frozen=True)
class Chunk:
    """``doc.text[start:end]``: a retrievable unit."""

    doc_id: int
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Entry:
    """One API entry: ``answer`` (the signature) at ``[a0, a1)``, its first sentence at ``[e0, e1)``."""

    doc_id: int
    answer: str
    a0: int
    a1: int
    e0: int
    e1: int
    sentence: str


@dataclass(frozen=True)
class Question:
    """A generated question; ``targets`` are the entries that answer it (two for a compound question)."""

    text: str
    kind: str  # "lexical", "paraphrase" or "compound"
    targets: tuple[Entry, ...]


def load_docs(topics: tuple[str, ...]) -> list[Doc]:
    """The named pages of the shipped language reference, in the given order."""
    pages = load_snapshot()["topics"]
    missing = [t for t in topics if t not in pages]
    if missing:
        raise LLMCoreError(f"unknown corpus topic(s) {missing}; valid: {sorted(pages)}")
    return [Doc(i, t, pages[t]) for i, t in enumerate(topics)]


_SIGNATURE = re.compile(r"^( *)((?:class )?[\w.]+\(.*\))\s*$")
_UNDERLINE = re.compile(r"^([=*\-~^])\1{2,}\s*$")


def _lines(text: str) -> list[tuple[int, str]]:
    """``(offset, line)`` for every line of ``text`` (without its newline)."""
    out, pos = [], 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out


def _first_sentence_end(text: str, start: int) -> int:
    """End offset of the sentence that starts at ``start``: a period before a space, or a blank line."""
    para_end = text.find("\n\n", start)
    para_end = len(text) if para_end < 0 else para_end
    m = re.compile(r"\.(?=\s)").search(text, start, para_end)
    return m.end() if m else para_end


def find_entries(doc: Doc, min_words: int = 5) -> list[Entry]:
    """Every entry of ``doc``: a signature line, a blank line, then a description indented deeper."""
    lines = _lines(doc.text)
    out = []
    for i in range(len(lines) - 2):
        (off, line), (_, blank), (d_off, desc) = lines[i], lines[i + 1], lines[i + 2]
        m = _SIGNATURE.match(line)
        if not m or blank.strip():
            continue
        indent = len(m.group(1))
        d_indent = len(desc) - len(desc.lstrip(" "))
        if not desc.strip() or d_indent < indent + 3:
            continue
        a0 = off + indent
        e0 = d_off + d_indent
        e1 = _first_sentence_end(doc.text, e0)
        sentence = " ".join(doc.text[e0:e1].split())
        if len(sentence.split()) >= min_words:
            out.append(Entry(doc.doc_id, m.group(2), a0, a0 + len(m.group(2)), e0, e1, sentence))
    return out


def unique_entries(docs: list[Doc]) -> list[Entry]:
    """The entries of all pages whose first sentence occurs once (an ambiguous question has no one answer)."""
    entries = [e for d in docs for e in find_entries(d)]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.sentence.lower()] = counts.get(e.sentence.lower(), 0) + 1
    return [e for e in entries if counts[e.sentence.lower()] == 1]


# ---- questions ------------------------------------------------------------------------------------------------
#: The documentation's words and a user's words for them: each paraphrase picks one alternative per word.
THESAURUS: dict[str, tuple[str, ...]] = {
    "return": ("give back", "produce", "hand back"), "returns": ("gives back", "produces"),
    "copy": ("duplicate", "clone"), "string": ("text", "piece of text"), "strings": ("texts", "pieces of text"),
    "character": ("letter", "symbol"), "characters": ("letters", "symbols"), "first": ("initial", "leading"),
    "last": ("final", "trailing"), "lowest": ("smallest",), "highest": ("largest", "biggest"),
    "index": ("position", "offset"), "substring": ("piece of text", "fragment"), "remove": ("delete", "drop"),
    "removed": ("deleted", "dropped"), "item": ("element", "entry"), "items": ("elements", "entries"),
    "dictionary": ("mapping", "lookup table"), "number": ("count", "amount"), "occurrences": ("appearances",),
    "whitespace": ("blank space", "spaces and tabs"), "lowercase": ("small letters",),
    "uppercase": ("capital letters",), "lowercased": ("in small letters",), "list": ("sequence", "array"),
    "called": ("invoked", "run"), "implement": ("support", "provide"), "object": ("instance", "value"),
    "iterator": ("cursor", "iterable"), "new": ("fresh", "brand-new"), "empty": ("blank", "vacant"),
    "containing": ("holding", "with"), "specified": ("given", "requested"), "otherwise": ("else",),
    "split": ("break", "cut"), "separator": ("delimiter",), "integer": ("whole number", "int"),
    "length": ("size",), "end": ("finish", "tail"), "start": ("beginning", "head"), "replaced": ("swapped",),
    "replace": ("swap",), "all": ("every",), "each": ("every",), "true": ("yes",), "false": ("no",),
    "found": ("located",), "sequence": ("series",), "value": ("result",), "values": ("results",),
    "given": ("supplied",), "converted": ("turned",), "contains": ("holds",), "key": ("name",),
    "keys": ("names",), "insert": ("put",), "add": ("append",), "built-in": ("standard",),
    "function": ("routine",), "functions": ("routines",), "method": ("routine",), "returned": ("given back",),
    "attribute": ("property", "field"), "instance": ("object",), "class": ("type",), "cased": ("with case",),
    "width": ("column count",), "suffix": ("ending",), "prefix": ("opening part",), "part": ("portion",),
    "arithmetic": ("math",), "dict": ("mapping",), "view": ("live window",), "reverse": ("backwards",),
    "assignment": ("setting",), "methods": ("routines",), "operations": ("operators",), "access": ("lookup",),
    "raises": ("throws",), "default": ("fallback",), "owner": ("owning type",), "ends": ("finishes",),
    "tab": ("indent",), "digits": ("numerals",), "numeric": ("numerical",), "titlecased": ("in title case",),
    "justified": ("aligned",), "occurrence": ("appearance",), "tuple": ("record",), "starts": ("begins",),
    "trailing": ("at the end",), "leading": ("at the front",), "set": ("assign",), "pairs": ("couples",),
    "deletion": ("removal",), "binary": ("two-operand",), "context": ("with-block",), "runtime": ("run time",),
    "capitalized": ("upper-cased",), "casefolded": ("case-insensitive",), "centered": ("in the middle",),
    "encoded": ("converted",), "bytes": ("raw octets",), "spaces": ("blanks",), "column": ("col",),
    "slice": ("cut",), "formatting": ("templating",), "ascii": ("7-bit",), "alphanumeric": ("letter-or-digit",),
    "alphabetic": ("letter-only",), "decimal": ("base-ten",), "identifier": ("name",), "keywords": ("reserved words",),
    "printable": ("displayable",), "uncased": ("caseless",), "concatenation": ("joining",), "lines": ("rows",),
    "line": ("row",), "breaking": ("cutting",), "boundaries": ("edges",), "words": ("terms",),
    "iterable": ("collection",), "contained": ("inside",), "left": ("start side",), "right": ("end side",),
    "operation": ("operator",), "related": ("linked",), "pow": ("power",), "mapping": ("lookup table",),
}
_WORD = re.compile(r"[A-Za-z][A-Za-z\-]*|[^A-Za-z]+")


def paraphrase(sentence: str, rng: np.random.Generator) -> str:
    """``sentence`` with every word the thesaurus knows replaced by one of its alternatives (case folded)."""
    out = []
    for tok in _WORD.findall(sentence):
        alts = THESAURUS.get(tok.lower())
        out.append(alts[int(rng.integers(len(alts)))] if alts else tok)
    return "".join(out)


def _clause(sentence: str) -> str:
    """The sentence as a clause: first letter lower-cased, final period and markup quotes dropped."""
    s = sentence.rstrip(". ").replace('"', "").replace("*", "")
    return s[:1].lower() + s[1:]


PARA_PREFIX = "What do I use for this: "
AND_ALSO = "and also, what do I use for this: "


def make_questions(entries: list[Entry], n: int, n_compound: int, seed: int) -> list[Question]:
    """``n`` entries drawn by ``seed``, each asked lexically and paraphrased, and ``n_compound`` two-part
    questions joining two paraphrased ones ("...; and also, ...")."""
    if n > len(entries):
        raise LLMCoreError(f"n_questions={n} but the corpus has only {len(entries)} unique entries")
    rng = np.random.default_rng(seed)
    picked = [entries[i] for i in sorted(rng.choice(len(entries), size=n, replace=False))]
    qs = []
    for e in picked:
        qs.append(Question(f"Which method: {_clause(e.sentence)}?", "lexical", (e,)))
        qs.append(Question(f"{PARA_PREFIX}{_clause(paraphrase(e.sentence, rng))}?", "paraphrase", (e,)))
    para = [q for q in qs if q.kind == "paraphrase"]
    for _ in range(n_compound):
        i, j = rng.choice(len(para), size=2, replace=False)
        a, b = para[i], para[j]
        text = f"{a.text[:-1]}; {AND_ALSO}{b.text[len(PARA_PREFIX):]}"
        qs.append(Question(text, "compound", a.targets + b.targets))
    return qs


def is_relevant(chunk: Chunk, entry: Entry) -> bool:
    """The chunk holds the whole answer span and at least half of the evidence sentence."""
    if chunk.doc_id != entry.doc_id or not (chunk.start <= entry.a0 and entry.a1 <= chunk.end):
        return False
    overlap = min(chunk.end, entry.e1) - max(chunk.start, entry.e0)
    return 2 * overlap >= entry.e1 - entry.e0


# ---- chunking -------------------------------------------------------------------------------------------------
def _make(doc: Doc, spans: list[tuple[int, int]]) -> list[Chunk]:
    return [Chunk(doc.doc_id, a, b, doc.text[a:b]) for a, b in spans if doc.text[a:b].strip()]


def chunk_fixed(doc: Doc, max_chars: int, overlap: int = 0) -> list[Chunk]:
    """Windows of ``max_chars`` characters, each starting ``max_chars - overlap`` after the previous one."""
    if not 0 <= overlap < max_chars:
        raise LLMCoreError(f"overlap={overlap} must be in [0, max_chars={max_chars})")
    step, n = max_chars - overlap, len(doc.text)
    return _make(doc, [(a, min(a + max_chars, n)) for a in range(0, max(n - overlap, 1), step)])


SEPARATORS = ("\n\n\n", "\n\n", "\n", ". ", " ")


def recursive_spans(text: str, start: int, end: int, max_chars: int,
                    seps: tuple[str, ...] = SEPARATORS) -> list[tuple[int, int]]:
    """Split ``text[start:end]`` at the coarsest separator, recurse into pieces that are too long, then
    merge neighbouring pieces while they fit in ``max_chars`` (spans tile ``[start, end)`` exactly)."""
    if end - start <= max_chars:
        return [(start, end)]
    sep = next((s for s in seps if text.find(s, start, end) >= 0), None)
    if sep is None:  # no separator left: cut hard
        return [(a, min(a + max_chars, end)) for a in range(start, end, max_chars)]
    pieces, a = [], start
    while True:
        j = text.find(sep, a, end)
        if j < 0:
            pieces.append((a, end))
            break
        pieces.append((a, j + len(sep)))  # the separator stays with the piece before it
        a = j + len(sep)
    finer = seps[seps.index(sep) + 1:]
    small = [s for p in pieces for s in recursive_spans(text, *p, max_chars, finer)]
    merged = [small[0]]
    for a, b in small[1:]:
        if b - merged[-1][0] <= max_chars:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def chunk_recursive(doc: Doc, max_chars: int) -> list[Chunk]:
    """LangChain-style recursive splitting: paragraphs, then lines, sentences, words."""
    return _make(doc, recursive_spans(doc.text, 0, len(doc.text), max_chars))


def section_starts(doc: Doc) -> list[int]:
    """Offsets where a section begins: a heading (a line underlined by ``===``/``***``/``---``) or an entry
    (the first of one or more signature lines)."""
    lines = _lines(doc.text)
    starts = {0}
    for i, (off, line) in enumerate(lines):
        nxt = lines[i + 1][1] if i + 1 < len(lines) else ""
        prev = lines[i - 1][1] if i > 0 else ""
        if line.strip() and _UNDERLINE.match(nxt) and len(nxt.strip()) >= len(line.strip()) - 2:
            starts.add(off)
        elif _SIGNATURE.match(line) and not _SIGNATURE.match(prev):
            starts.add(off)
    return sorted(starts)


def chunk_structure(doc: Doc, max_chars: int) -> list[Chunk]:
    """Cut at every heading and entry first; split a section longer than ``max_chars`` recursively."""
    bounds = section_starts(doc) + [len(doc.text)]
    spans = [s for a, b in zip(bounds[:-1], bounds[1:]) for s in recursive_spans(doc.text, a, b, max_chars)]
    return _make(doc, spans)


CHUNKERS = {"fixed": chunk_fixed, "recursive": chunk_recursive, "structure": chunk_structure}


def chunk_corpus(docs: list[Doc], method: str, max_chars: int, overlap: int = 0) -> list[Chunk]:
    """All pages chunked by ``method`` (one of :data:`CHUNKERS`)."""
    if method not in CHUNKERS:
        raise LLMCoreError(f"unknown chunker {method!r}; valid: {sorted(CHUNKERS)}")
    if method == "fixed":
        return [c for d in docs for c in chunk_fixed(d, max_chars, overlap)]
    return [c for d in docs for c in CHUNKERS[method](d, max_chars)]
