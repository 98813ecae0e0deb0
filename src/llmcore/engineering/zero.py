r"""DeepSpeed ZeRO from scratch on ``torch.distributed``: stages 1, 2, 3, CPU offload, checkpointing.

Data parallelism (DDP) keeps a full copy of the *model states* on each of the :math:`N` ranks. With
Adam, :math:`\Psi` parameters cost per rank (Rajbhandari et al., 2020, §3; mixed precision:
:math:`P=2, G=2, K=12`; the fp32 toy here: :math:`P=4, G=4, K=8`)

.. math::
    \underbrace{(P + G + K)\Psi}_{\text{DDP}},\quad
    \underbrace{P\Psi + G\Psi + \tfrac{K\Psi}{N}}_{\text{ZeRO-1 } (P_{os})},\quad
    \underbrace{P\Psi + \tfrac{(G+K)\Psi}{N}}_{\text{ZeRO-2 } (P_{os+g})},\quad
    \underbrace{\tfrac{(P+G+K)\Psi}{N}}_{\text{ZeRO-3 } (P_{os+g+p})}\ \text{bytes}.

How each stage gets there (every layer's weight and bias are one flat buffer, padded to a multiple of
:math:`N`; rank :math:`r` owns slice :math:`r`):

* **ZeRO-1** — full parameters and gradients; after backward the gradient is *reduce-scattered*, each
  rank runs Adam on its slice only (optimizer states :math:`K\Psi/N`), then the updated slices are
  *all-gathered* back into the full parameters.
* **ZeRO-2** — the same, but each layer's gradient is reduce-scattered *during* backward (a hook fires
  when the layer's gradients are ready) and the full gradient is freed at once: only the slice persists.
* **ZeRO-3** — the parameters are sharded too. A layer's weights are all-gathered just before its
  forward, freed after it, gathered again for its backward and freed again; its gradient is
  reduce-scattered straight into the owner's slice. Communication: 3 x the parameter volume vs 2 x
  for DDP and ZeRO-1/2 (measured below with :class:`~llmcore.engineering.dist_utils.Comm`).
* **Offload** (ZeRO-Offload) — Adam's states and step live on the CPU; the gradient slice goes down,
  the updated parameter slice comes back.
* **Mixed precision** (:data:`MIXED_VARIANTS`) — the model in bf16: shards, gradients and communication
  are 16-bit, Adam updates fp32 master copies of the slices: the paper's :math:`16\Psi` per parameter, measured.

Activation checkpointing (Chen et al., 2016) is the orthogonal saving: keep only each segment's input
and recompute the segment in backward (:func:`checkpoint`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from llmcore.core.report import Report
from llmcore.engineering.dist_utils import (
    Comm,
    init_from_env,
    ring_gather_bytes,
    torchrun_entry,
    worker_device,
)

# -- model, data, memory formulas ----------------------------------------------------------------------


@dataclass
class ZeroConfig:
    sizes: tuple[int, ...] = (32, 64, 64, 16)  # MLP widths: in, hidden..., out
    batch: int = 32                              # global batch, split over the ranks
    steps: int = 8
    lr: float = 1e-2
    seed: int = 0
    device: str = "cpu"                          # "cpu" (gloo) or "cuda" (NCCL, one GPU per rank)


def make_mlp(sizes: tuple[int, ...], seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods)


def batch_for(cfg: ZeroConfig, step: int, rank: int, world: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the global batch of ``step`` (the same global data for every N).

    Targets come from a fixed random *teacher* ``tanh(X A) B`` plus noise, so the loss can fall."""
    gt = torch.Generator().manual_seed(cfg.seed + 12345)
    A = torch.randn(cfg.sizes[0], cfg.sizes[1], generator=gt) / cfg.sizes[0] ** 0.5
    B = torch.randn(cfg.sizes[1], cfg.sizes[-1], generator=gt) / cfg.sizes[1] ** 0.5
    g = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    X = torch.randn(cfg.batch, cfg.sizes[0], generator=g)
    Y = torch.tanh(X @ A) @ B + 0.05 * torch.randn(cfg.batch, cfg.sizes[-1], generator=g)
    lo, hi = rank * cfg.batch // world, (rank + 1) * cfg.batch // world
    return X[lo:hi].to(device), Y[lo:hi].to(device)


#: bytes per parameter of (parameters, gradients, optimizer states): the paper's mixed-precision Adam
#: (fp16 params and grads; fp32 master params, momentum, variance) and our fp32 toy (fp32 Adam).
MIXED_PRECISION = (2, 2, 12)
FP32_ADAM = (4, 4, 8)


def zero_formula(psi: float, n: int, stage: int, pgk: tuple[int, int, int] = MIXED_PRECISION) -> dict[str, float]:
    """Per-rank model-state bytes of ZeRO ``stage`` (0 = DDP) for ``psi`` parameters on ``n`` ranks."""
    P, G, K = pgk
    params = P * psi / (n if stage >= 3 else 1)
    grads = G * psi / (n if stage >= 2 else 1)
    optim = K * psi / (n if stage >= 1 else 1)
    return {"params": params, "grads": grads, "optim": optim, "total": params + grads + optim}


def plot_partitioning(ax, n: int = 4, pgk: tuple[int, int, int] = MIXED_PRECISION):
    r"""Draw which model states each of ``n`` ranks holds under DDP and ZeRO-1/2/3.

    One row per stage, one column per rank; in every cell a bar of :math:`P + G + K` units (bytes per
    parameter) split into parameters, gradients and optimizer states. A sharded state is cut into ``n``
    pieces and rank ``r`` keeps (colours) piece ``r`` only; the pieces it does not keep are left as outlines.
    The right margin gives the per-rank bytes of :func:`zero_formula`. Returns ``ax``.
    """
    from matplotlib.patches import Patch, Rectangle

    from llmcore.core.plotting import PALETTE

    P, G, K = pgk
    total = P + G + K
    names = ["DDP", "ZeRO-1 ($P_{os}$)", "ZeRO-2 ($P_{os+g}$)", "ZeRO-3 ($P_{os+g+p}$)"]
    kinds = (("parameters", P, 3), ("gradients", G, 2), ("optimizer states", K, 1))  # sharded from stage
    cell_w, gap = total, 0.25 * total
    for stage in range(len(names)):
        y = stage
        for r in range(n):
            x0 = r * (cell_w + gap)
            x = x0
            for (_label, width, from_stage), color in zip(kinds, PALETTE):
                if stage < from_stage:  # replicated: the rank holds all of it
                    ax.add_patch(Rectangle((x, y - 0.3), width, 0.6, facecolor=color, edgecolor="white", lw=0.5))
                else:  # sharded: n pieces, piece r is this rank's
                    for k in range(n):
                        held = k == r
                        ax.add_patch(Rectangle((x + k * width / n, y - 0.3), width / n, 0.6,
                                               facecolor=color if held else "none", edgecolor=color if not held
                                               else "white", lw=0.5, alpha=1.0 if held else 0.5))
                x += width
        f = zero_formula(1, n, stage, pgk)["total"]
        ax.text(n * (cell_w + gap) - gap / 2, y, f"{f:g}Ψ B/rank", va="center", fontsize=8)
    for r in range(n):
        ax.text(r * (cell_w + gap) + cell_w / 2, -0.6, f"rank {r}", ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-0.2, n * (cell_w + gap) + 0.9 * total)
    ax.set_ylim(len(names) - 0.4, -0.9)
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks([])
    ax.grid(False)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.legend(handles=[Patch(color=c, label=f"{lab} ({w} B/param)") for (lab, w, _s), c in zip(kinds, PALETTE)],
              loc="upper center", bbox_to_anchor=(0.45, -0.02), ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"Model states held by each of N = {n} ranks (P, G, K) = {pgk} bytes per parameter", fontsize=9)
    return ax


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer count once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """``(device_bytes, host_bytes)`` of an optimizer's state tensors (Adam: step, exp_avg, exp_avg_sq)."""
    dev = host = 0
    for st in opt.state.values():
        for v in st.values():
            if torch.is_tensor(v):
                if v.device.type == "cpu":
                    host += v.numel() * v.element_size()
                if v.device.type != "cpu":
                    dev += v.numel() * v.element_size()
    return dev, host


# -- ZeRO-3: a linear layer whose parameters exist only as a shard ------------------------------------


class _GatheredLinear(torch.autograd.Function):
    """``y = x W^T + b`` where ``W, b`` are all-gathered from the shards for the op and freed after."""

    @staticmethod
    def forward(ctx, x, shard, layer: ShardedLinear):
        w, b = layer.gather()
        ctx.layer = layer
        ctx.save_for_backward(x, shard)  # the shard, never the full weight
        y = F.linear(x, w, b)
        layer.release()
        return y

    @staticmethod
    def backward(ctx, gy):
        x, _shard = ctx.saved_tensors
        layer = ctx.layer
        w, _b = layer.gather()  # gather again for backward
        gx = gy @ w if ctx.needs_input_grad[0] else None
        gw = gy.reshape(-1, gy.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        gb = gy.reshape(-1, gy.shape[-1]).sum(0)
        layer.release()
        flat = torch.cat([gw.reshape(-1), gb, gw.new_zeros(layer.padded - layer.numel)])
        gshard = layer.comm.reduce_scatter(flat, tag="zero3.reduce_scatter_grad") / layer.comm.world
        return gx, gshard, None


class ShardedLinear(nn.Module):
    """A ``nn.Linear`` whose flat ``[W.flatten(), b]`` buffer is split over the ranks (ZeRO-3)."""

    def __init__(self, lin: nn.Linear, comm: Comm, tracker: dict[str, int]):
        super().__init__()
        self.comm, self.tracker = comm, tracker
        self.out_f, self.in_f = lin.weight.shape
        self.numel = lin.weight.numel() + lin.bias.numel()
        self.padded = math.ceil(self.numel / comm.world) * comm.world
        flat = torch.cat([lin.weight.detach().reshape(-1), lin.bias.detach(),
                          lin.weight.new_zeros(self.padded - self.numel)])
        self.shard = nn.Parameter(flat.chunk(comm.world)[comm.rank].clone())
        self._full: torch.Tensor | None = None

    def gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._full = self.comm.all_gather(self.shard.detach(), tag="zero3.all_gather_params")
        self.tracker["live"] += self._full.numel() * self._full.element_size()
        self.tracker["peak"] = max(self.tracker["peak"], self.tracker["live"])
        w = self._full[: self.out_f * self.in_f].view(self.out_f, self.in_f)
        return w, self._full[self.out_f * self.in_f: self.numel]

    def release(self) -> None:
        self.tracker["live"] -= self._full.numel() * self._full.element_size()
        self._full = None  # the full weight is freed here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GatheredLinear.apply(x, self.shard, self)


# -- the engine ------------------------------------------------------------------------------------------


class ZeroEngine:
    """ZeRO stage 1, 2 or 3 (optionally with CPU offload of the optimizer) around an MLP of ``nn.Linear``.

    A model in bf16/fp16 trains in mixed precision: the shards, gradients and communication stay 16-bit,
    Adam updates fp32 *master* copies of this rank's slices and the result is cast back into the shards
    (the paper's :math:`(P, G, K) = (2, 2, 4 + 8)`)."""

    def __init__(self, model: nn.Sequential, stage: int, comm: Comm, lr: float, offload: bool = False):
        if stage not in (1, 2, 3):
            raise ValueError(f"ZeRO stage must be 1, 2 or 3, got {stage}")
        self.model, self.stage, self.comm, self.offload = model, stage, comm, offload
        model_dtype = next(model.parameters()).dtype
        n, r = comm.world, comm.rank
        self.tracker = {"live": 0, "peak": 0, "grad_live": 0, "grad_peak": 0}
        self.shards: list[nn.Parameter] = []
        self.layers: list[dict[str, Any]] = []
        for i, m in enumerate(model):
            if not isinstance(m, nn.Linear):
                continue
            if stage == 3:
                sl = ShardedLinear(m, comm, self.tracker)
                model[i] = sl
                self.shards.append(sl.shard)
                continue
            numel = m.weight.numel() + m.bias.numel()
            padded = math.ceil(numel / n) * n
            flat = torch.zeros(padded, dtype=m.weight.dtype, device=m.weight.device)
            flat[: m.weight.numel()].copy_(m.weight.detach().reshape(-1))
            flat[m.weight.numel(): numel].copy_(m.bias.detach())
            # the layer's parameters become views of the flat buffer
            m.weight.data = flat[: m.weight.numel()].view_as(m.weight)
            m.bias.data = flat[m.weight.numel(): numel]
            shard = nn.Parameter(flat.chunk(n)[r])  # a view: Adam updates the flat buffer in place
            layer = {"module": m, "flat": flat, "numel": numel, "padded": padded, "shard": shard, "ready": 0}
            if stage == 1:  # full gradients persist, as views of one flat gradient buffer
                layer["gflat"] = torch.zeros_like(flat)
                m.weight.grad = layer["gflat"][: m.weight.numel()].view_as(m.weight)
                m.bias.grad = layer["gflat"][m.weight.numel(): numel]
                shard.grad = layer["gflat"].chunk(n)[r]
            else:  # stage 2: reduce-scatter as soon as this layer's gradients exist, then free them
                for p in (m.weight, m.bias):
                    p.register_post_accumulate_grad_hook(self._make_hook(layer))
            self.layers.append(layer)
            self.shards.append(shard)
        # Adam runs on *master* copies of the shards when they must live elsewhere (offload: host memory) or in
        # another precision (mixed precision: fp32 masters of bf16/fp16 shards); otherwise on the shards.
        self.master: list[nn.Parameter] | None = None
        if offload or model_dtype != torch.float32:
            where = "cpu" if offload else self.shards[0].device
            self.master = [nn.Parameter(s.detach().to(where, torch.float32, copy=True)) for s in self.shards]
            self.opt = torch.optim.Adam(self.master, lr=lr)
        else:
            self.opt = torch.optim.Adam(self.shards, lr=lr)

    def _make_hook(self, layer: dict[str, Any]):
        def hook(_p: torch.Tensor) -> None:
            layer["ready"] += 1
            m = layer["module"]
            self.tracker["grad_live"] += _p.grad.numel() * _p.grad.element_size()
            self.tracker["grad_peak"] = max(self.tracker["grad_peak"], self.tracker["grad_live"])
            if layer["ready"] < 2:
                return
            layer["ready"] = 0
            flat = torch.cat([m.weight.grad.reshape(-1), m.bias.grad,
                              m.weight.grad.new_zeros(layer["padded"] - layer["numel"])])
            layer["shard"].grad = self.comm.reduce_scatter(flat, tag="zero2.reduce_scatter_grad") / self.comm.world
            self.tracker["grad_live"] -= (m.weight.grad.numel() + m.bias.grad.numel()) * m.weight.grad.element_size()
            m.weight.grad = None  # the full gradient is freed: only the slice lives on
            m.bias.grad = None
        return hook

    def zero_grad(self) -> None:
        if self.stage == 1:
            for layer in self.layers:
                layer["gflat"].zero_()
        else:
            for s in self.shards:
                s.grad = None
        self.tracker["grad_live"] = 0

    def step(self) -> None:
        """After ``loss.backward()``: reduce-scatter (stage 1), Adam on the slice, all-gather (stages 1-2)."""
        n = self.comm.world
        if self.stage == 1:
            for layer in self.layers:
                g = self.comm.reduce_scatter(layer["gflat"], tag="zero1.reduce_scatter_grad") / n
                layer["shard"].grad.copy_(g)
        if self.master is not None:  # gradient slice -> master (host and/or fp32), Adam, updated slice back
            for s, c in zip(self.shards, self.master):
                c.grad = s.grad.detach().to(c.device, c.dtype)
            self.opt.step()
            with torch.no_grad():
                for s, c in zip(self.shards, self.master):
                    s.copy_(c.detach().to(s.device, s.dtype))
        else:
            self.opt.step()
        if self.stage in (1, 2):
            with torch.no_grad():
                for layer in self.layers:
                    full = self.comm.all_gather(layer["shard"].detach(), tag=f"zero{self.stage}.all_gather_params")
                    layer["flat"].copy_(full)

    def memory(self) -> dict[str, int]:
        """Per-rank bytes of the model states this engine keeps between steps."""
        if self.stage == 3:
            params = storage_bytes(self.shards)
        else:
            params = storage_bytes([layer["flat"] for layer in self.layers])
        if self.stage == 1:
            grads = storage_bytes([layer["gflat"] for layer in self.layers])
        else:
            grads = storage_bytes([s.grad for s in self.shards])
        dev, host = optimizer_state_bytes(self.opt)
        if self.offload:  # states and the optimizer's copy of the shard live in host memory
            return {"params": params, "grads": grads, "optim": 0, "optim_offloaded": dev + host,
                    "host_param_copy": storage_bytes(self.master)}
        if self.master is not None:  # mixed precision: the fp32 master slice is an optimizer state (K = 4 + 8)
            return {"params": params, "grads": grads, "optim": dev + host + storage_bytes(self.master),
                    "optim_offloaded": 0, "host_param_copy": 0}
        return {"params": params, "grads": grads, "optim": dev + host, "optim_offloaded": 0, "host_param_copy": 0}


# -- the experiment worker ---------------------------------------------------------------------------


def _global_loss(loss: torch.Tensor) -> float:
    t = loss.detach().reshape(1).clone()
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def _full_params(model: nn.Module, comm: Comm | None = None) -> torch.Tensor:
    """All parameters flattened (ZeRO-3 shards gathered), for comparing final weights."""
    out = []
    for m in model.modules():
        if isinstance(m, ShardedLinear):
            out.append(m.comm.all_gather(m.shard.detach())[: m.numel])
        elif isinstance(m, nn.Linear):
            out += [m.weight.detach().reshape(-1), m.bias.detach()]
    return torch.cat(out).cpu()


def train_variant(name: str, rank: int, world: int, cfg: ZeroConfig) -> dict[str, Any]:
    """Train ``cfg.steps`` steps with one variant; return losses, final params, memory and bytes."""
    dev = worker_device(rank) if cfg.device == "cuda" else torch.device("cpu")
    mixed = name.endswith("_mp")  # bf16 parameters and gradients, fp32 master slices in the optimizer
    model = make_mlp(cfg.sizes, cfg.seed).to(dev)
    if mixed:
        model = model.to(torch.bfloat16)
    psi = sum(p.numel() for p in model.parameters())
    comm = Comm()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    engine = None
    if name == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, gradient_as_bucket_view=True)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    elif name == "torch_zero_redundancy":
        from torch.distributed.optim import ZeroRedundancyOptimizer
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, gradient_as_bucket_view=True)
        opt = ZeroRedundancyOptimizer(net.parameters(), optimizer_class=torch.optim.Adam, lr=cfg.lr)
    elif name == "torch_fsdp2":
        from torch.distributed.fsdp import fully_shard

        for m in model:
            if isinstance(m, nn.Linear):
                fully_shard(m)
        fully_shard(model)
        net, opt = model, torch.optim.Adam(model.parameters(), lr=cfg.lr)
    else:  # "zero1", "zero2", "zero3", "zero3_offload" and the mixed-precision "zero{1,2,3}_mp"
        stage = int(name[4])
        engine = ZeroEngine(model, stage, comm, cfg.lr, offload=name.endswith("offload"))
        net, opt = model, None
    losses = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        x, y = batch_for(cfg, step, rank, world, dev)
        if engine is not None:
            engine.zero_grad()
        else:
            opt.zero_grad(set_to_none=False)
        loss = F.mse_loss(net(x.to(torch.bfloat16)).float(), y) if mixed else F.mse_loss(net(x), y)
        loss.backward()
        if engine is not None:
            engine.step()
        else:
            opt.step()
        losses.append(_global_loss(loss))
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"name": name, "losses": losses, "psi": psi, "wall_s": wall}
    if name in ("ddp", "torch_zero_redundancy"):
        out["final"] = _full_params(net.module)
        if name == "ddp":
            dv, host = optimizer_state_bytes(opt)
            out["memory"] = {"params": storage_bytes(list(net.parameters())),
                             "grads": storage_bytes([p.grad for p in net.parameters()]),
                             "optim": dv + host, "optim_offloaded": 0}
    elif name == "torch_fsdp2":
        out["final"] = torch.cat([p.full_tensor().detach().reshape(-1) for p in model.parameters()]).cpu()
    else:
        out["sent_bytes_per_step"] = comm.sent_bytes() / cfg.steps
        out["final"] = _full_params(model)
        out["memory"] = engine.memory()
        out["peak_gathered_param_bytes"] = engine.tracker["peak"]
        out["peak_full_grad_bytes"] = engine.tracker["grad_peak"]
        out["padded_psi"] = sum(math.ceil((m.weight.numel() + m.bias.numel()) / world) * world
                                for m in make_mlp(cfg.sizes, cfg.seed) if isinstance(m, nn.Linear))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        out["cuda_max_allocated"] = torch.cuda.max_memory_allocated(dev) - base
    return out


ALL_VARIANTS = ("ddp", "zero1", "zero2", "zero3", "zero3_offload", "torch_zero_redundancy", "torch_fsdp2")
#: mixed precision (bf16 parameters and gradients, fp32 master + Adam): the paper's 16Ψ, measured
MIXED_VARIANTS = ("zero1_mp", "zero2_mp", "zero3_mp")


def zero_worker(rank: int, world: int, cfg: ZeroConfig, variants: tuple[str, ...] = ALL_VARIANTS) -> list[dict]:
    return [train_variant(v, rank, world, cfg) for v in variants]


def comm_formula_bytes(padded_psi: int, n: int, stage: int) -> float:
    """Bytes each rank sends per step (fp32): stages 1-2 = reduce-scatter + all-gather = one ring
    all-reduce :math:`2(n-1)/n \\cdot 4\\Psi`; stage 3 adds a second all-gather: :math:`3(n-1)/n \\cdot 4\\Psi`."""
    volumes = 3 if stage == 3 else 2
    return volumes * ring_gather_bytes(4 * padded_psi, n)


# -- activation checkpointing ---------------------------------------------------------------------------


class _Checkpoint(torch.autograd.Function):
    """Run ``fn`` without keeping its activations; recompute them in backward."""

    @staticmethod
    def forward(ctx, fn, x, *params):
        ctx.fn = fn
        ctx.save_for_backward(x)  # the segment's input is all that is kept
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, gy):
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        params = [p for p in ctx.fn.parameters()]
        with torch.enable_grad():
            y = ctx.fn(x)  # recompute the segment
        grads = torch.autograd.grad(y, [x, *params], gy)
        return (None, *grads)


def checkpoint(segment: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Our activation checkpointing of one segment (an ``nn.Module``)."""
    return _Checkpoint.apply(segment, x, *segment.parameters())


class MatmulFlops(TorchDispatchMode):
    """Count the FLOPs of every matrix multiply that runs while active, forward *and* backward
    (``mm``: :math:`2 \\cdot M K N`; ``addmm`` the same, the bias add not counted)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.mm.default or func is torch.ops.aten.addmm.default:
            a, b = args[-2], args[-1]
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return out


def make_deep_mlp(depth: int, width: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)])


def forward_segments(model: nn.Sequential, x: torch.Tensor, every: int, impl: str = "ours") -> torch.Tensor:
    """Forward through ``model`` checkpointing every ``every`` blocks (0 = no checkpointing)."""
    if every == 0:
        return model(x)
    for i in range(0, len(model), every):
        seg = model[i: i + every]
        if impl == "ours":
            x = checkpoint(seg, x)
        else:
            from torch.utils.checkpoint import checkpoint as torch_checkpoint

            x = torch_checkpoint(seg, x, use_reentrant=False)
    return x


def saved_activation_bytes(model: nn.Sequential, x: torch.Tensor, every: int) -> int:
    """Bytes autograd keeps for backward after a forward (distinct storages), via saved-tensor hooks."""
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward_segments(model, x, every)
    del y
    return sum(seen.values())


def _counted_flops(fn: Callable[[], Any]) -> int:
    with MatmulFlops() as counter:
        fn()
    return counter.flops


def checkpoint_experiment(depth: int = 16, width: int = 64, batch: int = 64, everies=(0, 1, 2, 4, 8),
                          repeats: int = 3, seed: int = 0, device: str = "cpu") -> list[dict[str, Any]]:
    """Memory kept for backward and fwd+bwd time, for checkpointing every k blocks; grads vs no-ckpt."""
    dev = torch.device(device)
    model = make_deep_mlp(depth, width, seed).to(dev)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, width, generator=g).to(dev).requires_grad_(True)

    def grads(every, impl="ours"):
        model.zero_grad(set_to_none=True)
        forward_segments(model, x, every, impl).square().mean().backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    ref = grads(0)
    rows = []
    for k in everies:
        times = []
        peak = None
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            gk = grads(k)
            if dev.type == "cuda":
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated()
            times.append(time.perf_counter() - t0)
        rows.append({
            "every": k,
            "saved_bytes": saved_activation_bytes(model, x, k),
            "time_s": sorted(times)[len(times) // 2],
            "grad_err": (gk - ref).abs().max().item(),
            "matmul_flops": _counted_flops(lambda k=k: grads(k)),
            "grad_err_vs_torch": (gk - grads(k, "torch")).abs().max().item() if k else 0.0,
            "cuda_peak": peak,
        })
    return rows



# -- the closed loop ---------------------------------------------------------------------------------

MODULE = "zero"
TITLE = "DeepSpeed ZeRO / ZeRO 显存优化"
STAGE_OF = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3_offload": 3}


@dataclass
class ZeroResult:
    cfg: ZeroConfig
    runs: dict[int, list[dict[str, Any]]]  # world N -> rank 0's list of variant results
    ckpt: list[dict[str, Any]]
    backend: str
    cuda_offload: dict[str, Any] | None = None
    mixed: dict[int, list[dict[str, Any]]] | None = None  # world N -> rank 0's MIXED_VARIANTS results

    def variant(self, n: int, name: str) -> dict[str, Any]:
        return next(v for v in self.runs[n] if v["name"] == name)


def experiment(toy: bool = True, device: str = "auto", seed: int = 0, worlds: tuple[int, ...] = (1, 2, 4),
               main_world: int = 2) -> ZeroResult:
    """Train every variant on N = ``worlds`` ranks; checkpointing sweep in this process."""
    from llmcore.engineering.dist_utils import launch, resolve_backend

    base = ZeroConfig(seed=seed) if toy else ZeroConfig(sizes=(512, 2048, 2048, 2048, 512), batch=256, steps=20,
                                                        lr=1e-3, seed=seed)
    backend, dev_type = resolve_backend(device, max(worlds))
    from dataclasses import replace

    cfg = replace(base, device=dev_type)
    runs = {}
    for n in worlds:
        variants = ALL_VARIANTS if n == main_world else ("ddp", "zero1", "zero2", "zero3", "zero3_offload")
        runs[n] = launch(zero_worker, n, (cfg, variants), backend=backend)[0]
    mixed = {n: launch(zero_worker, n, (cfg, MIXED_VARIANTS), backend=backend)[0] for n in worlds}
    ck = checkpoint_experiment(seed=seed, device="cuda" if dev_type == "cuda" else "cpu",
                               **({} if toy else {"depth": 32, "width": 1024, "batch": 1024}))
    res = ZeroResult(cfg, runs, ck, backend, mixed=mixed)
    if torch.cuda.is_available():  # offload's real saving on one GPU (NCCL, one rank): also on a 1-GPU Colab,
        one = replace(cfg, device="cuda")  # where the multi-rank runs above fall back to gloo on the CPU
        r = launch(zero_worker, 1, (one, ("zero3", "zero3_offload")), backend="nccl")[0]
        res.cuda_offload = {v["name"]: v.get("cuda_max_allocated") for v in r}
    return res


def memory_table(res: ZeroResult) -> list[dict[str, Any]]:
    """Measured per-rank model-state bytes vs the paper's formula (fp32 Adam: P=4, G=4, K=8)."""
    rows = []
    for n, variants in res.runs.items():
        for v in variants:
            if "memory" not in v or v["name"] not in STAGE_OF:
                continue
            mem = v["memory"]
            measured = mem["params"] + mem["grads"] + mem["optim"] + mem["optim_offloaded"]
            f = zero_formula(v["psi"], n, STAGE_OF[v["name"]], FP32_ADAM)
            rows.append({"N": n, "variant": v["name"], "psi": v["psi"], **{k: mem.get(k, 0) for k in
                         ("params", "grads", "optim", "optim_offloaded", "host_param_copy")},
                         "measured_total": measured, "formula_total": f["total"],
                         "ratio": measured / f["total"], "on_device": measured - mem["optim_offloaded"]})
    return rows


def mixed_table(res: ZeroResult) -> list[dict[str, Any]]:
    """Mixed-precision runs: measured per-rank model-state bytes vs the paper's :math:`(2 + 2 + 12)\\Psi`
    formula, and the largest relative loss difference from the fp32 DDP run on the same data."""
    rows = []
    for n, variants in (res.mixed or {}).items():
        ddp = res.variant(n, "ddp")["losses"]
        for v in variants:
            mem = v["memory"]
            measured = mem["params"] + mem["grads"] + mem["optim"]
            f = zero_formula(v["psi"], n, int(v["name"][4]), MIXED_PRECISION)
            rows.append({"N": n, "variant": v["name"], "psi": v["psi"], "params": mem["params"], "grads": mem["grads"],
                         "optim": mem["optim"], "measured_total": measured, "formula_total": f["total"],
                         "ratio": measured / f["total"], "bytes_per_param": measured / v["psi"],
                         "loss_rel_diff": max(abs(a - b) / abs(b) for a, b in zip(v["losses"], ddp))})
    return rows


def make_report(res: ZeroResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report(MODULE, TITLE, toy, device, seed)
    n_main = max(res.runs, key=lambda n: len(res.runs[n]))
    psi = res.runs[n_main][0]["psi"]
    rep.metric("parameters Psi", psi)
    ddp = {n: res.variant(n, "ddp")["losses"] for n in res.runs}
    worst = 0.0
    for n, variants in res.runs.items():
        for v in variants:
            if v["name"].startswith("zero"):
                worst = max(worst, max(abs(a - b) for a, b in zip(v["losses"], ddp[n])))
    rep.check("ZeRO-1/2/3 (+offload) loss vs DDP, every step, N=1,2,4 (max abs diff)", worst, "<", 1e-6)
    zro = max(abs(a - b) for a, b in zip(res.variant(n_main, "zero1")["losses"],
                                         res.variant(n_main, "torch_zero_redundancy")["losses"]))
    fsdp = max(abs(a - b) for a, b in zip(res.variant(n_main, "zero3")["losses"],
                                          res.variant(n_main, "torch_fsdp2")["losses"]))
    rep.check(f"our ZeRO-1 vs torch ZeroRedundancyOptimizer loss trajectory (N={n_main})", zro, "<", 1e-6)
    rep.check(f"our ZeRO-3 vs torch FSDP2 fully_shard loss trajectory (N={n_main})", fsdp, "<", 1e-6)
    l0, l1 = ddp[n_main][0], ddp[n_main][-1]
    rep.metric("DDP loss first step", l0)
    rep.metric("DDP loss last step", l1)
    rep.check("training loss falls (last / first)", l1 / l0, "<", 0.9)
    mt = memory_table(res)
    rep.check("per-rank model-state bytes / formula, worst over stages and N (max |ratio-1|)",
              max(abs(r["ratio"] - 1) for r in mt), "<", 0.10)
    for n in sorted(res.runs):
        rep.metric(f"N={n} ZeRO-3 bytes per rank / DDP", next(r["measured_total"] for r in mt
                   if r["N"] == n and r["variant"] == "zero3") / next(r["measured_total"] for r in mt
                   if r["N"] == n and r["variant"] == "ddp"))
    n_hi = max(res.runs)
    if n_hi > 1:
        z2, z3 = res.variant(n_hi, "zero2"), res.variant(n_hi, "zero3")
        rep.check(f"ZeRO-2 bytes sent / (2(n-1)/n·4Ψ) at N={n_hi}",
                  z2["sent_bytes_per_step"] / comm_formula_bytes(z2["padded_psi"], n_hi, 2), "==", 1.0)
        rep.check(f"ZeRO-3 bytes sent / (3(n-1)/n·4Ψ) at N={n_hi}",
                  z3["sent_bytes_per_step"] / comm_formula_bytes(z3["padded_psi"], n_hi, 3), "<", 1.1)
    ck = {r["every"]: r for r in res.ckpt}
    rep.check("checkpointing: grads equal no-checkpoint and torch.utils.checkpoint (max abs diff)",
              max(max(r["grad_err"], r["grad_err_vs_torch"]) for r in res.ckpt), "<", 1e-6)
    k_best = max(ck)
    rep.metric(f"activation bytes kept, checkpoint every {k_best} / none", ck[k_best]["saved_bytes"] / ck[0]["saved_bytes"])
    rep.check("checkpoint every block keeps <= 1/2 of the activation bytes", ck[1]["saved_bytes"] / ck[0]["saved_bytes"],
              "<=", 0.5)
    if res.mixed:
        mx = mixed_table(res)
        rep.metric("N=1 mixed-precision model-state bytes per parameter",
                   next(r["bytes_per_param"] for r in mx if r["N"] == min(res.mixed) and r["variant"] == "zero1_mp"))
        rep.check("mixed precision (bf16 + fp32 master): bytes / (2+2+12)Ψ formula, worst (max |ratio-1|)",
                  max(abs(r["ratio"] - 1) for r in mx), "<", 0.10)
        rep.check("mixed precision loss vs fp32 DDP, every step (max relative diff)",
                  max(r["loss_rel_diff"] for r in mx), "<", 0.02)
    if res.cuda_offload:
        rep.metric("CUDA max_memory_allocated ZeRO-3 (1 GPU) bytes", res.cuda_offload["zero3"])
        rep.metric("CUDA max_memory_allocated ZeRO-3+offload (1 GPU) bytes", res.cuda_offload["zero3_offload"])
    else:
        rep.notes.append("no CUDA GPU in this run: memory is byte-accounted (tensors held), not allocator-measured")
    rep.notes.append(f"backend: {res.backend}")
    return rep


def figures(res: ZeroResult) -> list[str]:
    import matplotlib.pyplot as plt
    import numpy as np

    from llmcore.core.plotting import PALETTE, save_figure, use_style

    use_style()
    paths = []
    mt = memory_table(res)
    names = ["ddp", "zero1", "zero2", "zero3", "zero3_offload"]
    ns = sorted(res.runs)
    fig, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns), 3.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, n in zip(axes, ns):
        rows = {r["variant"]: r for r in mt if r["N"] == n}
        bottom = np.zeros(len(names))
        for key, color, label in (("params", PALETTE[0], "parameters"), ("grads", PALETTE[1], "gradients"),
                                  ("optim", PALETTE[2], "optimizer (device)"),
                                  ("optim_offloaded", PALETTE[5], "optimizer (CPU offload)")):
            vals = np.array([rows[v][key] / 1024 for v in names])
            ax.bar(range(len(names)), vals, bottom=bottom, color=color, label=label)
            bottom += vals
        ax.plot(range(len(names)), [rows[v]["formula_total"] / 1024 for v in names], "k_", ms=22, mew=2,
                label="paper formula")
        ax.set_xticks(range(len(names)), ["DDP", "Z1", "Z2", "Z3", "Z3+off"])
        ax.set_title(f"N = {n}")
    axes[0].set_ylabel("KiB per rank")
    axes[-1].legend(fontsize=7)
    paths.append(save_figure(fig, MODULE, "memory_per_rank"))
    plt.close(fig)
    n_main = max(res.runs, key=lambda n: len(res.runs[n]))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, v in enumerate(res.runs[n_main]):
        ax.plot(v["losses"], marker="os^v<>d"[i % 7], ms=4, lw=1, label=v["name"], alpha=0.8)
    ax.set(xlabel="step", ylabel="loss", title=f"loss trajectories, N = {n_main}")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, MODULE, "loss_trajectories"))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    base = res.ckpt[0]
    for r in res.ckpt:
        ax.scatter(r["saved_bytes"] / base["saved_bytes"], r["time_s"] / base["time_s"], color=PALETTE[0])
        ax.annotate("none" if r["every"] == 0 else f"every {r['every']}",
                    (r["saved_bytes"] / base["saved_bytes"], r["time_s"] / base["time_s"]), fontsize=8)
    ax.set(xlabel="activation bytes kept (relative)", ylabel="fwd+bwd time (relative)",
           title="activation checkpointing trade-off")
    paths.append(save_figure(fig, MODULE, "checkpointing"))
    plt.close(fig)
    return paths


def run(toy: bool = True, device: str = "auto", seed: int = 0) -> Report:
    from llmcore.core.device import pick_device

    pick_device(device)
    res = experiment(toy=toy, device=device, seed=seed)
    rep = make_report(res, toy, device, seed)
    rep.figures += figures(res)
    return rep


def torchrun_main() -> None:
    """``torchrun --nproc-per-node N -m llmcore.engineering.zero``: every ZeRO stage against DDP on this
    job's ranks (NCCL on GPUs, gloo on CPU; multi-node with torchrun's own flags)."""
    rank, world = init_from_env()
    dev_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    runs = zero_worker(rank, world, ZeroConfig(device=dev_type), ("ddp", "zero1", "zero2", "zero3", "zero3_offload"))
    ddp = runs[0]["losses"]
    lines = []
    for v in runs[1:]:
        err = max(abs(a - b) for a, b in zip(v["losses"], ddp))
        formula = zero_formula(v["psi"], world, int(v["name"][4]), FP32_ADAM)
        held = v["memory"]["params"] + v["memory"]["grads"] + v["memory"]["optim"]
        lines.append(f"rank {rank}/{world} {v['name']:<14} max|loss - DDP| {err:.1e}  model states on the device "
                     f"{held} B (formula {formula['total']:.0f} B)\n")
    os.write(1, "".join(lines).encode())  # one write per rank: the ranks' lines never interleave
    dist.destroy_process_group()


if __name__ == "__main__":
    torchrun_entry(torchrun_main)
