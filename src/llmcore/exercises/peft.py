r"""Self-checking exercises of the PEFT chapter (LoRA and model merging).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.alignment.peft`, never retyped here).

* :func:`check_lora_forward` — a LoRA linear: :math:`h = x W_0^\top + \frac{\alpha}{r}\, x A^\top B^\top`;
* :func:`check_ties_merge` — TIES on one tensor: trim to the top-:math:`k` magnitudes, elect the sign of the
  sum, take the disjoint mean of the entries that agree with it;
* :func:`check_lora_param_count` — how many numbers LoRA trains in a LLaMA with grouped-query attention.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from llmcore.alignment.peft import LoRAConfig, LoRALinear, apply_lora, count_params, ties_tensor
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.exercises.checking import run_cases


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(sum(map(ord, name)))  # fixed hidden cases per checker


def check_lora_forward(fn: Callable) -> int:
    r"""``fn(x, W, A, B, alpha, r) -> h``: the output of a LoRA'd linear layer (no bias, no dropout),

    .. math:: h = x W^\top + \frac{\alpha}{r}\, x A^\top B^\top,

    ``x (N, d_in)``, frozen ``W (d_out, d_in)``, ``A (r, d_in)``, ``B (d_out, r)`` float64 tensors; returns
    ``h (N, d_out)``. The reference is the book's :class:`~llmcore.alignment.peft.LoRALinear` with these weights.
    """
    g = _gen("lora_forward")
    cases = []
    for n, d_in, d_out, r, alpha in ((1, 3, 2, 1, 1.0), (4, 8, 8, 2, 4.0), (5, 6, 10, 4, 8.0), (3, 12, 5, 3, 3.0),
                                     (2, 16, 16, 8, 32.0)):
        x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
        W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
        A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
        B = torch.randn(d_out, r, generator=g, dtype=torch.float64)  # non-zero: B = 0 would hide the branch
        base = nn.Linear(d_in, d_out, bias=False).double()
        lora = LoRALinear(base, d_in, d_out, LoRAConfig(r=r, alpha=alpha)).double()
        with torch.no_grad():
            base.weight.copy_(W)
            lora.lora_A.weight.copy_(A)
            lora.lora_B.weight.copy_(B)
            ref = lora(x)
        cases.append(({"x": x, "W": W, "A": A, "B": B, "alpha": alpha, "r": r}, ref))
    return run_cases("check_lora_forward", fn, cases, atol=1e-9)


def check_ties_merge(fn: Callable) -> int:
    r"""``fn(taus, density) -> tau_m``: TIES-merging of one tensor. ``taus`` is a list of task-vector tensors of
    one shape; keep the ``k = round(density * numel)`` largest magnitudes of each (the hidden cases make ``k``
    a whole number and have no ties), elect :math:`\gamma = \mathrm{sgn}\sum_i \hat\tau_i` per coordinate and
    return the mean of the trimmed entries whose sign equals :math:`\gamma` (0 where none does), same shape.
    The reference is the book's :func:`~llmcore.alignment.peft.ties_tensor`."""
    g = _gen("ties_merge")
    cases = []
    for n, shape, density in ((2, (10,), 1.0), (2, (10,), 0.5), (3, (4, 5), 0.2), (3, (4, 5), 0.6),
                              (4, (8,), 0.25), (2, (5, 4), 0.1)):
        taus = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(n)]
        cases.append(({"taus": taus, "density": density}, ties_tensor(taus, density)))
    return run_cases("check_ties_merge", lambda taus, density: fn(taus=[t.clone() for t in taus], density=density),
                     cases, atol=1e-9)


def check_lora_param_count(fn: Callable) -> int:
    r"""``fn(d_model, n_layers, n_heads, n_kv_heads, ffn_hidden, r, targets) -> int``: the number of numbers
    LoRA of rank ``r`` trains when it adapts every linear named in ``targets`` (a tuple drawn from
    ``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``) in each of the ``n_layers`` blocks of a
    LLaMA with grouped-query attention (head size ``d_model // n_heads``; keys and values have ``n_kv_heads``
    heads). The reference counts the trainable parameters of a real :class:`~llmcore.architecture.llama.Llama`
    after :func:`~llmcore.alignment.peft.apply_lora`."""
    cases = []
    for d, layers, heads, kv, ffn, r, targets in (
            (16, 1, 2, 2, 48, 1, ("q_proj",)),
            (24, 2, 4, 2, 64, 2, ("q_proj", "v_proj")),
            (32, 3, 4, 1, 96, 4, ("q_proj", "v_proj", "o_proj")),
            (48, 2, 6, 2, 128, 8, ("k_proj", "down_proj")),
            (64, 2, 8, 4, 176, 3, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))):
        model = Llama(ModelConfig(vocab_size=32, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                                  ffn_hidden=ffn, bos_id=None, eos_id=None, pad_id=None))
        apply_lora(model, LoRAConfig(r=r, alpha=2 * r, target_modules=targets))
        trainable, _ = count_params(model)
        cases.append(({"d_model": d, "n_layers": layers, "n_heads": heads, "n_kv_heads": kv, "ffn_hidden": ffn,
                       "r": r, "targets": targets}, np.float64(trainable)))
    return run_cases("check_lora_param_count", fn, cases, atol=0)
