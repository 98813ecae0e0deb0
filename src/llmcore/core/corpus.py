"""Text without downloads: a fixed snapshot of Python's own documentation and source, shipped with the package.

The book's language models learn English technical prose and code from one file,
``llmcore/data/python_corpus_v1.json.xz`` (about 2 MB compressed, 11 MB of text), harvested *once*
from CPython 3.11.7's standard library by :func:`harvest_snapshot` and committed with its sha256
(:data:`SNAPSHOT_SHA256`). Every Python version -- Colab's 3.12 included -- reads the same bytes, so
every reader trains on the same data. It has three parts:

* ``docstrings`` -- every module, class and function docstring of the stdlib longer than 40
  characters, parsed with :mod:`ast` (never imported), exact duplicates removed, in a fixed order;
* ``topics`` -- the Python language reference as plain text (``pydoc_data.topics``, what ``help()``
  shows), one entry per topic;
* ``code`` -- the stdlib ``.py`` files with their docstrings cut out (the docstrings live in their
  own part, so a validation docstring never hides in the code), minus generated tables
  (``encodings``) and the topics file.

Splits are made by a hash of each item's text (docstrings) or path (code files), so they do not
depend on order and an item never lands on both sides:

* :func:`docstring_corpus` -- the docstrings alone, 95 / 5 (the tiny byte-level LM's data);
* :func:`book_corpus` -- all three parts (the book LM's data); its validation docstrings are exactly
  :func:`docstring_corpus`'s, so the two models are compared on the same validation text.

``python -m llmcore.core.corpus --write-snapshot PATH`` re-harvests the snapshot (the recipe that
made the shipped file; on another Python it makes a different file with a different hash).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import lzma
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from llmcore.core.errors import LLMCoreError

#: The shipped snapshot (package data) and its sha256 -- checked on every load.
SNAPSHOT_NAME = "python_corpus_v1.json.xz"
SNAPSHOT_SHA256 = "8dae5cdf9f94b34955536c5549aeff6057edf97d32e8a1146f49814c394d6c82"
_SKIP = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "__pycache__"}
_SKIP_CODE = {"encodings", "pydoc_data"}  # generated codec tables; the topics live in their own part
SEPARATOR = "\n\n"


@dataclass
class Corpus:
    """Train/validation text plus where it came from."""

    train: str
    val: str
    n_docs: int
    source: str

    @property
    def n_bytes(self) -> int:
        return len(self.train.encode("utf-8")) + len(self.val.encode("utf-8"))


@dataclass
class BookCorpus:
    """The book LM's data: each part as a list of texts, split train/val (validation docstrings =
    :func:`docstring_corpus`'s)."""

    docs_train: list[str]
    docs_val: list[str]
    topics: list[str]
    code_train: list[str]
    code_val: list[str]
    source: str

    def parts(self) -> dict[str, str]:
        """Each training part as one string (items joined by :data:`SEPARATOR`)."""
        return {"docstrings": SEPARATOR.join(self.docs_train), "topics": SEPARATOR.join(self.topics),
                "code": SEPARATOR.join(self.code_train)}


# ---- the recipe: harvesting (run once, on CPython 3.11.7, to make the shipped file) -----------------
def _stdlib_files(skip: set[str]) -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return root, sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def _docstring_nodes(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def harvest_docstrings(min_chars: int = 40) -> list[str]:
    """All docstrings (module, class, function) of the installed standard library, in a fixed order."""
    _, files = _stdlib_files(_SKIP)
    docs: list[str] = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in _docstring_nodes(tree):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars:
                docs.append(doc)
    return docs


def strip_docstrings(source: str) -> str:
    """``source`` with the lines of every module/class/function docstring removed (comments stay)."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for node in _docstring_nodes(tree):
        first = node.body[0] if node.body else None
        if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            drop.update(range(first.lineno - 1, first.end_lineno))
    return "".join(line for i, line in enumerate(source.splitlines(keepends=True)) if i not in drop)


def harvest_snapshot() -> dict:
    """The snapshot's content from the running interpreter's standard library."""
    import pydoc_data.topics  # the language reference that help() shows

    seen: set[str] = set()
    docs = [d for d in harvest_docstrings() if not (d in seen or seen.add(d))]
    root, files = _stdlib_files(_SKIP | _SKIP_CODE)
    code: dict[str, str] = {}
    for path in files:
        try:
            code[path.relative_to(root).as_posix()] = strip_docstrings(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
    topics = pydoc_data.topics.topics
    return {"version": 1, "python": sys.version.split()[0], "docstrings": docs,
            "topics": {k: topics[k] for k in sorted(topics)}, "code": code}


def write_snapshot(path: str | Path) -> str:
    """Harvest and write the snapshot (xz-compressed JSON); return its sha256."""
    blob = lzma.compress(json.dumps(harvest_snapshot(), ensure_ascii=False, sort_keys=True).encode("utf-8"),
                         preset=9 | lzma.PRESET_EXTREME)
    Path(path).write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


# ---- loading the shipped snapshot ------------------------------------------------------------------
def snapshot_path() -> Path:
    return Path(str(resources.files("llmcore") / "data" / SNAPSHOT_NAME))


@lru_cache(maxsize=1)
def load_snapshot() -> dict:
    """The shipped snapshot, after checking its sha256 (a clear error if it is missing or altered)."""
    path = snapshot_path()
    if not path.is_file():
        raise LLMCoreError(f"corpus snapshot {path} is missing; reinstall llmcore (pip install -e .) "
                           "or restore it with git checkout")
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != SNAPSHOT_SHA256:
        raise LLMCoreError(f"corpus snapshot {path} has sha256 {digest[:12]}..., expected "
                           f"{SNAPSHOT_SHA256[:12]}...: the file is corrupt or was replaced; restore it with git checkout")
    return json.loads(lzma.decompress(blob).decode("utf-8"))


def _hash_percent(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 100


def docstring_corpus(val_percent: int = 5) -> Corpus:
    """The docstrings, split ``100 - val_percent`` / ``val_percent`` by a hash of each text."""
    snap = load_snapshot()
    train, val = [], []
    for doc in snap["docstrings"]:
        (val if _hash_percent(doc) < val_percent else train).append(doc)
    return Corpus(SEPARATOR.join(train), SEPARATOR.join(val), len(snap["docstrings"]),
                  f"CPython {snap['python']} standard-library docstrings (shipped snapshot)")


def book_corpus(val_percent: int = 5) -> BookCorpus:
    """All three parts; docstrings split as :func:`docstring_corpus`, code files by a hash of their path."""
    snap = load_snapshot()
    docs_train, docs_val, code_train, code_val = [], [], [], []
    for doc in snap["docstrings"]:
        (docs_val if _hash_percent(doc) < val_percent else docs_train).append(doc)
    for path, text in snap["code"].items():
        if text.strip():
            (code_val if _hash_percent(path) < val_percent else code_train).append(f"# file: {path}\n{text}")
    return BookCorpus(docs_train, docs_val, list(snap["topics"].values()), code_train, code_val,
                      f"CPython {snap['python']} standard library: docstrings, language reference, source "
                      "(shipped snapshot)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-snapshot", metavar="PATH", help="harvest the running stdlib into PATH")
    args = ap.parse_args(argv)
    if args.write_snapshot:
        print(write_snapshot(args.write_snapshot))
        return 0
    c = book_corpus()
    for name, text in c.parts().items():
        print(f"{name:10s} {len(text.encode()):>10,d} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
