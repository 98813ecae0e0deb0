r"""A reusable language-model training loop: AdamW, linear warmup + cosine decay, gradient clipping,
a progress bar, periodic validation, a safetensors checkpoint, and resumable training state.

The loop is model- and data-agnostic: ``batch_fn(generator) -> (idx, labels)`` draws one batch
(``labels`` in HF's convention: shifted inside the model, ``-100`` ignored) and the model returns
``(logits, loss)`` when given ``labels`` (as :class:`~llmcore.architecture.llama.Llama` and HF's
``LlamaForCausalLM`` -- through :func:`loss_of` -- do). Learning rate at step ``t``:

$$ \eta_t = \eta_{\max}\,\frac{t+1}{W} \ (t < W), \qquad
   \eta_t = \eta_{\min} + \tfrac12(\eta_{\max}-\eta_{\min})\Bigl(1+\cos\frac{\pi (t-W)}{T-W}\Bigr) \ (t \ge W). $$
"""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmcore.core.errors import LLMCoreError
from llmcore.core.progress import progress


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # eta_min = min_lr_ratio * lr
    warmup_steps: int = 50
    weight_decay: float = 0.1  # on matrices only (not norms' gains)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0  # max global L2 norm; None = no clipping
    eval_every: int = 0  # 0 = only at the end
    seed: int = 0
    desc: str = "train"


@dataclass
class TrainResult:
    """Per-step history (lists have one entry per step) and the validation curve."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # before clipping
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, val loss)
    wall_s: float = 0.0
    tokens_seen: int = 0

    @property
    def final_val(self) -> float:
        return self.val[-1][1] if self.val else float("nan")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup for ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on >= 2-D tensors (matrices, embeddings) and none on gains/biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def loss_of(model: torch.nn.Module, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The LM loss of our model (tuple output) or of an HF model (``.loss``)."""
    out = model(idx, labels=labels)
    return out.loss if hasattr(out, "loss") else out[1]


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``seq_len`` tokens from a 1-D tensor; ``labels = idx``."""
    starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator)
    idx = torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])
    return idx, idx


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int, batch_size: int = 32,
             max_windows: int | None = None) -> float:
    """Mean next-token loss (nats/token) over consecutive non-overlapping windows of ``tokens``.

    Deterministic (no sampling). Each window predicts its ``seq_len - 1`` last tokens.
    """
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = (len(tokens) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    windows = tokens[: n * seq_len].view(n, seq_len)
    total, count = 0.0, 0
    for i in range(0, n, batch_size):
        w = windows[i:i + batch_size].to(dev)
        loss = loss_of(model, w, w)
        total += float(loss) * w.shape[0] * (seq_len - 1)
        count += w.shape[0] * (seq_len - 1)
    model.train(was)
    return total / max(1, count)


def train(model: torch.nn.Module, cfg: TrainConfig,
          batch_fn: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
          eval_fn: Callable[[torch.nn.Module], float] | None = None,
          on_backward: Callable[[int, torch.nn.Module], None] | None = None,
          checkpoint_dir: str | Path | None = None, state_dir: str | Path | None = None,
          save_every: int = 0, show_progress: bool = True) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps; return the history.

    ``on_backward(step, model)`` runs after ``loss.backward()`` and before clipping (read gradients
    there). ``checkpoint_dir``: the final model is written there with ``save_pretrained`` when the
    model has it (else ``model.safetensors`` of its state dict), plus ``train_state.json``.

    ``state_dir`` + ``save_every``: every ``save_every`` steps the full training state (weights,
    optimizer moments, the batch generator's state, the history) is written atomically to
    ``state_dir/state.pt``; a later call with the same ``state_dir`` resumes from it and continues
    exactly as if it had never stopped (same batches, same updates).

    ``show_progress=False`` hides this run's bar (for loops over many runs that show one bar of their own).
    """
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg)
    res = TrainResult()
    start = 0
    if state_dir is not None and (Path(state_dir) / "state.pt").is_file():
        start = load_train_state(Path(state_dir) / "state.pt", model, opt, gen, res)
    model.train()
    t0 = time.perf_counter() - res.wall_s
    quiet = {} if show_progress else {"disable": True}  # a caller with its own outer bar passes False
    bar = progress(range(start, cfg.steps), desc=cfg.desc, initial=start, total=cfg.steps, **quiet)
    for step in bar:
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        idx, labels = batch_fn(gen)
        idx, labels = idx.to(dev), labels.to(dev)
        loss = loss_of(model, idx, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if on_backward is not None:
            on_backward(step, model)
        params = [p for p in model.parameters() if p.grad is not None]
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip else float("inf"))
        opt.step()
        res.loss.append(float(loss.detach()))
        res.lr.append(lr)
        res.grad_norm.append(float(gn))
        res.tokens_seen += idx.numel()
        if eval_fn is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0)
                                    or step + 1 == cfg.steps):
            res.val.append((step + 1, float(eval_fn(model))))
            model.train()
        if step % 10 == 0 or step + 1 == cfg.steps:
            post = {"loss": f"{res.loss[-1]:.3f}", "lr": f"{lr:.2e}"}
            if res.val:
                post["val"] = f"{res.val[-1][1]:.3f}"
            bar.set_postfix(post)
        if state_dir is not None and save_every and ((step + 1) % save_every == 0 or step + 1 == cfg.steps):
            res.wall_s = time.perf_counter() - t0
            save_train_state(Path(state_dir) / "state.pt", step + 1, model, opt, gen, res)
    res.wall_s = time.perf_counter() - t0
    if checkpoint_dir is not None:
        save_checkpoint(model, checkpoint_dir, cfg, res)
    return res


def save_train_state(path: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     gen: torch.Generator, res: TrainResult) -> None:
    """Everything :func:`train` needs to resume after ``step`` steps, written atomically (tmp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "generator": gen.get_state(), "history": asdict(res)}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_train_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
                     res: TrainResult) -> int:
    """Restore what :func:`save_train_state` wrote; return the step to continue from."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
    except (RuntimeError, KeyError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise LLMCoreError(f"training state {path} is unreadable ({type(e).__name__}); delete it to start "
                           "the run from step 0") from None
    for key, value in state["history"].items():
        setattr(res, key, [tuple(v) for v in value] if key == "val" else value)
    return int(state["step"])


def save_checkpoint(model: torch.nn.Module, directory: str | Path, cfg: TrainConfig | None = None,
                    res: TrainResult | None = None) -> Path:
    """Weights in safetensors (HF layout when the model has ``save_pretrained``) + ``train_state.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        from safetensors.torch import save_model

        save_model(model, str(directory / "model.safetensors"))
    state = {"train_config": asdict(cfg) if cfg else None,
             "final_val": res.final_val if res else None, "steps": len(res.loss) if res else None,
             "final_train_loss": res.loss[-1] if res and res.loss else None}
    (directory / "train_state.json").write_text(json.dumps(state, indent=2))
    return directory
