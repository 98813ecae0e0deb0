"""Preference losses: Bradley–Terry, PPO clipping by hand, DPO/IPO against TRL's DPOTrainer on the same model."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcore.alignment import ppo_dpo as P
from llmcore.alignment import sft as S
from llmcore.alignment import tasks as T
from llmcore.architecture.llama import Llama
from llmcore.core.errors import LLMCoreError


def test_bradley_terry_loss_by_hand_and_as_bce():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = np.mean([-math.log(1 / (1 + math.exp(-d))) for d in (1.0, 0.0, -2.0)])
    assert math.isclose(float(P.bradley_terry_loss(rc, rr)), expected, rel_tol=1e-6)
    # it is binary cross-entropy on the logit r_w - r_l with label 1
    bce = F.binary_cross_entropy_with_logits(rc - rr, torch.ones(3))
    assert torch.allclose(P.bradley_terry_loss(rc, rr), bce)
    assert math.isclose(float(P.bradley_terry_loss(torch.zeros(4), torch.zeros(4))), math.log(2), rel_tol=1e-6)


def test_ppo_policy_clipping_hand_example():
    # tokens: ratio 1.5 with A=+2 (clipped to 1.2), ratio 0.5 with A=-1 (clipped to 0.8),
    #         ratio 0.5 with A=+1 (unclipped: min picks 0.5), ratio 1.0 with A=3 (masked out)
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.0]])).requires_grad_(True)
    adv = torch.tensor([[2.0, -1.0, 1.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, clip_frac = P.ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # surrogate: min(3, 2.4)=2.4 ; min(-0.5, -0.8)=-0.8 ; min(0.5, 0.8)=0.5 ; mean over 3 tokens
    assert math.isclose(float(loss.detach()), -(2.4 - 0.8 + 0.5) / 3, rel_tol=1e-6)
    assert math.isclose(float(clip_frac), 1.0, rel_tol=1e-6)  # all three unmasked ratios are outside 1±0.2
    loss.backward()
    # gradient flows only through the unclipped third token: d/dlogp [-(ratio*A)/3] = -0.5*1/3
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, -0.5 / 3, 0.0]]), atol=1e-6)


def test_ppo_value_clipping_hand_example():
    v_old = torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[2.0, 1.1]])
    ret = torch.tensor([[3.0, 0.0]])
    # token 1: (2-3)^2=1 vs (1.2-3)^2=3.24 -> 3.24 ; token 2: (1.1)^2=1.21 vs (1.1)^2 -> 1.21
    loss = P.ppo_value_loss(v, v_old, ret, torch.ones(1, 2), clip_eps=0.2)
    assert math.isclose(float(loss), 0.5 * (3.24 + 1.21) / 2, rel_tol=1e-6)


def test_dpo_and_ipo_by_hand():
    lc, lr, rc, rr = (torch.tensor([x]) for x in (-1.0, -3.0, -2.0, -2.0))
    # Δc = 1, Δr = -1 -> -log σ(0.1 * 2)
    assert math.isclose(float(P.dpo_loss(lc, lr, rc, rr, beta=0.1)), -math.log(1 / (1 + math.exp(-0.2))), rel_tol=1e-6)
    ipo = P.dpo_loss(lc, lr, rc, rr, beta=0.1, loss_type="ipo", len_c=torch.tensor([2.0]), len_r=torch.tensor([4.0]))
    assert math.isclose(float(ipo), (0.5 + 0.25 - 5.0) ** 2, rel_tol=1e-6)
    with pytest.raises(LLMCoreError):
        P.dpo_loss(lc, lr, rc, rr, loss_type="ipo")
    with pytest.raises(LLMCoreError):
        P.dpo_loss(lc, lr, rc, rr, loss_type="nope")


def test_true_reward():
    resp = torch.tensor([[ord("4"), ord("2"), T.EOS, T.EOS, T.EOS, T.EOS],
                         list(b"42 ok") + [T.EOS],
                         [ord("4"), ord("3"), T.EOS, T.EOS, T.EOS, T.EOS],
                         list(b"43 ok") + [T.EOS]])
    r = P.true_reward(np.array([[37, 5]] * 4), resp)
    assert torch.allclose(r, torch.tensor([1.5, 1.0, 0.5, 0.0]))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_trl_dpotrainer(loss_type):
    """Same models (ours copied to HF), same pairs: our loss == DPOTrainer._compute_loss to 1e-5."""
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, verbose_frac=0.5)
    ref = Llama(task.model_config()).eval()
    policy = copy.deepcopy(ref)
    with torch.no_grad():  # move the policy away from the reference so the loss is not log 2
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    probs = np.array([[37, 5], [12, 34], [99, 99], [0, 7]])

    def ids(text):
        return T.encode(text) + [T.EOS] * (task.max_new_tokens - len(T.encode(text)))

    chosen = torch.tensor([ids(str(a + b)) for a, b in probs])
    rejected = torch.tensor([ids(str(a + b + 1) + " ok") for a, b in probs])
    pairs = P.Pairs(probs, chosen, rejected, torch.ones(4), torch.zeros(4))
    ours = P.our_dpo_loss(policy, ref, pairs, task, beta=0.1, loss_type=loss_type)
    theirs = P.trl_dpo_loss(policy, ref, pairs, task, beta=0.1, loss_type=loss_type)
    assert abs(ours - theirs) < 1e-5, (ours, theirs)
    assert abs(ours - (math.log(2) if loss_type == "sigmoid" else 25.0)) > 1e-3  # a non-trivial value



def test_reward_model_reads_the_eos_state_and_ignores_padding():
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, verbose_frac=0.5)
    rm = P.RewardModel(Llama(task.model_config()))
    torch.nn.init.normal_(rm.head.weight)
    prompts = T.encode_arith_prompts(np.array([[37, 5], [37, 5]]))
    a = torch.tensor([[ord("4"), ord("2"), T.EOS, T.EOS, T.EOS, T.EOS, T.EOS]])
    b = torch.tensor([[ord("4"), ord("2"), T.EOS, ord("x"), ord("y"), T.PAD, T.EOS]])  # junk after <eos>
    ra, rb = rm(prompts[:1], a), rm(prompts[:1], b)
    assert torch.allclose(ra, rb, atol=1e-6)
    h = rm.lm.hidden_states(torch.cat([prompts[:1], a], 1))
    assert torch.allclose(ra, rm.head(h[:, prompts.shape[1] + 2]).squeeze(-1), atol=1e-6)


def test_ppo_rlhf_runs_and_logs():
    """Two tiny PPO-RLHF iterations: every logged quantity is finite; KL starts at 0 (policy == reference)."""
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, verbose_frac=0.5)
    sft = Llama(task.model_config()).eval()
    for p in sft.parameters():
        p.requires_grad_(False)
    rm = P.RewardModel(copy.deepcopy(sft)).eval()
    train, _ = T.arith_split(task)
    res = P.ppo_rlhf(sft, rm, train, task, P.PPOConfig(iters=2, prompts_per_iter=8), seed=0)
    assert all(np.isfinite(v).all() for v in res.history.values())
    assert abs(res.history["kl"][0]) < 1e-5
    assert len(res.history["true_reward"]) == 2
