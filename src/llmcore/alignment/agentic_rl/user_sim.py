r"""A scripted-but-stochastic user for a multi-turn table booking, its tool, and scripted agents.

The task. A user wants a table for ``size`` people on ``day`` (``day`` in 1..7, ``size`` in 1..6, the
*goal*). The opening message volunteers each slot with probability ``p_reveal``; the agent learns the rest
only by asking. The agent speaks one *action* per turn, a few tokens ending in ``<eos>``:

====================  =====================================  ==========================================
agent                 who answers                            answer (environment tokens)
====================  =====================================  ==========================================
``ask day``           user                                   the day, or ``not sure`` (ambiguous, prob. ``p_ambiguous``)
``ask size``          user                                   the size, or ``not sure``
``check D N``         user                                   ``sure`` if ``(D, N)`` is the goal, else ``no``
``find D N``          **tool** (availability search)         a table code ``C`` (a digit); the goal's code
                                                             is the episode's secret, any other query
                                                             gets a different digit
``book C``            user, who then ends the dialogue       success iff ``C`` is the secret code and the
                                                             agent ran ``find`` on the goal first
anything else         user                                   ``what``
====================  =====================================  ==========================================

The user also ends the dialogue (``bye``, a failure) after ``max_turns`` agent turns. The reward is task
success with a turn penalty, paid per turn so that PPO can assign credit turn by turn:

.. math::
    r_k = -c \quad\text{for every agent turn } k, \qquad r_K \mathrel{+}= \mathbb 1[\text{success}],
    \qquad R = \sum_k r_k = \mathbb 1[\text{success}] - c\,K .

**Fixed-width turns.** Every segment has a fixed number of tokens (opening ``W_OPEN``, agent turn
``W_AGENT`` padded with ``<pad>`` after its ``<eos>``, environment reply ``W_ENV``), so turn ``k`` starts
at the same position in every dialogue of a batch: a batch of dialogues is rolled out and trained with no
per-row positions or attention masks. ``<pad>`` tokens are environment tokens (never trained).

Everything random is drawn from one ``numpy`` generator per dialogue: the same seed gives the same user,
the same goal and the same answers to the same actions. :class:`BookingEnv` wraps one dialogue as a
``gymnasium.Env`` (tokens in, tokens out), which passes ``gymnasium.utils.env_checker.check_env``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from llmcore.alignment import tasks as T
from llmcore.core.errors import LLMCoreError

# ---- the token vocabulary of the task (ids of the book LM's tokenizer) ------------------------------------
WORDS = ("ask", "day", "size", "check", "find", "book", "not sure", "sure", "no", "what", "bye")
#: word -> its token ids, the space dropped ("book", "not sure", "what", "bye": two tokens each)
W = {w: tuple(t for part in w.split() for t in T.encode(part)) for w in WORDS}
DIGIT = tuple(T.encode(str(i))[0] for i in range(10))  #: digit -> its single token id
DIGIT_OF = {t: i for i, t in enumerate(DIGIT)}
USER, TOOL, ASSISTANT = T.USER, T.TOK.special["<|tool|>"], T.ASSISTANT
BOS, EOS, PAD = T.BOS, T.EOS, T.PAD
W_OPEN, W_AGENT, W_ENV = 8, 4, 4  #: tokens per segment: opening, agent turn (with <eos>), env reply
W_TURN = W_AGENT + W_ENV
SLOTS = ("day", "size")


@dataclass(frozen=True)
class SimConfig:
    """The user simulator's knobs (the same in toy and full mode: the task does not grow)."""

    n_days: int = 7  # day in 1..n_days
    max_size: int = 6  # size in 1..max_size
    p_reveal: float = 0.5  # each slot volunteered in the opening message with this probability
    p_ambiguous: float = 0.3  # an answer to "ask" is "not sure" with this probability
    max_turns: int = 6  # the user says "bye" (failure) after this many agent turns
    turn_penalty: float = 0.1  # c: reward -c per agent turn

    def __post_init__(self) -> None:
        if not (1 <= self.n_days <= 9 and 1 <= self.max_size <= 9):
            raise LLMCoreError("day and size values must be single digits 1..9")
        if not (0 <= self.p_reveal <= 1 and 0 <= self.p_ambiguous < 1):
            raise LLMCoreError("p_reveal must be in [0, 1], p_ambiguous in [0, 1)")

    @property
    def max_len(self) -> int:
        """Tokens of the longest dialogue (``max_turns`` full turns)."""
        return W_OPEN + self.max_turns * W_TURN


def _pad(ids: list[int], width: int, front: bool = False) -> list[int]:
    if len(ids) > width:
        raise LLMCoreError(f"segment {ids} longer than its width {width}")
    pads = [PAD] * (width - len(ids))
    return pads + ids if front else ids + pads


def parse_action(ids) -> tuple:
    """An agent turn's tokens (up to ``<eos>``) -> ``("ask", slot) | ("check"|"find", d, n) | ("book", c) |
    ("invalid",)``."""
    ids = list(ids)
    if EOS in ids:
        ids = ids[:ids.index(EOS)]
    ids = tuple(ids)
    for slot in SLOTS:
        if ids == W["ask"] + W[slot]:
            return ("ask", slot)
    for verb in ("check", "find"):
        if len(ids) == 3 and ids[:1] == W[verb] and ids[1] in DIGIT_OF and ids[2] in DIGIT_OF:
            return (verb, DIGIT_OF[ids[1]], DIGIT_OF[ids[2]])
    if len(ids) == 3 and ids[:2] == W["book"] and ids[2] in DIGIT_OF:
        return ("book", DIGIT_OF[ids[2]])
    return ("invalid",)


def action_ids(action: tuple) -> list[int]:
    """The inverse of :func:`parse_action`: the agent's tokens for ``action``, ending in ``<eos>`` (unpadded)."""
    kind = action[0]
    if kind == "ask":
        return list(W["ask"] + W[action[1]]) + [EOS]
    if kind in ("check", "find"):
        return list(W[kind]) + [DIGIT[action[1]], DIGIT[action[2]], EOS]
    if kind == "book":
        return list(W["book"]) + [DIGIT[action[1]], EOS]
    raise LLMCoreError(f"unknown action {action!r}")


def render(ids) -> str:
    """Readable text of a dialogue's tokens (``<pad>`` dropped)."""
    words = " ".join(T.TOK.decode([int(i)]) for i in ids if i != PAD)
    for w, wids in W.items():  # a word of two tokens ("book" = "bo" + "ok") shown as the word
        if len(wids) > 1:
            words = words.replace(" ".join(T.TOK.decode([i]) for i in wids), w)
    return words.replace(" <|", "\n<|").replace("|> ", "|>  ")


@dataclass
class BookingUser:
    """One dialogue's user: the hidden goal, what the opening volunteers, the tool's table codes.

    ``rng`` drives everything random in this dialogue (goal, opening, ambiguity, codes), so a user built
    from ``np.random.default_rng(s)`` behaves the same for the same actions.
    """

    cfg: SimConfig
    rng: np.random.Generator
    goal: dict[str, int] = field(init=False)
    revealed: tuple[str, ...] = field(init=False)
    secret: int = field(init=False)
    turns: int = field(init=False, default=0)
    found: bool = field(init=False, default=False)  # the agent ran find on the goal
    done: bool = field(init=False, default=False)
    success: bool = field(init=False, default=False)
    ambiguous: int = field(init=False, default=0)  # "not sure" answers given
    tool_calls: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        c = self.cfg
        self.goal = {"day": int(self.rng.integers(1, c.n_days + 1)), "size": int(self.rng.integers(1, c.max_size + 1))}
        self.revealed = tuple(s for s in SLOTS if self.rng.random() < c.p_reveal)
        self.secret = int(self.rng.integers(0, 10))

    def opening(self) -> list[int]:
        """``<bos> <pad>.. <|user|> [day D] [size N] <|assistant|>`` (``W_OPEN`` tokens)."""
        body = [USER] + [t for s in self.revealed for t in W[s] + (DIGIT[self.goal[s]],)] + [ASSISTANT]
        return [BOS] + _pad(body, W_OPEN - 1, front=True)

    def respond(self, agent_ids) -> tuple[list[int], float, bool, dict]:
        """The environment's reply to one agent turn: ``(W_ENV tokens, reward, done, info)``."""
        if self.done:
            raise LLMCoreError("the dialogue has ended")
        a = parse_action(agent_ids)
        self.turns += 1
        reward = -self.cfg.turn_penalty
        role, words, end = USER, [], False
        if a[0] == "ask":
            if self.rng.random() < self.cfg.p_ambiguous:
                words, self.ambiguous = list(W["not sure"]), self.ambiguous + 1
            else:
                words = [DIGIT[self.goal[a[1]]]]
        elif a[0] == "check":
            words = list(W["sure"] if (a[1], a[2]) == (self.goal["day"], self.goal["size"]) else W["no"])
        elif a[0] == "find":
            self.tool_calls += 1
            role = TOOL
            if (a[1], a[2]) == (self.goal["day"], self.goal["size"]):
                self.found, code = True, self.secret
            else:  # another table: any digit but the secret
                code = (self.secret + 1 + int(self.rng.integers(0, 9))) % 10
            words = [DIGIT[code]]
        elif a[0] == "book":
            self.success, end = self.found and a[1] == self.secret, True
            reward += float(self.success)
            words = list(W["sure"] if self.success else W["no"])
        else:
            words = list(W["what"])
        if not end and self.turns >= self.cfg.max_turns:
            words, end = list(W["bye"]), True
        self.done = end
        tail = [] if end else [ASSISTANT]
        return _pad([role] + words + tail, W_ENV), reward, end, {"action": a[0]}


# ---- scripted agents: the demonstrators of the SFT data, and the optimal policy ------------------------------
@dataclass(frozen=True)
class ScriptedAgent:
    """A hand-written booking agent with four habits (probabilities per dialogue).

    ``p_reask``: ask again a slot the opening already gave; ``p_check``: confirm ``check D N`` before
    searching (both cost a turn); ``p_skip``: skip the tool and book a made-up table code (always a failed
    booking: the user's table was never found); ``p_hasty``: after a ``not sure``, guess the slot instead of
    asking again (usually a wrong search, then a failed booking). ``ScriptedAgent()`` (all zero) is the
    optimal policy.
    """

    p_reask: float = 0.0
    p_check: float = 0.0
    p_skip: float = 0.0
    p_hasty: float = 0.0

    def play(self, user: BookingUser, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """Run one dialogue against ``user``: ``(tokens, agent mask)`` (the mask is 1 on the agent's own
        tokens up to and including its ``<eos>``)."""
        known = {s: user.goal[s] for s in user.revealed}
        reask = [s for s in user.revealed if rng.random() < self.p_reask][:1]
        check, hasty = rng.random() < self.p_check, rng.random() < self.p_hasty
        skip = rng.random() < self.p_skip
        ids, mask = user.opening(), [0] * W_OPEN
        code, last_ask = None, None
        while not user.done:
            if reask:
                a = ("ask", reask.pop())
            elif any(s not in known for s in SLOTS):
                s = next(s for s in SLOTS if s not in known)
                if hasty and last_ask == s:  # the user was not sure: guess
                    known[s] = int(rng.integers(1, (user.cfg.n_days if s == "day" else user.cfg.max_size) + 1))
                    continue
                a = ("ask", s)
            elif check:
                a, check = ("check", known["day"], known["size"]), False
            elif code is None and skip:  # no tool call: a hallucinated table code
                a = ("book", int(rng.integers(0, 10)))
            elif code is None:
                a = ("find", known["day"], known["size"])
            else:
                a = ("book", code)
            act = action_ids(a)
            env, _, _, _ = user.respond(act)
            ids += _pad(act, W_AGENT) + env
            mask += [1] * len(act) + [0] * (W_AGENT - len(act)) + [0] * W_ENV
            last_ask = None
            content = [t for t in env[1:] if t not in (PAD, ASSISTANT)]
            if a[0] == "ask":
                if len(content) == 1 and content[0] in DIGIT_OF:
                    known[a[1]] = DIGIT_OF[content[0]]
                else:
                    last_ask = a[1]
            elif a[0] == "find" and not user.done:
                code = DIGIT_OF[content[0]]
        return ids, mask


def demo_dialogues(agent: ScriptedAgent, cfg: SimConfig, n: int, seed: int) -> list[dict]:
    """``n`` dialogues of ``agent``, user ``i`` seeded by ``(seed, i)``: tokens, mask, success, turns, ..."""
    out = []
    rng = np.random.default_rng([seed, 7])
    for i in range(n):
        user = BookingUser(cfg, np.random.default_rng([seed, i]))
        ids, mask = agent.play(user, rng)
        out.append({"ids": ids, "mask": mask, "success": user.success, "turns": user.turns,
                    "ambiguous": user.ambiguous, "revealed": len(user.revealed), "tool_calls": user.tool_calls})
    return out


def simulator_stats(cfg: SimConfig, agent: ScriptedAgent, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """The simulator's statistics under a scripted agent (means over ``n`` dialogues)."""
    d = demo_dialogues(agent, cfg, n, seed)
    succ = np.array([x["success"] for x in d], float)
    turns = np.array([x["turns"] for x in d], float)
    return {"success": float(succ.mean()), "turns": float(turns.mean()),
            "turns per success": float(turns.sum() / max(succ.sum(), 1)),  # every turn spent / successes
            "turns of a successful dialogue": float((turns * succ).sum() / max(succ.sum(), 1)),
            "return": float((succ - cfg.turn_penalty * turns).mean()),
            "slots volunteered": float(np.mean([x["revealed"] for x in d])),
            "'not sure' answers": float(np.mean([x["ambiguous"] for x in d])),
            "tool calls": float(np.mean([x["tool_calls"] for x in d])),
            "length (tokens)": float(np.mean([len(x["ids"]) for x in d]))}


# ---- gymnasium wrapper --------------------------------------------------------------------------------------
class BookingEnv(gym.Env):
    """One booking dialogue as a ``gymnasium`` environment, in token ids.

    Observation: the dialogue so far, ``(max_len,)`` int64 ids padded with ``<pad>`` at the end. Action: one
    agent turn, ``W_AGENT`` token ids (the turn ends at its first ``<eos>``; later ids are ignored and
    written as ``<pad>``). Reward: :meth:`BookingUser.respond`'s per-turn reward. ``terminated`` when the
    user ends the dialogue. ``info``: goal, success, turns.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, cfg: SimConfig | None = None, render_mode: str | None = None) -> None:
        self.cfg = cfg or SimConfig()
        self.render_mode = render_mode
        V = T.TOK.vocab_size
        self.observation_space = gym.spaces.Box(0, V - 1, (self.cfg.max_len,), np.int64)
        self.action_space = gym.spaces.MultiDiscrete([V] * W_AGENT)
        self.user: BookingUser | None = None
        self.ids: list[int] = []

    def _obs(self) -> np.ndarray:
        return np.array(_pad(self.ids, self.cfg.max_len), dtype=np.int64)

    def _info(self) -> dict:
        u = self.user
        return {"goal": dict(u.goal), "success": u.success, "turns": u.turns}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.user = BookingUser(self.cfg, self.np_random)
        self.ids = self.user.opening()
        return self._obs(), self._info()

    def step(self, action):
        act = [int(t) for t in np.asarray(action).reshape(-1)[:W_AGENT]]
        if EOS in act:
            act = act[:act.index(EOS) + 1]
        env, reward, done, _ = self.user.respond(act)
        self.ids += _pad(act, W_AGENT) + env
        return self._obs(), float(reward), done, False, self._info()

    def render(self) -> str:
        return render(self.ids)
