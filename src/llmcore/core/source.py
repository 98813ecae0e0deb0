"""Show code from ``llmcore`` in a chapter: one source of truth, never pasted twice."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any


def source_of(obj: Any) -> str:
    """The source text of a function, class or module, dedented."""
    return textwrap.dedent(inspect.getsource(obj))


def show_source(*objs: Any) -> None:
    """Display the source of each object; a highlighted code block in notebooks, plain text otherwise."""
    blocks = []
    for obj in objs:
        mod = inspect.getmodule(obj)
        where = mod.__name__ if mod else "?"
        name = getattr(obj, "__qualname__", getattr(obj, "__name__", where))
        blocks.append((f"{where}.{name}" if name != where else where, source_of(obj)))
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            md = "\n\n".join(f"`{title}`\n\n```python\n{src.rstrip()}\n```" for title, src in blocks)
            display(Markdown(md))
            return
    except ImportError:
        pass
    for title, src in blocks:
        print(f"# --- {title} ---\n{src}")
