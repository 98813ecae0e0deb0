"""The launcher and the byte-counting collectives: correctness, bytes, and failure modes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest
import torch

from llmcore.core.errors import LLMCoreError
from llmcore.engineering.dist_utils import (
    DistributedError,
    collectives_worker,
    failing_worker,
    free_port,
    init_from_env,
    launch,
    resolve_backend,
    ring_all_reduce_bytes,
    ring_gather_bytes,
)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_collectives_equal_gloo_and_count_bytes(world):
    res = launch(collectives_worker, world, (96, 0))
    S = 96 * 4
    for r in res:
        for k in ("all_reduce_err", "reduce_scatter_err", "all_gather_err", "all_to_all_err"):
            assert r[k] < 1e-5, (k, r[k])
        assert r["all_reduce_sent"] == pytest.approx(ring_all_reduce_bytes(S, world), abs=0)
        assert r["reduce_scatter_sent"] == ring_gather_bytes(S, world)
        assert r["all_gather_sent"] == ring_gather_bytes(S, world)
        assert r["all_to_all_sent"] == r["all_to_all_expected"]


def _expect_failure(mode: str, **kw) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(DistributedError) as e:
        launch(failing_worker, 2, (mode,), **kw)
    return str(e.value), time.monotonic() - t0


def test_killed_rank_fails_fast_with_clear_message():
    msg, dt = _expect_failure("kill", timeout_s=30, collective_timeout_s=10)
    assert "rank 1 killed by signal SIGKILL" in msg.splitlines()[0]
    assert dt < 15


def test_hung_rank_is_detected_by_the_collective_timeout():
    msg, dt = _expect_failure("hang", timeout_s=30, collective_timeout_s=2)
    assert "rank 1 hung" in msg.splitlines()[0]
    assert "Timed out" in msg  # what rank 0 saw
    assert dt < 15


def test_exception_on_one_rank_names_it():
    msg, _ = _expect_failure("raise", timeout_s=30, collective_timeout_s=10)
    assert "rank 1 raised ValueError: boom" in msg.splitlines()[0]


def test_rank_exit_code_is_reported():
    msg, _ = _expect_failure("exit", timeout_s=30, collective_timeout_s=10)
    assert "rank 1 exited with code 3" in msg.splitlines()[0]


def test_job_timeout_kills_everything():
    msg, dt = _expect_failure("all_hang", timeout_s=3, collective_timeout_s=60)
    assert "timed out" in msg.splitlines()[0] and "did not finish within 3 s" in msg
    assert dt < 10


def test_two_jobs_at_once_do_not_collide():
    out: dict[int, object] = {}

    def job(i):
        try:
            out[i] = launch(collectives_worker, 2, (64, i))
        except Exception as e:  # noqa: BLE001
            out[i] = e

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(2):
        assert isinstance(out[i], list), out[i]
        assert out[i][0]["all_reduce_err"] < 1e-5


def test_nccl_without_enough_gpus_is_a_clear_error():
    too_many = (torch.cuda.device_count() if torch.cuda.is_available() else 0) + 1
    with pytest.raises(LLMCoreError, match="nccl.*GPU"):
        resolve_backend("cuda", too_many)
    with pytest.raises(LLMCoreError, match="nccl"):
        launch(collectives_worker, too_many, backend="nccl")


def test_bad_arguments():
    with pytest.raises(LLMCoreError):
        launch(collectives_worker, 0)
    with pytest.raises(LLMCoreError):
        launch(collectives_worker, 2, backend="mpi")
    with pytest.raises(LLMCoreError):
        resolve_backend("tpu", 2)


def test_init_from_env_outside_torchrun_is_a_clear_error(monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(LLMCoreError, match="not started by torchrun"):
        init_from_env()
    monkeypatch.setenv("LLMCORE_BACKEND", "mpi")
    with pytest.raises(LLMCoreError, match="LLMCORE_BACKEND"):
        init_from_env()


def test_distributed_chapter_runs_under_torchrun():
    """The README's promise: `torchrun --nproc-per-node 2 -m llmcore.engineering.distributed` (gloo on CPU)."""
    env = {**os.environ, "LLMCORE_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "llmcore.engineering.distributed"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert [line.split(":")[0] for line in lines] == ["rank 0/2", "rank 1/2"]
    errors = [float(tok) for line in lines for tok in re.findall(r"\d\.\de[-+]\d\d", line)]
    assert len(errors) == 10 and max(errors) < 1e-5
