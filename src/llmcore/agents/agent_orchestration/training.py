r"""The agents' model: the book LM fine-tuned on synthetic tool-use traces (the kit's one SFT loop, cached).

**Traces.** Every pattern is run with its gold replies (:func:`~.patterns.run_episodes` with
``llm=None``) on training worlds (names from the training bucket only). Each model call of an episode
is a pair (conversation, reply); a ReAct or Self-Ask episode is one growing conversation, so only its
*maximal* conversation is kept and all its assistant turns are scored at once; a Plan-and-Execute
episode gives a planner conversation and one short executor conversation per step.

**Multi-turn labels.** A conversation is rendered with the book's chat tokens exactly as at inference
(:func:`llmcore.agents.llm.chat_ids`, the same as ``llmcore serve``): earlier assistant turns are
followed directly by the next ``<|tool|>`` / ``<|user|>`` tag, without ``<eos>``. The model must still
learn to *stop* after a turn, so the label at the position of that tag is ``<eos>`` (HF convention:
``labels[t]`` is predicted from position ``t - 1``; a label need not equal the input id):

$$ \text{ids}   = \ldots\,\underbrace{a_1 \ldots a_n}_{\text{assistant}}\;\texttt{<|tool|>}\,\ldots
   \qquad \text{labels} = \ldots\, a_1 \ldots a_n\;\texttt{<eos>}\,\ldots $$

Every other label (system, user, tool text, role tags) is ``-100``. Traces are packed into rows
(:func:`pack_traces`; block-diagonal attention, positions restart per trace), so no compute goes to padding.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError

from llmcore.agents.agent_orchestration.patterns import PATTERNS, Episode, run_episodes
from llmcore.agents.agent_orchestration.world import make_tasks, make_world
from llmcore.agents.llm import Message, message_text
from llmcore.alignment.sft import Packed, initial_model, train_packed
from llmcore.architecture.book_lm import book_tokenizer
from llmcore.architecture.llama import Llama
from llmcore.core.checkpoints import train_once
from llmcore.core.errors import LLMCoreError
from llmcore.core.seed import seed_everything


def maximal_pairs(ep: Episode) -> list[tuple[list[Message], str]]:
    """The episode's (conversation, reply) pairs minus those that a later conversation contains."""
    out = []
    for k, (msgs, reply) in enumerate(ep.pairs):
        n = len(msgs)
        if any(len(m2) > n and m2[:n] == msgs for m2, _ in ep.pairs[k + 1:]):
            continue
        out.append((msgs, reply))
    return out


def encode_trace(tokenizer, messages: Sequence[Message], reply: str) -> tuple[list[int], list[int]]:
    """``(ids, labels)`` of a conversation and its final reply; every assistant turn is scored, each
    ending in ``<eos>`` (see the module docstring)."""
    ids, labels = [tokenizer.special["<bos>"]], [-100]
    eos = tokenizer.eos_id
    turns = [*messages, {"role": "assistant", "content": reply}]
    for k, msg in enumerate(turns):
        ids.append(tokenizer.special[f"<|{msg['role']}|>"])
        labels.append(eos if k > 0 and turns[k - 1]["role"] == "assistant" else -100)
        body = tokenizer.encode(message_text(msg))
        ids += body
        labels += body if msg["role"] == "assistant" else [-100] * len(body)
    return ids + [eos], labels + [eos]


def trace_set(cfg, tokenizer=None) -> list[tuple[list[int], list[int]]]:
    """Encoded training traces on ``cfg.n_train_worlds`` training worlds (``cfg``: an
    :class:`~llmcore.agents.agent_orchestration.AgentConfig`): for each ``(pattern, share)`` of
    ``cfg.trace_shares``, the pattern's gold episode of each task kept with probability ``share``."""
    tokenizer = tokenizer or book_tokenizer()
    out = []
    for w in range(cfg.n_train_worlds):
        world = make_world(cfg.countries_per_world, "train", seed=cfg.data_seed * 10_000 + w)
        tasks = make_tasks(world, cfg.tasks_per_world, seed=cfg.data_seed * 10_000 + w)
        for pattern, share in cfg.trace_shares:
            pick = random.Random(f"share-{cfg.data_seed}-{w}-{pattern}")  # each task kept with probability share
            sub = [t for t in tasks if pick.random() < share]
            for ep in run_episodes(None, pattern, sub, world):
                out += [encode_trace(tokenizer, m, r) for m, r in maximal_pairs(ep)]
    return out


def pack_traces(traces: Sequence[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> Packed:
    """Greedily concatenate encoded traces (in order) into rows of ``seq_len`` tokens: :class:`Packed`
    ``idx, labels, doc, pos`` each ``(N, seq_len)`` (block-diagonal attention and restarted positions
    come from :func:`~llmcore.alignment.sft.packed_logits`).

    Why not :func:`llmcore.alignment.sft.pack`: it encodes single-turn ``tasks.Example`` conversations
    itself; agent traces arrive already encoded, with several scored assistant turns and ``<eos>``
    labels that are not the input ids. The row layout is the same (no trace is split, the first label
    of each trace is ``-100``, padding has ``doc = -1``).
    """
    rows: list[list[tuple[list[int], list[int]]]] = [[]]
    used = 0
    for ids, lab in traces:
        if len(ids) > seq_len:
            raise LLMCoreError(f"a trace of {len(ids)} tokens does not fit seq_len={seq_len}")
        if used + len(ids) > seq_len:
            rows.append([])
            used = 0
        rows[-1].append((ids, lab))
        used += len(ids)
    N = len(rows)
    out = Packed(torch.full((N, seq_len), pad_id, dtype=torch.long), torch.full((N, seq_len), -100, dtype=torch.long),
                 torch.full((N, seq_len), -1, dtype=torch.long), torch.zeros((N, seq_len), dtype=torch.long))
    for r, row in enumerate(rows):
        at = 0
        for d, (ids, lab) in enumerate(row):
            n = len(ids)
            out.idx[r, at:at + n], out.labels[r, at:at + n] = torch.tensor(ids), torch.tensor([-100] + lab[1:])
            out.doc[r, at:at + n], out.pos[r, at:at + n] = d, torch.arange(n)
            at += n
    return out


def finetune_agent(cfg, device: str | torch.device = "cpu", desc: str | None = "fine-tune on traces",
                   callback: Callable[[int, Llama], None] | None = None) -> tuple[Llama, list[float], int]:
    """The book LM after ``cfg.steps`` steps of the kit's SFT loop on the packed traces; ``(model, losses,
    n_traces)``. ``callback(step, model)`` runs after each step."""
    seed_everything(cfg.seed)
    tok = book_tokenizer()
    traces = trace_set(cfg, tok)
    random.Random(cfg.seed).shuffle(traces)  # rows mix patterns and worlds
    data = pack_traces(traces, cfg.seq_len, tok.pad_id)
    model = initial_model("book_lm").to(device)
    losses = train_packed(model, data, cfg.steps, cfg.batch_rows, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio,
                          cfg.weight_decay, cfg.grad_clip, cfg.seed, desc,
                          callback=None if callback is None else (lambda step: callback(step, model)))
    return model, losses, len(traces)


def agent_model(cfg, device: str | torch.device = "cpu", refresh: bool = False) -> tuple[Llama, dict]:
    """The fine-tuned agent model for ``cfg`` (trained once, then loaded from
    ``output/checkpoints/agent_lm-<hash>``, shared by the chapter and the unit tests); ``(model, metrics)``
    with the loss curve, the number of traces and the training time."""
    train_cfg = {k: v for k, v in asdict(cfg).items() if k in TRAIN_FIELDS}

    def train(path: Path) -> None:
        t0 = time.perf_counter()
        model, losses, n_traces = finetune_agent(cfg, device)
        metrics = {"loss": losses, "train_s": time.perf_counter() - t0, "n_traces": n_traces,
                   "params": model.num_params(), "config": train_cfg}
        model.save_pretrained(path)
        (path / "metrics.json").write_text(json.dumps(metrics))

    def load(path: Path) -> tuple[Llama, dict]:
        return Llama.from_pretrained(path, device=device).eval(), json.loads((path / "metrics.json").read_text())

    return train_once("agent_lm", train_cfg, train, load, version=2, refresh=refresh)


# ---- the recipe model, shipped with the package -------------------------------------------------------------
#: The recipe behind ``src/llmcore/data/agent_lm`` (fields of :class:`~llmcore.agents.agent_orchestration.AgentConfig`
#: over its toy defaults): 8x the training worlds (14,101 traces instead of ~1,900) and 11x the steps of the toy
#: fine-tune. Measured on CPU-2 (book/benchmarks.md): 11.8 min; ReAct 0.85 / 0.825 on held-out worlds 0 / 1
#: after 1000 steps and 1.0 / 0.95 after 2000; 800 worlds x 1500 steps stopped at 0.85 / 0.975.
RECIPE = {"n_train_worlds": 2000, "steps": 2000, "warmup_steps": 30}
SHIPPED_FILES = ("config.json", "model.safetensors", "training_log.json")


def recipe_config(cfg=None):
    """The shipped model's training config: ``cfg`` (default: the toy :class:`AgentConfig`, seed 0) with :data:`RECIPE`."""
    from llmcore.agents.agent_orchestration import AgentConfig  # the package imports this module: a cycle

    return replace(cfg or AgentConfig(), **RECIPE)


def shipped_agent_path() -> Path:
    """Where the recipe's agent model ships (inside the installed package)."""
    return Path(str(resources.files("llmcore") / "data" / "agent_lm"))


def load_shipped_agent(device: str | torch.device = "cpu", path: str | Path | None = None) -> tuple[Llama, dict]:
    """The recipe's fine-tuned agent model (eval mode) and its training log; a missing or corrupt file is one
    clear :class:`LLMCoreError`."""
    path = Path(path) if path is not None else shipped_agent_path()
    fix = ("restore it with `git checkout -- src/llmcore/data/agent_lm` or retrain it with "
           "`python -m llmcore.agents.agent_orchestration.training` (about 12 min on a 2-core CPU)")
    missing = [f for f in SHIPPED_FILES if not (path / f).is_file()]
    if missing:
        raise LLMCoreError(f"agent model {path} lacks {', '.join(missing)}; {fix}")
    try:
        log = json.loads((path / "training_log.json").read_text())
        model = Llama.from_pretrained(path, device=device).eval()
    except (SafetensorError, ValueError, KeyError, RuntimeError, OSError) as e:
        raise LLMCoreError(f"agent model {path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                           f"{fix}") from None
    return model, log


def train_recipe(out: str | Path | None = None, device: str | torch.device = "cpu") -> Path:
    """Train the recipe model (:func:`recipe_config`) and write it, with its loss curve, to ``out``
    (default: the package's ``data/agent_lm``)."""
    cfg = recipe_config()
    out = Path(out) if out is not None else shipped_agent_path()
    t0 = time.perf_counter()
    model, losses, n_traces = finetune_agent(cfg, device, desc="agent recipe")
    model.save_pretrained(out)
    log = {"loss": losses, "n_traces": n_traces, "train_s": time.perf_counter() - t0,
           "config": {k: v for k, v in asdict(cfg).items() if k in TRAIN_FIELDS}}
    (out / "training_log.json").write_text(json.dumps(log))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train the shipped agent model (the recipe; ~12 min on a 2-core CPU).")
    ap.add_argument("--out", default=None, help="folder (default: the package's data/agent_lm)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    try:
        print(f"wrote {train_recipe(args.out, args.device)}")
    except LLMCoreError as e:
        print(f"error: {e}")
        return 2
    return 0


#: the AgentConfig fields that change the fine-tuned model (the cache key); evaluation knobs are not among them
TRAIN_FIELDS = ("n_train_worlds", "countries_per_world", "tasks_per_world", "trace_shares",
                "data_seed", "steps", "seq_len", "batch_rows", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip",
                "seed")
__all__ = ["PATTERNS", "RECIPE", "agent_model", "encode_trace", "finetune_agent", "load_shipped_agent", "maximal_pairs",
           "pack_traces", "recipe_config", "shipped_agent_path", "train_recipe", "trace_set"]


if __name__ == "__main__":
    raise SystemExit(main())
