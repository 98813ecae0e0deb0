"""GRPO: group advantages vs TRL's formula, KL estimators vs their definitions, the clipped loss by hand."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from llmcore.alignment import grpo as G
from llmcore.alignment import ppo_dpo as P
from llmcore.alignment import sft as S
from llmcore.alignment import tasks as T
from llmcore.architecture.llama import Llama
from llmcore.core.errors import LLMCoreError


def trl_group_advantages(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """The lines of TRL's GRPOTrainer._generate_and_score_completions for scale_rewards='group'."""
    from trl.trainer.utils import nanstd

    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
    std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    return (rewards - mean_grouped_rewards) / (std_rewards + 1e-4)


@pytest.mark.parametrize("g", [2, 4, 8])
def test_group_advantages_equal_trl(g):
    gen = torch.Generator().manual_seed(g)
    r = torch.randint(0, 2, (10 * g,), generator=gen).float() + 0.1 * torch.rand(10 * g, generator=gen)
    r[:g] = 1.0  # one group with zero std: advantage exactly 0
    ours = G.group_advantages(r, g, "group")
    assert torch.allclose(ours, trl_group_advantages(r, g), atol=1e-6)
    assert torch.all(ours[:g] == 0)
    # each group's advantages have mean 0
    assert torch.allclose(ours.view(-1, g).mean(1), torch.zeros(10), atol=1e-6)


def test_group_advantage_hand_example_and_errors():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])  # mean 0.25, unbiased std 0.5
    adv = G.group_advantages(r, 4, eps=0.0)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]))
    assert torch.allclose(G.group_advantages(r, 4, "none"), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    with pytest.raises(LLMCoreError):
        G.group_advantages(torch.ones(5), 4)
    with pytest.raises(LLMCoreError):
        G.group_advantages(torch.ones(4), 4, "bogus")


def test_kl_estimators_match_definitions_and_are_unbiased():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(20, generator=gen), 0)
    q = torch.softmax(torch.randn(20, generator=gen), 0)
    lp, lq = p.log(), q.log()
    est = G.kl_estimators(lp, lq)
    r = q / p  # ratio pi_ref / pi
    assert torch.allclose(est["k1"], -torch.log(r), atol=1e-6)
    assert torch.allclose(est["k2"], 0.5 * torch.log(r) ** 2, atol=1e-6)
    assert torch.allclose(est["k3"], (r - 1) - torch.log(r), atol=1e-6)
    assert torch.all(est["k3"] >= 0)
    exact = float((p * (lp - lq)).sum())
    # expectations under pi (exact, by weighting with p): k1 and k3 are unbiased, k2 is not
    assert math.isclose(float((p * est["k1"]).sum()), exact, rel_tol=1e-5)
    assert math.isclose(float((p * est["k3"]).sum()), exact, rel_tol=1e-5)
    assert not math.isclose(float((p * est["k2"]).sum()), exact, rel_tol=1e-2)


def test_grpo_loss_clipping_by_hand():
    # two one-token responses; ratios 1.5 (A=+1, clipped at 1.2) and 0.5 (A=-1, clipped at 0.8)
    old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 1)
    loss, stats = G.grpo_loss(logp, old, logp.detach(), adv, mask, clip_eps=0.2, beta=0.0)
    # min(1.5*1, 1.2*1) = 1.2 ; min(0.5*-1, 0.8*-1) = -0.8 ; objective mean = 0.2 ; loss = -0.2
    assert math.isclose(float(loss.detach()), -0.2, abs_tol=1e-6)
    assert stats["clip_frac"] == 1.0
    loss.backward()
    assert torch.all(logp.grad == 0)  # both clipped: no gradient
    # unclipped side: ratio 1.1 with A=+1 has gradient -ratio*A/N = -0.55
    logp2 = torch.log(torch.tensor([[1.1], [1.0]])).requires_grad_(True)
    loss2, _ = G.grpo_loss(logp2, old, logp2.detach(), torch.tensor([1.0, 0.0]), mask, 0.2, 0.0)
    loss2.backward()
    assert math.isclose(float(logp2.grad[0, 0]), -0.55, rel_tol=1e-5)


def test_grpo_loss_kl_term_and_sequence_mean():
    logp = torch.tensor([[-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # third token is padding
    loss, stats = G.grpo_loss(logp, logp, ref, torch.zeros(1), mask, beta=1.0)
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert math.isclose(float(loss), sum(k3) / 2, rel_tol=1e-5)
    assert math.isclose(stats["kl"], sum(k3) / 2, rel_tol=1e-5)


def test_verifier_and_reward():
    ok = [ord("4"), ord("2"), T.EOS]
    assert T.check_arith(37, 5, ok) == (True, True, False)
    assert T.check_arith(37, 5, [ord("4"), ord("2")]) == (False, False, False)  # not closed by <eos>
    assert T.check_arith(37, 5, list(b"42 ok") + [T.EOS]) == (True, False, True)
    assert T.check_arith(37, 5, [ord("4"), ord("3"), T.EOS]) == (False, True, False)
    resp = torch.tensor([ok, [ord("9"), T.EOS, T.EOS]])
    r, _ = G.reward_fn(np.array([[37, 5], [37, 5]]), resp, 0.1)
    assert torch.allclose(r, torch.tensor([1.1, 0.1]))
    assert torch.equal(T.response_mask(resp), torch.tensor([[1.0, 1, 1], [1, 1, 0]]))


def test_grpo_round_runs_on_policy_and_memory_accounting():
    """One on-policy round on an untrained tiny model: finite stats, no clipping; byte accounting."""
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2)
    policy = Llama(task.model_config())
    ref = Llama(task.model_config())
    ref.load_state_dict(policy.state_dict())
    cfg = G.GRPOConfig(prompts_per_step=4, group_size=4, lr=1e-2, inner_epochs=1, beta=0.0)
    probs = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    gen = torch.Generator().manual_seed(0)
    stats = G.grpo_round(policy, ref, torch.optim.SGD(policy.parameters(), lr=1.0), probs, cfg, task, gen)
    assert all(np.isfinite(v) for v in stats.values())
    assert stats["clip_frac"] == 0.0  # one on-policy step: ratio is exactly 1
    # memory accounting: GRPO holds 2 models (one trained), PPO 4 (two trained)
    n = policy.num_params() * 4
    assert G.model_state_bytes([policy], [ref]) == 5 * n
    assert G.model_state_bytes([policy, policy], [ref, ref]) == 10 * n


def test_sampled_pass_counts_each_problems_correct_samples():
    """pass@1 / pass@n from the per-problem correct rates of ``ppo_dpo.sampled_stats``: the same generator seed
    gives the same samples, so pass@1 is their mean rate and pass@n the share of problems with any correct one."""
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2)
    model = Llama(task.model_config()).eval()
    probs = np.random.default_rng(0).integers(0, 100, (50, 2))
    # make some answers right: teach the untrained model a few sums with a handful of SFT steps
    S.train_packed(model, S.arith_batches(probs, task, np.random.default_rng(0)), 150,
                   opt=torch.optim.AdamW(model.parameters(), lr=3e-3), warmup=None, grad_clip=None,
                   logits_fn=S.causal_logits, desc=None)
    rate = P.sampled_stats(model, probs, task, 8, torch.Generator().manual_seed(5))["correct"]
    out = G.sampled_pass(model, probs, task, 8, torch.Generator().manual_seed(5))
    assert 0 < rate.mean() and (rate < 1).any()
    assert out == {"pass@1": pytest.approx(rate.mean()), "pass@n": pytest.approx((rate > 0).mean())}
    assert out["pass@1"] <= out["pass@n"]


def test_warm_start_records_its_steps(tmp_path, monkeypatch):
    """The warm start stops at the first check that reaches the target and says how many steps it took
    (trained and loaded from the cache alike): the from-scratch comparison trains that many steps."""
    monkeypatch.setenv("LLMCORE_OUTPUT", str(tmp_path))
    tiny = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, sft_batch=8)
    fixed = dataclasses.replace(tiny, sft_steps=7)
    assert S.arith_sft_model(fixed, cache=False).warm_start_steps == 7
    # target 0: the first check (after sft_check_every steps) stops it; target 2: never reached, all steps
    early = dataclasses.replace(tiny, sft_steps=12, sft_target_acc=0.0, sft_check_every=3)
    never = dataclasses.replace(early, sft_target_acc=2.0)
    assert S.arith_sft_model(early, cache=False).warm_start_steps == 3
    trained = S.arith_sft_model(never)
    assert trained.warm_start_steps == 12
    loaded = S.arith_sft_model(never)  # from output/checkpoints under tmp_path
    assert loaded.warm_start_steps == 12
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))


def test_comparisons_job_equals_the_experiments_own(tmp_path, monkeypatch):
    """The chapter runs the scratch start and the SFT control as a separate job (in a worker process): its
    numbers are those experiment(scratch=True, control=True) computes, and the GRPO run does not change."""
    monkeypatch.setenv("LLMCORE_OUTPUT", str(tmp_path))
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, sft_batch=8, sft_steps=6)
    cfg = G.GRPOConfig(steps=2, prompts_per_step=4, group_size=2, eval_every=1, eval_samples=2)
    both = G.experiment(cfg=cfg, task=task, seed=1)
    alone = G.experiment(cfg=cfg, task=task, seed=1, scratch=False, control=False)
    acc_scratch, (accs, final, _) = G.comparisons(cfg, seed=1, task=task)
    assert (acc_scratch, accs, final) == (both.acc_scratch, both.control_acc, both.acc_sft_control)
    assert len(accs) == 1 + cfg.steps // cfg.eval_every
    assert alone.eval_acc == both.eval_acc and alone.history == both.history


def test_round_lr_linear_equals_hf_schedule():
    """Linear decay to 0 by hand and as transformers' get_linear_schedule_with_warmup (no warmup)."""
    from transformers import get_linear_schedule_with_warmup

    cfg = G.GRPOConfig(lr=1e-4, steps=4)
    ours = [G.round_lr(cfg, s) for s in range(1, 5)]
    assert np.allclose(ours, [1e-4, 7.5e-5, 5e-5, 2.5e-5])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=cfg.steps)
    hf = []
    for _ in range(cfg.steps):
        hf.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(ours, hf)
    assert G.round_lr(G.GRPOConfig(lr=3e-5, lr_schedule="constant"), 17) == 3e-5
    with pytest.raises(LLMCoreError):
        G.GRPOConfig(lr_schedule="cosine")


def test_advantage_diagrams_draw_and_use_the_real_advantages():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    ax = G.plot_advantage_paths(axes[0], "grpo", group_size=4)
    assert ax is axes[0] and len(ax.patches) == 1 + 3 * 4  # prompt + (response, reward, advantage) per sample
    labels = [t.get_text() for t in ax.texts if t.get_text().startswith(r"$\hat A_i$=")]
    # rewards 1.1, 0.1, 1.0, 0.1: mean 0.575, unbiased std 0.5500 -> advantages +0.95, -0.86, +0.77, -0.86
    assert labels == [r"$\hat A_i$=+0.95", r"$\hat A_i$=-0.86", r"$\hat A_i$=+0.77", r"$\hat A_i$=-0.86"]
    ax = G.plot_advantage_paths(axes[1], "ppo")
    assert len(ax.patches) == 1 + 3 * 3 + 1  # prompt, (token, V, reward) per token, GAE
    with pytest.raises(LLMCoreError, match="kind"):
        G.plot_advantage_paths(axes[1], "dpo")
    plt.close(fig)


def test_measured_memory_equals_the_formula_and_orders_the_setups():
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2)
    start = Llama(task.model_config())
    m = G.memory_setups(start)
    n, d = start.num_params(), start.config.d_model
    steps = 4 * len(list(start.parameters()))  # AdamW's 'step' counters, one fp32 scalar per tensor
    assert m["GRPO"]["total"] == G.model_state_bytes([start], [start]) + steps
    # book PPO: + value head (trained) + reward model (a frozen LM copy, its head, its 3 buffers)
    head = (d + 1) * 4
    rm = n * 4 + (d + 3) * 4 + (2 * (d + 2) + 2) * 4
    assert m["PPO (book: shared trunk)"]["total"] == m["GRPO"]["total"] + 4 * head + 4 * 2 + rm
    assert m["PPO (separate value model)"]["total"] > 1.9 * m["GRPO"]["total"]


def test_trl_grpo_code_agrees_with_ours():
    pytest.importorskip("trl")
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2)
    model = Llama(task.model_config())
    out = G.trl_grpo_check(model, task, G.GRPOConfig(), seed=0, n_prompts=4)
    assert out["adv_err"] < 1e-6
    assert out["loss_err"] < 1e-4 and out["clip_frac"] > 0  # the clip acted on some tokens
