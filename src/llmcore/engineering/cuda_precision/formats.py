r"""Floating-point formats from their bits: fp32, tf32, bf16, fp16, fp8 E4M3 / E5M2; sum rounding and Kahan.

A binary float with ``E`` exponent bits (bias ``b = 2^{E-1} - 1``) and ``M`` mantissa bits stores
``(sign, e, m)`` and means

.. math:: x = (-1)^s\, 2^{e - b}\,(1 + m / 2^M) \quad (0 < e < e_{\text{top}}), \qquad
          x = (-1)^s\, 2^{1 - b}\,(m / 2^M) \quad (e = 0,\ \text{subnormal}).

IEEE-style formats (fp32, fp16, bf16, E5M2) reserve the top exponent ``e = 2^E - 1`` for inf/NaN, so the
largest finite number is ``2^{2^E - 2 - b}(2 - 2^{-M})``. E4M3 ("fn": finite, NaN only) keeps the top
exponent for numbers and gives up only the all-ones pattern to NaN: its largest is ``2^{15-7}\cdot 1.75 = 448``.
``eps = 2^{-M}`` (spacing just above 1), smallest normal ``2^{1-b}``, smallest subnormal ``2^{1-b-M}``.

:func:`decode` turns an integer bit pattern into its value with integer arithmetic only, so
:func:`format_table` computes every field *without* asking torch, and the chapter compares it with
``torch.finfo`` and with the bits reinterpreted by torch (``view``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from llmcore.core.errors import LLMCoreError


@dataclass(frozen=True)
class Format:
    """A binary floating-point format: name, exponent and mantissa bits, and whether the top exponent is inf/NaN."""

    name: str
    exp_bits: int
    man_bits: int
    ieee_top: bool  # True: exponent all-ones = inf/NaN (IEEE); False: only the all-ones pattern is NaN (E4M3fn)
    dtype: torch.dtype | None  # the torch dtype (tf32 has none: it is fp32 storage read with a 10-bit mantissa)
    int_dtype: torch.dtype | None = None  # same-width integer dtype, to reinterpret bit patterns

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1


FORMATS = (
    Format("fp32", 8, 23, True, torch.float32, torch.int32),
    Format("tf32", 8, 10, True, None),
    Format("bf16", 8, 7, True, torch.bfloat16, torch.int16),
    Format("fp16", 5, 10, True, torch.float16, torch.int16),
    Format("fp8 e5m2", 5, 2, True, torch.float8_e5m2, torch.uint8),
    Format("fp8 e4m3fn", 4, 3, False, torch.float8_e4m3fn, torch.uint8),
)
BY_NAME = {f.name: f for f in FORMATS}


def decode(bits: int, fmt: Format) -> Fraction | float:
    """The exact value of the bit pattern ``bits`` (sign | exponent | mantissa) in ``fmt``; inf/NaN as floats."""
    M, E = fmt.man_bits, fmt.exp_bits
    sign = -1 if bits >> (E + M) & 1 else 1
    e = bits >> M & (2 ** E - 1)
    m = bits & (2 ** M - 1)
    top = 2 ** E - 1
    if fmt.ieee_top and e == top:
        return sign * math.inf if m == 0 else math.nan
    if not fmt.ieee_top and e == top and m == 2 ** M - 1:
        return math.nan
    if e == 0:
        return sign * Fraction(m, 2 ** M) * Fraction(2) ** (1 - fmt.bias)
    return sign * (1 + Fraction(m, 2 ** M)) * Fraction(2) ** (e - fmt.bias)


def encode(sign: int, e: int, m: int, fmt: Format) -> int:
    """Bit pattern of the fields ``(sign, exponent field, mantissa field)``."""
    return (sign << (fmt.exp_bits + fmt.man_bits)) | (e << fmt.man_bits) | m


def special_bits(fmt: Format) -> dict[str, int]:
    """Bit patterns of the landmark values: largest finite, 1, 1 + eps, smallest normal, smallest subnormal."""
    E, M = fmt.exp_bits, fmt.man_bits
    top = 2 ** E - 1
    if fmt.ieee_top:
        largest = encode(0, top - 1, 2 ** M - 1, fmt)
    else:  # E4M3fn: top exponent is ordinary, only mantissa all-ones is NaN
        largest = encode(0, top, 2 ** M - 2, fmt)
    return {"max": largest, "one": encode(0, fmt.bias, 0, fmt), "one_plus_eps": encode(0, fmt.bias, 1, fmt),
            "smallest_normal": encode(0, 1, 0, fmt), "smallest_subnormal": encode(0, 0, 1, fmt)}


def bit_fields(fmt: Format) -> dict[str, float]:
    """``max``, ``eps``, ``smallest_normal``, ``smallest_subnormal`` of ``fmt`` decoded from their bit patterns."""
    b = special_bits(fmt)
    return {"bits": fmt.bits, "max": float(decode(b["max"], fmt)),
            "eps": float(decode(b["one_plus_eps"], fmt) - decode(b["one"], fmt)),
            "smallest_normal": float(decode(b["smallest_normal"], fmt)),
            "smallest_subnormal": float(decode(b["smallest_subnormal"], fmt)),
            "decimal_digits": fmt.man_bits * math.log10(2)}


def torch_fields(fmt: Format) -> dict[str, float] | None:
    """The same fields from torch: ``torch.finfo`` and bit patterns reinterpreted with ``Tensor.view(dtype)``."""
    if fmt.dtype is None:
        return None
    fi = torch.finfo(fmt.dtype)
    sub = torch.tensor([special_bits(fmt)["smallest_subnormal"]], dtype=fmt.int_dtype).view(fmt.dtype).float()
    return {"bits": fi.bits, "max": float(fi.max), "eps": float(fi.eps), "smallest_normal": float(fi.smallest_normal),
            "smallest_subnormal": float(sub)}


def format_table() -> list[dict]:
    """One row per format: our bit-twiddled fields and (where torch has the dtype) torch's, side by side."""
    rows = []
    for f in FORMATS:
        rows.append({"format": f.name, "E": f.exp_bits, "M": f.man_bits, "bias": f.bias,
                     "ours": bit_fields(f), "torch": torch_fields(f)})
    return rows


def table_mismatches(rows: list[dict]) -> int:
    """How many (format, field) pairs differ between our decoding and torch (exact float equality)."""
    bad = 0
    for r in rows:
        if r["torch"] is None:
            continue
        for k, v in r["torch"].items():
            bad += r["ours"][k] != v
    return bad


def all_values(fmt: Format) -> torch.Tensor:
    """Every finite non-negative value of an (at most 16-bit) format, sorted (for the representable-values plot)."""
    if fmt.bits > 16:
        raise LLMCoreError(f"{fmt.name} has 2^{fmt.bits} patterns; enumerate formats of at most 16 bits")
    vals = {float(v) for v in (decode(b, fmt) for b in range(2 ** (fmt.bits - 1))) if math.isfinite(float(v))}
    return torch.tensor(sorted(vals), dtype=torch.float64)


def round_to(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Round fp32 ``x`` to ``fmt`` (nearest-even, torch's cast) and return it as fp32 again."""
    if fmt.dtype is None:  # tf32: keep 10 mantissa bits (round to nearest even on the fp32 bit pattern)
        i = x.float().view(torch.int32)
        drop = 23 - fmt.man_bits
        half = 1 << (drop - 1)
        lsb = (i >> drop) & 1
        return ((i + half - 1 + lsb) & ~((1 << drop) - 1)).view(torch.float32)
    return x.float().to(fmt.dtype).float()


# ---- rounding error of a sum ---------------------------------------------------------------------
def naive_sum(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Left-to-right sum of each row of ``x (T, N)`` with the running sum rounded to ``fmt`` after every add."""
    s = torch.zeros(x.shape[0])
    for i in range(x.shape[1]):
        s = round_to(s + x[:, i], fmt)
    return s


def kahan_sum(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    r"""Kahan's compensated sum, every operation rounded to ``fmt``.

    ``c`` carries the low-order bits the last add lost: ``y = x_i - c; t = s + y; c = (t - s) - y; s = t``.
    Error bound (Higham 2002, eq. 4.8): ``|ŝ - s| <= (2u + O(N u^2)) sum|x_i|`` with ``u = eps / 2``,
    against ``(N - 1) u sum|x_i|`` for the naive loop.
    """
    s = torch.zeros(x.shape[0])
    c = torch.zeros(x.shape[0])
    for i in range(x.shape[1]):
        y = round_to(x[:, i] - c, fmt)
        t = round_to(s + y, fmt)
        c = round_to(round_to(t - s, fmt) - y, fmt)
        s = t
    return s


@dataclass
class SumErrors:
    """Relative error of summing ``n`` uniform(0, 1) values (mean over ``trials`` rows), per format and method."""

    n: int
    trials: int
    naive: dict[str, float]
    kahan: dict[str, float]
    unit_roundoff: dict[str, float]


def sum_errors(n: int, trials: int = 8, seed: int = 0, formats: tuple[str, ...] = ("fp32", "bf16", "fp16")) -> SumErrors:
    """Sum ``trials`` rows of ``n`` uniform(0, 1) values (each already representable in the format) and compare
    with the exact sum (``math.fsum`` in float64, exact for these inputs' magnitudes)."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.rand(trials, n, generator=gen)
    naive, kahan, u = {}, {}, {}
    for name in formats:
        f = BY_NAME[name]
        x = round_to(raw, f)
        exact = torch.tensor([math.fsum(r) for r in x.double().tolist()], dtype=torch.float64)
        naive[name] = float(((naive_sum(x, f).double() - exact).abs() / exact).mean())
        kahan[name] = float(((kahan_sum(x, f).double() - exact).abs() / exact).mean())
        u[name] = 2.0 ** -(f.man_bits + 1)
    return SumErrors(n, trials, naive, kahan, u)
