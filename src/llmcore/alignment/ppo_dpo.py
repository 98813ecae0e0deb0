r"""Preference alignment on the tiny LM: the Bradley–Terry loss, PPO's clipped losses, and DPO / IPO.

The setting: 2-digit addition (:class:`llmcore.alignment.tasks.ArithTask`) where the SFT model answers in two styles,
terse ``"42"`` and verbose ``"42 ok"``. A **true reward** that ``llmcore`` can compute for any response
stands in for human judgement:

.. math::
    r^*(x, y) = \mathbb 1[y \text{ is the right sum}] + 0.5 \cdot \mathbb 1[y \text{ is terse}] ,

it labels preference pairs (chosen = higher :math:`r^*`) and scores every policy on held-out prompts.

**Bradley–Terry** (reward model): :math:`P(y_w \succ y_l) = \sigma(r(x, y_w) - r(x, y_l))`, loss
:math:`-\log\sigma(r_w - r_l)`.

**DPO** (Rafailov et al. 2023): with :math:`\Delta(y) = \log\pi_\theta(y\mid x) - \log\pi_\text{ref}(y\mid x)`
(summed over the response tokens),

.. math::
    \mathcal L_\text{DPO} = -\log\sigma\big(\beta[\Delta(y_w) - \Delta(y_l)]\big),

and the *implicit reward* is :math:`\beta\Delta(y)`. **IPO** (Azar et al. 2024) regresses the
(length-normalised, as in TRL) margin to :math:`1/(2\beta)`: :math:`(\bar\Delta_w - \bar\Delta_l - \tfrac1{2\beta})^2`.

**PPO** (clipped policy and value losses; the PPO-RLHF closed loop is not written yet):
:math:`\mathcal L^\text{clip} = -\min(\rho A, \mathrm{clip}(\rho, 1\pm\varepsilon) A)`,
:math:`\mathcal L^V = \tfrac12\max\big((V - R)^2, (V_\text{old} + \mathrm{clip}(V - V_\text{old}, \pm\varepsilon_V) - R)^2\big)`.

Shapes: ``B`` pairs, ``P`` prompt length, ``L`` response length.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from llmcore.alignment import sft as S
from llmcore.alignment import tasks as T
from llmcore.architecture.llama import Llama
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError
from llmcore.core.progress import progress
from llmcore.core.report import Report

TERSE_BONUS = 0.5  #: weight of the style preference in the true reward
#: torch threads for this module's runs (the registry and the chapter pass it to ``seed_everything``):
#: one thread, a 100k-parameter model gains nothing from more.
THREADS = 1


# ---- rewards and losses ----------------------------------------------------------------------------
def true_reward(problems: np.ndarray, responses: torch.Tensor) -> torch.Tensor:
    """The ground truth ``(B,)``: 1 for a correct sum + ``TERSE_BONUS`` for the terse style."""
    v = T.verify_arith(problems, responses.cpu())
    return v["correct"].float() + TERSE_BONUS * v["terse"].float()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    r"""Mean :math:`-\log\sigma(r_w - r_l)` over pairs ``(B,)`` (the reward model's loss)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                    clip_eps: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    r"""PPO's clipped surrogate, token level: ``(loss, clip_fraction)``; all inputs ``(B, L)``.

    :math:`\mathcal L = -\mathbb E_t[\min(\rho_t A_t, \mathrm{clip}(\rho_t, 1-\varepsilon, 1+\varepsilon) A_t)]`,
    averaged over the tokens where ``mask`` is 1.
    """
    ratio = torch.exp(logp - old_logp)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    n = mask.sum().clamp(min=1.0)
    clip_frac = (((ratio - 1).abs() > clip_eps).float() * mask).sum() / n
    return -(surr * mask).sum() / n, clip_frac.detach()


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_eps: float = 0.2) -> torch.Tensor:
    r"""Clipped value loss :math:`\tfrac12\max((V-R)^2, (V_\text{old} + \mathrm{clip}(V - V_\text{old}, \pm\varepsilon) - R)^2)`."""
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    per_tok = 0.5 * torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)
    return (per_tok * mask).sum() / mask.sum().clamp(min=1.0)


def dpo_loss(logp_c: torch.Tensor, logp_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float = 0.1, loss_type: str = "sigmoid", len_c: torch.Tensor | None = None,
             len_r: torch.Tensor | None = None) -> torch.Tensor:
    r"""DPO / IPO loss from sequence log-probs ``(B,)`` (chosen ``c``, rejected ``r``; policy and reference).

    ``sigmoid``: :math:`-\log\sigma(\beta[(\log\pi_c - \log\pi^\text{ref}_c) - (\log\pi_r - \log\pi^\text{ref}_r)])`.
    ``ipo``: :math:`(\Delta_c/|y_c| - \Delta_r/|y_r| - 1/(2\beta))^2` (TRL's length-normalised IPO).
    """
    dc, dr = logp_c - ref_c, logp_r - ref_r  # log-ratios Δ(y_w), Δ(y_l)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * (dc - dr)).mean()
    if loss_type == "ipo":
        if len_c is None or len_r is None:
            raise LLMCoreError("IPO needs the response lengths len_c, len_r")
        return ((dc / len_c.clamp(min=1) - dr / len_r.clamp(min=1) - 1 / (2 * beta)) ** 2).mean()
    raise LLMCoreError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")


def token_logprobs(model: Llama, prompts: torch.Tensor, responses: torch.Tensor,
                   return_hidden: bool = False):
    r"""Per-token :math:`\log\pi(y_t \mid x, y_{<t})` of ``responses (B, L)`` -> ``(B, L)``.

    With ``return_hidden`` also the hidden states ``(B, L, d)`` at the positions that *predict* each
    response token (the state a value head reads: :math:`V(x, y_{<t})`), and the entropies ``(B, L)``.
    (One teacher-forced forward over prompt + response: ``generate`` gives tokens, not these.)
    """
    seq = torch.cat([prompts, responses], 1)
    h = model.hidden_states(seq)
    P, L = prompts.shape[1], responses.shape[1]
    h_pred = h[:, P - 1:P - 1 + L]  # position P-1+t predicts response token t
    logits = model.lm_head(h_pred).float()
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    if not return_hidden:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, h_pred, entropy


def sequence_logprobs(model, prompts: torch.Tensor, responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of response-token log-probs (B,), response lengths (B,))`` — tokens up to the first ``<eos>``."""
    mask = T.response_mask(responses)
    return (token_logprobs(model, prompts, responses) * mask).sum(1), mask.sum(1)


# ---- preference data --------------------------------------------------------------------------------
@dataclass
class Pairs:
    problems: np.ndarray  # (B, 2)
    chosen: torch.Tensor  # (B, L)
    rejected: torch.Tensor  # (B, L)
    r_chosen: torch.Tensor  # true rewards (B,)
    r_rejected: torch.Tensor


@torch.no_grad()
def make_pairs(model, problems: np.ndarray, task: S.ArithConfig, k: int, gen: torch.Generator) -> Pairs:
    """Sample ``k`` responses per prompt at T=1, label by the true reward: best = chosen, worst = rejected.

    Prompts whose ``k`` responses all score the same are dropped (no preference).
    """
    dev = next(model.parameters()).device
    prompts = T.encode_arith_prompts(problems, task.n_digits).to(dev).repeat_interleave(k, 0)
    resp = S.sample(model, prompts, task.max_new_tokens, 1.0, generator=gen).cpu()
    r = true_reward(np.repeat(problems, k, 0), resp).view(-1, k)
    resp = resp.view(len(problems), k, -1)
    best, worst = r.argmax(1), r.argmin(1)
    keep = r.max(1).values > r.min(1).values
    idx = torch.arange(len(problems))
    return Pairs(problems[keep.numpy()], resp[idx, best][keep], resp[idx, worst][keep],
                 r.max(1).values[keep], r.min(1).values[keep])


# ---- DPO closed loop --------------------------------------------------------------------------------
@dataclass
class DPOConfig:
    """Hyper-parameters of the DPO experiment (toy defaults: about a minute on a 2-core CPU)."""

    beta: float = 0.5  # strength of the implicit KL constraint (0.1 here trades correctness for style)
    loss_type: str = "sigmoid"  # "sigmoid" (DPO) | "ipo"
    steps: int = 80  # optimiser steps
    batch_pairs: int = 64  # pairs per step
    lr: float = 2e-4
    n_pair_prompts: int = 1024  # training prompts used to build preference pairs
    k_samples: int = 4  # responses sampled per prompt to form a pair
    n_eval_prompts: int = 200  # held-out prompts for the win rate
    eval_samples: int = 8  # responses per held-out prompt (mean true reward per prompt)
    sft_target_acc: float = 0.9  # SFT warm start: stop when greedy accuracy on training problems >= this
    sft_max_steps: int = 1000
    verbose_frac: float = 0.5  # share of SFT targets in the verbose style


@dataclass
class DPOResult:
    cfg: DPOConfig
    n_pairs: int
    history: dict[str, list[float]] = field(default_factory=dict)
    sft_prompt_reward: np.ndarray | None = None  # (n_eval,) mean true reward per held-out prompt
    dpo_prompt_reward: np.ndarray | None = None
    sft_stats: dict[str, float] = field(default_factory=dict)  # greedy: correct / terse / length
    dpo_stats: dict[str, float] = field(default_factory=dict)
    kl_dpo: float = 0.0  # mean sequence KL(π_DPO ‖ π_SFT) on held-out prompts (sampled, k1)
    trl_err: dict[str, float] = field(default_factory=dict)
    dpo_s: float = 0.0
    policy: object = None
    ref: object = None
    task: object = None


def dpo_task(cfg: DPOConfig) -> S.ArithConfig:
    return S.ArithConfig(verbose_frac=cfg.verbose_frac, sft_steps=cfg.sft_max_steps, sft_target_acc=cfg.sft_target_acc)


def train_dpo(policy, ref, pairs: Pairs, task: S.ArithConfig, cfg: DPOConfig, seed: int = 0,
              desc: str = "DPO") -> dict[str, list[float]]:
    """``cfg.steps`` of DPO/IPO on ``pairs``; logs loss, implicit-reward margin and chosen/rejected log-probs."""
    dev = next(policy.parameters()).device
    prompts = T.encode_arith_prompts(pairs.problems, task.n_digits).to(dev)
    ch, rj = pairs.chosen.to(dev), pairs.rejected.to(dev)
    with torch.no_grad():
        ref_c, len_c = sequence_logprobs(ref, prompts, ch)
        ref_r, len_r = sequence_logprobs(ref, prompts, rj)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    hist: dict[str, list[float]] = {}
    policy.train()
    for _ in progress(range(cfg.steps), desc=desc):
        i = torch.as_tensor(rng.choice(len(prompts), min(cfg.batch_pairs, len(prompts)), replace=False))
        lc, _ = sequence_logprobs(policy, prompts[i], ch[i])
        lr_, _ = sequence_logprobs(policy, prompts[i], rj[i])
        loss = dpo_loss(lc, lr_, ref_c[i], ref_r[i], cfg.beta, cfg.loss_type, len_c[i], len_r[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            rc, rr = cfg.beta * (lc - ref_c[i]), cfg.beta * (lr_ - ref_r[i])  # implicit rewards β Δ
            for k, v in {"loss": loss, "margin": (rc - rr).mean(), "reward_acc": (rc > rr).float().mean(),
                         "logp_chosen": lc.mean(), "logp_rejected": lr_.mean()}.items():
                hist.setdefault(k, []).append(float(v))
    return hist


@torch.no_grad()
def prompt_rewards(model, problems: np.ndarray, task: S.ArithConfig, k: int, gen: torch.Generator) -> np.ndarray:
    """Mean true reward of ``k`` sampled (T=1) responses, per prompt ``(n,)``."""
    dev = next(model.parameters()).device
    prompts = T.encode_arith_prompts(problems, task.n_digits).to(dev).repeat_interleave(k, 0)
    resp = S.sample(model, prompts, task.max_new_tokens, 1.0, generator=gen).cpu()
    return true_reward(np.repeat(problems, k, 0), resp).view(-1, k).mean(1).numpy()


@torch.no_grad()
def sampled_kl(policy, ref, problems: np.ndarray, task: S.ArithConfig, k: int, gen: torch.Generator) -> float:
    """Monte-Carlo sequence KL(π ‖ π_ref): mean of log π(y) - log π_ref(y) over y ~ π (k per prompt)."""
    dev = next(policy.parameters()).device
    prompts = T.encode_arith_prompts(problems, task.n_digits).to(dev).repeat_interleave(k, 0)
    resp = S.sample(policy, prompts, task.max_new_tokens, 1.0, generator=gen)
    lp, _ = sequence_logprobs(policy, prompts, resp)
    lr, _ = sequence_logprobs(ref, prompts, resp)
    return float((lp - lr).mean())


# ---- the TRL cross-check ------------------------------------------------------------------------------
def char_tokenizer():
    """A Hugging Face tokenizer whose ids equal :class:`~llmcore.architecture.tokenizer.ByteTokenizer`'s (ASCII + specials)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(32, 127)}
    vocab.update({"<pad>": T.PAD, "<bos>": T.BOS, "<eos>": T.EOS})
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("<pad>|<bos>|<eos>|."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def trl_dpo_loss(policy, ref, pairs: Pairs, task: S.ArithConfig, beta: float, loss_type: str = "sigmoid") -> float:
    """TRL's ``DPOTrainer`` loss on the same models (copied to HF ``LlamaForCausalLM``) and the same pairs.

    The pairs go in as text; TRL tokenizes them, appends ``<eos>``, collates ``[chosen; rejected]`` and
    computes its loss with its own forward passes (``DPOTrainer._compute_loss``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    def text(resp) -> str:
        return T.decode_arith_response(resp.tolist())[0]

    ds = Dataset.from_dict({
        "prompt": ["<bos>" + T.arith_prompt_text(int(a), int(b), task.n_digits) for a, b in pairs.problems],
        "chosen": [text(r) for r in pairs.chosen], "rejected": [text(r) for r in pairs.rejected]})
    hf, hf_ref = policy.to_hf(), ref.to_hf()
    with tempfile.TemporaryDirectory() as d:
        args = TRLConfig(output_dir=d, beta=beta, loss_type=[loss_type], report_to=[], use_cpu=True,
                         per_device_train_batch_size=len(ds), disable_tqdm=True,
                         bf16=False)  # TRL defaults to bf16 autocast (on the reference only); compare in fp32
        trainer = DPOTrainer(model=hf, ref_model=hf_ref, args=args, train_dataset=ds,
                             processing_class=char_tokenizer())
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ds))])
        batch = {k: v.to(next(hf.parameters()).device) for k, v in batch.items()}
        with torch.no_grad():
            return float(trainer._compute_loss(trainer.model, batch, False))


def _as_text(resp: torch.Tensor) -> bool:
    """True when a response is printable ASCII closed by ``<eos>`` (so text -> TRL's tokenizer -> same ids)."""
    ids = resp.tolist()
    return T.EOS in ids and all(32 <= t < 127 for t in ids[:ids.index(T.EOS)])


def our_dpo_loss(policy, ref, pairs: Pairs, task: S.ArithConfig, beta: float, loss_type: str = "sigmoid") -> float:
    dev = next(policy.parameters()).device
    prompts = T.encode_arith_prompts(pairs.problems, task.n_digits).to(dev)
    with torch.no_grad():
        lc, nc = sequence_logprobs(policy, prompts, pairs.chosen.to(dev))
        lr, nr = sequence_logprobs(policy, prompts, pairs.rejected.to(dev))
        rc, _ = sequence_logprobs(ref, prompts, pairs.chosen.to(dev))
        rr, _ = sequence_logprobs(ref, prompts, pairs.rejected.to(dev))
        return float(dpo_loss(lc, lr, rc, rr, beta, loss_type, nc, nr))


def _frozen_sft_start(cfg: DPOConfig, device: torch.device, seed: int):
    """Build the task and its train / held-out split, and load the cached SFT model frozen. Shared by
    DPO and PPO-RLHF. ``device`` and the seeding (``seed_everything(seed, THREADS)``) are resolved once
    by the caller (registry or chapter).

    Returns ``(device, task, train, heldout, sft_model)``.
    """
    dev = device
    task = dpo_task(cfg)
    train, heldout = T.arith_split(task)
    sft = S.arith_sft_model(task, dev, seed).eval()
    for p in sft.parameters():
        p.requires_grad_(False)
    return dev, task, train, heldout, sft

def dpo_experiment(toy: bool = True, device: torch.device = CPU, seed: int = 0, cfg: DPOConfig | None = None,
                   trl_check: bool = True) -> DPOResult:
    """SFT (two styles) -> preference pairs labelled by the true reward -> DPO -> held-out win rate vs SFT."""
    cfg = cfg or (DPOConfig() if toy else DPOConfig(steps=400, n_pair_prompts=4096, n_eval_prompts=400))
    dev, task, train, heldout, ref = _frozen_sft_start(cfg, device, seed)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 1)
    pairs = make_pairs(ref, train[rng.choice(len(train), cfg.n_pair_prompts, replace=False)], task,
                       cfg.k_samples, gen)
    policy = copy.deepcopy(ref).train()
    for p in policy.parameters():
        p.requires_grad_(True)
    res = DPOResult(cfg, len(pairs.problems), policy=policy, ref=ref, task=task)
    t0 = time.perf_counter()
    res.history = train_dpo(policy, ref, pairs, task, cfg, seed)
    res.dpo_s = time.perf_counter() - t0
    policy.eval()
    ev = heldout[:cfg.n_eval_prompts]
    res.sft_prompt_reward = prompt_rewards(ref, ev, task, cfg.eval_samples, torch.Generator(device=dev).manual_seed(7))
    res.dpo_prompt_reward = prompt_rewards(policy, ev, task, cfg.eval_samples,
                                           torch.Generator(device=dev).manual_seed(7))
    res.sft_stats, res.dpo_stats = S.arith_accuracy(ref, ev, task), S.arith_accuracy(policy, ev, task)
    res.kl_dpo = sampled_kl(policy, ref, ev, task, 4, torch.Generator(device=dev).manual_seed(8))
    if trl_check:
        ok = [i for i in range(len(pairs.problems)) if _as_text(pairs.chosen[i]) and _as_text(pairs.rejected[i])]
        i = torch.as_tensor(ok[:16])
        sub = Pairs(pairs.problems[i.numpy()], pairs.chosen[i], pairs.rejected[i], pairs.r_chosen[i],
                    pairs.r_rejected[i])
        for lt in ("sigmoid", "ipo"):
            res.trl_err[lt] = abs(our_dpo_loss(policy, ref, sub, task, cfg.beta, lt)
                                  - trl_dpo_loss(policy, ref, sub, task, cfg.beta, lt))
    return res


def dpo_report(res: DPOResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("dpo", "DPO (preference pairs labelled by a true reward)", toy, device, seed)
    win = float(np.mean(res.dpo_prompt_reward > res.sft_prompt_reward))
    rep.metric("preference pairs", res.n_pairs)
    rep.metric("true reward SFT (held-out, sampled)", float(res.sft_prompt_reward.mean()))
    rep.metric("true reward DPO (held-out, sampled)", float(res.dpo_prompt_reward.mean()))
    rep.metric("greedy correct SFT", res.sft_stats["correct"])
    rep.metric("greedy correct DPO", res.dpo_stats["correct"])
    rep.metric("greedy terse SFT", res.sft_stats["terse"])
    rep.metric("greedy terse DPO", res.dpo_stats["terse"])
    rep.metric("KL(DPO || SFT) per sequence", res.kl_dpo)
    rep.metric("implicit reward margin (last 10 steps)", float(np.mean(res.history["margin"][-10:])))
    rep.check("DPO beats SFT on held-out prompts (fraction)", win, ">=", 0.70)
    for lt, err in res.trl_err.items():
        rep.check(f"|our {lt} loss - TRL DPOTrainer loss| (rounded to 1e-6)", round(err, 6), "<", 1e-5)
    return rep


def run_dpo(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """Closed loop: SFT -> pairs labelled by the true reward -> DPO; win rate vs SFT; loss = TRL's."""
    res = dpo_experiment(toy=toy, device=device, seed=seed)
    return dpo_report(res, toy, str(device), seed)


# ---- reward model (Bradley–Terry) ---------------------------------------------------------------------
class RewardModel(torch.nn.Module):
    """The LM trunk with a scalar head: ``r(x, y)`` = head(hidden state at the response's ``<eos>``)."""

    def __init__(self, lm) -> None:
        super().__init__()
        self.lm = lm
        self.head = torch.nn.Linear(lm.config.d_model, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """``(B, P)``, ``(B, L)`` -> rewards ``(B,)`` read at the last response token (its ``<eos>``)."""
        h = self.lm.hidden_states(torch.cat([prompts, responses], 1))  # (B, P+L, d)
        last = prompts.shape[1] + T.response_mask(responses).sum(1).long() - 1  # index of the final token
        return self.head(h[torch.arange(len(h)), last]).squeeze(-1)


@dataclass
class RMConfig:
    steps: int = 300  # Bradley–Terry optimiser steps
    batch_pairs: int = 64
    lr: float = 1e-3
    n_pair_prompts: int = 1024  # training prompts for pairs (held-out pairs come from held-out prompts)
    k_samples: int = 4


def train_reward_model(sft, pairs: Pairs, task: S.ArithConfig, cfg: RMConfig, seed: int = 0) -> tuple[RewardModel, list[float]]:
    """Fit ``RewardModel(copy of sft)`` to ``pairs`` with the Bradley–Terry loss; returns the model and losses."""
    dev = next(sft.parameters()).device
    rm = RewardModel(copy.deepcopy(sft)).to(dev).train()
    for p in rm.parameters():
        p.requires_grad_(True)
    prompts = T.encode_arith_prompts(pairs.problems, task.n_digits).to(dev)
    ch, rj = pairs.chosen.to(dev), pairs.rejected.to(dev)
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in progress(range(cfg.steps), desc="reward model"):
        i = torch.as_tensor(rng.choice(len(prompts), min(cfg.batch_pairs, len(prompts)), replace=False))
        loss = bradley_terry_loss(rm(prompts[i], ch[i]), rm(prompts[i], rj[i]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return rm.eval(), losses


@torch.no_grad()
def pair_accuracy(rm: RewardModel, pairs: Pairs, task: S.ArithConfig) -> float:
    """Fraction of pairs where ``r(chosen) > r(rejected)``."""
    dev = next(rm.parameters()).device
    prompts = T.encode_arith_prompts(pairs.problems, task.n_digits).to(dev)
    return float((rm(prompts, pairs.chosen.to(dev)) > rm(prompts, pairs.rejected.to(dev))).float().mean())


# ---- PPO-RLHF ------------------------------------------------------------------------------------------
@dataclass
class PPOConfig:
    """PPO-RLHF hyper-parameters (toy defaults)."""

    iters: int = 40  # rollout -> score -> learn iterations
    prompts_per_iter: int = 64  # responses sampled per iteration (one per prompt)
    epochs: int = 2  # optimisation passes over each rollout batch
    lr: float = 2e-4  # AdamW, policy trunk + value head
    kl_coef: float = 0.1  # β of the per-token KL penalty (0 = off)
    clip_eps: float = 0.2  # policy ratio clip
    vf_clip: float = 0.2  # value clip
    vf_coef: float = 0.5  # weight of the value loss
    gamma: float = 1.0  # no discount inside a response
    lam: float = 0.95  # GAE λ


@dataclass
class PPOResult:
    cfg: PPOConfig
    history: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0
    policy: object = None


def ppo_rlhf(sft, rm: RewardModel, train: np.ndarray, task: S.ArithConfig, cfg: PPOConfig, seed: int = 0,
             desc: str = "PPO-RLHF") -> PPOResult:
    """PPO-RLHF: policy + value head (trained), reference and reward model (frozen); GAE from the RL chapter."""
    from llmcore.foundation_rl.gae import compute_gae

    dev = next(sft.parameters()).device
    policy = copy.deepcopy(sft).train()
    for p in policy.parameters():
        p.requires_grad_(True)
    value_head = torch.nn.Linear(sft.config.d_model, 1).to(dev)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    ref = sft.eval()
    params = list(policy.parameters()) + list(value_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    res = PPOResult(cfg, policy=policy)
    t0 = time.perf_counter()
    for _ in progress(range(cfg.iters), desc=desc):
        # ---- rollout
        probs = train[rng.choice(len(train), cfg.prompts_per_iter, replace=False)]
        prompts = T.encode_arith_prompts(probs, task.n_digits).to(dev)
        resp = S.sample(policy, prompts, task.max_new_tokens, 1.0, generator=gen)
        mask = T.response_mask(resp)  # (B, L)
        B, L = resp.shape
        with torch.no_grad():
            old_logp, h, ent = token_logprobs(policy, prompts, resp, return_hidden=True)
            old_v = value_head(h).squeeze(-1) * mask
            ref_logp = token_logprobs(ref, prompts, resp)
            score = rm(prompts, resp)  # proxy reward (B,)
            true_r = true_reward(probs, resp)
            # ---- per-token rewards: -β KL_t everywhere, + RM score on the last token
            kl_t = (old_logp - ref_logp) * mask
            rewards = -cfg.kl_coef * kl_t
            last = mask.sum(1).long() - 1
            rewards[torch.arange(B), last] += score
            # ---- GAE (time-major (L, B)); the response ends at `last`, padding after it is "done"
            pos = torch.arange(L, device=dev)[None, :]
            dones = (pos >= last[:, None]).float()
            adv, ret = compute_gae(rewards.T, old_v.T, dones.T, torch.zeros(B, device=dev), cfg.gamma, cfg.lam)
            adv, ret = adv.T * mask, ret.T * mask
            n = mask.sum()
            mu = adv.sum() / n
            sd = (((adv - mu) ** 2 * mask).sum() / n).sqrt()
            adv_w = (adv - mu) / (sd + 1e-8) * mask  # whitened over the batch's tokens
        # ---- learn
        for _ in range(cfg.epochs):
            logp, h, _ = token_logprobs(policy, prompts, resp, return_hidden=True)
            v = value_head(h).squeeze(-1)
            pl, clip_frac = ppo_policy_loss(logp, old_logp, adv_w, mask, cfg.clip_eps)
            vl = ppo_value_loss(v, old_v, ret, mask, cfg.vf_clip)
            loss = pl + cfg.vf_coef * vl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        for k, val in {"proxy_reward": score.mean(), "true_reward": true_r.mean(), "kl": kl_t.sum(1).mean(),
                       "clip_frac": clip_frac, "entropy": (ent * mask).sum() / n, "value_loss": vl.detach(),
                       "length": mask.sum(1).mean()}.items():
            res.history.setdefault(k, []).append(float(val))
    res.wall_s = time.perf_counter() - t0
    return res


# ---- the PPO-RLHF closed loop (reward model -> PPO with and without the KL penalty) ----------------------
@dataclass
class RLHFResult:
    rm_losses: list[float]
    rm_acc_train: float
    rm_acc_heldout: float
    n_pairs: int
    ppo: PPOResult  # with the KL penalty
    ppo_nokl: PPOResult  # kl_coef = 0: the over-optimisation run
    sft_heldout: float  # mean true reward on held-out prompts (sampled)
    ppo_heldout: float
    nokl_heldout: float
    ppo_kl_heldout: float  # sequence KL(π ‖ π_SFT) on held-out prompts
    nokl_kl_heldout: float
    rm_s: float = 0.0
    n_params: int = 0


def smooth(x, k: int = 5) -> np.ndarray:
    """Trailing moving average (length ``len(x) - k + 1``)."""
    return np.convolve(np.asarray(x, float), np.ones(k) / k, "valid")


def rlhf_experiment(toy: bool = True, device: torch.device = CPU, seed: int = 0, rm_cfg: RMConfig | None = None,
                    ppo_cfg: PPOConfig | None = None, dpo_cfg: DPOConfig | None = None) -> RLHFResult:
    """SFT -> pairs labelled by the true reward -> Bradley–Terry RM -> PPO-RLHF (KL on / off)."""
    rm_cfg = rm_cfg or RMConfig()
    ppo_cfg = ppo_cfg or (PPOConfig() if toy else PPOConfig(iters=200, prompts_per_iter=128))
    dev, task, train, heldout, sft = _frozen_sft_start(dpo_cfg or DPOConfig(), device, seed)
    gen = torch.Generator(device=dev).manual_seed(seed + 11)
    rng = np.random.default_rng(seed + 11)
    tr_pairs = make_pairs(sft, train[rng.choice(len(train), rm_cfg.n_pair_prompts, replace=False)], task,
                          rm_cfg.k_samples, gen)
    ho_pairs = make_pairs(sft, heldout, task, rm_cfg.k_samples, gen)
    t0 = time.perf_counter()
    rm, losses = train_reward_model(sft, tr_pairs, task, rm_cfg, seed)
    rm_s = time.perf_counter() - t0
    for p in rm.parameters():
        p.requires_grad_(False)
    ppo = ppo_rlhf(sft, rm, train, task, ppo_cfg, seed, desc="PPO-RLHF (KL on)")
    nokl = ppo_rlhf(sft, rm, train, task, dataclasses.replace(ppo_cfg, kl_coef=0.0), seed, desc="PPO-RLHF (KL off)")
    ev = heldout[:200]

    def heldout_reward(model) -> float:
        return float(prompt_rewards(model, ev, task, 4, torch.Generator(device=dev).manual_seed(7)).mean())

    def heldout_kl(model) -> float:
        return sampled_kl(model, sft, ev, task, 4, torch.Generator(device=dev).manual_seed(8))

    return RLHFResult(losses, pair_accuracy(rm, tr_pairs, task), pair_accuracy(rm, ho_pairs, task),
                      len(tr_pairs.problems), ppo, nokl, heldout_reward(sft), heldout_reward(ppo.policy),
                      heldout_reward(nokl.policy), heldout_kl(ppo.policy), heldout_kl(nokl.policy), rm_s,
                      sft.num_params())


def rlhf_report(res: RLHFResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("ppo", "PPO-RLHF (Bradley–Terry reward model, KL-penalised PPO)", toy, device, seed)
    h, g = res.ppo.history, res.ppo_nokl.history
    t_on, t_off, p_off = smooth(h["true_reward"]), smooth(g["true_reward"]), smooth(g["proxy_reward"])
    peak = int(np.argmax(t_off))
    rep.metric("RM pairs (train)", res.n_pairs)
    rep.metric("RM pair accuracy train", res.rm_acc_train)
    rep.metric("true reward SFT (held-out)", res.sft_heldout)
    rep.metric("true reward PPO, KL on (held-out)", res.ppo_heldout)
    rep.metric("true reward PPO, KL off (held-out)", res.nokl_heldout)
    rep.metric("KL to SFT, KL on (held-out, per sequence)", res.ppo_kl_heldout)
    rep.metric("KL to SFT, KL off (held-out, per sequence)", res.nokl_kl_heldout)
    rep.metric("KL off: proxy reward at true-reward peak", p_off[peak])
    rep.metric("KL off: proxy reward at the end", p_off[-1])
    rep.metric("KL off: true reward peak (5-iter mean)", t_off[peak])
    rep.metric("KL off: true reward at the end", t_off[-1])
    rep.check("RM held-out pair accuracy", res.rm_acc_heldout, ">=", 0.90)
    rep.check("PPO (KL on) true-reward gain over SFT (held-out)", res.ppo_heldout - res.sft_heldout, ">=", 0.1)
    rep.check("PPO (KL on) final KL per sequence (bounded)", res.ppo_kl_heldout, "<", 2.0)
    rep.check("PPO (KL on) training true reward: last - first (5-iter means)", t_on[-1] - t_on[0], ">", 0.0)
    rep.check("KL off: true reward falls from its peak", t_off[peak] - t_off[-1], ">=", 0.1)
    rep.check("KL off: proxy reward keeps rising after the true peak", p_off[-1] - p_off[peak], ">=", 0.0)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """Closed loop: SFT -> RM (Bradley–Terry) -> PPO-RLHF with and without the KL penalty."""
    res = rlhf_experiment(toy=toy, device=device, seed=seed)
    return rlhf_report(res, toy, str(device), seed)
