#!/usr/bin/env python
"""ZeRO memory and communication per rank, side by side with DDP, for N = 1, 2, 4 ranks.

    python benchmarks/zero_memory.py                       # gloo on CPU: byte-accounted model states
    python benchmarks/zero_memory.py --device cuda --big   # NCCL, one GPU per rank: + torch.cuda.max_memory_allocated

Prints, per N and variant: parameter / gradient / optimizer bytes per rank, the paper's formula
(fp32 Adam: P=4, G=4, K=8), their ratio, the bytes each rank sent per step, and (on CUDA) the allocator's
peak. A single GPU runs N=1 only (ZeRO-3 with and without CPU offload shows offload's saving).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llmcore.engineering.dist_utils import launch, resolve_backend  # noqa: E402
from llmcore.engineering.zero import FP32_ADAM, STAGE_OF, ZeroConfig, zero_formula, zero_worker  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu (gloo) | cuda (NCCL, one GPU per rank)")
    ap.add_argument("--big", action="store_true", help="a ~10M-parameter MLP instead of the 7k toy")
    ap.add_argument("--worlds", default="1,2,4")
    args = ap.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    cfg = ZeroConfig(sizes=(512, 2048, 2048, 512), batch=64, steps=3) if args.big else ZeroConfig(steps=3)
    print(f"{'N':>2} {'variant':<14}{'params':>11}{'grads':>11}{'optim':>11}{'offload':>11}"
          f"{'formula':>11}{'ratio':>7}{'sent/step':>11}{'cuda peak':>12}")
    for n in worlds:
        try:
            backend, dev = resolve_backend(args.device, n)
        except Exception as e:  # noqa: BLE001 - e.g. fewer GPUs than ranks: say so and go on
            print(f"N={n}: skipped ({e})")
            continue
        cfg.device = dev
        runs = launch(zero_worker, n, (cfg, tuple(STAGE_OF)), backend=backend)[0]
        for v in runs:
            m = v["memory"]
            total = m["params"] + m["grads"] + m["optim"] + m["optim_offloaded"]
            f = zero_formula(v["psi"], n, STAGE_OF[v["name"]], FP32_ADAM)["total"]
            peak = v.get("cuda_max_allocated")
            print(f"{n:>2} {v['name']:<14}{m['params']:>11}{m['grads']:>11}{m['optim']:>11}{m['optim_offloaded']:>11}"
                  f"{f:>11.0f}{total / f:>7.3f}{v.get('sent_bytes_per_step', 0):>11.0f}"
                  f"{'' if peak is None else peak:>12}")


if __name__ == "__main__":
    main()
