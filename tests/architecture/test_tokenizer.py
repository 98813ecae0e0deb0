"""Tokenizers: lossless round trips (property tests), specials, BPE training."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcore.architecture.tokenizer import SPECIAL_TOKENS, BPETokenizer, ByteTokenizer

TEXT = ("Return the number of items in a container. The argument may be a sequence "
        "(such as a string, bytes, tuple, list, or range) or a collection. " * 20
        + "def f(x):\n    return x ** 2  # 平方 — ünïcödé 🙂\n" * 5)


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, vocab_size=256 + len(SPECIAL_TOKENS) + 120)


def test_byte_tokenizer_layout():
    tok = ByteTokenizer()
    assert tok.vocab_size == 264 and (tok.pad_id, tok.bos_id, tok.eos_id) == (256, 257, 258)
    assert tok.encode("A") == [65]
    ids = tok.encode("<|user|>hi", add_bos=True, add_eos=True, allow_special=True)
    assert ids == [257, tok.special["<|user|>"], 104, 105, 258]
    assert tok.decode(ids) == "<bos><|user|>hi<eos>"
    assert tok.decode(ids, skip_special=True) == "hi"
    assert tok.encode("<|user|>") == list(b"<|user|>")  # specials are text unless allowed


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_byte_roundtrip(s):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bpe_roundtrip_arbitrary_unicode(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


def test_bpe_learns_merges_and_compresses(bpe):
    assert len(bpe.merges) == 120 and bpe.vocab_size == 256 + 120 + len(SPECIAL_TOKENS)
    ids = bpe.encode(TEXT)
    assert bpe.decode(ids) == TEXT
    assert len(TEXT.encode()) / len(ids) > 2.5
    assert max(ids) < bpe.vocab_size


def test_bpe_deterministic_and_save_load(bpe, tmp_path):
    again = BPETokenizer.train(TEXT, vocab_size=bpe.vocab_size)
    assert again.merges == bpe.merges
    loaded = BPETokenizer.load(bpe.save(tmp_path / "bpe.json"))
    assert loaded.encode(TEXT) == bpe.encode(TEXT)
    assert loaded.special == bpe.special
