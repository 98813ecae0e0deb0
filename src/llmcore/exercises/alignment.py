r"""Self-checking exercises of Part 3 (post-training and alignment): SFT and preference alignment.

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.alignment`, never retyped here).

* :func:`check_sft_loss_mask` — SFT: HF-style labels, the token id on response tokens and ``-100`` on the prompt;
* :func:`check_masked_sft_loss` — SFT: mean next-token cross-entropy over the tokens whose label is not ``-100``;
* :func:`check_bradley_terry_loss` — reward model: :math:`-\log\sigma(r_w - r_l)`, averaged over pairs;
* :func:`check_dpo_loss` — DPO: :math:`-\log\sigma(\beta[(\log\pi_w - \log\pi^\text{ref}_w) -
  (\log\pi_l - \log\pi^\text{ref}_l)])`, averaged over pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from llmcore.alignment import tasks as T
from llmcore.alignment.ppo_dpo import bradley_terry_loss, dpo_loss
from llmcore.alignment.sft import labels_for, masked_loss
from llmcore.exercises.checking import run_cases


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_sft_loss_mask(fn: Callable) -> int:
    """``fn(ids, resp_mask) -> labels``: for one conversation's token ids (a list of ints) and a list of
    bools that is True on the response tokens (``<eos>`` included), the labels HF's loss expects: the token
    id where it is scored (the response) and ``-100`` where it is ignored (the prompt). A list or a 1-D
    array/tensor of the same length is accepted."""
    cases = []
    for prompt, response in (("name of: def open_reader(path, mode):", "open_reader"),
                             ("parameters of: def cut(element, pat, l):", "element, pat, l"),
                             ("upper: zaqq", "ZAQQ"), ("12+34=", "46")):
        ids, mask = T.encode_chat(T.Example("?", 0, prompt, response, ""))
        cases.append(({"ids": ids, "resp_mask": mask}, labels_for(ids, mask)))
    rng = _rng("sft_loss_mask")
    for n, n_prompt in ((1, 0), (6, 3), (9, 8)):  # edge cases: all response, short, one response token
        ids = rng.integers(0, 2040, n).tolist()
        mask = [False] * n_prompt + [True] * (n - n_prompt)
        cases.append(({"ids": ids, "resp_mask": mask}, labels_for(ids, mask)))
    return run_cases("check_sft_loss_mask", fn, cases, atol=0)


def check_masked_sft_loss(fn: Callable) -> int:
    """``fn(logits, labels) -> loss``: the SFT loss of a batch, ``logits (B, L, V)`` float tensor, ``labels (B, L)``
    long tensor with ``-100`` where a token is not scored. Position ``t``'s logits predict the token at
    ``t + 1``; the loss is the mean cross-entropy (nats) over every scored target in the batch (not a mean
    of per-row means)."""
    rng = _rng("masked_sft_loss")
    cases = []
    for B, L, V, p_masked in ((1, 2, 3, 0.0), (1, 6, 5, 0.5), (2, 5, 7, 0.3), (3, 8, 11, 0.6), (4, 4, 2, 0.2)):
        logits = torch.tensor(rng.normal(size=(B, L, V)) * 2, dtype=torch.float32)
        labels = torch.tensor(rng.integers(0, V, (B, L)))
        drop = torch.tensor(rng.random((B, L)) < p_masked)
        drop[:, 1] = False  # every row keeps at least one scored target (position 1, predicted from 0)
        labels[drop] = -100
        cases.append(({"logits": logits, "labels": labels}, float(masked_loss(logits, labels))))
    return run_cases("check_masked_sft_loss", fn, cases, atol=1e-5)


def check_bradley_terry_loss(fn: Callable) -> int:
    r"""``fn(r_chosen, r_rejected) -> loss``: the reward model's Bradley–Terry loss
    :math:`-\frac1B\sum_i \log\sigma(r^{(i)}_w - r^{(i)}_l)` from two float tensors ``(B,)`` of scores."""
    rng = _rng("bradley_terry_loss")
    cases = []
    for B, scale in ((1, 1.0), (4, 1.0), (8, 3.0), (16, 10.0), (5, 40.0)):
        rc = torch.tensor(rng.normal(size=B) * scale, dtype=torch.float64)
        rr = torch.tensor(rng.normal(size=B) * scale, dtype=torch.float64)
        cases.append(({"r_chosen": rc, "r_rejected": rr}, float(bradley_terry_loss(rc, rr))))
    return run_cases("check_bradley_terry_loss", fn, cases)


def check_dpo_loss(fn: Callable) -> int:
    r"""``fn(logp_c, logp_r, ref_c, ref_r, beta) -> loss``: DPO's loss from four float tensors ``(B,)`` of
    summed response log-probabilities -- policy on the chosen and rejected responses, reference on the
    same -- and the scalar :math:`\beta`; the mean over pairs of
    :math:`-\log\sigma\big(\beta[(\log\pi_c - \log\pi^\text{ref}_c) - (\log\pi_r - \log\pi^\text{ref}_r)]\big)`."""
    rng = _rng("dpo_loss")
    cases = []
    for B, beta, spread in ((1, 0.1, 1.0), (4, 0.5, 2.0), (8, 0.1, 20.0), (6, 1.0, 5.0), (16, 2.0, 30.0)):
        ref_c = torch.tensor(-rng.random(B) * 20, dtype=torch.float64)
        ref_r = torch.tensor(-rng.random(B) * 20, dtype=torch.float64)
        logp_c = ref_c + torch.tensor(rng.normal(size=B) * spread)
        logp_r = ref_r + torch.tensor(rng.normal(size=B) * spread)
        cases.append(({"logp_c": logp_c, "logp_r": logp_r, "ref_c": ref_c, "ref_r": ref_r, "beta": beta},
                      float(dpo_loss(logp_c, logp_r, ref_c, ref_r, beta))))
    return run_cases("check_dpo_loss", fn, cases)
