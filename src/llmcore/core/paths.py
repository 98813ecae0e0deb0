"""Where runs write: ``output/`` at the repository root (git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path | None:
    """The checkout's root (the folder holding ``pyproject.toml`` and ``src/llmcore``), if any."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "llmcore").is_dir():
            return parent
    return None


def output_dir(*parts: str) -> Path:
    """``$LLMCORE_OUTPUT`` or ``<repo>/output`` (``./output`` when installed elsewhere), created."""
    env = os.environ.get("LLMCORE_OUTPUT")
    root = repo_root()
    base = Path(env) if env else (root / "output" if root else Path.cwd() / "output")
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
