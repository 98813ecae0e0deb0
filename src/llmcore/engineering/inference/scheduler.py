r"""Continuous (iteration-level) batching: the scheduler and the engine loop over the paged KV pool.

*Static batching* takes ``B`` requests, runs them until the longest one is done and only then takes
the next ``B``: slots of finished requests idle, and a contiguous cache must reserve the longest
possible sequence for every slot. *Continuous batching* (Orca, Yu et al., 2022; vLLM) re-decides the
batch at **every step**:

1. running requests first (FCFS): each gets the tokens it still has to feed -- 1 for a decoding
   request, a *chunk* of its prompt for one still prefilling -- within a per-step **token budget**
   (chunked prefill, Sarathi; a long prompt cannot stall everyone's decode);
2. if the pool cannot hold those tokens, the most recently arrived running request is **preempted**:
   *by recompute* (``preemption="recompute"``): its blocks are freed and it goes back to the head of the
   waiting queue, to be prefilled again later (prompt + the tokens it already produced; output unchanged);
   or *by swapping* (``preemption="swap"``): its blocks are copied to the host-side swap pool
   (:meth:`~.paged.BlockManager.swap_out`) and it joins the **swapped** queue (recompute when the swap pool
   is full, as a fallback);
3. swapped requests come back first (FCFS, :meth:`~.paged.BlockManager.swap_in`) when their blocks fit;
   while any request is swapped out no new request is admitted (vLLM's rule);
4. waiting requests are admitted while the budget, ``max_num_seqs`` and free blocks allow (a prefix
   cache hit, :mod:`.radix`, skips the cached part of the prompt).

So a request lives in one of three queues, **waiting -> running <-> swapped** (and back to waiting when
recomputed). **Parallel sampling**: a request with ``n > 1`` is prefilled once; when its first token is
sampled it forks ``n - 1`` sibling sequences (:meth:`~.paged.BlockManager.fork`) that share the prompt's
blocks by reference count, each with its own generator (seed ``seed + i``); the first write into the
shared, partly filled last block copies it (copy-on-write).

One step then runs the kit's ``Llama`` on the scheduled rows (:func:`~.paged.forward_paged`): one
forward for the decoding rows and one for the prefill chunks (the kit's model takes a padded batch,
not vLLM's flattened "varlen" one, so decode rows are not padded to the chunk length). A request whose
last fed token is the end of what it has gets a new token. Per request: queueing time (arrival ->
first scheduled), **TTFT** (arrival -> first token), **TPOT** (mean time between later tokens).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from llmcore.architecture.generate import SamplerConfig, next_token
from llmcore.core.errors import LLMCoreError
from llmcore.core.triton_env import available as triton_available
from llmcore.core.triton_env import why_unavailable
from llmcore.engineering.inference.paged import BlockManager, BlockTable, forward_paged
from llmcore.engineering.inference.paged_attention import forward_decode, paged_attention_triton
from llmcore.engineering.inference.radix import RadixCache


@dataclass
class EngineConfig:
    """The engine's knobs (one per closed-loop run; ``policy`` picks continuous or static batching)."""

    num_blocks: int = 256  # KV blocks in the pool
    block_size: int = 8  # positions per block
    max_num_seqs: int = 32  # running requests at most (batch rows)
    max_batched_tokens: int = 256  # token budget per step (decode tokens + prefill chunks)
    prefix_cache: bool = False  # RadixAttention prefix cache on/off
    policy: str = "continuous"  # "continuous" | "static"
    static_batch: int = 8  # static: requests per batch
    static_reserve: int = 512  # static: contiguous positions reserved per request (for the utilisation figure)
    preemption: str = "recompute"  # "recompute" | "swap" (to the host-side swap pool)
    swap_blocks: int = 256  # blocks of the host-side swap pool (used with preemption="swap")
    attention: str = "auto"  # decode attention: "torch" (gather + SDPA) | "triton" (paged kernel) | "auto" (triton on CUDA)

    def __post_init__(self) -> None:
        if self.policy not in ("continuous", "static"):
            raise LLMCoreError(f"policy must be 'continuous' or 'static', got {self.policy!r}")
        if self.preemption not in ("recompute", "swap"):
            raise LLMCoreError(f"preemption must be 'recompute' or 'swap', got {self.preemption!r}")
        if self.attention not in ("auto", "torch", "triton"):
            raise LLMCoreError(f"attention must be 'auto', 'torch' or 'triton', got {self.attention!r}")
        for name in ("num_blocks", "block_size", "max_num_seqs", "max_batched_tokens", "static_batch",
                     "static_reserve", "swap_blocks"):
            if getattr(self, name) < 1:
                raise LLMCoreError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(eq=False)
class Request:
    """One generation request and its life in the engine (times from ``time.perf_counter``)."""

    rid: int
    prompt: list[int]
    max_new_tokens: int
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eos_id: int | None = None
    generator: torch.Generator | None = None
    output: list[int] = field(default_factory=list)
    table: BlockTable = field(default_factory=BlockTable)
    status: str = "waiting"  # waiting | running | swapped | finished | aborted
    finish_reason: str | None = None  # "stop" (eos) | "length"
    t_arrival: float = 0.0
    t_scheduled: float | None = None
    t_first: float | None = None
    t_done: float | None = None
    token_times: list[float] = field(default_factory=list)
    preempted: int = 0
    cached_tokens: int = 0  # prompt tokens served by the prefix cache (last admission)
    n: int = 1  # parallel samples (the parent of a group); 1 for each sample once forked
    seed: int | None = None
    parent: Request | None = None  # the request a forked sample belongs to
    index: int = 0  # this sample's index in its group (OpenAI's choices[index])
    samples: list[Request] = field(default_factory=list)  # the group (parent first) once forked

    @property
    def width(self) -> int:
        """Batch rows this request will take: ``n`` before it forks, 1 after."""
        return 1 if self.samples else self.n

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def ttft(self) -> float:
        return self.t_first - self.t_arrival

    @property
    def tpot(self) -> float:
        """Mean seconds per output token after the first (nan with one token)."""
        t = self.token_times
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else float("nan")

    @property
    def queue_time(self) -> float:
        return self.t_scheduled - self.t_arrival


@dataclass
class StepStats:
    """What one engine step did (for the utilisation-over-time plot)."""

    t: float
    running: int
    decode_rows: int
    prefill_tokens: int
    used_slots: int  # KV positions holding data
    allocated_slots: int  # positions of allocated blocks (paged) / reserved buffers (static)


class Engine:
    """The serving engine: requests in, tokens out, one :meth:`step` at a time (``run`` drives it to the end).

    Holds the kit's model, a :class:`~.paged.BlockManager` pool (and its host-side swap pool with
    ``preemption="swap"``) and, with ``prefix_cache``, a :class:`~.radix.RadixCache`. ``max_len`` caps
    prompt + output (the model's context). Decode rows run through the paged Triton kernel
    (:mod:`.paged_attention`) when ``attention`` resolves to ``"triton"``, else through the kit's model on
    the gathered keys."""

    def __init__(self, model, cfg: EngineConfig) -> None:
        self.model, self.cfg = model, cfg
        self.max_len = model.config.max_seq_len
        self.m = BlockManager.for_model(model, cfg.num_blocks, cfg.block_size,
                                        cfg.swap_blocks if cfg.preemption == "swap" else 0)
        self.radix = RadixCache(self.m) if cfg.prefix_cache else None
        on_cuda = self.m.k.device.type == "cuda"
        self.attention = cfg.attention if cfg.attention != "auto" else \
            ("triton" if on_cuda and triton_available() else "torch")
        if self.attention == "triton" and not triton_available():
            raise LLMCoreError(why_unavailable())
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.swapped: deque[Request] = deque()
        self.finished: list[Request] = []
        self.stats: list[StepStats] = []
        self.ids = itertools.count()
        self.preemptions = 0
        self.swaps = 0  # preemptions by swapping (each one later swapped back in)
        self.aborted = 0  # requests cancelled by abort()
        self.computed_tokens = 0  # tokens run through the model (prompts, recomputed tokens, decode inputs)
        self._batch: list[Request] = []  # static: the current batch, finished rows included

    # ---- requests --------------------------------------------------------------------------------
    def add_request(self, prompt: list[int], max_new_tokens: int, sampler: SamplerConfig | None = None,
                    eos_id: int | None = None, seed: int | None = None, n: int = 1) -> Request:
        """Queue a request for ``n`` samples (sample ``i`` draws with seed ``seed + i``); bad input (empty or
        oversized prompt, non-positive length, ``n`` beyond the batch) is one clear error."""
        if not prompt:
            raise LLMCoreError("the prompt is empty")
        if max_new_tokens < 1:
            raise LLMCoreError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 1 <= n <= self.cfg.max_num_seqs or (n > 1 and self.cfg.policy == "static"):
            raise LLMCoreError(f"n must be in 1..{self.cfg.max_num_seqs} (max_num_seqs; 1 with static batching), "
                               f"got {n}")
        if len(prompt) + 1 > self.max_len:
            raise LLMCoreError(f"prompt of {len(prompt)} tokens leaves no room in the {self.max_len}-token context")
        worst = -(-(min(len(prompt) + max_new_tokens, self.max_len)) // self.cfg.block_size)
        if worst > self.cfg.num_blocks:
            raise LLMCoreError(f"request needs up to {worst} KV blocks; the pool has {self.cfg.num_blocks}")
        vocab = self.model.config.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise LLMCoreError(f"prompt has token ids outside [0, {vocab})")
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        req = Request(next(self.ids), list(prompt), max_new_tokens, sampler or SamplerConfig(), eos_id, gen,
                      t_arrival=time.perf_counter(), n=n, seed=seed)
        self.waiting.append(req)
        return req

    def abort(self, req: Request) -> None:
        """Cancel a request now (a client went away): its blocks (and its samples' blocks) return to the pool."""
        for sample in req.samples[1:]:
            self.abort(sample)
        if req.status in ("finished", "aborted"):
            return
        for q in (self.running, self.waiting, self.swapped):
            if req in q:
                q.remove(req)
        self.m.release(req.table)
        req.status, req.finish_reason, req.t_done = "aborted", "abort", time.perf_counter()
        self.aborted += 1

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # ---- scheduling ------------------------------------------------------------------------------
    def _preempt(self, req: Request) -> None:
        """Swap ``req`` out to the host pool (``preemption="swap"`` and room there), else free it to recompute."""
        self.running.remove(req)
        req.preempted += 1
        self.preemptions += 1
        if self.cfg.preemption == "swap" and self.m.can_swap_out(req.table):
            self.m.swap_out(req.table)
            req.status = "swapped"
            self.swapped.appendleft(req)  # victims go latest arrival first: the queue stays in arrival order
            self.swaps += 1
            return
        self.m.release(req.table)
        req.status = "waiting"
        self.waiting.appendleft(req)

    def _admit(self, req: Request) -> None:
        req.cached_tokens = 0
        if self.radix is not None and req.table.num_tokens == 0:
            blocks = self.radix.lookup(req.tokens)
            for blk in blocks:
                self.m.incref(blk)
            req.table = BlockTable(blocks, len(blocks) * self.cfg.block_size)
            req.cached_tokens = req.table.num_tokens
        req.status = "running"
        if req.t_scheduled is None:
            req.t_scheduled = time.perf_counter()

    def schedule(self) -> list[tuple[Request, int]]:
        """Pick ``(request, tokens to feed)`` for this step (continuous policy; see the module docstring)."""
        budget, reserved, plan, preempted = self.cfg.max_batched_tokens, 0, [], False
        queue = list(self.running)
        while queue and budget > 0:
            req = queue.pop(0)
            n = min(len(req.tokens) - req.table.num_tokens, budget)
            need = self.m.blocks_needed(req.table, n)
            while not self.m.can_allocate(reserved + need):  # preempt the latest arrival (maybe req itself)
                victim = queue.pop() if queue else req
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                plan.append((req, n))
                budget, reserved = budget - n, reserved + need
        b = self.cfg.block_size
        while (self.swapped and budget > 0 and len(self.running) + self.swapped[0].width <= self.cfg.max_num_seqs
               and not preempted):
            req = self.swapped[0]  # swapped requests come back before any new one is admitted
            n = min(len(req.tokens) - req.table.num_tokens, budget)
            held = len(req.table.blocks)  # host blocks: as many device blocks to swap in, then the growth
            grow = max(0, -(-(req.table.num_tokens + n) // b) - held)
            if not self.m.can_allocate(reserved + held + grow):
                break
            self.swapped.popleft()
            self.m.swap_in(req.table)
            req.status = "running"
            self.running.append(req)
            plan.append((req, n))
            budget, reserved = budget - n, reserved + grow
        while (self.waiting and budget > 0 and len(self.running) + self.waiting[0].width <= self.cfg.max_num_seqs
               and not preempted and not self.swapped):
            req = self.waiting[0]
            self._admit(req)
            n = min(len(req.tokens) - req.table.num_tokens, budget)
            need = self.m.blocks_needed(req.table, n)
            if not self.m.can_allocate(reserved + need):
                self.m.release(req.table)  # undo the prefix-cache references; wait for blocks
                req.status = "waiting"
                break
            self.waiting.popleft()
            self.running.append(req)
            if self.radix is not None:  # counted once admitted (a failed admission retries the lookup)
                self.radix.record(len(req.tokens), req.cached_tokens)
            plan.append((req, n))
            budget, reserved = budget - n, reserved + need
        return plan

    def schedule_static(self) -> list[tuple[Request, int]]:
        """Static batching (as HF ``generate`` on a padded batch): ``static_batch`` requests run together and a
        finished row keeps computing a padding token until the batch's longest request is done; only then is
        the next batch taken."""
        if not self.running:
            for req in self._batch:  # the batch is done: its rows give their reserved memory back
                self.m.release(req.table)
            self._batch = []
            while self.waiting and len(self._batch) < self.cfg.static_batch:
                req = self.waiting.popleft()
                self._admit(req)
                self.running.append(req)
                self._batch.append(req)
            if not self._batch:
                return []
        return [(r, len(r.tokens) - r.table.num_tokens if r.status == "running" else 1) for r in self._batch]

    # ---- one step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[tuple[Request, int]]:
        """Schedule, run the model once per group (decode rows, prefill chunks), sample; returns ``(req, token)``."""
        plan = self.schedule() if self.cfg.policy == "continuous" else self.schedule_static()
        events = []
        groups = ([p for p in plan if p[1] == 1], [p for p in plan if p[1] > 1])
        for group in groups:
            if not group:
                continue
            pad = self.model.config.pad_id or 0  # static batching's finished rows feed padding
            new = [r.tokens[r.table.num_tokens:r.table.num_tokens + n] if r.status == "running" else [pad]
                   for r, n in group]
            self.computed_tokens += sum(n for _, n in group)
            tables = [r.table for r, _ in group]
            if self.attention == "triton" and group is groups[0]:  # one token per row: the paged kernel
                logits = forward_decode(self.model, self.m, tables, [t[0] for t in new], paged_attention_triton)
            else:
                logits = forward_paged(self.model, self.m, tables, new)
            greedy = logits.argmax(-1).tolist()
            for (req, _), row, g in zip(group, logits, greedy):
                if req.status == "running" and req.table.num_tokens == len(req.tokens):  # fed all it has: a new token
                    siblings = self._fork(req) if req.n > 1 and not req.samples else []
                    for sample in [req, *siblings]:  # forked samples draw their first token from the same logits
                        tok = self._sample(sample, row, g)
                        self._append(sample, tok)
                        events.append((sample, tok))
        self._record(sum(1 for p in plan if p[1] == 1), sum(n for _, n in plan if n > 1))
        return events

    @staticmethod
    def _sample(req: Request, row: torch.Tensor, greedy: int) -> int:
        if req.sampler.greedy and req.sampler.repetition_penalty == 1.0:
            return greedy
        return int(next_token(row[None], torch.tensor([req.tokens]), req.sampler, req.generator)[0])

    def _fork(self, req: Request) -> list[Request]:
        """Parallel sampling: ``n - 1`` samples sharing ``req``'s prompt blocks (reference counts, no copy yet);
        sample ``i`` gets its own generator seeded ``seed + i`` (the global RNG without a seed)."""
        req.samples = [req]
        for i in range(1, req.n):
            gen = None if req.seed is None else torch.Generator().manual_seed(req.seed + i)
            child = Request(next(self.ids), req.prompt, req.max_new_tokens, req.sampler, req.eos_id, gen,
                            table=self.m.fork(req.table), status="running", t_arrival=req.t_arrival,
                            t_scheduled=req.t_scheduled, seed=req.seed, parent=req, index=i)
            req.samples.append(child)
            self.running.append(child)
        return req.samples[1:]

    def _append(self, req: Request, tok: int) -> None:
        now = time.perf_counter()
        req.output.append(tok)
        req.token_times.append(now)
        if req.t_first is None:
            req.t_first = now
            if self.radix is not None:  # the prompt's full blocks are shareable from now on (SGLang does this too)
                self.radix.insert(req.prompt, req.table.blocks)
        if req.eos_id is not None and tok == req.eos_id:
            req.finish_reason = "stop"
        elif len(req.output) >= req.max_new_tokens or len(req.tokens) >= self.max_len:
            req.finish_reason = "length"
        if req.finish_reason is not None:
            self._finish(req, now)

    def _finish(self, req: Request, now: float) -> None:
        self.running.remove(req)
        req.status, req.t_done = "finished", now
        self.finished.append(req)
        if self.radix is not None:  # cache the prompt + output (the last token has no KV yet)
            self.radix.insert(req.tokens[:req.table.num_tokens], req.table.blocks)
        if self.cfg.policy == "continuous":  # static rows keep their memory until the batch ends
            self.m.release(req.table)

    def _record(self, decode_rows: int, prefill_tokens: int) -> None:
        if self.cfg.policy == "static":
            rows = self._batch
            used = sum(min(r.table.num_tokens, len(r.tokens)) for r in rows)  # padding is not data
            alloc = self.cfg.static_batch * self.cfg.static_reserve if rows else 0
        else:
            used, alloc = self.kv_usage()
        self.stats.append(StepStats(time.perf_counter(), len(self.running), decode_rows, prefill_tokens, used, alloc))

    def kv_usage(self) -> tuple[int, int]:
        """``(filled positions, positions of allocated blocks)`` over the whole pool (shared blocks once)."""
        b, fill = self.cfg.block_size, {}
        for req in self.running:
            for j, blk in enumerate(req.table.blocks):
                fill[blk] = max(fill.get(blk, 0), min(b, req.table.num_tokens - j * b))
        if self.radix is not None:
            for node in self.radix.nodes():
                for blk in node.blocks:
                    fill[blk] = b
        allocated = (self.cfg.num_blocks - self.m.num_free) * b
        return sum(fill.values()), allocated

    def run(self, progress_cb=None) -> list[Request]:
        """Step until every request is finished; returns them in arrival order (a parallel-sampling request once:
        its samples are in ``req.samples``)."""
        while self.has_work:
            events = self.step()
            if progress_cb is not None:
                progress_cb(len(events))
        for req in self._batch:  # static: the last batch's memory
            self.m.release(req.table)
        self._batch = []
        return sorted((r for r in self.finished if r.parent is None), key=lambda r: r.rid)

    def leaked_blocks(self) -> int:
        """Blocks still referenced after every request ended, minus those the prefix cache holds, plus host blocks
        still taken in the swap pool (should be 0)."""
        held = self.cfg.num_blocks - self.m.num_free
        host = self.m.swap_blocks - len(self.m.host_free)
        return held - (self.radix.cached_blocks if self.radix is not None else 0) + host
