r"""Four Triton kernels and their torch references: vector add, online softmax, RMSNorm (fwd + bwd), matmul.

Triton's model: a *program* (one CUDA thread block) handles one tile; ``tl.arange`` gives it a vector of
offsets, ``tl.load``/``tl.store`` move whole tiles between global memory and registers, with a mask for
the ragged edge. ``grid`` says how many programs run. On a machine without a GPU,
:mod:`llmcore.core.triton_env` sets ``TRITON_INTERPRET=1`` first and the same kernels run in Triton's
numpy interpreter on CPU tensors (slowly: keep sizes small); on a GPU they are compiled.

* **vector add** ``z = x + y``: ``(n,)`` tiles of ``BLOCK``; 2 reads + 1 write per element.
* **online softmax**, row-wise, ``(M, N) -> (M, N)``. One pass keeps the running maximum ``m`` and the
  running normaliser ``l`` over column tiles (Milakov & Gimelshein 2018)::

      m' = max(m, max_j x_j)      l' = l * exp(m - m') + sum_j exp(x_j - m')

  then a second pass writes ``exp(x - m) / l``: the row is read twice and written once, whatever ``N``
  (a naive safe softmax reads it three times, and the unfused torch chain max/sub/exp/sum/div
  materialises four intermediates).
* **RMSNorm** ``y = x * r * w`` with ``r = (mean(x^2) + eps)^{-1/2}`` per row, ``x (M, N)``, ``w (N,)``;
  the forward stores ``r (M,)`` for the backward. With ``g = dy * w`` and ``\hat x = x r``::

      dx = r * (g - \hat x * mean_j(g_j \hat x_j))          dw = sum_rows dy * \hat x

  (the kernel writes per-row ``dy * \hat x``; a torch ``sum(0)`` reduces them).
* **tiled matmul** ``C (M, N) = A (M, K) @ B (K, N)``: each program owns a ``BLOCK_M x BLOCK_N`` tile of
  ``C`` and walks ``K`` in ``BLOCK_K`` steps, accumulating in fp32; ``triton.autotune`` times a small
  list of block shapes once per ``(M, N, K)`` and keeps the fastest (on CPU the timer is a wall clock,
  :func:`_cpu_bench`; on a GPU Triton's ``do_bench``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from llmcore.core.errors import LLMCoreError
from llmcore.core.triton_env import INTERPRET, available, kernel_device, tl, triton, why_unavailable


def _cpu_bench(kernel_call, quantiles=None, reps: int = 2):
    """Autotuner timer for the interpreter (Triton's ``do_bench`` needs CUDA events): best of ``reps`` wall times, ms."""
    kernel_call()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        kernel_call()
        best = min(best, time.perf_counter() - t0)
    ms = best * 1e3
    return [ms] * len(quantiles) if quantiles else ms


#: the autotune list: (BLOCK_M, BLOCK_N, BLOCK_K); small on purpose (each is timed once per shape)
MATMUL_BLOCKS = ((16, 16, 16), (32, 32, 16), (32, 32, 32))

if triton is not None:

    @triton.jit
    def _add_kernel(X, Y, Z, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(Z + offs, tl.load(X + offs, mask=mask) + tl.load(Y + offs, mask=mask), mask=mask)

    @triton.jit
    def _softmax_kernel(X, Y, N, stride, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        x_ptr = X + row * stride
        m = tl.full((), float("-inf"), tl.float32)  # running max
        norm = tl.zeros((), tl.float32)  # running sum of exp(x - m)
        for start in range(0, N, BLOCK):  # pass 1: online max and normaliser
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + cols, mask=cols < N, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            norm = norm * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
            m = m_new
        for start in range(0, N, BLOCK):  # pass 2: normalised output
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + cols, mask=cols < N, other=float("-inf")).to(tl.float32)
            tl.store(Y + row * stride + cols, tl.exp(x - m) / norm, mask=cols < N)

    @triton.jit
    def _rmsnorm_fwd_kernel(X, W, Y, R, N, stride, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(x * x, 0) / N + eps)
        w = tl.load(W + cols, mask=mask, other=0.0)
        tl.store(Y + row * stride + cols, x * r * w, mask=mask)
        tl.store(R + row, r)

    @triton.jit
    def _rmsnorm_bwd_kernel(X, W, R, DY, DX, DWP, N, stride, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0)
        r = tl.load(R + row)
        xhat = x * r
        g = dy * w
        c = tl.sum(g * xhat, 0) / N
        tl.store(DX + row * stride + cols, r * (g - xhat * c), mask=mask)
        tl.store(DWP + row * stride + cols, dy * xhat, mask=mask)

    @triton.autotune(configs=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk})
                              for bm, bn, bk in MATMUL_BLOCKS],
                     key=["M", "N", "K"], do_bench=_cpu_bench if INTERPRET else None)
    @triton.jit
    def _matmul_kernel(A, B, C, M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(A + rm[:, None] * s_am + kk[None, :] * s_ak,
                        mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            b = tl.load(B + kk[:, None] * s_bk + rn[None, :] * s_bn,
                        mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
            acc += tl.dot(a, b, input_precision="ieee")
        tl.store(C + rm[:, None] * s_cm + rn[None, :] * s_cn, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


# ---- launchers ------------------------------------------------------------------------------------
def _check(*tensors: torch.Tensor) -> None:
    """One clear error when Triton cannot run here or the tensors live on the wrong device."""
    if not available():
        raise LLMCoreError(why_unavailable())
    want = kernel_device().type
    for t in tensors:
        if t.device.type != want:
            raise LLMCoreError(f"Triton kernels take {want} tensors here ({'interpreter' if INTERPRET else 'compiled'}),"
                               f" got a {t.device.type} tensor; move it with .to(triton_env.kernel_device())")


def _pow2(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


def vector_add(x: torch.Tensor, y: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``x + y`` for 1-D tensors of equal length (any float dtype)."""
    _check(x, y)
    if x.shape != y.shape or x.dim() != 1:
        raise LLMCoreError(f"vector_add takes two 1-D tensors of equal length, got {tuple(x.shape)}, {tuple(y.shape)}")
    z = torch.empty_like(x)
    _add_kernel[(triton.cdiv(x.numel(), block),)](x.contiguous(), y.contiguous(), z, x.numel(), BLOCK=block)
    return z


def softmax(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Row-wise online softmax of ``x (M, N)`` in one kernel; fp32 math, output in ``x.dtype``."""
    _check(x)
    if x.dim() != 2:
        raise LLMCoreError(f"softmax takes a 2-D tensor (M, N), got shape {tuple(x.shape)}")
    x = x.contiguous()
    y = torch.empty_like(x)
    _softmax_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), BLOCK=block)
    return y


def rmsnorm_forward(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (M, N) fp32, w (N,) -> (y (M, N), r (M,))``; one program per row (``N`` up to a tile)."""
    _check(x, w)
    if x.dim() != 2 or w.shape != (x.shape[1],):
        raise LLMCoreError(f"rmsnorm takes x (M, N) and w (N,), got {tuple(x.shape)} and {tuple(w.shape)}")
    x = x.contiguous().float()
    y, r = torch.empty_like(x), torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    _rmsnorm_fwd_kernel[(x.shape[0],)](x, w.contiguous().float(), y, r, x.shape[1], x.stride(0), eps,
                                       BLOCK=_pow2(x.shape[1]))
    return y, r


def rmsnorm_backward(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor,
                     dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(dx (M, N), dw (N,))`` of RMSNorm given the saved ``r (M,)`` and the upstream ``dy``."""
    _check(x, w, r, dy)
    x, dy = x.contiguous().float(), dy.contiguous().float()
    dx, dwp = torch.empty_like(x), torch.empty_like(x)
    _rmsnorm_bwd_kernel[(x.shape[0],)](x, w.contiguous().float(), r, dy, dx, dwp, x.shape[1], x.stride(0),
                                       BLOCK=_pow2(x.shape[1]))
    return dx, dwp.sum(0)


class RMSNormFn(torch.autograd.Function):
    """RMSNorm whose forward and backward are the Triton kernels (so ``loss.backward()`` uses them)."""

    @staticmethod
    def forward(ctx, x, w, eps):
        y, r = rmsnorm_forward(x, w, eps)
        ctx.save_for_backward(x, w, r)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, r = ctx.saved_tensors
        dx, dw = rmsnorm_backward(x, w, r, dy)
        return dx, dw, None


def rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Differentiable Triton RMSNorm of ``x (M, N)`` with gain ``w (N,)``."""
    return RMSNormFn.apply(x, w, eps)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (M, K) @ b (K, N)`` in fp32 (IEEE products) with autotuned tiles; :func:`matmul_best_config` tells which."""
    _check(a, b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise LLMCoreError(f"matmul needs (M, K) @ (K, N), got {tuple(a.shape)} @ {tuple(b.shape)}")
    a, b = a.float(), b.float()
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, device=a.device, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))

    _matmul_kernel[grid](a, b, c, M, N, K, *a.stride(), *b.stride(), *c.stride())
    return c


def matmul_best_config() -> dict[str, int]:
    """Block sizes the autotuner picked on its last tuning (empty before the first call)."""
    best = getattr(_matmul_kernel, "best_config", None) if triton is not None else None
    return dict(best.kwargs) if best is not None else {}


# ---- torch references -----------------------------------------------------------------------------
def rmsnorm_torch(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The unfused reference: four torch ops (pow, mean, rsqrt, two muls), each a pass over memory."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def softmax_unfused(x: torch.Tensor) -> torch.Tensor:
    """Safe softmax as five separate torch ops (max, sub, exp, sum, div): what fusion removes."""
    m = x.amax(-1, keepdim=True)
    e = torch.exp(x - m)
    return e / e.sum(-1, keepdim=True)


@dataclass
class KernelCheck:
    """One kernel's comparison with torch: max |ours - torch| against the stated tolerance."""

    name: str
    shape: str
    max_abs_err: float
    tol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_err <= self.tol


#: tolerances (fp32): add is exact; softmax/RMSNorm differ from torch only in summation order;
#: the matmul accumulates K products in a different order (bound ~ K * eps * |a||b|)
TOLERANCES = {"vector add": 0.0, "online softmax": 1e-6, "RMSNorm forward": 1e-5, "RMSNorm backward dx": 1e-5,
              "RMSNorm backward dw": 1e-4, "tiled matmul (autotuned)": 1e-4}


def check_kernels(sizes: dict[str, int], seed: int = 0) -> list[KernelCheck]:
    """Run every kernel on random fp32 inputs of ``sizes`` (``n``, ``rows``, ``cols``, ``mm``) and compare with torch."""
    dev = kernel_device()
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dev)

    out = []
    n, rows, cols, mm = sizes["n"], sizes["rows"], sizes["cols"], sizes["mm"]
    x, y = rand(n), rand(n)
    out.append(KernelCheck("vector add", f"({n},)", float((vector_add(x, y) - (x + y)).abs().max()),
                           TOLERANCES["vector add"]))
    s = rand(rows, cols) * 4
    out.append(KernelCheck("online softmax", f"({rows}, {cols})",
                           float((softmax(s, block=max(16, cols // 4)) - torch.softmax(s, -1)).abs().max()),
                           TOLERANCES["online softmax"]))
    xn, w = rand(rows, cols), 1 + 0.1 * rand(cols)
    xr, wr = xn.clone().requires_grad_(), w.clone().requires_grad_()
    xt, wt = xn.clone().requires_grad_(), w.clone().requires_grad_()
    dy = rand(rows, cols)
    yo = rmsnorm(xr, wr)
    yo.backward(dy)
    yo = yo.detach()
    yt = torch.nn.functional.rms_norm(xt, (cols,), wt, eps=1e-6)
    yt.backward(dy)
    yt = yt.detach()
    out.append(KernelCheck("RMSNorm forward", f"({rows}, {cols})", float((yo - yt).abs().max()),
                           TOLERANCES["RMSNorm forward"]))
    out.append(KernelCheck("RMSNorm backward dx", f"({rows}, {cols})", float((xr.grad - xt.grad).abs().max()),
                           TOLERANCES["RMSNorm backward dx"]))
    out.append(KernelCheck("RMSNorm backward dw", f"({cols},)", float((wr.grad - wt.grad).abs().max()),
                           TOLERANCES["RMSNorm backward dw"]))
    a, b = rand(mm, mm + 8), rand(mm + 8, mm - 8)
    out.append(KernelCheck("tiled matmul (autotuned)", f"({mm}, {mm + 8}) @ ({mm + 8}, {mm - 8})",
                           float((matmul(a, b) - a @ b).abs().max()), TOLERANCES["tiled matmul (autotuned)"]))
    return out


def python_fn(kernel):
    """The Python function under a ``@triton.jit`` / ``@triton.autotune`` kernel (for ``show_source``)."""
    while hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel
