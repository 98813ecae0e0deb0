r"""One fused kernel (RMSNorm forward) as a C++ / CUDA extension built with ``torch.utils.cpp_extension.load_inline``.

``load_inline`` writes the sources into a build directory, compiles them with the system compiler (g++,
and nvcc for ``.cu``) through ninja, links against libtorch and imports the result as a Python module.
The build directory here is ``output/torch_extensions/<name>/``: a second call with unchanged sources
finds the built ``.so`` and only loads it (no compiler run).

* CPU: one loop per row in C++ -- ``sum x^2`` in double, then ``y = x * r * w`` -- the whole RMSNorm in one
  pass over ``x`` (the fused kernel a compiler would generate).
* CUDA (only where a GPU and nvcc exist): one thread block per row, a shared-memory tree reduction of
  ``x^2``, then every thread scales its elements.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from llmcore.core.errors import LLMCoreError
from llmcore.core.paths import output_dir

CPP_SOURCE = r"""
#include <torch/extension.h>
#include <cmath>

torch::Tensor rmsnorm_cpu(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && !x.is_cuda(), "x: 2-D float32 CPU tensor");
  auto xc = x.contiguous();
  auto wc = w.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t M = xc.size(0), N = xc.size(1);
  const float* px = xc.data_ptr<float>();
  const float* pw = wc.data_ptr<float>();
  float* py = y.data_ptr<float>();
  for (int64_t i = 0; i < M; ++i) {
    const float* row = px + i * N;
    double ss = 0.0;
    for (int64_t j = 0; j < N; ++j) ss += (double)row[j] * row[j];
    const float r = 1.0f / std::sqrt((float)(ss / N) + (float)eps);
    for (int64_t j = 0; j < N; ++j) py[i * N + j] = row[j] * r * pw[j];
  }
  return y;
}
"""

CUDA_SOURCE = r"""
#include <torch/extension.h>

__global__ void rmsnorm_kernel(const float* x, const float* w, float* y, int N, float eps) {
  extern __shared__ float buf[];
  const int row = blockIdx.x;
  const float* xr = x + (size_t)row * N;
  float s = 0.f;
  for (int j = threadIdx.x; j < N; j += blockDim.x) s += xr[j] * xr[j];
  buf[threadIdx.x] = s;
  __syncthreads();
  for (int k = blockDim.x / 2; k > 0; k >>= 1) {
    if (threadIdx.x < k) buf[threadIdx.x] += buf[threadIdx.x + k];
    __syncthreads();
  }
  const float r = rsqrtf(buf[0] / N + eps);
  for (int j = threadIdx.x; j < N; j += blockDim.x) y[(size_t)row * N + j] = xr[j] * r * w[j];
}

torch::Tensor rmsnorm_cuda(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x: 2-D float32 CUDA tensor");
  auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  const int threads = 256;
  rmsnorm_kernel<<<xc.size(0), threads, threads * sizeof(float)>>>(
      xc.data_ptr<float>(), w.contiguous().data_ptr<float>(), y.data_ptr<float>(), (int)xc.size(1), (float)eps);
  return y;
}
"""

CUDA_DECL = "torch::Tensor rmsnorm_cuda(torch::Tensor x, torch::Tensor w, double eps);"


def build_dir(name: str) -> Path:
    return output_dir() / "torch_extensions" / name


def is_built(device: str = "cpu") -> bool:
    """A built extension for ``device`` is in the build directory (loading it then needs no compiler run)."""
    name = ext_name(device)
    return any(build_dir(name).glob(f"{name}*.so"))


def ext_name(device: str) -> str:
    return "llmcore_rmsnorm_cuda" if device == "cuda" else "llmcore_rmsnorm_cpu"


def build(device: str = "cpu", verbose: bool = False) -> tuple[object, float]:
    """Compile (or load the cached build of) the extension for ``"cpu"`` or ``"cuda"``; returns ``(module, seconds)``."""
    from torch.utils.cpp_extension import load_inline  # optional: needs a C++ compiler and ninja at call time

    if shutil.which("c++") is None and shutil.which("g++") is None:
        raise LLMCoreError("no C++ compiler (g++/c++) on PATH: the extension cannot be built here")
    name = ext_name(device)
    d = build_dir(name)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if device == "cuda":
        if not torch.cuda.is_available() or shutil.which("nvcc") is None:
            raise LLMCoreError("the CUDA extension needs a CUDA GPU and nvcc; build device='cpu' instead")
        mod = load_inline(name, cpp_sources=CUDA_DECL, cuda_sources=CUDA_SOURCE, functions=["rmsnorm_cuda"],
                          build_directory=str(d), verbose=verbose, extra_cflags=["-O2"])
    elif device == "cpu":
        mod = load_inline(name, cpp_sources=CPP_SOURCE, functions=["rmsnorm_cpu"], build_directory=str(d),
                          verbose=verbose, extra_cflags=["-O2"])
    else:
        raise LLMCoreError(f"device={device!r}; the extension is built for 'cpu' or 'cuda'")
    return mod, time.perf_counter() - t0


def rmsnorm_ext(mod: object, x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Call the built extension on ``x (M, N)``, ``w (N,)`` (fp32, on the extension's device)."""
    fn = mod.rmsnorm_cuda if hasattr(mod, "rmsnorm_cuda") else mod.rmsnorm_cpu
    return fn(x.float(), w.float(), eps)
