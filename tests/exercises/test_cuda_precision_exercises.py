"""The kernels-chapter checker accepts a correct loss-scale update and rejects plausible wrong ones."""

from __future__ import annotations

import pytest

from llmcore.exercises import check_loss_scale_update


def right(scale, streak, found_inf, growth_factor, backoff_factor, interval):
    if found_inf:
        return scale * backoff_factor, 0
    streak += 1
    if streak == interval:
        return scale * growth_factor, 0
    return scale, streak


def test_accepts_a_correct_update(capsys):
    assert check_loss_scale_update(right) == 12
    assert capsys.readouterr().out.startswith("PASS check_loss_scale_update")


def test_rejects_keeping_the_streak_after_overflow():
    def wrong(scale, streak, found_inf, growth_factor, backoff_factor, interval):
        s, k = right(scale, streak, found_inf, growth_factor, backoff_factor, interval)
        return s, (streak if found_inf else k)

    with pytest.raises(AssertionError, match="check_loss_scale_update"):
        check_loss_scale_update(wrong)


def test_rejects_growing_every_step():
    def wrong(scale, streak, found_inf, growth_factor, backoff_factor, interval):
        return (scale * backoff_factor, 0) if found_inf else (scale * growth_factor, 0)

    with pytest.raises(AssertionError, match="check_loss_scale_update"):
        check_loss_scale_update(wrong)
