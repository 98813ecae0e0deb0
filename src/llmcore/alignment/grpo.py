r"""GRPO — Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath; DeepSeek-R1 2025).

For every prompt :math:`q` sample a *group* of :math:`G` responses :math:`o_1..o_G` from the old policy,
score each with a verifiable reward :math:`r_i` (a checker, no reward model), and use the group itself as
the baseline — no value network:

.. math::
    \hat A_{i,t} = \frac{r_i - \mathrm{mean}(r_1..r_G)}{\mathrm{std}(r_1..r_G) + \epsilon}
    \quad\text{(the same for every token } t \text{ of } o_i).

The objective is PPO's clipped surrogate with a KL penalty to a frozen reference policy, estimated per
token with Schulman's unbiased, always-positive k3 estimator:

.. math::
    \mathcal J = \frac1G \sum_i \frac1{|o_i|} \sum_t \Big[\min\big(\rho_{i,t} \hat A_{i,t},
    \mathrm{clip}(\rho_{i,t}, 1-\varepsilon, 1+\varepsilon)\hat A_{i,t}\big)
    - \beta\, \hat{\mathbb D}^{k3}_{i,t}\Big], \qquad
    \rho_{i,t} = \frac{\pi_\theta(o_{i,t}\mid q, o_{i,<t})}{\pi_{\theta_\text{old}}(o_{i,t}\mid q, o_{i,<t})},

.. math::
    \hat{\mathbb D}^{k3} = \frac{\pi_\text{ref}}{\pi_\theta} - \log\frac{\pi_\text{ref}}{\pi_\theta} - 1 .

The task is :class:`llmcore.alignment.tasks.ArithTask` (2-digit addition): reward = correct + ``format_weight`` x
(terse format). Shapes: ``N = prompts x G`` sampled responses, ``L`` response tokens.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from llmcore.alignment import ppo_dpo as P
from llmcore.alignment import sft as S
from llmcore.alignment import tasks as T
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report


# ---- the math ---------------------------------------------------------------------------------------
def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    r"""Group-normalised advantages ``(N,)`` from rewards ``(N,)`` laid out group after group.

    ``scale="group"``: :math:`(r - \bar r_g)/(\mathrm{std}_g + \epsilon)` with the unbiased std of each
    group (TRL's ``scale_rewards="group"``); ``"batch"``: one std over the whole batch; ``"none"``:
    only centre (Dr. GRPO's choice, which removes the std's bias toward easy/hard prompts).
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise LLMCoreError(f"rewards must be (N,) with N a multiple of group_size={group_size}, "
                           f"got {tuple(rewards.shape)}")
    if group_size < 2:
        raise LLMCoreError("GRPO needs group_size >= 2 (a group of one has no baseline)")
    g = rewards.view(-1, group_size)
    centred = (g - g.mean(1, keepdim=True)).reshape(-1)
    if scale == "group":
        return centred / (g.std(1, unbiased=True).repeat_interleave(group_size) + eps)
    if scale == "batch":
        return centred / (rewards.std(unbiased=True) + eps)
    if scale == "none":
        return centred
    raise LLMCoreError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")


def kl_estimators(logp: torch.Tensor, ref_logp: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Per-sample estimators of :math:`\mathrm{KL}(\pi\,\|\,\pi_\text{ref})` for tokens drawn from :math:`\pi`.

    With :math:`\log r = \log\pi_\text{ref}(y) - \log\pi(y)` (Schulman, "Approximating KL divergence"):
    k1 :math:`= -\log r` (unbiased, can be negative), k2 :math:`= \tfrac12(\log r)^2` (biased, low
    variance), k3 :math:`= (r - 1) - \log r` (unbiased and :math:`\ge 0`). Same shape as the inputs.
    """
    log_r = ref_logp - logp
    return {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": torch.expm1(log_r) - log_r}


def masked_mean_per_seq(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(N, L)`` -> ``(N,)``: mean over each sequence's own tokens (the :math:`1/|o_i|` of GRPO)."""
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float = 0.2, beta: float = 0.04) -> tuple[torch.Tensor, dict[str, float]]:
    """The negative GRPO objective (to minimise) and diagnostics.

    ``logp, old_logp, ref_logp, mask``: ``(N, L)``; ``advantages``: ``(N,)`` (broadcast over tokens).
    """
    ratio = torch.exp(logp - old_logp)  # ρ_{i,t}
    adv = advantages.unsqueeze(1)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)  # clipped surrogate
    kl = kl_estimators(logp, ref_logp)["k3"]  # D^{k3}_{i,t}
    per_token = surr - beta * kl
    loss = -masked_mean_per_seq(per_token, mask).mean()  # -(1/G) Σ_i (1/|o_i|) Σ_t [...]
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps).float()
        stats = {"kl": float(masked_mean_per_seq(kl, mask).mean()),
                 "clip_frac": float((clipped * mask).sum() / mask.sum())}
    return loss, stats


# ---- the closed loop -------------------------------------------------------------------------------
@dataclass
class GRPOConfig:
    """Hyper-parameters (toy defaults: about a minute on one CPU thread, warm start included).

    The policy is the book LM (~2M parameters) after a partial arithmetic SFT. Measured (held-out
    accuracy gain after the rounds shown): AdamW at a constant 3e-4 collapses the policy (seed 0:
    0.62 -> 0.33 in 40 rounds of 8 prompts x G=8); at 16 x 4, 1e-4 gains less and oscillates (seed 0:
    +11.8; seed 2 at 32 x 4, linear decay: +12.8), 5e-5 climbs smoothly (+19.5); with a fixed number of
    samples per round, more distinct prompts beat bigger groups (seed 0, 5e-5: 16 x G=4 +19.5, 8 x G=8
    +11.8); 32 x 4 at 7e-5 decayed linearly gives the smoothest curves (seed 2, the hardest: +17.5
    after 35 rounds, +18.5 after 45, where it plateaus).
    """

    steps: int = 40  # policy-update rounds (each: sample, score, `inner_epochs` gradient steps)
    prompts_per_step: int = 32  # distinct prompts per round
    group_size: int = 4  # G responses per prompt
    lr: float = 7e-5  # AdamW learning rate (peak)
    lr_schedule: str = "linear"  # "linear": decay to 0 over the rounds (HF Trainer's/TRL's default) | "constant"
    clip_eps: float = 0.2  # ε of the clipped ratio
    beta: float = 0.04  # KL(π‖π_ref) coefficient (k3 estimator), DeepSeekMath's value
    inner_epochs: int = 2  # μ: gradient steps on each batch of samples (the 2nd is off-policy -> clipping)
    temperature: float = 1.0  # sampling temperature of the rollouts
    format_weight: float = 0.1  # reward = correct + format_weight * [terse format]
    scale_rewards: str = "group"  # advantage normalisation, as TRL's `scale_rewards`
    eval_every: int = 10  # rounds between held-out evaluations
    sft_target_acc: float = 0.6  # SFT warm start stops once greedy accuracy on training problems >= this
    sft_check_every: int = 5  # ... checked every this many steps (the book LM gains ~10 points per 10 steps there)
    sft_max_steps: int = 300  # ... or after this many steps

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("linear", "constant"):
            raise LLMCoreError(f"lr_schedule must be 'linear' or 'constant', got {self.lr_schedule!r}")


@dataclass
class GRPOResult:
    cfg: GRPOConfig
    task: S.ArithConfig
    acc_start: float
    acc_grpo: float
    acc_sft_control: float
    history: dict[str, list[float]] = field(default_factory=dict)  # per round
    eval_steps: list[int] = field(default_factory=list)
    eval_acc: list[float] = field(default_factory=list)
    control_acc: list[float] = field(default_factory=list)
    grpo_s: float = 0.0
    control_s: float = 0.0
    warm_start_steps: int = 0  # optimiser steps the SFT warm start took
    acc_scratch: float = float("nan")  # held-out accuracy of the same warm start from random weights, equal steps
    memory: dict[str, int] = field(default_factory=dict)  # bytes of model state held, GRPO vs PPO
    n_params: int = 0


def reward_fn(problems: np.ndarray, responses: torch.Tensor, format_weight: float) -> tuple[torch.Tensor, dict]:
    """Verifiable reward ``(N,)``: 1 for a correct sum, + ``format_weight`` for the terse format."""
    v = T.verify_arith(problems, responses.cpu())
    return v["correct"].float() + format_weight * v["terse"].float(), v


def model_state_bytes(models_trained: list[torch.nn.Module], models_frozen: list[torch.nn.Module]) -> int:
    """Bytes of parameters held, plus gradients and AdamW's two moments for the trained ones."""
    frozen = sum(p.numel() * p.element_size() for m in models_frozen for p in m.parameters())
    trained = sum(4 * p.numel() * p.element_size() for m in models_trained for p in m.parameters())
    return frozen + trained


def grpo_round(policy, ref, opt, problems: np.ndarray, cfg: GRPOConfig, task: S.ArithConfig,
               gen: torch.Generator) -> dict[str, float]:
    """One GRPO round: sample G responses per prompt, score, normalise in groups, ``inner_epochs`` steps."""
    dev = next(policy.parameters()).device
    prompts = T.encode_arith_prompts(problems, task.n_digits).to(dev).repeat_interleave(cfg.group_size, 0)  # (N, P)
    probs_rep = np.repeat(problems, cfg.group_size, 0)
    responses = S.sample(policy, prompts, task.max_new_tokens, cfg.temperature, generator=gen)  # (N, L)
    mask = T.response_mask(responses)
    rewards, v = reward_fn(probs_rep, responses, cfg.format_weight)
    adv = group_advantages(rewards, cfg.group_size, cfg.scale_rewards).to(dev)
    with torch.no_grad():
        old_logp = P.token_logprobs(policy, prompts, responses)
        ref_logp = P.token_logprobs(ref, prompts, responses)
    policy.train()
    for _ in range(cfg.inner_epochs):
        logp = P.token_logprobs(policy, prompts, responses)
        loss, stats = grpo_loss(logp, old_logp, ref_logp, adv, mask, cfg.clip_eps, cfg.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"reward": float(rewards.mean()), "correct": float(v["correct"].float().mean()),
            "length": float(mask.sum(1).mean()), "kl": stats["kl"], "clip_frac": stats["clip_frac"],
            "loss": float(loss.detach()),
            "zero_std_frac": float((rewards.view(-1, cfg.group_size).std(1) == 0).float().mean())}


#: torch threads for this module's runs (the registry and the chapter pass it to ``seed_everything``):
#: one thread, as the other RL chapters (batches of ~64 short sequences; results then do not depend on
#: how many cores the machine has).
THREADS = 1


def round_lr(cfg: GRPOConfig, step: int) -> float:
    """Learning rate of round ``step`` (1-based): ``cfg.lr``, or (linear) ``cfg.lr * (1 - (step-1)/steps)``."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * (1 - (step - 1) / cfg.steps)


def default_config(toy: bool = True) -> GRPOConfig:
    """Toy: the defaults (CPU). Full: 300 rounds of 64 prompts x G=8 (a GPU run; not yet measured)."""
    return GRPOConfig() if toy else GRPOConfig(steps=300, prompts_per_step=64, group_size=8)


def warm_start_task(cfg: GRPOConfig) -> S.ArithConfig:
    """The partial SFT warm start of the book LM: stop at the first check where greedy accuracy on 200
    training problems reaches ``cfg.sft_target_acc`` (checked every ``cfg.sft_check_every`` steps)."""
    return S.ArithConfig(sft_steps=cfg.sft_max_steps, sft_target_acc=cfg.sft_target_acc,
                         sft_check_every=cfg.sft_check_every)


def experiment(toy: bool = True, device: torch.device = CPU, seed: int = 0, cfg: GRPOConfig | None = None,
               task: S.ArithConfig | None = None, control: bool = True, scratch: bool = True) -> GRPOResult:
    """SFT warm start -> GRPO on the verifier's reward, and (control) the same budget of more SFT.

    ``scratch``: also train the warm start from random weights (same architecture, data, optimiser) for
    as many steps as the book LM's took, and report its held-out accuracy (the pretrained start's gain).
    """
    cfg = cfg or default_config(toy)
    task = task or warm_start_task(cfg)
    check_range("lr", cfg.lr, 0.0, 1.0)
    dev = device  # resolved once by the caller (registry or chapter), with seed_everything(seed, THREADS)
    train, heldout = T.arith_split(task)
    start = S.arith_sft_model(task, dev, seed)
    acc0 = S.arith_accuracy(start, heldout, task)["correct"]
    n_warm = start.warm_start_steps
    acc_scratch = float("nan")
    if scratch:  # equal steps, no early stop; its own seeded init, so the GRPO run below is unaffected
        rng_state = torch.get_rng_state()
        scr = S.arith_sft_model(dataclasses.replace(task, init="scratch", sft_steps=n_warm, sft_target_acc=None),
                                dev, seed)
        acc_scratch = S.arith_accuracy(scr, heldout, task)["correct"]
        torch.set_rng_state(rng_state)

    policy, ref = copy.deepcopy(start), copy.deepcopy(start).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    res = GRPOResult(cfg, task, acc0, float("nan"), float("nan"), n_params=start.num_params(),
                     warm_start_steps=n_warm, acc_scratch=acc_scratch)
    res.eval_steps, res.eval_acc = [0], [acc0]
    t0 = time.perf_counter()
    for step in progress(range(1, cfg.steps + 1), desc="GRPO"):
        for g in opt.param_groups:
            g["lr"] = round_lr(cfg, step)
        problems = train[rng.choice(len(train), cfg.prompts_per_step, replace=False)]
        for k, val in grpo_round(policy, ref, opt, problems, cfg, task, gen).items():
            res.history.setdefault(k, []).append(val)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            res.eval_steps.append(step)
            res.eval_acc.append(S.arith_accuracy(policy, heldout, task)["correct"])
    res.grpo_s = time.perf_counter() - t0
    res.acc_grpo = res.eval_acc[-1]
    # memory held: GRPO = policy (trained) + reference; PPO-RLHF adds a value model and a reward model
    res.memory = {"GRPO": model_state_bytes([policy], [ref]),
                  "PPO": model_state_bytes([policy, start], [ref, start])}

    if control:  # the same number of optimiser steps of SFT on labelled answers, same sequences per step
        ctl_task = dataclasses.replace(task, sft_batch=cfg.prompts_per_step * cfg.group_size)
        ctl = copy.deepcopy(start)
        opt_c = torch.optim.AdamW(ctl.parameters(), lr=cfg.lr, weight_decay=0.0)
        rng_c = np.random.default_rng(seed + 2)
        res.control_acc = [acc0]
        t0 = time.perf_counter()

        def _eval(i: int) -> None:
            if (i + 1) % (cfg.eval_every * cfg.inner_epochs) == 0:
                res.control_acc.append(S.arith_accuracy(ctl, heldout, task)["correct"])

        S.train_packed(ctl, S.arith_batches(train, ctl_task, rng_c), cfg.steps * cfg.inner_epochs, opt=opt_c,
                       warmup=None, grad_clip=None, logits_fn=S.causal_logits, desc="SFT control", callback=_eval)
        res.control_s = time.perf_counter() - t0
        res.acc_sft_control = S.arith_accuracy(ctl, heldout, task)["correct"]
    return res


def make_report(res: GRPOResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("grpo", "DeepSeek GRPO", toy, device, seed)
    rep.metric("params", res.n_params)
    rep.metric("SFT warm-start steps (book LM)", res.warm_start_steps)
    rep.metric("heldout acc SFT start", res.acc_start)
    if not np.isnan(res.acc_scratch):
        rep.metric("heldout acc same warm start from scratch (equal steps)", res.acc_scratch)
        rep.metric("pretrained-start gain in accuracy points", 100 * (res.acc_start - res.acc_scratch))
    rep.metric("heldout acc after GRPO", res.acc_grpo)
    if not np.isnan(res.acc_sft_control):
        rep.metric("heldout acc SFT control (same steps)", res.acc_sft_control)
    rep.metric("train reward first 10 rounds", float(np.mean(res.history["reward"][:10])))
    rep.metric("train reward last 10 rounds", float(np.mean(res.history["reward"][-10:])))
    rep.metric("KL k3 last 10 rounds", float(np.mean(res.history["kl"][-10:])))
    rep.metric("model-state MB GRPO", res.memory["GRPO"] / 2**20)
    rep.metric("model-state MB PPO", res.memory["PPO"] / 2**20)
    rep.check("SFT start accuracy (low end)", res.acc_start, ">=", 0.5)
    rep.check("SFT start accuracy (high end)", res.acc_start, "<", 0.8)
    rep.check("GRPO gain in accuracy points", 100 * (res.acc_grpo - res.acc_start), ">=", 15)
    rep.check("GRPO/PPO model-state memory ratio", res.memory["GRPO"] / res.memory["PPO"], "<", 0.75)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """Closed loop: partial SFT start -> GRPO with a verifier -> held-out accuracy.

    The more-SFT control and the from-scratch warm start run in the chapter only: with them the toy run
    would exceed its 90 s budget (measured uncached, seed 0: 91 s of CPU time with the scratch start
    alone). Neither changes the GRPO numbers (separate models; the global RNG is restored).
    """
    res = experiment(toy=toy, device=device, seed=seed, control=False, scratch=False)
    return make_report(res, toy, str(device), seed)
