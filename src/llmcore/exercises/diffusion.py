r"""Self-checking exercises of the Diffusion chapter (Part 2).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.architecture.diffusion`, never retyped here).

* :func:`check_ddim_step` — one deterministic DDIM step from an :math:`\epsilon` prediction;
* :func:`check_cfg` — classifier-free guidance :math:`\epsilon_u + w(\epsilon_c - \epsilon_u)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from llmcore.architecture.diffusion.experiment import cfg_combine
from llmcore.architecture.diffusion.schedules import ddim_step, make_schedule
from llmcore.exercises.checking import run_cases


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_ddim_step(fn: Callable) -> int:
    r"""``fn(x_t, eps, ab_t, ab_prev) -> x_prev``: one DDIM step with :math:`\eta = 0` and no clipping, where
    ``x_t, eps`` are float tensors of any one shape, ``ab_t`` :math:`= \bar\alpha_t` and ``ab_prev``
    :math:`= \bar\alpha_{t'}` are floats: predict :math:`\hat x_0` from :math:`\epsilon`, then
    :math:`x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}}\,\epsilon`."""
    rng = _rng("ddim_step")
    s = replace(make_schedule(100, "cosine"), clip_sample=False)
    cases = []
    for shape, t, prev in (((3,), 50, 40), ((2, 4), 90, 80), ((1, 1, 2, 2), 10, 0), ((5,), 5, -1), ((2, 3), 70, 35)):
        x = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        eps = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        ab = float(s.alphas_cumprod[t])
        ab_prev = float(s.alphas_cumprod[prev]) if prev >= 0 else 1.0
        expected, _ = ddim_step(s, eps, t, x, prev)
        cases.append(({"x_t": x, "eps": eps, "ab_t": ab, "ab_prev": ab_prev}, expected))
    return run_cases("check_ddim_step", fn, cases, atol=1e-5)


def check_cfg(fn: Callable) -> int:
    r"""``fn(eps_cond, eps_uncond, w) -> eps``: the classifier-free guided prediction for tensors of one shape
    and a float scale ``w`` (``w = 0``: unconditional, ``w = 1``: conditional)."""
    rng = _rng("cfg")
    cases = []
    for shape, w in (((4,), 0.0), ((4,), 1.0), ((2, 3), 2.0), ((1, 1, 2, 2), 7.5), ((3,), 0.5)):
        c = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        u = torch.tensor(rng.normal(size=shape), dtype=torch.float32)
        cases.append(({"eps_cond": c, "eps_uncond": u, "w": w}, cfg_combine(c, u, w)))
    return run_cases("check_cfg", fn, cases, atol=1e-5)
