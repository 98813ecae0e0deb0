"""Kernels and precision: hand-computed cases beside torch (finfo, F.rms_norm, softmax, GradScaler, _int_mm)."""

import llmcore.core.triton_env as triton_env  # noqa: I001 -- must come before anything imports triton

import math
import shutil
from dataclasses import replace

import pytest
import torch

from llmcore.architecture.llama import Llama
from llmcore.architecture.pretrained import corpus_ids
from llmcore.architecture.training import random_windows
from llmcore.core.device import pick_device
from llmcore.core.errors import LLMCoreError
from llmcore.engineering.cuda_precision import closed_loop, cpp_ext, formats, kernels, mixed, quant_gemm

needs_triton = pytest.mark.skipif(not triton_env.available(), reason="Triton cannot run here")
DEV = triton_env.kernel_device()


# ---- Triton kernels -------------------------------------------------------------------------------
@needs_triton
def test_kernels_hand_cases():
    x = torch.log(torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])).to(DEV)
    assert torch.allclose(kernels.softmax(x, block=16).cpu(), torch.tensor([[1 / 6, 2 / 6, 3 / 6], [1 / 3] * 3]),
                          atol=1e-7)
    y, r = kernels.rmsnorm_forward(torch.tensor([[3.0, 4.0]]).to(DEV), torch.tensor([1.0, 2.0]).to(DEV), eps=0.0)
    assert torch.allclose(y.cpu(), torch.tensor([[3.0, 8.0]]) / math.sqrt(12.5)) and abs(float(r) - 12.5 ** -0.5) < 1e-7
    a = torch.arange(6.0).reshape(2, 3).to(DEV)
    assert torch.equal(kernels.matmul(a, torch.eye(3).to(DEV)).cpu(), a.cpu())
    assert torch.equal(kernels.vector_add(torch.ones(5).to(DEV), torch.arange(5.0).to(DEV)).cpu(), torch.arange(1.0, 6))


@needs_triton
def test_every_kernel_equals_torch_within_its_tolerance():
    checks = kernels.check_kernels({"n": 1000, "rows": 8, "cols": 64, "mm": 40}, seed=1)
    assert [c.name for c in checks] == list(kernels.TOLERANCES)
    for c in checks:
        assert c.passed, c
    assert set(kernels.matmul_best_config()) == {"BLOCK_M", "BLOCK_N", "BLOCK_K"}


@needs_triton
def test_kernel_bad_input_is_one_clear_error():
    with pytest.raises(LLMCoreError, match="1-D"):
        kernels.vector_add(torch.ones(2, 2).to(DEV), torch.ones(2, 2).to(DEV))
    with pytest.raises(LLMCoreError, match="matmul needs"):
        kernels.matmul(torch.ones(2, 3).to(DEV), torch.ones(2, 3).to(DEV))
    with pytest.raises(LLMCoreError, match="rmsnorm takes"):
        kernels.rmsnorm_forward(torch.ones(2, 3).to(DEV), torch.ones(4).to(DEV))


def test_cuda_without_gpu_is_one_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LLMCoreError, match="no CUDA GPU"):
        pick_device("cuda")


# ---- number formats -------------------------------------------------------------------------------
def test_decode_hand_cases():
    fp16, e4m3 = formats.BY_NAME["fp16"], formats.BY_NAME["fp8 e4m3fn"]
    assert formats.decode(0x3C00, fp16) == 1 and formats.decode(0x7BFF, fp16) == 65504
    assert formats.decode(0x0001, fp16) == 2.0 ** -24 and formats.decode(0xC000, fp16) == -2
    assert formats.decode(0x7E, e4m3) == 448 and math.isnan(formats.decode(0x7F, e4m3))
    assert formats.decode(0x7C00, fp16) == math.inf


def test_format_table_equals_torch_finfo():
    rows = formats.format_table()
    assert formats.table_mismatches(rows) == 0
    fp16 = next(r for r in rows if r["format"] == "fp16")
    assert fp16["ours"]["eps"] == torch.finfo(torch.float16).eps == 2.0 ** -10
    tf32 = next(r for r in rows if r["format"] == "tf32")
    assert tf32["torch"] is None and tf32["ours"]["eps"] == 2.0 ** -10 and tf32["ours"]["max"] > 3e38


@pytest.mark.parametrize("name", ["fp8 e4m3fn", "fp8 e5m2"])
def test_every_fp8_bit_pattern_decodes_like_torch(name):
    f = formats.BY_NAME[name]
    ours = torch.tensor([float(formats.decode(b, f)) for b in range(256)], dtype=torch.float32)
    theirs = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(f.dtype).float()
    assert torch.equal(torch.nan_to_num(ours, nan=7.0), torch.nan_to_num(theirs, nan=7.0))


def test_tf32_rounding_ties_to_even():
    tf32 = formats.BY_NAME["tf32"]
    x = torch.tensor([1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, -(1 + 3 * 2.0 ** -11), 1 + 2.0 ** -10])
    assert formats.round_to(x, tf32).tolist() == [1.0, 1 + 2.0 ** -9, -(1 + 2.0 ** -9), 1 + 2.0 ** -10]


def test_kahan_recovers_what_fp16_loses():
    fp16 = formats.BY_NAME["fp16"]
    x = torch.tensor([[2048.0, 1.0, 1.0, 1.0, 1.0]])  # 2048 + 1 is a tie in fp16 -> rounds to even 2048
    assert float(formats.naive_sum(x, fp16)) == 2048.0
    assert float(formats.kahan_sum(x, fp16)) == 2052.0
    s = formats.sum_errors(1024, trials=2, formats=("bf16",))
    assert s.kahan["bf16"] <= 2 * s.unit_roundoff["bf16"] < s.naive["bf16"]


# ---- loss scaling ---------------------------------------------------------------------------------
def test_dynamic_scaler_hand_sequence():
    sc = mixed.DynamicLossScaler(init_scale=8.0, growth_interval=2)
    scales = []
    for inf in (False, False, True, False, False, False):
        sc.found_inf = inf
        sc.update()
        scales.append(sc.get_scale())
    assert scales == [8.0, 16.0, 8.0, 8.0, 16.0, 16.0]
    with pytest.raises(LLMCoreError):
        mixed.DynamicLossScaler(backoff_factor=2.0)


def test_our_scaler_equals_torch_gradscaler_step_for_step():
    cfg = replace(closed_loop.KernelsConfig.for_mode(True), d_model=32, n_heads=2, seq_len=32, batch_size=4, steps=24,
                  growth_interval=3, init_scale=2.0 ** 15)
    train_ids, _ = corpus_ids()
    tcfg = closed_loop.train_config(cfg, 0)

    def make_model():
        torch.manual_seed(0)
        return Llama(closed_loop.model_config(cfg))

    eq = mixed.scaler_equality(make_model, tcfg, lambda g: random_windows(train_ids, 4, 32, g),
                               {"init_scale": cfg.init_scale, "growth_interval": 3}, torch.device("cpu"))
    assert eq["ours"].skipped, "the run must meet an overflow to test skipping"
    assert eq["scale_mismatches"] == 0 and eq["skipped_equal"] and eq["param_max_diff"] == 0.0
    assert max(eq["ours"].scale) > min(eq["ours"].scale)  # it grew and backed off


def test_fp16_gradients_underflow_without_scaling():
    """A confident model (final-norm gain x 30) puts tiny probabilities on most tokens: their logits gradients
    p / (B (T-1)) fall below half of fp16's smallest subnormal 2^-24 and round to 0 -- the closed-form count."""
    cfg = replace(closed_loop.KernelsConfig.for_mode(True), d_model=32, n_heads=2, seq_len=32)
    train_ids, _ = corpus_ids()
    torch.manual_seed(0)
    model = Llama(closed_loop.model_config(cfg))
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)
    idx, labels = random_windows(train_ids, 8, 32, torch.Generator().manual_seed(0))
    u = mixed.underflow_fraction(model, idx, labels, 2.0 ** 12)
    g = u.grads_fp32["logits"]
    g = g[g != 0].abs()
    predicted = float((g <= 2.0 ** -25).float().mean())  # round-to-nearest-even sends |g| <= 2^-25 to 0
    predicted_scaled = float((g * 2.0 ** 12 <= 2.0 ** -25).float().mean())
    assert predicted > 0.05 and abs(u.unscaled["logits"] - predicted) < 0.01
    assert predicted_scaled < predicted / 2 and abs(u.scaled["logits"] - predicted_scaled) < 0.01
    assert u.scaled["params"] <= u.unscaled["params"]
    with pytest.raises(LLMCoreError, match="precision"):
        mixed.train_mixed(model, closed_loop.train_config(cfg, 0), None, precision="fp8")


# ---- quantized GEMM -------------------------------------------------------------------------------
@pytest.mark.skipif(not quant_gemm.has_int_mm(), reason="torch._int_mm missing")
def test_int8_gemm_hand_case_and_kit():
    a = torch.tensor([[127, -128], [1, 2]] * 9, dtype=torch.int8)  # (18, 2)
    b = torch.tensor([[1, 2] * 4, [3, -4] * 4], dtype=torch.int8)  # (2, 8)
    out = torch._int_mm(a, b)
    assert out[0, :2].tolist() == [127 - 384, 254 + 512] and out[1, :2].tolist() == [7, -6]
    checks = quant_gemm.int8_checks()
    assert checks["int_mm exact (max int diff)"] == 0
    assert checks["int8 GEMM vs kit int8_matmul (rel)"] <= 1e-6 and checks["int8 GEMM vs fp32 (rel)"] < 0.05


# ---- config, extension ----------------------------------------------------------------------------
def test_config_modes_and_bad_values():
    full = closed_loop.KernelsConfig.for_mode(False)
    full.validate()
    assert full.steps > closed_loop.KernelsConfig.for_mode(True).steps
    with pytest.raises(LLMCoreError, match="build_extension"):
        closed_loop.with_overrides(full, build_extension="sometimes")
    with pytest.raises(LLMCoreError, match="rows"):
        closed_loop.with_overrides(full, rows=0)


def test_full_size_mixed_precision_starts():
    """toy=False's model and batch sizes take a couple of steps (the full run is for a GPU)."""
    cfg = replace(closed_loop.KernelsConfig.for_mode(False), steps=2, batch_size=2, val_windows=1, scaler_steps=2,
                  scaler_batch=1, seq_len=32)  # the full model (d=256, 4 layers) on short windows
    under, runs, eq = closed_loop.mixed_precision(cfg, torch.device("cpu"), 0)
    assert len(runs["fp32"].loss) == 2 and math.isfinite(runs["bf16"].val) and len(eq["torch"].scale) == 2


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_cpp_extension_builds_and_equals_torch():
    """Compiles once into output/torch_extensions/ (slow the first time); later runs load the cached build,
    and the chapter shows the extension whenever this cache exists."""
    mod, _ = cpp_ext.build("cpu")
    assert cpp_ext.is_built("cpu")
    x, w = torch.randn(5, 33), torch.rand(33)
    assert torch.allclose(cpp_ext.rmsnorm_ext(mod, x, w), torch.nn.functional.rms_norm(x, (33,), w, 1e-6), atol=1e-6)
