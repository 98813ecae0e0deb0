r"""Tensor parallelism (Megatron-LM): column- and row-parallel linear layers, the f/g operators.

Megatron splits one transformer block over :math:`n` ranks (Shoeybi et al., 2019, §3):

* **column-parallel** ``Y_i = X A_i``: the weight :math:`A = [A_1, \dots, A_n]` is split by *output*
  columns, every rank sees the whole input and produces a slice of the output;
* **row-parallel** ``Y = \sum_i X_i B_i``: the weight is split by *input* rows, every rank holds a slice
  of the input and produces a partial sum of the whole output.

An MLP ``GeLU(X A) B`` is column-then-row, so the GeLU stays local and the block needs exactly one
all-reduce forward and one backward. The book's LLaMA block has a SwiGLU MLP ``(silu(X A) * X C) B``:
``A`` and ``C`` are split by columns alike and the product stays local, so the count is the same. Two conjugate autograd operators carry that communication:

* :math:`f`: identity forward, **all-reduce** backward (before a column-parallel layer: the gradient
  of the replicated input is the sum of the ranks' partial gradients);
* :math:`g`: **all-reduce** forward, identity backward (after a row-parallel layer).

Attention is split the same way by heads: Q/K/V column-parallel (rank ``r`` owns heads
``r·h/n … (r+1)·h/n - 1``), the output projection row-parallel. The block that is split is the kit's
:class:`llmcore.architecture.llama.Block` (RMSNorm, RoPE, GQA, SwiGLU); RMSNorms are replicated.

Per block and per step the communication is 2 all-reduces forward and 2 backward of the activation
``(batch, seq, d_model)``, i.e. :math:`4 \cdot 2(n-1)/n \cdot B T d \cdot` bytes per rank for ring
all-reduce.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.architecture.llama import MLP, Attention, Block, ModelConfig, apply_rope, rope_cos_sin
from llmcore.engineering.dist_utils import Comm, ring_all_reduce_bytes, worker_device

# -- the reference (single-process) block: the book's LLaMA block -------------------------------------
#
# The reference is :class:`llmcore.architecture.llama.Block` itself (RMSNorm, RoPE, GQA attention, SwiGLU).
# The parallel classes below are not another decoder: each holds only this rank's *shards* of that block's
# weights and adds the f/g communication, which is why they cannot simply be the kit's modules.


def reference_block(cfg: TPConfig) -> Block:
    """One Pre-LN LLaMA block (the kit's) with ``cfg``'s sizes; no vocabulary (the block alone is split)."""
    mcfg = ModelConfig(vocab_size=1, d_model=cfg.d_model, n_layers=1, n_heads=cfg.n_heads,
                       n_kv_heads=cfg.n_kv_heads, ffn_hidden=cfg.d_ff, bos_id=None, eos_id=None, pad_id=None)
    return Block(mcfg, 0)


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
    """SwiGLU ``down(silu(gate(x)) * up(x))``: gate and up column-parallel (one shared f), the product and
    SiLU local, down row-parallel: one all-reduce each way, as Megatron's GeLU MLP."""

    def __init__(self, mlp: MLP, comm: Comm):
        super().__init__()
        self.comm = comm
        self.gate_proj = ColumnParallelLinear.from_linear(mlp.gate_proj, comm)
        self.up_proj = ColumnParallelLinear.from_linear(mlp.up_proj, comm)
        self.down_proj = RowParallelLinear.from_linear(mlp.down_proj, comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = copy_to_parallel(x, self.comm)  # one f for gate and up
        return self.down_proj(F.silu(F.linear(xp, self.gate_proj.weight)) * F.linear(xp, self.up_proj.weight))


class ParallelAttention(nn.Module):
    """Heads split across ranks: Q/K/V column-parallel (rank ``r`` owns query heads ``r·H/n …`` and key/value
    heads ``r·K/n …``, so each local query head keeps its GQA partner), RoPE local, output row-parallel."""

    def __init__(self, attn: Attention, comm: Comm):
        super().__init__()
        H, K = attn.cfg.n_heads, attn.cfg.n_kv_heads
        if H % comm.world or K % comm.world:
            raise ValueError(f"n_heads={H} and n_kv_heads={K} must be divisible by the TP size {comm.world}")
        self.comm, self.head_dim = comm, attn.cfg.head_dim
        self.q_proj, self.k_proj, self.v_proj = (ColumnParallelLinear.from_linear(lin, comm)
                                                 for lin in (attn.q_proj, attn.k_proj, attn.v_proj))
        self.o_proj = RowParallelLinear.from_linear(attn.o_proj, comm)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        xp = copy_to_parallel(x, self.comm)  # one f for Q, K and V

        def heads(lin):  # local heads only: (B, heads/n, T, D)
            return F.linear(xp, lin.weight, lin.bias).view(B, T, -1, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
        return self.o_proj(a.transpose(1, 2).reshape(B, T, -1))


class ParallelBlock(nn.Module):
    """The same Pre-LN block with attention and MLP tensor-parallel; RMSNorms replicated."""

    def __init__(self, block: Block, comm: Comm):
        super().__init__()
        if not block.pre:
            raise ValueError("the tensor-parallel block is Pre-LN")
        self.input_layernorm = copy.deepcopy(block.input_layernorm)
        self.post_attention_layernorm = copy.deepcopy(block.post_attention_layernorm)
        self.self_attn, self.mlp = ParallelAttention(block.self_attn, comm), ParallelMLP(block.mlp, comm)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


# -- the check: TP block == single-process block, outputs and gradients -----------------------------


@dataclass
class TPConfig:
    batch: int = 2
    seq: int = 8
    d_model: int = 32
    n_heads: int = 4
    d_ff: int = 64
    n_kv_heads: int | None = None  # None: MHA; fewer: GQA (must divide by the TP size too)
    seed: int = 0


def shard_of_grad(name: str, full_grad: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The slice of a reference parameter's gradient that the TP parameter ``name`` should hold."""
    col = any(name.startswith(p) for p in ("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.",
                                          "mlp.gate_proj.", "mlp.up_proj."))
    row_w = name in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
    if col:
        return full_grad.chunk(world, dim=0)[rank]
    if row_w:
        return full_grad.chunk(world, dim=1)[rank]
    return full_grad  # RMSNorms (and row-parallel biases, where a layer has them) are replicated


def analytic_tp_bytes(cfg: TPConfig, world: int) -> float:
    """Two all-reduces forward (g) + two backward (f) of a ``(B, T, d)`` fp32 activation, ring."""
    return 4 * ring_all_reduce_bytes(cfg.batch * cfg.seq * cfg.d_model * 4, world)


def tp_worker(rank: int, world: int, cfg: TPConfig) -> dict[str, Any]:
    """Build the reference block on every rank (same seed), shard it, compare forward and backward."""
    dev = worker_device(rank)
    torch.manual_seed(cfg.seed)
    ref = reference_block(cfg).to(dev)
    x = torch.randn(cfg.batch, cfg.seq, cfg.d_model).to(dev)
    target = torch.randn(cfg.batch, cfg.seq, cfg.d_model).to(dev)
    cos, sin = rope_cos_sin(torch.arange(cfg.seq, device=dev)[None], ref.self_attn.cfg.head_dim,
                            ref.self_attn.cfg.rope_theta)

    x_ref = x.clone().requires_grad_(True)
    y_ref = ref(x_ref, cos, sin)
    F.mse_loss(y_ref, target).backward()

    comm = Comm()
    tp = ParallelBlock(ref, comm)
    x_tp = x.clone().requires_grad_(True)
    y_tp = tp(x_tp, cos, sin)
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


# -- the split as a picture ------------------------------------------------------------------------------


def plot_column_row_split(ax, n: int = 2):
    r"""Draw Megatron's MLP split over ``n`` ranks: the replicated input :math:`X` enters :math:`f`, rank
    :math:`i` multiplies by its column slice :math:`A_i` (``d × d_ff/n``), applies the activation locally,
    multiplies by its row slice :math:`B_i` (``d_ff/n × d``) to a *partial* output :math:`Z_i`, and
    :math:`g` all-reduces :math:`Z = \sum_i Z_i`. Box shapes follow the matrix shapes. Returns ``ax``."""
    from matplotlib.patches import FancyArrowPatch, Rectangle

    from llmcore.core.plotting import PALETTE

    def box(x, y, w, h, label, color, text_color="white"):
        ax.add_patch(Rectangle((x - w / 2, y - h / 2), w, h, facecolor=color, edgecolor="black", lw=0.6))
        ax.text(x, y, label, ha="center", va="center", fontsize=8, color=text_color)

    def arrow(x0, y0, x1, y1):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=8, lw=0.8, color="0.3"))

    step = 1.6
    ys = [-(i - (n - 1) / 2) * step for i in range(n)]
    box(0, 0, 0.9, 0.5, "X\n(B·T, d)", "0.55")
    ax.text(1.15, 0, "f: copy fwd,\nall-reduce bwd", fontsize=6.5, ha="center", va="center")
    box(8.75, 0, 0.9, 0.5, "Z\n(B·T, d)", "0.55")
    ax.text(7.75, 0, "g: all-reduce\nfwd, identity\nbwd", fontsize=6.5, ha="center", va="center")
    for i, y in enumerate(ys):
        c = PALETTE[i % len(PALETTE)]
        arrow(0.45, 0, 1.6, y)
        box(2.0, y, 0.5, 1.0, f"$A_{i + 1}$", c)            # column slice: d x d_ff/n (tall)
        arrow(2.25, y, 3.1, y)
        box(3.6, y, 0.9, 0.5, f"act($XA_{i + 1}$)", c)       # local, never communicated
        arrow(4.05, y, 4.85, y)
        box(5.35, y, 1.0, 0.5, f"$B_{i + 1}$", c)            # row slice: d_ff/n x d (wide)
        arrow(5.85, y, 6.45, y)
        box(6.9, y, 0.8, 0.5, f"$Z_{i + 1}$\npartial", c)
        arrow(7.3, y, 8.3, 0)
        ax.text(-1.2, y, f"rank {i}", va="center", fontsize=8, color=c)
    ax.text(2.0, ys[-1] - 0.85, "column-parallel\n(split output dim)", ha="center", va="top", fontsize=7)
    ax.text(5.35, ys[-1] - 0.85, "row-parallel\n(split input dim)", ha="center", va="top", fontsize=7)
    ax.set_xlim(-1.6, 9.4)
    ax.set_ylim(ys[-1] - 1.6, ys[0] + 1.0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(rf"Tensor parallelism of $Z = \mathrm{{act}}(XA)\,B$ on {n} ranks: "
                 rf"$Z = \sum_i \mathrm{{act}}(XA_i)B_i$, one all-reduce per direction", fontsize=9)
    return ax
