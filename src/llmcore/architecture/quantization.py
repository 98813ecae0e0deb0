r"""Weight quantization with real packed storage: INT8, INT4, LLM.int8, FP8.

Every scheme returns a :class:`QTensor` that holds the *stored* tensors (``int8``, two INT4 values
packed per ``uint8``, ``torch.float8_*``) plus their scales, so ``QTensor.nbytes`` is the true storage
size, and ``QTensor.dequantize()`` gives the fp32 approximation back.
(The INT8 KV cache is :class:`llmcore.architecture.kv_cache.Int8KVCache`; it stores each head vector
with :func:`quantize_absmax`.)

Symmetric (absmax) INT8, per tensor or per output channel (row)::

    s = max|W| / 127            q = round(W / s) in [-127, 127]            W ~ s * q

Asymmetric (zero-point) INT8 uses the full range of ``[min, max]``::

    s = (max - min) / 255       z = -128 - round(min / s)      q = clamp(round(W / s) + z, -128, 127)
    W ~ s * (q - z)

The fp16-stored ``s`` of the asymmetric schemes is rounded *up* (never to nearest): the grid
``s * (q - z)`` must reach ``max``, or the largest weights clamp and land more than ``s / 2`` away.

Group-wise INT4 (as GPTQ/AWQ store it): each group of ``g`` consecutive weights of a row has its own
``s, z`` with ``q in [0, 15]``; two ``q`` share a byte: ``byte = q[2i] | q[2i+1] << 4``.

LLM.int8() (Dettmers et al. 2022): the few input features with outliers ``|x| > threshold`` are
multiplied in floating point; the rest go through an INT8 x INT8 matmul with a scale per token
(rows of ``X``) and per output channel (rows of ``W``)::

    X W^T  =  X[:, O] W[:, O]^T  +  s_x s_w^T * (q_x q_w^T)      (O = outlier columns)

FP8 (Micikevicius et al. 2022): E4M3 (4 exponent bits, bias 7, max 448, no infinities) and E5M2
(5 exponent bits, bias 15, max 57344); :func:`fp8_round` implements round-to-nearest-even onto those
grids by hand and is checked against torch's ``float8_e4m3fn`` / ``float8_e5m2`` casts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.core.errors import LLMCoreError

SCALE_DTYPE = torch.float16  # scales and zero points are stored in fp16 (as GPTQ/AWQ checkpoints do)


@dataclass
class QTensor:
    """A quantized tensor: stored ``data`` (+ ``scale``/``zero``), the original ``shape`` and how to undo it."""

    scheme: str
    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    shape: tuple[int, ...]
    group_size: int = 0

    @property
    def nbytes(self) -> int:
        """True storage bytes: data + scales (+ zero points)."""
        return self.data.nbytes + self.scale.nbytes + (0 if self.zero is None else self.zero.nbytes)

    @property
    def data_bytes(self) -> int:
        """Bytes of the quantized values alone (no scales)."""
        return self.data.nbytes

    def dequantize(self) -> torch.Tensor:
        return DEQUANT[self.scheme](self)


# ---- INT8 -----------------------------------------------------------------------------------------
def _safe(s: torch.Tensor) -> torch.Tensor:
    """Round a scale to its stored dtype and keep it away from 0 (an all-zero row)."""
    return s.clamp(min=1e-8).to(SCALE_DTYPE).float().clamp(min=torch.finfo(SCALE_DTYPE).tiny)


def _safe_up(s: torch.Tensor) -> torch.Tensor:
    """Like :func:`_safe` but rounds the scale *up* to the next fp16 value, never down.

    The asymmetric schemes need the grid ``s * (q - z)``, ``q`` over ``n`` steps, to span ``[min, max]``:
    ``n * s >= max - min``. Rounding ``s = (max - min) / n`` to nearest fp16 can make it smaller (by up to
    a relative 2^-11), the top of the range then lies beyond the last grid point and is clamped -- an
    error above ``s / 2`` (measured 0.58 s). Rounding up keeps every weight within ``s / 2``.
    """
    h = s.clamp(min=1e-8).to(SCALE_DTYPE)
    h = torch.where(h.float() < s, torch.nextafter(h, torch.full_like(h, float("inf"))), h)
    return h.float().clamp(min=torch.finfo(SCALE_DTYPE).tiny)


def quantize_absmax(w: torch.Tensor, per_channel: bool = True) -> QTensor:
    """Symmetric INT8: ``s = max|W| / 127`` over the tensor or each row (output channel)."""
    w = w.detach().float()
    amax = w.abs().amax(dim=-1, keepdim=True) if per_channel else w.abs().amax().reshape(1, 1)
    s = _safe(amax / 127.0)
    q = torch.round(w / s).clamp(-127, 127).to(torch.int8)
    return QTensor("int8_channel" if per_channel else "int8_tensor", q, s.to(SCALE_DTYPE), None, tuple(w.shape))


def _deq_absmax(t: QTensor) -> torch.Tensor:
    return t.data.float() * t.scale.float()


def quantize_zeropoint(w: torch.Tensor, per_channel: bool = True) -> QTensor:
    """Asymmetric INT8: the range ``[min, max]`` (widened to include 0) maps onto ``[-128, 127]``."""
    w = w.detach().float()
    if per_channel:
        lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    else:
        lo, hi = w.amin().reshape(1, 1), w.amax().reshape(1, 1)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    s = _safe_up((hi - lo) / 255.0)  # rounded up: the grid must span [lo, hi]
    z = (-128 - torch.round(lo / s)).clamp(-128, 127)
    q = (torch.round(w / s) + z).clamp(-128, 127).to(torch.int8)
    return QTensor("int8_zeropoint" if per_channel else "int8_zeropoint_tensor", q, s.to(SCALE_DTYPE),
                   z.to(torch.int8), tuple(w.shape))


def _deq_zeropoint(t: QTensor) -> torch.Tensor:
    return (t.data.float() - t.zero.float()) * t.scale.float()


# ---- INT4, group-wise, packed ----------------------------------------------------------------------
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``uint8`` values in ``[0, 15]`` of even length (last dim) -> half as many bytes ``lo | hi << 4``."""
    if q.shape[-1] % 2:
        raise LLMCoreError("pack_int4 needs an even number of values in the last dimension")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``(..., n/2) uint8 -> (..., n) uint8`` in ``[0, 15]``."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=-1).flatten(-2)


def quantize_int4(w: torch.Tensor, group_size: int = 16) -> QTensor:
    """Asymmetric 4-bit per group of ``group_size`` weights along each row; ``data`` is packed ``uint8``."""
    w = w.detach().float()
    rows, cols = w.shape
    if cols % group_size or group_size % 2:
        raise LLMCoreError(f"in_features={cols} must be a multiple of an even group_size={group_size}")
    g = w.view(rows, cols // group_size, group_size)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    s = _safe_up((hi - lo) / 15.0)  # rounded up: the grid must span [lo, hi]
    z = torch.round(-lo / s).clamp(0, 15)
    q = (torch.round(g / s) + z).clamp(0, 15).to(torch.uint8).view(rows, cols)
    return QTensor("int4_group", pack_int4(q), s.to(SCALE_DTYPE), z.to(torch.uint8), (rows, cols), group_size)


def _deq_int4(t: QTensor) -> torch.Tensor:
    rows, cols = t.shape
    q = unpack_int4(t.data).float().view(rows, cols // t.group_size, t.group_size)
    return ((q - t.zero.float()) * t.scale.float()).view(rows, cols)


# ---- FP8 ------------------------------------------------------------------------------------------
#: (exponent bits, mantissa bits, bias, largest finite value, torch dtype)
FP8_FORMATS = {
    "e4m3": (4, 3, 7, 448.0, torch.float8_e4m3fn),
    "e5m2": (5, 2, 15, 57344.0, torch.float8_e5m2),
}


def fp8_round(x: torch.Tensor, fmt: str = "e4m3", saturate: bool = True) -> torch.Tensor:
    r"""Round fp32 ``x`` to the nearest FP8 value (ties to even), returned as fp32 -- written by hand.

    A normal FP8 number is $(-1)^s\, 2^{e - \text{bias}} (1 + m / 2^M)$; below the smallest normal
    exponent $e_{\min} = 1 - \text{bias}$ the spacing stays $2^{e_{\min} - M}$ (subnormals). So the
    grid spacing near $x$ is $2^{\max(\lfloor \log_2 |x| \rfloor,\, e_{\min}) - M}$ and rounding is
    ``round(x / spacing) * spacing``. Values beyond the largest finite number saturate to it.
    """
    E, M, bias, vmax, _ = FP8_FORMATS[fmt]
    x = x.float()
    _, e = torch.frexp(x)  # x = m * 2^e, 0.5 <= |m| < 1  ->  floor(log2|x|) = e - 1
    e = torch.clamp(e - 1, min=1 - bias)
    spacing = torch.exp2((e - M).float())
    y = torch.round(x / spacing) * spacing  # torch.round: half to even
    if saturate:
        y = y.clamp(-vmax, vmax)
    return y


def quantize_fp8(w: torch.Tensor, fmt: str = "e4m3") -> QTensor:
    """Per-tensor scaled FP8: ``s = max|W| / fp8_max``; stored as torch's 1-byte float8 dtype."""
    _, _, _, vmax, dtype = FP8_FORMATS[fmt]
    w = w.detach().float()
    s = (w.abs().amax() / vmax).clamp(min=1e-12).reshape(1, 1)
    data = (w / s).clamp(-vmax, vmax).to(dtype)
    return QTensor(f"fp8_{fmt}", data, s.float(), None, tuple(w.shape))


def _deq_fp8(t: QTensor) -> torch.Tensor:
    return t.data.float() * t.scale


DEQUANT = {
    "int8_tensor": _deq_absmax, "int8_channel": _deq_absmax,
    "int8_zeropoint": _deq_zeropoint, "int8_zeropoint_tensor": _deq_zeropoint,
    "int4_group": _deq_int4, "fp8_e4m3": _deq_fp8, "fp8_e5m2": _deq_fp8,
}


# ---- LLM.int8(): mixed-precision decomposition -----------------------------------------------------
def int8_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x (N, in) @ w (out, in)^T`` with both sides absmax-INT8 (x per row, w per row), int32 accumulation."""
    qx = quantize_absmax(x, per_channel=True)
    qw = quantize_absmax(w, per_channel=True)
    acc = qx.data.double() @ qw.data.double().T  # exact integer sums (what an int32 GEMM computes)
    return (acc * qx.scale.double() * qw.scale.double().T).float()


def llm_int8_matmul(x: torch.Tensor, w: torch.Tensor, threshold: float = 6.0) -> tuple[torch.Tensor, int]:
    """LLM.int8(): outlier input features (any ``|x| > threshold`` in that column) in fp, the rest in INT8.

    Returns ``(x @ w^T, number of outlier features)``. ``x (N, in)``, ``w (out, in)``.
    """
    x2 = x.reshape(-1, x.shape[-1]).float()
    outl = (x2.abs() > threshold).any(dim=0)  # (in,)
    y = torch.zeros(x2.shape[0], w.shape[0], dtype=torch.float32, device=x.device)
    if outl.any():
        y += x2[:, outl] @ w[:, outl].float().T
    if (~outl).any():
        y += int8_matmul(x2[:, ~outl], w[:, ~outl])
    return y.reshape(*x.shape[:-1], w.shape[0]), int(outl.sum())


# ---- modules --------------------------------------------------------------------------------------
SCHEMES = ("int8_tensor", "int8_channel", "int8_zeropoint", "int4_group", "llm_int8", "fp8_e4m3", "fp8_e5m2")


def quantize_weight(w: torch.Tensor, scheme: str, group_size: int = 16) -> QTensor:
    """Dispatch on ``scheme`` (one of :data:`SCHEMES`)."""
    if scheme == "int8_tensor":
        return quantize_absmax(w, per_channel=False)
    if scheme in ("int8_channel", "llm_int8"):
        return quantize_absmax(w, per_channel=True)
    if scheme == "int8_zeropoint":
        return quantize_zeropoint(w, per_channel=True)
    if scheme == "int4_group":
        return quantize_int4(w, group_size)
    if scheme in ("fp8_e4m3", "fp8_e5m2"):
        return quantize_fp8(w, scheme.split("_")[1])
    raise LLMCoreError(f"unknown quantization scheme {scheme!r}; valid: {', '.join(SCHEMES)}")


class QuantLinear(nn.Module):
    """A bias-free ``nn.Linear`` whose weight is stored quantized (buffers) and dequantized on the fly.

    ``llm_int8`` also quantizes the activations (per token) and keeps outlier features in fp32.
    """

    def __init__(self, linear: nn.Linear, scheme: str, group_size: int = 16, threshold: float = 6.0) -> None:
        super().__init__()
        if linear.bias is not None:
            raise LLMCoreError("QuantLinear supports bias-free linears (as in LLaMA)")
        self.scheme, self.threshold = scheme, threshold
        self.in_features, self.out_features = linear.in_features, linear.out_features
        qt = quantize_weight(linear.weight, scheme, group_size)
        self.shape, self.group_size, self.qscheme = qt.shape, qt.group_size, qt.scheme
        self.register_buffer("qdata", qt.data)
        self.register_buffer("qscale", qt.scale)
        self.register_buffer("qzero", qt.zero)
        self.n_outlier_features = 0

    def qtensor(self) -> QTensor:
        return QTensor(self.qscheme, self.qdata, self.qscale, self.qzero, self.shape, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qtensor().dequantize().to(x.dtype)
        if self.scheme == "llm_int8":
            y, n = llm_int8_matmul(x, w, self.threshold)
            self.n_outlier_features = max(self.n_outlier_features, n)
            return y.to(x.dtype)
        return F.linear(x, w)


def quantize_model(model: nn.Module, scheme: str, group_size: int = 16, threshold: float = 6.0,
                   skip: tuple[str, ...] = ("lm_head",), inplace: bool = False) -> nn.Module:
    """Replace every bias-free ``nn.Linear`` (except names containing ``skip``) by a :class:`QuantLinear`.

    The embedding and the (tied) output head stay in full precision, as is common practice.
    """
    if scheme not in SCHEMES:
        raise LLMCoreError(f"unknown quantization scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    model = model if inplace else copy.deepcopy(model)
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child.bias is None and not any(s in full for s in skip):
                setattr(mod, child_name, QuantLinear(child, scheme, group_size, threshold))
    return model


def linear_weight_bytes(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, int]:
    """Storage of the (quantized or not) linear weights: ``{"data": .., "scales": .., "total": .., "numel": ..}``."""
    data = scales = numel = 0
    for name, mod in model.named_modules():
        if any(s in name for s in skip):
            continue
        if isinstance(mod, QuantLinear):
            data += mod.qdata.nbytes
            scales += mod.qscale.nbytes + (0 if mod.qzero is None else mod.qzero.nbytes)
            numel += mod.in_features * mod.out_features
        elif isinstance(mod, nn.Linear):
            data += mod.weight.nbytes
            numel += mod.weight.numel()
    return {"data": data, "scales": scales, "total": data + scales, "numel": numel}


def quant_error(w: torch.Tensor, scheme: str, group_size: int = 16) -> dict[str, float]:
    """Quantize -> dequantize error of one weight matrix: max abs, relative Frobenius, bytes vs fp16."""
    if scheme == "llm_int8":
        scheme = "int8_channel"
    w = w.detach()
    qt = quantize_weight(w, scheme, group_size)
    d = qt.dequantize() - w.float()
    return {"max_abs": float(d.abs().max()), "rel_fro": float(d.norm() / w.float().norm()),
            "bytes": qt.nbytes, "data_bytes": qt.data_bytes, "fp16_bytes": w.numel() * 2}
