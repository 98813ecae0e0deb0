"""Cross-checks with HF transformers, the report (thresholds live in :func:`make_report` only), ``run``."""

from __future__ import annotations

import math

import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from llmcore.architecture.llama import Llama
from llmcore.architecture.vlm.experiment import VLM, VLMConfig, VLMResult, experiment
from llmcore.architecture.vlm.models import LlavaProjector, clip_loss, flamingo_hidden
from llmcore.core.device import CPU
from llmcore.core.report import Report


def hf_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: float) -> float:
    """HF ``CLIPModel(return_loss=True)`` on *given* embeddings: its two towers are replaced by functions
    returning ``image_emb`` / ``text_emb`` as their pooled output, its ``logit_scale`` set to ours; the
    normalisation, the scaled similarities and the symmetric loss are HF's own code."""
    hf = CLIPModel(CLIPConfig(projection_dim=image_emb.shape[1],
                              text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                           "num_attention_heads": 2},
                              vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "image_size": 8, "patch_size": 4})).eval()
    hf.get_image_features = lambda pixel_values=None, **kw: BaseModelOutputWithPooling(pooler_output=image_emb)
    hf.get_text_features = lambda input_ids=None, **kw: BaseModelOutputWithPooling(pooler_output=text_emb)
    with torch.no_grad():
        hf.logit_scale.fill_(logit_scale)
        out = hf(input_ids=torch.zeros(len(text_emb), 2, dtype=torch.long),
                 pixel_values=torch.zeros(len(image_emb), 3, 8, 8), return_loss=True)
    return float(out.loss)


def clip_crosscheck(seed: int = 0, n: int = 16, dim: int = 32) -> float:
    """``|our clip_loss - HF CLIPModel loss|`` on random embeddings and a random temperature."""
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    scale = float(torch.rand((), generator=g) * 3 + 1)
    ours = float(clip_loss(img, txt, torch.tensor(scale)))
    return abs(ours - hf_clip_loss(img, txt, scale))


def hf_projector(ours: LlavaProjector) -> LlavaMultiModalProjector:
    """HF's ``LlavaMultiModalProjector`` of the same sizes (GELU, biases) with our weights copied in."""
    d_vis, d_lm = ours.linear_1.in_features, ours.linear_2.out_features
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=d_vis, num_attention_heads=1),
                      text_config=LlamaConfig(hidden_size=d_lm, num_attention_heads=1, num_key_value_heads=1),
                      projector_hidden_act="gelu", multimodal_projector_bias=True)
    hf = LlavaMultiModalProjector(cfg)
    hf.load_state_dict(ours.state_dict())
    return hf.eval()


def projector_crosscheck(ours: LlavaProjector, seed: int = 0) -> float:
    """Max abs difference between our projector and HF's on random patch features ``(2, 16, d_v)``."""
    g = torch.Generator().manual_seed(seed)
    dev = ours.linear_1.weight.device
    v = torch.randn(2, 16, ours.linear_1.in_features, generator=g).to(dev)
    with torch.no_grad():
        return float((ours(v) - hf_projector(ours).to(dev)(v)).abs().max())


@torch.no_grad()
def gate_zero_gap(model: VLM, lm: Llama, images: torch.Tensor, ids: torch.Tensor) -> float:
    """``max |Flamingo logits with every gate at 0 - text-only LM logits|`` (0 exactly, not just small)."""
    gates = [(xa.gate_attn.clone(), xa.gate_ffn.clone()) for xa in model.xattn]
    for xa in model.xattn:
        xa.gate_attn.zero_()
        xa.gate_ffn.zero_()
    z = model.visual_tokens(images)
    gap = float((lm.lm_head(flamingo_hidden(lm, model.xattn, ids, z)) - lm(ids)).abs().max())
    for xa, (a, f) in zip(model.xattn, gates):
        xa.gate_attn.copy_(a)
        xa.gate_ffn.copy_(f)
    return gap


def make_report(res: VLMResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and acceptance criteria of one run (the thresholds live here only)."""
    rep = Report("vlm", "VLM (LLaVA, Flamingo, BLIP-2) / 视觉语言模型", toy, device, seed)
    data = res.data
    flam = res.models["Flamingo"]
    ids = data.vqa["test"][0][:32].to(next(flam.parameters()).device)
    images = data.test.images[:32].to(ids.device)
    rep.metric("CLIP zero-shot accuracy, held-out scenes (24 classes)", res.zero_shot_test)
    rep.metric("CLIP zero-shot accuracy, held-out pairs", res.zero_shot_combo)
    rep.metric("chance (uniform guess, averaged over question types)", res.chance)
    for name, c in res.connectors.items():
        rep.metric(f"{name}: trainable params", c.trainable)
        rep.metric(f"{name}: visual tokens", c.visual_tokens)
        rep.metric(f"{name}: EM held-out scenes", c.em_test)
        rep.metric(f"{name}: EM held-out pairs", c.em_combo)
        rep.metric(f"{name}: train s", c.train_s)
    rep.check("our CLIP loss vs HF CLIPModel(return_loss=True): abs diff", clip_crosscheck(seed), "<", 1e-5)
    rep.check("our LLaVA projector vs HF LlavaMultiModalProjector: max abs diff",
              projector_crosscheck(res.models["LLaVA"].projector, seed), "<", 1e-6)
    rep.check("Flamingo, gates at 0, vs text-only LM: max abs logit diff", gate_zero_gap(flam, flam.lm, images, ids),
              "<=", 0.0)
    rep.check("CLIP zero-shot accuracy, held-out scenes (chance 1/24)", res.zero_shot_test, ">=", 0.5)
    for name in ("LLaVA", "Flamingo", "BLIP-2"):
        rep.check(f"{name}: VQA exact match on held-out scenes (chance {res.chance:.2f})",
                  res.connectors[name].em_test, ">=", 0.6)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The VLM closed loop (registry entry point; the registry resolves ``device`` and ``seed``)."""
    res = experiment(VLMConfig.for_mode(toy), seed, device, show_progress=True)
    rep = make_report(res, toy, str(device), seed)
    rep.wall_s = math.nan
    return rep
