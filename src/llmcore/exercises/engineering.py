r"""Self-checking exercises of Part 4 (engineering: distributed training, ZeRO).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapters use (imported from :mod:`llmcore.engineering`, never retyped here).

* :func:`check_ring_allreduce_bytes` — distributed: bytes one rank sends, :math:`2(n-1)/n \cdot S`;
* :func:`check_allreduce_time` — distributed: α–β time :math:`2(n-1)\alpha + 2(n-1)/n \cdot S/\beta`;
* :func:`check_pipeline_bubble` — distributed: idle fraction :math:`(p-1)/(m+p-1)`;
* :func:`check_column_parallel_split` — distributed: a rank's shard of a column-/row-parallel weight;
* :func:`check_zero_memory` — ZeRO: per-rank model-state bytes of DDP and ZeRO-1/2/3.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from llmcore.engineering.dist_utils import ring_all_reduce_bytes
from llmcore.engineering.distributed import Link, collective_time
from llmcore.engineering.pipeline import bubble_formula
from llmcore.engineering.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from llmcore.engineering.zero import zero_formula
from llmcore.exercises.checking import run_cases


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_ring_allreduce_bytes(fn: Callable) -> int:
    r"""``fn(size_bytes, n) -> float``: bytes *one* rank sends in a ring all-reduce (reduce-scatter then
    all-gather) of a ``size_bytes`` tensor over ``n`` ranks."""
    cases = [({"size_bytes": s, "n": n}, ring_all_reduce_bytes(s, n))
             for s, n in ((4096, 2), (4096, 4), (1000, 1), (1 << 20, 8), (12, 3), (7 * 2**30, 64))]
    return run_cases("check_ring_allreduce_bytes", fn, cases, atol=1e-3)


def check_allreduce_time(fn: Callable) -> int:
    r"""``fn(size_bytes, n, bandwidth, latency) -> seconds``: the α–β time of a ring all-reduce,
    ``bandwidth`` in bytes/s per direction (β⁻¹), ``latency`` α in seconds per ring step."""
    cases = []
    for s, n, bw, lat in ((4096, 2, 1e9, 1e-6), (33.5e6, 8, 450e9, 3e-6), (33.5e6, 8, 50e9, 6e-6),
                          (1e9, 64, 50e9, 6e-6), (100, 16, 12.5e9, 1e-5), (5e6, 1, 1e9, 1e-6)):
        ref = collective_time("all_reduce", s, n, Link("case", bw, lat, ""))
        cases.append(({"size_bytes": s, "n": n, "bandwidth": bw, "latency": lat}, ref * 1e6))

    def in_microseconds(**kw):
        return fn(**kw) * 1e6

    return run_cases("check_allreduce_time (µs)", in_microseconds, cases, atol=1e-6)


def check_pipeline_bubble(fn: Callable) -> int:
    r"""``fn(p, m) -> float``: the idle fraction of a flushed pipeline of ``p`` stages and ``m``
    micro-batches (GPipe or 1F1B, equal op times)."""
    cases = [({"p": p, "m": m}, bubble_formula(p, m)) for p, m in ((1, 4), (2, 1), (2, 4), (4, 8), (8, 3), (16, 64))]
    return run_cases("check_pipeline_bubble", fn, cases)


def check_column_parallel_split(fn: Callable) -> int:
    r"""``fn(weight, rank, world, kind) -> shard``: the slice of an ``nn.Linear`` weight ``(out, in)`` that
    rank ``rank`` of ``world`` holds, ``kind`` = ``"column"`` (Megatron's :math:`A = [A_1, \dots, A_n]`,
    split by output features) or ``"row"`` (:math:`B = [B_1; \dots; B_n]`, split by input features)."""
    rng = _rng("column_parallel_split")
    cases = []
    for out_f, in_f, world, kind in ((4, 6, 2, "column"), (4, 6, 2, "row"), (8, 4, 4, "column"), (6, 8, 4, "row"),
                                     (3, 3, 1, "column")):
        lin = nn.Linear(in_f, out_f)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.round(rng.normal(size=(out_f, in_f)), 2)))
        cls = ColumnParallelLinear if kind == "column" else RowParallelLinear
        for rank in range(world):
            ref = cls.from_linear(lin, SimpleNamespace(rank=rank, world=world)).weight.detach()
            cases.append(({"weight": lin.weight.detach().clone(), "rank": rank, "world": world, "kind": kind}, ref))
    return run_cases("check_column_parallel_split", fn, cases)


def check_zero_memory(fn: Callable) -> int:
    r"""``fn(psi, n, stage, P, G, K) -> bytes``: per-rank model-state bytes of ``psi`` parameters on ``n``
    ranks, ``stage`` 0 (DDP) to 3, with ``P``, ``G``, ``K`` bytes per parameter of parameters, gradients and
    optimizer states (mixed-precision Adam: 2, 2, 12; hidden cases also use other byte counts)."""
    cases = []
    for psi, n, pgk in ((7.5e9, 64, (2, 2, 12)), (7312, 4, (4, 4, 8)), (1e6, 2, (2, 2, 12)), (1e6, 1, (2, 2, 12)),
                        (70e9, 8, (2, 2, 12)), (1e6, 4, (2, 4, 12))):  # the last: fp32 gradient accumulation
        for stage in range(4):
            cases.append(({"psi": psi, "n": n, "stage": stage, "P": pgk[0], "G": pgk[1], "K": pgk[2]},
                          zero_formula(psi, n, stage, pgk)["total"] / 1e6))

    def in_megabytes(**kw):
        return fn(**kw) / 1e6

    return run_cases("check_zero_memory (MB)", in_megabytes, cases, atol=1e-6)
