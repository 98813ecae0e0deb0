"""Core plumbing: reports, criteria, seeding, devices, errors."""

import json
import math

import numpy as np
import pytest
import torch

from llmcore.core import LLMCoreError, Report, check_range, pick_device, seed_everything
from llmcore.core.report import Criterion


def test_criterion_is_computed_not_declared():
    assert Criterion("x", 1.0, "<", 2.0).passed
    assert not Criterion("x", 3.0, "<", 2.0).passed
    assert not Criterion("x", math.nan, "<", 2.0).passed  # NaN never passes
    assert Criterion("n", 0, "==", 0).passed
    with pytest.raises(ValueError):
        Criterion("x", 1.0, "~", 2.0)


def test_report_round_trip_json_and_markdown(tmp_path):
    rep = Report("demo", "Demo / 演示", True, "cpu", 0)
    rep.metric("loss", 1.23456789)
    rep.check("a | b", 0.5, ">=", 0.4)
    rep.check("fails", 2.0, "<", 1.0)
    assert not rep.passed and [c.name for c in rep.failures()] == ["fails"]
    d = json.loads(rep.to_json())
    assert d["passed"] is False and d["metrics"]["loss"] == pytest.approx(1.23456789)
    assert Report.from_dict(d).to_dict() == d
    md = rep.to_markdown()
    assert "FAIL" in md and "a \\| b" in md  # pipes escaped in tables
    js, mdp = rep.save(tmp_path)
    assert js.exists() and mdp.exists() and not list(tmp_path.glob("*.tmp"))
    assert "loss: 1.2346" in rep.summary()


def test_empty_report_does_not_pass():
    assert not Report("demo", "d", True, "cpu", 0).passed


def test_seed_everything_reproducible_and_fixes_threads():
    seed_everything(123)
    a = (np.random.rand(3), torch.rand(3))
    seed_everything(123)
    b = (np.random.rand(3), torch.rand(3))
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.get_num_threads() == 2
    with pytest.raises(LLMCoreError):
        seed_everything(-1)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda")
    with pytest.raises(LLMCoreError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(LLMCoreError, match="no CUDA GPU"):
            pick_device("cuda")
        with pytest.raises(LLMCoreError, match="no CUDA GPU"):
            pick_device(torch.device("cuda", 0))


def test_pick_device_is_idempotent_on_a_resolved_device():
    for name in ("cpu", "auto") + (("cuda", "cuda:0") if torch.cuda.is_available() else ()):
        dev = pick_device(name)
        assert isinstance(dev, torch.device)
        assert pick_device(dev) == dev and pick_device(pick_device(dev)) == dev
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


def test_check_range():
    check_range("p", 0.5, 0, 1)
    with pytest.raises(LLMCoreError, match=r"p=2 is out of range \[0, 1\]"):
        check_range("p", 2, 0, 1)
