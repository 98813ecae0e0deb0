"""PG / AC: loss identities, REINFORCE variance reduction, seeded reproducibility, a short learning check."""

import importlib.util
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from llmcore.alignment import pg_ac as PG
from llmcore.core.errors import LLMCoreError


def test_clip_objective_closed_form():
    assert PG.check_clip_objective(0.2) < 1e-12
    assert PG.check_clip_objective(0.1) < 1e-12


def test_ppo_gradient_equals_pg_at_ratio_one():
    assert PG.check_first_step_gradient(seed=0) < 1e-6


def test_ppo_clipping_zeroes_gradient_outside_trust_region():
    # A > 0 and ratio already above 1 + eps: the clipped branch is active, no policy gradient
    torch.manual_seed(0)
    agent = PG.ActorCritic(4, 2)
    obs, acts = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with torch.no_grad():
        old = agent.dist(obs).log_prob(acts) - 0.5  # ratio = e^0.5 > 1.2
    loss, st = PG.ppo_loss(agent, obs, acts, old, torch.ones(8), torch.zeros(8), 0.2, 0.0, 0.0)
    grads = torch.autograd.grad(loss, list(agent.actor.parameters()))
    assert all(float(g.abs().max()) == 0.0 for g in grads) and st["clipfrac"] == 1.0


def test_evaluate_matches_categorical():
    torch.manual_seed(1)
    agent = PG.ActorCritic(4, 3)
    obs, acts = torch.randn(16, 4), torch.randint(0, 3, (16,))
    logp, ent, _ = agent.evaluate(obs, acts)
    d = torch.distributions.Categorical(logits=agent.actor(obs))
    assert torch.allclose(logp, d.log_prob(acts), atol=1e-6) and torch.allclose(ent, d.entropy(), atol=1e-6)


def test_baseline_cuts_variance_and_keeps_the_mean():
    torch.manual_seed(0)
    env = gym.make("CartPole-v1")
    v = PG.gradient_variance(PG.ActorCritic(4, 2), env, "init", n_batches=30, batch_episodes=4, fit_episodes=60)
    env.close()
    assert v.ratio() > 1.5 and v.ratio("constant") > 1.0
    z = (v.mean_grad["none"] - v.mean_grad["learned V(s)"]) / torch.sqrt(
        v.mean_grad_se["none"] ** 2 + v.mean_grad_se["learned V(s)"] ** 2 + 1e-12)
    assert float(z.abs().median()) < 1.5


def test_training_is_seeded_and_reproducible():
    cfg = replace(PG.PPO_CONFIG, total_steps=2048, num_envs=4, num_steps=128)
    a, b = PG.train(cfg, 5), PG.train(cfg, 5)
    assert a.stats.returns == b.stats.returns
    assert [x["pg_loss"] for x in a.log] == [x["pg_loss"] for x in b.log]
    c = PG.train(cfg, 6)
    assert a.stats.returns != c.stats.returns


def test_ppo_learns_quickly():
    r = PG.train(replace(PG.PPO_CONFIG, total_steps=30_720), seed=0)
    assert r.stats.mean_last(20) > 150  # random policy: ~22


def test_config_validation():
    with pytest.raises(LLMCoreError):
        replace(PG.PPO_CONFIG, algo="dqn").validate()
    with pytest.raises(LLMCoreError):
        replace(PG.PPO_CONFIG, num_minibatches=7).validate()


def test_curves_on_grid():
    cfg = replace(PG.A2C_CONFIG, total_steps=4096)
    runs = [PG.train(cfg, s) for s in (0, 1)]
    x, Y = PG.curves_on_grid(runs, points=11)
    assert Y.shape == (2, 11) and np.isnan(Y[:, 0]).all() and np.isfinite(Y[:, -1]).all()


def test_parallel_runs_equal_sequential_runs():
    jobs = [(replace(PG.PPO_CONFIG, total_steps=1024), 0), (replace(PG.A2C_CONFIG, total_steps=1024), 1)]
    seq = PG.train_many(jobs, workers=1)
    par = PG.train_many(jobs, workers=2)
    for a, b in zip(seq, par):
        assert a.stats.returns == b.stats.returns
        assert [x["pg_loss"] for x in a.log] == [x["pg_loss"] for x in b.log]


def test_benchmark_overrides_are_typed_by_the_config():
    spec = importlib.util.spec_from_file_location(
        "ppo_cartpole", Path(__file__).resolve().parents[2] / "benchmarks" / "ppo_cartpole.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    kw = bench.parse_overrides(["lr=2e-3", "num_envs=8", "norm_adv=true", "anneal_lr=0"])
    assert kw == {"lr": 0.002, "num_envs": 8, "norm_adv": True, "anneal_lr": False}
    cfg = replace(PG.A2C_CONFIG, **kw)
    assert isinstance(cfg.num_envs, int) and cfg.num_steps == PG.A2C_CONFIG.num_steps
    with pytest.raises(LLMCoreError, match="FIELD=VALUE"):
        bench.parse_overrides(["learning_rate=1"])
    with pytest.raises(LLMCoreError):
        bench.parse_overrides(["lr"])


def test_diagrams_draw_the_mechanism():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3)
    ax = PG.plot_actor_critic(axes[0])
    assert ax is axes[0]
    assert len(ax.patches) == 6  # env, actor, critic, rollout, GAE, loss
    assert sum(t.arrow_patch is not None for t in ax.texts if hasattr(t, "arrow_patch")) == 8  # the data flow
    for a, adv in ((axes[1], 1.0), (axes[2], -1.0)):
        assert PG.plot_ppo_clip(a, adv, 0.2) is a
        clipped, unclipped = a.lines[0].get_ydata(), a.lines[1].get_ydata()
        x = a.lines[0].get_xdata()
        flat = (x > 1.2) if adv > 0 else (x < 0.8)
        assert np.allclose(clipped[flat], (1.2 if adv > 0 else 0.8) * adv)  # the flat piece is where it should be
        assert np.allclose(clipped[~flat], unclipped[~flat])
    with pytest.raises(LLMCoreError, match="non-zero advantage"):
        PG.plot_ppo_clip(axes[1], 0.0)
    plt.close(fig)
