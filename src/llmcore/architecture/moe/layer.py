r"""The kit's MoE layer: experts, routers (top-k, Switch, noisy, expert choice), the balancing losses,
capacity, shared experts, bias balancing, grouped dispatch, and the copy into HF's MoE blocks.

The math is in the package docstring (:mod:`llmcore.architecture.moe`). Shapes: ``N`` tokens, ``d`` model
width, ``E`` experts, ``k`` experts per token, ``F`` expert hidden size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.core.errors import LLMCoreError

ROUTERS = ("topk", "switch", "expert_choice")


# ---- experts ---------------------------------------------------------------------------------------
class Expert(nn.Module):
    """GELU feed-forward expert with biases (GShard/Switch) ``(N, d) -> (N, d)``."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUExpert(nn.Module):
    """SwiGLU expert ``down(silu(gate(x)) * up(x))`` ``(N, d) -> (N, d)`` -- Mixtral's, with HF's names."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ---- routing and the losses ------------------------------------------------------------------------
def route_topk(logits: torch.Tensor, k: int, renormalize: bool = True,
               bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``logits (N, E)`` -> ``(gates (N, k), experts (N, k), probs (N, E))``.

    ``renormalize``: gates are the top-k probabilities divided by their sum (Mixtral); else the raw
    probabilities (Switch / Qwen2-MoE ``norm_topk_prob=False``). ``bias (E,)`` (DeepSeek-V3) is added to
    the probabilities for the *choice* of experts only; the gates use the unbiased probabilities.
    """
    probs = logits.float().softmax(dim=-1)
    if renormalize and bias is None:  # softmax over the k largest logits (= renormalised top-k probabilities)
        top_v, idx = logits.topk(k, dim=-1)
        return top_v.softmax(dim=-1), idx, probs
    choice = probs if bias is None else probs + bias
    idx = choice.topk(k, dim=-1).indices
    gates = probs.gather(-1, idx)
    if renormalize:
        gates = gates / gates.sum(-1, keepdim=True)
    return gates.to(logits.dtype), idx, probs


def load_balancing_loss(probs: torch.Tensor, idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    r"""Switch aux loss :math:`E \sum_e f_e P_e`; ``probs (N, E)``, ``idx (N, k)`` -> scalar (``k`` if uniform)."""
    f = torch.bincount(idx.reshape(-1), minlength=n_experts).to(probs.dtype) / idx.shape[0]  # (E,), sums to k
    return n_experts * (f * probs.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean squared log-partition of the router logits ``(N, E)`` -> scalar."""
    return logits.float().logsumexp(-1).pow(2).mean()


def capacity(n_tokens: int, k: int, n_experts: int, factor: float) -> int:
    r"""Slots per expert :math:`C = \lceil c\,N k / E \rceil`."""
    return math.ceil(factor * n_tokens * k / n_experts)


def capacity_keep(idx: torch.Tensor, n_experts: int, cap: int) -> torch.Tensor:
    """Bool ``(N, k)``: which assignments fit in their expert's ``cap`` slots (slot-major, then token order)."""
    N, k = idx.shape
    flat = idx.t().reshape(-1)  # slot-major: every first choice before any second choice
    onehot = F.one_hot(flat, n_experts)
    position = (onehot.cumsum(0) * onehot).sum(-1) - 1  # rank of this assignment within its expert
    return (position < cap).view(k, N).t()


def load_stats(idx: torch.Tensor, n_experts: int) -> dict[str, float]:
    """Expert load of ``idx (N, k)``: shares, entropy / log E (1 = uniform), max share, coefficient of variation."""
    load = torch.bincount(idx.reshape(-1), minlength=n_experts).double()
    share = load / load.sum()
    nz = share[share > 0]
    return {"entropy": float(-(nz * nz.log()).sum() / math.log(n_experts)), "max_share": float(share.max()),
            "cv": float(share.std(unbiased=False) / share.mean()), "share": share.tolist()}


# ---- the layer -------------------------------------------------------------------------------------
class MoE(nn.Module):
    """Sparse MoE feed-forward ``(..., d) -> (..., d)``: router, ``n_experts`` experts, optional shared ones.

    ``expert``: ``"swiglu"`` (Mixtral/Qwen) or ``"gelu"`` (Switch/GShard, with biases).
    ``router``: ``"topk"`` (renormalised top-k gates), ``"switch"`` (raw probabilities as gates),
    ``"expert_choice"`` (each expert takes its ``capacity`` best tokens). ``capacity_factor`` None = no
    dropping. ``noisy``: learned Gaussian noise on the logits while training. ``bias_rate`` > 0: the
    DeepSeek-V3 bias update ``b_e += rate * sign(mean load - load_e)`` after every training forward.
    After each forward ``self.stats`` holds the router logits, the choice and the losses.
    """

    def __init__(self, d_model: int, d_ff: int, n_experts: int, top_k: int, *, expert: str = "swiglu",
                 router: str = "topk", n_shared: int = 0, shared_d_ff: int | None = None,
                 capacity_factor: float | None = None, noisy: bool = False, bias_rate: float = 0.0):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise LLMCoreError(f"need 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        if router not in ROUTERS or expert not in ("swiglu", "gelu"):
            raise LLMCoreError(f"router must be one of {ROUTERS} and expert 'swiglu' or 'gelu', "
                               f"got router={router!r}, expert={expert!r}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise LLMCoreError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor}")
        self.n_experts, self.top_k, self.router_kind, self.capacity_factor = n_experts, top_k, router, capacity_factor
        self.bias_rate = bias_rate
        self.router = nn.Linear(d_model, n_experts, bias=False)
        make = SwiGLUExpert if expert == "swiglu" else Expert
        self.experts = nn.ModuleList(make(d_model, d_ff) for _ in range(n_experts))
        self.shared = make(d_model, shared_d_ff or d_ff * n_shared) if n_shared else None
        self.shared_gate = nn.Linear(d_model, 1, bias=False) if n_shared else None
        self.noise = nn.Linear(d_model, n_experts, bias=False) if noisy else None
        self.register_buffer("expert_bias", torch.zeros(n_experts))
        self.stats: dict = {}

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x (N, d)`` -> ``gates (N, k)``, ``experts (N, k)``, ``probs (N, E)``, ``logits (N, E)``."""
        logits = self.router(x)
        if self.noise is not None and self.training:  # noisy top-k: N(0, softplus(W_noise x)^2)
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        bias = self.expert_bias if self.bias_rate > 0 else None
        gates, idx, probs = route_topk(logits, self.top_k, renormalize=self.router_kind == "topk", bias=bias)
        return gates, idx, probs, logits

    def dispatch(self, x: torch.Tensor, gates: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Grouped compute: sort the ``N k`` (token, slot) rows by expert, one matmul chain per expert.

        ``gates`` of dropped assignments are 0 and their rows are skipped. Returns ``(N, d)``.
        """
        N, k = idx.shape
        flat_e, flat_g = idx.reshape(-1), gates.reshape(-1)
        tok = torch.arange(N, device=x.device).repeat_interleave(k)
        live = (flat_g != 0).nonzero(as_tuple=True)[0]  # dropped / unchosen assignments cost nothing
        order = live[torch.argsort(flat_e[live], stable=True)]
        tok, flat_e, flat_g = tok[order], flat_e[order], flat_g[order]
        counts = torch.bincount(flat_e, minlength=self.n_experts).tolist()
        xs, ys, start = x[tok], [], 0
        for e, n in enumerate(counts):
            if n:
                ys.append(self.experts[e](xs[start:start + n]))
            start += n
        y = torch.cat(ys) if ys else torch.zeros_like(xs)
        return torch.zeros_like(x).index_add(0, tok, flat_g[:, None].to(y.dtype) * y)

    def forward_loop(self, x: torch.Tensor) -> torch.Tensor:
        """The naive reference: every (token, slot) calls its expert on one row. Same result as ``forward``."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        gates, idx, _, _ = self.route(x)
        if self.capacity_factor is not None:
            gates = gates * capacity_keep(idx, self.n_experts, capacity(len(x), self.top_k, self.n_experts,
                                                                        self.capacity_factor))
        rows = []
        for n in range(x.shape[0]):
            y = torch.zeros_like(x[n])
            for j in range(self.top_k):
                if gates[n, j] != 0:
                    y = y + gates[n, j] * self.experts[int(idx[n, j])](x[n:n + 1])[0]
            rows.append(y)
        out = torch.stack(rows)
        if self.shared is not None:
            out = out + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        return out.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        N, E, k = x.shape[0], self.n_experts, self.top_k
        if self.router_kind == "expert_choice":
            gates, idx, probs, logits = self._expert_choice(x)
            kept = (gates != 0).any(-1)  # "dropped" = tokens no expert chose
        else:
            gates, idx, probs, logits = self.route(x)
            kept = torch.ones_like(idx, dtype=torch.bool)
            if self.capacity_factor is not None:
                kept = capacity_keep(idx, E, capacity(N, k, E, self.capacity_factor))
                gates = gates * kept
        out = self.dispatch(x, gates, idx)
        if self.shared is not None:  # DeepSeekMoE / Qwen2-MoE: an always-on expert, sigmoid-gated
            out = out + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        self.stats = {"logits": logits, "idx": idx, "aux": load_balancing_loss(probs, idx, E),
                      "z": router_z_loss(logits), "dropped": 1.0 - float(kept.float().mean())}
        if self.training and self.bias_rate > 0:
            with torch.no_grad():
                load = torch.bincount(idx.reshape(-1), minlength=E).float()
                self.expert_bias += self.bias_rate * torch.sign(load.mean() - load)
        return out.view(shape)

    def _expert_choice(self, x: torch.Tensor):
        """Expert-choice routing: expert ``e`` takes the ``C`` tokens of highest ``probs[:, e]``.

        Returned in the format of :meth:`dispatch`: ``idx (N, E)`` lists every expert for every token and
        ``gates (N, E)`` is ``probs`` where the expert chose the token, else 0 (skipped by the dispatch).
        A token may get several experts or none.
        """
        logits = self.router(x)
        probs = logits.float().softmax(-1)
        cap = min(x.shape[0], capacity(x.shape[0], self.top_k, self.n_experts, self.capacity_factor or 1.0))
        g, tok = probs.t().topk(cap, dim=-1)  # (E, C)
        gates = torch.zeros_like(probs).scatter(0, tok.t(), g.t())  # (N, E): 0 where not chosen
        idx = torch.arange(self.n_experts, device=x.device).expand_as(gates)
        return gates.to(x.dtype), idx, probs, logits


# ---- HF interop ------------------------------------------------------------------------------------
def copy_to_hf(moe: MoE, hf_block: nn.Module) -> nn.Module:
    """Copy our weights into HF's ``MixtralSparseMoeBlock`` / ``Qwen2MoeSparseMoeBlock`` (transformers 5.x).

    HF 5.x fuses the experts into 3-D parameters: ``gate_up_proj (E, 2F, d)`` = [gate; up] and
    ``down_proj (E, d, F)``; the router is ``gate.weight (E, d)``.
    """
    with torch.no_grad():
        hf_block.gate.weight.copy_(moe.router.weight)
        hf_block.experts.gate_up_proj.copy_(torch.stack(
            [torch.cat([ex.gate_proj.weight, ex.up_proj.weight]) for ex in moe.experts]))
        hf_block.experts.down_proj.copy_(torch.stack([ex.down_proj.weight for ex in moe.experts]))
        if moe.shared is not None:
            hf_block.shared_expert.load_state_dict(moe.shared.state_dict())
            hf_block.shared_expert_gate.weight.copy_(moe.shared_gate.weight)
    return hf_block.eval()


