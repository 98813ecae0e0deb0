r"""A verifiable toy task for the alignment chapters: 2-digit addition with a checker, and an SFT warm start.

Written for the GRPO and PPO/DPO chapters (a minimal stand-in for the SFT chapter's task generator):

* a prompt is ``<bos>`` followed by the bytes of ``"ab+cd="`` (operands zero-padded to a fixed width,
  so every prompt has the same length and a batch needs no padding);
* a response is the sum's digits then ``<eos>`` — the *terse* style ``"46"`` — or, in the *verbose*
  style that the preference chapters add to the SFT data, ``"46 ok"``;
* :func:`check` is the verifier: it reads a response and says whether the number is right and whether
  the format is the required one (digits only, closed by ``<eos>``).

:func:`sft_model` trains the tiny LLaMA of :mod:`llmcore.architecture.llama` with prompt-masked
cross-entropy for a fixed number of steps and caches the weights under ``output/cache/arith``; the step
budget decides how good the warm start is (the GRPO chapter wants a 60–70 % start).

Shapes: ``B`` prompts, ``P`` prompt length, ``L`` response length (padded with ``<eos>``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.tokenizer import ByteTokenizer
from llmcore.core.errors import LLMCoreError
from llmcore.core.paths import output_dir
from llmcore.core.progress import progress

TOK = ByteTokenizer()
BOS, EOS, PAD = TOK.bos_id, TOK.eos_id, TOK.pad_id
VERBOSE_SUFFIX = " ok"  #: the wordier style the preference chapters' true reward dislikes


@dataclass
class ArithConfig:
    """The task and its SFT warm start."""

    n_digits: int = 2  # operands in [0, 10**n_digits)
    n_heldout: int = 400  # problems never seen in training (evaluation prompts)
    verbose_frac: float = 0.0  # fraction of SFT targets written in the verbose style "46 ok"
    # model (≈ 120k parameters at the defaults)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    # SFT
    sft_steps: int = 300  # optimiser steps of the warm start (at most, when sft_target_acc is set)
    sft_target_acc: float | None = None  # stop at the first check where greedy accuracy on 200 *training*
    #                                       problems reaches this (a deliberately partial warm start)
    sft_check_every: int = 25  # steps between those checks
    sft_batch: int = 64
    sft_lr: float = 3e-3
    data_seed: int = 1234  # split of problems into train / held-out (fixed: the same split for every seed)

    @property
    def max_new_tokens(self) -> int:
        """Longest response: n_digits + 1 sum digits, optional suffix, ``<eos>``."""
        return len(VERBOSE_SUFFIX) * (self.verbose_frac > 0) + self.n_digits + 2

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=TOK.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                           n_heads=self.n_heads, max_seq_len=32, bos_id=BOS, eos_id=EOS, pad_id=PAD)


# ---- problems, prompts and the verifier --------------------------------------------------------------
def split_problems(cfg: ArithConfig) -> tuple[np.ndarray, np.ndarray]:
    """All ``(a, b)`` pairs shuffled once with ``cfg.data_seed``: ``(train (N, 2), heldout (n_heldout, 2))``."""
    n = 10 ** cfg.n_digits
    grid = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    grid = grid[np.random.default_rng(cfg.data_seed).permutation(len(grid))]
    if cfg.n_heldout >= len(grid):
        raise LLMCoreError(f"n_heldout={cfg.n_heldout} leaves no training problems (only {len(grid)} exist)")
    return grid[cfg.n_heldout:], grid[:cfg.n_heldout]


def prompt_text(a: int, b: int, n_digits: int = 2) -> str:
    return f"{a:0{n_digits}d}+{b:0{n_digits}d}="


def encode_prompts(problems: np.ndarray, n_digits: int = 2) -> torch.Tensor:
    """``(B, 2)`` problems -> ``(B, P)`` token ids ``<bos> a + b =`` (same length for all)."""
    return torch.tensor([TOK.encode(prompt_text(int(a), int(b), n_digits), add_bos=True) for a, b in problems])


def target_text(a: int, b: int, verbose: bool = False) -> str:
    return str(a + b) + (VERBOSE_SUFFIX if verbose else "")


def decode_response(ids) -> tuple[str, bool]:
    """Token ids of one response -> (text before the first ``<eos>``, whether an ``<eos>`` closed it)."""
    ids = list(ids)
    closed = EOS in ids
    if closed:
        ids = ids[:ids.index(EOS)]
    return TOK.decode([i for i in ids if i < 256]) if all(i < 256 for i in ids) else "\ufffd", closed


def check(a: int, b: int, response_ids) -> tuple[bool, bool, bool]:
    """The verifier: ``(correct, terse_format, verbose_format)`` for one response.

    ``correct``: the number in the response (before an optional ``" ok"``) equals ``a + b``.
    ``terse_format``: the response is digits only, closed by ``<eos>`` (the required format).
    """
    text, closed = decode_response(response_ids)
    body = text[:-len(VERBOSE_SUFFIX)] if text.endswith(VERBOSE_SUFFIX) else text
    is_num = closed and body.isdigit() and len(body) <= 6
    correct = bool(is_num and int(body) == a + b)
    terse = bool(is_num and body == text)
    verbose = bool(is_num and body != text)
    return correct, terse, verbose


def verify(problems: np.ndarray, responses: torch.Tensor) -> dict[str, torch.Tensor]:
    """Vectorised :func:`check` over a batch: ``problems (B, 2)``, ``responses (B, L)`` -> bool tensors ``(B,)``."""
    out = [check(int(a), int(b), r.tolist()) for (a, b), r in zip(problems, responses)]
    t = torch.tensor(out, dtype=torch.bool).reshape(-1, 3)
    return {"correct": t[:, 0], "terse": t[:, 1], "verbose": t[:, 2]}


# ---- sequences: sampling and log-probabilities ----------------------------------------------------
def response_mask(responses: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` float mask: 1 up to and including the first ``<eos>`` (the tokens the policy chose)."""
    is_eos = (responses == EOS).long()
    after = torch.cumsum(is_eos, 1) - is_eos  # number of eos strictly before position t
    return (after == 0).float()


@torch.no_grad()
def sample(model: Llama, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Responses ``(B, L)`` to ``prompts (B, P)`` (KV-cached; rows that finished are padded with ``<eos>``)."""
    out = model.generate(prompts, max_new_tokens, temperature=temperature, eos_id=EOS, generator=generator)
    resp = out[:, prompts.shape[1]:]
    if resp.shape[1] < max_new_tokens:  # generation stopped early: every row ended
        resp = F.pad(resp, (0, max_new_tokens - resp.shape[1]), value=EOS)
    return resp


def token_logprobs(model: Llama, prompts: torch.Tensor, responses: torch.Tensor,
                   return_hidden: bool = False):
    r"""Per-token :math:`\log\pi(y_t \mid x, y_{<t})` of ``responses (B, L)`` -> ``(B, L)``.

    With ``return_hidden`` also the hidden states ``(B, L, d)`` at the positions that *predict* each
    response token (the state a value head reads: :math:`V(x, y_{<t})`), and the entropies ``(B, L)``.
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


@torch.no_grad()
def accuracy(model: Llama, problems: np.ndarray, cfg: ArithConfig, batch: int = 400) -> dict[str, float]:
    """Greedy decoding on ``problems``: fraction correct, fraction in the terse format, mean length."""
    stats = {"correct": 0.0, "terse": 0.0, "verbose": 0.0, "length": 0.0}
    for i in range(0, len(problems), batch):
        probs = problems[i:i + batch]
        resp = sample(model, encode_prompts(probs, cfg.n_digits).to(_dev(model)), cfg.max_new_tokens,
                      temperature=0.0)
        v = verify(probs, resp.cpu())
        for k in ("correct", "terse", "verbose"):
            stats[k] += float(v[k].sum())
        stats["length"] += float(response_mask(resp).sum())
    return {k: v / len(problems) for k, v in stats.items()}


def _dev(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---- SFT warm start ---------------------------------------------------------------------------------
def sft_batch(problems: np.ndarray, cfg: ArithConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing batch: ``(seq (B, T), labels (B, T))``; prompt positions are ``-100`` (masked loss)."""
    seqs, labels = [], []
    width = cfg.max_new_tokens
    for a, b in problems:
        p = TOK.encode(prompt_text(int(a), int(b), cfg.n_digits), add_bos=True)
        r = TOK.encode(target_text(int(a), int(b), bool(rng.random() < cfg.verbose_frac))) + [EOS]
        r = r + [PAD] * (width - len(r))
        seqs.append(p + r)
        labels.append([-100] * len(p) + [t if t != PAD else -100 for t in r])
    return torch.tensor(seqs), torch.tensor(labels)


def sft_steps(model: Llama, train: np.ndarray, cfg: ArithConfig, steps: int, rng: np.random.Generator,
              opt: torch.optim.Optimizer | None = None, lr: float | None = None, desc: str = "SFT",
              callback=None) -> list[float]:
    """``steps`` AdamW steps of prompt-masked next-token cross-entropy on random training problems."""
    opt = opt or torch.optim.AdamW(model.parameters(), lr=lr or cfg.sft_lr, weight_decay=0.0)
    dev, losses = _dev(model), []
    model.train()
    for step in progress(range(steps), desc=desc):
        probs = train[rng.integers(0, len(train), cfg.sft_batch)]
        seq, lab = sft_batch(probs, cfg, rng)
        _, loss = model(seq.to(dev), labels=lab.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step)
    return losses


def sft_model(cfg: ArithConfig, device: str | torch.device = "cpu", seed: int = 0, cache: bool = True) -> Llama:
    """The SFT warm start for ``cfg`` (trained once, then loaded from ``output/cache/arith/<hash>.pt``)."""
    key = hashlib.sha1(json.dumps({**asdict(cfg), "seed": seed, "v": 2}, sort_keys=True).encode()).hexdigest()[:12]
    path = output_dir("cache", "arith") / f"sft_{key}.pt"
    torch.manual_seed(seed)
    model = Llama(cfg.model_config())
    if cache and path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model.to(device)
    model.to(device)
    train, _ = split_problems(cfg)
    rng = np.random.default_rng(seed)
    if cfg.sft_target_acc is None:
        sft_steps(model, train, cfg, cfg.sft_steps, rng, desc="SFT warm start")
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
        probe = train[:200]
        for _ in range(0, cfg.sft_steps, cfg.sft_check_every):
            sft_steps(model, train, cfg, cfg.sft_check_every, rng, opt=opt, desc="SFT warm start")
            if accuracy(model, probe, cfg)["correct"] >= cfg.sft_target_acc:
                break
    if cache:
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return model
