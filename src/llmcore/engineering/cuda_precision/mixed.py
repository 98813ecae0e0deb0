r"""Mixed-precision training: autocast, fp32 master weights, dynamic loss scaling.

Under ``torch.autocast(device, dtype)`` matmuls run in the low-precision ``dtype`` (bf16 or fp16) while
the parameters -- the *master weights* -- and the optimizer state stay fp32; reductions such as the
loss stay fp32. fp16 has 5 exponent bits: gradients below its smallest subnormal ``2^{-24}`` become 0
(*underflow*). Loss scaling multiplies the loss by ``S`` before ``backward`` (every gradient is scaled
by ``S`` through the chain rule, lifting it above the underflow line) and divides the fp32 gradients
by ``S`` before the optimizer step. The dynamic scaler (Micikevicius et al. 2018) picks ``S``::

    if any gradient is inf/NaN:   skip the step;  S <- S * backoff;  streak <- 0
    else:                         step;           streak += 1;  if streak == interval: S <- S * growth; streak <- 0

so ``S`` sits just below the overflow edge. bf16 has fp32's 8 exponent bits and needs no scaling.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmcore.architecture.llama import lm_loss
from llmcore.architecture.training import TrainConfig, loss_of, lr_at, make_optimizer
from llmcore.core.errors import LLMCoreError

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DynamicLossScaler:
    """Our dynamic loss scaler; same constructor defaults and the same four calls as ``torch.amp.GradScaler``."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise LLMCoreError("need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1")
        self.scale_value = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.streak = 0  # consecutive steps without inf/NaN
        self.found_inf = False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``S * loss`` (fp32)."""
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide every gradient by ``S`` in place (multiply by the fp32 ``1/S``) and look for inf/NaN."""
        inv = torch.tensor(1.0 / self.scale_value, dtype=torch.float32)
        found = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    found |= not bool(torch.isfinite(p.grad).all())
                    p.grad.mul_(inv)
        self.found_inf = found

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer step unless a gradient overflowed; returns whether it stepped."""
        if self.found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Back off after an overflow; grow after ``growth_interval`` clean steps in a row."""
        if self.found_inf:
            self.scale_value *= self.backoff_factor
            self.streak = 0
        else:
            self.streak += 1
            if self.streak == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.streak = 0

    def get_scale(self) -> float:
        return self.scale_value


@dataclass
class MixedResult:
    """One mixed-precision run: per-step loss, loss scale (1 without a scaler) and which steps were skipped."""

    precision: str
    loss: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)  # the scale used for this step's backward
    skipped: list[int] = field(default_factory=list)
    val: float = float("nan")
    wall_s: float = 0.0
    params: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)


def train_mixed(model: torch.nn.Module, cfg: TrainConfig, batch_fn: Callable[[torch.Generator], tuple],
                precision: str = "fp32", scaler: object | None = None,
                eval_fn: Callable[[torch.nn.Module], float] | None = None, bar=None) -> MixedResult:
    """Train ``model`` (fp32 master weights) for ``cfg.steps`` with autocast in ``precision`` and an optional scaler.

    The kit's :func:`llmcore.architecture.training.train` has no place for an autocast region around the
    forward or a scaler between ``backward`` and ``step``; this loop reuses its pieces (``lr_at``,
    ``make_optimizer``, ``loss_of``, the same batch generator) so an fp32 run here takes the same steps.
    ``scaler``: ours or ``torch.amp.GradScaler`` (same interface); gradients are unscaled before clipping.
    ``bar``: an outer progress bar to advance once per step (one bar for several runs).
    """
    if precision not in PRECISIONS:
        raise LLMCoreError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    res = MixedResult(precision)
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        idx, labels = (t.to(dev) for t in batch_fn(gen))
        ctx = (torch.autocast(dev.type, dtype=AUTOCAST_DTYPES[precision]) if precision != "fp32"
               else contextlib.nullcontext())
        with ctx:
            loss = loss_of(model, idx, labels)
        opt.zero_grad(set_to_none=True)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        params = [p for p in model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else float("inf"))
        if scaler is not None:
            scaler.step(opt)  # skipped when unscale_ found inf/NaN
            scaler.update()
            if float(scaler.get_scale()) < scale:  # the scale backs off exactly when the step was skipped
                res.skipped.append(step)
        else:
            opt.step()
        res.loss.append(float(loss.detach()))
        res.scale.append(scale)
        if bar is not None:
            bar.update(1)
    res.wall_s = time.perf_counter() - t0
    if eval_fn is not None:
        res.val = float(eval_fn(model))
    res.params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return res


def grads_in(model: torch.nn.Module, idx: torch.Tensor, labels: torch.Tensor, precision: str,
             loss_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Gradients of one batch, flattened and divided by ``loss_scale`` in fp32: ``{"logits": .., "params": ..}``.

    ``"fp16"`` casts the whole model to fp16 (pure half precision: logits, activation gradients and parameter
    gradients are all fp16, so anything below half of ``2^{-24}`` flushes to zero) -- the case loss scaling
    exists for. The loss itself is computed in fp32 (:func:`~llmcore.architecture.llama.lm_loss` upcasts the
    logits); its gradient ``(softmax - onehot) / (B T)`` is cast to fp16 on the way back into the model.
    """
    m = model if precision == "fp32" else _half_copy(model)
    m.zero_grad(set_to_none=True)
    logits = m(idx)
    logits.retain_grad()
    (lm_loss(logits, labels) * loss_scale).backward()
    params = torch.cat([p.grad.reshape(-1).float() for p in m.parameters() if p.grad is not None])
    return {"logits": logits.grad.reshape(-1).float() / loss_scale, "params": params / loss_scale}


def _half_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An fp16 copy of ``model`` (the original keeps its fp32 weights)."""
    clone = type(model)(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.half()


@dataclass
class Underflow:
    """Per gradient kind (``"logits"``, ``"params"``): the fraction of entries that are non-zero in fp32 but
    exactly 0 in fp16, without loss scaling and with ``loss_scale``."""

    unscaled: dict[str, float]
    scaled: dict[str, float]
    loss_scale: float
    grads_fp32: dict[str, torch.Tensor] = field(repr=False)


def underflow_fraction(model: torch.nn.Module, idx: torch.Tensor, labels: torch.Tensor,
                       loss_scale: float = 2.0 ** 12) -> Underflow:
    """Compare fp16 gradients (scale 1 and ``loss_scale``) with the fp32 ones on the same batch."""
    ref = grads_in(model, idx, labels, "fp32")
    out = []
    for s in (1.0, loss_scale):
        g = grads_in(model, idx, labels, "fp16", s)
        if not all(torch.isfinite(v).all() for v in g.values()):
            raise LLMCoreError(f"loss_scale={s:g} overflows fp16 gradients; pick a smaller scale")
        out.append({k: float(((g[k] == 0) & (ref[k] != 0)).sum()) / max(1, int((ref[k] != 0).sum())) for k in ref})
    return Underflow(out[0], out[1], loss_scale, ref)


def scaler_equality(make_model: Callable[[], torch.nn.Module], cfg: TrainConfig, batch_fn, scaler_kwargs: dict,
                    device: torch.device, bar=None) -> dict:
    """Train two identical fp16-autocast runs, one with :class:`DynamicLossScaler` and one with
    ``torch.amp.GradScaler``; return both histories and their largest differences."""
    runs = {}
    for name in ("ours", "torch"):
        model = make_model().to(device)
        scaler = (DynamicLossScaler(**scaler_kwargs) if name == "ours"
                  else torch.amp.GradScaler(device.type, **scaler_kwargs))
        runs[name] = train_mixed(model, cfg, batch_fn, "fp16", scaler, bar=bar)
    a, b = runs["ours"], runs["torch"]
    return {"ours": a, "torch": b,
            "scale_mismatches": sum(x != y for x, y in zip(a.scale, b.scale)) + abs(len(a.scale) - len(b.scale)),
            "skipped_equal": a.skipped == b.skipped,
            "param_max_diff": max(float((a.params[k] - b.params[k]).abs().max()) for k in a.params),
            "loss_max_diff": max(abs(x - y) for x, y in zip(a.loss, b.loss))}

