"""The book LM: the shipped checkpoint, the recipe that made it, Hugging Face interop, clear errors."""

import json
import shutil
from dataclasses import asdict, replace

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from llmcore.architecture.book_lm import (
    BOOK_LM_CONFIG,
    FILES,
    PretrainConfig,
    book_lm_path,
    load_book_lm,
    nats_per_byte,
    pretrain,
    token_byte_lengths,
    token_streams,
    train_tokenizer,
)
from llmcore.architecture.llama import Llama
from llmcore.core.corpus import SNAPSHOT_SHA256, book_corpus
from llmcore.core.errors import LLMCoreError


@pytest.fixture(scope="module")
def lm():
    return load_book_lm()


@pytest.fixture(scope="module")
def recipe_tokenizer():
    return train_tokenizer()


def test_shipped_checkpoint_is_complete_small_and_from_this_corpus(lm):
    for name in FILES:
        assert (book_lm_path() / name).is_file()
    assert (book_lm_path() / "model.safetensors").stat().st_size <= 10 * 2**20
    assert lm.log["corpus_sha256"] == SNAPSHOT_SHA256
    assert lm.model.config == BOOK_LM_CONFIG and lm.metrics["params"] == lm.model.num_params()
    assert json.loads(json.dumps(asdict(PretrainConfig()))) == lm.log["pretrain_config"]


def test_shipped_weights_reproduce_the_recorded_validation_loss(lm):
    _, val_ids = token_streams(lm.tokenizer)
    per_token, per_byte = nats_per_byte(lm.model, val_ids, token_byte_lengths(lm.tokenizer),
                                        lm.log["pretrain_config"]["seq_len"])
    assert per_token == pytest.approx(lm.metrics["val_nats_per_token"], rel=1e-4)
    assert per_byte == pytest.approx(lm.metrics["val_nats_per_byte"], rel=1e-4)


def test_nats_per_byte_by_hand():
    """A 'model' that puts probability 1/4 on every id: each predicted token costs log 4 nats; bytes per
    token are the table's, so nats/byte = log 4 * tokens / bytes."""

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, idx, labels=None):
            logits = torch.zeros(*idx.shape, 4) + self.w
            shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
            return logits, torch.nn.functional.cross_entropy(logits.view(-1, 4), shifted.reshape(-1))

    ids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 3])  # two windows of 4 -> predicts ids 1,2,3 and 1,2,3
    per_token, per_byte = nats_per_byte(Uniform(), ids, torch.tensor([1, 2, 3, 4]), seq_len=4)
    assert per_token == pytest.approx(torch.log(torch.tensor(4.0)).item())
    assert per_byte == pytest.approx(per_token * 6 / (2 + 3 + 4) / 2)


def test_hugging_face_loads_the_shipped_folder_and_agrees(lm):
    hf = LlamaForCausalLM.from_pretrained(book_lm_path()).eval()
    hf_tok = AutoTokenizer.from_pretrained(book_lm_path())
    text = book_corpus().docs_val[3]
    ids = lm.tokenizer.encode(text)[:200]
    assert hf_tok(text, add_special_tokens=False)["input_ids"][:200] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - lm.model(x)).abs().max() < 1e-4
        ours = lm.model.generate(x[:, :20], 12)
        theirs = hf.generate(x[:, :20], max_new_tokens=12, do_sample=False, pad_token_id=lm.tokenizer.pad_id)
    assert torch.equal(ours, theirs)


def test_recipe_tokenizer_is_the_shipped_one(lm, recipe_tokenizer):
    assert recipe_tokenizer.merges == lm.tokenizer.merges
    assert recipe_tokenizer.special == lm.tokenizer.special


def test_recipe_first_steps_reproduce_the_logged_losses(lm, recipe_tokenizer, tmp_path):
    """Re-running the recipe's first 6 steps gives the losses in training_log.json (the schedule's warmup
    does not depend on the total step count). The tolerance covers other CPUs' float kernels."""
    short = pretrain(replace(PretrainConfig(), steps=6), out=tmp_path / "out", work=tmp_path / "work",
                     tokenizer=recipe_tokenizer)
    logged = lm.log["curves"]["loss"][:6]
    assert short.log["curves"]["loss"] == pytest.approx(logged, abs=2e-3)


def test_missing_or_corrupt_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "book_lm"
    shutil.copytree(book_lm_path(), bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # a truncated download / disk full
    with pytest.raises(LLMCoreError, match="corrupt.*make pretrain"):
        load_book_lm(path=bad)
    (bad / "config.json").write_text('{"llmcore": {"vocab_size": 2048, "d_model": 190, "n_heads": 6}}')
    with pytest.raises(LLMCoreError, match="make pretrain"):
        load_book_lm(path=bad)
    (bad / "tokenizer.json").unlink()
    with pytest.raises(LLMCoreError, match="lacks tokenizer.json"):
        load_book_lm(path=bad)


def test_book_lm_is_an_ordinary_llama(lm):
    assert isinstance(lm.model, Llama) and not lm.model.training
    assert lm.tokenizer.vocab_size == lm.model.config.vocab_size
    assert (lm.tokenizer.pad_id, lm.tokenizer.bos_id, lm.tokenizer.eos_id) == (
        BOOK_LM_CONFIG.pad_id, BOOK_LM_CONFIG.bos_id, BOOK_LM_CONFIG.eos_id)
