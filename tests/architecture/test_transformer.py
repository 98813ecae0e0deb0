"""Transformer chapter pieces: BPE vs HF tokenizers, patch embeddings, Pre/Post-LN, HF equivalence."""

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyBboxPatch

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.transformer import (
    LLAMA_BLOCK_BOXES,
    SHAPES,
    AlignConfig,
    PatchEmbedding,
    clip_text_image_loss,
    compare_tokenizers,
    contrastive_alignment,
    distinct_ngram_ratio,
    hf_logit_diff,
    info_nce,
    layer_grad_norms,
    multimodal_sequence,
    patches_as_linear,
    plot_llama_block,
    rope_score_closed_form,
    rope_scores,
    shape_images,
    tail_period,
    toeplitz_deviation,
)

TEXT = "\n\n".join(
    f"Return the {w} of the {o}. If the {o} is empty, raise ValueError; otherwise return a new {w} object."
    for w in ("length", "sum", "maximum", "first item", "hash", "copy") for o in ("list", "mapping", "buffer"))


def test_bpe_compression_matches_hf_tokenizers():
    ours, cmp = compare_tokenizers(TEXT * 3, TEXT, vocab_size=300)
    assert cmp.roundtrip_ok
    assert abs(cmp.ratio - 1) <= 0.10
    assert cmp.ours_bytes_per_token > 1.5  # only 36 merges


def test_hf_logit_diff_helper():
    torch.manual_seed(0)
    m = Llama(ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2))
    assert hf_logit_diff(m, torch.randint(0, 264, (2, 12))) < 1e-4


def test_patch_embedding_is_a_linear_map_per_patch_and_feeds_the_decoder():
    torch.manual_seed(0)
    emb = PatchEmbedding(patch=4, channels=3, d_model=32)
    images = torch.rand(2, 3, 8, 12)
    out = emb(images)
    assert out.shape == (2, 6, 32)
    assert (out - patches_as_linear(emb, images)).abs().max() < 1e-5
    m = Llama(ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=4))
    x, logits = multimodal_sequence(m, emb, images, torch.randint(0, 264, (2, 5)))
    assert x.shape == (2, 11, 32) and logits.shape == (2, 11, 264)


def test_layer_grad_norms_one_per_layer():
    torch.manual_seed(0)
    m = Llama(ModelConfig(vocab_size=264, d_model=32, n_layers=3, n_heads=4, norm_position="post"))
    x = torch.randint(0, 264, (2, 8))
    m(x, labels=x)[1].backward()
    norms = layer_grad_norms(m)
    assert len(norms) == 3 and all(n > 0 for n in norms)


def test_llama_block_diagram_draws_every_box_and_both_residual_adds():
    fig, ax = plt.subplots()
    assert plot_llama_block(ax, n_layers=4) is ax
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(boxes) == len(LLAMA_BLOCK_BOXES) == 7
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("+") == 2 and texts.count("RMSNorm") == 2 and "x 4 layers" in texts
    assert any("RoPE" in t for t in texts) and any("SwiGLU" in t for t in texts)
    plt.close(fig)


def test_rope_score_depends_only_on_the_offset():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)
    S = rope_scores(q, k, 48)
    assert S.shape == (48, 48)
    assert toeplitz_deviation(S) < 1e-4  # constant along diagonals
    assert float(S.std()) > 0.5  # ... but not constant: the offset matters
    assert torch.allclose(S[0, 0], q @ k)  # offset 0: no rotation at all
    offsets = torch.arange(48)
    assert torch.allclose(S[:, 0].double(), rope_score_closed_form(q, k, offsets), atol=1e-4)  # S[m, 0]: Delta = m
    # hand case, D = 2 (one frequency, 1 rad per position): q = (1, 0), k = (1, 0) -> cos(m - n)
    e = torch.tensor([1.0, 0.0])
    assert torch.allclose(rope_scores(e, e, 4)[3, 1], torch.tensor(math.cos(2.0)), atol=1e-6)
    assert float(rope_score_closed_form(e, e, torch.tensor([2.0]))) == pytest.approx(math.cos(2.0))


def test_loop_detection_and_distinct_ngrams():
    assert tail_period("Return the set the set the set the set", min_repeats=3) == 8  # " the set"
    assert tail_period("abcdefgh") == 0
    assert tail_period([1, 2, 1, 2, 1, 2]) == 2
    assert distinct_ngram_ratio(list("abcdef"), 2) == 1.0
    assert distinct_ngram_ratio(list("aaaaa"), 2) == 0.25


def test_info_nce_hand_cases_and_transformers_clip_loss():
    u = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    w = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    # transformers' CLIP takes logits_per_text = (image logits)^T
    assert torch.allclose(info_nce(u, w, 0.1), clip_text_image_loss((u @ w.T / 0.1).T), atol=1e-6)
    same = torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)  # all similarities equal -> ln B
    assert float(info_nce(same, same, 0.5)) == pytest.approx(math.log(4))
    eye = torch.eye(3)  # orthogonal, perfectly matched pairs at a low temperature -> loss near 0
    assert float(info_nce(eye, eye, 0.01)) < 1e-6


def test_shape_images_cycle_classes_and_differ():
    x, y = shape_images(16, seed=0)
    assert x.shape == (16, 1, 8, 8) and y.tolist() == [i % len(SHAPES) for i in range(16)]
    clean, _ = shape_images(8, seed=0, noise=0.0)
    assert set(clean.unique().tolist()) == {0.0, 1.0}
    assert clean[4].sum() > clean[5].sum() or clean[5].sum() >= 9  # outline (>= 12 px) vs filled (9 or 16 px)
    assert all(clean[i].sum() >= 5 for i in range(8))  # every shape drew something


def test_contrastive_alignment_beats_chance_on_held_out_images():
    res = contrastive_alignment(AlignConfig(seed=1))
    assert res.hf_loss_diff < 1e-6
    assert res.acc_before < 0.3 and res.acc_after > 0.8  # chance is 1/8
    assert res.t2i_after > res.t2i_before
