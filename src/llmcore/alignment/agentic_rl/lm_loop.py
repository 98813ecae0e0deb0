r"""The closed loop of the LM half: SFT on mixed demonstrations -> GRPO over trajectories / PPO per turn.

1. **SFT start.** The book LM imitates dialogues of a scripted demonstrator with three habits
   (:class:`~llmcore.alignment.agentic_rl.user_sim.ScriptedAgent`): it sometimes re-asks a slot the user
   already gave, sometimes confirms before searching (both cost a turn), and sometimes skips the tool and
   books a made-up table code (always a failed booking). The loss is on the agent's tokens only.
2. **Agentic RL** from that start, on the simulator's reward (success - 0.1 x turns), tool calls in the loop:

   * **GRPO over whole dialogues**: ``G`` dialogues with the same user (same seed), the trajectory return
     centred on the group mean and scaled by the batch's std (:func:`llmcore.alignment.grpo.group_advantages`,
     ``scale="batch"``), the clipped objective with a k3 KL to the SFT start
     (:func:`llmcore.alignment.grpo.grpo_loss`);
   * **PPO with per-turn credit**: a value head on the turn's opening token, GAE over turns
     (:func:`~llmcore.alignment.agentic_rl.multiturn.per_turn_gae`), the clipped policy and value losses of
     the PPO chapter (:func:`llmcore.alignment.ppo_dpo.ppo_policy_loss`, ``ppo_value_loss``) plus the same
     k3 KL term.

Both see the same number of dialogues and gradient steps. Success and turns are measured by sampling
(temperature 1, the policy that is trained) against 512 held-out users.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from llmcore.alignment import grpo as G
from llmcore.alignment import ppo_dpo as P
from llmcore.alignment import sft as S
from llmcore.alignment.agentic_rl import multiturn as M
from llmcore.alignment.agentic_rl import user_sim as U
from llmcore.core.checkpoints import train_once
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError
from llmcore.core.progress import progress

EVAL_SEED0 = 10**7  #: held-out users have seeds EVAL_SEED0 + i; training users are drawn below it


@dataclass
class AgenticConfig:
    """Hyper-parameters of the LM half (toy defaults; :meth:`for_mode` is the one place ``toy`` becomes numbers)."""

    sim: U.SimConfig = field(default_factory=U.SimConfig)  # the user simulator
    demo_p_reask: float = 0.5  # demonstrator habits (ScriptedAgent): re-ask a volunteered slot
    demo_p_check: float = 0.5  # ... confirm before searching
    demo_p_skip: float = 0.3  # ... skip the tool, book a made-up code
    demo_p_hasty: float = 0.0  # ... guess after "not sure" (off: measured, RL unlearns it too slowly for the toy
    #                            budget -- at 0.7, 10 rounds left its rate unchanged on seeds 3-4)
    n_demos: int = 2000  # SFT dialogues
    sft_steps: int = 50  # SFT optimiser steps (AdamW, constant rate): the start imitates the demonstrator's
    #                      habits but not perfectly (measured held-out success 0.54-0.68 on seeds 0-2)
    sft_batch: int = 32  # dialogues per SFT step
    sft_lr: float = 1.5e-3
    rounds: int = 8  # RL rounds per method (each: roll out, score, `inner_epochs` gradient steps)
    users_per_round: int = 16  # distinct users per round
    group_size: int = 4  # GRPO's G dialogues per user (PPO rolls out the same users_per_round x G dialogues)
    lr: float = 2e-4  # AdamW rate of both RL methods (policy, and PPO's value head)
    inner_epochs: int = 1  # gradient steps per batch of dialogues (1: on-policy, ratio 1, the clip idle; with
    #                        2 at 1e-4 and 12 rounds the gains were alike but the toy run took ~80 s)
    clip_eps: float = 0.2  # PPO/GRPO ratio clip
    beta: float = 0.02  # k3 KL(pi || pi_SFT) coefficient, both methods
    scale_rewards: str = "batch"  # GRPO advantage scale: "batch" std (group std over-weights near-ties)
    gamma: float = 1.0  # PPO: no discount over turns (the turn penalty already prices time)
    lam: float = 0.95  # PPO: GAE lambda over turns
    vf_coef: float = 0.5  # PPO: value-loss weight
    temperature: float = 1.0  # sampling temperature of rollouts and evaluations
    eval_users: int = 512  # held-out users per evaluation
    eval_every: int = 8  # rounds between held-out evaluations (the plots use the training rollouts per round)

    @classmethod
    def for_mode(cls, toy: bool = True) -> AgenticConfig:
        """Toy: the defaults (CPU, ~50 s). Full: 4x the RL dialogues per round, 60 rounds, 2 inner steps,
        300 SFT steps on 8000 dialogues, 2048 evaluation users (a GPU run)."""
        if toy:
            return cls()
        return cls(n_demos=8000, sft_steps=300, rounds=60, users_per_round=64, inner_epochs=2, lr=1e-4,
                   eval_users=2048, eval_every=10)

    def demonstrator(self) -> U.ScriptedAgent:
        return U.ScriptedAgent(self.demo_p_reask, self.demo_p_check, self.demo_p_skip, self.demo_p_hasty)


@dataclass
class AgenticResult:
    cfg: AgenticConfig
    sim_demo: dict[str, float]  # simulator statistics under the demonstrator (scripted, no LM)
    sim_optimal: dict[str, float]  # ... under the optimal scripted agent
    start: dict[str, float]  # SFT start, held-out (sampled)
    final: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> held-out summary
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> metric -> per eval
    history: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # method -> metric -> per round
    eval_rounds: list[int] = field(default_factory=list)
    mask_check: dict[str, float] = field(default_factory=dict)
    sft_s: float = 0.0
    rl_s: dict[str, float] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)  # method -> one rendered held-out dialogue
    habits: dict[str, dict[str, float]] = field(default_factory=dict)  # policy -> multiturn.habits of its eval


# ---- SFT on the demonstrations ------------------------------------------------------------------------------
def sft_batches(demos: list[dict], batch: int, rng: np.random.Generator):
    """Batch source for the kit's :func:`llmcore.alignment.sft.train_packed`: ``batch`` random dialogues per
    step, padded to the longest with ``<pad>``; labels are the agent's tokens only (the rest ``-100``)."""
    def next_batch(step: int) -> S.Packed:
        rows = [demos[i] for i in rng.integers(0, len(demos), batch)]
        L = max(len(d["ids"]) for d in rows)
        ids = torch.full((batch, L), U.PAD, dtype=torch.long)
        lab = torch.full((batch, L), -100, dtype=torch.long)
        for r, d in enumerate(rows):
            x, m = torch.tensor(d["ids"]), torch.tensor(d["mask"], dtype=torch.bool)
            ids[r, :len(x)] = x
            lab[r, :len(x)] = torch.where(m, x, torch.full_like(x, -100))
        return S.Packed(ids, lab, torch.zeros_like(ids), torch.arange(L).expand_as(ids))
    return next_batch


def sft_start(cfg: AgenticConfig, device: torch.device = CPU, seed: int = 0):
    """The book LM after ``cfg.sft_steps`` steps of SFT on ``cfg.n_demos`` demonstrator dialogues (trained
    once, cached by its SFT fields and seed under ``output/checkpoints/agentic_sft-<hash>``)."""
    key = {k: getattr(cfg, k) for k in ("sim", "demo_p_reask", "demo_p_check", "demo_p_skip", "demo_p_hasty", "n_demos",
                                        "sft_steps", "sft_batch", "sft_lr")}
    torch.manual_seed(seed)
    model = S.initial_model("book_lm")

    def train(path: Path | None) -> None:
        model.to(device)
        demos = U.demo_dialogues(cfg.demonstrator(), cfg.sim, cfg.n_demos, seed)
        S.train_packed(model, sft_batches(demos, cfg.sft_batch, np.random.default_rng(seed)), cfg.sft_steps,
                       opt=S.arith_optimizer(model, cfg.sft_lr), warmup=None, logits_fn=S.causal_logits,
                       desc="SFT on demonstrations")
        model.save_pretrained(path)
        (path / "sft.json").write_text(json.dumps({"steps": cfg.sft_steps}))

    def load(path: Path):
        sd = load_file(str(path / "model.safetensors"))
        if model.config.tie_embeddings:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        model.load_state_dict(sd)
        return model.to(device).eval()

    return train_once("agentic_sft", {"cfg": key, "seed": seed}, train, load, version=1)


def evaluate(model, cfg: AgenticConfig, seed: int, n: int | None = None) -> tuple[dict[str, float], M.Rollouts]:
    """Held-out summary (:func:`~llmcore.alignment.agentic_rl.multiturn.summary`) of ``model`` on users
    ``EVAL_SEED0 .. + n``, sampled at ``cfg.temperature`` with a generator seeded by ``seed`` (the same
    users and the same random stream for every model)."""
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed + 12345)
    users = M.users_for(cfg.sim, range(EVAL_SEED0, EVAL_SEED0 + (n or cfg.eval_users)))
    ro = M.rollout(model, users, cfg.temperature, gen)
    return M.summary(ro), ro


# ---- the two RL rounds ---------------------------------------------------------------------------------------
def grpo_round(policy, ref, opt, user_seeds: np.ndarray, cfg: AgenticConfig, gen) -> dict[str, float]:
    """GRPO over whole dialogues: ``G`` dialogues per user seed, one advantage per dialogue."""
    users = M.users_for(cfg.sim, np.repeat(user_seeds, cfg.group_size))
    ro = M.rollout(policy, users, cfg.temperature, gen)
    adv = G.group_advantages(ro.returns, cfg.group_size, cfg.scale_rewards)
    with torch.no_grad():  # on-policy (one inner step): the old log-probs are the current ones, no extra forward
        old = M.token_logprobs(policy, ro.ids) if cfg.inner_epochs > 1 else None
        ref_lp = M.token_logprobs(ref, ro.ids)
    policy.train()
    for _ in range(cfg.inner_epochs):
        logp = M.token_logprobs(policy, ro.ids)
        loss, st = G.grpo_loss(logp, logp.detach() if old is None else old, ref_lp, adv, ro.mask, cfg.clip_eps,
                               cfg.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {**M.summary(ro), "kl": st["kl"], "clip_frac": st["clip_frac"]}


def ppo_round(policy, value_head, ref, opt, user_seeds: np.ndarray, cfg: AgenticConfig, gen) -> dict[str, float]:
    """PPO with per-turn credit: values at turn openings, GAE over turns, one advantage per turn."""
    users = M.users_for(cfg.sim, user_seeds)
    ro = M.rollout(policy, users, cfg.temperature, gen)
    n_turns = (ro.ids.shape[1] - U.W_OPEN) // U.W_TURN
    rew, tmask = ro.rewards[:, :n_turns], ro.turn_mask[:, :n_turns]
    with torch.no_grad():
        old, h = M.token_logprobs(policy, ro.ids, return_hidden=True)
        old_v = M.turn_values(value_head, h, n_turns) * tmask
        ref_lp = M.token_logprobs(ref, ro.ids)
        adv, ret = M.per_turn_gae(rew, old_v, tmask, cfg.gamma, cfg.lam)
        mu = adv.sum() / tmask.sum()
        sd = (((adv - mu) ** 2 * tmask).sum() / tmask.sum()).sqrt()
        adv_tok = M.turn_token_advantages((adv - mu) / (sd + 1e-8) * tmask, ro.ids.shape[1]) * ro.mask
    policy.train()
    params = [p for g in opt.param_groups for p in g["params"]]
    for _ in range(cfg.inner_epochs):
        logp, h = M.token_logprobs(policy, ro.ids, return_hidden=True)
        pl, clip_frac = P.ppo_policy_loss(logp, old, adv_tok, ro.mask, cfg.clip_eps)
        vl = P.ppo_value_loss(M.turn_values(value_head, h, n_turns), old_v, ret, tmask, cfg.clip_eps)
        kl = G.masked_mean_per_seq(G.kl_estimators(logp, ref_lp)["k3"], ro.mask).mean()
        loss = pl + cfg.vf_coef * vl + cfg.beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return {**M.summary(ro), "kl": float(kl.detach()), "clip_frac": float(clip_frac), "value_loss": float(vl.detach())}


def train_rl(method: str, start, cfg: AgenticConfig, seed: int, res: AgenticResult | None = None):
    """``cfg.rounds`` rounds of ``method`` ("grpo" or "ppo") from a copy of ``start``; returns the policy.
    Both draw the same user seeds; history and held-out curves go into ``res``."""
    if method not in ("grpo", "ppo"):
        raise LLMCoreError(f"method must be 'grpo' or 'ppo', got {method!r}")
    dev = next(start.parameters()).device
    policy, ref = copy.deepcopy(start).train(), copy.deepcopy(start).eval()
    ref.requires_grad_(False)
    policy.requires_grad_(True)
    value_head = torch.nn.Linear(start.config.d_model, 1).to(dev)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    params = list(policy.parameters()) + (list(value_head.parameters()) if method == "ppo" else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 1])
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    hist, curve = {}, {}
    t0 = time.perf_counter()
    for r in progress(range(1, cfg.rounds + 1), desc=method.upper()):
        if method == "grpo":
            seeds = rng.integers(0, EVAL_SEED0, cfg.users_per_round)
            stats = grpo_round(policy, ref, opt, seeds, cfg, gen)
        else:
            seeds = np.repeat(rng.integers(0, EVAL_SEED0, cfg.users_per_round), cfg.group_size)
            stats = ppo_round(policy, value_head, ref, opt, seeds, cfg, gen)
        for k, v in stats.items():
            hist.setdefault(k, []).append(v)
        if res is not None and (r % cfg.eval_every == 0 or r == cfg.rounds):
            for k, v in evaluate(policy, cfg, seed)[0].items():
                curve.setdefault(k, []).append(v)
    if res is not None:
        res.history[method], res.rl_s[method] = hist, time.perf_counter() - t0
        res.curves[method] = curve
    policy.eval()
    return policy


def mask_check(model, cfg: AgenticConfig, seed: int) -> dict[str, float]:
    """:func:`~llmcore.alignment.agentic_rl.multiturn.logit_grad_by_kind` on 16 sampled dialogues, with
    random advantages per turn: the largest gradient on agent-token logits and on environment-token logits."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed + 7)
    ro = M.rollout(model, M.users_for(cfg.sim, range(EVAL_SEED0 - 16, EVAL_SEED0)), cfg.temperature, gen)
    adv = M.turn_token_advantages(torch.randn(16, cfg.sim.max_turns, generator=torch.Generator().manual_seed(seed))
                                  .to(ro.ids.device), ro.ids.shape[1])
    return M.logit_grad_by_kind(copy.deepcopy(model), ro.ids, ro.mask, adv)


def experiment(cfg: AgenticConfig, device: torch.device = CPU, seed: int = 0,
               methods: tuple[str, ...] = ("grpo", "ppo")) -> AgenticResult:
    """Simulator statistics -> SFT start -> each RL method from the same start -> held-out evaluations."""
    dev = device  # resolved once by the caller, with seed_everything(seed, THREADS)
    res = AgenticResult(cfg, U.simulator_stats(cfg.sim, cfg.demonstrator(), n=1000, seed=seed),
                        U.simulator_stats(cfg.sim, U.ScriptedAgent(), n=1000, seed=seed), {})
    t0 = time.perf_counter()
    start = sft_start(cfg, dev, seed)
    res.sft_s = time.perf_counter() - t0
    res.start, ro = evaluate(start, cfg, seed)
    res.examples["sft"] = U.render(ro.ids[0].tolist())
    demos = U.demo_dialogues(cfg.demonstrator(), cfg.sim, cfg.eval_users, seed)
    res.habits["demonstrator (script)"] = M.habits([d["ids"] for d in demos], [d["turns"] for d in demos])
    res.habits["SFT start"] = M.habits(ro.ids, ro.turns)
    res.mask_check = mask_check(start, cfg, seed)
    res.eval_rounds = [0] + [r for r in range(1, cfg.rounds + 1) if r % cfg.eval_every == 0 or r == cfg.rounds]
    for method in methods:
        torch.manual_seed(seed + 3)
        policy = train_rl(method, start, cfg, seed, res)
        res.final[method], ro = evaluate(policy, cfg, seed)
        res.examples[method] = U.render(ro.ids[0].tolist())
        res.habits[method.upper()] = M.habits(ro.ids, ro.turns)
        res.curves[method] = {k: [res.start[k]] + v for k, v in res.curves[method].items()}
    return res
