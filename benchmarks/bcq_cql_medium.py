#!/usr/bin/env python
"""Does a D4RL-style *medium* CartPole dataset make CQL / BCQ beat BC? (issue 23's medium claim)

    python benchmarks/bcq_cql_medium.py                          # PPO stopped at 1024, 5120, 6144, 16384 env steps
    python benchmarks/bcq_cql_medium.py --ppo-steps 5120 --seeds 0-5 --algos bc,cql
    python benchmarks/bcq_cql_medium.py --ppo-steps 6144 --algos bc,cql --transitions 80000 --set alpha=0.3

The chapter's medium dataset is the stochastic actions of a PPO policy trained for ``BCQCQLConfig.ppo_steps``
(16384 in toy mode); that policy's *greedy* version returns about 500, so BC -- whose argmax is that greedy
policy -- is as strong as CQL there. D4RL's medium comes from a partly trained policy whose own behaviour is
medium. This script builds that dataset with the chapter's own code (:func:`cartpole_datasets` with a smaller
``ppo_steps``; the data seed stays ``BCQCQLConfig.data_seed``, as D4RL fixes its datasets): for each PPO budget
it prints the policy's greedy return (the mean episode return of the chapter's "expert" dataset, which is that
policy's greedy actions), the behaviour return of the medium data, and every learner's final return per learner
seed (toy :class:`NeuralConfig`: 2000 steps, 10 evaluation episodes). The last columns give what the closed
loop's report would compare: the mean over learner seeds ``(s, s + 1)`` (toy mode's two seeds) for run seeds
``s`` = 0 .. max - 1, as the minimum over those run seeds of CQL - BC and BCQ - BC.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import numpy as np  # noqa: E402
from robustness import parse_seeds  # noqa: E402

from llmcore.alignment.pg_ac import run_jobs  # noqa: E402
from llmcore.core.errors import LLMCoreError  # noqa: E402
from llmcore.core.seed import seed_everything  # noqa: E402
from llmcore.offline_rl.bcq_cql import (  # noqa: E402
    ALGOS,
    THREADS,
    BCQCQLConfig,
    NeuralConfig,
    cartpole_datasets,
    train_offline,
)


def parse_overrides(items: list[str]) -> dict:
    """``["alpha=0.3", "steps=5000"]`` -> ``{"alpha": 0.3, "steps": 5000}``, typed by NeuralConfig's fields."""
    types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in fields(NeuralConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types or key == "algo":
            raise LLMCoreError(f"--set {item!r}: expected FIELD=VALUE, FIELD one of {sorted(set(types) - {'algo'})}")
        out[key] = {"int": int, "float": float}[types[key]](value)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ppo-steps", default="1024,5120,6144,16384", help="PPO budgets of the medium policy")
    p.add_argument("--seeds", default="0-5", help="learner seeds (default 0-5: run seeds 0-4 use (s, s + 1))")
    p.add_argument("--algos", default=",".join(ALGOS))
    p.add_argument("--transitions", type=int, default=None, help="medium transitions (default: the toy config's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="NeuralConfig override")
    p.add_argument("--workers", type=int, default=1, help="processes (results do not depend on it)")
    args = p.parse_args(argv)
    seeds, algos = parse_seeds(args.seeds), args.algos.split(",")
    cfg = BCQCQLConfig.for_mode(True)
    cfg = replace(cfg, transitions=args.transitions or cfg.transitions,
                  neural=replace(cfg.neural, **parse_overrides(args.set)))
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}; toy NeuralConfig: "
          f"{cfg.neural}, {cfg.transitions} transitions, data_seed {cfg.data_seed}, learner seeds {seeds}")
    for steps in (int(s) for s in args.ppo_steps.split(",")):
        t0 = time.perf_counter()
        seed_everything(cfg.data_seed, threads=THREADS)
        data, behaviour = cartpole_datasets(replace(cfg, ppo_steps=steps), cfg.data_seed)
        medium = data["medium"]
        print(f"\nPPO {steps} env steps: greedy return {behaviour['expert']:.1f}, medium behaviour return "
              f"{behaviour['medium']:.1f} ({len(medium.episode_returns)} episodes, {medium.size} transitions)")
        jobs = [(train_offline, (medium, replace(cfg.neural, algo=a), s)) for a in algos for s in seeds]
        runs = run_jobs(jobs, args.workers)
        scores = {a: np.array([r.score for r in runs if r.algo == a]) for a in algos}
        for a in algos:
            sc = scores[a]
            print(f"  {a:>4}: {sc.mean():6.1f} ± {sc.std():5.1f}   per seed: " + " ".join(f"{x:.0f}" for x in sc))
        pairs = len(seeds) - 1
        if "bc" in scores and pairs >= 1:
            for a in ("bcq", "cql"):
                if a in scores:
                    gap = [scores[a][s:s + 2].mean() - scores["bc"][s:s + 2].mean() for s in range(pairs)]
                    print(f"  {a} - BC, mean of seeds (s, s + 1), s = {seeds[0]}..{seeds[pairs - 1]}: "
                          + " ".join(f"{g:+.0f}" for g in gap) + f"   min {min(gap):+.1f}")
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
