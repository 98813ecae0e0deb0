r"""The roofline model, with both ceilings measured on this machine, and fusion as a move to the right.

A kernel that does ``F`` floating-point operations and moves ``Q`` bytes between memory and the chip has
arithmetic intensity ``I = F / Q`` (FLOP/byte). With peak compute ``P`` (FLOP/s) and memory bandwidth
``B`` (bytes/s) it runs at most at

.. math:: \text{attainable FLOP/s} = \min(P,\; B \cdot I) ,

memory-bound left of the ridge point ``I^* = P / B``, compute-bound right of it (Williams et al. 2009).
Here ``P`` is the FLOP rate of a large fp32 matmul and ``B`` the rate of a large ``copy_`` (read +
write), both timed on this machine. Fusion keeps intermediates in registers: the unfused softmax
``max, x - m, exp, sum, / l`` moves ~9 ``(M, N)`` arrays through memory, the fused one 2, so the same
FLOPs over fewer bytes move the kernel to the right -- closer to the ceiling when it is memory-bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmcore.engineering.cuda_precision import cpp_ext, kernels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, reps: int = 5, min_s: float = 0.0) -> float:
    """Best-of-``reps`` seconds per call of ``fn`` (after one warm-up call); ``min_s`` repeats a rep until it is that long."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            _sync(device)
            dt = time.perf_counter() - t0
            if dt >= min_s:
                break
        best = min(best, dt / n)
    return best


@dataclass
class Ceilings:
    """Measured peak compute (matmul) and memory bandwidth (copy) of one device."""

    flops: float  # FLOP/s of an n x n fp32 matmul
    bandwidth: float  # bytes/s of copy_ (bytes read + bytes written)
    matmul_n: int
    copy_mb: float

    @property
    def ridge(self) -> float:
        """Arithmetic intensity where the two roofs meet (FLOP/byte)."""
        return self.flops / self.bandwidth


def measure_ceilings(device: torch.device, matmul_n: int = 1024, copy_mb: float = 64.0) -> Ceilings:
    """Time an ``n x n`` fp32 matmul (``2 n^3`` FLOP) and a ``copy_`` of ``copy_mb`` MB (2x that many bytes moved)."""
    a = torch.randn(matmul_n, matmul_n, device=device)
    b = torch.randn(matmul_n, matmul_n, device=device)
    t_mm = time_fn(lambda: a @ b, device, reps=5, min_s=0.05)
    n = int(copy_mb * 2 ** 20 / 4)
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    t_cp = time_fn(lambda: dst.copy_(src), device, reps=5, min_s=0.02)
    return Ceilings(2 * matmul_n ** 3 / t_mm, 2 * n * 4 / t_cp, matmul_n, copy_mb)


@dataclass
class KernelPoint:
    """One kernel on the roofline: FLOPs and bytes by formula, time measured."""

    name: str
    flops: float
    bytes: float
    seconds: float

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    @property
    def achieved(self) -> float:
        return self.flops / self.seconds


def softmax_cost(m: int, n: int, fused: bool) -> tuple[float, float]:
    """FLOPs (max, sub, exp, sum, div: 5 per element) and fp32 bytes of a row softmax of ``(m, n)``.

    Fused: read ``x`` once, write ``y`` once (2 arrays). Unfused torch chain: ``amax`` reads x; ``x - m``
    reads x, writes d; ``exp`` reads d, writes e; ``sum`` reads e; ``e / s`` reads e, writes y: 8 arrays
    (the ``(m, 1)`` row vectors are negligible).
    """
    return 5.0 * m * n, (2 if fused else 8) * 4.0 * m * n


def rmsnorm_cost(m: int, n: int, fused: bool) -> tuple[float, float]:
    """FLOPs (square, sum, scale by r, scale by w: 4 per element) and fp32 bytes of RMSNorm of ``(m, n)``.

    Fused: read x, write y (2 arrays). Unfused ``x * rsqrt(mean(x^2) + eps) * w``: ``pow`` reads x writes
    x2; ``mean`` reads x2; ``x * r`` reads x writes t; ``t * w`` reads t writes y: 7 arrays.
    """
    return 4.0 * m * n, (2 if fused else 7) * 4.0 * m * n


def measure_points(device: torch.device, rows: int = 2048, cols: int = 1024, add_n: int = 2 ** 22,
                   mm_n: int = 512, use_triton: bool = False) -> dict[str, KernelPoint]:
    """Time each kernel at a size that leaves the cache; ``use_triton`` (a GPU) times our compiled Triton kernels,
    otherwise torch's CPU kernels of the same operations (the interpreter's speed means nothing)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, cols, generator=gen).to(device)
    w = torch.ones(cols, device=device)
    v1, v2 = torch.randn(add_n, device=device), torch.randn(add_n, device=device)
    a, b = torch.randn(mm_n, mm_n, device=device), torch.randn(mm_n, mm_n, device=device)
    if use_triton:
        fns = {"vector add": lambda: kernels.vector_add(v1, v2, block=1024),
               "softmax (fused)": lambda: kernels.softmax(x, block=1024),
               "RMSNorm (fused)": lambda: kernels.rmsnorm_forward(x, w),
               "matmul": lambda: kernels.matmul(a, b)}
    else:
        fns = {"vector add": lambda: torch.add(v1, v2),
               "softmax (fused)": lambda: torch.softmax(x, -1),
               "RMSNorm (fused)": lambda: torch.nn.functional.rms_norm(x, (cols,), w, 1e-6),
               "matmul": lambda: a @ b}
    ext = None
    if device.type == "cpu" and cpp_ext.is_built("cpu"):  # torch's CPU rms_norm is not one fused pass; ours is
        ext = cpp_ext.build("cpu")[0]
        fns["RMSNorm (C++ fused)"] = lambda: cpp_ext.rmsnorm_ext(ext, x, w)
    fns["softmax (unfused)"] = lambda: kernels.softmax_unfused(x)
    fns["RMSNorm (unfused)"] = lambda: kernels.rmsnorm_torch(x, w)
    costs = {"vector add": (float(add_n), 12.0 * add_n),
             "softmax (fused)": softmax_cost(rows, cols, True), "softmax (unfused)": softmax_cost(rows, cols, False),
             "RMSNorm (fused)": rmsnorm_cost(rows, cols, True), "RMSNorm (unfused)": rmsnorm_cost(rows, cols, False),
             "RMSNorm (C++ fused)": rmsnorm_cost(rows, cols, True),
             "matmul": (2.0 * mm_n ** 3, 3 * 4.0 * mm_n ** 2)}
    return {k: KernelPoint(k, *costs[k], time_fn(fn, device, reps=5, min_s=0.01)) for k, fn in fns.items()}


def fusion_speedups(points: dict[str, KernelPoint]) -> dict[str, float]:
    """Unfused time / fused time for softmax and RMSNorm, from one :func:`measure_points` run."""
    out = {op: points[f"{op} (unfused)"].seconds / points[f"{op} (fused)"].seconds for op in ("softmax", "RMSNorm")}
    if "RMSNorm (C++ fused)" in points:
        out["RMSNorm (C++ extension)"] = points["RMSNorm (unfused)"].seconds / points["RMSNorm (C++ fused)"].seconds
    return out
