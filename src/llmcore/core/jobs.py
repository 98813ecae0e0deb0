"""Independent jobs on the second core: the book's one process-pool helper.

The closed loops of the book run one torch thread each (``THREADS`` in their modules), so that their
numbers do not depend on how many cores are free. On a 2-core laptop that leaves a core idle. Jobs
that do not depend on each other can run in worker processes instead, and give the same results as
running them one after another, because each job seeds itself and sets its own thread count.

Two shapes:

* :func:`run_jobs` -- a list of ``(fn, args)``; the results come back in order (the policy-gradient
  chapter's seeds).
* :func:`background` -- one job on the other core while this process does something else; its
  ``result()`` is read later (the PPO / DPO chapter runs DPO beside PPO-RLHF).

Workers use the ``spawn`` start method: a fresh interpreter that imports ``fn``'s module, safe from a
notebook kernel (``fork`` after torch has started its threads is not). ``fn`` must be a module-level
function of an importable module, and its arguments and result must pickle. A worker shows no progress
bars (from a notebook they would arrive as raw text, interleaved with the caller's) and starts with the
caller's warning filters, so it warns about what the caller would warn about.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any


def _init_worker(filters: list) -> None:
    os.environ["LLMCORE_NO_PROGRESS"] = "1"  # llmcore.core.progress
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # datasets reads it when first imported
    warnings.filters[:] = filters


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(list(warnings.filters),))


def _call(job: tuple) -> Any:
    fn, args = job
    return fn(*args)


def run_jobs(jobs: list[tuple], workers: int | None = None, parallel: bool = True) -> list:
    """Call each ``(fn, args)`` of ``jobs`` and return the results in order, in up to ``workers`` processes
    (default: up to 2 CPUs). ``parallel=False`` (or one worker) calls them here, one after another."""
    workers = workers or min(2, os.cpu_count() or 1, len(jobs))
    if workers <= 1 or not parallel:
        return [_call(j) for j in jobs]
    with _pool(workers) as ex:
        return list(ex.map(_call, jobs))


class Background:
    """One call of ``fn(*args, **kwargs)``, started by :func:`background`; :meth:`result` waits for it."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, parallel: bool) -> None:
        self._call = (fn, args, kwargs)
        self._future: Future | None = None
        self.parallel = parallel
        if parallel:
            ex = _pool(1)
            self._future = ex.submit(fn, *args, **kwargs)
            ex.shutdown(wait=False)  # the worker exits once the job is done

    def result(self) -> Any:
        """The job's return value (its exception, re-raised here, if it failed). Without a worker the job
        runs now, in this process."""
        if self._future is None:
            fn, args, kwargs = self._call
            self._future = Future()
            try:
                self._future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 -- stored and re-raised by .result(), like a worker's
                self._future.set_exception(e)
        return self._future.result()


def background(fn: Callable, *args: Any, parallel: bool = True, **kwargs: Any) -> Background:
    """Start ``fn(*args, **kwargs)`` in a worker process and return at once; ``.result()`` collects it.

    ``parallel=False`` (e.g. on a GPU, where one process already keeps the device busy, or on a single
    CPU) defers the call to ``.result()`` in this process, so the results are the same either way.
    """
    return Background(fn, args, kwargs, parallel and (os.cpu_count() or 1) > 1)


__all__ = ["Background", "background", "run_jobs"]
