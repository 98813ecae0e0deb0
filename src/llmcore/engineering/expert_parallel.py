r"""Expert parallelism: an MoE layer whose experts live on different ranks, tokens moved by all-to-all.

A top-:math:`k` MoE layer (Shazeer et al., 2017; GShard, Lepikhin et al., 2020) sends token :math:`x`
to experts :math:`e_1..e_k` chosen by a router and mixes their outputs with the renormalised gates:

.. math:: y = \sum_{j=1}^{k} g_j(x)\, E_{e_j}(x), \qquad g = \operatorname{softmax}(\text{top-}k(W_r x)).

With :math:`E` experts on :math:`n` ranks, rank :math:`r` owns experts :math:`rE/n \dots (r+1)E/n - 1`
and its own slice of the tokens (data parallel). One forward is

1. **route** locally (the router is replicated),
2. **dispatch**: ``all_to_all`` every (token, slot) row to the rank that owns its expert,
3. run the local experts on the rows received,
4. **combine**: ``all_to_all`` the results back and sum them with the gates.

Backward is the same two ``all_to_all`` in reverse (the transpose of a permutation is its inverse),
and the replicated router's gradient is all-reduced like any data-parallel weight.

The single-process layer is the model kit's :class:`llmcore.architecture.moe.MoE` (the MoE chapter);
this module only splits its experts over ranks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmcore.architecture.moe import MoE
from llmcore.engineering.dist_utils import Comm, worker_device


class _AllToAll(torch.autograd.Function):
    """Differentiable all-to-all: backward sends the gradients back along the reversed splits."""

    @staticmethod
    def forward(ctx, x, send_splits, recv_splits, comm: Comm, tag: str):
        ctx.splits, ctx.comm, ctx.tag = (send_splits, recv_splits), comm, tag
        return comm.all_to_all(x, send_splits, recv_splits, tag=tag)

    @staticmethod
    def backward(ctx, grad):
        send, recv = ctx.splits
        return ctx.comm.all_to_all(grad.contiguous(), recv, send, tag=ctx.tag + "(backward)"), None, None, None, None


class ExpertParallelMoE(nn.Module):
    """Rank ``r``'s part of the kit's :class:`~llmcore.architecture.moe.MoE` (plain top-k routing, no
    capacity limit): the replicated router and experts ``rE/n .. (r+1)E/n - 1``."""

    def __init__(self, ref: MoE, comm: Comm):
        super().__init__()
        E, n = len(ref.experts), comm.world
        if E % n:
            raise ValueError(f"{E} experts cannot be split evenly over {n} ranks")
        self.comm, self.top_k, self.per_rank = comm, ref.top_k, E // n
        self.first = comm.rank * self.per_rank
        self.router = nn.Linear(ref.router.in_features, E, bias=False)
        self.router.load_state_dict(ref.router.state_dict())
        self.experts = nn.ModuleList()
        for e in range(self.first, self.first + self.per_rank):  # a copy of this rank's experts (any kind)
            self.experts.append(copy.deepcopy(ref.experts[e]))
        self.last_routing: dict[str, Any] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        comm, n, k = self.comm, self.comm.world, self.top_k
        top_v, top_i = self.router(x).topk(k, dim=-1)
        gates = top_v.softmax(dim=-1)
        # one row per (token, slot), sorted by destination rank then expert
        tok = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
        exp, gate = top_i.reshape(-1), gates.reshape(-1)
        order = torch.argsort(exp, stable=True)  # experts are numbered rank-major, so this groups by rank
        tok, exp, gate = tok[order], exp[order], gate[order]
        send = torch.bincount(exp // self.per_rank, minlength=n)
        recv = comm.all_to_all(send.view(n, 1), [1] * n, [1] * n, tag="ep.counts").view(n)
        send_l, recv_l = send.tolist(), recv.tolist()
        x_in = _AllToAll.apply(x[tok], send_l, recv_l, comm, "ep.dispatch")
        e_in = comm.all_to_all(exp, send_l, recv_l, tag="ep.expert_ids") - self.first
        y_in = torch.zeros_like(x_in)
        for j, expert in enumerate(self.experts):
            rows = (e_in == j).nonzero(as_tuple=True)[0]
            if rows.numel():
                y_in = y_in.index_copy(0, rows, expert(x_in[rows]))
        y = _AllToAll.apply(y_in, recv_l, send_l, comm, "ep.combine")
        self.last_routing = {"send": send_l, "recv": recv_l}
        return torch.zeros_like(x).index_add(0, tok, gate[:, None] * y)


@dataclass
class EPConfig:
    tokens_per_rank: int = 16
    d_model: int = 16
    d_ff: int = 32
    experts_per_rank: int = 2
    top_k: int = 2
    seed: int = 0
    expert: str = "gelu"  # the kit MoE's expert kind: "gelu" (Switch/GShard) or "swiglu" (Mixtral)


def ep_worker(rank: int, world: int, cfg: EPConfig) -> dict[str, Any]:
    """EP layer vs the single-process MoE on all ranks' tokens: outputs, gradients, bytes."""
    dev = worker_device(rank)
    torch.manual_seed(cfg.seed)
    E = cfg.experts_per_rank * world
    ref = MoE(cfg.d_model, cfg.d_ff, E, cfg.top_k, expert=cfg.expert).to(dev)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    N = cfg.tokens_per_rank * world
    X = torch.randn(N, cfg.d_model, generator=g).to(dev)
    T = torch.randn(N, cfg.d_model, generator=g).to(dev)
    X_ref = X.clone().requires_grad_(True)  # inputs come from earlier layers: they need gradients too
    (ref(X_ref) * T).sum().div(N).backward()  # loss over all tokens of all ranks

    comm = Comm()
    ep = ExpertParallelMoE(ref, comm).to(dev)
    lo, hi = rank * cfg.tokens_per_rank, (rank + 1) * cfg.tokens_per_rank
    x = X[lo:hi].clone().requires_grad_(True)
    y = ep(x)
    (y * T[lo:hi]).sum().div(N).backward()  # this rank's share of the same loss
    with torch.no_grad():
        y_ref = ref(X)[lo:hi]
    # the replicated router is data-parallel: sum its gradient over ranks
    router_grad = comm.all_reduce(ep.router.weight.grad, tag="ep.router_grad")
    errs = [(router_grad - ref.router.weight.grad).abs().max().item(),
            (x.grad - X_ref.grad[lo:hi]).abs().max().item()]
    for j, ex in enumerate(ep.experts):
        for a, b in zip(ex.parameters(), ref.experts[ep.first + j].parameters()):
            errs.append((a.grad - b.grad).abs().max().item())
    send, recv = ep.last_routing["send"], ep.last_routing["recv"]
    remote_out, remote_in = sum(send) - send[rank], sum(recv) - recv[rank]
    row = cfg.d_model * 4
    return {
        "out_err": (y - y_ref).abs().max().item(),
        "grad_err": max(errs),
        "send_rows": send, "recv_rows": recv,
        # activations: dispatch + combine forward, the same two backward
        "sent_activation_bytes": comm.sent_bytes(tag="ep.dispatch") + comm.sent_bytes(tag="ep.combine"),
        "expected_activation_bytes": 2 * (remote_out + remote_in) * row,
        "uniform_routing_bytes": 4 * cfg.tokens_per_rank * cfg.top_k * (world - 1) / world * row,
        "sent_metadata_bytes": comm.sent_bytes(tag="ep.counts") + comm.sent_bytes(tag="ep.expert_ids"),
        "expected_metadata_bytes": (world - 1) * 8 + remote_out * 8,
    }
