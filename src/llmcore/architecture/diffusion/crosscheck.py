"""Our schedules and reverse steps against diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` (the oracle)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from llmcore.architecture.diffusion.schedules import (
    NoiseSchedule,
    add_noise,
    ddim_step,
    ddpm_step,
    linear_betas,
    make_schedule,
    timesteps,
)


def diffusers_config(s: NoiseSchedule) -> dict:
    """The diffusers scheduler arguments that describe the same process as ``s``."""
    cfg = {"num_train_timesteps": s.T, "prediction_type": s.prediction, "clip_sample": s.clip_sample}
    if s.kind == "linear":
        lo, hi = linear_betas(s.T)
        cfg.update(beta_schedule="linear", beta_start=lo, beta_end=hi)
    else:
        cfg.update(beta_schedule="squaredcos_cap_v2")
    return cfg


def compare_with_diffusers(T: int = 100, kind: str = "linear", prediction: str = "epsilon", steps: int = 10,
                           eta: float = 0.0, clipped_eps: bool = False, seed: int = 0, shape: tuple[int, ...] = (4, 1, 8, 8)) -> dict[str, float]:
    """Max absolute differences between ours and diffusers for one schedule: ``betas``, ``alphas_cumprod``,
    ``add_noise`` at random timesteps, and every step of a DDPM chain (``T`` steps and ``steps`` steps) and a
    DDIM chain (``steps`` steps, ``eta``) driven by the same random "model outputs" and the same generator
    seeds. Each chain is stepped from the *same* input on both sides, so a difference cannot compound."""
    ours = make_schedule(T, kind, prediction)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    noise = torch.randn(shape, generator=g)
    t = torch.randint(0, T, (shape[0],), generator=g)
    out: dict[str, float] = {}
    ddpm = DDPMScheduler(**diffusers_config(ours))
    out["betas"] = (ours.betas - ddpm.betas).abs().max().item()
    out["alphas_cumprod"] = (ours.alphas_cumprod - ddpm.alphas_cumprod).abs().max().item()
    out["add_noise"] = (add_noise(ours, x0, noise, t) - ddpm.add_noise(x0, noise, t)).abs().max().item()

    def chain(theirs, n: int, step_ours, label: str) -> None:
        theirs.set_timesteps(n)
        ts = timesteps(ours, n)
        assert [int(v) for v in theirs.timesteps] == ts, "timestep grids differ"
        x, worst = torch.randn(shape, generator=g), 0.0
        for i, tt in enumerate(ts):
            model_out = torch.randn(shape, generator=g)
            k = seed * 1000 + i
            ref = theirs.step(model_out, tt, x, generator=torch.Generator().manual_seed(k), **(
                {"eta": eta, "use_clipped_model_output": clipped_eps} if isinstance(theirs, DDIMScheduler) else {}))
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            mine, x0_hat = step_ours(model_out, tt, x, prev, torch.Generator().manual_seed(k))
            worst = max(worst, (mine - ref.prev_sample).abs().max().item(),
                        (x0_hat - ref.pred_original_sample).abs().max().item())
            x = ref.prev_sample
        out[label] = worst

    chain(DDPMScheduler(**diffusers_config(ours)), T, lambda o, tt, x, p, gen: ddpm_step(ours, o, tt, x, p, gen),
          f"DDPM step ({T} steps)")
    chain(DDPMScheduler(**diffusers_config(ours)), steps,
          lambda o, tt, x, p, gen: ddpm_step(ours, o, tt, x, p, gen), f"DDPM step ({steps} steps)")
    chain(DDIMScheduler(**diffusers_config(ours)), steps,
          lambda o, tt, x, p, gen: ddim_step(ours, o, tt, x, p, eta, gen, clipped_eps),
          f"DDIM step ({steps} steps, eta={eta:g}{', clipped eps' if clipped_eps else ''})")
    return out
