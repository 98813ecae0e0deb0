"""The tiny LM's train-once cache: a hit does not retrain, a corrupt checkpoint is retrained to the same weights."""

from __future__ import annotations

import pytest
import torch

from llmcore.architecture import pretrained
from llmcore.core.errors import LLMCoreError


@pytest.fixture
def counted(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCORE_OUTPUT", str(tmp_path))
    calls = []
    real = pretrained._train_tiny

    def train(*args):
        calls.append(args)
        real(*args)

    monkeypatch.setattr(pretrained, "_train_tiny", train)
    g = torch.Generator().manual_seed(0)  # a small stand-in corpus: the test is about caching, not the text
    text = torch.randint(0, 256, (3000,), generator=g)
    monkeypatch.setattr(pretrained, "corpus_ids", lambda tok=None: (text[:2500], text[2500:]))
    return calls


def test_tiny_lm_is_trained_once_and_retrained_when_corrupt(counted):
    first = pretrained.tiny_lm(steps=3, batch_size=2, seq_len=32)
    second = pretrained.tiny_lm(steps=3, batch_size=2, seq_len=32)
    assert len(counted) == 1 and second.path == first.path
    ref = {k: v.clone() for k, v in first.model.state_dict().items()}
    assert all(torch.equal(ref[k], v) for k, v in second.model.state_dict().items())
    assert second.metrics["steps"] == 3 and second.path.name.startswith("tiny_lm-")
    weights = first.path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    third = pretrained.tiny_lm(steps=3, batch_size=2, seq_len=32)
    assert len(counted) == 2
    assert all(torch.equal(ref[k], v) for k, v in third.model.state_dict().items())  # same recipe, same weights
    (first.path / "metrics.json").write_text("{not json")
    pretrained.tiny_lm(steps=3, batch_size=2, seq_len=32)
    assert len(counted) == 3
    pretrained.tiny_lm(steps=4, batch_size=2, seq_len=32)  # another recipe: its own entry
    assert len(counted) == 4


def test_unknown_override_is_a_clear_error():
    with pytest.raises(LLMCoreError, match="unknown tiny_lm override"):
        pretrained.tiny_lm(stepz=3)
