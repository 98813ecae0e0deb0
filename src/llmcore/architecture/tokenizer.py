r"""Tokenizers from scratch: a byte vocabulary, and a byte-level BPE trained on a corpus.

Both share one interface: ``encode(text, add_bos=False, add_eos=False) -> list[int]``,
``decode(ids) -> str``, ``vocab_size``, ``special`` (name -> id), ``pad_id`` / ``bos_id`` / ``eos_id``.

* :class:`ByteTokenizer` -- ids 0..255 are the UTF-8 bytes, then :data:`SPECIAL_TOKENS`
  (``<pad>`` = 256, ``<bos>`` = 257, ``<eos>`` = 258, ...): 264 ids, nothing to train. Tiny task
  chapters (SFT on arithmetic, GRPO) use it.
* :class:`BPETokenizer` -- byte-level BPE (GPT-2 style): text is pre-split into word-like chunks
  (a regex), each chunk is a sequence of bytes, and training repeatedly merges the most frequent
  adjacent pair into a new token. Encoding replays the merges in the order they were learned.
  Any string round-trips, because every byte is in the base vocabulary.

:meth:`BPETokenizer.save_pretrained` writes HF's ``tokenizer.json`` layout (plus ``tokenizer_config.json``),
so ``transformers.PreTrainedTokenizerFast.from_pretrained`` / ``AutoTokenizer`` load the same tokenizer and
encode every text to the same ids (the book LM ships this way).

Special tokens appear in text as their literal names (``"<|user|>"``) and are encoded as one id
only when ``allow_special=True``; otherwise they are plain text.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from llmcore.core.errors import LLMCoreError

#: Reserved special tokens (ids 256.. in :class:`ByteTokenizer`; after the merges in :class:`BPETokenizer`).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sep>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>")

#: GPT-2's pre-tokenisation pattern, with \p{L}/\p{N} spelled with the ``re`` module's classes.
PRETOKENIZE = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+|_+""")

#: :data:`PRETOKENIZE`'s character classes as Python 3.11's ``re`` reads them, frozen as code-point ranges
#: (made by :func:`regex_classes`); the HF export spells the pattern with them (:func:`hf_pretokenize_pattern`).
CLASSES_FILE = Path(__file__).resolve().parent.parent / "data" / "pretokenize_classes.json"


def regex_classes() -> dict[str, list[tuple[int, int]]]:
    r"""The classes of :data:`PRETOKENIZE` as the running Python's ``re`` reads them, as inclusive code-point
    ranges: ``letters`` = ``[^\W\d_]``, ``digits`` = ``\d``, ``space`` = ``\s``, ``word_or_space`` = ``[\s\w]``.

    Why: ``\w``, ``\d`` and ``\s`` mean different sets in Python's ``re`` (``\w`` = every ``str.isalnum``
    character and ``_``; ``\s`` = ``str.isspace``) and in the Oniguruma engine of HF ``tokenizers`` (``\w`` =
    letters, marks, decimal digits and connector punctuation; ``\s`` = Unicode White_Space). Written with
    ``\w`` in ``tokenizer.json``, the same pattern split ``'³怀'`` differently in the two (``³`` is ``\w`` for
    ``re`` only). Spelled out as ranges, Oniguruma splits exactly as ``re`` does.

    Our own tokenizer keeps ``re``'s classes (a pattern of ranges runs ~5x slower in ``re``); on the book's
    Python (3.11) they equal the frozen ranges (a unit test), on later Pythons they differ only for characters
    added in later Unicode versions.
    """
    word, digit, space = (re.compile(c).fullmatch for c in (r"\w", r"\d", r"\s"))
    preds = {"letters": lambda c: bool(word(c)) and not digit(c) and c != "_",
             "digits": lambda c: bool(digit(c)),
             "space": lambda c: bool(space(c)),
             "word_or_space": lambda c: bool(word(c) or space(c))}
    out = {}
    for name, pred in preds.items():
        ranges, start = [], None
        for cp in range(0x110000):
            inside = not 0xD800 <= cp <= 0xDFFF and pred(chr(cp))
            if inside and start is None:
                start = cp
            elif not inside and start is not None:
                ranges.append((start, cp - 1))
                start = None
        if start is not None:
            ranges.append((start, 0x10FFFF))
        out[name] = ranges
    return out


def frozen_classes() -> dict[str, list[tuple[int, int]]]:
    """The shipped :data:`CLASSES_FILE` (a clear error when it is missing or corrupt)."""
    try:
        return {k: [tuple(r) for r in v] for k, v in json.loads(CLASSES_FILE.read_text()).items()}
    except (OSError, ValueError) as err:
        raise LLMCoreError(f"cannot read the tokenizer's character classes {CLASSES_FILE} ({err}); "
                           "reinstall llmcore or restore the file with git checkout") from err


def hf_pretokenize_pattern() -> str:
    """:data:`PRETOKENIZE` for Oniguruma (HF ``tokenizers``): each class replaced by its frozen ranges."""
    cls = {k: "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in v)
           for k, v in frozen_classes().items()}
    return (rf"'(?:[sdmt]|ll|ve|re)| ?[{cls['letters']}]+| ?[{cls['digits']}]+| ?[^{cls['word_or_space']}]+"
            rf"|[{cls['space']}]+(?![^{cls['space']}])|[{cls['space']}]+|_+")


class _Base:
    special: dict[str, int]

    @property
    def pad_id(self) -> int:
        return self.special["<pad>"]

    @property
    def bos_id(self) -> int:
        return self.special["<bos>"]

    @property
    def eos_id(self) -> int:
        return self.special["<eos>"]

    def _split_special(self, text: str, allow_special: bool) -> list[tuple[str, bool]]:
        if not allow_special:
            return [(text, False)]
        pattern = "(" + "|".join(re.escape(s) for s in sorted(self.special, key=len, reverse=True)) + ")"
        return [(part, part in self.special) for part in re.split(pattern, text) if part]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False,
               allow_special: bool = False) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for part, is_special in self._split_special(text, allow_special):
            ids += [self.special[part]] if is_special else self._encode_ordinary(part)
        return ids + ([self.eos_id] if add_eos else [])

    def encode_batch(self, texts: list[str], **kw) -> list[list[int]]:
        return [self.encode(t, **kw) for t in texts]

    def _encode_ordinary(self, text: str) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError


class ByteTokenizer(_Base):
    """UTF-8 bytes (ids 0..255) plus :data:`SPECIAL_TOKENS` (256..263). ``vocab_size == 264``."""

    def __init__(self, specials: tuple[str, ...] = SPECIAL_TOKENS) -> None:
        self.special = {s: 256 + i for i, s in enumerate(specials)}
        self.vocab_size = 256 + len(specials)

    def _encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special: bool = False) -> str:
        out, buf = [], bytearray()
        inv = {v: k for k, v in self.special.items()}
        for i in ids:
            i = int(i)
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special:
                out.append(inv.get(i, ""))
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right) by ``new_id``."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer(_Base):
    """Byte-level BPE. ``BPETokenizer.train(text, vocab_size)`` learns ``vocab_size - 256 - specials`` merges."""

    def __init__(self, merges: list[tuple[int, int]], specials: tuple[str, ...] = SPECIAL_TOKENS) -> None:
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: 256 + r for r, pair in enumerate(self.merges)}  # pair -> new id (= its rank)
        self.vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
        for (a, b), new in self.ranks.items():
            self.vocab[new] = self.vocab[a] + self.vocab[b]
        first = 256 + len(self.merges)
        self.special = {s: first + i for i, s in enumerate(specials)}
        self.vocab_size = first + len(specials)
        self._cache: dict[str, list[int]] = {}

    # ---- training ---------------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, specials: tuple[str, ...] = SPECIAL_TOKENS,
              verbose: bool = False) -> BPETokenizer:
        """Learn merges on ``text``. Chunk counts are deduplicated, and pair counts are updated
        incrementally (only chunks that contain the merged pair are touched), so this takes seconds
        for megabytes of text. Ties break on the smallest pair, so training is deterministic."""
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise LLMCoreError(f"vocab_size={vocab_size} is smaller than 256 bytes + {len(specials)} specials")
        chunk_counts = Counter(PRETOKENIZE.findall(text))
        words = [list(w.encode("utf-8")) for w in chunk_counts]
        freq = list(chunk_counts.values())
        pair_counts: Counter = Counter()
        where: dict[tuple[int, int], set[int]] = {}
        for wi, w in enumerate(words):
            for p in zip(w, w[1:]):
                pair_counts[p] += freq[wi]
                where.setdefault(p, set()).add(wi)
        merges: list[tuple[int, int]] = []
        for r in range(n_merges):
            if not pair_counts:
                break
            best = max(pair_counts.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))[0]
            if pair_counts[best] < 2:
                break
            new_id = 256 + r
            merges.append(best)
            for wi in list(where.get(best, ())):
                w = words[wi]
                for p in zip(w, w[1:]):  # remove this word's old pairs ...
                    pair_counts[p] -= freq[wi]
                    if pair_counts[p] <= 0:
                        del pair_counts[p]
                w = words[wi] = _merge(w, best, new_id)
                for p in zip(w, w[1:]):  # ... and add its new ones
                    pair_counts[p] += freq[wi]
                    where.setdefault(p, set()).add(wi)
            where.pop(best, None)
            if verbose and r % 500 == 0:
                print(f"merge {r}: {best} -> {new_id}")
        return cls(merges, specials)

    # ---- encoding ---------------------------------------------------------------------------------
    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, 1 << 60))
            if pair not in self.ranks:
                break
            ids = _merge(ids, pair, self.ranks[pair])
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        for chunk in PRETOKENIZE.findall(text):
            ids = self._cache.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                if len(self._cache) < 200_000:
                    self._cache[chunk] = ids
            out += ids
        return out

    def decode(self, ids, skip_special: bool = False) -> str:
        inv = {v: k.encode("utf-8") for k, v in self.special.items()}
        parts = []
        for i in ids:
            i = int(i)
            if i in self.vocab:
                parts.append(self.vocab[i])
            elif not skip_special:
                parts.append(inv.get(i, b""))
        return b"".join(parts).decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        return self.vocab[i]

    # ---- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"type": "byte-bpe", "merges": self.merges,
                                    "specials": list(self.special)}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        d = json.loads(Path(path).read_text())
        return cls([tuple(m) for m in d["merges"]], tuple(d["specials"]))

    # ---- Hugging Face layout ----------------------------------------------------------------------
    def to_hf_json(self) -> dict:
        """This tokenizer as HF ``tokenizers``' ``tokenizer.json``: our pre-split regex, then GPT-2's
        byte-to-unicode map, a BPE model with our vocabulary and merges (in rank order), specials as
        added tokens, and the byte-level decoder."""
        b2u = bytes_to_unicode()

        def word(i: int) -> str:
            return "".join(b2u[b] for b in self.vocab[i])

        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for s, i in self.special.items()],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": hf_pretokenize_pattern()}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False,
                      "vocab": {word(i): i for i in range(256 + len(self.merges))},
                      "merges": [[word(a), word(b)] for a, b in self.merges]},
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` + ``tokenizer_config.json`` (what ``PreTrainedTokenizerFast`` reads)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.json").write_text(json.dumps(self.to_hf_json(), ensure_ascii=False))
        names = {"<pad>": "pad_token", "<bos>": "bos_token", "<eos>": "eos_token", "<sep>": "sep_token"}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1_000_000,
                  "clean_up_tokenization_spaces": False,
                  **{key: tok for tok, key in names.items() if tok in self.special},
                  "additional_special_tokens": [s for s in self.special if s not in names]}
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BPETokenizer:
        """Read a ``tokenizer.json`` written by :meth:`save_pretrained` (merges back to byte-id pairs)."""
        path = Path(directory) / "tokenizer.json"
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            vocab = d["model"]["vocab"]
            merges = [tuple(vocab[x] for x in (m.split(" ") if isinstance(m, str) else m)) for m in d["model"]["merges"]]
            specials = tuple(t["content"] for t in sorted(d["added_tokens"], key=lambda t: t["id"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LLMCoreError(f"cannot read a BPE tokenizer from {path}: {type(e).__name__}: {e}") from None
        tok = cls(merges, specials)
        if any(tok.vocab[i] != _unicode_to_bytes(w) for w, i in vocab.items()):
            raise LLMCoreError(f"{path}: vocabulary and merges disagree (not written by save_pretrained?)")
        return tok


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters (what HF's
    ``ByteLevel`` pre-tokenizer uses to store byte-level tokens as strings)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _unicode_to_bytes(word: str) -> bytes:
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    return bytes(u2b[c] for c in word)
