"""The training loop: schedule, clipping, learning, checkpoint."""

import math
from dataclasses import replace

import pytest
import torch

from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.training import TrainConfig, evaluate, lr_at, random_windows, train
from llmcore.core.errors import LLMCoreError


def test_warmup_cosine_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert math.isclose(lr_at(0, cfg), 0.1) and math.isclose(lr_at(9, cfg), 1.0)
    assert math.isclose(lr_at(10, cfg), 1.0)
    assert math.isclose(lr_at(55, cfg), 0.55, rel_tol=1e-9)  # halfway: (max + min) / 2
    assert math.isclose(lr_at(100, cfg), 0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_learns_a_repeating_pattern_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    ids = torch.tensor(list(b"abcdefgh" * 200))
    model = Llama(ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, max_seq_len=32))
    before = evaluate(model, ids, 32)
    cfg = TrainConfig(steps=60, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5, grad_clip=1.0)
    res = train(model, cfg, lambda g: random_windows(ids, 8, 32, g), eval_fn=lambda m: evaluate(m, ids, 32),
                checkpoint_dir=tmp_path / "ck")
    assert len(res.loss) == 60 and len(res.grad_norm) == 60 and res.val[-1][0] == 60
    assert res.final_val < 0.2 < before
    loaded = Llama.from_pretrained(tmp_path / "ck")
    assert abs(evaluate(loaded, ids, 32) - res.final_val) < 1e-6
    assert (tmp_path / "ck" / "train_state.json").is_file()


def test_training_is_deterministic():
    ids = torch.tensor(list(b"the quick brown fox jumps over the lazy dog " * 20))
    out = []
    for _ in range(2):
        torch.manual_seed(1)
        model = Llama(ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, max_seq_len=16))
        res = train(model, TrainConfig(steps=5, batch_size=4, seq_len=16, seed=3),
                    lambda g: random_windows(ids, 4, 16, g))
        out.append(res.loss)
    assert out[0] == out[1]


def test_interrupted_run_resumes_exactly(tmp_path):
    """6 steps in one go == 3 steps, a new process-like start (fresh model and optimizer), 3 more."""
    ids = torch.tensor(list(b"pack my box with five dozen liquor jugs " * 20))
    cfg = TrainConfig(steps=6, batch_size=4, seq_len=16, seed=2, warmup_steps=2)

    def fresh():
        torch.manual_seed(5)
        return Llama(ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, max_seq_len=16))

    straight = fresh()
    full = train(straight, cfg, lambda g: random_windows(ids, 4, 16, g))
    first = train(fresh(), replace(cfg, steps=3), lambda g: random_windows(ids, 4, 16, g),
                  state_dir=tmp_path, save_every=3)
    assert first.loss == full.loss[:3]
    # the schedule of the 6-step run: resume from the 3-step state with the full config
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 3
    resumed_model = fresh()
    resumed = train(resumed_model, cfg, lambda g: random_windows(ids, 4, 16, g), state_dir=tmp_path, save_every=3)
    assert resumed.loss == full.loss
    for a, b in zip(straight.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_corrupt_training_state_is_one_clear_error(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"garbage")
    model = Llama(ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, max_seq_len=16))
    with pytest.raises(LLMCoreError, match="delete it"):
        train(model, TrainConfig(steps=2, batch_size=2, seq_len=8), lambda g: random_windows(torch.arange(64), 2, 8, g),
              state_dir=tmp_path, save_every=1)
