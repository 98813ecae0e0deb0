#!/usr/bin/env python
"""The d3rlpy half of ``benchmarks/d3rlpy_cql.py``; runs in the separate d3rlpy environment, never in the book's.

d3rlpy 2.8.1 pins ``gymnasium==1.0.0`` and the book needs ``gymnasium>=1.2``, so the two cannot share one
environment. This script therefore imports nothing from ``llmcore``: it reads the exchange file the book's side
wrote (datasets, network weights, one batch), runs d3rlpy on it and writes its answers as JSON.

    <d3rlpy venv>/bin/python benchmarks/d3rlpy_side.py exchange.npz answers.json

1. **Loss.** A ``DiscreteCQL`` (hidden 64-64, as the book's ``QNet``) gets the book's online and target weights;
   its ``compute_target`` (Double DQN) and ``compute_loss`` (TD + alpha * conservative) are evaluated on the batch.
2. **Returns.** For every dataset and seed, ``DiscreteCQL`` is trained from its own initialisation with the book's
   hyper-parameters and evaluated greedily on CartPole-v1 (the book's evaluation seeds).
"""

from __future__ import annotations

import json
import sys
import time

import d3rlpy
import gymnasium as gym
import numpy as np
import torch
from d3rlpy.constants import ActionSpace
from d3rlpy.dataset import Episode, InfiniteBuffer, ReplayBuffer, Transition, TransitionMiniBatch
from d3rlpy.logging import NoopAdapterFactory
from d3rlpy.models.encoders import VectorEncoderFactory
from d3rlpy.torch_utility import TorchMiniBatch

DEVICE = "cpu:0"


def replay_buffer(obs, actions, rewards, next_obs, terminated) -> ReplayBuffer:
    """The book's transitions, exactly: each becomes a one-transition episode ``[s, s']`` (or ``[s]``, terminated),
    so d3rlpy's transition picker returns ``(s, a, r, s', terminal)`` row for row and samples them uniformly."""
    episodes = []
    for s, a, r, s2, d in zip(obs, actions, rewards, next_obs, terminated):
        if d:
            episodes.append(Episode(s[None], np.array([[a]]), np.array([[r]], np.float32), terminated=True))
        else:
            episodes.append(Episode(np.stack([s, s2]), np.array([[a], [0]]), np.array([[r], [0.0]], np.float32),
                                    terminated=False))
    return ReplayBuffer(InfiniteBuffer(), episodes=episodes, action_space=ActionSpace.DISCRETE, action_size=2)


def make_cql(hp: dict) -> d3rlpy.algos.DiscreteCQL:
    return d3rlpy.algos.DiscreteCQLConfig(
        batch_size=int(hp["batch"]), gamma=float(hp["gamma"]), learning_rate=float(hp["lr"]),
        target_update_interval=int(hp["target_every"]), alpha=float(hp["alpha"]),
        encoder_factory=VectorEncoderFactory(hidden_units=[int(hp["hidden"])] * 2),
    ).create(device=DEVICE)


def load_qnet(q_func, weights: dict, prefix: str) -> None:
    """The book's ``QNet.net`` = Linear, ReLU, Linear, ReLU, Linear -> d3rlpy's encoder layers 0, 2 and ``_fc``."""
    pairs = {"net.0": q_func._encoder._layers[0], "net.2": q_func._encoder._layers[2], "net.4": q_func._fc}
    with torch.no_grad():
        for name, layer in pairs.items():
            layer.weight.copy_(torch.as_tensor(weights[f"{prefix}{name}.weight"]))
            layer.bias.copy_(torch.as_tensor(weights[f"{prefix}{name}.bias"]))


def torch_batch(obs, actions, rewards, next_obs, terminated, gamma) -> TorchMiniBatch:
    transitions = [Transition(observation=s, action=np.array([a]), reward=np.array([r], np.float32),
                              next_observation=s2 if not d else np.zeros_like(s), next_action=np.array([0]),
                              terminal=float(d), interval=1, rewards_to_go=np.array([[r]], np.float32))
                   for s, a, r, s2, d in zip(obs, actions, rewards, next_obs, terminated)]
    return TorchMiniBatch.from_batch(TransitionMiniBatch.from_transitions(transitions), gamma=gamma,
                                     compute_returns_to_go=False, device=DEVICE)


def loss_check(ex, hp: dict) -> dict:
    rows = [ex[f"batch_{k}"] for k in ("obs", "actions", "rewards", "next_obs", "terminated")]
    cql = make_cql(hp)
    cql.build_with_dataset(replay_buffer(*rows))
    weights = {k: ex[k] for k in ex.files if k.startswith(("online.", "target."))}
    load_qnet(cql.impl.modules.q_funcs[0], weights, "online.")
    load_qnet(cql.impl.modules.targ_q_funcs[0], weights, "target.")
    out = {}
    for name, keep in (("all", np.ones(len(rows[0]), bool)), ("small_td", ex["small_td"])):
        batch = torch_batch(*(r[keep] for r in rows), gamma=float(hp["gamma"]))
        with torch.no_grad():
            target = cql.impl.compute_target(batch)
            loss = cql.impl.compute_loss(batch, target)
        out[name] = {"target": target.squeeze(1).tolist(), "loss": float(loss.loss),
                     "td": float(loss.td_loss), "conservative": float(loss.conservative_loss)}
    return out


def evaluate(cql, episodes: int, seed: int, max_steps: int = 500) -> list[float]:
    """Greedy return of the first episode on CartPole-v1 with reset seeds ``seed + i`` (the book's ``evaluate``)."""
    returns = []
    for i in range(episodes):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed + i)
        total = 0.0
        for _ in range(max_steps):
            obs, r, te, tr, _ = env.step(int(cql.predict(obs[None].astype(np.float32))[0]))
            total += r
            if te or tr:
                break
        env.close()
        returns.append(total)
    return returns


def returns(ex, hp: dict) -> dict:
    out = {}
    for name in [str(n) for n in ex["datasets"]]:
        buffer = replay_buffer(*(ex[f"{name}_{k}"] for k in ("obs", "actions", "rewards", "next_obs", "terminated")))
        for seed in range(int(hp["seeds"])):
            d3rlpy.seed(seed)
            torch.set_num_threads(1)
            cql = make_cql(hp)
            start = time.perf_counter()
            cql.fit(buffer, n_steps=int(hp["steps"]), n_steps_per_epoch=int(hp["steps"]), show_progress=False,
                    logger_adapter=NoopAdapterFactory(), save_interval=10**9)
            out[f"{name}/{seed}"] = {"returns": evaluate(cql, int(hp["eval_episodes"]), int(hp["eval_seed"])),
                                     "train_s": time.perf_counter() - start}
            print(f"d3rlpy DiscreteCQL {name} seed {seed}: {np.mean(out[f'{name}/{seed}']['returns']):.1f}",
                  flush=True)
    return out


def main(exchange: str, answers: str) -> None:
    ex = np.load(exchange, allow_pickle=False)
    hp = json.loads(str(ex["hparams"]))
    result = {"d3rlpy": d3rlpy.__version__, "gymnasium": gym.__version__, "torch": torch.__version__,
              "loss": loss_check(ex, hp), "runs": returns(ex, hp) if hp["seeds"] > 0 else {}}
    with open(answers, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: d3rlpy_side.py EXCHANGE.npz ANSWERS.json")
    main(sys.argv[1], sys.argv[2])
