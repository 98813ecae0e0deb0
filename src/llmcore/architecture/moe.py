r"""Mixture of Experts: the model kit's one sparse feed-forward layer, and a small MoE language model.

A token :math:`x \in \mathbb R^d` is scored by a router :math:`\ell = W_r x \in \mathbb R^E`,
:math:`p = \operatorname{softmax}(\ell)`, sent to the :math:`k` experts of largest :math:`p`, and the
experts' outputs are mixed:

.. math:: y = \sum_{e \in \mathcal T_k(x)} g_e(x)\, E_e(x), \qquad
          g_e = \frac{p_e}{\sum_{e' \in \mathcal T_k} p_{e'}} \ (\text{Mixtral}), \quad
          g_e = p_e \ (\text{Switch}, k = 1: \text{the router still gets a gradient}).

Load balancing (Switch Transformer, eq. 4): with :math:`f_e` the fraction of tokens routed to
:math:`e` (summed over the :math:`k` slots) and :math:`P_e` the mean router probability,

.. math:: \mathcal L_\text{aux} = E \sum_{e=1}^{E} f_e P_e \quad (= k \text{ when balanced}),
          \qquad \mathcal L_z = \operatorname{mean}_x \big(\log \textstyle\sum_e e^{\ell_e}\big)^2 .

Capacity: expert :math:`e` takes at most :math:`C = \lceil c \cdot N k / E \rceil` of the :math:`N k`
assignments (first choices before second choices, then token order); the rest are *dropped* (they add
nothing; the residual stream carries the token on). Shapes: ``N`` tokens, ``d`` model width, ``E``
experts, ``k`` experts per token, ``F`` expert hidden size.

The layer also has DeepSeekMoE's *shared* experts (always on, Qwen2-MoE's sigmoid gate), noisy top-k
(Shazeer et al. 2017), DeepSeek-V3's auxiliary-loss-free balancing (a per-expert bias that shifts the
*selection* only) and expert-choice routing (Zhou et al. 2022: each expert picks its top-:math:`C` tokens).
:mod:`llmcore.engineering.expert_parallel` splits this layer's experts over ranks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.pretrained import TINY_CONFIG, corpus_ids, tiny_lm
from llmcore.architecture.tokenizer import ByteTokenizer
from llmcore.architecture.training import TrainConfig, random_windows, train
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError
from llmcore.core.progress import progress
from llmcore.core.report import Report

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


# ---- the MoE language model ------------------------------------------------------------------------
class MoELM(nn.Module):
    """The kit's :class:`~llmcore.architecture.llama.Llama` with every SwiGLU MLP replaced by a :class:`MoE`.

    ``model(idx, labels=idx) -> (logits, loss)``; while training, ``loss`` is the LM loss plus
    ``aux_coef * sum_layers L_aux + z_coef * sum_layers L_z`` (evaluation reports the LM loss alone).
    Experts start like the dense MLP they replace (normal(0, init_std), down projections / sqrt(2L)).
    Not a second model: it *is* the kit's ``Llama`` (``self.lm``, same names, same blocks); the wrapper only adds
    the routers' losses to the training loss, which ``Llama.forward`` knows nothing about.
    """

    def __init__(self, cfg: ModelConfig, n_experts: int, top_k: int, expert_ff: int, *, router: str = "switch",
                 aux_coef: float = 0.01, z_coef: float = 1e-3, capacity_factor: float | None = None,
                 n_shared: int = 0, bias_rate: float = 0.0):
        super().__init__()
        self.config, self.aux_coef, self.z_coef = cfg, aux_coef, z_coef
        self.lm = Llama(cfg)
        for layer in self.lm.model.layers:
            layer.mlp = MoE(cfg.d_model, expert_ff, n_experts, top_k, router=router, n_shared=n_shared,
                            capacity_factor=capacity_factor, bias_rate=bias_rate)
            for name, p in layer.mlp.named_parameters():
                std = cfg.init_std / math.sqrt(2 * cfg.n_layers) if name.endswith("down_proj.weight") else cfg.init_std
                nn.init.normal_(p, std=std)

    @property
    def moe_layers(self) -> list[MoE]:
        return [layer.mlp for layer in self.lm.model.layers]

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None):
        out = self.lm(idx, labels=labels)
        if labels is None or not self.training:
            return out
        logits, loss = out
        aux = sum(m.stats["aux"] for m in self.moe_layers)
        z = sum(m.stats["z"] for m in self.moe_layers)
        return logits, loss + self.aux_coef * aux + self.z_coef * z

    @torch.no_grad()
    def routes(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Expert choice of every token, per layer: ``idx (B, T)`` -> list of ``(B*T, k)``."""
        was = self.training
        self.eval()
        self.lm(idx)
        self.train(was)
        return [m.stats["idx"].clone() for m in self.moe_layers]


def active_params(model: nn.Module) -> int:
    """Parameters a token touches: all of a dense model; for a :class:`MoELM` the router, the shared
    experts and ``k`` of the ``E`` routed experts per layer (embeddings included, tied head once)."""
    total = sum(p.numel() for p in model.parameters())
    for m in getattr(model, "moe_layers", []):
        per_expert = sum(p.numel() for p in m.experts[0].parameters())
        total -= (m.n_experts - m.top_k) * per_expert
    return total


# ---- the closed loop -------------------------------------------------------------------------------
@dataclass
class MoEConfig:
    """MoE LM vs a dense LM of equal *active* parameters, aux loss on/off, capacity sweep, dispatch timing.

    Both LMs keep the attention, embeddings and norms of the book's tiny LM (:func:`tiny_lm`, the same
    trunk for both) and learn their feed-forward layers from a fresh init for ``steps`` steps on the same
    batches, so the comparison is about the feed-forward layer alone and starts past the early plateau.
    """

    seq_len: int = 128  # training / evaluation window (bytes)
    batch_size: int = 16  # windows per step
    steps: int = 200  # optimizer steps, the same for every model
    lr: float = 1e-2  # peak AdamW learning rate (warmup + cosine)
    warmup_steps: int = 20  # linear warmup steps
    n_experts: int = 8  # routed experts per layer (E)
    top_k: int = 2  # experts per token (k)
    expert_ff: int = 88  # hidden size of one SwiGLU expert (F); the dense MLP gets k*F + ceil(E/3)
    router: str = "topk"  # "topk" (renormalised gates, Mixtral) or "switch" (gates = probabilities)
    aux_coef: float = 0.01  # Switch load-balancing loss weight (alpha)
    z_coef: float = 1e-3  # router z-loss weight
    capacity_factors: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0)  # swept at evaluation (aux-on model)
    eval_windows: int = 64  # validation windows of seq_len bytes (fixed, consecutive)
    log_every: int = 10  # record the expert load every this many steps
    timing_tokens: int = 256  # tokens in the grouped-vs-loop timing

    def __post_init__(self) -> None:
        if self.router not in ("switch", "topk"):
            raise LLMCoreError(f"router must be 'switch' or 'topk' for the LM, got {self.router!r}")
        if not 1 <= self.top_k <= self.n_experts or self.steps < 1 or self.expert_ff < 1:
            raise LLMCoreError(f"need 1 <= top_k <= n_experts, steps >= 1, expert_ff >= 1; got top_k={self.top_k}, "
                               f"n_experts={self.n_experts}, steps={self.steps}, expert_ff={self.expert_ff}")
        if not self.capacity_factors or min(self.capacity_factors) <= 0:
            raise LLMCoreError(f"capacity_factors must be positive, got {self.capacity_factors}")

    @classmethod
    def for_mode(cls, toy: bool) -> MoEConfig:
        """Toy: ~1 min on 2 CPU cores. Full: a wider, deeper pair for a GPU."""
        if toy:
            return cls()
        return cls(seq_len=256, batch_size=32, steps=2000, lr=3e-3, warmup_steps=100, n_experts=16,
                   eval_windows=512, log_every=50, timing_tokens=2048)

    def model_config(self, ffn_hidden: int) -> ModelConfig:
        return replace(TINY_CONFIG, ffn_hidden=ffn_hidden)

    @property
    def dense_ff(self) -> int:
        """Dense hidden size: k experts' worth plus enough to cover the router (dense active >= MoE active)."""
        return self.top_k * self.expert_ff + math.ceil(self.n_experts / 3)


@dataclass
class MoEResult:
    cfg: MoEConfig
    val: dict[str, float]  # validation loss (nats/byte) per run: dense, moe, moe_noaux
    curves: dict[str, list[float]]  # training LM loss per step (router losses subtracted)
    load_history: dict[str, np.ndarray]  # (logs, layers, E) expert shares over training, per MoE run
    load: dict[str, list[dict]]  # per run, per layer: load_stats on the validation text
    capacity: list[dict]  # per capacity factor: dropped fraction, val loss
    timing: dict[str, float]  # loop vs grouped seconds, their ratio, max |diff|
    params: dict[str, int]
    flops_per_token: dict[str, int]
    models: dict[str, nn.Module] = field(default_factory=dict)
    wall_s: float = 0.0


@torch.no_grad()
def evaluate_moe(model: nn.Module, val_ids: torch.Tensor, cfg: MoEConfig) -> tuple[float, float, list[torch.Tensor]]:
    """Validation loss, mean dropped fraction and every layer's routing over ``eval_windows`` windows."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = min(cfg.eval_windows, (len(val_ids) - 1) // cfg.seq_len)
    windows = val_ids[:n * cfg.seq_len].view(n, cfg.seq_len)
    total, dropped, routes = 0.0, [], []
    for i in range(0, n, cfg.batch_size):
        w = windows[i:i + cfg.batch_size].to(dev)
        total += float(model(w, labels=w)[1]) * w.shape[0]
        for j, m in enumerate(getattr(model, "moe_layers", [])):
            dropped.append(m.stats["dropped"])
            if i == 0:
                routes.append([])
            routes[j].append(m.stats["idx"])
    model.train(was)
    return total / n, float(np.mean(dropped)) if dropped else 0.0, [torch.cat(r) for r in routes]


def time_dispatch(layer: MoE, n_tokens: int, seed: int, repeats: int = 3) -> dict[str, float]:
    """Grouped (sorted) dispatch vs the per-token loop on the same ``(n_tokens, d)`` input, side by side."""
    x = torch.randn(n_tokens, layer.router.in_features, generator=torch.Generator().manual_seed(seed))
    x = x.to(layer.router.weight.device)
    was = layer.training
    layer.eval()
    best = {"loop": float("inf"), "grouped": float("inf")}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in (("loop", layer.forward_loop), ("grouped", layer.forward)):
                t0 = time.perf_counter()
                y = fn(x)
                best[name] = min(best[name], time.perf_counter() - t0)
                if name == "loop":
                    y_loop = y
        diff = float((y - y_loop).abs().max())
    layer.train(was)
    return {"loop_s": best["loop"], "grouped_s": best["grouped"], "ratio": best["loop"] / best["grouped"],
            "max_diff": diff}


def hf_check(seed: int = 0) -> dict[str, float]:
    """Max |ours - HF| of the block output and router logits: ``MixtralSparseMoeBlock`` (top-2 of 4,
    renormalised) and ``Qwen2MoeSparseMoeBlock`` (raw top-k probabilities + a sigmoid-gated shared expert)."""
    # transformers is the optional [hf] extra: imported only for this cross-check
    from transformers import MixtralConfig, Qwen2MoeConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    torch.manual_seed(seed)
    d, F_, E, k = 16, 32, 4, 2
    x = torch.randn(2, 7, d)
    ours = MoE(d, F_, E, k, router="topk").eval()
    hf = copy_to_hf(ours, MixtralSparseMoeBlock(MixtralConfig(
        hidden_size=d, intermediate_size=F_, num_local_experts=E, num_experts_per_tok=k,
        experts_implementation="eager")))
    qwen = MoE(d, F_, E, k, router="switch", n_shared=1, shared_d_ff=24).eval()
    hq = copy_to_hf(qwen, Qwen2MoeSparseMoeBlock(Qwen2MoeConfig(
        hidden_size=d, moe_intermediate_size=F_, shared_expert_intermediate_size=24, num_experts=E,
        num_experts_per_tok=k, norm_topk_prob=False, experts_implementation="eager")))
    with torch.no_grad():
        y, yh = ours(x), hf(x)
        q, qh = qwen(x), hq(x)
        return {"mixtral_out": float((y - _first(yh)).abs().max()),
                "mixtral_logits": float((ours.stats["logits"] - _first(hf.gate(x.view(-1, d)))).abs().max()),
                "qwen2moe_out": float((q - _first(qh)).abs().max()),
                "qwen2moe_logits": float((qwen.stats["logits"] - _first(hq.gate(x.view(-1, d)))).abs().max())}


def _first(out):
    """HF 4.x blocks return ``(hidden, router_logits)``, 5.x the hidden states alone; routers ``(logits, ...)``."""
    return out[0] if isinstance(out, tuple) else out


def experiment(cfg: MoEConfig, device: torch.device, seed: int, show_progress: bool = True) -> MoEResult:
    """Train dense, MoE (aux on) and MoE (aux off) for ``cfg.steps`` steps each on the docstring corpus
    (same batches), then sweep the capacity factor and time the two dispatches."""
    t_start = time.perf_counter()
    train_ids, val_ids = corpus_ids()
    tcfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                       warmup_steps=cfg.warmup_steps, weight_decay=0.05, seed=seed, desc="moe")
    specs = {"dense": None, "moe": cfg.aux_coef, "moe_noaux": 0.0}
    bar = progress(total=cfg.steps * len(specs), desc="dense / MoE / MoE without aux loss",
                   **({} if show_progress else {"disable": True}))
    res = MoEResult(cfg, {}, {}, {}, {}, [], {}, {}, {})
    trunk = {k: v for k, v in tiny_lm().model.state_dict().items() if ".mlp." not in k}
    for name, aux in specs.items():
        torch.manual_seed(seed)  # the same fresh feed-forward init and batches for all three
        if aux is None:
            model = Llama(cfg.model_config(cfg.dense_ff))
            model.load_state_dict(trunk, strict=False)
        else:
            model = MoELM(cfg.model_config(cfg.dense_ff), cfg.n_experts, cfg.top_k, cfg.expert_ff,
                          router=cfg.router, aux_coef=aux, z_coef=cfg.z_coef)
            model.lm.load_state_dict(trunk, strict=False)
        model = model.to(device)
        history: list[np.ndarray] = []
        router_terms: list[float] = []  # the aux + z part of each step's training loss (curves show the LM part)

        def on_backward(step: int, m: nn.Module, aux=aux, history=history, router_terms=router_terms) -> None:
            bar.update(1)
            router_terms.append(0.0 if aux is None else float(sum(
                m.aux_coef * layer.stats["aux"] + m.z_coef * layer.stats["z"] for layer in m.moe_layers)))
            if aux is not None and step % cfg.log_every == 0:
                history.append(np.array([load_stats(layer.stats["idx"], cfg.n_experts)["share"]
                                         for layer in m.moe_layers]))

        out = train(model, tcfg, lambda g: random_windows(train_ids, cfg.batch_size, cfg.seq_len, g),
                    on_backward=on_backward, show_progress=False)
        res.val[name], _, routes = evaluate_moe(model, val_ids, cfg)
        res.curves[name] = [lm - r for lm, r in zip(out.loss, router_terms)]
        res.params[name] = active_params(model)
        res.models[name] = model.eval()
        if aux is not None:
            res.params[f"{name} total"] = sum(p.numel() for p in model.parameters())
            res.load_history[name] = np.stack(history)
            res.load[name] = [load_stats(r, cfg.n_experts) for r in routes]
    bar.close()
    moe = res.models["moe"]
    for cf in cfg.capacity_factors:
        for layer in moe.moe_layers:
            layer.capacity_factor = cf
        loss, dropped, _ = evaluate_moe(moe, val_ids, cfg)
        res.capacity.append({"capacity_factor": cf, "dropped": dropped, "val": loss})
    for layer in moe.moe_layers:
        layer.capacity_factor = None
    res.timing = time_dispatch(moe.moe_layers[0], cfg.timing_tokens, seed)
    d, E, k, F_ = TINY_CONFIG.d_model, cfg.n_experts, cfg.top_k, cfg.expert_ff
    res.flops_per_token = {"dense FFN": 2 * 3 * d * cfg.dense_ff, "MoE FFN (router + k experts)": 2 * d * E + k * 2 * 3 * d * F_}
    res.wall_s = time.perf_counter() - t_start
    return res


def make_report(res: MoEResult, hf: dict[str, float], toy: bool, device: str, seed: int) -> Report:
    """Metrics and the acceptance criteria (the thresholds live here only)."""
    rep = Report("moe", "Mixture of Experts / 混合专家模型 (MoE)", toy, device, seed)
    for name, v in res.val.items():
        rep.metric(f"val loss {name} (nats/byte)", v)
    for name, v in res.params.items():
        rep.metric(f"params {name}", v)
    for name in ("moe", "moe_noaux"):
        rep.metric(f"{name}: min load entropy / log E over layers", min(s["entropy"] for s in res.load[name]))
        rep.metric(f"{name}: max expert share over layers", max(s["max_share"] for s in res.load[name]))
        rep.metric(f"{name}: max load CV over layers", max(s["cv"] for s in res.load[name]))
    for row in res.capacity:
        rep.metric(f"capacity {row['capacity_factor']:g}: dropped fraction", row["dropped"])
        rep.metric(f"capacity {row['capacity_factor']:g}: val loss", row["val"])
    rep.metric("grouped dispatch speed-up over the per-token loop", res.timing["ratio"])
    rep.metric("wall s", res.wall_s)
    rep.check("MoE block vs HF MixtralSparseMoeBlock: output and router logits (max abs diff)",
              max(hf["mixtral_out"], hf["mixtral_logits"]), "<", 1e-6)
    rep.check("shared-expert MoE vs HF Qwen2MoeSparseMoeBlock: output and router logits (max abs diff)",
              max(hf["qwen2moe_out"], hf["qwen2moe_logits"]), "<", 1e-6)
    rep.check("active params: MoE / dense", res.params["moe"] / res.params["dense"], "<=", 1.0)
    rep.check("val loss: dense - MoE (nats/byte, same steps)", res.val["dense"] - res.val["moe"], ">", 0.01)
    rep.check("aux loss on: min load entropy / log E", min(s["entropy"] for s in res.load["moe"]), ">", 0.9)
    rep.check("aux loss off: max expert share (collapse; uniform = 1/E)",
              max(s["max_share"] for s in res.load["moe_noaux"]), ">", 2.5 / res.cfg.n_experts)
    rep.check("aux loss off / on: max load CV", max(s["cv"] for s in res.load["moe_noaux"])
              / max(s["cv"] for s in res.load["moe"]), ">", 2.0)
    cap = sorted(res.capacity, key=lambda r: r["capacity_factor"])
    rep.check("capacity sweep: dropped fraction at the smallest factor", cap[0]["dropped"], ">=",
              1 - cap[0]["capacity_factor"] - 1e-9)
    rep.check("capacity sweep: val loss at the smallest minus the largest factor", cap[0]["val"] - cap[-1]["val"],
              ">", 0.1)
    rep.check("grouped dispatch equals the per-token loop (max abs diff)", res.timing["max_diff"], "<", 1e-5)
    rep.check("grouped dispatch speed-up over the per-token loop", res.timing["ratio"], ">", 3.0)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The MoE closed loop (``device`` and ``seed`` resolved once by the registry)."""
    res = experiment(MoEConfig.for_mode(toy), device, seed)
    rep = make_report(res, hf_check(seed), toy, str(device), seed)
    rep.wall_s = res.wall_s
    return rep


# ---- what the chapter shows ------------------------------------------------------------------------
def route_table(model: MoELM, text: str) -> list[dict]:
    """The widget's table: for each byte of ``text``, the experts it is sent to in every layer."""
    ids = torch.tensor(ByteTokenizer().encode(text), dtype=torch.long)[None]
    if ids.shape[1] == 0:
        raise LLMCoreError("type some text: an empty string has no tokens to route")
    routes = model.routes(ids.to(next(model.parameters()).device))
    return [{"byte": bytes([int(t)]).decode("utf-8", "replace") if t < 256 else f"<{int(t)}>",
             **{f"layer {j}": sorted(int(e) for e in r[i]) for j, r in enumerate(routes)}}
            for i, t in enumerate(ids[0])]


def plot_moe_diagram():
    """The mechanism: router scores, top-k choice, capacity buffers, the gated sum (drawn, not measured)."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 5)
    ax.axis("off")
    ax.grid(False)
    toks = ["x1", "x2", "x3", "x4"]
    routes = [(0, 2), (2, 3), (0, 2), (2, 1)]  # expert 2 gets 4 assignments, capacity 3: x4's is dropped
    for i, t in enumerate(toks):
        ax.text(0.5, 4.2 - i, t, ha="center", va="center", bbox={"boxstyle": "round", "fc": "#e8f1fa"})
    ax.text(1.9, 4.7, "router\nsoftmax(W_r x), top-k", ha="center", fontsize=9)
    for e in range(4):
        y = 4.2 - e
        ax.add_patch(plt.Rectangle((4.2, y - 0.35), 1.6, 0.7, fc="#fde9d9", ec="#D55E00"))
        ax.text(5.0, y, f"expert {e}", ha="center", va="center", fontsize=9)
        for s in range(3):  # capacity C = 3 slots
            ax.add_patch(plt.Rectangle((3.3 + 0.25 * s, y - 0.2), 0.22, 0.4, fc="white", ec="grey", lw=0.8))
    ax.text(3.65, 4.7, "capacity\nC slots", ha="center", fontsize=9)
    count = [0] * 4
    for i, (a, b) in enumerate(routes):
        for e in (a, b):
            count[e] += 1
            dropped = count[e] > 3
            ax.annotate("", xy=(3.25, 4.2 - e), xytext=(0.85, 4.2 - i),
                        arrowprops={"arrowstyle": "->", "color": "#CC0000" if dropped else "#0072B2",
                                    "ls": "--" if dropped else "-", "lw": 1.0})
    ax.text(2.0, 0.0, "red dashed: over capacity -> dropped (residual only)", color="#CC0000", fontsize=8,
            ha="center")
    for e in range(4):
        ax.annotate("", xy=(7.6, 2.7), xytext=(5.8, 4.2 - e), arrowprops={"arrowstyle": "->", "color": "grey"})
    ax.text(8.4, 2.7, "y = sum_k g_k E_k(x)\n(+ shared expert)", ha="center", va="center",
            bbox={"boxstyle": "round", "fc": "#e6f4ea"}, fontsize=9)
    ax.set_title("Top-2 routing with capacity: sort by expert, one batched matmul each, gated sum back")
    return fig


def plot_results(res: MoEResult):
    """Training loss of the three LMs, expert load over training (aux on/off, layer 0), capacity sweep."""
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6), gridspec_kw={"width_ratios": [1.2, 1, 1, 0.05, 1.1]})
    ax = axes[0]
    w = 20
    smooth = {name: np.convolve(c, np.ones(w) / w, mode="valid") for name, c in res.curves.items()}
    for name in ("moe", "moe_noaux"):
        ax.plot(np.arange(len(smooth[name])) + w, smooth["dense"] - smooth[name],
                label=f"dense - {name} (val gap {res.val['dense'] - res.val[name]:+.3f})")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="step", ylabel="train loss gap (nats/byte, smoothed)", title="> 0: MoE ahead (equal active params)")
    ax.legend(fontsize=8)
    for ax, name in zip(axes[1:3], ("moe", "moe_noaux")):
        h = res.load_history[name][:, 0, :]  # (logs, E) layer 0
        im = ax.imshow(h.T, aspect="auto", cmap="viridis", vmin=0, vmax=0.5,
                       extent=(0, len(h) * res.cfg.log_every, res.cfg.n_experts - 0.5, -0.5))
        ax.set(xlabel="step", ylabel="expert", title=f"layer-0 load share, {'aux on' if name == 'moe' else 'aux off'}")
        ax.grid(False)
    fig.colorbar(im, cax=axes[3])
    axes[3].set_title("share", fontsize=9)
    fig.subplots_adjust(wspace=0.6)
    ax = axes[4]
    cf = [r["capacity_factor"] for r in res.capacity]
    ax.plot(cf, [r["dropped"] for r in res.capacity], "o-", label="dropped fraction")
    ax.set(xlabel="capacity factor", ylabel="dropped fraction", title="capacity sweep (eval)")
    ax2 = ax.twinx()
    ax2.plot(cf, [r["val"] for r in res.capacity], "s-", color="#D55E00", label="val loss")
    ax2.set_ylabel("val loss", color="#D55E00")
    ax2.grid(False)
    return fig
