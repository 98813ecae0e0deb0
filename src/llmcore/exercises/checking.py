"""The machinery behind every ``check_<name>(fn)``: run the reader's function on hidden cases, compare
with the book's reference implementation, print one PASS line or raise one clear AssertionError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch


def as_array(x: Any) -> np.ndarray:
    """The reader's answer as a float NumPy array (accepts tensors, lists, scalars)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def _short(x: Any, limit: int = 90) -> str:
    try:
        text = np.array2string(as_array(x), precision=4, separator=", ", max_line_width=10_000) \
            if not isinstance(x, str) else x
    except (TypeError, ValueError):  # not numbers (e.g. a tuple of module names): show it as Python writes it
        text = repr(x)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_cases(name: str, fn: Callable, cases: Iterable[tuple[dict, Any]], atol: float = 1e-6) -> int:
    """Call ``fn(**inputs)`` for each ``(inputs, expected)``; return the number of cases on success.

    Raises:
        AssertionError: on the first case whose answer has the wrong shape or differs by more than
        ``atol``, with a one-line message naming the input, the expected and the returned value.
    """
    n = 0
    for k, (inputs, expected) in enumerate(cases, 1):
        shown = ", ".join(f"{key}={_short(v, 40)}" for key, v in inputs.items())
        try:
            got = fn(**{key: (v.clone() if isinstance(v, torch.Tensor) else np.copy(v) if isinstance(v, np.ndarray)
                              else v) for key, v in inputs.items()})
        except Exception as exc:  # the reader's bug, reported as a failed case
            raise AssertionError(f"{name}: case {k} ({shown}) raised {type(exc).__name__}: {exc}") from exc
        if got is None:
            raise AssertionError(f"{name}: case {k} ({shown}) returned None -- did you forget `return`?")
        want, have = as_array(expected), as_array(got)
        if have.shape != want.shape:
            raise AssertionError(f"{name}: case {k} ({shown}) expected shape {want.shape}, got {have.shape}")
        if not np.allclose(have, want, atol=atol, rtol=0, equal_nan=True):
            with np.errstate(invalid="ignore"):  # inf - inf (masked logits) is nan: no warning for it
                diff = np.max(np.abs(have - want))
            raise AssertionError(f"{name}: case {k} ({shown}) expected {_short(want)}, got {_short(have)} "
                                 f"(max abs diff {diff:.3g})")
        n += 1
    print(f"PASS {name}: {n} hidden cases agree with the book's reference implementation")
    return n
