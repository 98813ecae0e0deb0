r"""The networks of the diffusion chapter: two denoisers of about equal size (a small U-Net and a DiT),
the autoencoder of latent diffusion and the digit classifier that judges samples.

Every denoiser has the same call: ``model(x (B, C, H, W), t (B,) long, y (B,) long) -> (B, C, H, W)``,
where ``y = n_classes`` is the "no label" token of classifier-free guidance.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmcore.core.errors import LLMCoreError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    r"""Sinusoidal features of the (integer) timestep, ``(B,) -> (B, dim)``:
    :math:`[\cos(t\omega_i), \sin(t\omega_i)]`, :math:`\omega_i = \text{max\_period}^{-i/(dim/2)}`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Conditioning(nn.Module):
    """Timestep + class embedding ``c = MLP(sinusoid(t)) + E[y]``, ``(B,), (B,) -> (B, dim)``; row
    ``n_classes`` of ``E`` is the learned "no label" embedding used by classifier-free guidance."""

    def __init__(self, dim: int, n_classes: int = 10):
        super().__init__()
        self.dim, self.n_classes = dim, n_classes
        self.t_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_emb = nn.Embedding(n_classes + 1, dim)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.t_mlp(timestep_embedding(t, self.dim)) + self.y_emb(y)


# -- U-Net ------------------------------------------------------------------------------------------

class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the conditioning added per channel in between, plus a skip path."""

    def __init__(self, c_in: int, c_out: int, emb: int, groups: int = 8):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(min(groups, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.n2, self.c2 = nn.GroupNorm(min(groups, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.emb(F.silu(c))[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class UNetLite(nn.Module):
    r"""A two-level U-Net (Ronneberger et al. 2015, as in DDPM): 8x8 at ``ch`` channels, 4x4 at ``2 ch``,
    one skip connection. ``(B, C, H, W)`` with ``H, W`` even."""

    def __init__(self, in_ch: int = 1, ch: int = 16, emb: int = 32, n_classes: int = 10):
        super().__init__()
        self.in_ch, self.n_classes = in_ch, n_classes
        self.cond = Conditioning(emb, n_classes)
        self.inp = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down1 = ResBlock(ch, ch, emb)
        self.down = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * ch, 2 * ch, emb)
        self.up = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.up1 = ResBlock(2 * ch, ch, emb)
        self.out_norm = nn.GroupNorm(min(8, ch), ch)
        self.out = nn.Conv2d(ch, in_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight), nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.cond(t, y)
        h1 = self.down1(self.inp(x), c)                                   # (B, ch, H, W)
        h = self.mid(self.down(h1), c)                                     # (B, 2ch, H/2, W/2)
        h = self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))    # (B, ch, H, W)
        h = self.up1(torch.cat([h, h1], dim=1), c)
        return self.out(F.silu(self.out_norm(h)))


# -- DiT --------------------------------------------------------------------------------------------

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""adaLN: :math:`x(1 + \text{scale}) + \text{shift}` per sample, ``(B, N, d), (B, d), (B, d) -> (B, N, d)``."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    r"""A transformer block conditioned by adaLN-Zero (Peebles & Xie 2023):

    .. math:: (\gamma_1, \beta_1, \alpha_1, \gamma_2, \beta_2, \alpha_2) = W\,\text{SiLU}(c) + b,\qquad
              x \leftarrow x + \alpha_1 \odot \text{Attn}(\text{LN}(x)(1+\gamma_1) + \beta_1),\quad
              x \leftarrow x + \alpha_2 \odot \text{MLP}(\text{LN}(x)(1+\gamma_2) + \beta_2).

    :math:`W, b` start at zero, so the gates :math:`\alpha` are 0 and the block is the identity at
    initialisation. ``x (B, N, d)``, ``c (B, d)`` -> ``(B, N, d)``.
    """

    def __init__(self, d: int, heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        if d % heads:
            raise LLMCoreError(f"width d={d} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight), nn.init.zeros_(self.ada.bias)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the patch tokens (no mask), ``(B, N, d) -> (B, N, d)``."""
        B, N, d = h.shape
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)               # (B, heads, N, d/heads)
        return self.proj(o.transpose(1, 2).reshape(B, N, d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        h = modulate(self.norm1(x), sh1, sc1)
        x = x + g1[:, None] * self.attention(h)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, (H/p)(W/p), p*p*C)``: non-overlapping ``p x p`` patches, row-major."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, N, p*p*C) -> (B, C, H, W)``."""
    B = tokens.shape[0]
    x = tokens.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, C, H, W)


def sincos_2d(d: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding ``(h*w, d)`` (half the features for rows, half for columns)."""
    def one(pos: torch.Tensor, dim: int) -> torch.Tensor:
        om = 1.0 / 10_000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
        a = pos.float()[:, None] * om[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([one(rows.flatten(), d // 2), one(cols.flatten(), d // 2)], dim=1)


class DiT(nn.Module):
    r"""Diffusion Transformer: patchify -> linear embed + 2-D sincos positions -> ``depth`` adaLN-Zero blocks
    -> adaLN final layer (zero-initialised) -> unpatchify. ``(B, C, H, W)`` with ``p | H, W``."""

    def __init__(self, in_ch: int = 1, size: int = 8, patch: int = 2, d: int = 32, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, n_classes: int = 10):
        super().__init__()
        if size % patch:
            raise LLMCoreError(f"patch={patch} does not divide the image size {size}")
        self.in_ch, self.size, self.patch, self.n_classes = in_ch, size, patch, n_classes
        self.embed = nn.Linear(patch * patch * in_ch, d)
        self.register_buffer("pos", sincos_2d(d, size // patch, size // patch), persistent=False)
        self.cond = Conditioning(d, n_classes)
        self.blocks = nn.ModuleList(DiTBlock(d, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, patch * patch * in_ch)
        for layer in (self.final_ada, self.final):
            nn.init.zeros_(layer.weight), nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.cond(t, y)                                        # (B, d)
        h = self.embed(patchify(x, self.patch)) + self.pos          # (B, N, d)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        h = self.final(modulate(self.norm(h), shift, scale))        # (B, N, p*p*C)
        return unpatchify(h, self.patch, self.in_ch, self.size, self.size)


# -- latent diffusion and the judge ------------------------------------------------------------------

class TinyAutoencoder(nn.Module):
    r"""The "VAE" of latent diffusion, shrunk: ``(B, 1, 8, 8) -> (B, z, 2, 2) -> (B, 1, 8, 8)``, 64 pixels
    to ``4 z`` latent numbers. Deterministic (no KL term): the latent is scaled to unit variance before
    diffusion, as Stable Diffusion scales its VAE latents."""

    def __init__(self, z: int = 4, ch: int = 32):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, ch, 3, stride=2, padding=1), nn.SiLU(),      # 4x4
                                 nn.Conv2d(ch, ch, 3, stride=2, padding=1), nn.SiLU(),     # 2x2
                                 nn.Conv2d(ch, z, 1))
        self.dec = nn.Sequential(nn.Conv2d(z, ch, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1), nn.SiLU(),  # 4x4
                                 nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1), nn.SiLU(),  # 8x8
                                 nn.Conv2d(ch, 1, 3, padding=1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


class DigitClassifier(nn.Module):
    """The judge: a small CNN, ``(B, 1, 8, 8) -> logits (B, 10)``; :meth:`features` is its 32-d penultimate
    layer, on which the Fréchet distance is computed."""

    def __init__(self, ch: int = 16, feat: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, ch, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(2 * ch * 16, feat), nn.ReLU())
        self.head = nn.Linear(feat, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
