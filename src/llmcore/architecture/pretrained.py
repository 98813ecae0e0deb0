"""The book's tiny pretrained language model: trained once on the stdlib-docstring corpus, then cached.

Later chapters (decoding, SFT, PEFT, PPO/DPO/GRPO, inference, agents) start from it::

    from llmcore.architecture.pretrained import tiny_lm
    lm = tiny_lm()                      # trains on first call (~1 min on 2 CPU cores), then loads
    model, tok = lm.model, lm.tokenizer # Llama (eval mode) and ByteTokenizer (264 ids)
    lm.metrics                          # {"val_loss": ..., "unigram_loss": ..., ...} in nats/byte

Deterministic: the corpus, the seed, the batch order and torch's thread count are fixed, so the
same machine type gives the same weights. The checkpoint is cached by
:func:`llmcore.core.checkpoints.train_once` in ``output/checkpoints/tiny_lm-<hash>/`` (HF
``LlamaForCausalLM`` layout: ``config.json`` + ``model.safetensors``, plus ``metrics.json`` and the
cache's manifest), where the hash covers every setting that changes the weights; a corrupt entry is
retrained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.tokenizer import ByteTokenizer
from llmcore.architecture.training import TrainConfig, evaluate, random_windows, train
from llmcore.core.checkpoints import train_once
from llmcore.core.corpus import docstring_corpus
from llmcore.core.errors import LLMCoreError
from llmcore.core.seed import seed_everything

#: The default tiny LM: byte-level, ~120k parameters, 256-token context.
TINY_CONFIG = ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
                          ffn_hidden=176, max_seq_len=256, tie_embeddings=True)
#: Its training run (step counts, never wall-clock time).
TINY_TRAIN = TrainConfig(steps=600, batch_size=16, seq_len=256, lr=1e-2, warmup_steps=30,
                         min_lr_ratio=0.1, weight_decay=0.05, grad_clip=1.0, seed=0, desc="tiny LM")


@dataclass
class PretrainedLM:
    model: Llama
    tokenizer: ByteTokenizer
    config: ModelConfig
    train_config: TrainConfig
    metrics: dict
    path: Path


def corpus_ids(tokenizer: ByteTokenizer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The docstring corpus as 1-D token tensors ``(train, val)`` (byte tokenizer by default)."""
    tok = tokenizer or ByteTokenizer()
    c = docstring_corpus()
    return (torch.tensor(tok.encode(c.train), dtype=torch.long),
            torch.tensor(tok.encode(c.val), dtype=torch.long))


def unigram_loss(train_ids: torch.Tensor, val_ids: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on ``val_ids`` of add-one-smoothed token frequencies from ``train_ids``."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return float(-logp[val_ids].mean())


def tiny_lm(device: str | torch.device = "cpu", config: ModelConfig | None = None,
            train_config: TrainConfig | None = None, refresh: bool = False, **overrides) -> PretrainedLM:
    """Load (or train once and cache) the tiny byte-level LM.

    ``overrides`` change single fields, e.g. ``tiny_lm(n_kv_heads=1)`` (model) or ``tiny_lm(steps=300)``
    (training); each distinct setting gets its own cached checkpoint.
    """
    cfg = config or TINY_CONFIG
    tcfg = train_config or TINY_TRAIN
    m_fields, t_fields = set(asdict(cfg)), set(asdict(tcfg))
    bad = set(overrides) - m_fields - t_fields
    if bad:
        raise LLMCoreError(f"unknown tiny_lm override(s) {sorted(bad)}")
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if k in m_fields})
    tcfg = replace(tcfg, **{k: v for k, v in overrides.items() if k in t_fields})
    tok = ByteTokenizer()

    def load(path: Path) -> PretrainedLM:
        model = Llama.from_pretrained(path, device=device).eval()
        metrics = json.loads((path / "metrics.json").read_text())
        return PretrainedLM(model, tok, cfg, tcfg, metrics, path)

    return train_once("tiny_lm", {"model": cfg, "train": tcfg}, lambda path: _train_tiny(cfg, tcfg, tok, path),
                      load, version=1, refresh=refresh)


def _train_tiny(cfg: ModelConfig, tcfg: TrainConfig, tok: ByteTokenizer, path: Path) -> None:
    """Pretrain on the docstring corpus and write the weights and metrics into ``path``."""
    seed_everything(tcfg.seed)
    train_ids, val_ids = corpus_ids(tok)
    model = Llama(cfg)
    res = train(model, tcfg, lambda g: random_windows(train_ids, tcfg.batch_size, tcfg.seq_len, g))
    metrics = {
        "val_loss": evaluate(model, val_ids, tcfg.seq_len),
        "unigram_loss": unigram_loss(train_ids, val_ids, cfg.vocab_size),
        "final_train_loss": sum(res.loss[-20:]) / len(res.loss[-20:]),
        "params": model.num_params(), "train_s": res.wall_s, "steps": tcfg.steps,
        "train_bytes": len(train_ids), "val_bytes": len(val_ids),
        "loss_curve": res.loss,
    }
    model.save_pretrained(path)
    (path / "metrics.json").write_text(json.dumps(metrics))
