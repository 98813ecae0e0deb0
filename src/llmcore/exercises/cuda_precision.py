r"""Self-checking exercises of the kernels-and-precision chapter.

* :func:`check_loss_scale_update` — one update of a dynamic loss scaler (back off on overflow, grow after
  ``interval`` clean steps), compared with :class:`llmcore.engineering.cuda_precision.DynamicLossScaler`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmcore.engineering.cuda_precision.mixed import DynamicLossScaler
from llmcore.exercises.checking import run_cases


def check_loss_scale_update(fn: Callable) -> int:
    r"""``fn(scale, streak, found_inf, growth_factor, backoff_factor, interval) -> (new_scale, new_streak)``:
    the dynamic loss scaler's update after one step (``streak`` = clean steps in a row before this one)."""
    rng = np.random.default_rng(sum(map(ord, "loss_scale_update")))
    cases = []
    # hand-picked: overflow mid-streak, the streak reaching the interval, a clean step short of it
    fixed = [(1024.0, 2, True, 3), (1024.0, 2, False, 3), (8.0, 0, False, 2)]
    for i in range(12):
        s = DynamicLossScaler(init_scale=float(2.0 ** rng.integers(0, 20)), growth_factor=float(rng.choice([2.0, 4.0])),
                              backoff_factor=float(rng.choice([0.5, 0.25])), growth_interval=int(rng.integers(1, 4)))
        s.streak = int(rng.integers(0, s.growth_interval))
        inf = bool(rng.random() < 0.4)
        if i < len(fixed):
            s.scale_value, s.streak, inf, s.growth_interval = fixed[i]
        inputs = {"scale": s.scale_value, "streak": s.streak, "found_inf": inf,
                  "growth_factor": s.growth_factor, "backoff_factor": s.backoff_factor, "interval": s.growth_interval}
        s.found_inf = inputs["found_inf"]
        s.update()
        cases.append((inputs, np.array([s.scale_value, s.streak], dtype=float)))

    def as_pair(**kw):
        new_scale, new_streak = fn(**kw)
        return np.array([new_scale, new_streak], dtype=float)

    return run_cases("check_loss_scale_update", as_pair, cases)
