"""A tiny randomly initialised Llama shared by the decoding, generate and KV-cache tests (no special ids;
``init_std=0.2`` so that logits are far from uniform and greedy decoding is not decided by ties)."""

import torch

from llmcore.architecture.llama import Llama, ModelConfig


def tiny(n_kv_heads: int = 2, seed: int = 0, **kw) -> Llama:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=128,
               bos_id=None, eos_id=None, pad_id=None, init_std=0.2)
    cfg.update(kw)
    return Llama(ModelConfig(**cfg)).eval()
