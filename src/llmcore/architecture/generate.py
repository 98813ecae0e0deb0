r"""The book's one ``generate``: autoregressive decoding with logits processors and any KV cache.

Every chapter that samples from a decoder calls :func:`generate` (``Llama.generate`` is a thin wrapper
with the older keyword interface). One step, for ``B`` sequences over a vocabulary of ``V``::

    logits (B, V) = model(new tokens, kv_cache=cache)[:, -1]       # the cache keeps every earlier position
    logits <- processors(logits)       # repetition penalty, temperature, top-k, top-p (HF's order)
    next (B,) = argmax(logits)  |  multinomial(softmax(logits), generator)

* **Processors** (:class:`SamplerConfig`): repetition penalty (CTRL), temperature
  $p_i \propto \exp(\ell_i / \tau)$, top-k, top-p (nucleus); each matches Hugging Face's logits processor
  of the same name bit for bit (checked in the Decoding chapter).
* **Cache**: any object of the :mod:`~llmcore.architecture.kv_cache` protocol, or its name
  (``"dynamic"``, ``"static"``, ``"int8"``), or ``None`` -- recompute the whole prefix every step
  ($O(S^2)$ work per step instead of $O(S)$; the reference the caches are checked against).
* **End of sequence**: a row that emits ``eos_id`` keeps emitting it; decoding stops when every row has.
* **Prompts of different lengths**: left-pad them and pass ``attention_mask (B, T)`` (0 = padding). Padding
  keys are masked and RoPE positions count real tokens only (``position = cumsum(mask) - 1``), so each row
  decodes as it would alone, up to float rounding: one batch instead of one batch per prompt length.
* **Randomness**: sampling draws only from ``generator`` (a ``torch.Generator``), so a seeded generator
  gives the same tokens whatever else used the global RNG.

Beam search and speculative decoding (:mod:`~llmcore.architecture.decoding`) are different search
algorithms, not variants of this loop, and live there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from llmcore.architecture.kv_cache import CACHES, make_cache
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress

# =================================================================================================
# Samplers (logits processors)
# =================================================================================================


def apply_repetition_penalty(logits: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    r"""CTRL's penalty (Keskar et al. 2019): for every token already in ``input_ids``,
    $\ell \leftarrow \ell / \theta$ if $\ell > 0$ else $\ell \cdot \theta$.  ``logits (B, V)``, ``input_ids (B, S)``."""
    if penalty == 1.0:
        return logits
    if penalty <= 0:
        raise LLMCoreError(f"repetition penalty must be > 0, got {penalty}")
    score = torch.gather(logits, 1, input_ids)  # (B, S): the logits of tokens already seen
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, input_ids, score)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""$p_i \propto \exp(\ell_i / \tau)$: $\tau < 1$ sharpens, $\tau > 1$ flattens."""
    if temperature <= 0:
        raise LLMCoreError(f"temperature must be > 0 (use greedy for 0), got {temperature}")
    return logits / temperature


def apply_top_k(logits: torch.Tensor, k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Keep the ``k`` largest logits (ties with the k-th are kept too), set the rest to ``-inf``."""
    k = min(max(int(k), min_tokens_to_keep), logits.shape[-1])
    kth = torch.topk(logits, k).values[..., -1, None]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    r"""Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability sums to at least $p$. Sorted ascending, a token is dropped when the cumulative
    probability *up to and including it* is $\le 1 - p$."""
    check_range("top_p", p, 0.0, 1.0)
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V) ascending cumulative mass
    remove_sorted = cum <= (1 - p)
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


@dataclass
class SamplerConfig:
    """How the next token is chosen. ``greedy=True`` ignores everything but the repetition penalty."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int | None = None  # None or 0: off
    top_p: float | None = None  # None or 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off


def process_logits(logits: torch.Tensor, input_ids: torch.Tensor, cfg: SamplerConfig) -> torch.Tensor:
    """Apply the processors in Hugging Face ``generate``'s order: penalty, temperature, top-k, top-p."""
    logits = apply_repetition_penalty(logits, input_ids, cfg.repetition_penalty)
    if cfg.greedy:
        return logits
    if cfg.temperature != 1.0:
        logits = apply_temperature(logits, cfg.temperature)
    if cfg.top_k:
        logits = apply_top_k(logits, cfg.top_k)
    if cfg.top_p is not None and cfg.top_p < 1.0:
        logits = apply_top_p(logits, cfg.top_p)
    return logits


def next_token(logits: torch.Tensor, input_ids: torch.Tensor, cfg: SamplerConfig,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``logits (B, V)`` of the last position -> next token ids ``(B,)``."""
    logits = process_logits(logits.float(), input_ids, cfg)
    if cfg.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits, -1)
    if generator is not None and generator.device != probs.device:  # e.g. a CPU generator, a model on CUDA
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# =================================================================================================
# The generation loop
# =================================================================================================


def _cuda_sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # (B, T_prompt + new); fewer new tokens when every row stopped at eos_id
    step_s: list[float] = field(default_factory=list)  # wall time of each decode step (incl. prefill first)
    cache_bytes: int = 0  # bytes of the filled cache at the end (0 without a cache)
    cache: object | None = None  # the cache itself (None without one)

    @property
    def wall_s(self) -> float:
        return float(sum(self.step_s))


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of different lengths as one batch for :func:`generate`: ``ids (B, T)`` left-padded with
    ``pad_id`` to the longest prompt ``T`` and ``attention_mask (B, T)`` (0 = padding, 1 = prompt token)."""
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (T - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask


def _left_padding(mask: torch.Tensor | None, prompt: torch.Tensor, max_new: int, cache):
    """``(mask, positions)`` over all ``T + max_new`` slots for left-padded prompts, or None without a mask."""
    if mask is None:
        return None
    if mask.shape != prompt.shape:
        raise LLMCoreError(f"attention_mask must have the prompt's shape {tuple(prompt.shape)}, got {tuple(mask.shape)}")
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise LLMCoreError("attention_mask must be left padding: zeros, then ones up to each row's last position")
    if not (cache is None or cache == "dynamic"):
        raise LLMCoreError(f"padded prompts decode with cache='dynamic' or None, got {cache!r}")
    B, T0 = prompt.shape
    full = torch.ones(B, T0 + max_new, dtype=torch.long, device=prompt.device)
    full[:, :T0] = mask.long()
    return full, (full.cumsum(-1) - 1).clamp(min=0)


def _resolve_cache(cache, model, batch: int, max_len: int):
    if cache is None or isinstance(cache, str):
        if cache is None:
            return None
        if cache not in CACHES:
            raise LLMCoreError(f"cache must be one of {', '.join(map(repr, CACHES))}, None, a cache object or a "
                               f"factory(model, batch, max_len); got {cache!r}")
        return make_cache(cache, model, batch, max_len)
    if hasattr(cache, "update") and hasattr(cache, "seq_len"):
        return cache  # a cache object of the protocol, used as is (it may already hold a prefix)
    if callable(cache):
        return cache(model, batch, max_len)
    raise LLMCoreError(f"cannot use {cache!r} as a KV cache")


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, sampler: SamplerConfig | None = None,
             cache: str | object | Callable[..., object] | None = "static", generator: torch.Generator | None = None,
             eos_id: int | None = None, desc: str | None = None,
             attention_mask: torch.Tensor | None = None) -> GenerationResult:
    """Append up to ``max_new_tokens`` tokens to ``prompt (B, T)``; greedy unless ``sampler`` says otherwise.

    ``cache``: a name from :data:`~llmcore.architecture.kv_cache.CACHES` (sized ``T + max_new_tokens``),
    a cache object, a factory ``(model, batch, max_len) -> cache``, or ``None`` (no cache). The model is
    run in eval mode and put back in the mode it was in. ``desc`` shows a progress bar over the steps.

    ``attention_mask (B, T)``: left-padded prompts (1 = token, 0 = padding; every row ends in a token). The
    model must take ``attention_mask`` and ``position_ids`` keywords (:class:`~llmcore.architecture.llama.Llama`
    does) and a cache must return exactly the filled positions (``"dynamic"`` or ``None``).
    """
    sampler = sampler or SamplerConfig()
    check_range("max_new_tokens", max_new_tokens, 0)
    was_training = model.training
    model.eval()
    B, T0 = prompt.shape
    max_len = T0 + max_new_tokens
    kv = _resolve_cache(cache, model, B, max_len)
    max_seq = getattr(getattr(model, "config", None), "max_seq_len", None)
    dev = prompt.device
    out = torch.empty(B, max_len, dtype=prompt.dtype, device=dev)
    out[:, :T0] = prompt
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    padded = _left_padding(attention_mask, prompt, max_new_tokens, cache)
    n, step_in, times = T0, prompt, []
    steps = range(max_new_tokens)
    for _ in (progress(steps, desc=desc, leave=False) if desc else steps):
        if max_seq is not None and n > max_seq:
            raise LLMCoreError(f"sequence longer than max_seq_len={max_seq}")
        _cuda_sync(dev)
        t0 = time.perf_counter()
        x = step_in if kv is not None else out[:, :n]
        kw = {} if padded is None else {"attention_mask": padded[0][:, :n],
                                        "position_ids": padded[1][:, n - x.shape[1]:n]}
        logits = model(x, kv_cache=kv, **kw)[:, -1]
        nxt = next_token(logits, out[:, :n], sampler, generator)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        _cuda_sync(dev)
        times.append(time.perf_counter() - t0)
        out[:, n] = nxt
        n += 1
        step_in = out[:, n - 1:n]
        if eos_id is not None and bool(done.all()):
            break
    model.train(was_training)
    nbytes = kv.used_bytes() if hasattr(kv, "used_bytes") else (kv.nbytes if kv is not None else 0)
    return GenerationResult(out[:, :n], times, nbytes, kv)
