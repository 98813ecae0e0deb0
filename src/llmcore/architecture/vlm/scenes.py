r"""Generated scenes for the vision-language chapter: a small canvas with one or two coloured shapes,
a caption, and templated questions whose one-word answers can be checked exactly.

A scene is a list of objects ``(colour, shape, side)``; two-object scenes put one object in each
half, with different colours *and* different shapes, so every question names one object unambiguously.
The image is stored as a grid of palette indices ``(S, S)`` (``uint8``: 0 = background) and becomes
RGB only inside the vision encoder (:func:`to_rgb`), so a batch of images travels as one integer tensor.

**Held-out combinations.** :data:`HELD_OUT` lists (colour, shape) pairs that never appear in a
training scene; every colour and every shape does appear, just not together. A model that has
learnt "colour" and "shape" as separate attributes answers questions about a *blue circle* although
it never saw one -- compositional generalisation.

Questions (answers are single words; chance is 1/4, 1/3, 1/2, 1/2 per type)::

    Q: what colour is the circle?     A: red
    Q: what shape is the blue one?    A: square
    Q: how many shapes are there?     A: two
    Q: is the triangle left or right? A: left
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmcore.core.errors import LLMCoreError

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")
COUNTS = ("zero", "one", "two")
#: RGB of palette index 0 (background) and of each colour, in [0, 1].
PALETTE = torch.tensor([[0.08, 0.08, 0.10], [0.90, 0.15, 0.15], [0.15, 0.75, 0.20],
                        [0.20, 0.35, 0.95], [0.95, 0.85, 0.15]])
#: (colour, shape) pairs never drawn in a training scene (one per shape, all colours still seen).
HELD_OUT = (("red", "triangle"), ("green", "square"), ("blue", "circle"))
QUESTION_TYPES = ("colour", "shape", "count", "side")
#: Chance of guessing each question type's answer uniformly.
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "count": 1 / 2, "side": 1 / len(SIDES)}


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    side: str


def shape_mask(shape: str, size: int) -> np.ndarray:
    """A filled ``size x size`` boolean mask of ``shape`` (circle: disc; triangle: apex up)."""
    r = np.arange(size) + 0.5
    yy, xx = np.meshgrid(r, r, indexing="ij")
    c = size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= (c - 0.1) ** 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # row y spans |x - c| <= y / 2
        return np.abs(xx - c) <= yy / 2 + 0.25
    raise LLMCoreError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def render(objs: list[Obj], canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Palette-index image ``(canvas, canvas)``: each object at a random spot of its half."""
    img = np.zeros((canvas, canvas), dtype=np.uint8)
    size = max(4, (canvas * 7) // 16)
    half = canvas // 2
    for o in objs:
        x0 = int(rng.integers(0, half - size + 1)) + (half if o.side == "right" else 0)
        y0 = int(rng.integers(0, canvas - size + 1))
        m = shape_mask(o.shape, size)
        img[y0:y0 + size, x0:x0 + size][m] = COLOURS.index(o.colour) + 1
    return img


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """Palette indices ``(B, S, S)`` -> RGB ``(B, 3, S, S)`` in [0, 1]."""
    return PALETTE.to(images.device)[images.long()].permute(0, 3, 1, 2)


def sample_objects(rng: np.random.Generator, split: str) -> list[Obj]:
    """One or two objects. ``split="train"``: no held-out pair; ``"combo"``: the first object is a held-out pair."""
    def pair_ok(c: str, s: str) -> bool:
        return (c, s) not in HELD_OUT

    n = int(rng.integers(1, 3))
    sides = list(rng.permutation(SIDES))
    if split == "combo":
        c, s = HELD_OUT[int(rng.integers(len(HELD_OUT)))]
        first = Obj(c, s, sides[0])
    else:
        while True:
            c, s = COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]
            if pair_ok(c, s):
                break
        first = Obj(c, s, sides[0])
    objs = [first]
    if n == 2:
        while True:
            c, s = COLOURS[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))]
            if c != first.colour and s != first.shape and pair_ok(c, s):
                break
        objs.append(Obj(c, s, sides[1]))
    return objs


def caption(objs: list[Obj]) -> str:
    """``"a red circle on the left and a blue square on the right"`` (left object first)."""
    parts = [f"a {o.colour} {o.shape} on the {o.side}" for o in sorted(objs, key=lambda o: o.side)]
    return " and ".join(parts)


def question(objs: list[Obj], qtype: str, target: Obj) -> tuple[str, str]:
    """``(question, answer)`` of type ``qtype`` about ``target`` (one of ``objs``)."""
    if qtype == "colour":
        return f"what colour is the {target.shape}?", target.colour
    if qtype == "shape":
        return f"what shape is the {target.colour} one?", target.shape
    if qtype == "count":
        return "how many shapes are there?", COUNTS[len(objs)]
    if qtype == "side":
        return f"is the {target.shape} left or right?", target.side
    raise LLMCoreError(f"unknown question type {qtype!r}; valid: {', '.join(QUESTION_TYPES)}")


def prompt_text(q: str) -> str:
    """The text the language model reads before the answer (the answer follows after a space)."""
    return f"Q: {q}\nA:"


@dataclass
class SceneSet:
    """``n`` scenes with one question each. ``images (n, S, S)`` uint8 palette indices."""

    images: torch.Tensor
    objects: list[list[Obj]]
    captions: list[str]
    questions: list[str]
    answers: list[str]
    qtypes: list[str]


def make_scenes(n: int, canvas: int, seed: int, split: str = "train") -> SceneSet:
    """``n`` scenes of ``split`` (``"train"``, ``"test"`` = new scenes without held-out pairs, ``"combo"``
    = each scene holds a held-out pair and its question is about that object, except count questions)."""
    if split not in ("train", "test", "combo"):
        raise LLMCoreError(f"unknown split {split!r}; valid: train, test, combo")
    if canvas < 8 or canvas % 2:
        raise LLMCoreError(f"canvas must be an even size >= 8, got {canvas}")
    rng = np.random.default_rng([seed, ("train", "test", "combo").index(split)])
    images, objects, caps, qs, ans, types = [], [], [], [], [], []
    for i in range(n):
        objs = sample_objects(rng, "combo" if split == "combo" else "train")
        qtype = QUESTION_TYPES[i % len(QUESTION_TYPES)]
        target = objs[0] if split == "combo" else objs[int(rng.integers(len(objs)))]
        q, a = question(objs, qtype, target)
        images.append(render(objs, canvas, rng))
        objects.append(objs)
        caps.append(caption(objs))
        qs.append(q)
        ans.append(a)
        types.append(qtype)
    return SceneSet(torch.from_numpy(np.stack(images)), objects, caps, qs, ans, types)
