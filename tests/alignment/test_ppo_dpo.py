"""Preference losses: Bradley–Terry, PPO clipping by hand, DPO/IPO against TRL's DPOTrainer on the same model."""

import copy
import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.text import Annotation
from transformers import LlamaForCausalLM

from llmcore.alignment import ppo_dpo as P
from llmcore.alignment import sft as S
from llmcore.alignment import tasks as T
from llmcore.architecture.llama import Llama
from llmcore.core.device import CPU
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


def _ids(text: str, width: int = 6) -> list[int]:
    ids = T.encode(text) + [T.EOS]
    return ids + [T.EOS] * (width - len(ids))


def test_true_reward():
    resp = torch.tensor([_ids("42"), _ids("42 ok"), _ids("43"), _ids("43 ok")])
    r = P.true_reward(np.array([[37, 5]] * 4), resp)
    assert torch.allclose(r, torch.tensor([1.5, 1.0, 0.5, 0.0]))


def test_task_hf_tokenizer_matches_tasks_encode():
    """TRL tokenizes the pairs as text: the HF tokenizer must give tasks.encode's ids (digits one per token)."""
    hf = P.task_hf_tokenizer()
    for text in ("<bos>07+45=", "52 ok", "100", "99+10=109 ok"):
        assert hf(text, add_special_tokens=False)["input_ids"] == T.encode(text.replace("<bos>", ""),
                                                                            add_bos=text.startswith("<bos>"))
    assert hf("100", add_special_tokens=False)["input_ids"] == [ord("1"), ord("0"), ord("0")]  # bytes are ids 0-255
    assert T.TOK.encode("100") != T.encode("100")  # (the plain BPE merges some digit pairs)


def test_as_text_rejects_ids_that_do_not_round_trip():
    assert P._as_text(torch.tensor(_ids("42 ok")))
    assert not P._as_text(torch.tensor([ord("4"), ord("2")] * 3))  # no <eos>
    merged = T.TOK.encode("100")  # a BPE merge of digits: its text re-encodes digit by digit
    assert not P._as_text(torch.tensor(merged + [T.EOS]))


def _dpo_result(sft_correct, dpo_correct, sft_terse, dpo_terse):
    """A DPOResult with given per-prompt sampled rates (true reward = correct + 0.5 terse, per prompt)."""
    def stats(c, t):
        c, t = np.asarray(c, float), np.asarray(t, float)
        return {"reward": c + P.TERSE_BONUS * t, "correct": c, "terse": t}

    s, d = stats(sft_correct, sft_terse), stats(dpo_correct, dpo_terse)
    greedy = {"correct": float(np.mean(sft_correct)), "terse": 0.0}
    return P.DPOResult(P.DPOConfig(), 10, history={"margin": [1.0]}, sft_prompt_reward=s["reward"],
                       dpo_prompt_reward=d["reward"], sft_sampled=s, dpo_sampled=d, sft_stats=greedy,
                       dpo_stats={"correct": float(np.mean(dpo_correct)), "terse": 1.0})


def test_dpo_report_separates_style_from_correctness():
    # style bought with correctness: every prompt wins on the true reward (+0.5 style - 0.25 correct) ...
    bad = P.dpo_report(_dpo_result([1.0] * 4, [0.75] * 4, [0.0] * 4, [1.0] * 4), True, "cpu", 0)
    failed = " ".join(c.name for c in bad.failures())
    assert "correct" in failed and "beats SFT" not in failed and "terse" not in failed
    # ... the same style gain with correctness kept passes every check
    good = P.dpo_report(_dpo_result([1.0] * 4, [1.0] * 4, [0.0] * 4, [1.0] * 4), True, "cpu", 0)
    assert good.passed, good.failures()


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

    chosen = torch.tensor([_ids(str(a + b), task.max_new_tokens) for a, b in probs])
    rejected = torch.tensor([_ids(str(a + b + 1) + " ok", task.max_new_tokens) for a, b in probs])
    pairs = P.Pairs(probs, chosen, rejected, torch.ones(4), torch.zeros(4))
    ours = P.our_dpo_loss(policy, ref, pairs, task, beta=0.1, loss_type=loss_type)
    theirs = P.trl_dpo_loss(policy, ref, pairs, task, beta=0.1, loss_type=loss_type)
    assert abs(ours - theirs) < 1e-5, (ours, theirs)
    assert abs(ours - (math.log(2) if loss_type == "sigmoid" else 25.0)) > 1e-3  # a non-trivial value



def test_reward_model_features_by_hand_and_padding():
    """The RM's features: the <eos> state, and the sum / min of the response's token log-probs (up to <eos>)."""
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, verbose_frac=0.5)
    lm = Llama(task.model_config()).eval()
    rm = P.RewardModel(lm)
    torch.nn.init.normal_(rm.head.weight)
    prompts = T.encode_arith_prompts(np.array([[37, 5]]))
    a = torch.tensor([_ids("42", 7)])
    b = torch.tensor([T.encode("42") + [T.EOS, ord("x"), ord("y"), T.PAD, T.EOS]])  # junk after <eos>
    assert torch.allclose(rm(prompts, a), rm(prompts, b), atol=1e-6)
    f = rm.features(prompts, a)[0]
    seq = torch.cat([prompts, a], 1)[0]
    with torch.no_grad():
        logits = lm(seq[None])[0]  # the plain forward pass: logits (P+L, V)
        logp = [float(torch.log_softmax(logits[len(prompts[0]) - 1 + t], -1)[seq[len(prompts[0]) + t]]) for t in range(3)]
        h_eos = lm.hidden_states(seq[None])[0, len(prompts[0]) + 2]  # after "4", "2", <eos>
    assert torch.allclose(f[:-2], h_eos, atol=1e-5)
    assert math.isclose(float(f[-2]), sum(logp), rel_tol=1e-5) and math.isclose(float(f[-1]), min(logp), rel_tol=1e-5)
    assert P.RewardModel(lm, likelihood=False).features(prompts, a).shape == (1, 32)


def test_train_reward_model_standardises_and_ranks():
    """Bradley–Terry on a learnable preference (right sum > wrong sum): the head ranks the training pairs,
    and the output is standardised over the training responses (mean 0, std 1)."""
    torch.manual_seed(0)
    task = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, verbose_frac=0.5)
    lm = Llama(task.model_config()).eval()
    probs = np.array([[a, b] for a in range(0, 90, 9) for b in range(1, 90, 11)])
    chosen = torch.tensor([_ids(str(a + b), task.max_new_tokens) for a, b in probs])
    rejected = torch.tensor([_ids(str(a + b) + " ok", task.max_new_tokens) for a, b in probs])
    pairs = P.Pairs(probs, chosen, rejected, torch.full((len(probs),), 1.5), torch.ones(len(probs)))
    rm, losses = P.train_reward_model(lm, pairs, task, P.RMConfig(steps=200), seed=0)
    assert math.isclose(losses[0], math.log(2), rel_tol=1e-6) and losses[-1] < 0.1  # zero head: log 2
    assert P.pair_accuracy(rm, pairs, task) == 1.0
    wins = P.pair_wins(rm, pairs, task)
    half = torch.arange(len(probs)) % 2 == 0
    assert wins.dtype == torch.bool and wins.all()
    assert P.pair_accuracy(rm, pairs, task, half, wins) == P.pair_accuracy(rm, pairs, task, half) == 1.0
    prompts = T.encode_arith_prompts(probs)
    with torch.no_grad():
        r = torch.cat([rm(prompts, chosen), rm(prompts, rejected)])
    assert abs(float(r.mean())) < 1e-4 and abs(float(r.std()) - 1.0) < 1e-4


def test_pair_kinds():
    pairs = P.Pairs(np.zeros((5, 2)), torch.zeros(5, 3), torch.zeros(5, 3),
                    torch.tensor([1.5, 1.5, 1.0, 1.5, 1.0]), torch.tensor([0.5, 1.0, 0.0, 0.0, 0.5]))
    k = P.pair_kinds(pairs)
    assert k["correctness"].tolist() == [True, False, True, False, False]  # right vs wrong, same format
    assert k["style"].tolist() == [False, True, False, False, False]  # terse vs verbose, both right


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


def test_rlhf_pipeline_diagram_has_every_box_and_arrow():
    ax = Figure().subplots()
    assert P.plot_rlhf_pipeline(ax) is ax
    boxes = [t for t in ax.texts if not isinstance(t, Annotation) and t.get_bbox_patch() is not None]
    assert sorted(t.get_text() for t in boxes) == sorted(text for _, _, text in P.RLHF_BOXES.values())
    arrows = [t for t in ax.texts if isinstance(t, Annotation)]
    assert len(arrows) == len(P.RLHF_ARROWS)
    assert all(a in P.RLHF_BOXES and b in P.RLHF_BOXES for a, b in P.RLHF_ARROWS)
    # the PPO loop (rollout <-> policy) and DPO fed by the pairs and the reference, not by the reward model
    assert {("policy", "rollout"), ("rollout", "policy"), ("label", "dpo"), ("ref", "dpo")} <= set(P.RLHF_ARROWS)
    assert not any(b == "dpo" and a == "rm" for a, b in P.RLHF_ARROWS)


# ---- the shipped SFT warm start ----------------------------------------------------------------------------
def test_recipe_trains_what_arith_sft_model_trains():
    """The recipe (which keeps the losses) and the cached warm start are one loop: equal weights, bit for bit."""
    tiny = S.ArithConfig(init="scratch", d_model=32, n_layers=1, n_heads=2, sft_batch=8, sft_steps=5)
    ours, losses = P.recipe_warm_start(tiny, 3, desc=None)
    theirs = S.arith_sft_model(tiny, "cpu", 3, cache=False)
    assert len(losses) == 5
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    with pytest.raises(LLMCoreError, match="fixed step budget"):
        P.recipe_warm_start(dataclasses.replace(tiny, sft_target_acc=0.5))


@pytest.mark.parametrize("init", S.INITS)
def test_shipped_warm_start_is_the_recipes(init):
    """Each log belongs to the default task and seed, and the recipe's first 6 steps reproduce its losses
    (the tolerance covers other CPUs' float kernels)."""
    _, log = P.read_shipped_warm_start(init)
    task = P.dpo_task(P.DPOConfig(init=init))
    assert P.is_shipped(task, P.WARM_START_SEED) and not P.is_shipped(task, 1)
    assert log["steps"] == task.sft_steps == len(log["loss"]) and log["seed"] == P.WARM_START_SEED
    assert log["task"] == json.loads(json.dumps(dataclasses.asdict(task)))
    _, first = P.recipe_warm_start(task, P.WARM_START_SEED, stop_after=6, desc=None)
    assert first == pytest.approx(log["loss"][:6], abs=2e-3)
    assert log["loss"][-1] < 1.0 < log["loss"][0]  # it learned


def test_warm_start_model_loads_the_shipped_weights_and_leaves_the_rng_as_training_would():
    model = P.warm_start_model(P.DPOConfig(beta=0.1), CPU, P.WARM_START_SEED)  # beta does not change the warm start
    after = torch.get_rng_state()
    sd, log = P.read_shipped_warm_start()
    assert model.warm_start_steps == log["steps"]
    assert all(torch.equal(sd[name], value) for name, value in model.state_dict().items())
    torch.manual_seed(P.WARM_START_SEED)  # the trained path: seed, then build the task's initial model
    P.dpo_task(P.DPOConfig()).initial_model()
    assert torch.equal(torch.get_rng_state(), after)


def test_hf_loads_the_shipped_warm_start():
    ours = P.warm_start_model(P.DPOConfig(), CPU, P.WARM_START_SEED).eval()
    hf = LlamaForCausalLM.from_pretrained(P.shipped_warm_start_path()).eval()
    x = torch.tensor([T.encode(T.arith_prompt_text(12, 34, 2), add_bos=True)])
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(x).logits, atol=1e-4)


def test_missing_or_corrupt_warm_start_is_one_clear_error(tmp_path):
    bad = tmp_path / "arith_sft"
    shutil.copytree(P.shipped_warm_start_path(), bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # a truncated copy
    with pytest.raises(LLMCoreError, match="corrupt.*python -m llmcore.alignment.ppo_dpo"):
        P.warm_start_model(P.DPOConfig(), CPU, P.WARM_START_SEED, path=bad)
    (bad / "training_log.json").unlink()
    with pytest.raises(LLMCoreError, match="lacks training_log.json"):
        P.read_shipped_warm_start(path=bad)
    with pytest.raises(LLMCoreError, match="init must be one of"):
        P.shipped_warm_start_path("random")
