r"""Beam search over the block manager: beams that share a history share its KV blocks.

The kit's :func:`~llmcore.architecture.decoding.beam_search` keeps one contiguous cache row per beam and
re-orders the rows after every step (``reorder``): a beam chosen twice is *copied*, so the cache always
holds ``n`` full histories. Over a paged pool a surviving beam *forks* its parent's block table instead
(reference count + 1, :meth:`~.paged.BlockManager.fork`); the only copy is the parent's partly filled last
block, at the first write into it (copy-on-write). Beams that die release their references, so the
blocks of a history nobody continues return to the pool. With ``share=False`` every fork copies all blocks
(:meth:`~.paged.BlockManager.duplicate`) -- the same search, the memory a cache without sharing needs.

Scoring is the kit's: beam score $= \sum_t \log p(y_t \mid y_{<t})$; each step keeps the ``num_beams`` best of
the ``num_beams x V`` one-token extensions; no end-of-sequence token (every beam runs ``max_new_tokens``
steps), as HF ``generate(num_beams=n, num_return_sequences=n, early_stopping=False)`` without EOS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmcore.core.errors import LLMCoreError
from llmcore.engineering.inference.paged import BlockManager, BlockTable, forward_paged


@dataclass
class PagedBeamResult:
    """``sequences (n, T + new)`` and ``scores (n,)`` best first; block accounting of the run."""

    sequences: torch.Tensor
    scores: torch.Tensor
    peak_blocks: int  # most blocks in use at once
    copies: int  # block copies (copy-on-write, or every block of every fork when not sharing)
    block_size: int


@torch.no_grad()
def beam_search_paged(model, prompt: list[int], max_new_tokens: int, num_beams: int = 4, block_size: int = 8,
                      share: bool = True) -> PagedBeamResult:
    """Beam search of the kit's ``Llama`` with every beam's keys/values in one paged pool (see the module
    docstring). ``share=False`` duplicates blocks on every fork instead of sharing them."""
    if not prompt or max_new_tokens < 1 or num_beams < 1:
        raise LLMCoreError(f"need a prompt, max_new_tokens >= 1 and num_beams >= 1; got {len(prompt)} tokens, "
                           f"{max_new_tokens}, {num_beams}")
    per_beam = math.ceil((len(prompt) + max_new_tokens) / block_size)
    m = BlockManager.for_model(model, 2 * num_beams * (per_beam + 1), block_size)
    tables, seqs = [BlockTable()], [list(prompt)]
    scores = torch.zeros(1)
    new = [list(prompt)]
    peak = 0
    for step in range(max_new_tokens):
        logits = forward_paged(model, m, tables, new)  # (rows, V): writes each row's new keys (copy-on-write)
        peak = max(peak, m.num_blocks - m.num_free)
        logp = F.log_softmax(logits.float(), dim=-1).cpu()
        if step == 0:  # all beams start as the prompt: only one may expand (the kit's -1e9 trick)
            logp, scores = logp.expand(num_beams, -1), torch.cat([scores, torch.full((num_beams - 1,), -1e9)])
        V = logp.shape[-1]
        top, idx = torch.topk((scores[:, None] + logp).reshape(-1), num_beams)
        parents, toks = (idx // V).tolist(), (idx % V).tolist()
        if step == 0:
            parents = [0] * num_beams
        for p, tab in enumerate(tables):
            if p not in parents:
                m.release(tab)  # a beam nobody continues: its blocks go back unless shared
        children, used = [], set()
        for p in parents:  # the first child of a parent takes its table; every further one forks it
            if p not in used:
                children.append(tables[p])
                used.add(p)
            else:
                children.append(m.fork(tables[p]) if share else m.duplicate(tables[p]))
        seqs = [seqs[p] + [t] for p, t in zip(parents, toks)]
        tables, scores, new = children, top, [[t] for t in toks]
        peak = max(peak, m.num_blocks - m.num_free)
    for tab in tables:
        m.release(tab)
    if m.num_free != m.num_blocks:
        raise LLMCoreError(f"beam search leaked {m.num_blocks - m.num_free} blocks")
    return PagedBeamResult(torch.tensor(seqs), scores, peak, m.copies, block_size)
