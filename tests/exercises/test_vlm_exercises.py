"""The VLM chapter's checkers accept the book's reference and a rewrite, and reject plausible wrong answers."""

from __future__ import annotations

import pytest
import torch

from llmcore.architecture.vlm.models import clip_loss, qformer_mask
from llmcore.exercises import check_clip_loss, check_qformer_mask


def rewritten_clip(image_emb, text_emb, logit_scale):
    u = image_emb / image_emb.norm(dim=-1, keepdim=True)
    w = text_emb / text_emb.norm(dim=-1, keepdim=True)
    lg = (u @ w.T) * logit_scale.exp()
    i2t = -(lg.diag() - lg.logsumexp(1)).mean()
    t2i = -(lg.diag() - lg.logsumexp(0)).mean()
    return (i2t + t2i) / 2


def rewritten_mask(n_query, n_text, mode):
    n = n_query + n_text
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            qi, qj = i < n_query, j < n_query
            if mode == "itm":
                m[i, j] = True
            elif mode == "itc":
                m[i, j] = qi == qj
            else:
                m[i, j] = qj if qi else (qj or j <= i)
    return m


def test_clip_checker(capsys):
    assert check_clip_loss(clip_loss) == 6
    assert check_clip_loss(rewritten_clip) == 6
    assert "PASS check_clip_loss" in capsys.readouterr().out
    with pytest.raises(AssertionError):  # only the image-to-text direction
        check_clip_loss(lambda image_emb, text_emb, logit_scale: torch.nn.functional.cross_entropy(
            logit_scale.exp() * torch.nn.functional.normalize(image_emb, dim=-1)
            @ torch.nn.functional.normalize(text_emb, dim=-1).T, torch.arange(len(image_emb))))
    with pytest.raises(AssertionError):  # forgets to normalise
        check_clip_loss(lambda image_emb, text_emb, logit_scale: torch.nn.functional.cross_entropy(
            logit_scale.exp() * image_emb @ text_emb.T, torch.arange(len(image_emb))))


def test_qformer_mask_checker():
    assert check_qformer_mask(qformer_mask) == 12
    assert check_qformer_mask(rewritten_mask) == 12
    with pytest.raises(AssertionError):  # ITG with queries that read the text
        check_qformer_mask(lambda n_query, n_text, mode: qformer_mask(n_query, n_text, "itm" if mode == "itg" else mode))
