#!/usr/bin/env python
"""Peak memory of naive vs tiled (FlashAttention-style) attention as the sequence grows, side by side.

    python benchmarks/attention_memory.py                  # N = 512 .. 4096, CPU (dispatch-level meter)
    python benchmarks/attention_memory.py --device cuda    # adds torch.cuda.max_memory_allocated

Batch 1, one head, head size 64, causal, fp32. The CPU meter (``PeakMemory``) counts the bytes of
every tensor storage that torch ops allocate while the function runs; on CUDA the allocator's own
peak is printed beside it. Goal: tiled / naive <= 0.1 at N = 4096.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from llmcore.architecture.attention import flash_attention, growth_exponent, naive_attention, peak_memory  # noqa: E402
from llmcore.core import pick_device, seed_everything  # noqa: E402


def cuda_peak(fn, *args) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = fn(*args)
        del out
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="512,1024,2048,4096")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    dev = pick_device(a.device)
    seed_everything(0)
    ns = [int(x) for x in a.ns.split(",")]
    rows = []
    print(f"device={dev}  batch=1 heads=1 d={a.d} causal fp32  tile={a.block}x{a.block}")
    hdr = f"{'N':>6}{'naive MiB':>12}{'tiled MiB':>12}{'tiled/naive':>13}"
    if dev.type == "cuda":
        hdr += f"{'cuda naive':>12}{'cuda tiled':>12}"
    print(hdr)
    for n in ns:
        q, k, v = (torch.randn(1, 1, n, a.d, device=dev) for _ in range(3))
        mn = peak_memory(naive_attention, q, k, v, True)
        mf = peak_memory(flash_attention, q, k, v, True, a.block, a.block)
        rows.append((n, mn, mf))
        line = f"{n:>6}{mn / 2**20:>12.2f}{mf / 2**20:>12.2f}{mf / mn:>13.4f}"
        if dev.type == "cuda":
            line += (f"{cuda_peak(naive_attention, q, k, v, True) / 2**20:>12.2f}"
                     f"{cuda_peak(flash_attention, q, k, v, True, a.block, a.block) / 2**20:>12.2f}")
        print(line, flush=True)
    N = [r[0] for r in rows]
    print(f"growth exponent (last two sizes): naive {growth_exponent(N, [r[1] for r in rows]):.2f}, "
          f"tiled {growth_exponent(N, [r[2] for r in rows]):.2f}  (2 = quadratic, 1 = linear)")
    ratio = rows[-1][2] / rows[-1][1]
    print(f"tiled/naive at N={N[-1]}: {ratio:.4f}  goal <= 0.1: {'MET' if ratio <= 0.1 else 'NOT MET'}")


if __name__ == "__main__":
    main()
