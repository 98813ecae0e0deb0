r"""Why quantization accelerates: INT8 GEMMs, and decode as a memory-bound matrix-vector product.

**INT8 GEMM.** With per-row absmax scales (the kit's :func:`~llmcore.architecture.quantization.quantize_absmax`)
``x ~ s_x q_x`` (per token) and ``W ~ s_w q_w`` (per output channel),

.. math:: x W^\top \approx (s_x s_w^\top) \odot (q_x q_w^\top), \qquad q_x q_w^\top \in \mathbb Z^{M \times N}
          \text{ exact in int32 (|sum| <= K \cdot 127^2)},

so the hot loop is an integer GEMM (``torch._int_mm``: int8 x int8 -> int32) and only the scales are
floating point. Weight-only INT8 (W8A16, ``torch.ops.aten._weight_int8pack_mm``) keeps ``x`` in 16/32 bits
and dequantizes the weight tile by tile inside the kernel.

**Decode is memory-bound.** Generating one token multiplies a ``(1, K)`` activation by every weight
matrix: ``2 K N`` FLOPs for ``K N`` weights, i.e. ``I = 2 / b`` FLOP/byte for ``b`` bytes per weight -- far
left of any ridge point. Time per token is then ~ weight bytes / bandwidth, so tokens/s scales with
``1 / b``: fp32 (4) -> bf16 (2) -> int8 (1) -> int4 (0.5) bytes per weight (W4A16 halves int8 again).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmcore.architecture.lowbit import has_int8pack_mm
from llmcore.architecture.quantization import int8_matmul, quantize_absmax
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError
from llmcore.engineering.cuda_precision.roofline import time_fn


def has_int_mm() -> bool:
    return hasattr(torch, "_int_mm")


def int8_gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x (M, K) @ w (N, K)^T`` through ``torch._int_mm`` on absmax-INT8 operands, rescaled in fp32."""
    if not has_int_mm():
        raise LLMCoreError("this torch has no torch._int_mm (INT8 GEMM); upgrade torch (>= 2.1)")
    qx, qw = quantize_absmax(x), quantize_absmax(w)
    acc = torch._int_mm(qx.data, qw.data.t().contiguous())  # (M, N) int32
    return acc.float() * qx.scale.float() * qw.scale.float().t()


def int_mm_exact(m: int = 32, k: int = 64, n: int = 48, seed: int = 0) -> int:
    """Max |torch._int_mm - exact integer product| on random int8 operands (0: the int32 accumulation is exact)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), generator=gen, dtype=torch.int8)
    return int((torch._int_mm(a, b).long() - a.long() @ b.long()).abs().max())


def int8_checks(m: int = 32, k: int = 128, n: int = 64, seed: int = 0) -> dict[str, float]:
    """INT8 GEMM vs the kit's exact (float64) INT8 product, and W8A16 ``_weight_int8pack_mm`` vs its dequantized
    matmul; also each one's relative error against the fp32 product."""
    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
    ref = x @ w.t()
    out = {"int_mm exact (max int diff)": float(int_mm_exact(seed=seed))}
    y8 = int8_gemm(x, w)
    out["int8 GEMM vs kit int8_matmul (rel)"] = float((y8 - int8_matmul(x, w)).abs().max() / ref.abs().max())
    out["int8 GEMM vs fp32 (rel)"] = float((y8 - ref).abs().max() / ref.abs().max())
    if has_int8pack_mm():
        qw = quantize_absmax(w)
        y = torch.ops.aten._weight_int8pack_mm(x, qw.data, qw.scale.float().reshape(-1))
        deq = x @ qw.dequantize().t()
        out["W8A16 int8pack_mm vs dequantized matmul (rel)"] = float((y - deq).abs().max() / ref.abs().max())
        out["W8A16 vs fp32 (rel)"] = float((y - ref).abs().max() / ref.abs().max())
    return out


@dataclass
class DecodePoint:
    """One weight format at batch 1: bytes of weight read per token and the measured time per token."""

    name: str
    weight_bytes: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.seconds

    @property
    def gbps(self) -> float:
        return self.weight_bytes / self.seconds / 1e9


def decode_sweep(k: int = 2048, n: int = 2048, layers: int = 4, device: torch.device = CPU,
                 seed: int = 0) -> list[DecodePoint]:
    """A "model" of ``layers`` ``(n, k)`` weight matrices applied to one token: fp32, bf16 and (on CPU) INT8
    weight-only; time per token for each. The matrices are distinct, so the weights come from memory, not cache."""
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(n, k, generator=gen).to(device) for _ in range(layers)]
    x = torch.randn(1, k, generator=gen).to(device)
    pts = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        wd, xd = [w.to(dtype) for w in ws], x.to(dtype)
        t = time_fn(lambda wd=wd, xd=xd: [torch.nn.functional.linear(xd, w) for w in wd], device, reps=5)
        pts.append(DecodePoint(name, sum(w.nbytes for w in wd), t))
    if has_int8pack_mm() and device.type == "cpu":
        qs = [quantize_absmax(w) for w in ws]
        data = [q.data for q in qs]
        scales = [q.scale.float().reshape(-1) for q in qs]
        xb = x.to(torch.bfloat16)
        sb = [s.to(torch.bfloat16) for s in scales]
        t = time_fn(lambda: [torch.ops.aten._weight_int8pack_mm(xb, d, s) for d, s in zip(data, sb)], device, reps=5)
        pts.append(DecodePoint("int8 (W8A16)", sum(d.nbytes + s.nbytes for d, s in zip(data, sb)), t))
    return pts
