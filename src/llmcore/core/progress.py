"""Progress bars: tqdm.auto (a widget in notebooks, text in terminals).

Set ``LLMCORE_NO_PROGRESS=1`` to silence them (the test-suite does).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """``tqdm.auto.tqdm`` with our defaults (``leave=True``, disabled by env var)."""
    kwargs.setdefault("leave", True)
    kwargs.setdefault("disable", os.environ.get("LLMCORE_NO_PROGRESS", "") not in ("", "0"))
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
