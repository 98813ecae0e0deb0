r"""FlashAttention forward as a Triton kernel (compiled on a GPU, interpreted on CPU).

One program instance computes a ``BLOCK_M`` tile of query rows of one (batch, head): it walks
over key/value tiles of ``BLOCK_N`` columns, keeping the running row maximum ``m``, the running
normaliser ``l`` and the unnormalised output ``acc`` (the online softmax of
:func:`llmcore.architecture.attention.flash_attention`), so the ``N x N`` score matrix never
exists in memory. GQA/MQA: query head ``h`` reads key/value head ``h // (H / K)``.

On a machine without CUDA, :mod:`llmcore.core.triton_env` sets ``TRITON_INTERPRET=1`` before
Triton is imported; the interpreter executes the same kernel with numpy on CPU tensors (slow:
use tiny sizes).
"""

from __future__ import annotations

import math

import torch

from llmcore.core.errors import LLMCoreError
from llmcore.core.triton_env import INTERPRET, available, tl, triton, why_unavailable

if triton is not None:

    @triton.jit
    def _flash_fwd_kernel(Q, K, V, Out, sm_scale, N,
                          s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
                          H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        kh = h // GROUP  # the key/value head this query head shares
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :],
                    mask=offs_m[:, None] < N, other=0.0)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # running row max
        l_i = tl.zeros((BLOCK_M,), tl.float32)  # running sum of exp(s - m)
        acc = tl.zeros((BLOCK_M, D), tl.float32)  # running sum of exp(s - m) v
        hi = tl.minimum(N, (start_m + 1) * BLOCK_M) if CAUSAL else N  # causal: skip tiles above the diagonal
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            k = tl.load(K + b * s_kb + kh * s_kh + cols[:, None] * s_kn + offs_d[None, :],
                        mask=cols[:, None] < N, other=0.0)
            v = tl.load(V + b * s_vb + kh * s_vh + cols[:, None] * s_vn + offs_d[None, :],
                        mask=cols[:, None] < N, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale  # (BLOCK_M, BLOCK_N)
            valid = cols[None, :] < N
            if CAUSAL:
                valid = valid & (offs_m[:, None] >= cols[None, :])
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)  # rescales what was accumulated under the old max
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(Out + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :], out,
                 mask=offs_m[:, None] < N)


def flash_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                           block_m: int = 16, block_n: int = 16) -> torch.Tensor:
    """``q (B, H, N, D)``, ``k, v (B, K, N, D)`` -> ``(B, H, N, D)`` (fp32). ``D`` a power of two >= 16."""
    if not available():
        raise LLMCoreError(why_unavailable())
    B, H, N, D = q.shape
    Kh = k.shape[1]
    if H % Kh or D < 16 or D & (D - 1):
        raise LLMCoreError(f"need H % K == 0 and a power-of-two head size >= 16, got H={H}, K={Kh}, D={D}")
    if INTERPRET and q.is_cuda:
        raise LLMCoreError("TRITON_INTERPRET=1 runs kernels on CPU tensors; move q, k, v to the CPU")
    if not INTERPRET and not (q.is_cuda and k.is_cuda and v.is_cuda):
        raise LLMCoreError("the compiled Triton kernel needs CUDA tensors (move q, k, v with "
                           ".to(triton_env.kernel_device())), or set TRITON_INTERPRET=1 before importing triton")
    q, k, v = (t.contiguous().float() for t in (q, k, v))
    o = torch.empty_like(q)
    grid = (triton.cdiv(N, block_m), B * H)
    _flash_fwd_kernel[grid](q, k, v, o, 1.0 / math.sqrt(D), N,
                            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                            H=H, GROUP=H // Kh, D=D, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal)
    return o
