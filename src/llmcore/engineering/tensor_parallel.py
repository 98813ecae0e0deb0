r"""Tensor parallelism (Megatron-LM): column- and row-parallel linear layers, the f/g operators.

Megatron splits one transformer block over :math:`n` ranks (Shoeybi et al., 2019, §3):

* **column-parallel** ``Y_i = X A_i``: the weight :math:`A = [A_1, \dots, A_n]` is split by *output*
  columns, every rank sees the whole input and produces a slice of the output;
* **row-parallel** ``Y = \sum_i X_i B_i``: the weight is split by *input* rows, every rank holds a slice
  of the input and produces a partial sum of the whole output.

An MLP ``GeLU(X A) B`` is column-then-row, so the GeLU stays local and the block needs exactly one
all-reduce forward and one backward. Two conjugate autograd operators carry that communication:

* :math:`f`: identity forward, **all-reduce** backward (before a column-parallel layer: the gradient
  of the replicated input is the sum of the ranks' partial gradients);
* :math:`g`: **all-reduce** forward, identity backward (after a row-parallel layer).

Attention is split the same way by heads: Q/K/V column-parallel (rank ``r`` owns heads
``r·h/n … (r+1)·h/n - 1``), the output projection row-parallel.

Per block and per step the communication is 2 all-reduces forward and 2 backward of the activation
``(batch, seq, d_model)``, i.e. :math:`4 \cdot 2(n-1)/n \cdot B T d \cdot` bytes per rank for ring
all-reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.engineering.dist_utils import Comm, ring_all_reduce_bytes, worker_device

# -- the reference (single-process) block ---------------------------------------------------------


class Attention(nn.Module):
    """Causal multi-head self-attention with separate Q/K/V/O projections. ``x``: ``(B, T, d)``."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape

        def heads(t):  # (B, T, h*dh) -> (B, h, T, dh)
            return t.view(B, T, -1, self.d_head).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
        return self.o(a.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + Attn(LN(x))`` then ``h + MLP(LN(h))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn, self.mlp = Attention(d_model, n_heads), MLP(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.ln1(x))
        return h + self.mlp(self.ln2(h))


# -- the f / g conjugate operators -----------------------------------------------------------------


class _CopyToParallel(torch.autograd.Function):
    """:math:`f`: forward identity, backward all-reduce of the input gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Comm) -> torch.Tensor:
        ctx.comm = comm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.comm.all_reduce(grad.contiguous(), tag="tp.f(backward)"), None


class _ReduceFromParallel(torch.autograd.Function):
    """:math:`g`: forward all-reduce of the partial sums, backward identity."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Comm) -> torch.Tensor:
        return comm.all_reduce(x.contiguous(), tag="tp.g(forward)")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def copy_to_parallel(x: torch.Tensor, comm: Comm) -> torch.Tensor:
    return _CopyToParallel.apply(x, comm)


def reduce_from_parallel(x: torch.Tensor, comm: Comm) -> torch.Tensor:
    return _ReduceFromParallel.apply(x, comm)


# -- parallel layers -------------------------------------------------------------------------------


class ColumnParallelLinear(nn.Module):
    """``y_r = f(x) A_r^T + b_r`` — this rank's slice of the output features (no gather)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, comm: Comm):
        super().__init__()
        self.comm = comm
        self.weight = nn.Parameter(weight)  # (out/n, in)
        self.bias = nn.Parameter(bias) if bias is not None else None  # (out/n,)

    @classmethod
    def from_linear(cls, lin: nn.Linear, comm: Comm) -> ColumnParallelLinear:
        """Take rows ``r·out/n … (r+1)·out/n`` of a full layer's weight and bias."""
        w = lin.weight.detach().chunk(comm.world, dim=0)[comm.rank].clone()
        b = lin.bias.detach().chunk(comm.world)[comm.rank].clone() if lin.bias is not None else None
        return cls(w, b, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_parallel(x, self.comm), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """``y = g(x_r B_r^T) + b`` — input already split by features; bias replicated, added once."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, comm: Comm):
        super().__init__()
        self.comm = comm
        self.weight = nn.Parameter(weight)  # (out, in/n)
        self.bias = nn.Parameter(bias) if bias is not None else None  # (out,) replicated

    @classmethod
    def from_linear(cls, lin: nn.Linear, comm: Comm) -> RowParallelLinear:
        w = lin.weight.detach().chunk(comm.world, dim=1)[comm.rank].clone()
        b = lin.bias.detach().clone() if lin.bias is not None else None
        return cls(w, b, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_from_parallel(F.linear(x, self.weight), self.comm)
        return y + self.bias if self.bias is not None else y


class ParallelMLP(nn.Module):
    """Column-parallel ``fc1`` → local GeLU → row-parallel ``fc2``: one all-reduce each way."""

    def __init__(self, mlp: MLP, comm: Comm):
        super().__init__()
        self.fc1 = ColumnParallelLinear.from_linear(mlp.fc1, comm)
        self.fc2 = RowParallelLinear.from_linear(mlp.fc2, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ParallelAttention(nn.Module):
    """Heads split across ranks: Q/K/V column-parallel, output projection row-parallel."""

    def __init__(self, attn: Attention, comm: Comm):
        super().__init__()
        if attn.n_heads % comm.world:
            raise ValueError(f"n_heads={attn.n_heads} is not divisible by the TP size {comm.world}")
        self.comm, self.d_head = comm, attn.d_head
        # f once for the three projections: fold it into a shared copy_to_parallel of the input
        self.q, self.k, self.v = (ColumnParallelLinear.from_linear(lin, comm) for lin in (attn.q, attn.k, attn.v))
        self.o = RowParallelLinear.from_linear(attn.o, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        xp = copy_to_parallel(x, self.comm)  # one f for Q, K and V

        def heads(lin):  # local heads only: (B, h/n, T, dh)
            return F.linear(xp, lin.weight, lin.bias).view(B, T, -1, self.d_head).transpose(1, 2)

        a = F.scaled_dot_product_attention(heads(self.q), heads(self.k), heads(self.v), is_causal=True)
        return self.o(a.transpose(1, 2).reshape(B, T, -1))


class ParallelBlock(nn.Module):
    """The same pre-LN block with attention and MLP tensor-parallel; LayerNorms replicated."""

    def __init__(self, block: Block, comm: Comm):
        super().__init__()
        self.ln1, self.ln2 = (nn.LayerNorm(block.ln1.normalized_shape) for _ in range(2))
        self.ln1.load_state_dict(block.ln1.state_dict())
        self.ln2.load_state_dict(block.ln2.state_dict())
        self.attn, self.mlp = ParallelAttention(block.attn, comm), ParallelMLP(block.mlp, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.ln1(x))
        return h + self.mlp(self.ln2(h))


# -- the check: TP block == single-process block, outputs and gradients -----------------------------


@dataclass
class TPConfig:
    batch: int = 2
    seq: int = 8
    d_model: int = 32
    n_heads: int = 4
    d_ff: int = 64
    seed: int = 0


def shard_of_grad(name: str, full_grad: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The slice of a reference parameter's gradient that the TP parameter ``name`` should hold."""
    col = any(name.startswith(p) for p in ("attn.q.", "attn.k.", "attn.v.", "mlp.fc1."))
    row_w = name in ("attn.o.weight", "mlp.fc2.weight")
    if col:
        return full_grad.chunk(world, dim=0)[rank]
    if row_w:
        return full_grad.chunk(world, dim=1)[rank]
    return full_grad  # LayerNorms and row-parallel biases are replicated


def analytic_tp_bytes(cfg: TPConfig, world: int) -> float:
    """Two all-reduces forward (g) + two backward (f) of a ``(B, T, d)`` fp32 activation, ring."""
    return 4 * ring_all_reduce_bytes(cfg.batch * cfg.seq * cfg.d_model * 4, world)


def tp_worker(rank: int, world: int, cfg: TPConfig) -> dict[str, Any]:
    """Build the reference block on every rank (same seed), shard it, compare forward and backward."""
    dev = worker_device(rank)
    torch.manual_seed(cfg.seed)
    ref = Block(cfg.d_model, cfg.n_heads, cfg.d_ff).to(dev)
    x = torch.randn(cfg.batch, cfg.seq, cfg.d_model).to(dev)
    target = torch.randn(cfg.batch, cfg.seq, cfg.d_model).to(dev)

    x_ref = x.clone().requires_grad_(True)
    y_ref = ref(x_ref)
    F.mse_loss(y_ref, target).backward()

    comm = Comm()
    tp = ParallelBlock(ref, comm)
    x_tp = x.clone().requires_grad_(True)
    y_tp = tp(x_tp)
    F.mse_loss(y_tp, target).backward()

    ref_grads = dict(ref.named_parameters())
    grad_err = {}
    for name, p in tp.named_parameters():
        want = shard_of_grad(name, ref_grads[name].grad, rank, world)
        grad_err[name] = (p.grad - want).abs().max().item()
    n_tp = sum(p.numel() for p in tp.parameters())
    return {
        "out_err": (y_tp - y_ref).abs().max().item(),
        "x_grad_err": (x_tp.grad - x_ref.grad).abs().max().item(),
        "grad_err": grad_err,
        "max_grad_err": max(grad_err.values()),
        "sent_bytes": comm.sent_bytes(),
        "sent_forward": comm.sent_bytes(tag="tp.g"),
        "sent_backward": comm.sent_bytes(tag="tp.f"),
        "analytic_bytes": analytic_tp_bytes(cfg, world),
        "all_reduces": len(comm.records),
        "params_local": n_tp,
        "params_full": sum(p.numel() for p in ref.parameters()),
    }
