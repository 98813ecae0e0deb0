"""SFT: task generator, chat template, prompt masking, packing boundaries, HF loss cross-check."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from llmcore.alignment import sft as S
from llmcore.alignment import tasks as T
from llmcore.architecture.book_lm import BOOK_LM_CONFIG
from llmcore.architecture.llama import Llama
from llmcore.core.errors import LLMCoreError

#: a small model in the book LM's vocabulary (the chat template's ids)
TINY = replace(BOOK_LM_CONFIG, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=64, max_seq_len=128)


@pytest.fixture(scope="module")
def model() -> Llama:
    torch.manual_seed(0)
    m = Llama(TINY).eval()
    with torch.no_grad():  # larger weights than the init, so masking mistakes change the numbers
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    return m


def test_families_are_verifiable_and_splits_disjoint():
    for fam in T.FAMILIES:
        train = T.make_examples([fam], 200, "train", "all", seed=1)
        test = T.make_examples([fam], 50, "test", "all", seed=1, unique=True)
        assert not {e.key for e in train} & {e.key for e in test}, fam
        assert all(T.check(e, e.response) and not T.check(e, e.response + "x") for e in test)
    ex = T.make_examples(["add"], 30, templates="heldout")
    assert {e.template for e in ex} == {2}
    assert {e.template for e in T.make_examples(["add"], 60, templates="train")} == {0, 1}
    e = T.make_examples(["add"], 1)[0]
    a, b = e.prompt.rstrip("=").split("+")
    assert int(e.response) == int(a) + int(b)
    with pytest.raises(LLMCoreError):
        T.make_examples(["nope"], 3)


def test_chat_template_and_prompt_mask():
    e = T.Example("add", 0, "12+7=", "19", "12+7")
    ids, m = T.encode_chat(e)
    assert T.render(ids) == "<bos><|user|>12+7=<|assistant|>19<eos>"
    lab = S.labels_for(ids, m)
    scored = [i for i in lab if i != -100]
    assert scored == [ord("1"), ord("9"), T.EOS]  # only the response (and its <eos>) is scored; byte ids = bytes
    assert S.labels_for(ids, m, mask_prompt=False) == ids


def test_task_text_pretokenization():
    """Digits are one token each and a word keeps its ids wherever it stands (hand-checked cases)."""
    assert len(T.encode("07+45=")) == 6 and len(T.encode("10+99=")) == 6  # the BPE alone merges "10", "99"
    assert len(T.TOK.encode("10+99=")) < 6
    whole, word = T.encode("name of: def lexists(path):"), T.encode("lexists")
    assert any(whole[i:i + len(word)] == word for i in range(len(whole)))
    for text in ("name of: def lexists(path):", "46 ok", "  a_b,c  9x", "ünï +"):
        assert T.TOK.decode(T.encode(text)) == text
    assert T.encode("x", add_bos=True)[0] == T.BOS


def test_identifier_families():
    defs = T.python_defs()
    assert len(defs) > 500 and ("abspath", "path") in defs
    e = T.Example("fname", 0, "name of: def abspath(path):", "abspath", "abspath(path)")
    assert T.check(e, "abspath") and not T.check(e, "path")
    ex = T.make_examples(["fname", "fargs", "fcall"], 30, seed=2)
    for x in ex:
        name, args = x.key[:-1].split("(", 1)
        assert x.response == {"fname": name, "fargs": args, "fcall": x.key}[x.family]
        assert name in x.prompt and args in x.prompt
    words, args = T.identifier_parts()
    assert "path" in args and "read" in words
    for fam in T.FAMILIES:  # every family's decoding budget covers every answer (+ <eos>), toy and full
        for full in (False, True):
            drawn = T.make_examples([fam], 3000 if fam.startswith("f") else 300, seed=4, full=full)
            assert max(len(T.encode(e.response)) for e in drawn) < T.max_response_len([fam], full), (fam, full)
    assert T.max_response_len(["add", "fcall"]) == T.max_response_len(["fcall"])  # the longest family decides
    with pytest.raises(LLMCoreError, match="unknown task families"):
        T.max_response_len(["nope"])
    assert len({e.key for e in T.make_examples(["fname"], 3000, seed=5)}) > 2900  # new signatures, few repeats


def test_corruption_rate_and_plausibility():
    ex = T.make_examples(["add"], 2000, seed=3)
    bad = T.corrupt(ex, 0.3, seed=0)
    wrong = sum(a.response != b.response for a, b in zip(ex, bad)) / len(ex)
    assert 0.25 < wrong < 0.35
    assert all(b.response.isdigit() for b in bad)


def test_packing_boundaries():
    ex = T.make_examples(["add", "upper"], 40, seed=2)
    p = S.pack(ex, 64)
    assert sum(int((p.doc[r].unique() >= 0).sum()) for r in range(len(p))) == len(ex)  # none lost
    for r in range(len(p)):
        starts = (p.pos[r] == 0) & (p.doc[r] >= 0)
        assert (p.idx[r][starts] == T.BOS).all()
        assert (p.labels[r][starts] == -100).all()  # no target crosses a document boundary
    unm = S.pack(ex, 64, mask_prompt=False)
    starts = (unm.pos == 0) & (unm.doc >= 0)
    assert (unm.labels[starts] == -100).all() and (unm.labels[(unm.pos > 0)] != -100).all()
    mask = S.packed_mask(p.doc[:1])[0, 0]
    d = p.doc[0]
    assert not mask[d == 1][:, d == 0].any()  # doc 1 cannot see doc 0
    with pytest.raises(LLMCoreError):
        S.pack(ex, 8)


def test_packed_logits_equal_unpacked(model):
    ex = T.make_examples(["add", "upper", "reverse"], 18, seed=4)
    assert S.packing_max_diff(model, ex, 64) < 1e-4


def test_masked_loss_equals_hf_labels_minus_100(model):
    ex = T.make_examples(["add", "upper"], 16, seed=5)
    ours, hf, hf_unmasked = S.hf_crosscheck(model, ex)
    assert abs(ours - hf) < 1e-5
    assert abs(ours - hf_unmasked) > 1e-3  # masking changes the loss


def test_packed_loss_equals_padded_loss(model):
    ex = T.make_examples(["add", "upper"], 12, seed=6)
    idx, lab, att = S.pad_batch(ex)
    padded = S.masked_loss(model(idx, attention_mask=att), lab)
    p = S.pack(ex, 64)
    packed = S.masked_loss(S.packed_logits(model, p.idx, p.doc, p.pos), p.labels)
    assert torch.allclose(padded, packed, atol=1e-5)


def test_fine_tuning_the_book_lm_learns_a_task():
    cfg = S.SFTConfig(families=("fname",), n_train=600, steps=40, batch_rows=8, seq_len=48)
    model, losses = S.train_sft(cfg)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    answers = S.greedy_answers(model, T.make_examples(["fname"], 4, "test", "first"), 7)
    assert all(isinstance(a, str) for a in answers)
    with pytest.raises(LLMCoreError):
        S.initial_model("random")


class _Wrapped(torch.nn.Module):
    """Not a ``Llama``: ``greedy_answers`` falls back to one batch per prompt length (no padding)."""

    def __init__(self, m: Llama) -> None:
        super().__init__()
        self.m = m

    def generate(self, *a, **kw):
        return self.m.generate(*a, **kw)


def test_greedy_answers_of_padded_batches_equal_one_batch_per_prompt_length(model):
    ex = T.make_examples(["fcall", "fname", "upper"], 48, "test", "first", seed=4)
    assert len({len(T.prompt_ids(e.prompt)) for e in ex}) > 5  # many lengths: padding is exercised
    padded = S.greedy_answers(model, ex, 12, batch_size=20)  # 3 batches cut across the lengths
    assert padded == S.greedy_answers(_Wrapped(model), ex, 12)
    assert len(set(padded)) > 5  # the answers depend on the prompts (not one constant string)


def test_stop_after_runs_a_prefix_of_the_schedule(model):
    """The first k steps of a 10-step run, stopped early, are the full run's first k steps exactly."""
    data = S.pack(T.make_examples(["fname"], 40, seed=1), 48)
    runs = []
    for stop in (None, 4):
        m = Llama(TINY)
        m.load_state_dict(model.state_dict())
        runs.append(S.train_packed(m, data, 10, batch_rows=4, warmup=3, stop_after=stop))
    assert len(runs[1]) == 4 and runs[1] == runs[0][:4]


def test_rejection_sampling_keeps_only_verified_samples(model):
    ex = T.make_examples(["fargs"], 24, seed=3)
    unfiltered, accepted = S.rejection_sample(model, ex, temperature=1.0, seed=0)
    assert [u.prompt for u in unfiltered] == [e.prompt for e in ex]
    assert all(T.check(e, u.response) == (u in accepted) for e, u in zip(ex, unfiltered))
    again, _ = S.rejection_sample(model, ex, temperature=1.0, seed=0)
    assert again == unfiltered  # seeded: the same samples


def test_arith_warm_start_is_cached_and_a_corrupt_cache_is_retrained(tmp_path, monkeypatch):
    """Trained, loaded and retrained-after-corruption warm starts are the same weights, and the global
    RNG ends in the same state on every path (later draws do not depend on whether the cache hit)."""
    monkeypatch.setenv("LLMCORE_OUTPUT", str(tmp_path))
    cfg = S.ArithConfig(sft_steps=6, sft_batch=8)
    fresh = S.arith_sft_model(cfg, "cpu", seed=3, cache=False)
    after_fresh = torch.rand(2)
    trained = S.arith_sft_model(cfg, "cpu", seed=3)
    after_trained = torch.rand(2)
    entry = next(p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("arith_sft-"))
    mtime = (entry / "model.safetensors").stat().st_mtime_ns
    loaded = S.arith_sft_model(cfg, "cpu", seed=3)
    after_loaded = torch.rand(2)
    assert (entry / "model.safetensors").stat().st_mtime_ns == mtime  # a hit: not rewritten
    for m in (trained, loaded):
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), m.state_dict().values()))
    assert torch.equal(after_fresh, after_trained) and torch.equal(after_fresh, after_loaded)
    (entry / "model.safetensors").write_bytes(b"\x00" * 40)  # a truncated file
    again = S.arith_sft_model(cfg, "cpu", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values()))
    assert torch.equal(fresh.state_dict()["model.embed_tokens.weight"], again.lm_head.weight)  # tied again


def test_sft_data_path_diagram_draws_the_real_packing():
    ax = Figure().subplots()
    assert S.plot_sft_data_path(ax, seq_len=64, n_rows=2) is ax
    examples = T.make_examples(("fname", "fargs"), 8, seed=1)
    ids, resp = T.encode_chat(examples[0])
    data = S.pack(examples, 64)
    # one cell per token of the conversation, and per slot of each packed row in the row and label bands
    assert len(ax.patches) == len(ids) + 2 * 2 * 64
    orange = sum(to_hex(p.get_facecolor()) == "#fdae6b" for p in ax.patches)
    assert orange == sum(resp) + int((data.labels[:2] != -100).sum())  # scored tokens, nothing else
    hatched = sum(p.get_hatch() == "///" for p in ax.patches)
    assert hatched == int((data.doc[:2] < 0).sum())  # padding slots
    texts = [t.get_text() for t in ax.texts]
    assert "1. chat template\n(one conversation)" in texts and sum(t.startswith("3. labels row") for t in texts) == 2
