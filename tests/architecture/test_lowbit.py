"""Real low-precision paths: the INT8 weight-only kernel against a hand case and the simulated INT8 scheme,
bf16 casting, and the Decoding chapter's per-format decode (each model measured alone)."""

from __future__ import annotations

import pytest
import torch
from _tiny_llama import tiny
from torch import nn

from llmcore.architecture import decoding as D
from llmcore.architecture import lowbit as LB
from llmcore.architecture import quantization as Q
from llmcore.core.errors import LLMCoreError

pytestmark = pytest.mark.skipif(not LB.has_int8pack_mm(), reason="this torch has no aten._weight_int8pack_mm")


def test_int8_weight_only_linear_hand_case():
    # row 0: max |w| = 1.27 -> s = 0.01, q = [127, -50]; row 1: max |w| = 2.54 -> s = 0.02, q = [127, 64]
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.27, -0.5], [2.54, 1.28]]))
    m = LB.Int8WeightOnlyLinear(lin)
    assert m.qweight.dtype == torch.int8 and m.qweight.tolist() == [[127, -50], [127, 64]]
    s = m.scales.tolist()  # the fp16-rounded scales, exactly as stored by quantize_absmax
    x = torch.tensor([[1.0, 2.0]])
    want = [(127 - 100) * s[0], (127 + 128) * s[1]]  # x . q_o * s_o by hand
    assert m(x)[0].tolist() == pytest.approx(want, rel=1e-6)
    assert s == pytest.approx([0.01, 0.02], rel=1e-3)


def test_int8_weight_only_equals_the_simulated_int8_channel_scheme():
    lin = nn.Linear(64, 48, bias=False)
    torch.nn.init.normal_(lin.weight, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    real = LB.Int8WeightOnlyLinear(lin)(x)  # torch's W8A16 kernel
    sim = Q.QuantLinear(lin, "int8_channel")(x)  # dequantize the whole matrix, fp32 matmul
    assert real.shape == (3, 5, 48)
    torch.testing.assert_close(real, sim, rtol=1e-5, atol=1e-5)
    model = tiny(n_kv_heads=2, seed=0)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    assert D.w8a16_vs_simulated(model, ids) < 1e-5
    q = LB.int8_weight_only(model)
    assert isinstance(q.lm_head, nn.Linear)  # the tied head stays in fp32, as in quantize_model
    assert sum(isinstance(m, LB.Int8WeightOnlyLinear) for m in q.modules()) == 7 * model.config.n_layers


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(LLMCoreError, match="bias-free"):
        LB.Int8WeightOnlyLinear(nn.Linear(4, 4, bias=True))
    with pytest.raises(LLMCoreError, match="floating-point"):
        LB.cast_model(nn.Linear(2, 2), torch.int8)


def test_precision_report_measures_each_format_alone():
    model = tiny(n_kv_heads=2, seed=0)
    prompt = torch.tensor([[1, 2, 3, 4]])
    rows, skipped = D.precision_report(model, prompt, 12)
    by = {r.name: r for r in rows}
    assert not skipped
    fp32, bf16 = by["fp32 weights, fp32 cache"], by["bf16 weights, bf16 cache"]
    assert fp32.weights_bytes == D.param_bytes(model) and fp32.agreement == 1.0
    assert bf16.weights_bytes * 2 == fp32.weights_bytes and bf16.cache_bytes * 2 == fp32.cache_bytes
    assert by["fp32 weights, int8 KV cache"].cache_bytes < fp32.cache_bytes / 2
    w8 = by["int8 weight-only (W8A16 kernel)"]
    assert w8.path.startswith("real") and w8.weights_bytes < fp32.weights_bytes
    assert by["int8 weights, dequantized per forward"].path.startswith("simulated")
    assert all(r.weights_mem is None and r.decode_mem is None for r in rows)  # CPU: byte accounting only
    assert "fp16 weights, fp16 cache" not in by  # fp16 is decoded on CUDA only
    assert all(0 <= r.agreement <= 1 and r.tokens_per_s > 0 for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_precision_report_on_a_gpu_counts_each_model_alone():
    model = tiny(n_kv_heads=2, seed=0)
    other = tiny(n_kv_heads=2, seed=1).cuda()  # a second live model must not show up in the rows
    rows, _ = D.precision_report(model.cuda(), torch.tensor([[1, 2, 3, 4]], device="cuda"), 12)
    by = {r.name: r for r in rows}
    assert by["fp32 weights, fp32 cache"].weights_mem < 2 * D.param_bytes(other)
    assert all(r.decode_mem is not None and r.decode_mem >= 0 for r in rows)
