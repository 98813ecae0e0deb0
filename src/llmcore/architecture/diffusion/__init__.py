"""Diffusion and DiT: DDPM / DDIM schedules and steps, classifier-free guidance, a small U-Net and a DiT
(adaLN-Zero), latent diffusion with a tiny autoencoder, on scikit-learn's 8x8 digits.

``schedules`` (forward process, reverse steps), ``models`` (denoisers, autoencoder, judge), ``experiment``
(the closed loop, its report and ``run``), ``crosscheck`` (against diffusers), ``plots`` (figures).
"""

from llmcore.architecture.diffusion.experiment import (
    DiffusionConfig,
    DiffusionResult,
    cfg_combine,
    diffusion_loss,
    experiment,
    frechet_distance,
    guided_output,
    load_data,
    make_report,
    run,
    sample,
)
from llmcore.architecture.diffusion.models import (
    DiT,
    DiTBlock,
    TinyAutoencoder,
    UNetLite,
    patchify,
    unpatchify,
)
from llmcore.architecture.diffusion.schedules import (
    NoiseSchedule,
    add_noise,
    ddim_step,
    ddpm_step,
    make_schedule,
    target,
    timesteps,
)

__all__ = [
    "DiT",
    "DiTBlock",
    "DiffusionConfig",
    "DiffusionResult",
    "NoiseSchedule",
    "TinyAutoencoder",
    "UNetLite",
    "add_noise",
    "cfg_combine",
    "ddim_step",
    "ddpm_step",
    "diffusion_loss",
    "experiment",
    "frechet_distance",
    "guided_output",
    "load_data",
    "make_report",
    "make_schedule",
    "patchify",
    "run",
    "sample",
    "target",
    "timesteps",
    "unpatchify",
]
