r"""The VLM closed loop: pretrain a ViT-lite with CLIP on generated scenes, then teach the frozen book LM to
answer questions about them through three connectors (LLaVA, Flamingo, BLIP-2), and compare.

Every model trains with the kit's loop (:func:`llmcore.architecture.training.train`: AdamW, warmup +
cosine, clipping). That loop feeds ``model(idx, labels=labels)`` with one integer tensor, so a batch
travels *packed*: ``idx = [palette ids of the S x S image | text ids]`` ``(B, S^2 + T)`` -- the image is
a grid of small integers until :func:`~llmcore.architecture.vlm.scenes.to_rgb` colours it inside the
encoder. :class:`Packed` unpacks it.

The answer is scored by **exact match**: every answer token and the closing ``<eos>`` must be the LM's
argmax given the image, the question and the answer tokens before it -- exactly the tokens greedy
decoding would emit (teacher forcing stops mattering once every step is right).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from llmcore.alignment.peft import LoRAConfig, apply_lora
from llmcore.architecture.book_lm import BOOK_LM_CONFIG, book_tokenizer, load_book_lm
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.training import TrainConfig, train
from llmcore.architecture.vlm.models import (
    CLIP,
    GatedCrossAttention,
    LlavaProjector,
    PerceiverResampler,
    QFormer,
    ViTLite,
    flamingo_hidden,
)
from llmcore.architecture.vlm.scenes import (
    CHANCE,
    COLOURS,
    HELD_OUT,
    QUESTION_TYPES,
    SHAPES,
    SIDES,
    SceneSet,
    make_scenes,
    prompt_text,
)
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.seed import seed_everything

CONNECTORS = ("LLaVA", "Flamingo", "BLIP-2")


@dataclass(frozen=True)
class VLMConfig:
    """Every knob of the closed loop; :meth:`for_mode` is the one place ``toy`` becomes numbers."""

    canvas: int = 16  # image side in pixels
    patch: int = 4  # ViT patch side: (canvas / patch)^2 patches
    d_vis: int = 64  # ViT width
    vit_layers: int = 2  # ViT blocks
    heads: int = 4  # attention heads of every vision-side attention
    text_d: int = 64  # CLIP text tower width (a small causal Llama)
    text_layers: int = 2  # CLIP text tower blocks
    embed: int = 64  # CLIP / ITC joint embedding size
    n_train: int = 4000  # training scenes (one question each)
    n_test: int = 400  # scenes of each test split
    clip_steps: int = 150  # CLIP optimiser steps
    clip_batch: int = 128  # CLIP pairs per step (the contrastive batch)
    clip_lr: float = 3e-3  # CLIP peak learning rate
    align_steps: int = 40  # LLaVA stage 1: the projector alone, frozen LM
    # VQA steps of every connector (LLaVA stage 2, Flamingo, BLIP-2 stage 2). 200 left BLIP-2 at 0.565 on seed 2
    # under ATEN_CPU_CAPABILITY=default (threshold 0.6); 300 lifts its seeds 0-4 to 0.69-0.75 (book/benchmarks.md)
    steps: int = 300
    batch: int = 16  # VQA examples per step
    # peak learning rates. At 1e-2 / 5e-3 BLIP-2 sat at 0.608 (seed 4) and Flamingo fell into a plateau that never
    # learned colour (0.458, seed 3) under ATEN_CPU_CAPABILITY=default; 5e-3 / 2e-3 (full mode's Flamingo rate)
    # gave 0.702 / 0.733 in those cells (book/benchmarks.md, "VLM learning rates")
    lr: float = 5e-3  # the projector / Q-Former + LoRA runs (LLaVA, BLIP-2)
    flamingo_lr: float = 2e-3  # the resampler + gated cross-attention
    # Flamingo's tanh gates learn 10x faster (GatedCrossAttention.gate_scale). At 1x they were still below 0.1
    # after 300 steps, and test EM swung with the init: 0.675-0.772 over 4 inits of seed 2 (0.613 in the seed-2
    # matrix cell); at 10x they open to 0.3-0.5 and 8 inits of seeds 2-3 gave 0.730-0.762 (book/benchmarks.md)
    flamingo_gate_scale: float = 10.0
    n_latents: int = 4  # Flamingo resampler latents = visual tokens
    resampler_layers: int = 1  # Perceiver resampler layers
    n_query: int = 8  # BLIP-2 Q-Former queries = visual tokens
    qformer_d: int = 64  # Q-Former width
    qformer_layers: int = 2  # Q-Former layers
    itc_steps: int = 100  # Q-Former stage 1 (image-text contrastive) steps
    lora_rank: int = 4  # LoRA rank on the LM's q_proj / v_proj (LLaVA stage 2 and BLIP-2)

    def validate(self) -> None:
        check_range("canvas", self.canvas, 8, 256)
        check_range("patch", self.patch, 1, self.canvas)
        if self.canvas % self.patch:
            raise LLMCoreError(f"canvas={self.canvas} is not a multiple of patch={self.patch}")
        for name in ("clip_steps", "align_steps", "steps", "itc_steps", "n_train", "n_test", "batch", "clip_batch"):
            check_range(name, getattr(self, name), 1, 10**7)
        check_range("lora_rank", self.lora_rank, 1, 1024)
        check_range("flamingo_gate_scale", self.flamingo_gate_scale, 1e-3, 1e3)

    @classmethod
    def for_mode(cls, toy: bool) -> VLMConfig:
        if toy:
            return cls()
        return cls(canvas=32, patch=4, d_vis=128, vit_layers=4, text_d=128, text_layers=3, embed=128,
                   n_train=40_000, n_test=2000, clip_steps=3000, clip_batch=256, align_steps=1000, steps=3000,
                   batch=64, lr=3e-3, flamingo_lr=2e-3, n_latents=8, resampler_layers=2, n_query=16, qformer_d=128,
                   qformer_layers=3, itc_steps=2000)


# ---- text ---------------------------------------------------------------------------------------------
def encode_vqa(ss: SceneSet) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids, labels (n, T)``: ``<bos> Q: ...\\nA: answer <eos> <pad>...``; labels = -100 except answer + ``<eos>``."""
    tok, cfg = book_tokenizer(), BOOK_LM_CONFIG
    rows, labs = [], []
    for q, a in zip(ss.questions, ss.answers):
        prompt = [cfg.bos_id] + tok.encode(prompt_text(q))
        answer = tok.encode(" " + a) + [cfg.eos_id]
        rows.append(prompt + answer)
        labs.append([-100] * len(prompt) + answer)
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), cfg.pad_id)
    labels = torch.full((len(rows), T), -100)
    for i, (r, lab) in enumerate(zip(rows, labs)):
        ids[i, :len(r)] = torch.tensor(r)
        labels[i, :len(lab)] = torch.tensor(lab)
    return ids, labels


def encode_captions(captions: list[str]) -> torch.Tensor:
    """``(n, T)`` ids ``<bos> caption <eos> <pad>...`` for the CLIP text tower and the Q-Former's text branch."""
    tok, cfg = book_tokenizer(), BOOK_LM_CONFIG
    rows = [[cfg.bos_id] + tok.encode(c) + [cfg.eos_id] for c in captions]
    ids = torch.full((len(rows), max(map(len, rows))), cfg.pad_id)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids


def pack(images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(B, S, S)`` palette ids and ``(B, T)`` token ids -> ``(B, S^2 + T)`` (one tensor for the kit's loop)."""
    return torch.cat([images.flatten(1).long(), ids], 1)


# ---- the vision-language model ------------------------------------------------------------------------
class VLM(nn.Module):
    """A frozen ViT + a connector + the frozen book LM (optionally LoRA-adapted).

    ``kind="LLaVA"``: ``N`` projected patch tokens after ``<bos>``; ``"BLIP-2"``: ``L`` projected Q-Former
    query outputs after ``<bos>``; ``"Flamingo"``: text only in the sequence, ``L`` resampled latents read
    through gated cross-attention before every block. :meth:`text_logits` ``(B, T, V)`` are aligned with the
    text ids (visual positions dropped), so every connector shares one loss and one exact-match score.
    """

    def __init__(self, kind: str, vit: ViTLite, lm: Llama, cfg: VLMConfig, qformer: QFormer | None = None) -> None:
        super().__init__()
        if kind not in CONNECTORS:
            raise LLMCoreError(f"unknown connector {kind!r}; valid: {', '.join(CONNECTORS)}")
        self.kind, self.vit, self.lm = kind, vit, lm
        for p in list(vit.parameters()) + list(lm.parameters()):
            p.requires_grad_(False)
        d = lm.config.d_model
        if kind == "LLaVA":
            self.projector = LlavaProjector(cfg.d_vis, d)
        elif kind == "Flamingo":
            self.resampler = PerceiverResampler(cfg.d_vis, cfg.n_latents, cfg.resampler_layers, cfg.heads)
            self.xattn = nn.ModuleList(GatedCrossAttention(d, cfg.d_vis, cfg.heads, cfg.flamingo_gate_scale)
                                       for _ in range(lm.config.n_layers))
        else:
            if qformer is None:
                raise LLMCoreError("the BLIP-2 connector needs a (stage-1 trained) QFormer")
            self.qformer = qformer
            self.projector = nn.Linear(qformer.queries.shape[1], d)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's patch tokens ``(B, N, d_v)`` (``[CLS]`` dropped, as LLaVA does)."""
        with torch.no_grad():
            return self.vit(images)[:, 1:]

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """What the connector hands the LM: ``(B, N, d)`` (LLaVA), ``(B, L, d)`` (BLIP-2), ``(B, L, d_v)`` (Flamingo)."""
        v = self.patch_features(images)
        if self.kind == "LLaVA":
            return self.projector(v)
        if self.kind == "Flamingo":
            return self.resampler(v)
        return self.projector(self.qformer(v)[0])

    def text_hidden(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The LM's final hidden states at the text positions ``(B, T, d)`` (visual positions dropped)."""
        z = self.visual_tokens(images)
        if self.kind == "Flamingo":
            return flamingo_hidden(self.lm, self.xattn, ids, z)
        emb = self.lm.model.embed_tokens(ids)
        h = self.lm.hidden_states(inputs_embeds=torch.cat([emb[:, :1], z, emb[:, 1:]], 1))
        return torch.cat([h[:, :1], h[:, 1 + z.shape[1]:]], 1)

    def text_logits(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``(B, T, V)``: position ``t`` predicts text token ``t + 1``."""
        return self.lm.lm_head(self.text_hidden(images, ids))

    def n_visual_tokens(self) -> int:
        return self.vit.n_patches if self.kind == "LLaVA" else (
            self.resampler.latents.shape[0] if self.kind == "Flamingo" else self.qformer.n_query)

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None):
        """Packed ``idx (B, S^2 + T)`` (see :func:`pack`) -> text logits, or ``(None, answer loss)`` given
        ``labels``: the vocabulary projection runs only where a label is (answer tokens and ``<eos>``)."""
        P = self.vit.n_patches * self.vit.patch ** 2
        S = self.vit.patch * int(round(self.vit.n_patches ** 0.5))
        images, ids = idx[:, :P].view(-1, S, S), idx[:, P:]
        if labels is None:
            return self.text_logits(images, ids)
        target = labels[:, P + 1:]  # position t predicts token t + 1
        keep = target != -100
        logits = self.lm.lm_head(self.text_hidden(images, ids)[:, :-1][keep])
        return None, torch.nn.functional.cross_entropy(logits, target[keep])


class Packed(nn.Module):
    """Adapts a loss of ``(images, ids)`` to the kit loop's ``model(idx, labels) -> (None, loss)``."""

    def __init__(self, module: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 canvas: int) -> None:
        super().__init__()
        self.module, self.loss_fn, self.canvas = module, loss, canvas

    def forward(self, idx: torch.Tensor, labels: torch.Tensor | None = None):
        P = self.canvas ** 2
        return None, self.loss_fn(idx[:, :P].view(-1, self.canvas, self.canvas), idx[:, P:])


@torch.no_grad()
def exact_match(model: VLM, images: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor,
                batch: int = 256) -> torch.Tensor:
    """Per example: every labelled next token (answer + ``<eos>``) is the argmax. ``-> (n,)`` bool."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(ids), batch):
        lg = model.text_logits(images[i:i + batch].to(dev), ids[i:i + batch].to(dev))
        target = labels[i:i + batch, 1:].to(dev)
        ok = (lg[:, :-1].argmax(-1) == target) | (target == -100)
        out.append(ok.all(1).cpu())
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def answer(model: VLM, image: torch.Tensor, question_text: str, max_tokens: int = 6) -> str:
    """Greedy answer of ``model`` to one question about one ``(S, S)`` image (for the play widget)."""
    tok, cfg = book_tokenizer(), BOOK_LM_CONFIG
    model.eval()
    dev = next(model.parameters()).device
    ids = torch.tensor([[cfg.bos_id] + tok.encode(prompt_text(question_text))], device=dev)
    img = image[None].to(dev)
    out = []
    for _ in range(max_tokens):
        nxt = int(model.text_logits(img, ids)[0, -1].argmax())
        if nxt == cfg.eos_id:
            break
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]], device=dev)], 1)
    return tok.decode(out).strip()


# ---- the closed loop ----------------------------------------------------------------------------------
@dataclass
class Data:
    train: SceneSet
    test: SceneSet
    combo: SceneSet
    vqa: dict[str, tuple[torch.Tensor, torch.Tensor]]  # split -> (ids, labels)
    captions: torch.Tensor  # (n_train, T) caption ids of the training scenes


def make_data(cfg: VLMConfig, seed: int) -> Data:
    sets = {s: make_scenes(cfg.n_train if s == "train" else cfg.n_test, cfg.canvas, seed, s)
            for s in ("train", "test", "combo")}
    return Data(sets["train"], sets["test"], sets["combo"], {s: encode_vqa(v) for s, v in sets.items()},
                encode_captions(sets["train"].captions))


def zero_shot_captions() -> list[str]:
    """All single-object captions ``"a <colour> <shape> on the <side>"`` (24 classes)."""
    return [f"a {c} {s} on the {side}" for c in COLOURS for s in SHAPES for side in SIDES]


@torch.no_grad()
def zero_shot(clip: CLIP, images: torch.Tensor, truth: list[str]) -> tuple[float, torch.Tensor]:
    """Zero-shot classification: the caption with the highest cosine similarity among
    :func:`zero_shot_captions`. ``-> (accuracy, similarities (n, 24))``."""
    clip.eval()
    caps = zero_shot_captions()
    dev = next(clip.parameters()).device
    u = torch.nn.functional.normalize(clip.encode_image(images.to(dev)), dim=-1)
    w = torch.nn.functional.normalize(clip.encode_text(encode_captions(caps).to(dev)), dim=-1)
    sim = (u @ w.T).cpu()
    pred = sim.argmax(1)
    return float(np.mean([caps[p] == t for p, t in zip(pred.tolist(), truth)])), sim


def single_object(ss: SceneSet) -> list[int]:
    return [i for i, objs in enumerate(ss.objects) if len(objs) == 1]


@dataclass
class ConnectorResult:
    name: str
    trainable: int  # trainable parameters
    visual_tokens: int  # visual tokens per image the LM reads
    em_test: float  # exact match, held-out scenes
    em_combo: float  # exact match, held-out attribute combinations
    em_by_type: dict[str, float]  # held-out scenes, per question type
    train_s: float
    loss: list[float]


@dataclass
class VLMResult:
    cfg: VLMConfig
    seed: int
    clip_loss: list[float]
    zero_shot_test: float  # 24-way zero-shot accuracy, single-object held-out scenes
    zero_shot_combo: float  # same, held-out colour-shape pairs
    clip_s: float
    itc_loss: list[float]
    connectors: dict[str, ConnectorResult] = field(default_factory=dict)
    chance: float = 0.0  # uniform guessing, averaged over the question types
    models: dict[str, VLM] = field(default_factory=dict)
    clip: CLIP | None = None
    data: Data | None = None


def build_clip(cfg: VLMConfig) -> CLIP:
    vit = ViTLite(cfg.canvas, cfg.patch, cfg.d_vis, cfg.vit_layers, cfg.heads)
    text_cfg = ModelConfig(vocab_size=BOOK_LM_CONFIG.vocab_size, d_model=cfg.text_d, n_layers=cfg.text_layers,
                           n_heads=cfg.heads, max_seq_len=64, bos_id=BOOK_LM_CONFIG.bos_id,
                           eos_id=BOOK_LM_CONFIG.eos_id, pad_id=BOOK_LM_CONFIG.pad_id)
    return CLIP(vit, text_cfg, cfg.d_vis, cfg.embed)


def rows_fn(packed: torch.Tensor, labels: torch.Tensor | None, batch: int):
    """A ``batch_fn`` for the kit loop: ``batch`` random rows (with replacement) of ``packed``."""
    def draw(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, len(packed), (batch,), generator=g)
        return packed[rows], (labels[rows] if labels is not None else packed[rows])
    return draw


def fit(model: nn.Module, steps: int, batch_fn, lr: float, seed: int, desc: str) -> tuple[list[float], float]:
    """The kit's loop (warmup 10%, cosine to 10%, clip 1.0) without its own bar; ``-> (losses, seconds)``."""
    tcfg = TrainConfig(steps=steps, batch_size=0, seq_len=0, lr=lr, warmup_steps=max(1, steps // 10),
                       weight_decay=0.0, seed=seed, desc=desc)
    res = train(model, tcfg, batch_fn, show_progress=False)
    return res.loss, res.wall_s


def connector_result(name: str, model: VLM, data: Data, loss: list[float], secs: float) -> ConnectorResult:
    test_ok = exact_match(model, data.test.images, *data.vqa["test"])
    combo_ok = exact_match(model, data.combo.images, *data.vqa["combo"])
    by_type = {t: float(test_ok[[q == t for q in data.test.qtypes]].float().mean()) for t in QUESTION_TYPES}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ConnectorResult(name, trainable, model.n_visual_tokens(), float(test_ok.float().mean()),
                           float(combo_ok.float().mean()), by_type, secs, loss)


def experiment(cfg: VLMConfig, seed: int = 0, device: torch.device = CPU, show_progress: bool = True) -> VLMResult:
    """CLIP pretraining, then LLaVA (stage 1, stage 2 + LoRA), Flamingo and BLIP-2 (ITC, then VQA) on the
    frozen encoder and the frozen book LM; every connector scored on the same held-out splits."""
    cfg.validate()
    seed_everything(seed)
    data = make_data(cfg, seed)
    lm0 = load_book_lm(device).model
    P = cfg.canvas ** 2
    stages = ["CLIP", "LLaVA stage 1", "LLaVA stage 2", "Flamingo", "Q-Former ITC", "BLIP-2"]
    bar = progress(stages, desc="VLM", disable=not show_progress)
    it = iter(bar)

    next(it)
    clip = build_clip(cfg).to(device)
    clip_loss_hist, clip_s = fit(Packed(clip, clip.loss, cfg.canvas), cfg.clip_steps,
                                 rows_fn(pack(data.train.images, data.captions), None, cfg.clip_batch),
                                 cfg.clip_lr, seed, "CLIP")
    singles_t, singles_c = single_object(data.test), single_object(data.combo)
    zs_t, _ = zero_shot(clip, data.test.images[singles_t], [data.test.captions[i] for i in singles_t])
    zs_c, _ = zero_shot(clip, data.combo.images[singles_c], [data.combo.captions[i] for i in singles_c])
    vit = clip.vision.eval()

    vqa_packed = pack(data.train.images, data.vqa["train"][0])
    vqa_labels = torch.cat([torch.full((len(vqa_packed), P), -100), data.vqa["train"][1]], 1)
    batches = rows_fn(vqa_packed, vqa_labels, cfg.batch)
    out: dict[str, ConnectorResult] = {}
    models: dict[str, VLM] = {}

    next(it)  # LLaVA stage 1: the projector alone (frozen LM)
    llava = VLM("LLaVA", vit, lm0, cfg).to(device)
    loss, secs = fit(llava, cfg.align_steps, batches, cfg.lr, seed, "LLaVA stage 1")
    out["LLaVA stage 1"] = connector_result("LLaVA stage 1", llava, data, loss, secs)
    models["LLaVA stage 1"] = llava

    next(it)  # LLaVA stage 2: projector + LoRA on a copy of the LM
    llava2 = copy.deepcopy(llava)
    apply_lora(llava2.lm, LoRAConfig(r=cfg.lora_rank, alpha=2.0 * cfg.lora_rank))
    loss2, secs2 = fit(llava2, cfg.steps, batches, cfg.lr, seed + 1, "LLaVA stage 2")
    out["LLaVA"] = connector_result("LLaVA", llava2, data, loss + loss2, secs + secs2)
    models["LLaVA"] = llava2

    next(it)  # Flamingo: resampler + gated cross-attention, the LM stays frozen
    flam = VLM("Flamingo", vit, lm0, cfg).to(device)
    loss, secs = fit(flam, cfg.steps, batches, cfg.flamingo_lr, seed, "Flamingo")
    out["Flamingo"] = connector_result("Flamingo", flam, data, loss, secs)
    models["Flamingo"] = flam

    next(it)  # BLIP-2 stage 1: Q-Former with image-text contrastive learning on the frozen encoder
    qf = QFormer(cfg.qformer_d, cfg.d_vis, cfg.n_query, cfg.qformer_layers, cfg.heads, BOOK_LM_CONFIG.vocab_size,
                 data.captions.shape[1], cfg.embed).to(device)

    def itc(images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            v = vit(images)[:, 1:]
        return qf.itc_loss(v, ids)

    itc_hist, itc_s = fit(Packed(qf, itc, cfg.canvas), cfg.itc_steps,
                          rows_fn(pack(data.train.images, data.captions), None, cfg.clip_batch),
                          cfg.clip_lr, seed, "Q-Former ITC")

    next(it)  # BLIP-2 stage 2: Q-Former + projection (+ the same LoRA as LLaVA) feed the LM
    for part in (qf.tok, qf.text_proj, qf.image_proj):  # the text branch and ITC heads serve stage 1 only
        part.requires_grad_(False)
    qf.pos.requires_grad_(False)
    qf.logit_scale.requires_grad_(False)
    blip = VLM("BLIP-2", vit, copy.deepcopy(lm0), cfg, qformer=qf).to(device)
    apply_lora(blip.lm, LoRAConfig(r=cfg.lora_rank, alpha=2.0 * cfg.lora_rank))
    loss, secs = fit(blip, cfg.steps, batches, cfg.lr, seed, "BLIP-2")
    out["BLIP-2"] = connector_result("BLIP-2", blip, data, loss, secs + itc_s)
    models["BLIP-2"] = blip
    for _ in it:
        pass
    chance = float(np.mean([CHANCE[t] for t in data.test.qtypes]))
    return VLMResult(cfg, seed, clip_loss_hist, zs_t, zs_c, clip_s, itc_hist, out, chance, models, clip, data)


def held_out_pairs() -> list[str]:
    return [f"{c} {s}" for c, s in HELD_OUT]


def small_config(**over) -> VLMConfig:
    """A seconds-long configuration for tests (``toy`` sizes with tiny step counts)."""
    small = {"n_train": 256, "n_test": 32, "clip_steps": 3, "align_steps": 2, "steps": 3, "itc_steps": 3,
             "clip_batch": 32, "batch": 8}
    return replace(VLMConfig(), **(small | over))
