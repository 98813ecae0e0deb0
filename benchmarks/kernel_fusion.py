#!/usr/bin/env python
"""Fused vs unfused softmax and RMSNorm, the two roofline ceilings, and batch-1 decode by weight format.

    python benchmarks/kernel_fusion.py                      # CPU: torch's fused kernels vs the op-by-op chains
    python benchmarks/kernel_fusion.py --device cuda        # GPU: our compiled Triton kernels vs the chains

All in one process, side by side: for each (rows, cols) and seed, best-of-5 wall times of the fused kernel
(``torch.softmax`` / ``F.rms_norm`` on CPU, ``kernels.softmax`` / ``kernels.rmsnorm_forward`` on a GPU) and
of the unfused chain (``softmax_unfused``: max, sub, exp, sum, div; ``rmsnorm_torch``: pow, mean, rsqrt, mul,
mul), the unfused / fused ratio, and the achieved GB/s of each by the byte formulas of
``llmcore.engineering.cuda_precision.roofline``. Then the measured ceilings and the decode sweep.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import llmcore.core.triton_env as triton_env  # noqa: E402,I001  -- before anything imports triton
import torch  # noqa: E402

from llmcore.core import pick_device, seed_everything  # noqa: E402
from llmcore.core.device import cpu_name  # noqa: E402
from llmcore.engineering.cuda_precision import quant_gemm, roofline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="512x1024,2048x1024,4096x4096", help="rows x cols, comma-separated")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args(argv)
    dev = pick_device(args.device)
    use_triton = dev.type == "cuda" and not triton_env.INTERPRET
    print(f"device={dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else cpu_name()}), "
          f"torch threads={torch.get_num_threads()}, fused = {'our Triton kernels' if use_triton else 'torch'}")
    for size in args.sizes.split(","):
        rows, cols = map(int, size.split("x"))
        ratios: dict[str, list[float]] = {}
        for seed in map(int, args.seeds.split(",")):
            seed_everything(seed, threads=torch.get_num_threads())
            pts = roofline.measure_points(dev, rows, cols, add_n=2 ** 20, mm_n=256, use_triton=use_triton)
            for op, r in roofline.fusion_speedups(pts).items():
                ratios.setdefault(op, []).append(r)
            if seed == 0:
                for name, p in pts.items():
                    print(f"  {rows}x{cols} {name:18s} {p.seconds * 1e3:8.3f} ms  {p.bytes / p.seconds / 1e9:6.1f} GB/s"
                          f" (by formula)  I={p.intensity:.3f} FLOP/B")
        for op, rs in ratios.items():
            print(f"{rows}x{cols} {op}: unfused / fused = median {statistics.median(rs):.2f}x "
                  f"(min {min(rs):.2f}, max {max(rs):.2f}, seeds {args.seeds})")
    c = roofline.measure_ceilings(dev, 1024 if dev.type == "cpu" else 8192, 64.0 if dev.type == "cpu" else 1024.0)
    print(f"ceilings: matmul {c.matmul_n}^3 fp32 {c.flops / 1e9:.1f} GFLOP/s; copy {c.copy_mb:.0f} MB "
          f"{c.bandwidth / 1e9:.1f} GB/s; ridge {c.ridge:.1f} FLOP/B")
    for p in quant_gemm.decode_sweep(2048, 2048, 4, dev):
        print(f"decode {p.name:14s} {p.weight_bytes / 1e6:6.1f} MB/token {p.tokens_per_s:8.1f} tokens/s "
              f"{p.gbps:6.1f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
