"""Seeding and thread control: the same seed gives the same numbers on any machine of a kind."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

#: Fixed intra-op thread count. Floating-point reductions depend on how work is split
#: across threads, so results would depend on the machine's core count without this.
NUM_THREADS = 2


def seed_everything(seed: int, threads: int = NUM_THREADS) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and fix torch's thread count.

    Returns a fresh ``numpy.random.Generator`` seeded with ``seed`` for code that
    prefers an explicit generator over the global state.
    """
    if not isinstance(seed, int) or seed < 0:
        from llmcore.core.errors import LLMCoreError

        raise LLMCoreError(f"seed must be a non-negative integer, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.set_num_threads(threads)
    return np.random.default_rng(seed)
