"""Text without downloads: docstrings harvested from the Python standard library installed here.

:func:`docstring_corpus` parses (never imports) every ``.py`` file of the running interpreter's
standard library with :mod:`ast`, keeps the module, class and function docstrings longer than
40 characters, and splits them into train/validation by a hash of each docstring's text -- so
the split does not depend on file order and a docstring never lands on both sides.

The result is cached as ``output/corpus/stdlib_docstrings.json`` (about 1.6 MB of English
technical prose with code snippets on CPython 3.11). The corpus is deterministic for a given
Python version; a different version gives a somewhat different (equally deterministic) corpus.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from llmcore.core.paths import output_dir

_SKIP = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "__pycache__"}
_VERSION = 1  # bump when the harvesting rules change (invalidates caches)
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


def harvest_docstrings(min_chars: int = 40) -> list[str]:
    """All docstrings (module, class, function) of the installed standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not _SKIP & set(p.relative_to(root).parts))
    docs: list[str] = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= min_chars:
                    docs.append(doc)
    return docs


def _is_val(doc: str, val_percent: int) -> bool:
    return int(hashlib.sha1(doc.encode("utf-8")).hexdigest(), 16) % 100 < val_percent


def docstring_corpus(val_percent: int = 5, refresh: bool = False) -> Corpus:
    """The stdlib-docstring corpus, split ``100 - val_percent`` / ``val_percent`` by a hash of each text."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_v{_VERSION}_val{val_percent}"
    cache = output_dir("corpus") / f"stdlib_docstrings_{tag}.json"
    if cache.is_file() and not refresh:
        d = json.loads(cache.read_text(encoding="utf-8"))
        return Corpus(**d)
    docs = harvest_docstrings()
    seen: set[str] = set()
    train, val = [], []
    for doc in docs:
        if doc in seen:  # exact duplicates (inherited/copied docstrings) would leak across the split
            continue
        seen.add(doc)
        (val if _is_val(doc, val_percent) else train).append(doc)
    corpus = Corpus(SEPARATOR.join(train), SEPARATOR.join(val), len(seen),
                    f"CPython {sys.version.split()[0]} standard-library docstrings")
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(corpus.__dict__), encoding="utf-8")
    tmp.replace(cache)
    return corpus
