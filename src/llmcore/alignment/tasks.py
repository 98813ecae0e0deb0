r"""The book's one task/verifier module: instruction families with a chat template, and arithmetic.

Two kinds of generated, verifiable tasks (the exact answer is always known):

* **instruction families** (below) for SFT and PEFT: chat-templated prompts, graded by exact match;
* **arithmetic with a format-aware verifier** (:class:`ArithTask`, :func:`check_arith`) for the RL
  chapters (PPO/DPO, GRPO): raw ``"ab+cd="`` prompts; the verifier grades the number and whether the
  response has the required terse format (the preference chapters reward style as well as content).

Every example is ``(family, template, prompt, response)`` with a *checker*: the exact answer is known,
so a model's output is graded by string equality (SFT's exact match, GRPO's verifiable reward).

Task families (toy sizes in brackets; ``full`` sizes are longer)::

    add      2-digit addition           "07+45="                -> "52"
    sub      subtraction, a >= b        "83-45="                -> "38"
    reverse  reverse a string [3-6]     "reverse: kqzt"         -> "tzqk"
    sort     sort letters     [3-6]     "sort: kqzt"            -> "kqtz"
    upper    upper-case       [3-6]     "upper: kqzt"           -> "KQZT"
    shift    Caesar +1        [3-6]     "shift: kqzt"           -> "lrau"
    lookup   key -> value     [3 pairs] "a=3 k=7 z=1 | k?"      -> "7"

Each family has several prompt *templates* (surface forms). Three kinds of held-out data:

* **instances** -- the default ``split="test"``: inputs whose hash falls in the test bucket (10 %) never
  appear in ``split="train"`` (the same split for every seed);
* **templates** -- ``templates="heldout"`` uses only each family's last template, which training with
  ``templates="train"`` never shows (does the model follow an unseen phrasing?);
* **families** -- train on some families, test on another (for PEFT: a new task to adapt to).

Chat template, in the ids of the book LM's BPE tokenizer (:func:`llmcore.architecture.book_lm.book_tokenizer`,
special tokens are single ids), so every Part 3 chapter fine-tunes the pretrained book LM::

    <bos><|user|>{prompt}<|assistant|>{response}<eos>
    \___________ prompt ids __________/\__ response ids __/   loss only on the response ids

Task text is encoded by :func:`encode`, a fixed pre-tokenization in front of the BPE: every digit is its
own token (as LLaMA's tokenizer does), and runs of letters, of spaces and of punctuation are encoded
separately. Two reasons: the BPE merged some digit pairs (``"10"``, ``"99"``), which would make
``"07+10="`` and ``"07+13="`` different lengths; and it merges a word with the space before it
(``" lexists"`` is not ``"lexists"``), so a span copied from a prompt into an answer would change its
tokens. With the split a word has the same ids wherever it stands (measured: SFT of the book LM on the
identifier tasks reaches 0.95 held-out exact match in 300 steps with it, 0.84 without).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmcore.architecture.book_lm import book_tokenizer
from llmcore.core.corpus import book_corpus
from llmcore.core.errors import LLMCoreError

TOK = book_tokenizer()
BOS, EOS, PAD = TOK.bos_id, TOK.eos_id, TOK.pad_id
USER, ASSISTANT = TOK.special["<|user|>"], TOK.special["<|assistant|>"]
FIRST_SPECIAL = min(TOK.special.values())  #: ids at or above this are special tokens, not text
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TEST_PERCENT = 10  #: share of each family's input space held out as test instances


@dataclass(frozen=True)
class Example:
    family: str
    template: int  # index into the family's templates
    prompt: str
    response: str
    key: str  # canonical input (decides the train/test bucket)


@dataclass(frozen=True)
class Family:
    """A task family: draw an input, render it with a template, compute the answer."""

    name: str
    templates: tuple[str, ...]  # format strings over the fields returned by ``draw``
    draw: Callable[[random.Random, bool], dict]  # (rng, full) -> fields, incl. "key" and "answer"
    max_answer: Callable[[bool], int]  # (full) -> a bound on the answer's length in tokens (without <eos>)


def _word(rng: random.Random, full: bool) -> str:
    n = rng.randint(3, 10) if full else rng.randint(3, 6)
    return "".join(rng.choice(LETTERS) for _ in range(n))


def _add(rng, full):
    hi = 1000 if full else 100
    a, b = rng.randrange(hi), rng.randrange(hi)
    w = 3 if full else 2  # operands zero-padded to a fixed width (digits line up by position)
    return {"a": f"{a:0{w}d}", "b": f"{b:0{w}d}", "key": f"{a}+{b}", "answer": str(a + b)}


def _sub(rng, full):
    hi = 1000 if full else 100
    a, b = sorted((rng.randrange(hi), rng.randrange(hi)), reverse=True)
    w = 3 if full else 2
    return {"a": f"{a:0{w}d}", "b": f"{b:0{w}d}", "key": f"{a}-{b}", "answer": str(a - b)}


def _string(fn):
    def draw(rng, full):
        s = _word(rng, full)
        return {"s": s, "key": s, "answer": fn(s)}
    return draw


def _shift(s: str) -> str:
    """Caesar shift by one: a -> b, ..., z -> a."""
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in s)


def _lookup(rng, full):
    n = 5 if full else 3
    keys = rng.sample(LETTERS, n)
    vals = [rng.randrange(10) for _ in keys]
    q = rng.randrange(n)
    table = " ".join(f"{k}={v}" for k, v in zip(keys, vals))
    return {"table": table, "q": keys[q], "key": f"{table}|{keys[q]}", "answer": str(vals[q])}


@functools.lru_cache(maxsize=1)
def python_defs() -> tuple[tuple[str, str], ...]:
    """``(name, args)`` of the one-line, self-free ``def`` statements in the book corpus's stdlib source.

    E.g. ``("wrap_text", "text, width")``: 772 signatures, names <= 16 and argument lists <= 20 characters
    (from :func:`llmcore.core.corpus.book_corpus`, so the same everywhere). The book LM saw these
    identifiers during pretraining; the ``fname``/``fargs``/``fcall`` tasks recombine their words into
    new signatures and ask for the right span of the prompt.
    """
    pat = re.compile(r"^\s*def ([a-z][a-z0-9_]*)\(([a-z][a-z0-9_, ]*)\):", re.M)
    found = {(n, a) for n, a in pat.findall("\n".join(book_corpus().code_train))
             if len(n) <= 16 and len(a) <= 20 and "self" not in a}
    return tuple(sorted(found))


@functools.lru_cache(maxsize=1)
def identifier_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The pieces new signatures are made of: the words of the corpus's function names (``"read"``,
    ``"header"``) and its argument names (``"path"``, ``"mode"``), each sorted."""
    defs = python_defs()
    words = {w for n, _ in defs for w in n.split("_") if len(w) >= 2 and w.isalpha()}
    args = {a.strip() for _, arg in defs for a in arg.split(",") if a.strip().isidentifier()}
    return tuple(sorted(words)), tuple(sorted(args))


def _signature(rng, full):
    """A new signature composed of corpus identifiers: 1-2 name words (1-3 in full), 1-3 arguments.

    There are millions of them, so a model cannot memorise the answers: it has to copy the right span
    from the prompt (the train/test split is by the whole signature, as for every family)."""
    words, args = identifier_parts()
    name = "_".join(rng.choice(words) for _ in range(rng.randint(1, 3 if full else 2)))
    arg = ", ".join(rng.sample(args, rng.randint(1, 3)))
    return {"name": name, "args": arg, "key": f"{name}({arg})"}


def _def_task(field: str):
    def draw(rng, full):
        d = _signature(rng, full)
        return {**d, "answer": d[field] if field != "call" else d["key"]}
    return draw


def _signature_bound(field: str) -> Callable[[bool], int]:
    """Answer-length bound of the signature families, from the longest corpus words (see :func:`_signature`):
    a name is up to 2 words joined by ``_`` (3 in full), the arguments up to three joined by ``", "``."""
    def bound(full: bool) -> int:
        words, args = identifier_parts()
        name = (3 if full else 2) * max(len(encode(w)) for w in words) + (2 if full else 1)
        arg = 3 * max(len(encode(a)) for a in args) + 4
        return {"name": name, "args": arg, "call": name + arg + 2}[field]
    return bound


def _fixed(toy: int, full: int) -> Callable[[bool], int]:
    return lambda is_full: full if is_full else toy


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("add", ("{a}+{b}=", "add {a} and {b}", "sum of {a}+{b}="), _add, _fixed(3, 4)),
    Family("sub", ("{a}-{b}=", "subtract {b} from {a}", "{a} minus {b}?"), _sub, _fixed(2, 3)),
    Family("reverse", ("reverse: {s}", "{s} backwards", "mirror {s}"), _string(lambda s: s[::-1]), _fixed(6, 10)),
    Family("sort", ("sort: {s}", "{s} in order", "alphabetize {s}"), _string(lambda s: "".join(sorted(s))),
           _fixed(6, 10)),
    Family("upper", ("upper: {s}", "caps {s}", "shout {s}"), _string(str.upper), _fixed(6, 10)),
    Family("shift", ("shift: {s}", "{s} moved one letter on", "next letters of {s}"), _string(_shift), _fixed(6, 10)),
    Family("lookup", ("{table} | {q}?", "{table}; value of {q}", "in {table} find {q}"), _lookup, _fixed(1, 1)),
    Family("fname", ("name of: def {name}({args}):", "def {name}({args}): function name?",
                     "which function does def {name}({args}): define?"), _def_task("name"), _signature_bound("name")),
    Family("fargs", ("parameters of: def {name}({args}):", "def {name}({args}): its arguments?",
                     "what does def {name}({args}): take?"), _def_task("args"), _signature_bound("args")),
    Family("fcall", ("call {name} on {args}", "{name} applied to {args}", "invoke {name} with {args}"),
           _def_task("call"), _signature_bound("call")),
)}


def in_test_bucket(family: str, key: str) -> bool:
    """Deterministic instance split: ``md5(family:key) mod 100 < TEST_PERCENT`` -> test."""
    h = int(hashlib.md5(f"{family}:{key}".encode()).hexdigest(), 16)
    return h % 100 < TEST_PERCENT


def make_examples(families: Sequence[str], n: int, split: str = "train", templates: str = "train",
                  seed: int = 0, full: bool = False, unique: bool = False) -> list[Example]:
    """``n`` examples, families in round-robin order.

    ``split``: ``"train"`` | ``"test"`` (disjoint input sets, see :func:`in_test_bucket`).
    ``templates``: ``"first"`` (only template 0: the toy runs) | ``"train"`` (all but the last template) |
    ``"heldout"`` (only the last) | ``"all"`` | ``"t<k>"`` (only template ``k``).
    ``unique``: no repeated prompt (for evaluation sets).
    """
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise LLMCoreError(f"unknown task families {bad}; valid: {sorted(FAMILIES)}")
    if split not in ("train", "test") or (templates not in ("first", "train", "heldout", "all")
                                                           and not re.fullmatch(r"t\d", templates)):
        raise LLMCoreError(f"split must be train|test and templates first|train|heldout|all, got {split!r}, {templates!r}")
    rng = random.Random(f"{seed}:{split}:{templates}:{full}")
    out: list[Example] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise LLMCoreError(f"could not draw {n} distinct {split} examples of {families}")
        fam = FAMILIES[families[len(out) % len(families)]]
        fields = fam.draw(rng, full)
        if in_test_bucket(fam.name, fields["key"]) != (split == "test"):
            continue
        k = len(fam.templates)
        if templates == "first":
            t = 0
        elif re.fullmatch(r"t\d", templates):
            t = min(int(templates[1:]), k - 1)
        elif templates == "heldout":
            t = k - 1
        else:
            t = rng.randrange(k - 1 if templates == "train" else k)
        prompt = fam.templates[t].format(**fields)
        if unique and (fam.name, prompt) in seen:
            continue
        seen.add((fam.name, prompt))
        out.append(Example(fam.name, t, prompt, fields["answer"], fields["key"]))
    return out


def corrupt(examples: Sequence[Example], frac: float, seed: int = 0, mode: str = "shuffle") -> list[Example]:
    """Corrupt the response of a ``frac`` share of examples.

    ``mode="shuffle"``: the response of another random example of the same family (misaligned pairs,
    random noise); ``mode="reverse"``: the correct response written backwards ("82" -> "28", "ABC" ->
    "CBA"), a *systematic* bug that always points the same wrong way.
    """
    if not 0.0 <= frac <= 1.0 or mode not in ("shuffle", "reverse"):
        raise LLMCoreError(f"frac must be in [0, 1] and mode shuffle|reverse, got {frac}, {mode!r}")
    rng = random.Random(f"corrupt:{seed}")
    by_fam: dict[str, list[str]] = {}
    for e in examples:
        by_fam.setdefault(e.family, []).append(e.response)
    out = []
    for e in examples:
        hit = rng.random() < frac
        if hit and mode == "reverse" and len(set(e.response)) > 1:
            e = Example(e.family, e.template, e.prompt, e.response[::-1], e.key)
        elif hit and mode == "shuffle":
            pool = by_fam[e.family]
            wrong = e.response
            for _ in range(20):
                wrong = rng.choice(pool)
                if wrong != e.response:
                    break
            e = Example(e.family, e.template, e.prompt, wrong, e.key)
        out.append(e)
    return out


# ---- the chat template ------------------------------------------------------------------------------
#: the pre-tokenization of task text (see :func:`encode`)
PIECES = re.compile(r"\d|[A-Za-z_]+|\s+|[^\sA-Za-z_\d]+")


def encode(text: str, add_bos: bool = False) -> list[int]:
    """Token ids of task text: the book tokenizer's BPE applied to each digit, run of letters/underscores,
    run of spaces and run of other characters separately.

    ``decode(encode(s)) == s`` for any text; ``encode("07+45=")`` has 6 ids whatever the digits, and
    ``encode("lexists")`` is a contiguous slice of ``encode("def lexists(path):")``.
    """
    ids = [BOS] if add_bos else []
    for piece in PIECES.findall(text):
        ids += TOK.encode(piece)
    return ids


def prompt_ids(prompt: str) -> list[int]:
    """``<bos><|user|>{prompt}<|assistant|>`` -- the user text is plain bytes (no special tokens)."""
    return [BOS, USER, *encode(prompt), ASSISTANT]


def encode_chat(ex: Example) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and a mask that is True on the response tokens (incl. ``<eos>``)."""
    p = prompt_ids(ex.prompt)
    r = [*encode(ex.response), EOS]
    return p + r, [False] * len(p) + [True] * len(r)


def render(ids: Sequence[int]) -> str:
    """Readable text of ids (special tokens by name)."""
    return TOK.decode(ids)


def decode_response(ids: Sequence[int]) -> str:
    """The generated response: the text up to the first ``<eos>`` (or any special token)."""
    out = []
    for i in ids:
        if int(i) >= FIRST_SPECIAL:
            break
        out.append(int(i))
    return TOK.decode(out)


def check(ex: Example, output: str) -> bool:
    """The verifier: exact match of the response."""
    return output == ex.response


def reward(ex: Example, output: str) -> float:
    """Verifiable reward for RL: 1.0 for the exact answer, else 0.0."""
    return float(check(ex, output))


def max_response_len(families: Sequence[str], full: bool = False) -> int:
    """Longest response in tokens, incl. ``<eos>`` (the decoding budget)."""
    bad = [f for f in families if f not in FAMILIES]
    if bad or not families:
        raise LLMCoreError(f"unknown task families {bad or families}; valid: {sorted(FAMILIES)}")
    return max(FAMILIES[f].max_answer(full) for f in families) + 1


# ---- arithmetic with a format-aware verifier (the RL chapters' task) -----------------------------------
# A prompt is ``<bos>`` then the bytes of ``"ab+cd="`` (operands zero-padded to ``n_digits``, so every
# prompt has the same length and a batch needs no padding) -- no chat template: the PPO/DPO and GRPO
# chapters train a small model on this one task. A response is the sum's digits then ``<eos>`` (the
# *terse* style ``"46"``) or, in the *verbose* style the preference chapters add, ``"46 ok"``.
# :func:`check_arith` grades the number *and* the format; the instruction families above grade by
# exact match only.
VERBOSE_SUFFIX = " ok"  #: the wordier style the preference chapters' true reward dislikes


@dataclass
class ArithTask:
    """2-digit addition: which problems exist, which are held out, and the response styles."""

    n_digits: int = 2  # operands in [0, 10**n_digits)
    n_heldout: int = 400  # problems never seen in training (evaluation prompts)
    verbose_frac: float = 0.0  # fraction of SFT targets written in the verbose style "46 ok"
    data_seed: int = 1234  # split of problems into train / held-out (fixed: the same split for every seed)

    @property
    def max_new_tokens(self) -> int:
        """Longest response: n_digits + 1 sum digits, optional suffix, ``<eos>``."""
        return len(encode(VERBOSE_SUFFIX)) * (self.verbose_frac > 0) + self.n_digits + 2


def arith_split(task: ArithTask) -> tuple[np.ndarray, np.ndarray]:
    """All ``(a, b)`` pairs shuffled once with ``task.data_seed``: ``(train (N, 2), heldout (n_heldout, 2))``."""
    n = 10 ** task.n_digits
    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    grid = grid[np.random.default_rng(task.data_seed).permutation(len(grid))]
    if task.n_heldout >= len(grid):
        raise LLMCoreError(f"n_heldout={task.n_heldout} leaves no training problems (only {len(grid)} exist)")
    return grid[task.n_heldout:], grid[:task.n_heldout]


def arith_prompt_text(a: int, b: int, n_digits: int = 2) -> str:
    return f"{a:0{n_digits}d}+{b:0{n_digits}d}="


def encode_arith_prompts(problems: np.ndarray, n_digits: int = 2) -> torch.Tensor:
    """``(B, 2)`` problems -> ``(B, P)`` token ids ``<bos> a + b =`` (same length for all)."""
    return torch.tensor([encode(arith_prompt_text(int(a), int(b), n_digits), add_bos=True) for a, b in problems])


def arith_target_text(a: int, b: int, verbose: bool = False) -> str:
    return str(a + b) + (VERBOSE_SUFFIX if verbose else "")


def decode_arith_response(ids) -> tuple[str, bool]:
    """Token ids of one response -> (text before the first ``<eos>``, whether an ``<eos>`` closed it)."""
    ids = list(ids)
    closed = EOS in ids
    if closed:
        ids = ids[:ids.index(EOS)]
    return TOK.decode(ids) if all(i < FIRST_SPECIAL for i in ids) else "\ufffd", closed


def check_arith(a: int, b: int, response_ids) -> tuple[bool, bool, bool]:
    """The verifier: ``(correct, terse_format, verbose_format)`` for one response.

    ``correct``: the number in the response (before an optional ``" ok"``) equals ``a + b``.
    ``terse_format``: the response is digits only, closed by ``<eos>`` (the required format).
    """
    text, closed = decode_arith_response(response_ids)
    body = text[:-len(VERBOSE_SUFFIX)] if text.endswith(VERBOSE_SUFFIX) else text
    is_num = closed and body.isdigit() and len(body) <= 6
    correct = bool(is_num and int(body) == a + b)
    terse = bool(is_num and body == text)
    verbose = bool(is_num and body != text)
    return correct, terse, verbose


def verify_arith(problems: np.ndarray, responses: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`check_arith` over a batch: ``problems (B, 2)``, ``responses (B, L)`` -> bool tensors ``(B,)``."""
    out = [check_arith(int(a), int(b), r.tolist()) for (a, b), r in zip(problems, responses)]
    t = torch.tensor(out, dtype=torch.bool).reshape(-1, 3)
    return {"correct": t[:, 0], "terse": t[:, 1], "verbose": t[:, 2]}


def response_mask(responses: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` float mask: 1 up to and including the first ``<eos>`` (the tokens the policy chose)."""
    is_eos = (responses == EOS).long()
    after = torch.cumsum(is_eos, 1) - is_eos  # number of eos strictly before position t
    return (after == 0).float()
