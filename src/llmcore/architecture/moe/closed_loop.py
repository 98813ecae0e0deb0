r"""A small MoE language model (the kit's ``Llama`` with its MLPs swapped for :class:`MoE` layers) and the
chapter's closed loop: MoE vs a dense LM at equal active parameters, aux loss on/off, the capacity sweep,
grouped dispatch vs the per-token loop, and the HF cross-check."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.moe.layer import MoE, copy_to_hf, load_stats
from llmcore.architecture.pretrained import TINY_CONFIG, corpus_ids, tiny_lm
from llmcore.architecture.training import TrainConfig, random_windows, train
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError
from llmcore.core.progress import progress
from llmcore.core.report import Report


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
                m.aux_coef * layer.stats["aux"] + m.z_coef * layer.stats["z"] for layer in m.moe_layers).detach()))
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


