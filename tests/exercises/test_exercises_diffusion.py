"""The Diffusion chapter's checkers accept the book's reference and reject plausible wrong answers."""

from __future__ import annotations

import pytest

from llmcore.exercises import check_cfg, check_ddim_step


def good_ddim(x_t, eps, ab_t, ab_prev):
    x0 = (x_t - (1 - ab_t) ** 0.5 * eps) / ab_t ** 0.5
    return ab_prev ** 0.5 * x0 + (1 - ab_prev) ** 0.5 * eps


def test_ddim_accepts_a_correct_answer(capsys):
    assert check_ddim_step(good_ddim) == 5
    assert "PASS check_ddim_step" in capsys.readouterr().out


def test_ddim_hand_case():
    # ab_t = 0.25, ab_prev = 1 (last step): x0 = (x - sqrt(0.75) eps) / 0.5, and the step returns x0
    assert good_ddim(1.0, 0.0, 0.25, 1.0) == pytest.approx(2.0)


@pytest.mark.parametrize("wrong", [
    lambda x_t, eps, ab_t, ab_prev: (x_t - (1 - ab_t) ** 0.5 * eps) / ab_t ** 0.5,  # returns x0_hat
    lambda x_t, eps, ab_t, ab_prev: ab_prev ** 0.5 * x_t + (1 - ab_prev) ** 0.5 * eps,  # forgets to predict x0
    lambda x_t, eps, ab_t, ab_prev: good_ddim(x_t, eps, ab_prev, ab_t),  # swaps the two noise levels
])
def test_ddim_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_ddim_step: case .* expected"):
        check_ddim_step(wrong)


def test_cfg_accepts_and_rejects(capsys):
    assert check_cfg(lambda eps_cond, eps_uncond, w: (1 - w) * eps_uncond + w * eps_cond) == 5
    assert "PASS check_cfg" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="check_cfg: case"):
        check_cfg(lambda eps_cond, eps_uncond, w: eps_cond + w * (eps_cond - eps_uncond))  # guides from eps_cond
