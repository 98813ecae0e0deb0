r"""Supervised fine-tuning (SFT) of the pretrained book LM: chat template, prompt-masked loss, packing, exact match.

The data are the verifiable instruction tasks of :mod:`llmcore.alignment.tasks`; the model is the book LM
(:mod:`llmcore.architecture.book_lm`, ~2M parameters pretrained on the Python standard library), fine-tuned
on the instructions. ``SFTConfig.init="scratch"`` trains the same architecture from random weights instead:
the chapter's comparison at equal steps.

**Prompt-masked loss.** For a conversation $x = (p_1..p_m, r_1..r_n)$ only response tokens are scored:

$$ \mathcal L_{\text{SFT}}(\theta) = -\frac{1}{\sum_i n_i} \sum_i \sum_{t=1}^{n_i}
   \log \pi_\theta\bigl(r^{(i)}_t \mid p^{(i)}, r^{(i)}_{<t}\bigr), $$

implemented, as in HF, by setting the labels of prompt tokens to ``-100`` (ignored by the cross-entropy).

**Packing.** Short conversations are concatenated into rows of ``seq_len`` tokens (no padding waste).
Correct packing needs three things, all in :func:`pack` / :func:`packed_logits`:

1. a block-diagonal causal mask -- token ``t`` of document ``d`` attends only to earlier tokens of ``d``:
   $M_{ts} = [s \le t] \wedge [\text{doc}_s = \text{doc}_t]$;
2. positions restart at 0 in each document (RoPE sees the same positions as an unpacked run);
3. no label crosses a boundary: the first token of a document is never a target of the previous one.

Then each document's logits inside a packed row equal its logits when run alone (tested to 1e-5).

This module also holds the model kit's **one SFT loop**, :func:`train_packed` (packed rows or any
batch source; the PEFT fine-tunes and the RL chapters' arithmetic warm start use it too), and that
warm start (:class:`ArithConfig`, :func:`arith_sft_model`). Trained models are cached by
:func:`llmcore.core.checkpoints.train_once`.

Shapes: ``N`` rows, ``L`` row length (``seq_len``), ``V`` vocabulary.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from llmcore.alignment import tasks as T
from llmcore.architecture.book_lm import BOOK_LM_CONFIG, load_book_lm
from llmcore.architecture.generate import left_pad
from llmcore.architecture.llama import Llama, ModelConfig, lm_loss, rope_cos_sin
from llmcore.core.checkpoints import train_once
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError
from llmcore.core.progress import progress
from llmcore.core.report import Report
from llmcore.core.seed import seed_everything

INITS = ("book_lm", "scratch")  #: where an SFT run starts: the pretrained book LM or random weights


def initial_model(init: str, config: ModelConfig = BOOK_LM_CONFIG) -> Llama:
    """The first weights of every fine-tune in Part 3 (SFT, the arithmetic warm start, PEFT's bases): the
    pretrained book LM (``init="book_lm"``), or a random model of ``config`` (``"scratch"``: the comparison at
    equal steps; drawn from torch's global generator, which the caller has seeded). Returned in train mode.
    """
    if init not in INITS:
        raise LLMCoreError(f"init must be one of {INITS}, got {init!r}")
    if init == "book_lm":
        if config != BOOK_LM_CONFIG:
            raise LLMCoreError("init='book_lm' loads the book LM's own shape; pass config only with init='scratch'")
        return load_book_lm().model.train()
    return Llama(config)


@dataclass
class SFTConfig:
    """One SFT run. Budgets are step counts (never wall-clock)."""

    families: tuple[str, ...] = ("fname", "fargs")  # the same prompt, two instructions: which span to copy
    n_train: int = 12_000  # generated training conversations (before packing)
    full: bool = False  # longer task variants (3-digit numbers, 3-10 char strings)
    templates: str = "train"  # which prompt templates training uses (see tasks.make_examples); the
    #                            last template of each family stays unseen (the held-out phrasing)
    init: str = "book_lm"  # "book_lm": fine-tune the pretrained book LM | "scratch": random weights
    steps: int = 300  # optimiser steps
    compare_at: int = 100  # the step at which the scratch comparison is taken (<= steps)
    batch_rows: int = 16  # packed rows per step
    seq_len: int = 64  # packed row length (tokens)
    lr: float = 1e-3  # peak AdamW learning rate (linear warmup, cosine decay to lr * min_lr_ratio)
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    mask_prompt: bool = True  # False: the ablation "loss on every token"
    corrupt_frac: float = 0.0  # share of responses replaced by a wrong one (data-quality ablation)
    corrupt_mode: str = "shuffle"  # "shuffle" (another example's answer) | "reverse" (systematic bug)
    data_seed: int = 0  # which training conversations are generated
    seed: int = 0  # init + batch order


# ---- data: labels, padding, packing -----------------------------------------------------------------
def labels_for(ids: Sequence[int], resp_mask: Sequence[bool], mask_prompt: bool = True) -> list[int]:
    """HF-style labels: the token id where it is scored, ``-100`` where it is ignored (the prompt)."""
    return [i if (m or not mask_prompt) else -100 for i, m in zip(ids, resp_mask)]


def pad_batch(examples: Sequence[T.Example], mask_prompt: bool = True) -> tuple[torch.Tensor, ...]:
    """Right-padded batch ``idx, labels, attention_mask`` each ``(B, L_max)`` (padding labels are -100)."""
    enc = [T.encode_chat(e) for e in examples]
    L = max(len(ids) for ids, _ in enc)
    idx = torch.full((len(enc), L), T.PAD, dtype=torch.long)
    lab = torch.full((len(enc), L), -100, dtype=torch.long)
    att = torch.zeros((len(enc), L), dtype=torch.long)
    for b, (ids, m) in enumerate(enc):
        idx[b, :len(ids)] = torch.tensor(ids)
        lab[b, :len(ids)] = torch.tensor(labels_for(ids, m, mask_prompt))
        att[b, :len(ids)] = 1
    return idx, lab, att


@dataclass
class Packed:
    """Packed rows: ``idx, labels, doc, pos`` each ``(N, L)``; ``doc = -1`` marks padding."""

    idx: torch.Tensor
    labels: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor

    def __len__(self) -> int:
        return self.idx.shape[0]

    def rows(self, i: torch.Tensor) -> Packed:
        return Packed(self.idx[i], self.labels[i], self.doc[i], self.pos[i])


def pack(examples: Sequence[T.Example], seq_len: int, mask_prompt: bool = True, n_virtual: int = 0) -> Packed:
    """Greedily concatenate conversations (in order) into rows of ``seq_len`` tokens.

    A conversation that does not fit in the current row starts a new one (none is split); the rest of
    a row is padding. Within a row documents are numbered 0, 1, ...; positions restart at 0 in each.
    The first token of every document gets label ``-100`` so no loss crosses a boundary (with the
    prompt masked it is a prompt token anyway; this matters for the unmasked ablation).
    ``n_virtual`` placeholder tokens (never scored) open each conversation: prompt tuning's soft prompt.
    """
    rows: list[tuple[list[int], list[int], list[int], list[int]]] = []
    cur: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
    n_doc = 0
    for ex in examples:
        ids, m = T.encode_chat(ex)
        ids, m = [T.PAD] * n_virtual + ids, [False] * n_virtual + m
        if len(ids) > seq_len:
            raise LLMCoreError(f"a conversation of {len(ids)} tokens does not fit seq_len={seq_len}")
        if len(cur[0]) + len(ids) > seq_len:
            rows.append(cur)
            cur, n_doc = ([], [], [], []), 0
        lab = labels_for(ids, m, mask_prompt)
        lab[0] = -100  # never predicted from the previous document's last token
        cur[0].extend(ids)
        cur[1].extend(lab)
        cur[2].extend([n_doc] * len(ids))
        cur[3].extend(range(len(ids)))
        n_doc += 1
    if cur[0]:
        rows.append(cur)
    N = len(rows)
    out = Packed(torch.full((N, seq_len), T.PAD, dtype=torch.long), torch.full((N, seq_len), -100, dtype=torch.long),
                 torch.full((N, seq_len), -1, dtype=torch.long), torch.zeros((N, seq_len), dtype=torch.long))
    for r, (ids, lab, doc, pos) in enumerate(rows):
        n = len(ids)
        out.idx[r, :n], out.labels[r, :n] = torch.tensor(ids), torch.tensor(lab)
        out.doc[r, :n], out.pos[r, :n] = torch.tensor(doc), torch.tensor(pos)
    return out


def packed_mask(doc: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask ``(N, 1, L, L)``, True = may attend: $[s \\le t] \\wedge [doc_s = doc_t]$.

    Padding (``doc = -1``) attends to padding only, so no row of the softmax is empty.
    """
    L = doc.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=doc.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal)[:, None]


def packed_logits(model: Llama, idx: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, L, V)`` of packed rows: the model's layers run with the block-diagonal mask and
    per-document positions. (A wrapper over :class:`Llama`'s modules: its ``forward`` only knows
    padding masks.)"""
    x = model.model.embed_tokens(idx)
    cos, sin = rope_cos_sin(pos, model.config.head_dim, model.config.rope_theta)
    mask = packed_mask(doc)
    for layer in model.model.layers:
        x = layer(x, cos, sin, mask)
    return model.lm_head(model.model.norm(x))


def masked_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over scored tokens (labels != -100), shifted: ``logits[:, t]`` -> ``labels[:, t+1]``."""
    return lm_loss(logits, labels, ignore_index=-100)


# ---- training -----------------------------------------------------------------------------------------
def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float) -> float:
    r"""Linear warmup then cosine decay: $\eta_t = \eta_{\min} + \frac12(\eta-\eta_{\min})(1+\cos\pi u)$."""
    if step < warmup:
        return lr * (step + 1) / warmup
    u = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * min_ratio + 0.5 * lr * (1 - min_ratio) * (1 + math.cos(math.pi * u))


def adamw(params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float = 0.01,
          betas: tuple[float, float] = (0.9, 0.98)) -> torch.optim.AdamW:
    """AdamW that decays matrices only (norm gains and biases, ``dim < 2``, get no weight decay)."""
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas)


def causal_logits(model: Llama, idx: torch.Tensor, doc: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, L, V)`` of rows that hold one conversation each: the model's plain causal forward
    (``doc`` and ``pos`` are ignored; equal to :func:`packed_logits` up to float rounding)."""
    return model(idx)


def train_packed(model: torch.nn.Module, data: Packed | Callable[[int], Packed], steps: int, batch_rows: int = 16,
                 lr: float = 3e-3, warmup: int | None = 30, min_lr_ratio: float = 0.05, weight_decay: float = 0.01,
                 grad_clip: float | None = 1.0, seed: int = 0, desc: str = "SFT", logits_fn: Callable | None = None,
                 params: list[torch.nn.Parameter] | None = None, opt: torch.optim.Optimizer | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), callback: Callable[[int], None] | None = None,
                 stop_after: int | None = None) -> list[float]:
    r"""The book's one SFT loop: ``steps`` AdamW steps of prompt-masked cross-entropy; returns the loss per step.

    Each step draws a batch ``b`` (rows ``idx, labels, doc, pos``, each ``(B, L)``), computes
    ``logits_fn(model, idx, doc, pos) -> (B, L, V)`` and :func:`masked_loss` against ``labels``, then
    steps the optimiser. Batches come from ``data``:

    * a :class:`Packed` set: ``batch_rows`` random rows per step, drawn with a ``torch.Generator``
      seeded by ``seed`` (the SFT and PEFT chapters);
    * a callable ``step -> Packed`` that owns its own randomness (the arithmetic warm start,
      :func:`arith_batches`, draws problems and response styles with a numpy generator).

    ``logits_fn`` defaults to :func:`packed_logits`; ``params`` (default: all parameters that require
    grad) are the trainable ones -- PEFT passes only its adapters. ``opt`` (default: :func:`adamw`
    over ``params`` with ``weight_decay`` and ``betas``) may be shared across calls. ``warmup=None``
    keeps the optimiser's learning rate constant; otherwise it follows :func:`lr_at` (linear warmup,
    cosine decay over ``steps``). ``grad_clip=None`` skips clipping. ``callback(step)`` runs after
    each step. ``stop_after`` runs only the first ``stop_after`` steps of the ``steps``-step schedule
    (the same learning rates as the long run up to there: the chapter's comparison at equal steps).
    The model is left in eval mode.
    """
    dev = next(model.parameters()).device
    logits_fn = logits_fn or packed_logits
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = opt or adamw(params, lr, weight_decay, betas)
    if isinstance(data, Packed):
        packed, gen = data, torch.Generator().manual_seed(seed)

        def next_batch(step: int) -> Packed:
            return packed.rows(torch.randint(0, len(packed), (batch_rows,), generator=gen))
    else:
        next_batch = data
    losses = []
    model.train()
    bar = progress(range(steps if stop_after is None else min(stop_after, steps)), desc=desc,
                   **({"disable": True} if desc is None else {}))  # desc=None: the caller shows one outer bar
    for step in bar:
        if warmup is not None:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, steps, lr, warmup, min_lr_ratio)
        b = next_batch(step)
        logits = logits_fn(model, b.idx.to(dev), b.doc.to(dev), b.pos.to(dev))
        loss = masked_loss(logits, b.labels.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0 or step + 1 == steps:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if callback is not None:
            callback(step)
    model.eval()
    return losses


def training_data(cfg: SFTConfig) -> tuple[list[T.Example], Packed]:
    """The run's generated conversations (optionally corrupted) and their packed rows."""
    ex = T.make_examples(cfg.families, cfg.n_train, "train", cfg.templates, seed=cfg.data_seed, full=cfg.full)
    if cfg.corrupt_frac > 0:
        ex = T.corrupt(ex, cfg.corrupt_frac, seed=cfg.data_seed, mode=cfg.corrupt_mode)
    return ex, pack(ex, cfg.seq_len, cfg.mask_prompt)


def train_sft(cfg: SFTConfig, device: str | torch.device = "cpu", desc: str = "SFT", stop_after: int | None = None,
              callback: Callable[[int, Llama], None] | None = None) -> tuple[Llama, list[float]]:
    """Fine-tune ``cfg.init``'s model on ``cfg``'s instruction data; return it (eval mode) and its loss curve.

    Seeds with ``cfg.seed`` first: a cached model must not depend on what ran before it.
    ``stop_after``: see :func:`train_packed`; ``callback(step, model)`` runs after each step.
    """
    seed_everything(cfg.seed)
    _, data = training_data(cfg)
    model = initial_model(cfg.init).to(device)
    losses = train_packed(model, data, cfg.steps, cfg.batch_rows, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio,
                          cfg.weight_decay, cfg.grad_clip, cfg.seed, desc, stop_after=stop_after,
                          callback=None if callback is None else (lambda step: callback(step, model)))
    return model, losses


# ---- evaluation -----------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_answers(model: torch.nn.Module, examples: Sequence[T.Example], max_new: int,
                   logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   batch_size: int = 256, temperature: float = 0.0,
                   generator: torch.Generator | None = None) -> list[str]:
    """Greedy responses to each example's prompt.

    A plain :class:`Llama` decodes greedily in batches of ``batch_size`` left-padded prompts
    (``generate``'s ``attention_mask``: each row decodes as it would alone). Otherwise prompts of equal
    length are batched, so no padding: ``temperature > 0`` samples (with ``generator``; rejection
    sampling draws its candidates so, and keeps the draws it made before padding existed), and
    ``logits_fn(idx) -> (B, T, V)`` re-runs the whole sequence each step: prefix- and prompt-tuned models
    are wrappers whose forward injects learned keys/values or soft-prompt embeddings, which ``generate``
    (a plain ``Llama``'s cached decode) cannot call.
    """
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    out: list[str] = [""] * len(examples)
    pids = [T.prompt_ids(e.prompt) for e in examples]
    if temperature == 0 and logits_fn is None and isinstance(model, Llama):
        for s in range(0, len(pids), batch_size):
            chunk = pids[s:s + batch_size]
            idx, mask = left_pad(chunk, T.PAD, dev)
            P = idx.shape[1]
            seq = model.generate(idx, max_new, eos_id=T.EOS, attention_mask=mask)
            for i, row in enumerate(seq[:, P:].tolist()):
                out[s + i] = T.decode_response(row)
        model.train(was)
        return out
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(pids):
        groups.setdefault(len(p), []).append(i)
    for _, members in sorted(groups.items()):
        for s in range(0, len(members), batch_size):
            chunk = members[s:s + batch_size]
            idx = torch.tensor([pids[i] for i in chunk], device=dev)
            P = idx.shape[1]
            if logits_fn is None:
                seq = model.generate(idx, max_new, eos_id=T.EOS, temperature=temperature, generator=generator)
            else:
                seq = idx
                for _ in range(max_new):
                    nxt = logits_fn(seq)[:, -1].argmax(-1, keepdim=True)
                    seq = torch.cat([seq, nxt], 1)
                    if bool((seq[:, P:] == T.EOS).any(1).all()):
                        break
            for i, row in zip(chunk, seq[:, P:].tolist()):
                out[i] = T.decode_response(row)
    model.train(was)
    return out


def exact_match(model: torch.nn.Module, examples: Sequence[T.Example], max_new: int | None = None,
                logits_fn: Callable | None = None) -> tuple[float, dict[str, float]]:
    """Overall and per-family exact-match accuracy of greedy decoding."""
    fams = sorted({e.family for e in examples})
    max_new = max_new or T.max_response_len(fams, full=any(len(e.response) > 6 for e in examples))
    answers = greedy_answers(model, examples, max_new, logits_fn)
    ok = [T.check(e, a) for e, a in zip(examples, answers)]
    per = {f: sum(o for o, e in zip(ok, examples) if e.family == f) / sum(e.family == f for e in examples)
           for f in fams}
    return sum(ok) / len(ok), per


def test_set(families: Sequence[str], n: int = 200, templates: str = "first", seed: int = 12345,
             full: bool = False) -> list[T.Example]:
    """Held-out prompts (the test bucket of inputs, no repeats)."""
    return T.make_examples(families, n, "test", templates, seed=seed, full=full, unique=True)


# ---- the cached SFT model later chapters start from ---------------------------------------------------------
def sft_model(cfg: SFTConfig | None = None, device: str | torch.device = "cpu", refresh: bool = False,
              **overrides) -> tuple[Llama, dict]:
    """The SFT'd model for ``cfg`` (trained once, then loaded from ``output/checkpoints/sft-<hash>``).

    Returns ``(model in eval mode, metrics)``; metrics hold the loss curve, held-out exact match on the
    trained phrasings and exact match at step ``cfg.compare_at`` (the comparison with a scratch start).
    ``overrides`` replace single :class:`SFTConfig` fields, e.g. ``sft_model(families=("fname",))``.
    Cached by :func:`llmcore.core.checkpoints.train_once` (a corrupt entry is retrained).
    """
    cfg = replace(cfg or SFTConfig(), **overrides)
    tests = test_set(cfg.families, templates=cfg.templates, full=cfg.full)

    def train(path: Path) -> None:
        t0 = time.perf_counter()
        at: dict[str, float] = {}

        def probe(step: int, model: Llama) -> None:
            if step + 1 == cfg.compare_at:
                at["em"] = exact_match(model, tests)[0]
        model, losses = train_sft(cfg, "cpu" if str(device) == "cpu" else device, callback=probe)
        train_s = time.perf_counter() - t0
        acc, per = exact_match(model, tests)
        metrics = {"loss": losses, "test_em": acc, "test_em_per_family": per, "em_at_compare": at.get("em"),
                   "train_s": train_s, "params": model.num_params(), "config": asdict(cfg)}
        model.save_pretrained(path)
        (path / "metrics.json").write_text(json.dumps(metrics, default=str))

    def load(path: Path) -> tuple[Llama, dict]:
        model = Llama.from_pretrained(path, device=device).eval()
        return model, json.loads((path / "metrics.json").read_text())

    return train_once("sft", cfg, train, load, version=2, refresh=refresh)


# ---- the arithmetic warm start of the RL chapters (PPO/DPO, GRPO) --------------------------------------------
@dataclass
class ArithConfig(T.ArithTask):
    """The arithmetic task (:class:`~llmcore.alignment.tasks.ArithTask`) and its SFT warm start."""

    # model
    init: str = "book_lm"  # "book_lm": fine-tune the pretrained book LM | "scratch": random init (the comparison)
    d_model: int = BOOK_LM_CONFIG.d_model  # the scratch model's shape (defaults: the book LM's, so the
    n_layers: int = BOOK_LM_CONFIG.n_layers  # comparison is at equal architecture; tests use tiny ones)
    n_heads: int = BOOK_LM_CONFIG.n_heads
    # SFT
    sft_steps: int = 300  # optimiser steps of the warm start (at most, when sft_target_acc is set)
    sft_target_acc: float | None = None  # stop at the first check where greedy accuracy on 200 *training*
    #                                       problems reaches this (a deliberately partial warm start)
    sft_check_every: int = 25  # steps between those checks
    sft_batch: int = 64
    sft_lr: float = 1e-3  # constant AdamW rate (3e-3, right for the old 120k scratch model, diverges the book LM)
    sft_grad_clip: float | None = 1.0  # global grad-norm clip (None: off)

    def __post_init__(self) -> None:
        if self.init not in ("book_lm", "scratch"):
            raise LLMCoreError(f"ArithConfig.init must be 'book_lm' or 'scratch', got {self.init!r}")

    def model_config(self) -> ModelConfig:
        """The book LM's config, or (``init="scratch"``) a fresh model of the configured shape."""
        if self.init == "book_lm":
            return BOOK_LM_CONFIG
        kv = BOOK_LM_CONFIG.n_kv_heads if self.n_heads % BOOK_LM_CONFIG.n_kv_heads == 0 else self.n_heads
        return replace(BOOK_LM_CONFIG, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                       n_kv_heads=kv, ffn_hidden=BOOK_LM_CONFIG.ffn_hidden * self.d_model // BOOK_LM_CONFIG.d_model,
                       max_seq_len=32)

    def initial_model(self) -> Llama:
        """The warm start's first weights: :func:`initial_model` of this config's ``init`` and shape."""
        return initial_model(self.init, self.model_config())


def arith_sft_batch(problems: np.ndarray, cfg: ArithConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing batch: ``(seq (B, T), labels (B, T))``; prompt and padding positions are ``-100``.

    Each target is verbose (``"46 ok"``) with probability ``cfg.verbose_frac`` (drawn from ``rng``).
    """
    seqs, labels = [], []
    width = cfg.max_new_tokens
    for a, b in problems:
        p = T.encode(T.arith_prompt_text(int(a), int(b), cfg.n_digits), add_bos=True)
        r = T.encode(T.arith_target_text(int(a), int(b), bool(rng.random() < cfg.verbose_frac))) + [T.EOS]
        r = r + [T.PAD] * (width - len(r))
        seqs.append(p + r)
        labels.append([-100] * len(p) + [t if t != T.PAD else -100 for t in r])
    return torch.tensor(seqs), torch.tensor(labels)


def arith_batches(train: np.ndarray, cfg: ArithConfig, rng: np.random.Generator) -> Callable[[int], Packed]:
    """Batch source for :func:`train_packed`: ``cfg.sft_batch`` random training problems per step, one
    conversation per row (``doc = 0``, positions ``0..L-1``; run with :func:`causal_logits`)."""
    def next_batch(step: int) -> Packed:
        seq, lab = arith_sft_batch(train[rng.integers(0, len(train), cfg.sft_batch)], cfg, rng)
        return Packed(seq, lab, torch.zeros_like(seq), torch.arange(seq.shape[1]).expand_as(seq))
    return next_batch


def arith_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """The warm start's optimiser: AdamW, torch's default betas, no weight decay."""
    return adamw(list(model.parameters()), lr, weight_decay=0.0, betas=(0.9, 0.999))


@torch.no_grad()
def sample(model: Llama, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Responses ``(B, L)`` to ``prompts (B, P)``, ``L = max_new_tokens`` exactly.

    A thin wrapper over ``model.generate`` (the kit's one generator, KV-cached): it strips the prompt
    and pads rows that all stopped early with ``<eos>``, because the RL losses need a fixed width ``L``
    (``generate`` returns as few columns as the longest row used).
    """
    out = model.generate(prompts, max_new_tokens, temperature=temperature, eos_id=T.EOS, generator=generator)
    resp = out[:, prompts.shape[1]:]
    if resp.shape[1] < max_new_tokens:  # generation stopped early: every row ended
        resp = F.pad(resp, (0, max_new_tokens - resp.shape[1]), value=T.EOS)
    return resp


@torch.no_grad()
def arith_verdicts(model: Llama, problems: np.ndarray, task: T.ArithTask, batch: int = 400) -> dict[str, np.ndarray]:
    """Greedy decoding on ``problems (N, 2)``, one verdict per problem: bool arrays ``correct``, ``terse``,
    ``verbose`` and the int array ``length`` (tokens up to and including ``<eos>``), each ``(N,)``."""
    dev = next(model.parameters()).device
    parts: dict[str, list[np.ndarray]] = {"correct": [], "terse": [], "verbose": [], "length": []}
    for i in range(0, len(problems), batch):
        probs = problems[i:i + batch]
        resp = sample(model, T.encode_arith_prompts(probs, task.n_digits).to(dev), task.max_new_tokens,
                      temperature=0.0).cpu()
        v = T.verify_arith(probs, resp)
        for k in ("correct", "terse", "verbose"):
            parts[k].append(v[k].numpy())
        parts["length"].append(T.response_mask(resp).sum(1).long().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def arith_accuracy(model: Llama, problems: np.ndarray, task: T.ArithTask, batch: int = 400) -> dict[str, float]:
    """Greedy decoding on ``problems``: fraction correct, fraction in the terse/verbose format, mean length
    (the means of :func:`arith_verdicts`)."""
    return {k: float(v.mean()) for k, v in arith_verdicts(model, problems, task, batch).items()}


def arith_sft_model(cfg: ArithConfig, device: str | torch.device = "cpu", seed: int = 0, cache: bool = True) -> Llama:
    """The arithmetic SFT warm start for ``cfg`` (trained once, then loaded from
    ``output/checkpoints/arith_sft-<hash>``; ``cache=False`` always trains and stores nothing).

    The model is built after ``torch.manual_seed(seed)`` on both paths, so the global RNG is in the
    same state whether the weights were trained or loaded. ``model.warm_start_steps`` holds the number
    of optimiser steps the warm start took (``cfg.sft_steps``, or fewer when ``sft_target_acc`` stopped
    it), stored next to the weights: a from-scratch comparison at equal steps needs it.
    """
    torch.manual_seed(seed)
    model = cfg.initial_model()

    def train(path: Path | None) -> None:
        model.to(device)
        train_set, _ = T.arith_split(cfg)
        rng = np.random.default_rng(seed)
        opt = arith_optimizer(model, cfg.sft_lr)
        kw = {"opt": opt, "warmup": None, "grad_clip": cfg.sft_grad_clip, "logits_fn": causal_logits,
              "desc": "SFT warm start"}
        steps = cfg.sft_steps
        if cfg.sft_target_acc is None:
            train_packed(model, arith_batches(train_set, cfg, rng), cfg.sft_steps, **kw)
        else:  # chunks of sft_check_every steps under one bar (the chunks show none of their own)
            probe = train_set[:200]
            bar = progress(total=cfg.sft_steps, desc=f"SFT warm start (until {cfg.sft_target_acc:.0%} correct)")
            for start in range(0, cfg.sft_steps, cfg.sft_check_every):
                train_packed(model, arith_batches(train_set, cfg, rng), cfg.sft_check_every, **{**kw, "desc": None})
                steps = start + cfg.sft_check_every
                bar.update(cfg.sft_check_every)
                if arith_accuracy(model, probe, cfg)["correct"] >= cfg.sft_target_acc:
                    break
            bar.close()
        model.warm_start_steps = steps
        if path is not None:
            model.save_pretrained(path)  # HF layout; a tied lm_head is stored once
            (path / "warm_start.json").write_text(json.dumps({"steps": steps}))

    def load(path: Path) -> Llama:
        sd = load_file(str(path / "model.safetensors"))
        if model.config.tie_embeddings:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        model.load_state_dict(sd)
        model.warm_start_steps = json.loads((path / "warm_start.json").read_text())["steps"]
        return model.to(device)

    if not cache:
        train(None)
        return model
    return train_once("arith_sft", {"cfg": cfg, "seed": seed}, train, load, version=4)


# ---- the closed loop ---------------------------------------------------------------------------------------
def toy_config(toy: bool = True, seed: int = 0) -> SFTConfig:
    """The chapter's main run: toy = two identifier tasks on a 2-core CPU; full = seven families, longer."""
    if toy:
        return SFTConfig(seed=seed)
    return SFTConfig(families=("fname", "fargs", "fcall", "add", "sub", "upper", "lookup"), full=True,
                     n_train=200_000, steps=6000, batch_rows=32, seq_len=128, compare_at=1000, seed=seed)


#: Data-quality arms: each is a second SFT stage of the same budget on top of the SFT model.
ARMS = ("reference data", "50% corrupted", "self-generated, unfiltered", "self-generated, verifier-filtered")


def ablation_config(toy: bool = True, seed: int = 0) -> SFTConfig:
    """The fixed small budget each data-quality arm gets: a second SFT stage (fresh prompts of the same
    families, another data seed) on top of the SFT model. Corrupted responses are the *systematic*
    kind (the answer written backwards); the arms differ only in their responses."""
    if toy:
        # lr 3e-4: a second stage at the first stage's 1e-3 knocks the converged model back even on
        # clean data (measured: exact match 1.0 -> 0.93 for the reference arm, seed 0)
        return SFTConfig(n_train=1500, steps=60, batch_rows=8, seq_len=64, lr=3e-4, warmup_steps=6,
                         corrupt_mode="reverse", data_seed=1, seed=seed)
    return replace(toy_config(False, seed), steps=1000, n_train=50_000, corrupt_mode="reverse", data_seed=1)


def finetune(model: torch.nn.Module, cfg: SFTConfig, desc: str = "fine-tune", logits_fn: Callable | None = None,
             params: list[torch.nn.Parameter] | None = None, data: Packed | None = None) -> list[float]:
    """Continue training ``model`` (in place) with ``cfg``'s budget on ``data`` (default: ``cfg``'s own
    packed conversations); returns the losses. Seeds with ``cfg.seed`` first, so each fine-tune is the
    same whatever ran before it."""
    seed_everything(cfg.seed)
    if data is None:
        _, data = training_data(cfg)
    return train_packed(model, data, cfg.steps, cfg.batch_rows, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio,
                        cfg.weight_decay, cfg.grad_clip, cfg.seed, desc, logits_fn, params)


def rejection_sample(model: Llama, examples: Sequence[T.Example], temperature: float = 1.0,
                     seed: int = 0) -> tuple[list[T.Example], list[T.Example]]:
    """Synthetic responses: one sample per prompt from ``model`` at ``temperature``.

    Returns ``(unfiltered, accepted)``: every sample as an :class:`~llmcore.alignment.tasks.Example`
    (its response replaced by the sample), and the samples the verifier (:func:`tasks.check` against the
    known answer) accepts -- rejection sampling, the data step of RFT / STaR.
    """
    gen = torch.Generator().manual_seed(seed)
    fams = sorted({e.family for e in examples})
    outs = greedy_answers(model, examples, T.max_response_len(fams), temperature=temperature, generator=gen)
    unfiltered = [T.Example(e.family, e.template, e.prompt, o, e.key) for e, o in zip(examples, outs)]
    accepted = [u for u, e in zip(unfiltered, examples) if T.check(e, u.response)]
    return unfiltered, accepted


def arm_data(model: Llama, cfg: SFTConfig) -> tuple[dict[str, list[T.Example]], float]:
    """Each arm's training conversations (same prompts) and the verifier's acceptance rate of the samples."""
    clean, _ = training_data(replace(cfg, corrupt_frac=0.0))
    corrupted, _ = training_data(replace(cfg, corrupt_frac=0.5))
    unfiltered, accepted = rejection_sample(model, clean, seed=cfg.data_seed)
    return ({ARMS[0]: clean, ARMS[1]: corrupted, ARMS[2]: unfiltered, ARMS[3]: accepted},
            len(accepted) / len(clean))


@dataclass
class SFTResult:
    cfg: SFTConfig
    model: Llama
    metrics: dict
    test_em: float  # held-out instances, trained phrasings
    test_em_per_family: dict[str, float]
    heldout_template_em: float  # held-out instances, the unseen phrasing
    heldout_template_per_family: dict[str, float]
    scratch_em: float  # the scratch start's exact match after cfg.compare_at steps
    scratch_losses: list[float]  # its loss per step (the book LM's are metrics["loss"][:compare_at])
    pretrained_em_at_compare: float  # the book LM's after the same steps
    hf_loss: float
    our_loss: float
    unmasked_hf_loss: float
    pack_max_diff: float
    pack_efficiency: float  # share of packed positions that are real tokens
    pad_efficiency: float  # the same for right-padding each conversation to the batch's longest
    acceptance: float  # share of self-generated samples the verifier accepts
    ablations: dict[str, float]  # arm -> held-out exact match after the arm's budget ("before": none)
    ablation_losses: dict[str, list[float]]
    samples: list[tuple[str, str, str]]  # (prompt, model answer, reference)


def hf_crosscheck(model: Llama, examples: Sequence[T.Example]) -> tuple[float, float, float]:
    """Our prompt-masked loss vs HF ``LlamaForCausalLM`` (exported weights) with ``labels=-100`` on the prompt.

    Returns ``(ours, hf, hf_unmasked)`` on a right-padded batch.
    """
    idx, lab, att = pad_batch(examples)
    hf = model.to_hf()
    with torch.no_grad():
        ours = float(masked_loss(model(idx, attention_mask=att), lab))
        theirs = float(hf(input_ids=idx, attention_mask=att, labels=lab).loss)
        _, lab_all, _ = pad_batch(examples, mask_prompt=False)
        unmasked = float(hf(input_ids=idx, attention_mask=att, labels=lab_all).loss)
    return ours, theirs, unmasked


def packing_max_diff(model: Llama, examples: Sequence[T.Example], seq_len: int = 96) -> float:
    """max |packed logits - logits of each conversation run alone| over all real tokens."""
    data = pack(examples, seq_len)
    with torch.no_grad():
        lp = packed_logits(model, data.idx, data.doc, data.pos)
        worst = 0.0
        for r in range(len(data)):
            for d in data.doc[r].unique().tolist():
                if d < 0:
                    continue
                sel = data.doc[r] == d
                alone = model(data.idx[r, sel][None])[0]
                worst = max(worst, float((lp[r, sel] - alone).abs().max()))
    return worst


def experiment(toy: bool = True, seed: int = 0, device: torch.device = CPU,
               ablations: bool = True) -> SFTResult:
    """Main SFT run (cached), held-out exact match on seen and unseen phrasings, the scratch start at
    equal steps, HF cross-check, packing check, data-quality arms."""
    cfg = toy_config(toy, seed)
    model, metrics = sft_model(cfg, device=device)
    model = model.cpu()
    tests = test_set(cfg.families, templates=cfg.templates, full=cfg.full)
    acc, per = exact_match(model, tests)
    tmpl = test_set(cfg.families, n=90, templates="heldout", full=cfg.full)
    tmpl_acc, tmpl_per = exact_match(model, tmpl)
    scratch, scratch_losses = train_sft(replace(cfg, init="scratch"), device, "SFT from scratch",
                                        stop_after=cfg.compare_at)
    scratch_em, _ = exact_match(scratch.cpu(), tests)
    ours, theirs, unmasked = hf_crosscheck(model, tests[:64])
    pmd = packing_max_diff(model, tests[:12])
    data = pack(tests, cfg.seq_len)
    pack_eff = float((data.doc >= 0).float().mean())
    _, _, att = pad_batch(tests)
    pad_eff = float(att.float().mean())
    ab_acc, ab_loss, acceptance = {}, {}, float("nan")
    if ablations:
        base = ablation_config(toy, seed)
        ab_tests = test_set(base.families, n=120, templates=base.templates, seed=777, full=base.full)
        ab_acc["before (SFT model)"], _ = exact_match(model, ab_tests)
        arms, acceptance = arm_data(model, base)
        for label, examples in arms.items():
            m = copy.deepcopy(model).to(device)
            ab_loss[label] = finetune(m, base, desc=label, data=pack(examples, base.seq_len))
            ab_acc[label], _ = exact_match(m.cpu(), ab_tests)
    answers = greedy_answers(model, tests[:6] + tmpl[:3], T.max_response_len(cfg.families, cfg.full))
    samples = [(e.prompt, a, e.response) for e, a in zip(tests[:6] + tmpl[:3], answers)]
    return SFTResult(cfg, model, metrics, acc, per, tmpl_acc, tmpl_per, scratch_em, scratch_losses,
                     metrics["em_at_compare"],
                     theirs, ours, unmasked, pmd, pack_eff, pad_eff, acceptance, ab_acc, ab_loss, samples)


def make_report(res: SFTResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("sft", "Supervised Fine-Tuning / 监督微调 (SFT)", toy, device, seed)
    rep.metric("params", res.metrics["params"])
    rep.metric("steps", res.cfg.steps)
    rep.metric("final train loss (mean of last 20)", sum(res.metrics["loss"][-20:]) / 20)
    for f, a in res.test_em_per_family.items():
        rep.metric(f"held-out EM {f}", a)
    for f, a in res.heldout_template_per_family.items():
        rep.metric(f"unseen-phrasing EM {f}", a)
    rep.metric(f"EM after {res.cfg.compare_at} steps: book LM start", res.pretrained_em_at_compare)
    rep.metric(f"EM after {res.cfg.compare_at} steps: scratch start", res.scratch_em)
    rep.metric("packing: real-token share packed", res.pack_efficiency)
    rep.metric("packing: real-token share padded", res.pad_efficiency)
    rep.metric("rejection sampling: verifier acceptance", res.acceptance)
    for label, a in res.ablations.items():
        rep.metric(f"data arm EM: {label}", a)
    rep.check("held-out exact match (trained phrasings)", res.test_em, ">=", 0.95)
    rep.check("held-out exact match (unseen phrasing)", res.heldout_template_em, ">=", 0.1)
    rep.check(f"pretrained start beats scratch at {res.cfg.compare_at} steps (EM gain)",
              res.pretrained_em_at_compare - res.scratch_em, ">=", 0.2)
    rep.check("|our masked loss - HF labels=-100 loss|", abs(res.our_loss - res.hf_loss), "<", 1e-5)
    rep.check("max |packed - unpacked logits|", res.pack_max_diff, "<", 1e-4)
    if res.ablations:
        clean = res.ablations[ARMS[0]]
        rep.check("EM drop from 50% corrupted responses", clean - res.ablations[ARMS[1]], ">", 0.05)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The SFT closed loop: fine-tune (or load) the SFT'd book LM, evaluate, compare with a scratch start,
    cross-check with HF, compare data-quality arms."""
    dev = device  # resolved once by the registry (run_module)
    res = experiment(toy=toy, seed=seed, device=dev)
    rep = make_report(res, toy, str(dev), seed)
    rep.notes += [f"{p!r} -> {a!r} (reference {r!r})" for p, a, r in res.samples]
    return rep


# ---- diagram ------------------------------------------------------------------------------------------------
def plot_sft_data_path(ax, families: Sequence[str] = ("fname", "fargs"), seq_len: int = 64, n_rows: int = 2,
                       seed: int = 1):
    """Draw the SFT data path on ``ax`` with real data: one conversation in the chat template, the packed
    rows it lands in (documents coloured, position ids restarting), and the labels the loss sees
    (scored response tokens vs ``-100``). Returns ``ax``.

    Top band: the token pieces of the first generated conversation (special tokens abbreviated), prompt
    blue, response orange (``<eos>`` included: it is a target), the template's own tokens grey. Middle: the first ``n_rows`` rows of :func:`pack` (``seq_len`` slots each; the
    number under a slot is its position id, padding grey). Bottom: the same rows' labels -- orange where a
    slot is a training target, grey where it is ``-100`` (prompt, each document's first token, padding).
    """
    examples = T.make_examples(families, 4 * n_rows, seed=seed)
    ids, resp = T.encode_chat(examples[0])
    data = pack(examples, seq_len)
    special = {T.BOS: "bos", T.USER: "user", T.ASSISTANT: "asst", T.EOS: "eos"}
    doc_colours = ["#9ecae1", "#a1d99b", "#fdd0a2", "#dadaeb", "#fcbba1", "#c7e9c0"]
    w = seq_len / len(ids)  # top band: one conversation spread over the row's width
    ax.set_xlim(-12, seq_len + 0.5)
    ax.set_ylim(-0.75 - 1.5 * n_rows, 3.4)
    ax.axis("off")

    def cell(x, y, width, height, colour, text="", size=6.0, hatch=None):
        ax.fill([x, x + width, x + width, x], [y, y, y + height, y + height], facecolor=colour,
                edgecolor="white" if hatch is None else "#888888", lw=0.6, hatch=hatch)
        if text:
            ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=size)

    ax.text(-11.5, 2.75, "1. chat template\n(one conversation)", fontsize=8, va="center")
    for k, (i, r) in enumerate(zip(ids, resp)):
        label = special.get(i, T.render([i]).replace(" ", "␣"))
        cell(k * w, 2.4, w, 0.7, "#fdae6b" if r else ("#bbbbbb" if i in special else "#9ecae1"), label)
    ax.text(0, 3.2, "prompt (context, not a target)", fontsize=7, color="#3182bd")
    ax.text(len(ids) * w, 3.2, "response (the targets)", fontsize=7, color="#e6550d", ha="right")
    ax.annotate("", xy=(seq_len / 2, 1.05), xytext=(seq_len / 2, 2.35),
                arrowprops={"arrowstyle": "->", "color": "k", "lw": 1})
    ax.text(seq_len / 2 + 0.8, 1.7, "pack greedily into rows of L tokens: block-diagonal mask, positions restart",
            fontsize=7)
    for r in range(n_rows):
        y = 0.3 - 0.75 * r
        ax.text(-11.5, y + 0.3, f"2. packed row {r}\n(document colour)", fontsize=7, va="center")
        for t in range(seq_len):
            d = int(data.doc[r, t])
            cell(t, y, 1, 0.6, "#f0f0f0" if d < 0 else doc_colours[d % len(doc_colours)],
                 "" if d < 0 else str(int(data.pos[r, t])), size=4.5, hatch="///" if d < 0 else None)
    y0 = 0.3 - 0.75 * n_rows - 0.35
    for r in range(n_rows):
        y = y0 - 0.75 * r
        ax.text(-11.5, y + 0.3, f"3. labels row {r}\n(orange = scored)", fontsize=7, va="center")
        for t in range(seq_len):
            scored = int(data.labels[r, t]) != -100
            cell(t, y, 1, 0.6, "#fdae6b" if scored else "#d9d9d9")
    ax.set_title("SFT data path: chat template → packed rows (numbers = position ids) → labels "
                 "(grey = −100: prompt, first token of each document, padding)", fontsize=8)
    return ax
