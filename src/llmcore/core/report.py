"""The result of one closed loop: metrics, acceptance criteria with pass/fail, figures.

A :class:`Report` serialises to JSON (machines) and Markdown (people). Criteria are
*checked*, never declared: each one holds the measured value, the comparison and the
threshold, and ``passed`` is computed from them.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_OPS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass
class Criterion:
    """``value <op> threshold`` — e.g. ``Criterion("bellman residual", 3e-12, "<", 1e-8)``."""

    name: str
    value: float
    op: str
    threshold: float
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown comparison {self.op!r}; valid: {sorted(_OPS)}")
        value = float(self.value)
        self.value = value
        self.threshold = float(self.threshold)
        self.passed = (not math.isnan(value)) and bool(_OPS[self.op](value, self.threshold))

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"[{mark}] {self.name}: {_fmt(self.value)} {self.op} {_fmt(self.threshold)}"


def _cell(text: str) -> str:
    """Escape a Markdown table cell."""
    return text.replace("|", "\\|")


def _fmt(x: float) -> str:
    if x == 0 or (1e-3 <= abs(x) < 1e6):
        return f"{x:.4g}"
    return f"{x:.3e}"


@dataclass
class Report:
    """What one ``run(toy, device, seed)`` measured."""

    module: str
    title: str
    toy: bool
    device: str
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    criteria: list[Criterion] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = float("nan")

    # -- building -----------------------------------------------------------
    def metric(self, name: str, value: float) -> float:
        """Record a metric and return it (so it can be used inline)."""
        self.metrics[name] = float(value)
        return float(value)

    def check(self, name: str, value: float, op: str, threshold: float) -> Criterion:
        """Add an acceptance criterion ``value <op> threshold`` and return it."""
        crit = Criterion(name, value, op, threshold)
        self.criteria.append(crit)
        return crit

    # -- reading ------------------------------------------------------------
    @property
    def passed(self) -> bool:
        """True when there is at least one criterion and all of them pass."""
        return bool(self.criteria) and all(c.passed for c in self.criteria)

    def failures(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    def summary(self, digits: int = 4) -> str:
        """Rounded, deterministic lines (metrics then criteria) for nbval-checked cells."""
        lines = [f"{k}: {round(v, digits)}" for k, v in self.metrics.items()]
        lines += [str(c) for c in self.criteria]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        d = dict(d)
        d.pop("passed", None)
        crits = [Criterion(c["name"], c["value"], c["op"], c["threshold"]) for c in d.pop("criteria", [])]
        return cls(criteria=crits, **d)

    def to_markdown(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        out = [
            f"## {self.title} (`{self.module}`) — {status}",
            "",
            f"toy={self.toy} · device={self.device} · seed={self.seed} · wall={self.wall_s:.1f}s",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        out += [f"| {_cell(k)} | {_fmt(v)} |" for k, v in self.metrics.items()]
        out += ["", "| criterion | measured | target | result |", "|---|---|---|---|"]
        out += [
            f"| {_cell(c.name)} | {_fmt(c.value)} | {c.op} {_fmt(c.threshold)} | {'PASS' if c.passed else 'FAIL'} |"
            for c in self.criteria
        ]
        if self.figures:
            out += ["", "Figures: " + ", ".join(f"`{f}`" for f in self.figures)]
        if self.notes:
            out += ["", *[f"- {n}" for n in self.notes]]
        return "\n".join(out) + "\n"

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``<module>.json`` and ``<module>.md`` into ``directory``; return both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        js, md = directory / f"{self.module}.json", directory / f"{self.module}.md"
        # write to temporary names then rename, so an interrupted run never leaves half a file
        for path, text in ((js, self.to_json()), (md, self.to_markdown())):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        return js, md
