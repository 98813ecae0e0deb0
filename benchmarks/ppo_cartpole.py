#!/usr/bin/env python
"""PPO on CartPole-v1 with cleanrl's protocol, printed beside cleanrl's published number.

    python benchmarks/ppo_cartpole.py                 # full: 500k steps x 3 seeds (cleanrl's protocol)
    python benchmarks/ppo_cartpole.py --steps 100000  # a shorter run (say so when you report it)
    python benchmarks/ppo_cartpole.py --algo a2c
    python benchmarks/ppo_cartpole.py --algo a2c --steps 150000 --seeds 0,1,2,3,4,5,6,7,8,9 --set lr=2e-3 --set num_envs=8
                                                      # a seed sweep of one config change (the A2C sweep)

Score = mean return of the last 100 finished training episodes (cleanrl's ``charts/episodic_return``
averaged over the last 100 episodes), per seed; the table gives mean ± std over seeds. cleanrl's
``ppo.py`` reports 490.04 ± 6.12 on CartPole-v1 at 500k steps (3 seeds). Our goal is >= 495.
Runs use one torch thread each, and up to ``--workers`` processes (results do not depend on it).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402

from llmcore.alignment.pg_ac import A2C_CONFIG, CLEANRL_PPO, PPO_CONFIG, TARGET, PGConfig, train_many  # noqa: E402
from llmcore.core.errors import LLMCoreError  # noqa: E402


def parse_overrides(items: list[str]) -> dict:
    """``["lr=2e-3", "norm_adv=true"]`` -> ``{"lr": 0.002, "norm_adv": True}``, typed by PGConfig's fields."""
    types = {f.name: f.type for f in fields(PGConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise LLMCoreError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        kind = types[key] if isinstance(types[key], str) else types[key].__name__
        if kind == "bool":
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = {"int": int, "float": float}.get(kind, str)(value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=("ppo", "a2c"), default="ppo")
    p.add_argument("--steps", type=int, default=500_000, help="env steps per seed (cleanrl: 500000)")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (cleanrl uses 1,2,3)")
    p.add_argument("--workers", type=int, default=2, help="parallel processes")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a PGConfig field, e.g. --set lr=2e-3 (repeatable)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = replace(PPO_CONFIG if args.algo == "ppo" else A2C_CONFIG, total_steps=args.steps,
                  **parse_overrides(args.set))
    print(f"{args.algo} on {cfg.env_id}: {args.steps} steps x seeds {seeds}; {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}; config {cfg}", flush=True)
    t0 = time.perf_counter()
    runs = train_many([(cfg, s) for s in seeds], "cpu", args.workers)
    wall = time.perf_counter() - t0
    scores = np.array([r.score for r in runs])
    print()
    print("| run | steps | last-100 mean return | steps to reach 475 | / budget | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        frac = "—" if r.steps_to_target is None else f"{r.steps_to_target / r.stats.global_step:.3f}"
        print(f"| {args.algo} seed {r.seed} | {r.stats.global_step} | {r.score:.2f} | {r.steps_to_target} | {frac} | "
              f"{r.wall_s:.1f} | {r.cpu_s:.1f} |")
    print(f"| **ours ({args.algo}, {len(seeds)} seeds)** | {args.steps} | **{scores.mean():.2f} ± {scores.std():.2f}** | "
          f"| | {wall:.1f} (total) | |")
    print(f"| cleanrl ppo.py (published) | 500000 | {CLEANRL_PPO[0]:.2f} ± {CLEANRL_PPO[1]:.2f} | | | | |")
    print(f"\nall seeds >= {TARGET:.0f}: {bool((scores >= TARGET).all())}; mean >= 495 (goal): {scores.mean() >= 495}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
