"""User-facing errors: one clear line, exit status 2, never a traceback wall."""

from __future__ import annotations


class LLMCoreError(Exception):
    """An error caused by bad input (unknown module, bad parameter, missing device).

    The CLI prints ``error: <message>`` and exits with status 2.
    """


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise :class:`LLMCoreError` unless ``lo <= value <= hi`` (bounds optional)."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else repr(lo)
        hi_s = "inf" if hi is None else repr(hi)
        raise LLMCoreError(f"{name}={value!r} is out of range [{lo_s}, {hi_s}]")
