r"""The agents' world: real Python tools over a generated fact base, and multi-hop tasks with known answers.

A :class:`World` is a set of made-up countries (``"koriba"``), each with a capital city and a river.
Three tools act on it, each an ordinary Python function behind an OpenAI function-calling schema:

* ``search(query)`` -- the best-matching sentence of the fact base (``'the capital of "koriba" is
  "zamute".'``), scored by word overlap $|\mathrm{words}(q) \cap \mathrm{words}(f)|$ (ties: the first fact);
* ``lookup(key)`` -- a key-value database of city populations (``"zamute" -> "47"``);
* ``calculator(expression)`` -- integer ``+ - *`` evaluated by walking Python's ``ast`` (no ``eval``).

A task asks for a fact two or three hops away::

    what is the population of the capital of "koriba" times 6?
      search("koriba capital")    -> 'the capital of "koriba" is "zamute".'
      lookup("zamute")            -> "47"
      calculator("47 * 6")        -> "282"                         answer: 282

Names are always written in double quotes. The BPE tokenizer merges a space with the word after it, so
``koriba`` after a space and after a quote would be different token sequences, and the model would
have to translate between them when it copies a name from the question into a JSON argument (measured:
most of the fine-tuned agent's errors were such copies before the quotes). After a quote a name is the
same tokens in the question, the facts, the thoughts and the JSON.

The facts are drawn at random per world, so a model cannot know them: without tools it can only guess.
Names are split by a hash bucket, so held-out tasks use countries and cities no training trace mentions.
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from llmcore.agents.llm import ToolCall, check_call, function_schema
from llmcore.core.errors import LLMCoreError

SYLLABLES = ("ba", "ko", "ri", "mu", "te", "lo", "za", "ne", "pi", "su", "da", "ve", "xo", "ha", "ji", "fa")
TEST_PERCENT = 20  #: share of the name space held out for test worlds
OPS = {"plus": "+", "minus": "-", "times": "*"}
FAMILIES = ("pop", "calc")  #: two hops (search, lookup) | three hops (search, lookup, calculator)


def _bucket(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100


def draw_name(rng: random.Random, split: str, taken: set[str]) -> str:
    """A fresh 2-3 syllable name of ``split`` ("train" | "test") not in ``taken``."""
    if split not in ("train", "test"):
        raise LLMCoreError(f"split must be 'train' or 'test', got {split!r}")
    while True:
        n = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3))))
        if n not in taken and (_bucket(n) < TEST_PERCENT) == (split == "test"):
            taken.add(n)
            return n


# ---- the tools ------------------------------------------------------------------------------------------
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def calculate(expression: str) -> int:
    """Integer arithmetic ``+ - *`` and parentheses, by walking the ``ast`` (no ``eval``); raises ValueError."""
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"unsupported expression: {ast.dump(node)[:40]}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    return ev(tree)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@dataclass
class World:
    """Countries -> (capital, river); the search fact base; the population database."""

    capitals: dict[str, str]
    rivers: dict[str, str]
    population: dict[str, int]  # city -> population (the lookup database)
    facts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.facts:
            for c in self.capitals:
                self.facts += [f'the capital of "{c}" is "{self.capitals[c]}".', f'the river of "{c}" is "{self.rivers[c]}".']

    # the three tools (plain Python; the schemas below describe them to a model)
    def search(self, query: str) -> str:
        q = words(query)
        best = max(range(len(self.facts)), key=lambda i: (len(q & words(self.facts[i])), -i))
        return self.facts[best] if q & words(self.facts[best]) else "no result."

    def lookup(self, key: str) -> str:
        k = key.strip().strip('"').lower()
        if k not in self.population:
            raise KeyError(f"no key {key!r}")
        return str(self.population[k])

    def calculator(self, expression: str) -> str:
        return str(calculate(expression))


def make_world(n_countries: int, split: str, seed: int) -> World:
    """``n_countries`` countries with fresh names of ``split``; populations uniform in 10..99."""
    rng, taken = random.Random(f"world-{split}-{seed}"), set()
    caps, rivers, pop = {}, {}, {}
    for _ in range(n_countries):
        c = draw_name(rng, split, taken)
        caps[c], rivers[c] = draw_name(rng, split, taken), draw_name(rng, split, taken)
        pop[caps[c]] = rng.randint(10, 99)
    return World(caps, rivers, pop)


TOOL_SCHEMAS = [
    function_schema("search", "search the fact base; returns the best-matching sentence",
                    query=("string", "what to look for, e.g. 'koriba capital'")),
    function_schema("lookup", "the population of a city from the database", key=("string", "a city name")),
    function_schema("calculator", "evaluate integer arithmetic with + - *", expression=("string", "e.g. '47 * 6'")),
]


@dataclass
class Toolbox:
    """The tools of one world: ``call(tool_call) -> observation`` never raises (errors become text)."""

    world: World
    schemas: list[dict] = field(default_factory=lambda: list(TOOL_SCHEMAS))
    log: list[tuple[ToolCall, str]] = field(default_factory=list)

    def fns(self) -> dict[str, Callable[..., str]]:
        return {"search": self.world.search, "lookup": self.world.lookup, "calculator": self.world.calculator}

    def call(self, call: ToolCall) -> str:
        problem = check_call(call, self.schemas)
        if problem:
            out = f"error: {problem}"
        else:
            try:
                out = self.fns()[call.name](**call.arguments)
            except (KeyError, ValueError) as e:
                out = f"error: {e.args[0] if e.args else e}"
        self.log.append((call, out))
        return out


def render_tools(schemas: list[dict]) -> str:
    """The one line a text-protocol model reads about its tools: ``tools: search(query) lookup(key) ...``
    (the full JSON schemas go to endpoints with native tool calling)."""
    sig = [f"{s['function']['name']}({', '.join(s['function']['parameters']['properties'])})" for s in schemas]
    return "tools: " + " ".join(sig)


# ---- tasks ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One question with its verifiable answer and the gold tool path."""

    family: str  # "pop" | "calc"
    question: str
    answer: str
    country: str
    capital: str
    population: int
    op: str = ""  # "plus" | "minus" | "times" ("calc" only)
    k: int = 0

    @property
    def expression(self) -> str:
        return f"{self.population} {OPS[self.op]} {self.k}" if self.op else ""

    @property
    def hops(self) -> int:
        return 3 if self.op else 2


def make_tasks(world: World, n: int, seed: int, families: tuple[str, ...] = FAMILIES) -> list[Task]:
    """``n`` tasks over ``world`` (countries cycled in a seeded order, families alternating at random)."""
    bad = set(families) - set(FAMILIES)
    if bad:
        raise LLMCoreError(f"unknown task families {sorted(bad)}; valid: {FAMILIES}")
    rng = random.Random(f"tasks-{seed}")
    countries = list(world.capitals)
    rng.shuffle(countries)
    out = []
    for i in range(n):
        c = countries[i % len(countries)]
        cap = world.capitals[c]
        p = world.population[cap]
        fam = rng.choice(families)
        q = f'what is the population of the capital of "{c}"'
        if fam == "pop":
            out.append(Task(fam, q + "?", str(p), c, cap, p))
        else:
            op, k = rng.choice(sorted(OPS)), rng.randint(2, 9)
            t = Task(fam, f"{q} {op} {k}?", "", c, cap, p, op, k)
            out.append(Task(fam, t.question, str(calculate(t.expression)), c, cap, p, op, k))
    return out


def normalize_answer(text: str) -> str:
    """The answer a reply states, for grading: the last integer in it ('' if none)."""
    nums = re.findall(r"-?\d+", text)
    return nums[-1] if nums else ""
