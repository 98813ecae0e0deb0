#!/usr/bin/env python
"""MoE dispatch: grouped (tokens sorted by expert, one batched matmul per expert) vs the per-token loop.

    python benchmarks/moe_dispatch.py                        # the chapter's layer: d=64, E=8, k=2, F=88
    python benchmarks/moe_dispatch.py --d 256 --ff 512 --tokens 1024

Both paths are methods of the kit's ``llmcore.architecture.moe.MoE`` (``forward`` and ``forward_loop``), on the
same input, side by side in one run. For each path: best-of-N wall time of the forward (inference, no autograd)
and of forward + backward (training), and the peak bytes the CPU allocator held during one call, read from
``torch.profiler`` memory events (each op's own allocations and the frees, summed in time order; the input and
the weights are excluded, they exist before the call). Prints each figure and the loop / grouped ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from llmcore.architecture.moe import MoE  # noqa: E402
from llmcore.core import seed_everything  # noqa: E402


def peak_bytes(fn) -> int:
    """Peak bytes allocated (above the level at the call) while ``fn()`` runs, from profiler memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += e.self_cpu_memory_usage  # an op's own allocations (+), "[memory]" events carry the frees (-)
        peak = max(peak, cur)
    return peak


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=64, help="model width")
    ap.add_argument("--ff", type=int, default=88, help="expert hidden size")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    seed_everything(a.seed)
    layer = MoE(a.d, a.ff, a.experts, a.top_k)
    x = torch.randn(a.tokens, a.d)
    paths = {"loop": layer.forward_loop, "grouped": layer.forward}

    def infer(fn):
        with torch.no_grad():
            fn(x)

    def train(fn):
        xg = x.clone().requires_grad_(True)
        fn(xg).square().mean().backward()
        layer.zero_grad(set_to_none=True)

    with torch.no_grad():
        diff = float((layer.forward(x) - layer.forward_loop(x)).abs().max())
    print(f"MoE layer d={a.d} F={a.ff} E={a.experts} k={a.top_k}, {a.tokens} tokens, {torch.get_num_threads()} "
          f"threads, best of {a.repeats}; max |grouped - loop| = {diff:.1e}")
    rows = {}
    for name, fn in paths.items():
        train(fn)  # warm-up (first-call allocations, lazy init)
        rows[name] = {"infer s": best_time(lambda fn=fn: infer(fn), a.repeats),
                      "infer peak B": peak_bytes(lambda fn=fn: infer(fn)),
                      "train s": best_time(lambda fn=fn: train(fn), a.repeats),
                      "train peak B": peak_bytes(lambda fn=fn: train(fn))}
    print(f"{'':10s} {'forward s':>10s} {'fwd peak MiB':>13s} {'fwd+bwd s':>10s} {'fwd+bwd peak MiB':>17s}")
    for name, r in rows.items():
        print(f"{name:10s} {r['infer s']:10.4f} {r['infer peak B'] / 2**20:13.3f} {r['train s']:10.4f} "
              f"{r['train peak B'] / 2**20:17.3f}")
    lo, gr = rows["loop"], rows["grouped"]
    print(f"loop / grouped: time {lo['infer s'] / gr['infer s']:.1f}x (forward), {lo['train s'] / gr['train s']:.1f}x "
          f"(fwd+bwd); peak memory {lo['infer peak B'] / gr['infer peak B']:.2f}x (forward), "
          f"{lo['train peak B'] / gr['train peak B']:.2f}x (fwd+bwd)")


if __name__ == "__main__":
    main()
