r"""Multi-turn rollouts of the book LM against the user simulator, the loss mask, and per-turn credit.

A dialogue is one token sequence in which the agent's sampled turns alternate with environment segments
(the user's answers, the tool's outputs, ``<pad>``). Only the agent's tokens are actions, so every loss
is masked by the **agent mask** :math:`m_t` (1 on tokens the policy sampled, through its ``<eos>``; 0 on
the opening, on user and tool tokens and on padding):

.. math::
    \mathcal L(\theta) = -\frac1{\sum_t m_t}\sum_t m_t\,\ell_t(\theta), \qquad
    \frac{\partial\mathcal L}{\partial z_t} = 0 \ \text{ wherever } m_{t+1} = 0,

where :math:`z_t` are the logits that predict token :math:`t+1` (:func:`logit_grad_by_kind` measures it).

**Two kinds of advantage.** GRPO over whole trajectories gives every agent token of dialogue :math:`i`
the same :math:`\hat A_i` (its return against its group's mean). PPO with **per-turn credit** has a value
head read the hidden state at the ``<|assistant|>`` token that opens turn :math:`k` (the state
:math:`s_k`), and runs GAE over *turns* with the per-turn rewards :math:`r_k` of the simulator:

.. math::
    \delta_k = r_k + \gamma V(s_{k+1}) - V(s_k), \qquad \hat A_k = \sum_{l\ge0} (\gamma\lambda)^l \delta_{k+l},

so a redundant question is charged its own turn penalty, not the whole dialogue's outcome. The advantage
:math:`\hat A_k` is then shared by the few tokens of turn :math:`k` (:func:`turn_token_advantages`).

Why not the kit's ``generate``: it samples one response to a fixed prompt; here the prompt of turn
:math:`k+1` depends on the environment's answer to turn :math:`k`, so :func:`rollout` drives the model's
KV cache (the kit's :class:`~llmcore.architecture.kv_cache.DynamicKVCache`) turn by turn itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmcore.alignment.agentic_rl import user_sim as U
from llmcore.architecture.kv_cache import DynamicKVCache
from llmcore.core.errors import LLMCoreError
from llmcore.foundation_rl.gae import compute_gae


# ---- the fixed layout: where turn k lives ------------------------------------------------------------------
def agent_positions(k: int) -> slice:
    """Token positions of agent turn ``k`` (0-based)."""
    start = U.W_OPEN + k * U.W_TURN
    return slice(start, start + U.W_AGENT)


def state_position(k: int) -> int:
    """Position of the ``<|assistant|>`` token that opens turn ``k``: the hidden state :math:`s_k` read by
    the value head (it has seen the whole dialogue before the turn)."""
    return U.W_OPEN + k * U.W_TURN - 1


def turn_of_position(length: int) -> torch.Tensor:
    """``(length,)``: the turn index of every agent-slot position, ``-1`` for environment positions."""
    out = torch.full((length,), -1, dtype=torch.long)
    for k in range((length - U.W_OPEN) // U.W_TURN + 1):
        s = agent_positions(k)
        out[s.start:min(s.stop, length)] = k
    return out


@dataclass
class Rollouts:
    """A batch of ``B`` finished dialogues, ``L`` tokens, at most ``K`` agent turns."""

    ids: torch.Tensor  # (B, L) long
    mask: torch.Tensor  # (B, L) float: the agent mask (1 = a sampled agent token)
    rewards: torch.Tensor  # (B, K) per-turn rewards (0 after the end)
    turn_mask: torch.Tensor  # (B, K) 1 where turn k happened
    success: torch.Tensor  # (B,) bool
    turns: torch.Tensor  # (B,) agent turns taken
    tool_calls: torch.Tensor  # (B,) find calls
    ambiguous: torch.Tensor  # (B,) "not sure" answers received

    @property
    def returns(self) -> torch.Tensor:
        """``(B,)`` episode returns :math:`\\mathbb 1[\\text{success}] - cK`."""
        return self.rewards.sum(1)


@torch.no_grad()
def rollout(model, users: list[U.BookingUser], temperature: float = 1.0,
            generator: torch.Generator | None = None) -> Rollouts:
    """Play one dialogue per user with ``model`` as the agent, all rows in lock-step.

    Each turn: sample ``W_AGENT`` tokens (a row that has emitted ``<eos>`` this turn, or whose dialogue
    has ended, is fed ``<pad>``, mask 0), hand the turn to its user, feed the ``W_ENV`` reply tokens
    (mask 0). ``temperature=0`` is greedy. Stops when every dialogue has ended.
    """
    if not users:
        raise LLMCoreError("rollout needs at least one user")
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    B, K = len(users), users[0].cfg.max_turns
    kv = DynamicKVCache(model.config.n_layers)
    ids = torch.tensor([u.opening() for u in users], device=dev)
    mask = torch.zeros_like(ids, dtype=torch.float)
    rewards, turn_mask = torch.zeros(B, K), torch.zeros(B, K)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    logits = model(ids, kv_cache=kv)[:, -1].float()
    for k in range(K):
        turn_ids, turn_m = [], []
        ended = done.clone()  # rows whose turn is over (dialogue ended, or <eos> emitted)
        for _ in range(U.W_AGENT):
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            nxt = torch.where(ended, torch.full_like(nxt, U.PAD), nxt)
            turn_m.append((~ended).float())
            turn_ids.append(nxt)
            ended = ended | (nxt == U.EOS)
            logits = model(nxt[:, None], kv_cache=kv)[:, -1].float()
        turn_ids, turn_m = torch.stack(turn_ids, 1), torch.stack(turn_m, 1)
        env = torch.full((B, U.W_ENV), U.PAD, dtype=torch.long)
        for b, u in enumerate(users):
            if not done[b]:
                reply, r, end, _ = u.respond(turn_ids[b].tolist())
                env[b] = torch.tensor(reply)
                rewards[b, k], turn_mask[b, k] = r, 1.0
                done[b] = end
        env = env.to(dev)
        ids = torch.cat([ids, turn_ids, env], 1)
        mask = torch.cat([mask, turn_m, torch.zeros(B, U.W_ENV, device=dev)], 1)
        if bool(done.all()):
            break
        logits = model(env, kv_cache=kv)[:, -1].float()
    model.train(was_training)
    t = torch.tensor
    return Rollouts(ids, mask, rewards.to(dev), turn_mask.to(dev), t([u.success for u in users], device=dev),
                    t([u.turns for u in users], device=dev), t([u.tool_calls for u in users], device=dev),
                    t([u.ambiguous for u in users], device=dev))


# ---- log-probs, values, the loss mask -------------------------------------------------------------------------
def token_logprobs(model, ids: torch.Tensor, return_hidden: bool = False):
    r"""``(B, L)``: :math:`\log\pi(x_t\mid x_{<t})` of every token of the dialogues ``ids (B, L)`` (column 0,
    which nothing predicts, is 0); with ``return_hidden`` also the hidden states ``(B, L, d)``.

    Not :func:`llmcore.alignment.ppo_dpo.token_logprobs`: that one scores one response after one prompt, while a
    dialogue interleaves agent and environment segments, so every position is scored and the agent mask selects."""
    h = model.hidden_states(ids)
    logp = torch.log_softmax(model.lm_head(h[:, :-1]).float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    logp = torch.cat([torch.zeros_like(logp[:, :1]), logp], 1)
    return (logp, h) if return_hidden else logp


def turn_values(value_head: torch.nn.Module, h: torch.Tensor, n_turns: int) -> torch.Tensor:
    """``(B, K)``: :math:`V(s_k)` read at each turn's opening ``<|assistant|>`` token."""
    pos = torch.tensor([state_position(k) for k in range(n_turns)], device=h.device)
    return value_head(h[:, pos]).squeeze(-1)


def per_turn_gae(rewards: torch.Tensor, values: torch.Tensor, turn_mask: torch.Tensor, gamma: float,
                 lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over turns (the Part 1 :func:`~llmcore.foundation_rl.gae.compute_gae`, time = turn): rewards,
    values, turn mask ``(B, K)`` -> ``(advantages, returns)``, both ``(B, K)``, zero after the last turn.
    The last turn of each dialogue is terminal (nothing is bootstrapped after it)."""
    last = turn_mask.sum(1).long() - 1
    dones = (torch.arange(turn_mask.shape[1], device=turn_mask.device)[None] >= last[:, None]).float()
    adv, ret = compute_gae(rewards.T, (values * turn_mask).T, dones.T, torch.zeros_like(rewards[:, 0]), gamma, lam)
    return adv.T * turn_mask, ret.T * turn_mask


def turn_token_advantages(turn_adv: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, K)`` per-turn advantages -> ``(B, length)`` per-token: each agent slot gets its turn's value
    (multiply by the agent mask to keep only sampled tokens)."""
    turn = turn_of_position(length).to(turn_adv.device)
    k = turn.clamp(min=0, max=turn_adv.shape[1] - 1)
    return turn_adv[:, k] * (turn >= 0).float()


def logit_grad_by_kind(model, ids: torch.Tensor, mask: torch.Tensor, adv: torch.Tensor) -> dict[str, float]:
    r"""The loss-mask check: backpropagate a masked policy-gradient loss
    :math:`-\sum_t m_t A_t \log\pi(x_t)/\sum_t m_t` to the logits, and return the largest absolute gradient
    on the logits that predict **agent** tokens and on those that predict **environment** tokens (user,
    tool, opening, padding). The second must be exactly 0."""
    h = model.hidden_states(ids)
    z = model.lm_head(h).float()
    z.retain_grad()
    logp = torch.log_softmax(z[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m, a = mask[:, 1:], adv[:, 1:]
    loss = -(m * a * logp).sum() / m.sum().clamp(min=1.0)
    loss.backward()
    g = z.grad[:, :-1].abs().amax(-1)  # (B, L-1): largest gradient on the logits predicting token t+1
    model.zero_grad(set_to_none=True)
    return {"agent": float(g[m > 0].max()), "environment": float(g[m == 0].max()),
            "agent tokens": int((m > 0).sum()), "environment tokens": int((m == 0).sum())}


def summary(r: Rollouts) -> dict[str, float]:
    """Success rate, mean turns, turns per success (all turns / successes), mean turns of the successful
    dialogues, mean return and tool calls of a batch of dialogues."""
    s, turns = r.success.float(), r.turns.float()
    n = float(s.sum())
    return {"success": float(s.mean()), "turns": float(turns.mean()),
            "turns per success": float(turns.sum()) / n if n else float("nan"),  # every turn spent / successes
            "turns of a successful dialogue": float((turns * s).sum()) / n if n else float("nan"),
            "return": float(r.returns.mean()), "tool calls": float(r.tool_calls.float().mean())}


def habits(ids, turns) -> dict[str, float]:
    """The demonstrator's three habits, counted in finished dialogues ``ids (B, L)`` with ``turns (B,)``
    agent turns; means per dialogue of: re-asks of a slot already known, ``check`` confirmations, bookings
    with no search before them (a made-up code), moving on after a ``not sure`` about an unknown slot (any
    turn but the same question again: a guess, unless the agent comes back to it), and invalid turns."""
    counts = {"re-asks of a known slot": 0, "confirmations": 0, "bookings without a search": 0,
              "moves on after 'not sure'": 0, "invalid turns": 0}
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    turns = turns.tolist() if hasattr(turns, "tolist") else turns
    for row, n in zip(ids, turns):
        opening = row[:U.W_OPEN]
        known = {s for s in U.SLOTS if U.W[s][0] in opening}
        unsure, searched = None, False  # the slot whose last answer was "not sure"; a find happened
        for k in range(int(n)):
            a = U.parse_action(row[agent_positions(k)])
            if unsure is not None and a != ("ask", unsure):
                counts["moves on after 'not sure'"] += 1
            unsure = None
            if a[0] == "ask":
                counts["re-asks of a known slot"] += a[1] in known
                env = row[agent_positions(k).stop:agent_positions(k).stop + U.W_ENV]
                if env[1] in U.DIGIT_OF:
                    known.add(a[1])
                elif tuple(env[1:3]) == U.W["not sure"] and a[1] not in known:
                    unsure = a[1]
            counts["confirmations"] += a[0] == "check"
            counts["bookings without a search"] += a[0] == "book" and not searched
            searched |= a[0] == "find"
            counts["invalid turns"] += a[0] == "invalid"
    return {k: v / max(len(ids), 1) for k, v in counts.items()}


def users_for(cfg: U.SimConfig, seeds) -> list[U.BookingUser]:
    """One fresh user per seed (``np.random.default_rng(seed)`` each)."""
    return [U.BookingUser(cfg, np.random.default_rng(s)) for s in seeds]
