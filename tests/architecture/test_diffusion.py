"""Diffusion: schedules and steps against hand-computed values and diffusers, q-sample statistics,
adaLN-Zero identity, patchify round trip, CFG algebra, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmcore.architecture.diffusion import (
    DiffusionConfig,
    DiT,
    DiTBlock,
    UNetLite,
    add_noise,
    ddim_step,
    ddpm_step,
    frechet_distance,
    guided_output,
    make_schedule,
    patchify,
    sample,
    target,
    timesteps,
    unpatchify,
)
from llmcore.architecture.diffusion.crosscheck import compare_with_diffusers
from llmcore.architecture.diffusion.experiment import adaln_identity, experiment, make_report
from llmcore.core.errors import LLMCoreError


def test_linear_schedule_by_hand():
    s = make_schedule(100, "linear")  # DDPM's 1e-4 .. 0.02 at T = 1000, scaled by 1000 / T = 10
    assert s.betas[0].item() == pytest.approx(1e-3) and s.betas[-1].item() == pytest.approx(0.2)
    ab = np.cumprod(1 - np.linspace(1e-3, 0.2, 100))
    assert np.allclose(s.alphas_cumprod.numpy(), ab, atol=1e-6)


def test_cosine_schedule_by_hand():
    s = make_schedule(4, "cosine")
    f = [math.cos((t / 4 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(5)]
    expect = [min(1 - f[i + 1] / f[i], 0.999) for i in range(4)]
    assert np.allclose(s.betas.numpy(), expect, atol=1e-7)
    assert s.betas[-1].item() == pytest.approx(0.999)  # the cap bites at the last step


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta,clipped", [(0.0, False), (0.0, True), (1.0, False), (0.5, True)])
def test_equals_diffusers(kind, prediction, eta, clipped):
    d = compare_with_diffusers(T=100, kind=kind, prediction=prediction, steps=20, eta=eta, clipped_eps=clipped)
    assert len(d) == 6 and max(d.values()) < 1e-6, d


def test_equals_diffusers_at_1000_steps_and_without_clipping():
    d = compare_with_diffusers(T=1000, kind="linear", prediction="epsilon", steps=50, eta=0.0)
    assert max(d.values()) < 1e-6, d


def test_q_sample_statistics():
    """x_t | x_0 ~ N(sqrt(ab) x0, (1 - ab) I): check mean and variance over many draws."""
    s = make_schedule(100, "cosine")
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 2, 2), 0.7)
    for t in (5, 50, 95):
        xt = add_noise(s, x0, torch.randn(x0.shape, generator=g), torch.full((20000,), t))
        ab = s.alphas_cumprod[t].item()
        assert xt.mean().item() == pytest.approx(0.7 * math.sqrt(ab), abs=0.01)
        assert xt.var().item() == pytest.approx(1 - ab, rel=0.03)


def test_v_target_and_x0_recovery():
    """v = sqrt(ab) eps - sqrt(1-ab) x0; a perfect v (or eps) prediction makes the DDIM step land on x0 at t -> -1."""
    for prediction in ("epsilon", "v_prediction"):
        s = make_schedule(50, "linear", prediction, clip_sample=False)
        x0, eps = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
        t = 30
        xt = add_noise(s, x0, eps, torch.full((3,), t))
        out = target(s, x0, eps, torch.full((3,), t))
        prev, x0_hat = ddim_step(s, out, t, xt, -1)
        assert torch.allclose(x0_hat, x0, atol=1e-5) and torch.allclose(prev, x0, atol=1e-5)


def test_ddpm_step_by_hand():
    """One ancestral step, coefficients written out for T = 100, t = 40 -> 39, with the noise given."""
    s = make_schedule(100, "linear", clip_sample=False)
    x, out = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    prev, _ = ddpm_step(s, out, 40, x, 39, g)
    ab, abp = s.alphas_cumprod[40].double(), s.alphas_cumprod[39].double()
    beta = 1 - ab / abp
    x0 = (x.double() - (1 - ab).sqrt() * out.double()) / ab.sqrt()
    mean = abp.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - abp) / (1 - ab) * x.double()
    expect = mean + ((1 - abp) / (1 - ab) * beta).sqrt() * z.double()
    assert torch.allclose(prev.double(), expect, atol=1e-5)


def test_timesteps_leading():
    s = make_schedule(100)
    assert timesteps(s, 10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert timesteps(s, 100) == list(range(99, -1, -1))


def test_adaln_zero_block_is_identity_at_init():
    assert adaln_identity(32, seed=1) == 0.0
    block = DiTBlock(16)
    torch.nn.init.normal_(block.ada.weight)  # once the gates move the block is no longer the identity
    x, c = torch.randn(2, 4, 16), torch.randn(2, 16)
    assert (block(x, c) - x).abs().max() > 1e-3


def test_dit_and_unet_start_at_zero_output_and_keep_shapes():
    t, y = torch.tensor([0, 5, 99]), torch.tensor([1, 2, 10])
    for m in (UNetLite(), DiT(), DiT(in_ch=4, size=2, patch=1)):
        xi = torch.randn(3, m.in_ch, 8 if m.in_ch == 1 else 2, 8 if m.in_ch == 1 else 2)
        out = m(xi, t, y)
        assert out.shape == xi.shape and out.abs().max() == 0  # zero-initialised output layers


def test_patchify_round_trip_and_layout():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    tok = patchify(x, 2)
    assert tok.shape == (2, 4, 12)
    # token 1 is the top-right 2x2 patch; its first 3 numbers are pixel (0, 2) of each channel
    assert tok[0, 1, :3].tolist() == [x[0, c, 0, 2].item() for c in range(3)]
    assert torch.equal(unpatchify(tok, 2, 3, 4, 4), x)


def test_guidance_algebra():
    m = DiT(d=16, depth=1, heads=2)
    torch.nn.init.normal_(m.final.weight, std=0.5)
    torch.nn.init.normal_(m.final_ada.weight, std=0.5)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    tt = torch.full((4,), 7)
    cond, unc = m(x, tt, y), m(x, tt, torch.full_like(y, 10))
    assert torch.allclose(guided_output(m, x, 7, y, 0.0), unc)
    assert torch.allclose(guided_output(m, x, 7, y, 1.0), cond)
    assert torch.allclose(guided_output(m, x, 7, y, 3.0), unc + 3 * (cond - unc), atol=1e-5)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2 + 1  # N(1, 4I): |mu|^2 = 3, tr(I + 4I - 2*2I) = 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_bad_input_is_one_clear_error():
    with pytest.raises(LLMCoreError, match="kind"):
        make_schedule(100, "quadratic")
    with pytest.raises(LLMCoreError, match="prediction"):
        make_schedule(100, "linear", "x0")
    with pytest.raises(LLMCoreError, match="steps"):
        timesteps(make_schedule(100), 0)
    with pytest.raises(LLMCoreError, match="sampler"):
        sample(UNetLite(), make_schedule(100), torch.tensor([1]), sampler="euler")
    with pytest.raises(LLMCoreError, match="p_uncond"):
        DiffusionConfig.for_mode(True, p_uncond=1.5)
    with pytest.raises(LLMCoreError, match="patch"):
        DiT(size=8, patch=3)


def test_full_mode_config_and_tiny_closed_loop_runs():
    """toy=False builds its (larger) config; a closed loop shrunk to a few steps runs end to end and reports."""
    full = DiffusionConfig.for_mode(False)
    assert full.T == 1000 and full.steps > DiffusionConfig.for_mode(True).steps
    cfg = DiffusionConfig.for_mode(False, steps=3, latent_steps=2, clf_steps=5, ae_steps=3, per_class=2,
                                   ddim_sweep=(10,), guidance_sweep=(0.0, 2.0), sample_steps=10, T=100)
    res = experiment(cfg, seed=0, show_progress=False)
    rep = make_report(res, toy=False, device="cpu", seed=0)
    names = [c.name for c in rep.criteria]
    assert any("diffusers" in n for n in names) and res.grid.shape == (10, 2, 1, 8, 8)
    assert next(c for c in rep.criteria if "diffusers" in c.name).passed
