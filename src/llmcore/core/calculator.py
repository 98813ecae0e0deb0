r"""Memory & compute calculator for decoder-only transformers (the book's Technical Reference page).

Closed-form counts, checked against Hugging Face models instantiated from config on the ``meta``
device (no weights are allocated or downloaded): parameters (dense and MoE, total and active),
training FLOPs $\approx 6ND$, model-state memory (weights, gradients, Adam state) per rank under ZeRO
stages 0-3, KV-cache bytes with GQA, and weight bytes per quantization format.

Symbols: $V$ vocabulary, $d$ hidden size, $f$ FFN (intermediate) size, $L$ layers, $H$ query heads,
$K$ key/value heads, $D$ head size, $E$ experts, $k$ experts per token, $\Psi$ parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from llmcore.core.errors import LLMCoreError


@dataclass(frozen=True)
class ArchConfig:
    """The shape of a LLaMA-family decoder (LLaMA, Mistral/Mixtral, Qwen2): everything the counts need."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # None -> hidden_size // num_heads
    tie_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2 has biases on q, k, v
    num_experts: int = 0  # 0 = dense FFN; > 0 = MoE FFN with a linear router
    experts_per_token: int = 0
    max_position: int = 8192
    hf_model_type: str = "llama"  # transformers model type for the meta-device cross-check
    hf_extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


#: Real configurations (from the models' published ``config.json``).
PRESETS: dict[str, ArchConfig] = {
    "Llama-3-8B": ArchConfig("Llama-3-8B", 128256, 4096, 14336, 32, 32, 8, max_position=8192,
                             hf_extra={"rope_theta": 500000.0}),
    "Llama-3-70B": ArchConfig("Llama-3-70B", 128256, 8192, 28672, 80, 64, 8, max_position=8192,
                              hf_extra={"rope_theta": 500000.0}),
    "Mixtral-8x7B": ArchConfig("Mixtral-8x7B", 32000, 4096, 14336, 32, 32, 8, num_experts=8, experts_per_token=2,
                               max_position=32768, hf_model_type="mixtral", hf_extra={"rope_theta": 1e6}),
    "Qwen2.5-7B": ArchConfig("Qwen2.5-7B", 152064, 3584, 18944, 28, 28, 4, qkv_bias=True, max_position=32768,
                             hf_model_type="qwen2", hf_extra={"rope_theta": 1e6}),
    "Qwen2.5-0.5B": ArchConfig("Qwen2.5-0.5B", 151936, 896, 4864, 24, 14, 2, tie_embeddings=True, qkv_bias=True,
                               max_position=32768, hf_model_type="qwen2", hf_extra={"rope_theta": 1e6}),
}


# ---- parameters -----------------------------------------------------------------------------------
def param_count(cfg: ArchConfig) -> dict[str, int]:
    r"""Parameter counts by component, plus ``total`` and ``active`` (per token; differs for MoE).

    Per layer: attention $d \cdot H D + 2\, d \cdot K D + H D \cdot d$ (+ $H D + 2 K D$ biases),
    SwiGLU FFN $3 d f$ (times $E$ experts, plus a $d \times E$ router), two RMSNorm gains $2d$.
    Plus embeddings $V d$, final norm $d$ and the output head $V d$ unless tied.
    """
    d, f, L, D = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.d_head
    H, K, V = cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size
    attn = d * H * D + 2 * d * K * D + H * D * d + (H * D + 2 * K * D if cfg.qkv_bias else 0)
    expert = 3 * d * f
    if cfg.is_moe:
        ffn_total = cfg.num_experts * expert + d * cfg.num_experts
        ffn_active = cfg.experts_per_token * expert + d * cfg.num_experts
    else:
        ffn_total = ffn_active = expert
    norms = 2 * d
    embed = V * d
    head = 0 if cfg.tie_embeddings else V * d
    total = embed + L * (attn + ffn_total + norms) + d + head
    active = embed + L * (attn + ffn_active + norms) + d + head
    return {"embedding": embed, "attention": L * attn, "ffn": L * ffn_total, "norms": L * norms + d,
            "lm_head": head, "total": total, "active": active}


def hf_config(cfg: ArchConfig):
    """The transformers config of the same architecture (``AutoConfig.for_model``)."""
    from transformers import AutoConfig

    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
              num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
              num_key_value_heads=cfg.num_kv_heads, tie_word_embeddings=cfg.tie_embeddings,
              max_position_embeddings=cfg.max_position, **cfg.hf_extra)
    if cfg.head_dim is not None:
        kw["head_dim"] = cfg.head_dim
    if cfg.is_moe:
        kw.update(num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token)
    return AutoConfig.for_model(cfg.hf_model_type, **kw)


def hf_meta_param_count(cfg: ArchConfig) -> int:
    """Parameters of ``AutoModelForCausalLM.from_config`` built on the ``meta`` device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg))
    seen, n = set(), 0
    for p in model.parameters():  # tied weights are one parameter object: count once
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


# ---- compute and memory ---------------------------------------------------------------------------
def training_flops(n_params: float, n_tokens: float) -> float:
    r"""$C \approx 6 N D$: 2 FLOPs per parameter per token forward, 4 backward (Kaplan et al. 2020)."""
    return 6.0 * n_params * n_tokens


def model_state_bytes(n_params: float, zero_stage: int = 0, n_gpus: int = 1, weight_bytes: float = 2,
                      grad_bytes: float = 2, optimizer_bytes: float = 12) -> dict[str, float]:
    r"""Per-rank bytes of weights, gradients and optimizer state under ZeRO (Rajbhandari et al. 2020).

    Mixed-precision Adam: fp16/bf16 weights (2) and gradients (2) and fp32 master weights, momentum
    and variance ($K = 12$ bytes per parameter). Stage 1 shards the optimizer state over $N_d$ ranks,
    stage 2 also the gradients, stage 3 also the weights:
    $(2 + 2 + K)\Psi$, $(2 + 2)\Psi + K\Psi/N_d$, $2\Psi + (2 + K)\Psi/N_d$, $(2 + 2 + K)\Psi/N_d$.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise LLMCoreError(f"ZeRO stage must be 0, 1, 2 or 3, got {zero_stage}")
    if n_gpus < 1:
        raise LLMCoreError(f"n_gpus must be >= 1, got {n_gpus}")
    w, g, o = weight_bytes * n_params, grad_bytes * n_params, optimizer_bytes * n_params
    if zero_stage >= 1:
        o /= n_gpus
    if zero_stage >= 2:
        g /= n_gpus
    if zero_stage >= 3:
        w /= n_gpus
    return {"weights": w, "gradients": g, "optimizer": o, "total": w + g + o}


def kv_cache_bytes(cfg: ArchConfig, tokens: int, batch: int = 1, bytes_per_element: float = 2) -> float:
    r"""$2 \cdot L \cdot K \cdot D \cdot \text{bytes} \cdot \text{tokens} \cdot B$ (keys and values; GQA via $K$)."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.d_head * bytes_per_element * tokens * batch


def ep_all_to_all_bytes(cfg: ArchConfig, ranks: int, bytes_per_element: float = 2, backward: bool = True) -> float:
    r"""Bytes one token sends through expert parallelism's all-to-alls, summed over the MoE layers.

    With uniform routing over $N$ EP ranks, each of a token's $k$ expert assignments lives on another rank
    with probability $(N-1)/N$; its $d$-vector goes out (dispatch) and comes back (combine), so the forward
    moves $2 k d b (N-1)/N$ bytes per layer and the backward the same again (the gradients retrace both
    all-to-alls): $L \cdot 2 k d b (N-1)/N \cdot (2 \text{ with backward})$. This is the expected value of
    ``engineering.expert_parallel``'s measured bytes under uniform routing (``uniform_routing_bytes`` there).
    """
    if not cfg.is_moe:
        return 0.0
    per_layer = 2 * cfg.experts_per_token * cfg.hidden_size * bytes_per_element * (ranks - 1) / ranks
    return cfg.num_layers * per_layer * (2 if backward else 1)


#: Storage per weight in bytes, and per-group overhead (scale + zero point) for grouped formats.
QUANT_FORMATS: dict[str, tuple[float, int, float]] = {
    # name: (bytes per value, group size (0 = per output channel), overhead bytes per group)
    "fp32": (4, 0, 0), "bf16": (2, 0, 0), "fp16": (2, 0, 0),
    "int8": (1, 0, 2), "fp8": (1, 0, 0), "int4 (g=128)": (0.5, 128, 2.5), "int4 (g=32)": (0.5, 32, 2.5),
}


def weight_bytes(n_params: float, fmt: str = "bf16") -> float:
    """Bytes to store ``n_params`` weights in ``fmt`` (group-wise INT4 adds an fp16 scale + 4-bit zero per group).

    Per-channel INT8 scales (one fp16 per output row) are negligible at LLM sizes and are ignored here.
    """
    if fmt not in QUANT_FORMATS:
        raise LLMCoreError(f"unknown format {fmt!r}; valid: {', '.join(QUANT_FORMATS)}")
    b, g, over = QUANT_FORMATS[fmt]
    return n_params * b + (n_params / g * over if g else 0)


def inference_memory(cfg: ArchConfig, fmt: str = "bf16", tokens: int = 8192, batch: int = 1,
                     kv_bytes_per_element: float = 2) -> dict[str, float]:
    """Weights (in ``fmt``) + KV cache for serving ``batch`` sequences of ``tokens`` tokens."""
    n = param_count(cfg)["total"]
    w = weight_bytes(n, fmt)
    kv = kv_cache_bytes(cfg, tokens, batch, kv_bytes_per_element)
    return {"weights": w, "kv_cache": kv, "total": w + kv}


def summary_table(names: list[str] | None = None) -> list[dict]:
    """One row per preset: total/active parameters, bf16 weights, KV bytes per token, 6ND per 1T tokens."""
    rows = []
    for name in names or list(PRESETS):
        cfg = PRESETS[name]
        pc = param_count(cfg)
        rows.append({"model": name, "total_params": pc["total"], "active_params": pc["active"],
                     "bf16_weight_GiB": weight_bytes(pc["total"], "bf16") / 2**30,
                     "kv_KiB_per_token_bf16": kv_cache_bytes(cfg, 1) / 2**10,
                     "train_flops_1T_tokens": training_flops(pc["active"], 1e12)})
    return rows


def config_dict(cfg: ArchConfig) -> dict:
    return asdict(cfg)
