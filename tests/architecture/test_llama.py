"""The LLaMA-style model: HF equivalence, checkpoints, KV cache, masks, generation."""

import pytest
import torch

from llmcore.architecture.llama import KVCache, Llama, ModelConfig, apply_rope, lm_loss, rope_cos_sin
from llmcore.core.errors import LLMCoreError

transformers = pytest.importorskip("transformers")


def _model(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=300, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64)
    base.update(kw)
    return Llama(ModelConfig(**base)).eval()


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_hf(n_kv, tie):
    m = _model(n_kv_heads=n_kv, tie_embeddings=tie)
    # random (non-unit) norm gains so that RMSNorm weights are really exercised
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.uniform_(0.5, 1.5)
    hf = m.to_hf()
    x = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        diff = (m(x) - hf(x).logits).abs().max().item()
    assert diff < 1e-4
    back = Llama.from_hf(hf)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


def test_loss_matches_hf_with_ignore_index():
    m = _model()
    hf = m.to_hf()
    x = torch.randint(0, 300, (3, 20))
    labels = x.clone()
    labels[:, :7] = -100
    with torch.no_grad():
        _, ours = m(x, labels=labels)
        theirs = hf(x, labels=labels).loss
    assert abs(ours.item() - theirs.item()) < 1e-5


def test_save_load_roundtrip_and_hf_reads_it(tmp_path):
    for tie in (True, False):
        m = _model(tie_embeddings=tie)
        x = torch.randint(0, 300, (2, 16))
        m.save_pretrained(tmp_path / "ours")
        assert (tmp_path / "ours" / "model.safetensors").is_file()
        loaded = Llama.from_pretrained(tmp_path / "ours")
        hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours")
        with torch.no_grad():
            assert torch.equal(loaded(x), m(x))
            assert (hf(x).logits - m(x)).abs().max().item() < 1e-5
        hf.save_pretrained(tmp_path / "hf")
        from_hf_dir = Llama.from_pretrained(tmp_path / "hf")
        with torch.no_grad():
            assert (from_hf_dir(x) - m(x)).abs().max().item() < 1e-5


def test_rope_matches_hf_rotary_embedding():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = ModelConfig(d_model=128, n_heads=4, rope_theta=500000.0, max_seq_len=4096)
    hf_rot = LlamaRotaryEmbedding(cfg.to_hf_config())
    pos = torch.tensor([[0, 1, 2, 7, 100, 4000]])
    q, k = torch.randn(1, 4, 6, 32), torch.randn(1, 4, 6, 32)
    cos_hf, sin_hf = hf_rot(q, pos)
    cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
    assert torch.allclose(cos, cos_hf, atol=1e-6) and torch.allclose(sin, sin_hf, atol=1e-6)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    assert torch.allclose(apply_rope(q, cos, sin), q_hf, atol=1e-6)
    assert torch.allclose(apply_rope(k, cos, sin), k_hf, atol=1e-6)


def test_rope_is_relative():
    """<R(m) q, R(n) k> depends on m - n only."""
    cos, sin = rope_cos_sin(torch.arange(40)[None], 16, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def score(m, n):
        return (apply_rope(q, cos[:, m:m + 1], sin[:, m:m + 1]) * apply_rope(k, cos[:, n:n + 1], sin[:, n:n + 1])).sum()
    assert torch.allclose(score(5, 2), score(30, 27), atol=1e-5)


def test_kv_cache_matches_full_forward_and_generate():
    m = _model()
    x = torch.randint(0, 300, (2, 20))
    cache = KVCache(m.config.n_layers)
    with torch.no_grad():
        parts = [m(x[:, :9], kv_cache=cache)] + [m(x[:, i:i + 1], kv_cache=cache) for i in range(9, 20)]
        assert (torch.cat(parts, 1) - m(x)).abs().max().item() < 1e-5
    assert cache.seq_len == 20
    a = m.generate(x[:, :4], 25)
    b = m.generate(x[:, :4], 25, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 29)
    hf = m.to_hf()
    c = hf.generate(x[:, :4], max_new_tokens=25, do_sample=False, min_new_tokens=25)
    assert torch.equal(a, c)


def test_left_padding_with_attention_mask():
    m = _model()
    x = torch.randint(0, 300, (2, 12))
    am = torch.ones_like(x)
    am[0, :4] = 0
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = m(x, attention_mask=am, position_ids=pos)
        alone = m(x[:1, 4:])
    assert (padded[0, 4:] - alone[0]).abs().max().item() < 1e-5


def test_eager_equals_sdpa_and_post_ln_runs():
    m = _model()
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        a = m(x)
        m.config.attn_impl = "eager"
        b = m(x)
    assert (a - b).abs().max().item() < 1e-5
    post = _model(norm_position="post")
    assert post(x).shape == (2, 12, 300)
    with pytest.raises(LLMCoreError):
        post.config.to_hf_config()


def test_inputs_embeds_and_hidden_states():
    m = _model()
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        e = m.model.embed_tokens(x)
        assert torch.equal(m(inputs_embeds=e), m(x))
        assert m.hidden_states(x).shape == (2, 10, 64)


def test_bad_config_is_a_clear_error():
    with pytest.raises(LLMCoreError):
        ModelConfig(d_model=64, n_heads=4, n_kv_heads=3)
    with pytest.raises(LLMCoreError):
        ModelConfig(norm_position="middle")


@pytest.mark.parametrize("name", ["bos_id", "eos_id", "pad_id"])
def test_special_token_ids_must_be_in_the_vocabulary(name):
    """Issue 16: an id >= vocab_size used to be accepted and crash later in to_hf()."""
    with pytest.raises(LLMCoreError, match=f"{name}=64 is not a token id of a vocabulary of 64"):
        ModelConfig(vocab_size=64, **{"bos_id": None, "eos_id": None, "pad_id": None, name: 64})
    with pytest.raises(LLMCoreError, match=name):
        ModelConfig(vocab_size=64, **{"bos_id": None, "eos_id": None, "pad_id": None, name: -1})
    cfg = ModelConfig(vocab_size=64, d_model=32, **{"bos_id": None, "eos_id": None, "pad_id": None, name: 63})
    assert getattr(Llama(cfg).to_hf().config, name.replace("_id", "_token_id")) == 63  # the boundary is valid
    with pytest.raises(LLMCoreError, match="bos_id=257"):
        ModelConfig(vocab_size=100)  # the byte tokenizer's defaults do not fit a 100-token vocabulary


def test_lm_loss_ignores_minus_100():
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[1, 2, -100, 3]])
    expected = torch.nn.functional.cross_entropy(logits[0, [0, 2]], torch.tensor([2, 3]))
    assert torch.allclose(lm_loss(logits, labels), expected)
