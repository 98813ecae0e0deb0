"""Vision-language models: scenes, CLIP loss (vs HF CLIPModel), LLaVA projector (vs HF), Flamingo gate-zero
identity, Q-Former masks, and the closed loop starting at toy and full sizes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from llmcore.architecture.book_lm import load_book_lm
from llmcore.architecture.vlm.experiment import (
    VLM,
    VLMConfig,
    encode_vqa,
    exact_match,
    experiment,
    small_config,
)
from llmcore.architecture.vlm.models import (
    GatedCrossAttention,
    LlavaProjector,
    QFormer,
    ViTLite,
    clip_loss,
    qformer_mask,
)
from llmcore.architecture.vlm.report import (
    clip_crosscheck,
    gate_zero_gap,
    hf_clip_loss,
    hf_projector,
    make_report,
)
from llmcore.architecture.vlm.scenes import HELD_OUT, Obj, caption, make_scenes, question, shape_mask
from llmcore.core.errors import LLMCoreError


def test_shape_masks_by_hand():
    assert shape_mask("square", 4).all()
    tri = shape_mask("triangle", 4)  # apex up: row widths grow downwards
    assert tri.sum(1).tolist() == [2, 2, 4, 4]
    circ = shape_mask("circle", 4)
    assert not circ[0, 0] and circ[1:3, 1:3].all()


def test_scenes_hold_out_pairs_and_answer_correctly():
    train = make_scenes(300, 16, 0, "train")
    pairs = {(o.colour, o.shape) for objs in train.objects for o in objs}
    assert not pairs & set(HELD_OUT) and len(pairs) == 12 - len(HELD_OUT)
    combo = make_scenes(50, 16, 0, "combo")
    assert all((objs[0].colour, objs[0].shape) in HELD_OUT for objs in combo.objects)
    # every drawn pixel has the colour of an object of its scene; two objects differ in colour and shape
    for img, objs in zip(train.images[:50], train.objects[:50]):
        assert set(img.unique().tolist()) - {0} <= {("red", "green", "blue", "yellow").index(o.colour) + 1
                                                    for o in objs}
        if len(objs) == 2:
            assert objs[0].colour != objs[1].colour and objs[0].shape != objs[1].shape
    objs = [Obj("red", "circle", "right"), Obj("blue", "square", "left")]
    assert caption(objs) == "a blue square on the left and a red circle on the right"
    assert question(objs, "colour", objs[0]) == ("what colour is the circle?", "red")
    assert question(objs, "count", objs[0])[1] == "two"
    assert question(objs, "side", objs[1])[1] == "left"
    assert torch.equal(make_scenes(20, 16, 3).images, make_scenes(20, 16, 3).images)


def test_clip_loss_by_hand_and_against_hf_clipmodel():
    # two orthogonal pairs, scale e^0 = 1: each row is softmax([1, 0]) -> loss = log(1 + e^-1)
    e = torch.eye(2)
    assert math.isclose(float(clip_loss(e, e, torch.tensor(0.0))), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    ours = float(clip_loss(img, txt, torch.tensor(2.0)))
    assert abs(ours - hf_clip_loss(img, txt, 2.0)) < 1e-5
    assert clip_crosscheck(0) < 1e-5


def test_llava_projector_equals_hf():
    torch.manual_seed(0)
    ours = LlavaProjector(24, 40)
    v = torch.randn(3, 5, 24)
    assert torch.allclose(ours(v), hf_projector(ours)(v), atol=1e-6, rtol=0)


def test_flamingo_gates_at_zero_are_exactly_the_text_only_lm():
    cfg = small_config()
    torch.manual_seed(0)
    vit = ViTLite(cfg.canvas, cfg.patch, cfg.d_vis, cfg.vit_layers, cfg.heads)
    lm = load_book_lm().model
    flam = VLM("Flamingo", vit, lm, cfg)
    ss = make_scenes(4, cfg.canvas, 0, "test")
    ids, _ = encode_vqa(ss)
    assert gate_zero_gap(flam, lm, ss.images, ids) == 0.0
    with torch.no_grad():  # an open gate lets the image in
        flam.xattn[0].gate_attn.fill_(0.5)
        assert (flam.text_logits(ss.images, ids) - lm(ids)).abs().max() > 1e-4


def test_gate_scale_multiplies_the_gate_parameter_and_its_adam_step():
    torch.manual_seed(0)
    x, z = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    fast, plain = GatedCrossAttention(16, 8, 2, gate_scale=10.0), GatedCrossAttention(16, 8, 2)
    plain.load_state_dict(fast.state_dict())
    with torch.no_grad():  # tanh(10 * 0.01) == tanh(1 * 0.1): the same layer
        fast.gate_attn.fill_(0.01), fast.gate_ffn.fill_(-0.02)
        plain.gate_attn.fill_(0.1), plain.gate_ffn.fill_(-0.2)
        assert torch.allclose(fast(x, z), plain(x, z), atol=1e-6)
    for layer in (fast, plain):  # one Adam step moves each gate parameter by ~lr: the gate value 10x as far
        opt = torch.optim.Adam([layer.gate_attn], lr=1e-3)
        layer(x, z).square().mean().backward()
        opt.step()
    moved = 10.0 * (fast.gate_attn.item() - 0.01), 1.0 * (plain.gate_attn.item() - 0.1)  # change of s * alpha
    assert abs(moved[1]) == pytest.approx(1e-3, rel=1e-3) and moved[0] == pytest.approx(10 * moved[1], rel=1e-3)


def test_qformer_masks_by_hand_and_their_effect():
    itg = qformer_mask(2, 3, "itg").int().tolist()
    assert itg == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    itc = qformer_mask(2, 3, "itc").int()
    assert itc[:2, 2:].sum() == 0 and itc[2:, :2].sum() == 0 and itc[:2, :2].all() and itc[2:, 2:].all()
    assert qformer_mask(2, 3, "itm").all()
    torch.manual_seed(0)
    qf = QFormer(32, 16, 4, 2, 4, 50, 6, 8).eval()
    v = torch.randn(2, 9, 16)
    a, b = torch.randint(0, 50, (2, 6)), torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        q0, _ = qf(v)
        qa, ta = qf(v, a, "itc")
        qb, _ = qf(v, b, "itc")
        qm, _ = qf(v, a, "itm")
        _, ga = qf(v, a, "itg")
        c = a.clone()
        c[:, -1] = (a[:, -1] + 1) % 50
        _, gc = qf(v, c, "itg")
    assert qa.shape == (2, 4, 32) and ta.shape == (2, 6, 32)
    assert torch.allclose(qa, q0, atol=1e-5) and torch.allclose(qa, qb, atol=1e-5)  # ITC: queries ignore text
    assert (qm - qa).abs().max() > 1e-4  # ITM: queries read the text
    assert torch.allclose(ga[:, :-1], gc[:, :-1], atol=1e-5)  # ITG: causal over text
    assert float(qf.itc_loss(v, a).detach()) > 0


def test_bad_input_is_one_clear_error():
    with pytest.raises(LLMCoreError, match="mask mode"):
        qformer_mask(2, 2, "bad")
    with pytest.raises(LLMCoreError, match="canvas"):
        make_scenes(2, 7, 0)
    with pytest.raises(LLMCoreError, match="split"):
        make_scenes(2, 16, 0, "val")
    with pytest.raises(LLMCoreError, match="connector"):
        VLM("GPT-4V", ViTLite(16, 4, 8, 1, 2), load_book_lm().model, VLMConfig())
    with pytest.raises(LLMCoreError, match="patch"):
        experiment(replace(VLMConfig(), patch=5))


def test_closed_loop_runs_at_toy_and_full_sizes():
    res = experiment(small_config(), seed=0, show_progress=False)
    rep = make_report(res, True, "cpu", 0)
    names = {c.name for c in rep.criteria}
    assert any("HF CLIPModel" in n for n in names) and any("LlavaMultiModalProjector" in n for n in names)
    assert {c.name: c.passed for c in rep.criteria}["Flamingo, gates at 0, vs text-only LM: max abs logit diff"]
    assert set(res.connectors) == {"LLaVA stage 1", "LLaVA", "Flamingo", "BLIP-2"}
    assert res.connectors["LLaVA"].visual_tokens == 16 and res.connectors["Flamingo"].visual_tokens == 4
    ok = exact_match(res.models["LLaVA stage 1"], res.data.test.images, *res.data.vqa["test"])
    assert ok.dtype == torch.bool and ok.shape == (small_config().n_test,)
    full = replace(VLMConfig.for_mode(False), n_train=64, n_test=8, clip_steps=1, steps=1, itc_steps=1,
                   align_steps=1, clip_batch=16, batch=4)
    big = experiment(full, seed=0, show_progress=False)
    assert big.connectors["LLaVA"].visual_tokens == (32 // 4) ** 2 and np.isfinite(big.clip_loss[0])
