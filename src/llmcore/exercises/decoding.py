r"""Self-checking exercises of the Decoding chapter (Part 2).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.architecture`, never retyped here).

* :func:`check_top_p_filter` — nucleus filtering: keep the smallest most-likely set with mass :math:`\ge p`;
* :func:`check_speculative_accept` — the rejection rule: accept with :math:`\min(1, p(d)/q(d))`, else draw
  from :math:`\mathrm{norm}(\max(0, p - q))`;
* :func:`check_kv_cache_bytes` — :math:`2 \cdot L \cdot K \cdot D \cdot \text{bytes} \cdot T \cdot B`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from llmcore.architecture.generate import apply_top_p
from llmcore.architecture.kv_cache import kv_cache_bytes
from llmcore.architecture.speculative import rejection_probs
from llmcore.exercises.checking import run_cases


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_top_p_filter(fn: Callable) -> int:
    r"""``fn(logits, p) -> filtered``: nucleus (top-p) filtering of ``logits (B, V)`` (a float tensor): keep the
    smallest set of most likely tokens whose probability sums to at least ``p`` and set every other logit to
    ``-inf``; the most likely token is always kept. Ties are not tested."""
    rng = _rng("top_p_filter")
    cases = []
    for B, V, p in ((1, 4, 0.5), (1, 6, 0.9), (2, 8, 0.3), (3, 10, 0.75), (2, 16, 0.99), (1, 5, 0.05), (2, 12, 1.0)):
        logits = torch.tensor(rng.normal(size=(B, V)) * 2, dtype=torch.float32)
        cases.append(({"logits": logits, "p": p}, apply_top_p(logits, p)))
    return run_cases("check_top_p_filter", fn, cases)


def check_speculative_accept(fn: Callable) -> int:
    r"""``fn(p, q, d) -> (accept, residual)``: the rule of speculative sampling at one position, for target and
    draft distributions ``p (V,)``, ``q (V,)`` (float64 tensors) and the drafted token ``d`` (an int, with
    ``q[d] > 0``): ``accept`` = :math:`\min(1, p(d)/q(d))` (a float) and ``residual (V,)`` =
    :math:`\max(0, p - q)/\sum\max(0, p - q)`, the distribution to resample from after a rejection."""
    rng = _rng("speculative_accept")
    cases = []
    for V in (2, 3, 5, 8, 8, 12):
        p, q = rng.dirichlet(np.ones(V)), rng.dirichlet(np.ones(V))
        for d in (int(np.argmax(p / q)), int(np.argmin(p / q))):  # one accepted for sure, one maybe rejected
            pt, qt = torch.tensor(p), torch.tensor(q)
            a, r = rejection_probs(pt, qt, torch.tensor(d))
            cases.append(({"p": pt, "q": qt, "d": d}, np.concatenate([[float(a)], r.numpy()])))

    def flat(**kw):
        out = fn(**kw)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("return the pair (accept, residual)")
        accept, residual = out
        return np.concatenate([np.atleast_1d(np.asarray(accept, dtype=float)).ravel()[:1],
                               np.asarray(residual.detach() if isinstance(residual, torch.Tensor) else residual,
                                          dtype=float)])

    return run_cases("check_speculative_accept", flat, cases)


def check_kv_cache_bytes(fn: Callable) -> int:
    r"""``fn(n_layers, n_kv_heads, head_dim, bytes_per_element, tokens, batch) -> int``: bytes of a filled KV
    cache, keys and values of every layer, for ``tokens`` positions of ``batch`` sequences."""
    cases = []
    for args in ((1, 1, 1, 1, 1, 1), (2, 4, 16, 4, 48, 1), (32, 8, 128, 2, 8192, 1),  # Llama-3-8B, 8k, bf16
                 (32, 32, 128, 2, 4096, 4), (80, 8, 128, 1, 1000, 2), (24, 2, 64, 0.5, 100, 3)):
        names = ("n_layers", "n_kv_heads", "head_dim", "bytes_per_element", "tokens", "batch")
        cases.append((dict(zip(names, args)), kv_cache_bytes(*args)))
    return run_cases("check_kv_cache_bytes", fn, cases)
