r"""Conversation memory: a sliding window and a rolling summary (short-term) against a vector store of past
turns (long-term), on a generated task where the needed fact was said many turns ago.

**The task** (:func:`make_conversations`). A user talks for ``n_turns`` turns: most turns are questions
about the standard library (first sentences of the shipped docstrings, real text), three of them state
personal facts ("By the way, my deploy key is falcon-4821."). The last turn asks for one of the facts in
other words ("Which deploy key did I give you?"); the fact was said ``distance`` turns before. An LLM can
answer only from what its memory puts in its context, so a memory is scored by whether the fact's *value*
is in the context it returns (:func:`fact_recalled`) -- the upper bound of any reader's accuracy.

**The memories** (each returns a context string for the question):

* :class:`WindowMemory` -- the last ``k`` turns verbatim: nothing older than ``k`` turns survives;
* :class:`SummaryMemory` -- the window plus a rolling extractive summary of older turns (each turn's first
  ``words_per_turn`` content words, oldest dropped when over ``budget`` words): a longer, lossy horizon;
* :class:`VectorMemory` -- every past turn embedded (all-MiniLM-L6-v2) and the ``top_k`` turns most similar
  to the question retrieved: the horizon is unbounded, and the context stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmcore.agents.rag.retrieval import STOPWORDS, tokenize
from llmcore.core.corpus import load_snapshot

#: (attribute, how the user later asks for it)
ATTRIBUTES = (
    ("deploy key", "Which deploy key did I give you earlier?"),
    ("staging server", "Remind me, what was the name of our staging box?"),
    ("favourite port number", "What port did I say I like to use?"),
    ("team lead", "Who did I tell you leads my team?"),
    ("project codename", "What is the code name of the project I mentioned?"),
    ("database host", "Which machine runs the database, as I told you?"),
    ("release date", "When did I say we are shipping the release?"),
    ("cat's name", "What is my cat called again?"),
)
_WORDS = ("falcon", "cedar", "quartz", "nimbus", "orchid", "tundra", "ember", "harbor", "lumen", "sierra")
_PEOPLE = ("Ada", "Grace", "Linus", "Guido", "Barbara", "Edsger", "Donald", "Frances")
_MONTHS = ("March", "April", "May", "June", "July", "October")


def _value(attr: str, rng: np.random.Generator) -> str:
    if attr in ("team lead", "cat's name"):
        return f"{_PEOPLE[rng.integers(len(_PEOPLE))]}{rng.integers(10, 99)}"
    if attr == "favourite port number":
        return str(int(rng.integers(2000, 9999)))
    if attr == "release date":
        return f"{_MONTHS[rng.integers(len(_MONTHS))]} {rng.integers(1, 29)}th"
    return f"{_WORDS[rng.integers(len(_WORDS))]}-{rng.integers(1000, 9999)}"


@dataclass(frozen=True)
class Conversation:
    """Past user turns, the final question, the fact it needs and how many turns ago it was said."""

    turns: tuple[str, ...]
    question: str
    value: str
    distance: int


def filler_pool(n: int, seed: int) -> list[str]:
    """``n`` distinct small-talk turns: "Can you explain this: <first sentence of a stdlib docstring>"."""
    docs = load_snapshot()["docstrings"]
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for i in rng.permutation(len(docs)):
        s = " ".join(docs[i].split(".")[0].split())
        if 6 <= len(s.split()) <= 25 and f"Can you explain this: {s}?" not in out:
            out.append(f"Can you explain this: {s}?")
        if len(out) == n:
            return out
    return out


def make_conversations(n_per_distance: int, distances: tuple[int, ...], n_turns: int, n_facts: int,
                       seed: int, pool: int = 120) -> list[Conversation]:
    """``n_per_distance`` conversations for each distance: ``n_facts`` facts at distinct turns, the asked one
    ``distance`` turns before the question, the rest filler."""
    rng = np.random.default_rng(seed)
    fillers = filler_pool(pool, seed)
    convs = []
    for dist in distances:
        for _ in range(n_per_distance):
            attrs = rng.choice(len(ATTRIBUTES), size=n_facts, replace=False)
            turns = [fillers[i] for i in rng.integers(len(fillers), size=n_turns)]
            target = n_turns - dist
            others = rng.choice([t for t in range(n_turns) if t != target], size=n_facts - 1, replace=False)
            value = ""
            for a, pos in zip(attrs, [target, *others]):
                v = _value(ATTRIBUTES[a][0], rng)
                turns[pos] = f"By the way, my {ATTRIBUTES[a][0]} is {v}."
                value = value or v
            convs.append(Conversation(tuple(turns), ATTRIBUTES[attrs[0]][1], value, dist))
    return convs


class WindowMemory:
    """The last ``k`` turns, verbatim."""

    def __init__(self, k: int):
        self.k = k

    def context(self, conv: Conversation) -> str:
        return "\n".join(conv.turns[-self.k:])


class SummaryMemory:
    """The window plus an extractive rolling summary of the older turns, capped at ``budget`` words."""

    def __init__(self, k: int, words_per_turn: int, budget: int):
        self.k, self.words_per_turn, self.budget = k, words_per_turn, budget

    def summarise(self, turn: str) -> list[str]:
        """A turn's first ``words_per_turn`` content words (stop words dropped, values kept verbatim)."""
        words = [w.strip(".,?!") for w in turn.split()]
        return [w for w in words if w and w.lower() not in STOPWORDS][:self.words_per_turn]

    def context(self, conv: Conversation) -> str:
        old = conv.turns[:-self.k] if self.k else conv.turns
        summary: list[str] = []
        for turn in reversed(old):  # newest first, until the budget is spent
            words = self.summarise(turn)
            if len(summary) + len(words) > self.budget:
                break
            summary = words + summary
        return "Summary: " + " ".join(summary) + "\n" + "\n".join(conv.turns[-self.k:])


class VectorMemory:
    """Long-term memory: all past turns embedded; the ``top_k`` most similar to the question are recalled.

    ``vectors`` maps a text to its unit embedding (the caller embeds every distinct text once).
    """

    def __init__(self, vectors: dict[str, np.ndarray], top_k: int):
        self.vectors, self.top_k = vectors, top_k

    def context(self, conv: Conversation) -> str:
        keys = np.stack([self.vectors[t] for t in conv.turns])  # (T, d)
        sims = keys @ self.vectors[conv.question]
        best = np.argsort(-sims, kind="stable")[:self.top_k]
        return "\n".join(conv.turns[i] for i in sorted(best))


def fact_recalled(context: str, conv: Conversation) -> bool:
    """Whether the needed value is in the context (tokens, so "falcon-4821" does not match "falcon-48210")."""
    return f" {' '.join(tokenize(conv.value))} " in f" {' '.join(tokenize(context))} "
