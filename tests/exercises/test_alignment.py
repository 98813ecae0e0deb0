"""Part 3's checkers accept correct answers (the book's own and a library's) and reject plausible wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from llmcore.alignment.ppo_dpo import bradley_terry_loss, dpo_loss
from llmcore.alignment.sft import labels_for, masked_loss
from llmcore.exercises import (
    check_bradley_terry_loss,
    check_dpo_loss,
    check_masked_sft_loss,
    check_sft_loss_mask,
)

# -- SFT labels ---------------------------------------------------------------------------------------


def good_labels(ids, resp_mask):
    return [i if m else -100 for i, m in zip(ids, resp_mask)]


def test_sft_loss_mask_accepts_reference_and_answer(capsys):
    assert check_sft_loss_mask(labels_for) == 7
    assert check_sft_loss_mask(lambda ids, resp_mask: torch.where(torch.tensor(resp_mask), torch.tensor(ids),
                                                                      -100)) == 7
    assert "PASS check_sft_loss_mask" in capsys.readouterr().out


def test_sft_loss_mask_hand_case():
    assert labels_for([5, 6, 7, 8], [False, False, True, True]) == [-100, -100, 7, 8]


@pytest.mark.parametrize("wrong", [
    lambda ids, resp_mask: list(ids),  # prompt not masked
    lambda ids, resp_mask: [-100 if m else i for i, m in zip(ids, resp_mask)],  # mask inverted
    lambda ids, resp_mask: [i if m else 0 for i, m in zip(ids, resp_mask)],  # 0 is a real token id
    lambda ids, resp_mask: [i for i, m in zip(ids, resp_mask) if m],  # dropped the prompt (wrong length)
])
def test_sft_loss_mask_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_sft_loss_mask: case"):
        check_sft_loss_mask(wrong)


# -- masked SFT loss ----------------------------------------------------------------------------------


def good_loss(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def test_masked_sft_loss_accepts_reference_answer_and_hf():
    assert check_masked_sft_loss(masked_loss) == 5
    assert check_masked_sft_loss(good_loss) == 5
    # Hugging Face's causal-LM loss (it shifts the labels itself): an independent oracle
    assert check_masked_sft_loss(lambda logits, labels: ForCausalLMLoss(logits, labels, logits.shape[-1])) == 5


def test_masked_sft_loss_hand_case():
    # uniform logits over 4 tokens: every scored target costs log 4, whatever the labels
    labels = torch.tensor([[-100, -100, 2, 3]])
    assert float(masked_loss(torch.zeros(1, 4, 4), labels)) == pytest.approx(math.log(4))


def unshifted(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def mean_of_row_means(logits, labels):
    return torch.stack([good_loss(logits[b:b + 1], labels[b:b + 1]) for b in range(len(logits))]).mean()


def counts_masked_tokens(logits, labels):
    lab = labels[:, 1:].clamp(min=0)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab.reshape(-1))


@pytest.mark.parametrize("wrong", [unshifted, mean_of_row_means, counts_masked_tokens])
def test_masked_sft_loss_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_masked_sft_loss: case"):
        check_masked_sft_loss(wrong)


# -- Bradley-Terry --------------------------------------------------------------------------------------


def test_bradley_terry_accepts_reference_and_bce():
    assert check_bradley_terry_loss(bradley_terry_loss) == 5
    # torch's binary cross-entropy on the score difference with target 1 is the same loss
    assert check_bradley_terry_loss(lambda r_chosen, r_rejected: F.binary_cross_entropy_with_logits(
        r_chosen - r_rejected, torch.ones_like(r_chosen))) == 5


def test_bradley_terry_hand_case():
    assert float(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))) == pytest.approx(math.log(1 + math.exp(-1)))


@pytest.mark.parametrize("wrong", [
    lambda r_chosen, r_rejected: -F.logsigmoid(r_rejected - r_chosen).mean(),  # chosen and rejected swapped
    lambda r_chosen, r_rejected: -torch.log(torch.sigmoid(r_chosen - r_rejected)).sum(),  # sum, not mean
    lambda r_chosen, r_rejected: (1 - torch.sigmoid(r_chosen - r_rejected)).mean(),  # forgot the log
])
def test_bradley_terry_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_bradley_terry_loss: case"):
        check_bradley_terry_loss(wrong)


# -- DPO ----------------------------------------------------------------------------------------------


def test_dpo_accepts_reference():
    assert check_dpo_loss(lambda logp_c, logp_r, ref_c, ref_r, beta: dpo_loss(logp_c, logp_r, ref_c, ref_r, beta)) == 5
    # the same loss written as Bradley-Terry on the implicit rewards beta * (log pi - log pi_ref)
    assert check_dpo_loss(lambda logp_c, logp_r, ref_c, ref_r, beta: bradley_terry_loss(
        beta * (logp_c - ref_c), beta * (logp_r - ref_r))) == 5


def test_dpo_hand_case():
    # log-ratios +0.5 (chosen) and -0.5 (rejected), beta 0.5: margin 0.5, loss log(1 + e^-0.5)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-0.5)))


@pytest.mark.parametrize("wrong", [
    lambda logp_c, logp_r, ref_c, ref_r, beta: -F.logsigmoid(logp_c - logp_r).mean() * beta,  # no reference
    lambda logp_c, logp_r, ref_c, ref_r, beta: -F.logsigmoid((logp_c - ref_c) - (logp_r - ref_r)).mean(),  # no beta
    lambda logp_c, logp_r, ref_c, ref_r, beta: -F.logsigmoid(beta * ((ref_c - logp_c) - (ref_r - logp_r))).mean(),
])
def test_dpo_rejects_wrong_answers(wrong):
    with pytest.raises(AssertionError, match="check_dpo_loss: case"):
        check_dpo_loss(wrong)
