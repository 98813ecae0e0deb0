r"""A LLaMA-style decoder in one readable file: RMSNorm, RoPE, SwiGLU, causal MHA/GQA/MQA.

The parameter names are exactly those of Hugging Face's ``LlamaForCausalLM``
(``model.layers.0.self_attn.q_proj.weight`` ...), so a state dict moves between the two
without renaming, PEFT/LoRA target names (``q_proj``, ``v_proj``) are the usual ones, and
:meth:`Llama.save_pretrained` writes a folder that ``LlamaForCausalLM.from_pretrained`` loads.

Shapes: ``B`` batch, ``T`` new tokens, ``S`` keys (cached + new), ``H`` query heads,
``K`` key/value heads (``H % K == 0``; ``K == H`` is MHA, ``K == 1`` is MQA), ``D`` head size.

One block (Pre-LN, as in LLaMA)::

    h = x + Attn(RMSNorm(x))          # RoPE on q and k, causal softmax(q k^T / sqrt(D)) v
    y = h + W_down(silu(W_gate RMSNorm(h)) * W_up RMSNorm(h))

``norm_position="post"`` gives the original Transformer's Post-LN block instead
(``h = RMSNorm(x + Attn(x))``), used by the Pre-LN vs Post-LN experiment.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.architecture.generate import SamplerConfig, generate
from llmcore.architecture.kv_cache import DynamicKVCache
from llmcore.core.errors import LLMCoreError

#: The dynamic (concatenating) cache of :mod:`llmcore.architecture.kv_cache`, under its old name here.
KVCache = DynamicKVCache


@dataclass
class ModelConfig:
    """Hyper-parameters of the decoder (names follow the papers; ``to_hf_config`` maps them to HF's)."""

    vocab_size: int = 264  # 256 bytes + 8 special tokens (see tokenizer.ByteTokenizer)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None -> n_heads (MHA); 1 -> MQA; in between -> GQA
    ffn_hidden: int | None = None  # None -> ~8/3 d_model rounded up to a multiple of 16
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    norm_position: str = "pre"  # "pre" (LLaMA) | "post" (original Transformer)
    attn_impl: str = "sdpa"  # "sdpa" (torch fused) | "eager" (explicit softmax, for teaching)
    init_std: float = 0.02
    bos_id: int | None = 257
    eos_id: int | None = 258
    pad_id: int | None = 256

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden is None:
            self.ffn_hidden = 16 * math.ceil(8 * self.d_model / 3 / 16)
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise LLMCoreError(
                f"need d_model % n_heads == 0 and n_heads % n_kv_heads == 0, got d_model={self.d_model}, "
                f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise LLMCoreError("RoPE needs an even head size d_model // n_heads")
        if self.norm_position not in ("pre", "post"):
            raise LLMCoreError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")
        if self.attn_impl not in ("sdpa", "eager"):
            raise LLMCoreError(f"attn_impl must be 'sdpa' or 'eager', got {self.attn_impl!r}")
        for name in ("bos_id", "eos_id", "pad_id"):  # an id the embedding has no row for breaks to_hf/generate
            tid = getattr(self, name)
            if tid is not None and (isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < self.vocab_size):
                raise LLMCoreError(f"{name}={tid} is not a token id of a vocabulary of {self.vocab_size} "
                                   f"(need 0 <= {name} < vocab_size, or None for no such token)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # ---- Hugging Face interop -----------------------------------------------------------------
    def to_hf_dict(self) -> dict:
        """The ``config.json`` of the equivalent ``LlamaForCausalLM`` (plus our own fields under ``llmcore``)."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.d_model, "intermediate_size": self.ffn_hidden,
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim, "hidden_act": "silu",
            "max_position_embeddings": self.max_seq_len, "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_theta, "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "tie_word_embeddings": self.tie_embeddings, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0, "initializer_range": self.init_std, "pretraining_tp": 1,
            "bos_token_id": self.bos_id, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id,
            "dtype": "float32", "llmcore": asdict(self),
        }

    def to_hf_config(self):
        """A ``transformers.LlamaConfig`` with the same architecture (needs ``transformers``)."""
        from transformers import LlamaConfig

        if self.norm_position != "pre":
            raise LLMCoreError("HF LlamaForCausalLM is Pre-LN; a Post-LN model has no HF equivalent")
        d = self.to_hf_dict()
        for k in ("architectures", "model_type", "llmcore", "dtype"):
            d.pop(k)
        return LlamaConfig(**d)

    @classmethod
    def from_hf_dict(cls, d: dict) -> ModelConfig:
        """Inverse of :meth:`to_hf_dict`; also reads a plain HF Llama ``config.json``/``LlamaConfig.to_dict()``."""
        if "llmcore" in d:
            names = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in d["llmcore"].items() if k in names})
        rope = d.get("rope_parameters") or {}
        return cls(
            vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
            n_heads=d["num_attention_heads"], n_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            ffn_hidden=d["intermediate_size"], max_seq_len=d.get("max_position_embeddings", 2048),
            rope_theta=rope.get("rope_theta", d.get("rope_theta", 10000.0)), norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_embeddings=d.get("tie_word_embeddings", False), init_std=d.get("initializer_range", 0.02),
            bos_id=d.get("bos_token_id"), eos_id=d.get("eos_token_id"), pad_id=d.get("pad_token_id"))


# ---- building blocks ------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    r"""$y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot g$ (computed in fp32, like HF)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""cos/sin tables for positions ``(B, T)`` -> ``(B, T, D)``; frequency $\theta^{-2i/D}$ (HF layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float()
                                / head_dim))
    freqs = positions[..., None].float() * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, heads, T, D)`` by position: pairs (i, i + D/2) turn by angle pos * freq_i."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, K, S, D)`` -> ``(B, K * n_rep, S, D)``: each KV head serves ``n_rep`` consecutive query heads."""
    if n_rep == 1:
        return x
    B, K, S, D = x.shape
    return x[:, :, None].expand(B, K, n_rep, S, D).reshape(B, K * n_rep, S, D)


class Attention(nn.Module):
    """Causal self-attention with RoPE and ``n_kv_heads`` key/value heads (MHA / GQA / MQA)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        H, K, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, H * D, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, K * D, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, K * D, bias=False)
        self.o_proj = nn.Linear(H * D, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask=None, kv_cache=None):
        """``x (B, T, d)``; ``mask`` None (plain causal) or bool ``(B|1, 1, T, S)``, True = may attend."""
        B, T, _ = x.shape
        H, K, D = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, K, D).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, K, S, D)
        if self.cfg.attn_impl == "sdpa":  # fused kernel; enable_gqa lets K/V heads serve H/K query heads each
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                                 enable_gqa=H != K)
        else:  # eager: the formula, written out
            k, v = repeat_kv(k, H // K), repeat_kv(v, H // K)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, S)
            if mask is None:
                mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - T)
            scores = scores.masked_fill(~mask, float("-inf"))
            out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v
        return self.o_proj(out.transpose(1, 2).reshape(B, T, H * D))


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One decoder layer; Pre-LN (``norm_position="pre"``) or Post-LN."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, x, cos, sin, mask=None, kv_cache=None):
        if self.pre:
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = self.input_layernorm(x + self.self_attn(x, cos, sin, mask, kv_cache))
        return self.post_attention_layernorm(x + self.mlp(x))


class Backbone(nn.Module):
    """Embedding, the stack of blocks and the final norm (HF's ``LlamaModel``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


# ---- the model ------------------------------------------------------------------------------------
class Llama(nn.Module):
    """Decoder-only LM. ``model(idx) -> logits (B, T, vocab)``; ``model(idx, labels=idx) -> (logits, loss)``.

    ``labels`` follow HF's convention: same shape as ``idx``, shifted inside (token ``t`` predicts
    ``t + 1``), ``-100`` positions ignored. Optional arguments:

    * ``inputs_embeds (B, T, d)`` instead of ``idx`` (image tokens, soft prompts);
    * ``attention_mask (B, S)`` 1 = real token, 0 = padding (``S`` counts cached positions too);
    * ``position_ids (B, T)`` -- default ``start + arange(T)`` (``start`` = positions already cached);
    * ``kv_cache`` -- any cache of the :mod:`llmcore.architecture.kv_cache` protocol, filled in place.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 style: scale residual projections by depth
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.init_std)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n

    def hidden_states(self, idx=None, *, inputs_embeds=None, attention_mask=None, position_ids=None,
                      kv_cache=None) -> torch.Tensor:
        """Final normalised hidden states ``(B, T, d)`` (value heads and reward models read these)."""
        x = self.model.embed_tokens(idx) if inputs_embeds is None else inputs_embeds
        B, T, _ = x.shape
        past = 0 if kv_cache is None else kv_cache.seq_len
        if position_ids is None:  # (1, T): one RoPE table broadcast over the batch
            position_ids = torch.arange(past, past + T, device=x.device)[None]
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        mask = None  # None = plain causal (the fast SDPA path)
        if attention_mask is not None or past > 0:
            S = past + T
            qi = torch.arange(past, S, device=x.device)[:, None]
            kj = torch.arange(S, device=x.device)[None, :]
            mask = (kj <= qi)[None, None]  # (1, 1, T, S)
            if attention_mask is not None:  # padding keys are invisible, but a row never goes empty
                mask = (mask & attention_mask[:, None, None, :].bool()) | (kj == qi)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, kv_cache)
        return self.model.norm(x)

    def forward(self, idx=None, labels=None, **kw):
        logits = self.lm_head(self.hidden_states(idx, **kw))
        if labels is None:
            return logits
        return logits, lm_loss(logits, labels)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, eos_id: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens to ``idx (B, T)``; greedy when ``temperature == 0``.

        With ``use_cache`` the prompt is encoded once and each step feeds one token (a
        :class:`~llmcore.architecture.kv_cache.DynamicKVCache`); without it every step re-runs the whole
        sequence. Rows that emit ``eos_id`` keep emitting it; stops early when every row has. The loop is
        :func:`llmcore.architecture.generate.generate`; this is its older keyword interface
        (``attention_mask``: left-padded prompts of different lengths).
        """
        sampler = SamplerConfig(greedy=temperature == 0, temperature=temperature or 1.0, top_k=top_k)
        return generate(self, idx, max_new_tokens, sampler, cache="dynamic" if use_cache else None,
                        generator=generator, eos_id=eos_id, attention_mask=attention_mask).tokens

    # ---- Hugging Face interop and checkpoints ------------------------------------------------------
    def to_hf(self):
        """An HF ``LlamaForCausalLM`` with the same config and a copy of these weights (fp32, eval mode)."""
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM(self.config.to_hf_config()).to(self.lm_head.weight.device)
        missing, unexpected = hf.load_state_dict(self.state_dict(), strict=False)
        missing = [k for k in missing if not (self.config.tie_embeddings and k == "lm_head.weight")]
        if missing or unexpected:
            raise LLMCoreError(f"state dicts differ: missing={missing}, unexpected={unexpected}")
        return hf.eval()

    @classmethod
    def from_hf(cls, hf_model) -> Llama:
        """Our model with the config and weights of an HF ``LlamaForCausalLM``."""
        cfg = ModelConfig.from_hf_dict(hf_model.config.to_dict())
        model = cls(cfg).to(next(hf_model.parameters()).device)
        model.load_state_dict(hf_model.state_dict(), strict=not cfg.tie_embeddings)
        return model

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in HF's layout (``LlamaForCausalLM`` loads it)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            sd.pop("lm_head.weight", None)  # tied: stored once, as HF does
        tmp = directory / "model.safetensors.tmp"
        save_file(sd, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps(self.config.to_hf_dict(), indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Llama:
        """Load a folder written by :meth:`save_pretrained` or by HF ``save_pretrained`` (safetensors)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise LLMCoreError(f"{directory} has no config.json")
        cfg = ModelConfig.from_hf_dict(json.loads((directory / "config.json").read_text()))
        model = cls(cfg)
        sd = load_file(str(directory / "model.safetensors"))
        if cfg.tie_embeddings:
            sd.pop("lm_head.weight", None)
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        model.load_state_dict(sd)
        return model.to(device)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy (nats/token): ``logits[:, t]`` predicts ``labels[:, t + 1]``.

    The labels are shifted left (and padded with ``ignore_index``) rather than the logits sliced, as HF
    does: no copy of the ``(B, T, vocab)`` logits.
    """
    shifted = F.pad(labels[:, 1:], (0, 1), value=ignore_index)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1),
                           ignore_index=ignore_index)
