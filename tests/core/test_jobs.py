"""The process-pool helper: a job in a worker returns what the same call returns here."""

import math
import os
import warnings

import pytest
import torch

from llmcore.core.errors import LLMCoreError
from llmcore.core.jobs import background, run_jobs


def seeded_draw(seed: int, n: int) -> list[float]:
    """A job that seeds itself: the same numbers in any process."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    return torch.randn(n).tolist()


def worker_state() -> tuple[str | None, bool]:
    """What a worker starts with: the progress switch, and whether the caller's marker filter came along."""
    marked = any(f[1] is not None and f[1].pattern == "marker-7f3" for f in warnings.filters)
    return os.environ.get("LLMCORE_NO_PROGRESS"), marked


def fails(message: str) -> None:
    raise LLMCoreError(message)


def test_run_jobs_in_workers_equals_one_after_another():
    jobs = [(seeded_draw, (s, 3)) for s in (0, 1, 2)]
    inline = run_jobs(jobs, parallel=False)
    assert inline[0] == seeded_draw(0, 3)
    assert run_jobs(jobs, workers=2) == inline
    assert run_jobs([(math.hypot, (3.0, 4.0))]) == [5.0]  # one job: no worker process


def test_background_job_returns_the_inline_result():
    job = background(seeded_draw, 7, 4)
    assert job.parallel == ((os.cpu_count() or 1) > 1)
    assert job.result() == seeded_draw(7, 4)
    assert job.result() == seeded_draw(7, 4)  # read twice: the same value


def test_background_without_a_worker_runs_at_result_time():
    calls = []
    job = background(calls.append, "ran", parallel=False)
    assert not job.parallel and calls == []  # deferred: nothing ran yet
    job.result()
    assert calls == ["ran"]


@pytest.mark.parametrize("parallel", [True, False])
def test_background_reraises_the_jobs_error(parallel):
    job = background(fails, "no such module", parallel=parallel)
    with pytest.raises(LLMCoreError, match="no such module"):
        job.result()


def test_worker_is_quiet_and_inherits_the_callers_warning_filters():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="marker-7f3")
        job = background(worker_state)
        pooled = run_jobs([(worker_state, ()), (worker_state, ())], workers=2)
    assert job.result() == ("1", True) and pooled == [("1", True)] * 2
