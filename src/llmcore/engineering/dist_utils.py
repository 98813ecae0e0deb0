r"""Launching ``torch.distributed`` jobs from a notebook, and counting the bytes they send.

Two pieces every multi-process chapter uses:

* :func:`launch` runs ``fn(rank, world, *args)`` in ``world`` processes joined in one process group
  (gloo on CPU, NCCL on GPUs) and returns each rank's return value. Worker functions must live in an
  importable module (``llmcore``), never in the notebook, so the child processes can unpickle them.

  - **Fast start.** Processes come from a *forkserver* that has imported torch once; after the first
    job a new group starts in ~0.1 s instead of ~3 s per rank (each ``spawn`` re-imports torch).
  - **No port collisions.** The parent opens the rendezvous ``TCPStore`` on port 0: the OS picks a
    free port and the parent *holds* it for the job's life, so two jobs on one machine never race
    for the same port (no "pick a free port, then hope it is still free" gap).
  - **Never a hang.** Collectives time out after ``collective_timeout_s`` inside the ranks, and the
    parent kills the whole job after ``timeout_s``. A rank that dies (exception, signal, ``os._exit``)
    or hangs turns into one :class:`DistributedError` naming the rank and the cause.

* :class:`Comm` performs the collectives through point-to-point ``isend``/``irecv`` (ring
  all-reduce = ring reduce-scatter + ring all-gather, pairwise all-to-all) and **counts every byte
  it puts on the wire**, per operation and tag. The textbook volumes are then *measured*, not assumed:
  a ring all-reduce of :math:`S` bytes sends :math:`2\,(n-1)/n \cdot S` bytes per rank.
"""

from __future__ import annotations

import datetime
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llmcore.core.errors import LLMCoreError

#: Modules the forkserver imports once, so that each rank starts in milliseconds.
PRELOAD = [
    "torch",
    "torch.distributed",
    "torch.nn.parallel",
    "torch.distributed.optim",
    "torch.distributed.fsdp",
    "torch.distributed.tensor",
    "torch._dynamo",  # DistributedDataParallel imports it on first use (seconds)
    "llmcore.engineering.dist_utils",
    "llmcore.engineering.tensor_parallel",
    "llmcore.engineering.pipeline",
    "llmcore.engineering.expert_parallel",
    "llmcore.engineering.pd_disagg",
    "llmcore.engineering.zero",
]


class DistributedError(LLMCoreError, RuntimeError):
    """A distributed job failed: a rank raised, died, or the job hung past its timeout."""


# -- backend / device -------------------------------------------------------------------------------

def resolve_backend(device: str, world: int) -> tuple[str, str]:
    """Map a chapter's ``device`` knob to ``(backend, device_type)`` for a job of ``world`` ranks.

    * ``"cpu"``  → gloo on CPU tensors;
    * ``"cuda"`` → NCCL, one GPU per rank: a clear :class:`LLMCoreError` when fewer GPUs exist;
    * ``"auto"`` → NCCL when there are at least ``world`` GPUs, else gloo on CPU.
    """
    name = str(device).strip().lower()
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        return ("nccl", "cuda") if n_gpu >= world else ("gloo", "cpu")
    if name == "cpu":
        return "gloo", "cpu"
    if name.startswith("cuda"):
        check_nccl(world)
        return "nccl", "cuda"
    raise LLMCoreError(f"unknown device {device!r}; valid: auto, cpu, cuda")


def check_nccl(world: int) -> None:
    """NCCL needs one CUDA GPU per rank; say so clearly instead of failing deep inside NCCL."""
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpu < world:
        raise LLMCoreError(
            f"backend 'nccl' needs {world} CUDA GPU(s) (one per rank) but {n_gpu} are available here; "
            "use device='cpu' (gloo) or device='auto'"
        )
    if not dist.is_nccl_available():
        raise LLMCoreError("this torch build has no NCCL; use device='cpu' (gloo)")


def worker_device(rank: int) -> torch.device:
    """Inside a rank: its GPU under NCCL (the one ``set_device`` chose: the *local* rank, which differs from
    the global ``rank`` on a second node), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work before reading a clock (CUDA kernels run asynchronously); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def init_from_env() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (``env://`` rendezvous).

    NCCL with one GPU per local rank when CUDA is present (``LLMCORE_BACKEND=gloo`` forces gloo), gloo on
    CPU otherwise. Under NCCL it pins this process to GPU ``LOCAL_RANK`` *before* the group is created,
    so multi-node jobs (``torchrun --nnodes 2 ...``) put rank 5 on its node's GPU 1, not on GPU 5.
    Returns ``(rank, world)``.
    """
    want = os.environ.get("LLMCORE_BACKEND", "nccl" if torch.cuda.is_available() else "gloo")
    if want not in ("gloo", "nccl"):
        raise LLMCoreError(f"LLMCORE_BACKEND must be gloo or nccl, got {want!r}")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise LLMCoreError("not started by torchrun (RANK/WORLD_SIZE unset): run "
                           "`torchrun --nproc-per-node N -m <module>` or use launch()")
    kwargs: dict[str, Any] = {}
    if want == "nccl":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise LLMCoreError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(want, **kwargs)
    return dist.get_rank(), dist.get_world_size()


def torchrun_entry(main: Callable[[], None]) -> None:
    """Run ``main`` as a ``python -m`` / torchrun entry point: bad input is one ``error:`` line and exit 2."""
    try:
        main()
    except LLMCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free *now* (for ``torchrun --master-port``); :func:`launch` does not need it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- the launcher -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _JobSpec:
    host: str
    port: int
    world: int
    backend: str
    collective_timeout_s: float
    result_dir: str
    threads: int


def _worker_entry(rank: int, spec: _JobSpec, fn: Callable[..., Any], args: tuple) -> None:
    """What each child process runs: join the group, call ``fn``, save the result or the traceback."""
    out = Path(spec.result_dir)
    code = 0
    try:
        torch.set_num_threads(spec.threads)
        if spec.backend == "gloo" and "GLOO_SOCKET_IFNAME" not in os.environ and spec.host == "127.0.0.1":
            names = {n for _i, n in socket.if_nameindex()}
            for lo in ("lo", "lo0"):
                if lo in names:
                    os.environ["GLOO_SOCKET_IFNAME"] = lo
                    break
        timeout = datetime.timedelta(seconds=spec.collective_timeout_s)
        store = dist.TCPStore(spec.host, spec.port, spec.world, is_master=False, timeout=timeout)
        kwargs: dict[str, Any] = {}
        if spec.backend == "nccl":
            torch.cuda.set_device(rank)
            kwargs["device_id"] = torch.device("cuda", rank)
        dist.init_process_group(spec.backend, store=store, rank=rank, world_size=spec.world,
                                timeout=timeout, **kwargs)
        result = fn(rank, spec.world, *args)
        torch.save(result, out / f"rank{rank}.pt")
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit non-zero
        (out / f"rank{rank}.err").write_text(
            f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}", encoding="utf-8")
        code = 1
    finally:
        if dist.is_initialized():
            try:
                if code == 0:
                    dist.destroy_process_group()
            except Exception:  # noqa: BLE001
                pass
    if code:
        os._exit(code)  # skip atexit handlers that could block on a broken group


_CTX = None


def _context():
    """The forkserver context (``spawn`` where fork is unavailable), preloading torch once."""
    global _CTX
    if _CTX is None:
        import torch.multiprocessing as tmp

        method = "forkserver" if "forkserver" in tmp.get_all_start_methods() else "spawn"
        ctx = tmp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(PRELOAD)
        _CTX = ctx
    return _CTX


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def launch(fn: Callable[..., Any], world: int, args: Sequence[Any] = (), *, backend: str = "gloo",
           timeout_s: float = 120.0, collective_timeout_s: float = 30.0, grace_s: float = 1.0,
           threads: int = 1) -> list[Any]:
    """Run ``fn(rank, world, *args)`` on ``world`` ranks; return the list of per-rank return values.

    ``fn`` must be a module-level function of an importable module. ``timeout_s`` bounds the whole
    job; ``collective_timeout_s`` bounds any one collective inside it (gloo/NCCL raise after it).
    Raises :class:`DistributedError` when any rank fails, dies or the job outlives ``timeout_s``: all
    ranks are killed first, so nothing is left running.
    """
    if not isinstance(world, int) or world < 1:
        raise LLMCoreError(f"world must be a positive integer, got {world!r}")
    if backend not in ("gloo", "nccl"):
        raise LLMCoreError(f"unknown backend {backend!r}; valid: gloo, nccl")
    if backend == "nccl":
        check_nccl(world)
    host = "127.0.0.1"
    # The parent owns the rendezvous store on an OS-chosen port, held until the job ends.
    store = dist.TCPStore(host, 0, None, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=collective_timeout_s))
    result_dir = tempfile.mkdtemp(prefix="llmcore_dist_")
    spec = _JobSpec(host, store.port, world, backend, collective_timeout_s, result_dir, threads)
    ctx = _context()
    procs = []
    try:
        for rank in range(world):
            p = ctx.Process(target=_worker_entry, args=(rank, spec, fn, tuple(args)), daemon=False)
            p.start()
            procs.append(p)
        deadline = time.monotonic() + timeout_s
        pending = {p.sentinel: r for r, p in enumerate(procs)}
        first_bad: int | None = None
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for s in multiprocessing.connection.wait(list(pending), timeout=min(left, 0.5)):
                r = pending.pop(s)
                procs[r].join()
                if procs[r].exitcode != 0 and first_bad is None:
                    first_bad = r
            if first_bad is not None:
                break
        if first_bad is not None:  # let the others notice and report their own errors, briefly
            end = time.monotonic() + grace_s
            for p in procs:
                p.join(timeout=max(0.0, end - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        _kill_all(procs)
        if first_bad is None and not hung:
            return [torch.load(Path(result_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
        raise DistributedError(_failure_message(procs, result_dir, first_bad, hung, timeout_s))
    finally:
        _kill_all(procs)
        shutil.rmtree(result_dir, ignore_errors=True)
        del store


def _kill_all(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    t_end = time.monotonic() + 2.0
    for p in procs:
        p.join(timeout=max(0.0, t_end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(timeout=2.0)


_COMM_ERROR_MARKS = ("Connection closed", "Connection reset", "Timed out", "timed out", "Broken pipe",
                     "NCCL", "gloo")


def _failure_message(procs, result_dir: str, first_bad: int | None, hung: list[int], timeout_s: float) -> str:
    """One readable message: the root cause first (a rank's own error, a killed rank, a hung rank),
    then what every rank saw. A peer's "connection closed" is a symptom, never the headline."""
    status: dict[int, tuple[int, str]] = {}  # rank -> (priority, text); lower priority = root cause
    for r, p in enumerate(procs):
        err = Path(result_dir) / f"rank{r}.err"
        if err.exists():
            head = err.read_text(encoding="utf-8").splitlines()[0][:300]
            comm = any(m in head for m in _COMM_ERROR_MARKS)
            status[r] = (3 if comm else 0, f"raised {head}")
        elif r in hung:
            status[r] = (2, "hung (made no progress; killed by the launcher)")
        elif p.exitcode not in (0, None):
            status[r] = (1, _describe_exit(p.exitcode))
    if not status:
        return f"distributed job failed (timeout {timeout_s:g} s) with no rank reporting an error"
    root = min(status, key=lambda r: (status[r][0], r))
    if first_bad is None:
        head = (f"distributed job timed out: rank(s) {hung} did not finish within {timeout_s:g} s — "
                "all ranks were killed")
    else:
        head = f"distributed job failed: rank {root} {status[root][1]} — the other ranks were stopped"
    lines = [head] + [f"  rank {r}: {status[r][1]}" for r in sorted(status)]
    err = Path(result_dir) / f"rank{root}.err"
    if err.exists():
        tb = err.read_text(encoding="utf-8").split("\n\n", 1)[-1].strip().splitlines()
        lines.append(f"  traceback of rank {root} (last lines):\n    " + "\n    ".join(tb[-6:]))
    return "\n".join(lines)


# -- byte-counting collectives ----------------------------------------------------------------------

def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class CommRecord:
    """One collective call: its name, a free-form tag, the tensor size and the bytes this rank sent."""

    op: str
    tag: str
    payload_bytes: int
    sent_bytes: int


class Comm:
    """Collectives over a process group, built from ``isend``/``irecv`` so that every byte is counted.

    ``impl="ring"`` (default) runs the textbook algorithms on point-to-point messages and counts the
    bytes handed to ``isend``; ``impl="native"`` calls the library collective (gloo/NCCL pick their own
    algorithm) and records only the payload (``sent_bytes=-1``: not measurable from outside).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, impl: str = "ring"):
        if impl not in ("ring", "native"):
            raise LLMCoreError(f"impl must be 'ring' or 'native', got {impl!r}")
        self.group = group
        self.impl = impl
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.records: list[CommRecord] = []
        self._sent = 0

    # -- bookkeeping --
    def _global(self, r: int) -> int:
        return r if self.group is None else dist.get_global_rank(self.group, r)

    def _isend(self, t: torch.Tensor, dst: int):
        t = t.contiguous()
        self._sent += nbytes(t)
        return dist.isend(t, self._global(dst), group=self.group)

    def _irecv(self, t: torch.Tensor, src: int):
        return dist.irecv(t, self._global(src), group=self.group)

    def _log(self, op: str, tag: str, payload: int, sent0: int) -> None:
        sent = self._sent - sent0 if self.impl == "ring" or op in ("send", "all_to_all") else -1
        self.records.append(CommRecord(op, tag, payload, sent))

    def sent_bytes(self, op: str | None = None, tag: str | None = None) -> int:
        """Bytes this rank sent, optionally only for one op and/or tag (prefix match on the tag)."""
        return sum(r.sent_bytes for r in self.records
                   if (op is None or r.op == op) and (tag is None or r.tag.startswith(tag)) and r.sent_bytes > 0)

    def summary(self) -> dict[str, dict[str, int]]:
        """``{"op/tag": {"calls", "payload_bytes", "sent_bytes"}}`` for tables."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"calls": 0, "payload_bytes": 0, "sent_bytes": 0})
        for r in self.records:
            d = out[f"{r.op}/{r.tag}"]
            d["calls"] += 1
            d["payload_bytes"] += r.payload_bytes
            d["sent_bytes"] += max(r.sent_bytes, 0)
        return dict(out)

    def reset(self) -> None:
        self.records.clear()

    # -- point to point --
    def send(self, t: torch.Tensor, dst: int, tag: str = ""):
        """Non-blocking send (returns the work handle; wait on it before reusing ``t``)."""
        s0 = self._sent
        work = self._isend(t, dst)
        self._log("send", tag, nbytes(t), s0)
        return work

    def recv(self, t: torch.Tensor, src: int) -> torch.Tensor:
        """Blocking receive into ``t``."""
        self._irecv(t, src).wait()
        return t

    # -- ring collectives --
    def reduce_scatter(self, x: torch.Tensor, tag: str = "") -> torch.Tensor:
        r"""Sum ``x`` (same shape on every rank, ``numel`` divisible by ``world``) over ranks; return
        this rank's chunk ``r`` of the flattened sum. Ring: :math:`n-1` steps, each sends one chunk."""
        n, r = self.world, self.rank
        flat = x.reshape(-1)
        if flat.numel() % n:
            raise LLMCoreError(f"reduce_scatter needs numel divisible by world={n}, got {flat.numel()}")
        s0 = self._sent
        if self.impl == "native" or n == 1:
            out = torch.empty(flat.numel() // n, dtype=x.dtype, device=x.device)
            if n == 1:
                out.copy_(flat)
            else:
                dist.reduce_scatter_tensor(out, flat.contiguous(), group=self.group)
        else:
            chunks = [c.clone() for c in flat.chunk(n)]
            buf = torch.empty_like(chunks[0])
            for step in range(n - 1):  # chunk (r-step-1) travels right; chunk (r-step-2) arrives from the left
                send_i, recv_i = (r - step - 1) % n, (r - step - 2) % n
                ws = self._isend(chunks[send_i], (r + 1) % n)
                self._irecv(buf, (r - 1) % n).wait()
                ws.wait()
                chunks[recv_i] += buf
            out = chunks[r]
        self._log("reduce_scatter", tag, nbytes(flat), s0)
        return out

    def all_gather(self, shard: torch.Tensor, tag: str = "") -> torch.Tensor:
        """Concatenate every rank's ``shard`` (same shape everywhere) in rank order, flattened."""
        n, r = self.world, self.rank
        shard = shard.reshape(-1).contiguous()
        s0 = self._sent
        out = torch.empty(shard.numel() * n, dtype=shard.dtype, device=shard.device)
        if n == 1:
            out.copy_(shard)
        elif self.impl == "native":
            dist.all_gather_into_tensor(out, shard, group=self.group)
        else:
            chunks = list(out.chunk(n))
            chunks[r].copy_(shard)
            for step in range(n - 1):  # forward what arrived last step
                send_i, recv_i = (r - step) % n, (r - step - 1) % n
                ws = self._isend(chunks[send_i], (r + 1) % n)
                self._irecv(chunks[recv_i], (r - 1) % n).wait()
                ws.wait()
        self._log("all_gather", tag, nbytes(out), s0)
        return out

    def all_reduce(self, x: torch.Tensor, tag: str = "") -> torch.Tensor:
        r"""Sum of ``x`` over ranks (a new tensor). Ring = reduce-scatter + all-gather:
        :math:`2(n-1)` steps of :math:`S/n` bytes, i.e. :math:`2(n-1)/n \cdot S` bytes sent per rank."""
        n = self.world
        s0 = self._sent
        if n == 1:
            out = x.clone()
        elif self.impl == "native":
            out = x.clone()
            dist.all_reduce(out, group=self.group)
        else:
            flat = x.reshape(-1)
            pad = (-flat.numel()) % n
            if pad:
                flat = torch.cat([flat, flat.new_zeros(pad)])
            n_before = len(self.records)
            shard = self.reduce_scatter(flat, tag)
            full = self.all_gather(shard, tag)
            del self.records[n_before:]  # log the pair as one all_reduce
            out = full[: x.numel()].view_as(x).clone()
        self._log("all_reduce", tag, nbytes(x), s0)
        return out

    def all_to_all(self, x: torch.Tensor, send_splits: Sequence[int], recv_splits: Sequence[int],
                   tag: str = "") -> torch.Tensor:
        """Rows ``x[sum(send_splits[:j]) : ...]`` go to rank ``j``; returns the rows received, in rank
        order. Pairwise exchange: this rank sends exactly the rows whose destination is another rank."""
        n, r = self.world, self.rank
        x = x.contiguous()
        rest = x.shape[1:]
        out = x.new_empty((int(sum(recv_splits)), *rest))
        s0 = self._sent
        if self.impl == "native" and n > 1:
            dist.all_to_all_single(out, x, list(map(int, recv_splits)), list(map(int, send_splits)),
                                   group=self.group)
            self._sent += nbytes(x) - int(send_splits[r]) * (nbytes(x) // max(x.shape[0], 1))
        else:
            sends = x.split(list(map(int, send_splits)))
            recvs = out.split(list(map(int, recv_splits)))
            recvs[r].copy_(sends[r])
            # one batch of all sends and receives: NCCL runs them as one group, so a pair of ranks that
            # both receive before they send cannot deadlock (posting irecvs first hangs under NCCL)
            ops = []
            for j in range(n):
                if j != r and recvs[j].numel():
                    ops.append(dist.P2POp(dist.irecv, recvs[j], self._global(j), group=self.group))
                if j != r and sends[j].numel():
                    t = sends[j].contiguous()
                    self._sent += nbytes(t)
                    ops.append(dist.P2POp(dist.isend, t, self._global(j), group=self.group))
            for w in dist.batch_isend_irecv(ops) if ops else []:
                w.wait()
        self._log("all_to_all", tag, nbytes(x), s0)
        return out

    def broadcast(self, x: torch.Tensor, src: int = 0, tag: str = "") -> torch.Tensor:
        s0 = self._sent
        if self.world > 1:
            if self.rank == src:
                works = [self._isend(x, j) for j in range(self.world) if j != src]
                for w in works:
                    w.wait()
            else:
                self._irecv(x, src).wait()
        self._log("broadcast", tag, nbytes(x), s0)
        return x


def ring_all_reduce_bytes(size_bytes: int, n: int) -> float:
    r"""Bytes one rank sends in a ring all-reduce of ``size_bytes``: :math:`2(n-1)/n \cdot S`."""
    return 2 * (n - 1) / n * size_bytes


def ring_gather_bytes(size_bytes: int, n: int) -> float:
    r"""Ring reduce-scatter or all-gather of a ``size_bytes`` tensor: :math:`(n-1)/n \cdot S` per rank."""
    return (n - 1) / n * size_bytes


# -- workers used by the tests and the chapter -------------------------------------------------------

def collectives_worker(rank: int, world: int, numel: int = 96, seed: int = 0) -> dict[str, Any]:
    """Ring collectives vs the library's (gloo/NCCL) ones, and bytes sent vs the closed forms."""
    g = torch.Generator().manual_seed(seed + rank)
    dev = worker_device(rank)
    x = torch.randn(numel, generator=g).to(dev)
    comm = Comm()
    out: dict[str, Any] = {}
    ref = x.clone()
    dist.all_reduce(ref)
    out["all_reduce_err"] = (comm.all_reduce(x, "t") - ref).abs().max().item()
    out["all_reduce_sent"] = comm.sent_bytes("all_reduce")
    rs = comm.reduce_scatter(x, "t")
    out["reduce_scatter_err"] = (rs - ref.chunk(world)[rank]).abs().max().item()
    out["reduce_scatter_sent"] = comm.sent_bytes("reduce_scatter")
    ag = comm.all_gather(rs, "t")
    out["all_gather_err"] = (ag - ref).abs().max().item()
    out["all_gather_sent"] = comm.sent_bytes("all_gather")
    # all-to-all with uneven splits: rank r sends (j + r + 1) rows of width 3 to rank j
    send = [j + rank + 1 for j in range(world)]
    recv = [rank + j + 1 for j in range(world)]
    rows = torch.arange(sum(send) * 3, dtype=torch.float32, device=dev).view(-1, 3) + 1000 * rank
    a2a = comm.all_to_all(rows, send, recv, "t")
    ref_a2a = torch.empty_like(a2a)
    dist.all_to_all_single(ref_a2a, rows, recv, send)
    out["all_to_all_err"] = (a2a - ref_a2a).abs().max().item()
    out["all_to_all_sent"] = comm.sent_bytes("all_to_all")
    out["all_to_all_expected"] = (sum(send) - send[rank]) * 3 * 4
    out["numel_bytes"] = numel * 4
    return out


def failing_worker(rank: int, world: int, mode: str, bad_rank: int = 1) -> int:
    """For the reliability tests: rank ``bad_rank`` dies (SIGKILL), raises, hangs or exits mid-job."""
    x = torch.ones(4)
    for step in range(1000):
        if rank == bad_rank and step == 3:
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif mode == "raise":
                raise ValueError("boom: a bug on one rank")
            elif mode == "hang":
                time.sleep(3600)
            elif mode == "exit":
                os._exit(3)
        if mode == "all_hang" and step == 3:
            time.sleep(3600)
        dist.all_reduce(x)
        x.fill_(1.0)
    return rank
