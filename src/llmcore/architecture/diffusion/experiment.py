"""The diffusion closed loop on scikit-learn's 8x8 digits: train a judge, two denoisers of equal size, an
autoencoder and a latent denoiser; sample with DDPM / DDIM and classifier-free guidance; measure."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from llmcore.architecture.diffusion.crosscheck import compare_with_diffusers
from llmcore.architecture.diffusion.models import (
    DigitClassifier,
    DiT,
    DiTBlock,
    TinyAutoencoder,
    UNetLite,
    count_params,
)
from llmcore.architecture.diffusion.schedules import (
    KINDS,
    PREDICTIONS,
    NoiseSchedule,
    add_noise,
    ddim_step,
    ddpm_step,
    make_schedule,
    target,
    timesteps,
)
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report

SAMPLERS = ("ddim", "ddpm")


@dataclass(frozen=True)
class DiffusionConfig:
    """Every knob of the closed loop; ``for_mode(toy)`` is the one place ``toy`` becomes numbers."""

    T: int = 100  # diffusion steps of the forward process (DDPM's full reverse chain has T steps)
    kind: str = "cosine"  # noise schedule: "linear" or "cosine"
    prediction: str = "epsilon"  # what the denoisers predict: "epsilon" or "v_prediction"
    steps: int = 400  # optimiser steps per denoiser (U-Net and DiT get the same)
    latent_steps: int = 300  # optimiser steps of the latent DiT (its 4 tokens are cheap, its task easy)
    batch: int = 256  # images per step
    lr: float = 3e-3  # AdamW peak step size (cosine decay to 0 after a short warmup)
    p_uncond: float = 0.1  # label dropout: how often the class is replaced by the "no label" token
    unet_ch: int = 16  # U-Net channels at 8x8 (2x at 4x4)
    unet_emb: int = 32  # U-Net conditioning width
    dit_d: int = 32  # DiT width
    dit_depth: int = 3  # DiT blocks
    dit_mlp_ratio: float = 2.0  # DiT MLP hidden = ratio * d
    guidance: float = 2.0  # classifier-free guidance scale w of the headline numbers
    guidance_sweep: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)  # scales of the sweep
    sample_steps: int = 20  # DDIM steps of the headline numbers
    ddim_sweep: tuple[int, ...] = (10, 20, 50)  # DDIM step counts compared with DDPM's full T steps
    per_class: int = 20  # samples per digit for every evaluated setting
    clf_steps: int = 300  # classifier optimiser steps
    ae_steps: int = 600  # autoencoder optimiser steps
    latent_z: int = 4  # latent channels at 2x2 (64 pixels -> 16 numbers)
    holdout: int = 297  # held-out images (classifier test set, Fréchet reference)

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise LLMCoreError(f"kind={self.kind!r}; valid: {', '.join(KINDS)}")
        if self.prediction not in PREDICTIONS:
            raise LLMCoreError(f"prediction={self.prediction!r}; valid: {', '.join(PREDICTIONS)}")
        check_range("T", self.T, 10, 10_000)
        check_range("steps", self.steps, 1, 10**7)
        check_range("latent_steps", self.latent_steps, 1, 10**7)
        check_range("batch", self.batch, 2, 65_536)
        check_range("lr", self.lr, 0.0, 1.0)
        check_range("p_uncond", self.p_uncond, 0.0, 1.0)
        check_range("sample_steps", self.sample_steps, 1, self.T)
        for n in self.ddim_sweep:
            check_range("ddim_sweep step count", n, 1, self.T)
        for w in self.guidance_sweep:
            check_range("guidance_sweep scale", w, 0.0, 100.0)
        check_range("per_class", self.per_class, 2, 100_000)
        check_range("holdout", self.holdout, 20, 1000)

    @classmethod
    def for_mode(cls, toy: bool, **overrides) -> DiffusionConfig:
        """Toy: T = 100, ~800 steps of ~50k-parameter denoisers (CPU, seconds). Full: T = 1000, 20k steps,
        4x wider models, 200 samples per digit (a GPU)."""
        cfg = cls() if toy else cls(T=1000, steps=20_000, batch=256, lr=1e-3, unet_ch=32, unet_emb=64,
                                    dit_d=64, dit_depth=6, latent_steps=20_000, ddim_sweep=(10, 20, 50, 100), per_class=200,
                                    clf_steps=2000, ae_steps=5000)
        cfg = replace(cfg, **overrides)
        cfg.validate()
        return cfg


# -- data ------------------------------------------------------------------------------------------

def load_data(holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's 1797 bundled 8x8 digits scaled from 0..16 to [-1, 1], split at random (``seed``) into
    train and ``holdout`` images: ``(x_train (N, 1, 8, 8), y_train (N,), x_test, y_test)``."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:holdout], perm[holdout:]
    return x[train], y[train], x[test], y[test]


def _batches(n: int, batch: int, steps: int, seed: int):
    """``steps`` index batches drawn by reshuffling ``range(n)`` each epoch (seeded)."""
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos:pos + batch]
        pos += batch


def _lr_at(step: int, steps: int, lr: float, warmup: int = 50) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))


# -- training --------------------------------------------------------------------------------------

def diffusion_loss(model: nn.Module, s: NoiseSchedule, x0: torch.Tensor, y: torch.Tensor, p_uncond: float,
                   generator: torch.Generator) -> torch.Tensor:
    r"""The simple DDPM objective with label dropout:
    :math:`\mathbb E_{t,\epsilon}\,\|f_\theta(x_t, t, \tilde y) - \text{target}\|^2`, :math:`t \sim U\{0..T-1\}`,
    :math:`x_t` from :func:`add_noise`, :math:`\tilde y` = the "no label" token with probability ``p_uncond``
    (one network learns both :math:`\epsilon(x_t, y)` and :math:`\epsilon(x_t)`). ``x0 (B, C, H, W)``, ``y (B,)``."""
    B = x0.shape[0]  # the random draws come from a CPU generator (same numbers on any device), then move
    t = torch.randint(0, s.T, (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    drop = (torch.rand(B, generator=generator) < p_uncond).to(x0.device)
    y = torch.where(drop, torch.full_like(y, model.n_classes), y)
    return F.mse_loss(model(add_noise(s, x0, noise, t), t, y), target(s, x0, noise, t))


def train_denoiser(model: nn.Module, s: NoiseSchedule, x: torch.Tensor, y: torch.Tensor, cfg: DiffusionConfig,
                   seed: int, bar=None) -> list[float]:
    """AdamW on :func:`diffusion_loss` for ``cfg.steps`` steps; returns the loss curve. The data order and the
    noise are seeded by ``seed`` alone, so two denoisers trained with one seed see the same batches."""
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses = []
    model.train()
    for i, idx in enumerate(_batches(len(x), cfg.batch, cfg.steps, seed)):
        for group in opt.param_groups:
            group["lr"] = _lr_at(i, cfg.steps, cfg.lr)
        loss = diffusion_loss(model, s, x[idx], y[idx], cfg.p_uncond, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
    model.eval()
    return losses


def train_supervised(model: nn.Module, x: torch.Tensor, target_: torch.Tensor, steps: int, batch: int, lr: float,
                     seed: int, loss_fn, bar=None) -> list[float]:
    """Plain AdamW for the classifier (cross-entropy) and the autoencoder (MSE)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for i, idx in enumerate(_batches(len(x), batch, steps, seed)):
        for group in opt.param_groups:
            group["lr"] = _lr_at(i, steps, lr, warmup=20)
        loss = loss_fn(model(x[idx]), target_[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
    model.eval()
    return losses


# -- sampling --------------------------------------------------------------------------------------

def cfg_combine(cond: torch.Tensor, unc: torch.Tensor, w: float) -> torch.Tensor:
    r"""Classifier-free guidance: :math:`\hat\epsilon = \epsilon_u + w\,(\epsilon_c - \epsilon_u)`, any shape."""
    return unc + w * (cond - unc)


def guided_output(model: nn.Module, x: torch.Tensor, t: int, y: torch.Tensor, w: float) -> torch.Tensor:
    r"""Classifier-free guidance (Ho & Salimans 2022): :math:`\hat\epsilon = \epsilon(x_t) + w\,(\epsilon(x_t, y)
    - \epsilon(x_t))`. ``w = 0``: unconditional; ``w = 1``: conditional; ``w > 1``: pushed past the conditional.
    One batched call for both terms. ``x (B, C, H, W)``, ``y (B,)`` -> ``(B, C, H, W)``."""
    B = x.shape[0]
    tt = torch.full((B,), t, dtype=torch.long, device=x.device)
    null = torch.full_like(y, model.n_classes)
    if w == 0.0:
        return model(x, tt, null)
    if w == 1.0:
        return model(x, tt, y)
    both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null]))
    cond, unc = both[:B], both[B:]
    return cfg_combine(cond, unc, w)


@torch.no_grad()
def sample(model: nn.Module, s: NoiseSchedule, y: torch.Tensor, guidance: float = 3.0, steps: int = 20,
           sampler: str = "ddim", generator: torch.Generator | None = None, eta: float = 0.0,
           shape: tuple[int, ...] = (1, 8, 8), keep_trajectory: bool = False):
    """Draw ``len(y)`` samples of classes ``y`` from pure noise with ``steps`` reverse steps of ``sampler``
    (``"ddpm"``: ancestral; ``"ddim"``: deterministic for ``eta = 0``). Returns ``x0 (B, *shape)``, or with
    ``keep_trajectory`` also the list of ``(t, x_t, x0_hat)`` after each step."""
    if sampler not in SAMPLERS:
        raise LLMCoreError(f"sampler={sampler!r}; valid: {', '.join(SAMPLERS)}")
    dev = next(model.parameters()).device
    y = y.to(dev)
    x = torch.randn((len(y), *shape), generator=generator).to(dev)  # CPU generator: same noise on any device
    ts = timesteps(s, steps)
    traj = []
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else -1
        out = guided_output(model, x, t, y, guidance)
        if sampler == "ddpm":
            x, x0 = ddpm_step(s, out, t, x, prev, generator)
        else:
            x, x0 = ddim_step(s, out, t, x, prev, eta, generator, clipped_eps=s.clip_sample)
        if keep_trajectory:
            traj.append((t, x.cpu(), x0.cpu()))
    return (x, traj) if keep_trajectory else x


# -- evaluation ------------------------------------------------------------------------------------

def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets ``(N1, D)``, ``(N2, D)`` (Heusel et al.
    2017): :math:`\|\mu_1-\mu_2\|^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    # a tiny ridge: ReLU features that are never active have zero variance, which makes the product singular
    ridge = 1e-6 * np.eye(f1.shape[1])
    s1, s2 = np.cov(f1, rowvar=False) + ridge, np.cov(f2, rowvar=False) + ridge
    covmean = linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def within_class_diversity(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean pairwise L2 distance between samples of the same class (pixels in [-1, 1]), averaged over
    classes: falls as guidance collapses each class onto its modes."""
    vals = []
    for c in y.unique():
        xc = x[y == c].flatten(1)
        d = torch.cdist(xc, xc)
        n = len(xc)
        vals.append(d.sum().item() / (n * (n - 1)))
    return float(np.mean(vals))


@dataclass
class SampleEval:
    """What one sampling setting produced and how the judge rated it."""

    label: str
    accuracy: float  # fraction the classifier recognises as the requested digit
    fd: float  # Fréchet distance to the held-out images on the classifier's features
    diversity: float  # within-class mean pairwise distance
    seconds: float  # wall time of the sampling
    nfe: int  # network evaluations per sample (CFG counts 2 per step)
    samples: torch.Tensor | None = None  # (B, 1, 8, 8) the images, for figures


@torch.no_grad()
def evaluate(clf: DigitClassifier, x: torch.Tensor, y: torch.Tensor, ref_feats: np.ndarray, label: str,
             seconds: float = float("nan"), nfe: int = 0) -> SampleEval:
    acc = (clf(x).argmax(-1) == y).float().mean().item()
    return SampleEval(label, acc, frechet_distance(clf.features(x).cpu().numpy(), ref_feats),
                      within_class_diversity(x, y), seconds, nfe, x.cpu())


def _timed_sample(model, s, y, w, steps, sampler, seed, shape=(1, 8, 8), decode=None):
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    x = sample(model, s, y, w, steps, sampler, g, shape=shape)
    if decode is not None:
        with torch.no_grad():
            x = decode(x)
    if x.is_cuda:  # kernels run asynchronously: wait for them before reading the clock
        torch.cuda.synchronize()
    nfe = steps * (1 if w in (0.0, 1.0) else 2)
    return x, time.perf_counter() - t0, nfe


def flops_per_call(model: nn.Module, shape: tuple[int, ...]) -> int:
    """FLOPs of one denoiser call on one image, counted by torch's ``FlopCounterMode``."""
    dev = next(model.parameters()).device
    x = torch.zeros((1, *shape), device=dev)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, torch.zeros(1, dtype=torch.long, device=dev), torch.zeros(1, dtype=torch.long, device=dev))
    return int(fc.get_total_flops())


# -- the closed loop -------------------------------------------------------------------------------

@dataclass
class DiffusionResult:
    cfg: DiffusionConfig
    schedule: NoiseSchedule
    clf_test_acc: float
    ref_fd: float  # FD between a train subset and the held-out images: the floor a perfect model reaches
    params: dict[str, int]
    losses: dict[str, list[float]]
    train_seconds: dict[str, float]
    headline: dict[str, SampleEval]  # "unet", "dit", "latent" at cfg.guidance, cfg.sample_steps
    guidance: list[SampleEval]  # U-Net over cfg.guidance_sweep
    samplers: list[SampleEval]  # U-Net: DDIM over cfg.ddim_sweep, then DDPM at T steps
    flops: dict[str, int]  # per denoiser call on one sample ("decoder": the autoencoder's decoder, once)
    ae_mse: float  # autoencoder reconstruction MSE on held-out images
    grid: torch.Tensor  # (10, per_class, 1, 8, 8) headline U-Net samples
    crosscheck: dict[str, float]  # worst |ours - diffusers| per schedule / prediction / sampler setting
    adaln_identity: float  # max |DiTBlock(x, c) - x| of a freshly initialised block
    models: dict[str, nn.Module] = field(default_factory=dict)  # unet, dit, latent, ae, clf
    latent_scale: float = 1.0


def experiment(cfg: DiffusionConfig, seed: int = 0, show_progress: bool = True,
               device: torch.device = CPU) -> DiffusionResult:
    """Train the judge, the U-Net and the DiT (same steps, same batches), the autoencoder and a latent DiT;
    then sample and measure: every digit, the guidance sweep, DDIM vs DDPM, U-Net vs DiT, latent vs pixel.

    Models and data live on ``device``; every random draw (init, batches, noise) comes from CPU generators, so
    a CUDA run sees the same numbers up to kernel rounding. Returned samples are on the CPU, models on ``device``."""
    cfg.validate()
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = (t.to(device) for t in load_data(cfg.holdout, seed))
    s = make_schedule(cfg.T, cfg.kind, cfg.prediction)
    total = cfg.clf_steps + cfg.ae_steps + 2 * cfg.steps + cfg.latent_steps
    bar = progress(total=total, desc="classifier, U-Net, DiT, autoencoder, latent DiT", disable=not show_progress)
    clf = DigitClassifier().to(device)
    train_supervised(clf, x_tr, y_tr, cfg.clf_steps, 128, 3e-3, seed, F.cross_entropy, bar)
    with torch.no_grad():
        clf_acc = (clf(x_te).argmax(-1) == y_te).float().mean().item()
        ref_feats = clf.features(x_te).cpu().numpy()
        ref_fd = frechet_distance(clf.features(x_tr[: cfg.holdout]).cpu().numpy(), ref_feats)
    models: dict[str, nn.Module] = {
        "unet": UNetLite(ch=cfg.unet_ch, emb=cfg.unet_emb),
        "dit": DiT(d=cfg.dit_d, depth=cfg.dit_depth, mlp_ratio=cfg.dit_mlp_ratio),
    }
    losses, secs = {}, {}
    for name, m in models.items():
        torch.manual_seed(seed)
        m.to(device)
        t0 = time.perf_counter()
        losses[name] = train_denoiser(m, s, x_tr, y_tr, cfg, seed, bar)
        secs[name] = time.perf_counter() - t0
    # latent diffusion: autoencoder, then a DiT on its (z, 2, 2) latents with patch 1 (4 tokens)
    torch.manual_seed(seed)
    ae = TinyAutoencoder(z=cfg.latent_z).to(device)
    losses["ae"] = train_supervised(ae, x_tr, x_tr, cfg.ae_steps, 128, 3e-3, seed, F.mse_loss, bar)
    with torch.no_grad():
        z_tr = ae.enc(x_tr)
        scale = float(z_tr.std())
        ae_mse = F.mse_loss(ae(x_te), x_te).item()
    torch.manual_seed(seed)
    lat = DiT(in_ch=cfg.latent_z, size=2, patch=1, d=cfg.dit_d, depth=cfg.dit_depth,
              mlp_ratio=cfg.dit_mlp_ratio).to(device)
    lat_s = replace(s, clip_sample=False)  # latents are not confined to [-1, 1]
    t0 = time.perf_counter()
    losses["latent"] = train_denoiser(lat, lat_s, z_tr / scale, y_tr, replace(cfg, steps=cfg.latent_steps), seed, bar)
    secs["latent"] = time.perf_counter() - t0
    bar.close()
    models.update(latent=lat, ae=ae, clf=clf)

    y_eval = torch.arange(10).repeat_interleave(cfg.per_class).to(device)
    sseed = seed + 1000
    head, grid = {}, None
    for name in ("unet", "dit"):
        x, sec, nfe = _timed_sample(models[name], s, y_eval, cfg.guidance, cfg.sample_steps, "ddim", sseed)
        head[name] = evaluate(clf, x, y_eval, ref_feats, name, sec, nfe)
        if name == "unet":
            grid = x.reshape(10, cfg.per_class, 1, 8, 8).cpu()
    x, sec, nfe = _timed_sample(lat, lat_s, y_eval, cfg.guidance, cfg.sample_steps, "ddim", sseed,
                                shape=(cfg.latent_z, 2, 2), decode=lambda z: ae.dec(z * scale))
    head["latent"] = evaluate(clf, x, y_eval, ref_feats, "latent", sec, nfe)
    sweep = []
    for w in cfg.guidance_sweep:
        if w == cfg.guidance:
            sweep.append(replace(head["unet"], label=f"w={w:g}"))
            continue
        x, sec, nfe = _timed_sample(models["unet"], s, y_eval, w, cfg.sample_steps, "ddim", sseed)
        sweep.append(evaluate(clf, x, y_eval, ref_feats, f"w={w:g}", sec, nfe))
    samplers = []
    for n in cfg.ddim_sweep:
        if n == cfg.sample_steps:
            samplers.append(replace(head["unet"], label=f"DDIM {n}"))
            continue
        x, sec, nfe = _timed_sample(models["unet"], s, y_eval, cfg.guidance, n, "ddim", sseed)
        samplers.append(evaluate(clf, x, y_eval, ref_feats, f"DDIM {n}", sec, nfe))
    x, sec, nfe = _timed_sample(models["unet"], s, y_eval, cfg.guidance, cfg.T, "ddpm", sseed)
    samplers.append(evaluate(clf, x, y_eval, ref_feats, f"DDPM {cfg.T}", sec, nfe))
    params = {k: count_params(models[k]) for k in ("unet", "dit", "latent", "ae", "clf")}
    flops = {"unet": flops_per_call(models["unet"], (1, 8, 8)), "dit": flops_per_call(models["dit"], (1, 8, 8)),
             "latent": flops_per_call(lat, (cfg.latent_z, 2, 2))}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        ae.dec(torch.zeros(1, cfg.latent_z, 2, 2, device=device))
    flops["decoder"] = int(fc.get_total_flops())
    return DiffusionResult(cfg, s, clf_acc, ref_fd, params, losses, secs, head, sweep, samplers, flops, ae_mse,
                           grid, crosscheck_all(cfg.T, seed), adaln_identity(cfg.dit_d, seed), models, scale)


def crosscheck_all(T: int, seed: int = 0) -> dict[str, float]:
    """Worst difference to diffusers for every schedule x prediction, with DDIM at eta = 0 (clipped eps, as
    our sampler) and eta = 1 (plain): ``{"<kind>/<prediction>": max abs diff}``."""
    out = {}
    for kind in KINDS:
        for pred in PREDICTIONS:
            worst = 0.0
            for eta, clipped in ((0.0, True), (1.0, False)):
                d = compare_with_diffusers(T, kind, pred, steps=min(20, T), eta=eta, clipped_eps=clipped, seed=seed)
                worst = max(worst, *d.values())
            out[f"{kind}/{pred}"] = worst
    return out


def adaln_identity(d: int = 32, seed: int = 0) -> float:
    """``max |DiTBlock(x, c) - x|`` for a freshly built block and random ``x (4, 16, d)``, ``c (4, d)``: 0 when the
    adaLN-Zero gates start at zero."""
    torch.manual_seed(seed)
    block = DiTBlock(d)
    x, c = torch.randn(4, 16, d), torch.randn(4, d)
    with torch.no_grad():
        return (block(x, c) - x).abs().max().item()


def make_report(res: DiffusionResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and the acceptance criteria (the thresholds live here only)."""
    rep = Report("diffusion", "Diffusion / DiT / 扩散模型与 DiT", toy, device, seed)
    cfg, h = res.cfg, res.headline
    by_w = {e.label: e for e in res.guidance}
    by_s = {e.label: e for e in res.samplers}
    w_lo, w_hi = min(cfg.guidance_sweep), max(cfg.guidance_sweep)
    lo, one, hi = by_w[f"w={w_lo:g}"], by_w.get("w=1", by_w[f"w={w_lo:g}"]), by_w[f"w={w_hi:g}"]
    ddpm, ddim_few = by_s[f"DDPM {cfg.T}"], by_s[f"DDIM {min(cfg.ddim_sweep)}"]
    rep.metric("judge: held-out accuracy", res.clf_test_acc)
    rep.metric("FD floor (train vs held-out images)", res.ref_fd)
    for name, e in h.items():
        rep.metric(f"{name}: accuracy (w={cfg.guidance:g}, DDIM {cfg.sample_steps})", e.accuracy)
        rep.metric(f"{name}: Fréchet distance", e.fd)
    for e in res.guidance + res.samplers:
        rep.metric(f"U-Net {e.label}: accuracy", e.accuracy)
        rep.metric(f"U-Net {e.label}: FD", e.fd)
        rep.metric(f"U-Net {e.label}: diversity", e.diversity)
    for k, v in res.params.items():
        rep.metric(f"params {k}", v)
    for k, v in res.flops.items():
        rep.metric(f"FLOPs per call {k}", v)
    pix = 2 * cfg.sample_steps * res.flops["dit"]
    lat = 2 * cfg.sample_steps * res.flops["latent"] + res.flops["decoder"]
    rep.check("schedules and steps vs diffusers DDPM/DDIMScheduler: max abs diff", max(res.crosscheck.values()),
              "<", 1e-6)
    rep.check("adaLN-Zero DiT block at init: max |block(x) - x|", res.adaln_identity, "<=", 0.0)
    rep.check("judge: held-out accuracy", res.clf_test_acc, ">=", 0.9)
    rep.check(f"U-Net, w={cfg.guidance:g}: recognised as the requested digit", h["unet"].accuracy, ">=", 0.8)
    rep.check(f"guidance raises accuracy: acc(w={w_hi:g}) - acc(w={w_lo:g})", hi.accuracy - lo.accuracy, ">=", 0.5)
    rep.check(f"guidance lowers diversity: div(w={w_hi:g}) / div(w=1)", hi.diversity / one.diversity, "<=", 0.9)
    rep.check(f"DDIM {min(cfg.ddim_sweep)} steps: recognised as the requested digit", ddim_few.accuracy, ">=", 0.8)
    rep.check(f"DDIM {min(cfg.ddim_sweep)} steps: FD / DDPM {cfg.T} steps' FD", ddim_few.fd / ddpm.fd, "<=", 1.5)
    rep.check("DiT / U-Net parameter ratio - 1 (equal size)", abs(res.params["dit"] / res.params["unet"] - 1),
              "<=", 0.15)
    rep.check(f"DiT, w={cfg.guidance:g}: recognised as the requested digit", h["dit"].accuracy, ">=", 0.25)
    rep.check("latent / pixel DiT sampling FLOPs (incl. decoding)", lat / pix, "<=", 0.5)
    rep.check(f"latent DiT, w={cfg.guidance:g}: recognised as the requested digit", h["latent"].accuracy, ">=", 0.8)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The diffusion closed loop (registry entry point; the registry resolves ``device`` and ``seed``)."""
    res = experiment(DiffusionConfig.for_mode(toy), seed, show_progress=True, device=device)
    return make_report(res, toy, str(device), seed)
