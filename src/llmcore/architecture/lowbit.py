r"""Real low-precision inference paths: weights stored *and multiplied* in fewer bits by torch's own kernels.

:mod:`~llmcore.architecture.quantization` simulates every format the Decoding chapter compares (INT8 per
tensor / channel / zero-point, INT4 groups, FP8, LLM.int8): it stores the quantized weight, but each forward
dequantizes the whole matrix to fp32 and multiplies in fp32. That measures a format's *error* exactly, and
its storage, but not its speed or its working memory (the dequantized copy is a full fp32 matrix). This module
holds the paths that a serving stack would actually run, for the chapter's side-by-side decode:

* **bf16 / fp16 weights**: the whole model cast (:func:`cast_model`); matmuls run in that dtype.
* **INT8 weight-only (W8A16)**: :class:`Int8WeightOnlyLinear` keeps ``q (out, in)`` int8 and one scale per
  output channel and calls ``torch.ops.aten._weight_int8pack_mm``, which dequantizes tile by tile inside the
  kernel:

  .. math:: y = x\,(s \odot q)^\top, \qquad s_o = \frac{\max_i |W_{oi}|}{127},\quad q = \mathrm{round}(W / s)

  with the same ``q`` and ``s`` as the simulated ``"int8_channel"`` scheme
  (:func:`~llmcore.architecture.quantization.quantize_absmax`), so the two differ only by float rounding.

Shapes: ``x (..., in)``, ``q (out, in)``, ``s (out,)``, ``y (..., out)``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmcore.architecture.quantization import quantize_absmax
from llmcore.core.errors import LLMCoreError


def has_int8pack_mm() -> bool:
    """Whether this torch build has the W8A16 kernel ``aten._weight_int8pack_mm`` (CPU since torch 2.3)."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


class Int8WeightOnlyLinear(nn.Module):
    """A bias-free ``nn.Linear`` stored as int8 + per-channel scales and run by torch's W8A16 kernel."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise LLMCoreError("Int8WeightOnlyLinear supports bias-free linears (as in LLaMA)")
        if not has_int8pack_mm():
            raise LLMCoreError("this torch has no aten._weight_int8pack_mm (the INT8 weight-only kernel); "
                               "upgrade torch (>= 2.3)")
        qt = quantize_absmax(linear.weight.detach().float(), per_channel=True)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", qt.data.contiguous())  # (out, in) int8
        self.register_buffer("scales", qt.scale.float().reshape(-1))  # (out,) -- the fp16 scale, exactly

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).contiguous()
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales.to(x.dtype))
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def int8_weight_only(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """A copy of ``model`` with every bias-free ``nn.Linear`` (names containing ``skip`` excepted: the tied
    output head stays in the model's dtype, as in :func:`~llmcore.architecture.quantization.quantize_model`)
    replaced by :class:`Int8WeightOnlyLinear`."""
    model = copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child.bias is None and not any(s in full for s in skip):
                setattr(mod, child_name, Int8WeightOnlyLinear(child))
    return model


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` with every floating-point parameter and buffer in ``dtype`` (bf16 / fp16 weights)."""
    if not dtype.is_floating_point:
        raise LLMCoreError(f"cast_model takes a floating-point dtype, got {dtype}")
    return copy.deepcopy(model).to(dtype)
