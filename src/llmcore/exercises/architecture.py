r"""Self-checking exercises of Part 2 (architecture): the transformer and attention chapters.

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.architecture`, never retyped here).

* :func:`check_rmsnorm` — transformer: :math:`y = g \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon}`;
* :func:`check_rope` — transformer: rotate the pairs :math:`(x_i, x_{i+D/2})` of ``(B, H, T, D)`` by
  :math:`p\,\theta^{-2i/D}` at position :math:`p`;
* :func:`check_repeat_kv` — attention: expand ``K`` key/value heads to ``K * n_rep`` (GQA);
* :func:`check_online_softmax` — attention: one FlashAttention tile update of :math:`(m, \ell, acc)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmcore.architecture.attention import online_softmax_update
from llmcore.architecture.llama import RMSNorm, apply_rope, repeat_kv, rope_cos_sin
from llmcore.exercises.checking import run_cases


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(map(ord, name)))  # fixed hidden cases per checker


def check_rmsnorm(fn: Callable) -> int:
    r"""``fn(x, weight, eps) -> y``: RMSNorm over the last axis of ``x (..., d)`` with gain ``weight (d,)``,
    :math:`y = \mathrm{weight} \odot x / \sqrt{\tfrac1d\sum_i x_i^2 + \epsilon}` (float tensors)."""
    g = _gen("rmsnorm")
    cases = []
    for shape, eps in (((4,), 1e-6), ((2, 3, 8), 1e-6), ((5, 16), 1e-2), ((1, 2, 4, 6), 0.5)):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * 3 + 1  # nonzero mean: LayerNorm differs
        w = torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.5
        norm = RMSNorm(shape[-1], eps).double()
        with torch.no_grad():
            norm.weight.copy_(w)
            want = norm(x)
        cases.append(({"x": x, "weight": w, "eps": eps}, want))
    return run_cases("check_rmsnorm", fn, cases)


def check_rope(fn: Callable) -> int:
    r"""``fn(x, positions, theta) -> rotated``: rotary position embedding of ``x (B, H, T, D)`` (float
    tensor, ``D`` even), token ``t`` at integer position ``positions[t]`` (``(T,)`` tensor). Pair
    :math:`(x_i, x_{i+D/2})` turns by the angle :math:`p\,\theta^{-2i/D}` (the LLaMA / Hugging Face layout)."""
    g = _gen("rope")
    cases = []
    for (B, H, T, D), theta, start in (((1, 1, 1, 2), 10000.0, 3), ((1, 2, 5, 4), 10000.0, 0),
                                       ((2, 3, 7, 8), 10000.0, 11), ((1, 1, 6, 16), 500000.0, 100),
                                       ((2, 2, 4, 6), 10.0, 2)):
        x = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
        pos = torch.arange(start, start + T)
        cos, sin = rope_cos_sin(pos[None], D, theta)
        cases.append(({"x": x, "positions": pos, "theta": theta}, apply_rope(x, cos.double(), sin.double())))
    return run_cases("check_rope", fn, cases, atol=1e-5)


def check_repeat_kv(fn: Callable) -> int:
    r"""``fn(x, n_rep) -> y``: ``x (B, K, S, D)`` key (or value) heads expanded to ``(B, K * n_rep, S, D)``
    so that query head ``h`` reads key/value head ``h // n_rep`` (consecutive query heads share one)."""
    g = _gen("repeat_kv")
    cases = []
    for (B, K, S, D), n_rep in (((1, 2, 3, 2), 2), ((2, 3, 4, 4), 4), ((1, 1, 5, 3), 3), ((2, 4, 2, 2), 1),
                                ((1, 2, 2, 2), 3)):
        x = torch.randn(B, K, S, D, generator=g)
        cases.append(({"x": x, "n_rep": n_rep}, repeat_kv(x, n_rep)))
    return run_cases("check_repeat_kv", fn, cases)


def check_online_softmax(fn: Callable) -> int:
    r"""``fn(m, ell, acc, s, v) -> (m, ell, acc)``: fold one tile into the running softmax statistics of
    FlashAttention. ``m, ell (R, 1)`` running row max and normaliser, ``acc (R, D)`` unnormalised output,
    ``s (R, C)`` the tile's scores, ``v (C, D)`` its values; return the updated three (tensors)."""
    g = _gen("online_softmax")
    cases = []
    for R, C, D, fresh in ((1, 1, 1, True), (2, 3, 4, True), (3, 4, 2, False), (4, 2, 3, False), (2, 5, 2, False)):
        s = torch.randn(R, C, generator=g, dtype=torch.float64) * 3
        v = torch.randn(C, D, generator=g, dtype=torch.float64)
        if fresh:  # the first tile: nothing seen yet
            m, ell, acc = torch.full((R, 1), float("-inf"), dtype=torch.float64), torch.zeros(R, 1, dtype=torch.float64), \
                torch.zeros(R, D, dtype=torch.float64)
        else:  # a state left by an earlier tile whose max is sometimes above, sometimes below the new one
            s_old = torch.randn(R, 3, generator=g, dtype=torch.float64) * 3
            v_old = torch.randn(3, D, generator=g, dtype=torch.float64)
            m, ell, acc = online_softmax_update(torch.full((R, 1), float("-inf"), dtype=torch.float64),
                                              torch.zeros(R, 1, dtype=torch.float64),
                                              torch.zeros(R, D, dtype=torch.float64), s_old, v_old)
        want = torch.cat([t.flatten() for t in online_softmax_update(m, ell, acc, s, v)])
        cases.append(({"m": m, "ell": ell, "acc": acc, "s": s, "v": v}, want))

    def flat(**kw):
        out = fn(**kw)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ValueError("return the three updated statistics as a tuple (m, ell, acc)")
        return torch.cat([torch.as_tensor(t, dtype=torch.float64).flatten() for t in out])

    return run_cases("check_online_softmax", flat, cases)
