"""Transformer chapter pieces: BPE vs HF tokenizers, patch embeddings, Pre/Post-LN, HF equivalence."""

import torch

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.transformer import (
    PatchEmbedding,
    compare_tokenizers,
    hf_logit_diff,
    layer_grad_norms,
    multimodal_sequence,
    patches_as_linear,
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
