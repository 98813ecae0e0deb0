r"""The forward (noising) process and the DDPM / DDIM reverse steps.

Notation (Ho et al. 2020; Song et al. 2021): a schedule :math:`\beta_1..\beta_T`,
:math:`\alpha_t = 1-\beta_t`, :math:`\bar\alpha_t = \prod_{s\le t}\alpha_s`. Timesteps are 0-based
(``t = 0 .. T-1``) as in diffusers, whose ``DDPMScheduler`` / ``DDIMScheduler`` these functions
reproduce to float32 rounding (the tests and the chapter assert it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from llmcore.core.errors import LLMCoreError, check_range

PREDICTIONS = ("epsilon", "v_prediction")
KINDS = ("linear", "cosine")


@dataclass(frozen=True)
class NoiseSchedule:
    r"""A discrete noise schedule: ``betas``, ``alphas`` and ``alphas_cumprod`` :math:`\bar\alpha_t`, all ``(T,)``
    float32, and what the network predicts (``"epsilon"``: :math:`\epsilon`; ``"v_prediction"``:
    :math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0`)."""

    betas: torch.Tensor
    alphas: torch.Tensor
    alphas_cumprod: torch.Tensor
    kind: str = "linear"
    prediction: str = "epsilon"
    clip_sample: bool = True  # clamp the predicted x0 to [-1, 1] (the data range), as diffusers does by default

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])


def linear_betas(T: int) -> tuple[float, float]:
    """Endpoints of the linear schedule for ``T`` steps: DDPM's (1e-4, 0.02) at T = 1000, scaled by 1000/T so
    that a short chain still ends in (almost) pure noise (Nichol & Dhariwal 2021)."""
    return 1e-4 * 1000 / T, 0.02 * 1000 / T


def make_schedule(T: int = 1000, kind: str = "linear", prediction: str = "epsilon",
                  clip_sample: bool = True) -> NoiseSchedule:
    r"""Build a schedule of ``T`` steps.

    - ``"linear"``: :math:`\beta_t` evenly spaced between :func:`linear_betas` endpoints;
    - ``"cosine"``: :math:`\bar\alpha(s) = \cos^2\!\big(\tfrac{s+0.008}{1.008}\tfrac{\pi}{2}\big)`,
      :math:`\beta_t = \min\!\big(1 - \bar\alpha(\tfrac{t+1}{T})/\bar\alpha(\tfrac{t}{T}),\,0.999\big)`
      (Nichol & Dhariwal 2021; diffusers' ``"squaredcos_cap_v2"``).
    """
    if kind not in KINDS:
        raise LLMCoreError(f"schedule kind={kind!r}; valid: {', '.join(KINDS)}")
    if prediction not in PREDICTIONS:
        raise LLMCoreError(f"prediction={prediction!r}; valid: {', '.join(PREDICTIONS)}")
    check_range("T", T, 2, 100_000)
    if kind == "linear" and T < 25:
        raise LLMCoreError(f"the linear schedule scaled to T={T} would need beta_T = {20 / T:g}; use T >= 25")
    if kind == "linear":
        lo, hi = linear_betas(T)
        betas = torch.linspace(lo, hi, T, dtype=torch.float32)
    else:
        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)],
                             dtype=torch.float32)
    alphas = 1.0 - betas
    return NoiseSchedule(betas, alphas, torch.cumprod(alphas, dim=0), kind, prediction, clip_sample)


def add_noise(s: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""Sample the forward process in one jump, :math:`q(x_t|x_0)`:
    :math:`x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`.

    ``x0, noise (B, C, H, W)``, ``t (B,)`` long -> ``(B, C, H, W)``.
    """
    ab = s.alphas_cumprod.to(x0.device, x0.dtype)[t].view(-1, *([1] * (x0.dim() - 1)))
    return ab ** 0.5 * x0 + (1 - ab) ** 0.5 * noise


def target(s: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    r"""What the denoiser learns to output: :math:`\epsilon`, or :math:`v = \sqrt{\bar\alpha_t}\epsilon -
    \sqrt{1-\bar\alpha_t}x_0` (Salimans & Ho 2022). Shapes as in :func:`add_noise`."""
    if s.prediction == "epsilon":
        return noise
    ab = s.alphas_cumprod.to(x0.device, x0.dtype)[t].view(-1, *([1] * (x0.dim() - 1)))
    return ab ** 0.5 * noise - (1 - ab) ** 0.5 * x0


def timesteps(s: NoiseSchedule, steps: int) -> list[int]:
    """The ``steps`` timesteps a sampler visits, from noisiest to cleanest: every ``T // steps``-th,
    starting at 0 (diffusers' ``timestep_spacing="leading"``)."""
    check_range("steps", steps, 1, s.T)
    ratio = s.T // steps
    return [int(v) for v in (np.arange(0, steps) * ratio)[::-1]]


def _x0_eps(s: NoiseSchedule, out: torch.Tensor, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The network output turned into :math:`(\hat x_0, \hat\epsilon)` at step ``t`` (x0 clipped if asked)."""
    ab = s.alphas_cumprod[t]
    if s.prediction == "epsilon":
        x0, eps = (x - (1 - ab) ** 0.5 * out) / ab ** 0.5, out
    else:  # x = sqrt(ab) x0 + sqrt(1-ab) eps, v = sqrt(ab) eps - sqrt(1-ab) x0
        x0, eps = ab ** 0.5 * x - (1 - ab) ** 0.5 * out, ab ** 0.5 * out + (1 - ab) ** 0.5 * x
    if s.clip_sample:
        x0 = x0.clamp(-1.0, 1.0)
    return x0, eps


def ddpm_step(s: NoiseSchedule, out: torch.Tensor, t: int, x: torch.Tensor, prev_t: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One ancestral step :math:`x_t \to x_{t'}` (``prev_t`` :math:`= t' < t`; ``-1`` ends the chain).

    The posterior :math:`q(x_{t'}|x_t, x_0)` is Gaussian; with :math:`x_0` replaced by the prediction
    :math:`\hat x_0` and :math:`\beta = 1 - \bar\alpha_t/\bar\alpha_{t'}`:

    .. math:: \mu = \frac{\sqrt{\bar\alpha_{t'}}\,\beta}{1-\bar\alpha_t}\hat x_0
              + \frac{\sqrt{1-\beta}\,(1-\bar\alpha_{t'})}{1-\bar\alpha_t} x_t,\qquad
              \sigma^2 = \frac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}\beta,

    and :math:`x_{t'} = \mu + \sigma z`, :math:`z \sim N(0, I)` drawn from ``generator`` (none at ``t = 0``).
    ``out, x (B, C, H, W)`` -> ``(x_prev, x0_hat)``, each ``(B, C, H, W)``.
    """
    ab = s.alphas_cumprod[t]
    ab_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    alpha = ab / ab_prev
    beta = 1 - alpha
    x0, _ = _x0_eps(s, out, t, x)
    mean = (ab_prev ** 0.5 * beta) / (1 - ab) * x0 + alpha ** 0.5 * (1 - ab_prev) / (1 - ab) * x
    if t > 0:
        var = torch.clamp((1 - ab_prev) / (1 - ab) * beta, min=1e-20)
        z = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)  # CPU generator
        mean = mean + var ** 0.5 * z
    return mean, x0


def ddim_step(s: NoiseSchedule, out: torch.Tensor, t: int, x: torch.Tensor, prev_t: int, eta: float = 0.0,
              generator: torch.Generator | None = None,
              clipped_eps: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One DDIM step :math:`x_t \to x_{t'}` (Song et al. 2021, eq. 12):

    .. math:: x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t'}-\sigma^2}\,\hat\epsilon + \sigma z,
              \qquad \sigma = \eta\sqrt{\tfrac{1-\bar\alpha_{t'}}{1-\bar\alpha_t}\big(1-\tfrac{\bar\alpha_t}{\bar\alpha_{t'}}\big)}.

    ``eta = 0``: deterministic (the probability-flow ODE, discretised); ``eta = 1``: DDPM's variance.
    ``prev_t = -1`` uses :math:`\bar\alpha = 1`. ``clipped_eps``: re-derive :math:`\hat\epsilon` from the
    *clipped* :math:`\hat x_0`, :math:`\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\hat x_0)/\sqrt{1-\bar\alpha_t}`
    (diffusers' ``use_clipped_model_output``), so the step stays consistent when guidance pushes
    :math:`\hat x_0` out of the data range. Shapes as in :func:`ddpm_step`.
    """
    ab = s.alphas_cumprod[t]
    ab_prev = s.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    x0, eps = _x0_eps(s, out, t, x)
    if clipped_eps:
        eps = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5
    var = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
    std = eta * var ** 0.5
    prev = ab_prev ** 0.5 * x0 + (1 - ab_prev - std ** 2) ** 0.5 * eps
    if eta > 0:
        prev = prev + std * torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
    return prev, x0
