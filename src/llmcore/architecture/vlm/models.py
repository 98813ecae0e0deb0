r"""The vision side and the three connectors of the chapter.

Shapes: ``B`` batch, ``N`` image patches, ``d_v`` vision width, ``T`` text tokens, ``d`` LM width,
``L`` resampler latents / Q-Former queries.

* :class:`ViTLite` -- patch embedding + ``[CLS]`` + learned positions + Pre-LN encoder blocks:
  ``(B, S, S)`` palette image -> ``(B, 1 + N, d_v)``.
* :class:`CLIP` -- the ViT's ``[CLS]`` and a small causal text tower (the book's :class:`Llama`, read at
  the ``<eos>`` token as CLIP reads its EOT token), both projected to a joint space; :func:`clip_loss`.
* **LLaVA** (:class:`LlavaProjector`): ``Linear(d_v, d) -> GELU -> Linear(d, d)`` maps each patch to one
  soft token placed in the LM's input sequence (``N`` visual tokens).
* **Flamingo** (:class:`PerceiverResampler` + :class:`GatedCrossAttention`): ``L`` latents summarise the
  patches; before every frozen LM block the text attends to them through a residual branch scaled by
  $\tanh(\alpha)$, $\alpha_0 = 0$, so the untrained model *is* the text-only LM.
* **BLIP-2** (:class:`QFormer`): ``L`` learned queries that cross-attend to the frozen image features and
  share self-attention layers with a text branch; the attention mask (:func:`qformer_mask`) decides the
  objective (ITC: unimodal, ITM: bidirectional, ITG: multimodal causal). Its query outputs, projected by
  one linear layer, are the LM's ``L`` soft visual tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.architecture.llama import Llama, ModelConfig, rope_cos_sin
from llmcore.architecture.vlm.scenes import to_rgb
from llmcore.core.errors import LLMCoreError


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Multi-head $\mathrm{softmax}(QK^\top/\sqrt{D} + M)V$ written out, returning the weights too.

    ``q (B, T, h*D)``, ``k, v (B, S, h*D)``, ``mask`` bool ``(T, S)`` (True = may attend) ->
    ``(out (B, T, h*D), weights (B, h, T, S))``. Eager, so the figures can read the weights.
    """
    B, T, E = q.shape
    D = E // heads
    qh, kh, vh = (t.view(B, -1, heads, D).transpose(1, 2) for t in (q, k, v))
    scores = qh @ kh.transpose(-2, -1) / math.sqrt(D)  # (B, h, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.softmax(-1)
    return (w @ vh).transpose(1, 2).reshape(B, T, E), w


class MHA(nn.Module):
    """Multi-head attention with separate query / key-value widths (cross-attention between models)."""

    def __init__(self, d_q: int, d_kv: int, heads: int, width: int | None = None) -> None:
        super().__init__()
        width = width or d_q
        if width % heads:
            raise LLMCoreError(f"attention width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(d_q, width)
        self.k = nn.Linear(d_kv, width)
        self.v = nn.Linear(d_kv, width)
        self.o = nn.Linear(width, d_q)
        self.last_weights: torch.Tensor | None = None  # (B, h, T, S) of the last call, for figures

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out, w = attention(self.q(x), self.k(ctx), self.v(ctx), self.heads, mask)
        self.last_weights = w.detach()
        return self.o(out)


def ffn(d: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, mult * d), nn.GELU(), nn.Linear(mult * d, d))


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + SelfAttn(LN x)``, then ``+ FFN(LN x)`` (ViT, bidirectional)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MHA(d, d, heads)
        self.mlp = ffn(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h)
        return x + self.mlp(self.ln2(x))


class ViTLite(nn.Module):
    r"""A small Vision Transformer: $p \times p$ patches $\to$ linear embedding, ``[CLS]``, learned positions.

    ``forward(images (B, S, S) palette ids) -> (B, 1 + N, d_v)`` with $N = (S/p)^2$; row 0 is ``[CLS]``.
    """

    def __init__(self, canvas: int, patch: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        if canvas % patch:
            raise LLMCoreError(f"canvas {canvas} is not a multiple of the patch size {patch}")
        self.patch, self.n_patches = patch, (canvas // patch) ** 2
        self.embed = nn.Linear(3 * patch * patch, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 1 + self.n_patches, d))
        self.blocks = nn.ModuleList(EncoderBlock(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, S, S)`` palette ids -> ``(B, N, 3 p^2)`` RGB patches in row-major order."""
        x = to_rgb(images)  # (B, 3, S, S)
        B, C, S, _ = x.shape
        p = self.patch
        x = x.view(B, C, S // p, p, S // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (S // p) ** 2, C * p * p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.patchify(images))
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    r"""CLIP's symmetric InfoNCE on a batch of matched pairs (row ``i`` of each is a pair).

    With unit vectors $u_i$ (image) and $w_j$ (text), $\ell_{ij} = e^{s}\, u_i^\top w_j$ and

    $$ \mathcal L = \tfrac12\Bigl[\tfrac1B\sum_i -\log\frac{e^{\ell_{ii}}}{\sum_j e^{\ell_{ij}}}
       + \tfrac1B\sum_j -\log\frac{e^{\ell_{jj}}}{\sum_i e^{\ell_{ij}}}\Bigr]. $$

    ``image_emb, text_emb (B, E)`` (any norm: normalised here), ``logit_scale`` = $s$ (a scalar, log scale).
    """
    u = F.normalize(image_emb, dim=-1)
    w = F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp() * u @ w.T  # (B, B): images x texts
    target = torch.arange(len(u), device=u.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class CLIP(nn.Module):
    """Image tower (:class:`ViTLite`, ``[CLS]``) and text tower (a small causal :class:`Llama` read at
    ``<eos>``) with linear projections into an ``E``-dimensional joint space and a learned temperature."""

    def __init__(self, vit: ViTLite, text_cfg: ModelConfig, d_vis: int, embed: int) -> None:
        super().__init__()
        self.vision = vit
        self.text = Llama(text_cfg)
        self.image_proj = nn.Linear(d_vis, embed, bias=False)
        self.text_proj = nn.Linear(text_cfg.d_model, embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, S, S)`` -> ``(B, E)`` (not normalised)."""
        return self.image_proj(self.vision(images)[:, 0])

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (B, T)`` with one ``<eos>`` per row (then padding) -> ``(B, E)``: the hidden state at ``<eos>``."""
        h = self.text.hidden_states(ids)
        at = (ids == self.text.config.eos_id).long().argmax(1)
        return self.text_proj(h[torch.arange(len(ids)), at])

    def loss(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(100))  # CLIP clips the temperature at 100
        return clip_loss(self.encode_image(images), self.encode_text(ids), self.logit_scale)


# ---- LLaVA --------------------------------------------------------------------------------------------
class LlavaProjector(nn.Module):
    """LLaVA-1.5's connector: ``linear_2(GELU(linear_1(v)))``, ``(B, N, d_v) -> (B, N, d)`` (HF names)."""

    def __init__(self, d_vis: int, d_lm: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(d_vis, d_lm)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_lm, d_lm)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(v)))


# ---- Flamingo -----------------------------------------------------------------------------------------
class PerceiverResampler(nn.Module):
    r"""``L`` learned latents read the ``N`` patch features: per layer
    $z \leftarrow z + \mathrm{Attn}(q{=}\mathrm{LN}(z),\ kv{=}[\mathrm{LN}(v); \mathrm{LN}(z)])$,
    $z \leftarrow z + \mathrm{FFN}(\mathrm{LN}(z))$. ``(B, N, d_v) -> (B, L, d_v)``: the number of visual
    tokens is ``L`` whatever ``N`` is."""

    def __init__(self, d: int, n_latents: int, layers: int, heads: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(0.02 * torch.randn(n_latents, d))
        self.layers = nn.ModuleList(nn.ModuleDict(
            {"ln_v": nn.LayerNorm(d), "ln_z": nn.LayerNorm(d), "attn": MHA(d, d, heads), "ln_f": nn.LayerNorm(d),
             "ffn": ffn(d)}) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        z = self.latents.expand(v.shape[0], -1, -1)
        for lay in self.layers:
            zn = lay["ln_z"](z)
            z = z + lay["attn"](zn, torch.cat([lay["ln_v"](v), zn], 1))
            z = z + lay["ffn"](lay["ln_f"](z))
        return self.norm(z)


class GatedCrossAttention(nn.Module):
    r"""Flamingo's ``GATED XATTN-DENSE`` layer, inserted before a frozen LM block:

    $$ x \leftarrow x + \tanh(\alpha_{\text{attn}})\,\mathrm{Attn}(\mathrm{LN}(x), z), \qquad
       x \leftarrow x + \tanh(\alpha_{\text{ffn}})\,\mathrm{FFN}(\mathrm{LN}(x)), $$

    with $\alpha = 0$ at initialisation: both branches are multiplied by exactly 0, so the block is
    the identity and the frozen LM's output is unchanged until training opens the gates.
    ``x (B, T, d)``, ``z (B, L, d_v)`` -> ``(B, T, d)``.

    ``gate_scale`` $s$: the gate is $\tanh(s\,\alpha)$ with the parameter $\alpha$. Under Adam a parameter
    moves about one learning rate per step whatever its gradient's scale, so $s$ is a learning-rate multiplier
    for the two gates alone ($s = 1$ is the paper's form; $\alpha_0 = 0$ keeps the identity at any $s$).
    """

    def __init__(self, d_lm: int, d_vis: int, heads: int, gate_scale: float = 1.0) -> None:
        super().__init__()
        self.ln_attn, self.ln_ffn = nn.LayerNorm(d_lm), nn.LayerNorm(d_lm)
        self.attn = MHA(d_lm, d_vis, heads, width=d_vis)  # attend at the vision width (cheaper)
        self.ffn = ffn(d_lm, 1)
        self.gate_attn = nn.Parameter(torch.zeros(()))
        self.gate_ffn = nn.Parameter(torch.zeros(()))
        self.gate_scale = gate_scale

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = x + torch.tanh(self.gate_scale * self.gate_attn) * self.attn(self.ln_attn(x), z)
        return x + torch.tanh(self.gate_scale * self.gate_ffn) * self.ffn(self.ln_ffn(x))


def flamingo_hidden(lm: Llama, xattn: nn.ModuleList, ids: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The frozen LM's forward (as :meth:`Llama.hidden_states`, plain causal) with ``xattn[i]`` run
    before block ``i``. ``ids (B, T)``, ``z (B, L, d_v)`` -> final normalised hidden states ``(B, T, d)``."""
    x = lm.model.embed_tokens(ids)
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    cos, sin = rope_cos_sin(pos, lm.config.head_dim, lm.config.rope_theta)
    for block, xa in zip(lm.model.layers, xattn):
        x = block(xa(x, z), cos, sin)
    return lm.model.norm(x)


# ---- BLIP-2 -------------------------------------------------------------------------------------------
def qformer_mask(n_query: int, n_text: int, mode: str) -> torch.Tensor:
    """Bool ``(L + T, L + T)`` self-attention mask of the Q-Former (True = may attend), rows = queries then text.

    * ``"itc"`` (unimodal): queries see queries, text sees text -- the two embeddings stay independent;
    * ``"itm"`` (bidirectional): everyone sees everyone -- the pair is fused for a match/no-match head;
    * ``"itg"`` (multimodal causal): queries see queries only, text token ``t`` sees all queries and text ``<= t``.
    """
    n = n_query + n_text
    m = torch.zeros(n, n, dtype=torch.bool)
    q, t = slice(0, n_query), slice(n_query, n)
    if mode == "itc":
        m[q, q] = True
        m[t, t] = True
    elif mode == "itm":
        m[:] = True
    elif mode == "itg":
        m[q, q] = True
        m[t, q] = True
        m[t, t] = torch.ones(n_text, n_text, dtype=torch.bool).tril()
    else:
        raise LLMCoreError(f"unknown Q-Former mask mode {mode!r}; valid: itc, itm, itg")
    return m


class QFormerLayer(nn.Module):
    """Shared self-attention over ``[queries; text]`` (masked), cross-attention to the image for the query
    rows only, then an FFN (Pre-LN)."""

    def __init__(self, d: int, d_vis: int, heads: int) -> None:
        super().__init__()
        self.ln_self, self.ln_cross, self.ln_ffn = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = MHA(d, d, heads)
        self.cross_attn = MHA(d, d_vis, heads)
        self.ffn = ffn(d)

    def forward(self, x: torch.Tensor, v: torch.Tensor, n_query: int, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, mask)
        q = x[:, :n_query]
        q = q + self.cross_attn(self.ln_cross(q), v)
        x = torch.cat([q, x[:, n_query:]], 1)
        return x + self.ffn(self.ln_ffn(x))


class QFormer(nn.Module):
    r"""BLIP-2's querying transformer. ``forward(v (B, N, d_v), text_ids (B, T) | None, mode)`` ->
    ``(queries (B, L, d), text (B, T, d) | None)``.

    ITC (:meth:`itc_loss`): image embedding = each query output projected, text embedding = the text
    branch's first token (``<bos>``, BERT's ``[CLS]``) projected; the pair's similarity is the *max* over
    the ``L`` queries, $s(I, T) = \max_l e^{\tau} u_l^\top w$, in a symmetric InfoNCE like :func:`clip_loss`.
    """

    def __init__(self, d: int, d_vis: int, n_query: int, layers: int, heads: int, vocab: int, max_text: int,
                 embed: int) -> None:
        super().__init__()
        self.n_query = n_query
        self.queries = nn.Parameter(0.02 * torch.randn(n_query, d))
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.02 * torch.randn(max_text, d))
        self.layers = nn.ModuleList(QFormerLayer(d, d_vis, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.image_proj = nn.Linear(d, embed, bias=False)
        self.text_proj = nn.Linear(d, embed, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, v: torch.Tensor, text_ids: torch.Tensor | None = None,
                mode: str = "itc") -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.queries.expand(v.shape[0], -1, -1)
        mask = None
        if text_ids is not None:
            T = text_ids.shape[1]
            x = torch.cat([x, self.tok(text_ids) + self.pos[:T]], 1)
            mask = qformer_mask(self.n_query, T, mode).to(v.device)
        for lay in self.layers:
            x = lay(x, v, self.n_query, mask)
        x = self.norm(x)
        return x[:, :self.n_query], (x[:, self.n_query:] if text_ids is not None else None)

    def itc_loss(self, v: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        q, t = self(v, text_ids, "itc")
        u = F.normalize(self.image_proj(q), dim=-1)  # (B, L, E)
        w = F.normalize(self.text_proj(t[:, 0]), dim=-1)  # (B, E)
        with torch.no_grad():
            self.logit_scale.clamp_(0, math.log(100))
        sim = torch.einsum("ile,je->ijl", u, w).amax(-1) * self.logit_scale.exp()  # (B images, B texts)
        target = torch.arange(len(w), device=w.device)
        return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target))
