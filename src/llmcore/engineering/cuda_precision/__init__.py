r"""Kernels and precision: Triton kernels, the roofline, number formats, mixed precision, quantized GEMMs.

A package: :mod:`.kernels` (vector add, online softmax, RMSNorm fwd + bwd, autotuned tiled matmul in Triton,
with torch references), :mod:`.cpp_ext` (the same RMSNorm as a C++ / CUDA extension via ``load_inline``),
:mod:`.roofline` (measured ceilings, kernel intensities, fused vs unfused), :mod:`.formats` (fp32 ... fp8
from their bits, sum rounding and Kahan), :mod:`.mixed` (autocast training, our dynamic loss scaler,
fp16 underflow), :mod:`.quant_gemm` (INT8 GEMMs, memory-bound decode), :mod:`.closed_loop` (the
configuration, the experiment and its report), :mod:`.plots`.

Triton kernels are compiled on a CUDA GPU and run by Triton's interpreter on CPU tensors otherwise
(:mod:`llmcore.core.triton_env` chooses before Triton is imported).
"""

from __future__ import annotations

from llmcore.engineering.cuda_precision.closed_loop import (
    LOSS_TOL,
    KernelsConfig,
    KernelsResult,
    experiment,
    make_report,
    run,
)
from llmcore.engineering.cuda_precision.formats import FORMATS, decode, format_table, kahan_sum, naive_sum
from llmcore.engineering.cuda_precision.kernels import matmul, rmsnorm, softmax, vector_add
from llmcore.engineering.cuda_precision.mixed import DynamicLossScaler, train_mixed

__all__ = ["LOSS_TOL", "KernelsConfig", "KernelsResult", "experiment", "make_report", "run", "FORMATS", "decode",
           "format_table", "kahan_sum", "naive_sum", "matmul", "rmsnorm", "softmax", "vector_add",
           "DynamicLossScaler", "train_mixed"]
