r"""Self-checking exercises of the vision-language chapter (Part 2).

Each ``check_<name>(fn)`` runs the reader's ``fn`` on hidden cases and compares it with the reference
implementation the chapter shows (imported from :mod:`llmcore.architecture.vlm.models`, never retyped here).

* :func:`check_clip_loss` — CLIP's symmetric InfoNCE on a batch of matched pairs;
* :func:`check_qformer_mask` — BLIP-2's Q-Former self-attention masks (ITC, ITM, ITG).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from llmcore.architecture.vlm.models import clip_loss, qformer_mask
from llmcore.exercises.checking import run_cases


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))  # fixed hidden cases per checker


def check_clip_loss(fn: Callable) -> int:
    r"""``fn(image_emb, text_emb, logit_scale) -> loss``: ``(B, E)`` embeddings (not normalised; row ``i`` of
    each is a matched pair), ``logit_scale`` a scalar tensor $s$; return
    $\frac12[\mathrm{CE}(e^s U W^\top, \mathrm{arange}) + \mathrm{CE}(e^s W U^\top, \mathrm{arange})]$
    with $U, W$ the L2-normalised rows."""
    rng = _rng("clip_loss")
    cases = []
    for B, E, s in ((2, 2, 0.0), (4, 8, 1.0), (8, 4, 2.5), (16, 16, 4.6), (3, 5, -1.0), (32, 8, 3.0)):
        img = torch.tensor(rng.normal(size=(B, E)), dtype=torch.float32)
        txt = torch.tensor(rng.normal(size=(B, E)), dtype=torch.float32) * 3
        scale = torch.tensor(s)
        cases.append(({"image_emb": img, "text_emb": txt, "logit_scale": scale}, clip_loss(img, txt, scale)))
    return run_cases("check_clip_loss", fn, cases, atol=1e-5)


def check_qformer_mask(fn: Callable) -> int:
    """``fn(n_query, n_text, mode) -> mask``: bool ``(L + T, L + T)``, rows and columns = queries then text,
    True = may attend; ``mode`` is ``"itc"`` (unimodal), ``"itm"`` (bidirectional) or ``"itg"``
    (queries see queries; text token ``t`` sees every query and text ``<= t``)."""
    cases = []
    for n_query, n_text in ((1, 1), (2, 3), (4, 5), (3, 1)):
        for mode in ("itc", "itm", "itg"):
            cases.append(({"n_query": n_query, "n_text": n_text, "mode": mode}, qformer_mask(n_query, n_text, mode)))
    return run_cases("check_qformer_mask", fn, cases)
