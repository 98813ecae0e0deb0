r"""Operator fusion: residual add + RMSNorm in one kernel (vLLM's ``fused_add_rms_norm``).

Every decoder block ends a sub-layer with ``h = x + residual`` and starts the next with ``RMSNorm(h)``.
Unfused, that is three passes over memory (read ``x``, ``r``, write ``h``; read ``h`` for the mean of
squares; read ``h`` again, write ``y``); fused, one program per row reads ``x`` and ``r`` once and writes
``h`` and

$$ y = g \odot \frac{h}{\sqrt{\tfrac1d \sum_i h_i^2 + \epsilon}}, \qquad h = x + r, $$

so a memory-bound step moves ~half the bytes. ``x, r (N, d)``, ``g (d,)`` -> ``y, h (N, d)``.

:func:`add_rmsnorm` is the unfused reference (the kit's :class:`~llmcore.architecture.llama.RMSNorm`
formula), :func:`add_rmsnorm_triton` the fused Triton kernel: compiled on a GPU, run by Triton's
interpreter on CPU tensors here (slow: the interpreter checks semantics, not speed -- keep sizes small).
``torch.compile(add_rmsnorm)`` fuses the same graph with Inductor; on this 2-core CPU its first compile
takes ~25 s, too long for the toy budget, so the chapter times it only on a GPU (``toy=False``).
"""

from __future__ import annotations

import time

import torch

from llmcore.core.errors import LLMCoreError
from llmcore.core.triton_env import available, tl, triton, why_unavailable


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfused reference: ``h = x + residual``; ``y = weight * h / sqrt(mean(h^2) + eps)`` (in fp32)."""
    h = x + residual
    hf = h.float()
    y = weight * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)
    return y, h


if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(X, R, W, Y, H, d, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < d
        x = tl.load(X + row * d + cols, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(R + row * d + cols, mask=mask, other=0.0).to(tl.float32)
        h = x + r
        tl.store(H + row * d + cols, h, mask=mask)
        inv = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / d + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + row * d + cols, w * (h * inv), mask=mask)


def add_rmsnorm_triton(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel: one Triton program per row of ``x, residual (N, d)``; returns ``(y, h)``."""
    if not available():
        raise LLMCoreError(why_unavailable())
    if x.shape != residual.shape or x.shape[-1] != weight.shape[0]:
        raise LLMCoreError(f"shapes do not fit: x {tuple(x.shape)}, residual {tuple(residual.shape)}, "
                           f"weight {tuple(weight.shape)}")
    x2, r2 = x.reshape(-1, x.shape[-1]).contiguous(), residual.reshape(-1, x.shape[-1]).contiguous()
    y, h = torch.empty_like(x2), torch.empty_like(x2)
    d = x2.shape[1]
    _add_rmsnorm_kernel[(x2.shape[0],)](x2, r2, weight.contiguous(), y, h, d, eps, BLOCK=triton.next_power_of_2(d))
    return y.view_as(x), h.view_as(x)


def time_fusion(n: int, d: int, device: torch.device, repeats: int = 50) -> dict[str, float]:
    """Seconds per call of the unfused reference, ``torch.compile`` of it and the Triton kernel (a GPU's numbers:
    on CPU the kernel runs in the interpreter and the compile takes ~25 s, so the chapter calls this with
    ``toy=False`` only)."""
    x, r = torch.randn(n, d, device=device), torch.randn(n, d, device=device)
    w = torch.randn(d, device=device)
    fns = {"unfused": add_rmsnorm, "torch.compile": torch.compile(add_rmsnorm), "triton": add_rmsnorm_triton}
    out = {}
    for name, fn in fns.items():
        fn(x, r, w)  # compile / warm up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(x, r, w)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t0) / repeats
    return out
