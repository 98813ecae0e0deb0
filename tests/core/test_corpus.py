"""The shipped corpus snapshot: integrity check, splits, the harvesting recipe."""

import hashlib
import shutil
import sys

import pytest

from llmcore.core import corpus
from llmcore.core.errors import LLMCoreError


def test_snapshot_hash_and_parts():
    blob = corpus.snapshot_path().read_bytes()
    assert hashlib.sha256(blob).hexdigest() == corpus.SNAPSHOT_SHA256
    snap = corpus.load_snapshot()
    assert snap["version"] == 1 and len(snap["docstrings"]) == len(set(snap["docstrings"])) > 5000
    assert "if" in snap["topics"] and "json/__init__.py" in snap["code"]
    assert not any(p.startswith(("encodings/", "pydoc_data/")) for p in snap["code"])


def test_docstring_split_is_disjoint_and_shared_with_the_book_corpus():
    c = corpus.docstring_corpus()
    b = corpus.book_corpus()
    assert corpus.SEPARATOR.join(b.docs_val) == c.val
    assert corpus.SEPARATOR.join(b.docs_train) == c.train
    assert not set(b.docs_val) & set(b.docs_train)
    assert 0.03 < len(c.val) / (len(c.train) + len(c.val)) < 0.08  # ~5 % by hash
    assert b.code_val and not {x.split("\n", 1)[0] for x in b.code_val} & {x.split("\n", 1)[0] for x in b.code_train}


def test_strip_docstrings_keeps_code_and_comments():
    src = ('"""Module doc."""\nimport os  # a comment\n\n\ndef f(x):\n    """Function doc,\n    two lines."""\n'
           '    return x  # keep\n\n\nclass C:\n    """Class doc."""\n    y = "not a docstring"\n')
    assert corpus.strip_docstrings(src) == ('import os  # a comment\n\n\ndef f(x):\n    return x  # keep\n\n\n'
                                            'class C:\n    y = "not a docstring"\n')


def test_altered_or_missing_snapshot_is_one_clear_error(tmp_path, monkeypatch):
    bad = tmp_path / corpus.SNAPSHOT_NAME
    shutil.copy(corpus.snapshot_path(), bad)
    data = bytearray(bad.read_bytes())
    data[1000] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(corpus, "snapshot_path", lambda: bad)
    corpus.load_snapshot.cache_clear()
    try:
        with pytest.raises(LLMCoreError, match="corrupt or was replaced"):
            corpus.docstring_corpus()
        bad.unlink()
        with pytest.raises(LLMCoreError, match="is missing"):
            corpus.book_corpus()
    finally:
        corpus.load_snapshot.cache_clear()


@pytest.mark.skipif(sys.version.split()[0] != "3.11.7", reason="the snapshot was harvested from CPython 3.11.7")
def test_recipe_reproduces_the_shipped_snapshot():
    assert corpus.harvest_snapshot() == corpus.load_snapshot()
