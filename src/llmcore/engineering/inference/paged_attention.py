r"""PagedAttention for decoding: attention that reads keys and values *through the block table*.

A decode step has one query per sequence. Sequence $i$'s keys are scattered over the blocks of its table;
its position $p$ is at slot $\text{table}_i[\lfloor p/b \rfloor]\, b + p \bmod b$ of the pool. For query
head $h$ (KV head $h_k = \lfloor h / (H/K) \rfloor$, grouped-query attention)

$$ o_{i,h} = \sum_{p < L_i} \operatorname{softmax}_p\!\Big(\frac{q_{i,h} \cdot k_{h_k}(p)}{\sqrt D}\Big)\, v_{h_k}(p). $$

Two implementations of the same function, shapes ``q (B, H, D)``, one layer's pool ``k_pool, v_pool
(N * b, K, D)``, ``block_tables (B, nb)`` (rows padded with any block), ``seq_lens (B,)`` -> ``(B, H, D)``:

* :func:`paged_attention_torch` -- gather every row's keys into a padded ``(B, K, S, D)`` tensor, mask the
  padding, SDPA (what :class:`~.paged.PagedKVCache` does for the kit's model; the CPU path);
* :func:`paged_attention_triton` -- vLLM's kernel idea in Triton: one program per (sequence, head) walks its
  block table, loads one block of keys at a time straight from the pool and keeps an online softmax
  (running max $m$, normaliser $\ell$, accumulator; FlashAttention's rescaling by $e^{m_{old} - m_{new}}$),
  so the padded copy is never made. Compiled on a GPU; on CPU it runs in Triton's interpreter (correctness
  only, slow).

:func:`forward_decode` is a decode step of the kit's ``Llama`` with such an attention function. Why a second
forward beside the kit's: the kit's ``Attention`` takes keys and values back from the cache as tensors and
calls SDPA itself, while a paged kernel must read them from the pool inside attention; so this function runs
the kit's own modules (norms, projections, RoPE, MLP, weights) layer by layer and swaps only the attention
call. Pre-LN models only (the book LM).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llmcore.architecture.llama import apply_rope, rope_cos_sin
from llmcore.core.errors import LLMCoreError
from llmcore.core.triton_env import available, tl, triton, why_unavailable
from llmcore.engineering.inference.paged import BlockManager, BlockTable


def _check(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
           seq_lens: torch.Tensor, block_size: int) -> None:
    if q.dim() != 3 or k_pool.dim() != 3 or k_pool.shape != v_pool.shape or q.shape[2] != k_pool.shape[2]:
        raise LLMCoreError(f"need q (B, H, D) and pools (N*b, K, D); got q {tuple(q.shape)}, "
                           f"k {tuple(k_pool.shape)}, v {tuple(v_pool.shape)}")
    B, H = q.shape[:2]
    if q.shape[1] % k_pool.shape[1]:
        raise LLMCoreError(f"{H} query heads cannot share {k_pool.shape[1]} KV heads evenly")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or seq_lens.shape != (B,):
        raise LLMCoreError(f"need block_tables (B, nb) and seq_lens (B,) for B={B}; got "
                           f"{tuple(block_tables.shape)}, {tuple(seq_lens.shape)}")
    if int(seq_lens.min()) < 1 or int(seq_lens.max()) > block_tables.shape[1] * block_size:
        raise LLMCoreError(f"seq_lens must be in 1..{block_tables.shape[1] * block_size} (the tables' capacity)")


def paged_attention_torch(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                          seq_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Reference: gather keys/values through the table into ``(B, K, S, D)`` (``S = nb * b``), mask positions
    ``>= seq_lens``, SDPA with grouped heads. Returns ``(B, H, D)``."""
    _check(q, k_pool, v_pool, block_tables, seq_lens, block_size)
    B, H, D = q.shape
    dev = k_pool.device
    pos = torch.arange(block_tables.shape[1] * block_size, device=dev)  # (S,)
    slots = block_tables.to(dev).long()[:, pos // block_size] * block_size + pos % block_size  # (B, S)
    k, v = k_pool[slots].transpose(1, 2), v_pool[slots].transpose(1, 2)  # (B, K, S, D)
    mask = (pos[None, :] < seq_lens.to(dev)[:, None])[:, None, None, :]  # (B, 1, 1, S)
    out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, enable_gqa=H != k.shape[1])
    return out[:, :, 0]


if triton is not None:

    @triton.jit
    def _paged_attention_kernel(Q, Kp, Vp, Tab, Lens, Out, scale, max_blocks,
                                H: tl.constexpr, KVH: tl.constexpr, D: tl.constexpr,
                                BS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        kvh = head // (H // KVH)  # the KV head this query head reads (GQA)
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        q = tl.load(Q + (row * H + head) * D + d, mask=dmask, other=0.0).to(tl.float32)
        seq_len = tl.load(Lens + row)
        offs = tl.arange(0, BLOCK_B)  # positions inside one KV block
        m_i = tl.max(tl.full([BLOCK_B], float("-inf"), tl.float32), axis=0)  # running max
        l_i = tl.sum(tl.zeros([BLOCK_B], tl.float32), axis=0)  # running normaliser
        acc = tl.zeros([BLOCK_D], tl.float32)
        for j in range(0, tl.cdiv(seq_len, BS)):
            blk = tl.load(Tab + row * max_blocks + j).to(tl.int64)  # logical block j -> physical block
            valid = (offs < BS) & (j * BS + offs < seq_len)
            slot = blk * BS + offs  # (BLOCK_B,) flat slots of this block
            ptr = (slot[:, None] * KVH + kvh) * D + d[None, :]
            lmask = valid[:, None] & dmask[None, :]
            k = tl.load(Kp + ptr, mask=lmask, other=0.0).to(tl.float32)  # (BLOCK_B, BLOCK_D)
            s = tl.where(valid, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp(m_i - m_new)  # rescales what was accumulated under the old max
            p = tl.exp(s - m_new)
            v = tl.load(Vp + ptr, mask=lmask, other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new
        tl.store(Out + (row * H + head) * D + d, (acc / l_i).to(Out.dtype.element_ty), mask=dmask)


def paged_attention_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """The Triton kernel: grid ``(B, H)``, each program loops over its sequence's blocks with an online softmax.
    Same arguments and result as :func:`paged_attention_torch`."""
    if not available():
        raise LLMCoreError(why_unavailable())
    _check(q, k_pool, v_pool, block_tables, seq_lens, block_size)
    B, H, D = q.shape
    dev = k_pool.device
    tables = block_tables.to(dev, torch.int32).contiguous()
    out = torch.empty_like(q)
    _paged_attention_kernel[(B, H)](q.contiguous(), k_pool.contiguous(), v_pool.contiguous(), tables,
                                    seq_lens.to(dev, torch.int32).contiguous(), out, 1.0 / math.sqrt(D),
                                    tables.shape[1], H=H, KVH=k_pool.shape[1], D=D, BS=block_size,
                                    BLOCK_D=triton.next_power_of_2(D), BLOCK_B=triton.next_power_of_2(block_size))
    return out


AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


@torch.no_grad()
def forward_decode(model, manager: BlockManager, tables: list[BlockTable], tokens: list[int],
                   attention: AttentionFn = paged_attention_torch) -> torch.Tensor:
    """One decode step of the kit's (pre-LN) ``Llama``: row ``i`` feeds ``tokens[i]`` after its
    ``tables[i].num_tokens`` cached positions; each layer writes the new keys/values into the pool (claiming
    blocks, copy-on-write) and attends with ``attention`` over the pool. Returns logits ``(B, V)``."""
    cfg = model.config
    if cfg.norm_position != "pre":
        raise LLMCoreError("forward_decode runs pre-LN models (the book LM)")
    if len(tokens) != len(tables) or not tables:
        raise LLMCoreError(f"need one token per table, got {len(tokens)} tokens for {len(tables)} tables")
    dev, b = manager.k.device, manager.block_size
    B, H, K, D = len(tables), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos = torch.tensor([t.num_tokens for t in tables], device=dev)  # (B,) position of the new token
    write = torch.cat([manager.append_slots(t, 1) for t in tables]).to(dev)  # (B,) its slot
    nb = max(len(t.blocks) for t in tables)
    block_tables = torch.tensor([t.blocks + [0] * (nb - len(t.blocks)) for t in tables], device=dev)
    seq_lens = pos + 1
    cos, sin = rope_cos_sin(pos[:, None], D, cfg.rope_theta)  # (B, 1, D)
    x = model.model.embed_tokens(torch.tensor(tokens, device=dev)[:, None])  # (B, 1, d)
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = apply_rope(attn.q_proj(h).view(B, 1, H, D).transpose(1, 2), cos, sin)  # (B, H, 1, D)
        k = apply_rope(attn.k_proj(h).view(B, 1, K, D).transpose(1, 2), cos, sin)  # (B, K, 1, D)
        v = attn.v_proj(h).view(B, 1, K, D).transpose(1, 2)
        manager.k[i, write], manager.v[i, write] = k[:, :, 0], v[:, :, 0]
        o = attention(q[:, :, 0], manager.k[i], manager.v[i], block_tables, seq_lens, b)  # (B, H, D)
        x = x + attn.o_proj(o.reshape(B, 1, H * D))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))[:, -1]
