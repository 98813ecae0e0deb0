"""PEFT on the book LM: LoRA vs PEFT's get_peft_model on its HF export, merge/unmerge, QLoRA, prefix/prompt
tuning, TIES by hand and vs PEFT."""

from __future__ import annotations

import copy

import pytest
import torch

from llmcore.alignment import peft as P
from llmcore.alignment import sft as S
from llmcore.alignment import tasks as T
from llmcore.architecture.llama import Llama
from llmcore.architecture.quantization import QuantLinear
from llmcore.core.errors import LLMCoreError


@pytest.fixture(scope="module")
def base() -> Llama:
    """The pretrained book LM (what the chapter adapts)."""
    return P.base_model("book_lm")


def _lora(base, **kw):
    cfg = P.LoRAConfig(**kw)
    m = copy.deepcopy(base)
    mods = P.apply_lora(m, cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B, so the adapter changes the output
        for lm in mods.values():
            lm.lora_B.weight.normal_(0, 0.2)
    return m.eval(), cfg


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj")])
def test_lora_logits_equal_peft(base, targets):
    m, cfg = _lora(base, r=4, alpha=8, target_modules=targets)
    pm = P.to_peft(m, base, cfg)
    idx = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs, plain = m(idx), pm(input_ids=idx).logits, base(idx)
    assert (ours - theirs).abs().max() < 1e-6
    assert (ours - plain).abs().max() > 1e-3


def test_lora_starts_at_base_and_freezes_it(base):
    m = copy.deepcopy(base)
    P.apply_lora(m, P.LoRAConfig(r=2))
    idx = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert torch.equal(m(idx), base(idx))  # B = 0
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    with pytest.raises(LLMCoreError):
        P.LoRAConfig(r=0)


def test_merge_unmerge_round_trip(base):
    m, _ = _lora(base, r=4, alpha=16, target_modules=("q_proj", "v_proj", "down_proj"))
    idx = torch.randint(0, 256, (2, 12))
    w0 = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.no_grad():
        before = m(idx)
        P.merge_lora(m)
        merged = m(idx)
        P.unmerge_lora(m)
        after = m(idx)
    # fp32 rounding of W0 + dW through 4 layers, logits of magnitude ~10: relative 1e-5
    assert torch.allclose(before, merged, rtol=1e-5, atol=1e-5)
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)
    for name, lm in P.lora_modules(m).items():
        assert (lm.base.weight - w0[f"{name}.weight"]).abs().max() < 1e-6


def test_qlora_base_is_int4_and_trains(base):
    m = copy.deepcopy(base)
    P.apply_lora(m, P.LoRAConfig(r=4, quantize_base=True))
    q = [x for x in m.modules() if isinstance(x, QuantLinear)]
    assert len(q) == 7 * base.config.n_layers
    idx = torch.randint(0, 256, (2, 12))
    w = base.model.layers[0].mlp.up_proj.weight
    wq = m.model.layers[0].mlp.up_proj.qtensor().dequantize()
    rel = float((wq - w).norm() / w.norm())
    assert 0 < rel < 0.15  # INT4 base is close to, not equal to, fp32
    logits = m(idx)
    logits.sum().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad)
    trainable, total = P.count_params(m)
    assert trainable < 0.1 * total


def test_prefix_and_prompt_tuning_shapes_and_grads(base):
    ex = T.make_examples(["add"], 6)
    p = S.pack(ex, 64)
    pt = P.PrefixTuning(copy.deepcopy(base), n_prefix=4)
    out = pt.packed_logits(p.idx, p.doc, p.pos)
    assert out.shape == (*p.idx.shape, base.config.vocab_size)
    S.masked_loss(out, p.labels).backward()
    assert all(k.grad is not None for k in pt.keys)
    assert not any(q.requires_grad for q in pt.model.parameters())
    # one conversation alone gives the same logits as inside the packed row (prefix seen by every doc)
    ids = torch.tensor([T.encode_chat(ex[1])[0]])
    alone = pt.logits(ids)[0]
    sel = p.doc[0] == 1
    assert (pt.packed_logits(p.idx, p.doc, p.pos)[0, sel] - alone).abs().max() < 1e-4
    pr = P.PromptTuning(copy.deepcopy(base), n_virtual=3)
    assert pr.logits(ids).shape == (1, ids.shape[1], base.config.vocab_size)


def test_prompt_tuning_cached_generate_equals_recomputed_greedy(base):
    """The cached decode (soft prompt prefilled into the KV cache) = greedy argmax over :meth:`logits`."""
    pr = P.PromptTuning(copy.deepcopy(base), n_virtual=4, init_ids=T.encode("upper: ")).eval()
    with torch.no_grad():
        pr.soft.add_(0.3 * torch.randn(pr.soft.shape, generator=torch.Generator().manual_seed(0)))
    ids = torch.tensor([T.prompt_ids(T.make_examples(("upper",), 1, "test", "t0", seed=5)[0].prompt)])
    seq = ids
    with torch.no_grad():
        for _ in range(6):  # recompute the whole sequence each step (the training-time path)
            seq = torch.cat([seq, pr.logits(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(pr.generate(ids, 6), seq)


def test_ties_hand_computed():
    t1 = torch.tensor([0.5, -0.1, 0.3, 0.0])
    t2 = torch.tensor([-0.2, -0.4, 0.1, 0.15])
    t3 = torch.tensor([-0.4, 0.3, 0.0, 0.1])
    # density 1 (no trimming): elected signs = sign(sum) = (-, -, +, +)
    # coord 0: agree {t2,t3} -> mean(-0.2, -0.4) = -0.3; coord 1: {t1,t2} -> -0.25
    # coord 2: {t1,t2} -> 0.2; coord 3: {t2,t3} -> 0.125
    out = P.ties_tensor([t1, t2, t3], density=1.0)
    assert torch.allclose(out, torch.tensor([-0.3, -0.25, 0.2, 0.125]))
    # density 0.5 keeps the top 2 magnitudes: t1 -> (0.5, 0, 0.3, 0), t2 -> (-0.2, -0.4, 0, 0),
    # t3 -> (-0.4, 0.3, 0, 0); sums (-0.1, -0.1, 0.3, 0) -> signs (-, -, +, 0)
    out = P.ties_tensor([t1, t2, t3], density=0.5)
    assert torch.allclose(out, torch.tensor([-0.3, -0.4, 0.3, 0.0]))


def test_ties_matches_peft_merge_utils():
    from peft.utils.merge_utils import ties

    g = torch.Generator().manual_seed(0)
    taus = [torch.randn(6, 5, generator=g) for _ in range(3)]
    theirs = ties(torch.stack(taus), torch.ones(3), density=0.4, majority_sign_method="total")
    assert torch.allclose(P.ties_tensor(taus, density=0.4), theirs, atol=1e-6)


def test_dare_is_unbiased_and_merges_apply(base):
    g = torch.Generator().manual_seed(0)
    t = torch.ones(20000)
    d = P.dare(t, 0.5, g)
    assert abs(float(d.mean()) - 1.0) < 0.03 and float((d == 0).float().mean()) > 0.45
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.model.layers[0].mlp.up_proj.weight += 1.0
    tau = P.task_vector(ft, base)
    avg = P.merge_models(base, [tau, tau], P.MergeSpec("average"))
    ta = P.merge_models(base, [tau, tau], P.MergeSpec("task_arithmetic", lam=0.5))
    for m in (avg, ta):
        assert torch.allclose(m.model.layers[0].mlp.up_proj.weight, ft.model.layers[0].mlp.up_proj.weight)


def test_lora_fraction_shrinks_with_width(base):
    fr = [P.lora_fraction(d, 4) for d in (192, 1024, 4096)]
    assert all(a > b for a, b in zip(fr, fr[1:]))
    m = copy.deepcopy(base)
    P.apply_lora(m, P.LoRAConfig(r=4, target_modules=P.LORA_TARGETS))
    tr, tot = P.count_params(m)
    # hand count for the book LM (d=192, GQA k/v width 64): per layer q 4*(192+192), v 4*(192+64), o 4*(192+192)
    assert tr == 4 * (1536 + 1024 + 1536) and tot == 1_967_808 + tr
    # tied embeddings are one tensor in the model and the formula counts the vocab matrix once too
    assert abs(tr / tot - P.lora_fraction(192, 4, targets=P.LORA_TARGETS)) < 1e-9
    assert tr / tot < 0.01


def test_base_model_scratch_has_the_book_lm_shape(base):
    s = P.base_model("scratch", seed=3)
    assert s.config == base.config and s.num_params() == base.num_params()
    assert not torch.equal(s.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    with pytest.raises(LLMCoreError, match="init must be"):
        P.base_model("random")


def test_prompt_tuning_text_init(base):
    pr = P.PromptTuning(copy.deepcopy(base), n_virtual=5, init_ids=[3, 7])
    emb = base.model.embed_tokens.weight
    assert torch.equal(pr.soft.detach(), emb[[3, 7, 3, 7, 3]])
    assert pr.soft.requires_grad and not any(p.requires_grad for p in pr.model.parameters())


@pytest.mark.parametrize("toy, size", [(True, 7), (False, 11)])
def test_merge_grid_labels(toy, size):
    grid = P.merge_grid(toy)
    labels = {lab for lab, _ in grid}
    assert labels == {"average", "task arithmetic", "TIES"} and len(grid) == size
    assert all(spec.density < 1 for lab, spec in grid if lab == "TIES")  # TIES always trims
    assert P.spec_label(P.MergeSpec("ties", lam=1.2, density=0.5)) == "k=50%, lam=1.2"
    assert P.spec_label(P.MergeSpec("average")) == "lam=1/2"
