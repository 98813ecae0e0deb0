r"""Decoding: samplers, beam search, a pre-allocated GQA-aware KV cache and speculative decoding.

Everything works on the tiny LLaMA of :mod:`llmcore.architecture.llama` (``Llama``), through its
``kv_cache`` hook: any object with ``update(layer, k, v) -> (k_all, v_all)`` and ``seq_len`` can be
passed as ``model(idx, kv_cache=cache)``. Shapes: ``B`` batch, ``V`` vocabulary, ``T`` new tokens,
``S`` cached + new positions, ``K`` key/value heads, ``D`` head size, ``L`` layers.

* **Samplers** (logits processors, in Hugging Face's order): repetition penalty, temperature,
  top-k, top-p; then greedy ``argmax`` or a multinomial draw.
* **Beam search**: keep the ``n`` best partial sequences by summed log-probability.
* **KV cache**: :class:`StaticKVCache` allocates ``(L, B, K, S_max, D)`` once (contiguous), writes new
  keys/values in place and can be cropped (speculative decoding rolls back rejected tokens). Its size is
  $2 \cdot L \cdot K \cdot D \cdot \text{bytes} \cdot S \cdot B$ -- note ``K`` (key/value heads), not
  the query heads: GQA/MQA shrink the cache by ``H / K``.
* **Speculative decoding** (greedy): a small draft proposes ``k`` tokens, the target scores all of
  them in one forward pass and keeps the longest agreeing prefix plus its own next token, so the
  output is *exactly* the target's greedy output.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

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
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


# =================================================================================================
# KV cache
# =================================================================================================


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, bytes_per_element: float,
                   tokens: int, batch: int = 1) -> int:
    r"""$2 \times L \times K \times D \times \text{bytes} \times \text{tokens} \times B$ (the 2 is keys + values).

    Per token and per sequence it is $2 L K D \cdot \text{bytes}$ -- the usual "per-token" formula."""
    return int(round(2 * n_layers * n_kv_heads * head_dim * bytes_per_element * tokens * batch))


class StaticKVCache:
    """A contiguous, pre-allocated key/value cache for all layers, GQA-aware.

    ``k``/``v`` are single tensors of shape ``(L, B, K, max_len, D)`` allocated once; ``update`` writes
    the new positions in place (no ``torch.cat``, no re-allocation) and returns views of the filled part
    ``(B, K, S, D)``. Only ``K = n_kv_heads`` heads are stored -- the model repeats them for its query
    heads *after* the cache, which is why GQA/MQA save cache memory. ``crop(n)`` forgets every position
    ``>= n`` (speculative decoding's rollback).
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.lens = [0] * n_layers  # filled positions per layer

    @classmethod
    def for_model(cls, model, batch: int, max_len: int, dtype: torch.dtype | None = None) -> StaticKVCache:
        """A cache sized for ``model`` (our ``Llama``): its layers, KV heads, head size, dtype and device."""
        c = model.config
        p = next(model.parameters())
        return cls(c.n_layers, batch, c.n_kv_heads, c.head_dim, max_len, dtype or p.dtype, p.device)

    @property
    def seq_len(self) -> int:
        """Positions stored in every layer (the model reads it before layer 0 is updated)."""
        return min(self.lens)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v (B, K, T, D)`` at positions ``[S_old, S_old + T)``; return ``(B, K, S_old + T, D)`` views."""
        start, T = self.lens[layer], k.shape[2]
        if start + T > self.max_len:
            raise LLMCoreError(f"KV cache full: {start} + {T} positions > max_len={self.max_len}")
        self.k[layer, :, :, start:start + T] = k
        self.v[layer, :, :, start:start + T] = v
        self.lens[layer] = start + T
        return self.k[layer, :, :, :start + T], self.v[layer, :, :, :start + T]

    def crop(self, n: int) -> None:
        """Keep the first ``n`` positions (the rest will be overwritten)."""
        if n > self.seq_len:
            raise LLMCoreError(f"cannot crop to {n} > {self.seq_len} stored positions")
        self.lens = [n] * len(self.lens)

    @property
    def nbytes(self) -> int:
        """Bytes allocated (the whole pre-allocated buffer)."""
        return self.k.nbytes + self.v.nbytes

    def used_bytes(self) -> int:
        """Bytes of the filled positions: the formula of :func:`kv_cache_bytes` with ``tokens = seq_len``."""
        L, B, K, _, D = self.k.shape
        return kv_cache_bytes(L, K, D, self.k.element_size(), self.seq_len, B)


# =================================================================================================
# Generation loops
# =================================================================================================


def _cuda_sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # (B, T_prompt + new)
    step_s: list[float] = field(default_factory=list)  # wall time of each decode step (incl. prefill first)
    cache_bytes: int = 0  # bytes of the filled cache at the end (0 without a cache)

    @property
    def wall_s(self) -> float:
        return float(sum(self.step_s))


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, sampler: SamplerConfig | None = None,
             cache: str | None = "static", generator: torch.Generator | None = None,
             cache_factory: Callable[..., object] | None = None, desc: str | None = None) -> GenerationResult:
    """Autoregressive decoding of ``max_new_tokens`` tokens after ``prompt (B, T)``.

    ``cache``: ``"static"`` (:class:`StaticKVCache`, pre-allocated), ``"dynamic"`` (the model's own
    concatenating ``KVCache``) or ``None`` (recompute the whole sequence every step: $O(S^2)$ work per
    step instead of $O(S)$). ``cache_factory(model, batch, max_len)`` overrides the cache type (e.g. INT8).
    """
    from llmcore.architecture.llama import KVCache

    sampler = sampler or SamplerConfig()
    model.eval()
    B, T0 = prompt.shape
    max_len = T0 + max_new_tokens
    if cache_factory is not None:
        kv = cache_factory(model, B, max_len)
    elif cache == "static":
        kv = StaticKVCache.for_model(model, B, max_len)
    elif cache == "dynamic":
        kv = KVCache(model.config.n_layers)
    elif cache is None:
        kv = None
    else:
        raise LLMCoreError(f"cache must be 'static', 'dynamic' or None, got {cache!r}")
    dev = prompt.device
    out = torch.empty(B, max_len, dtype=torch.long, device=dev)
    out[:, :T0] = prompt
    n, step_in, times = T0, prompt, []
    steps = range(max_new_tokens)
    for _ in (progress(steps, desc=desc, leave=False) if desc else steps):
        _cuda_sync(dev)
        t0 = time.perf_counter()
        logits = model(step_in if kv is not None else out[:, :n], kv_cache=kv)[:, -1]
        nxt = next_token(logits, out[:, :n], sampler, generator)
        _cuda_sync(dev)
        times.append(time.perf_counter() - t0)
        out[:, n] = nxt
        n += 1
        step_in = out[:, n - 1:n]
    nbytes = kv.used_bytes() if hasattr(kv, "used_bytes") else 0
    return GenerationResult(out, times, nbytes)


@torch.no_grad()
def beam_search(model, prompt: torch.Tensor, max_new_tokens: int, num_beams: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Beam search without an end-of-sequence token (every beam runs ``max_new_tokens`` steps).

    Beam score = $\sum_t \log p(y_t \mid y_{<t})$. Each step scores all ``num_beams x V`` one-token
    extensions and keeps the ``num_beams`` best. ``prompt (1, T)`` -> ``(sequences (n, T + new), scores (n,))``
    sorted best first (as HF ``generate(num_beams=n, num_return_sequences=n)`` with no EOS).
    Uses a KV cache whose rows are re-ordered (``index_select``) when beams are re-ranked.
    """
    if prompt.shape[0] != 1:
        raise LLMCoreError("beam_search takes one prompt (batch 1)")
    model.eval()
    from llmcore.architecture.llama import KVCache

    kv = KVCache(model.config.n_layers)
    seqs = prompt.expand(num_beams, -1).contiguous()
    scores = torch.zeros(num_beams, device=prompt.device)
    scores[1:] = -1e9  # all beams start identical: only the first one may expand at step 0
    step_in = seqs
    V = None
    for _ in range(max_new_tokens):
        logp = F.log_softmax(model(step_in, kv_cache=kv)[:, -1].float(), dim=-1)  # (n, V)
        V = logp.shape[-1]
        cand = (scores[:, None] + logp).view(-1)  # (n * V,)
        top, idx = torch.topk(cand, num_beams)
        beam, tok = idx // V, idx % V
        seqs = torch.cat([seqs[beam], tok[:, None]], dim=1)
        scores = top
        for i in range(len(kv.k)):  # re-order the cache rows to follow the surviving beams
            kv.k[i], kv.v[i] = kv.k[i][beam], kv.v[i][beam]
        step_in = tok[:, None]
    return seqs, scores


# =================================================================================================
# Speculative decoding
# =================================================================================================


@dataclass
class SpeculativeResult:
    tokens: torch.Tensor  # (1, T_prompt + new)
    prompt_len: int
    k: int
    rounds: int  # verification passes of the target (after the prefill)
    drafted: int
    accepted: int
    wall_s: float

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens the target accepted."""
        return self.accepted / max(1, self.drafted)

    @property
    def tokens_per_target_call(self) -> float:
        """New tokens per target forward pass, the prefill included (plain decoding: exactly 1)."""
        return (self.tokens.shape[1] - self.prompt_len) / (self.rounds + 1)


@torch.no_grad()
def speculative_generate(target, draft, prompt: torch.Tensor, max_new_tokens: int, k: int = 4) -> SpeculativeResult:
    r"""Greedy speculative decoding (Leviathan et al. 2023; Chen et al. 2023) with batch 1.

    Each round: the draft proposes $d_1..d_k$ greedily; the target runs once on
    ``[last, d_1..d_k]`` and yields its own greedy choices $p_0..p_k$; accept the longest prefix with
    $d_{i+1} = p_i$ (say $n$ tokens), then append $p_n$ -- the target's token at the first
    disagreement (or a bonus token when all $k$ agree). Each round emits $n + 1 \ge 1$ tokens and the
    sequence is exactly the target's greedy sequence. Rejected positions are cropped from both caches.
    """
    check_range("k", k, 1)
    if prompt.shape[0] != 1:
        raise LLMCoreError("speculative_generate takes one prompt (batch 1)")
    target.eval(), draft.eval()
    dev = prompt.device
    T0 = prompt.shape[1]
    max_len = T0 + max_new_tokens + k + 1
    tc, dc = StaticKVCache.for_model(target, 1, max_len), StaticKVCache.for_model(draft, 1, max_len)
    _cuda_sync(dev)
    t0 = time.perf_counter()
    # prefill both on the prompt; the target's last logits give the first token
    first = target(prompt, kv_cache=tc)[:, -1].argmax(-1)
    seq = torch.cat([prompt[0], first])  # 1-D, every token emitted so far
    rounds = drafted = accepted = 0
    while seq.numel() - T0 < max_new_tokens:
        # 1) draft k tokens (feed what the draft has not seen yet, then one token at a time)
        proposal = []
        step_in = seq[dc.seq_len:][None]
        for _ in range(k):
            d = draft(step_in, kv_cache=dc)[:, -1].argmax(-1)  # (1,)
            proposal.append(d)
            step_in = d[None]
        prop = torch.cat(proposal)  # (k,)
        # 2) the target scores [unseen tokens of seq, d_1..d_k] in one pass
        t_in = torch.cat([seq[tc.seq_len:], prop])[None]
        preds = target(t_in, kv_cache=tc)[0, -(k + 1):].argmax(-1)  # p_0..p_k, (k+1,)
        # 3) accept the agreeing prefix, then the target's own token
        agree = (prop == preds[:k]).long()
        n = int(agree.cumprod(0).sum())
        seq = torch.cat([seq, prop[:n], preds[n:n + 1]])
        rounds, drafted, accepted = rounds + 1, drafted + k, accepted + n
        # 4) roll back: the caches keep every token of seq except the newest one
        tc.crop(seq.numel() - 1)
        dc.crop(min(dc.seq_len, seq.numel() - 1))
    _cuda_sync(dev)
    wall = time.perf_counter() - t0
    return SpeculativeResult(seq[: T0 + max_new_tokens][None], T0, k, rounds, drafted, accepted, wall)


# =================================================================================================
# Measurement helpers (CPU: byte accounting; CUDA: allocator peaks and tokens/s)
# =================================================================================================


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter *and* buffer, counted once (tied weights once; packed buffers at their size)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.nbytes
    return total


def measure_decode(model, prompt: torch.Tensor, max_new_tokens: int, cache: str | None = "static",
                   cache_factory=None) -> dict:
    """Greedy-decode and report tokens/s, cache bytes and (on CUDA) ``torch.cuda.max_memory_allocated``.

    On CUDA: ``weights_mem`` is the allocator's count after loading the model, ``peak_mem`` the peak
    during decoding, ``kv_mem`` the growth attributable to the cache (peak minus weights minus the
    prompt). On CPU the same keys hold byte-accounted numbers (parameter/buffer and cache tensors).
    """
    dev = prompt.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    res = generate(model, prompt, max_new_tokens, cache=cache, cache_factory=cache_factory)
    out = {"tokens_per_s": max_new_tokens / res.wall_s, "wall_s": res.wall_s, "cache_bytes": res.cache_bytes,
           "weights_bytes": param_bytes(model), "memory_source": "byte accounting (CPU)"}
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        out.update(weights_mem=base, peak_mem=peak, kv_mem=peak - base,
                   memory_source="torch.cuda.max_memory_allocated")
    return out


def cuda_report(model, prompt: torch.Tensor, max_new_tokens: int = 256) -> dict:
    """The GPU-backed numbers: fp32 vs INT8-weight model, static cache vs INT8 cache (needs CUDA)."""
    from llmcore.architecture import quantization as Q

    if prompt.device.type != "cuda":
        raise LLMCoreError("cuda_report needs a model and prompt on a CUDA device (device='cuda'); "
                           "no GPU is available here")
    rows = {"fp32 weights, fp32 cache": measure_decode(model, prompt, max_new_tokens)}
    rows["fp32 weights, int8 cache"] = measure_decode(model, prompt, max_new_tokens,
                                                      cache_factory=Q.Int8KVCache.for_model)
    qm = Q.quantize_model(copy.deepcopy(model), "int8_channel")
    rows["int8 weights, fp32 cache"] = measure_decode(qm, prompt, max_new_tokens)
    return rows


def timing_curve(model, prompt: torch.Tensor, max_new_tokens: int, cache: str | None) -> list[float]:
    """Seconds per decode step (step 0 = prefill) for a greedy decode."""
    return generate(model, prompt, max_new_tokens, cache=cache).step_s


@torch.no_grad()
def kv_cache_perplexity(model, tokens: torch.Tensor, seq_len: int, max_windows: int | None, cache_cls) -> float:
    """Perplexity when attention reads keys/values back from ``cache_cls`` (e.g. INT8): one prefill per window."""
    model.eval()
    dev = next(model.parameters()).device
    n = (len(tokens) - 1) // seq_len
    n = min(n, max_windows) if max_windows else n
    w = tokens[: n * seq_len].view(n, seq_len).to(dev)
    cache = cache_cls.for_model(model, n, seq_len)
    logits = model(w, kv_cache=cache)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), w[:, 1:].reshape(-1))
    return math.exp(float(loss))


def perplexity(model, tokens: torch.Tensor, seq_len: int, max_windows: int | None = None) -> float:
    """``exp(mean next-token loss)`` over consecutive windows (see ``training.evaluate``)."""
    from llmcore.architecture.training import evaluate

    return math.exp(evaluate(model, tokens, seq_len, max_windows=max_windows))


# =================================================================================================
# The closed loop
# =================================================================================================

#: The draft model of speculative decoding: the tiny LM's recipe at half the width and one layer.
DRAFT_OVERRIDES = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=96, steps=300, desc="draft LM")


def load_models(device: str | torch.device = "cpu"):
    """The book's tiny pretrained LM (target) and a smaller draft trained the same way (both cached)."""
    from llmcore.architecture.pretrained import tiny_lm

    return tiny_lm(device=device), tiny_lm(device=device, **DRAFT_OVERRIDES)


def sampler_check(vocab: int = 264, batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Max |ours - HF| of each logits processor on the same random logits (``inf`` entries compared as masks)."""
    from transformers.generation import logits_process as lp

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=g) * 3
    ids = torch.randint(0, vocab, (batch, 20), generator=g)
    pairs = {
        "temperature 0.7": (apply_temperature(logits, 0.7), lp.TemperatureLogitsWarper(0.7)(ids, logits)),
        "top_k 10": (apply_top_k(logits, 10), lp.TopKLogitsWarper(10)(ids, logits)),
        "top_p 0.9": (apply_top_p(logits, 0.9), lp.TopPLogitsWarper(0.9)(ids, logits)),
        "repetition 1.3": (apply_repetition_penalty(logits, ids, 1.3),
                           lp.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())),
    }
    out = {}
    for name, (a, b) in pairs.items():
        same_mask = torch.equal(torch.isinf(a), torch.isinf(b))
        fin = torch.isfinite(a) & torch.isfinite(b)
        out[name] = float((a[fin] - b[fin]).abs().max()) if same_mask else float("inf")
    return out


def hf_beam(hf_model, prompt: torch.Tensor, max_new_tokens: int, num_beams: int) -> torch.Tensor:
    """HF ``generate`` beam search with no EOS (all beams run to the end), best first."""
    return hf_model.generate(prompt, num_beams=num_beams, num_return_sequences=num_beams, do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, eos_token_id=None,
                             pad_token_id=0, early_stopping=False)


@dataclass
class DecodingResults:
    toy: bool
    device: str
    sampler_diff: dict[str, float]
    beam_equal: bool
    beam_ours: torch.Tensor
    cache_equal: dict[str, bool]  # model variant -> greedy tokens identical with/without cache
    cache_bytes: dict[str, tuple[int, int]]  # variant -> (measured used bytes, formula)
    timing: dict[str, list[float]]  # "static"/"none" -> seconds per step
    spec: list[SpeculativeResult]
    spec_base_s: float  # target-alone cached greedy wall time
    spec_equal: bool
    quant: dict[str, dict]  # scheme -> {ppl, bytes..., err}
    kv_int8: dict[str, float]
    fp8_equal: dict[str, bool]
    cuda: dict | None = None
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage (machine-dependent)


def experiment(toy: bool = True, device: str = "auto", seed: int = 0) -> DecodingResults:
    """Samplers vs HF, KV cache (equality, bytes, timing), speculative decoding, quantization, (CUDA)."""
    from llmcore.architecture import quantization as Q
    from llmcore.architecture.llama import Llama, ModelConfig
    from llmcore.architecture.pretrained import corpus_ids
    from llmcore.core.device import pick_device
    from llmcore.core.seed import seed_everything

    dev = pick_device(device)
    seed_everything(seed)
    stage_s, t_stage = {}, [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        stage_s[name] = now - t_stage[0]
        t_stage[0] = now

    target_lm, draft_lm = load_models(dev)
    target, draft, tok = target_lm.model, draft_lm.model, target_lm.tokenizer
    _, val_ids = corpus_ids(tok)
    prompt = val_ids[:32][None].to(dev)
    lap("load models")

    # 1) samplers and beam search against Hugging Face
    sdiff = sampler_check(target.config.vocab_size, seed=seed)
    new_beam = 16 if toy else 48
    hf = target.to_hf()
    ours, _ = beam_search(target, prompt, new_beam, num_beams=4)
    beam_equal = torch.equal(ours, hf_beam(hf, prompt, new_beam, 4))
    lap("samplers + beam vs HF")

    # 2) KV cache: same greedy tokens with/without; bytes = formula (MHA and GQA/MQA variants)
    n_new = 48 if toy else 200
    variants = {"tiny LM (MHA, K=4)": target}
    for kvh in (2, 1):
        torch.manual_seed(seed)
        variants[f"random GQA K={kvh}"] = Llama(ModelConfig(**{**target.config.__dict__, "n_kv_heads": kvh})).to(dev)
    cache_equal, cache_bytes = {}, {}
    for name, m in variants.items():
        a = generate(m, prompt, n_new, cache="static")
        b = generate(m, prompt, n_new, cache=None)
        cache_equal[name] = torch.equal(a.tokens, b.tokens)
        c = m.config
        cache_bytes[name] = (a.cache_bytes, kv_cache_bytes(c.n_layers, c.n_kv_heads, c.head_dim,
                                                          next(m.parameters()).element_size(), prompt.shape[1] + n_new - 1,
                                                          1))
    # timing: tokens per step as the sequence grows (the model attends over up to max_seq_len positions)
    lap("cache equality")
    t_new = target.config.max_seq_len - 8 if not toy else 128
    timing = {name: timing_curve(target, prompt[:, :8], t_new, cache) for name, cache in
              (("static", "static"), ("none", None))}
    lap("cache timing")

    # 3) speculative decoding
    ks = (1, 2, 4, 6) if toy else (1, 2, 3, 4, 5, 6, 8)
    spec_new = 64 if toy else 200
    base = generate(target, prompt, spec_new, cache="static")
    spec = [speculative_generate(target, draft, prompt, spec_new, k) for k in progress(ks, desc="speculative k")]
    spec_equal = all(torch.equal(r.tokens, base.tokens) for r in spec)
    lap("speculative")

    # 4) quantization: storage, perplexity, error
    windows = 8 if toy else None
    quant = {"fp32": {"ppl": perplexity(target, val_ids, target.config.max_seq_len, windows)}}
    ref_bytes = Q.linear_weight_bytes(target)
    quant["fp32"].update(bytes=ref_bytes["total"], data_bytes=ref_bytes["data"], numel=ref_bytes["numel"])
    w = target.model.layers[0].mlp.up_proj.weight
    for scheme in progress(Q.SCHEMES, desc="quantization schemes"):
        qm = Q.quantize_model(target, scheme)
        b = Q.linear_weight_bytes(qm)
        quant[scheme] = {"ppl": perplexity(qm, val_ids, target.config.max_seq_len, windows),
                         "bytes": b["total"], "data_bytes": b["data"], "numel": b["numel"], **{
                             f"err_{k}": v for k, v in Q.quant_error(w, scheme).items()
                             if k in ("max_abs", "rel_fro")}}
    lap("weight quantization")
    # INT8 KV cache: perplexity (every window attends to its dequantized keys/values), greedy agreement, bytes
    quant["fp32"]["ppl_int8_kv"] = kv_cache_perplexity(target, val_ids, target.config.max_seq_len, windows,
                                                        Q.Int8KVCache)
    a = generate(target, prompt, n_new, cache="static")
    q8 = generate(target, prompt, n_new, cache_factory=Q.Int8KVCache.for_model)
    agree = float((a.tokens[0, prompt.shape[1]:] == q8.tokens[0, prompt.shape[1]:]).float().mean())
    first_diff = int((a.tokens[0] != q8.tokens[0]).nonzero()[0]) - prompt.shape[1] if agree < 1 else n_new
    kv_int8 = {"fp32_bytes": a.cache_bytes, "int8_bytes": q8.cache_bytes, "token_agreement": agree,
               "first_divergence": first_diff}
    # FP8: our hand-written rounding equals torch's casts
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50_000, generator=g) * torch.exp(2 * torch.randn(50_000, generator=g))
    fp8_equal = {}
    for fmt, (_, _, _, vmax, dtype) in Q.FP8_FORMATS.items():
        xc = x.clamp(-vmax, vmax)
        fp8_equal[fmt] = torch.equal(Q.fp8_round(xc, fmt), xc.to(dtype).float())

    lap("int8 KV cache + fp8")
    cuda = cuda_report(target, prompt, 256 if toy else 1024) if dev.type == "cuda" else None
    lap("cuda")
    return DecodingResults(toy, str(dev), sdiff, beam_equal, ours, cache_equal, cache_bytes, timing, spec,
                           base.wall_s, spec_equal, quant, kv_int8, fp8_equal, cuda, stage_s)


def make_report(res: DecodingResults, toy: bool, device: str, seed: int):
    from llmcore.core.report import Report

    rep = Report("decoding", "Decoding Strategy / 解码策略", toy, device, seed)
    rep.metric("max |ours - HF| over samplers", max(res.sampler_diff.values()))
    rep.metric("beam search == HF generate(num_beams=4)", res.beam_equal)
    rep.metric("cache == no cache, all variants", all(res.cache_equal.values()))
    rep.metric("max |cache bytes - formula|", max(abs(a - b) for a, b in res.cache_bytes.values()))
    for r in res.spec:
        rep.metric(f"speculative k={r.k}: acceptance", r.acceptance_rate)
        rep.metric(f"speculative k={r.k}: tokens/target call", r.tokens_per_target_call)
    q = res.quant
    base = q["fp32"]["ppl"]
    rep.metric("perplexity fp32", base)
    for s in q:
        if s != "fp32":
            rep.metric(f"perplexity {s} (+%)", 100 * (q[s]["ppl"] / base - 1))
    fp16 = 2 * q["fp32"]["numel"]
    rep.metric("int8 data bytes / fp16", q["int8_channel"]["data_bytes"] / fp16)
    rep.metric("int8 total bytes / fp16", q["int8_channel"]["bytes"] / fp16)
    rep.metric("int4 data bytes / fp16", q["int4_group"]["data_bytes"] / fp16)
    rep.metric("int4 total bytes (g=16) / fp16", q["int4_group"]["bytes"] / fp16)
    rep.metric("int8 KV cache bytes / fp32", res.kv_int8["int8_bytes"] / res.kv_int8["fp32_bytes"])
    rep.metric("int8 KV cache perplexity (+%)", 100 * (q["fp32"]["ppl_int8_kv"] / base - 1))
    rep.metric("int8 KV cache greedy agreement", res.kv_int8["token_agreement"])
    rep.check("samplers equal HF processors (max abs diff)", max(res.sampler_diff.values()), "<=", 0.0)
    rep.check("beam search equals HF (1 = yes)", float(res.beam_equal), "==", 1)
    rep.check("greedy tokens identical with/without cache (1 = yes)", float(all(res.cache_equal.values())), "==", 1)
    rep.check("cache bytes - formula", max(abs(a - b) for a, b in res.cache_bytes.values()), "==", 0)
    rep.check("speculative output equals target greedy (1 = yes)", float(res.spec_equal), "==", 1)
    rep.check("INT8 perplexity increase (%)", 100 * (q["int8_channel"]["ppl"] / base - 1), "<=", 1.0)
    rep.check("INT4 perplexity increase (%)", 100 * (q["int4_group"]["ppl"] / base - 1), "<=", 5.0)
    rep.check("INT8 weight data bytes / fp16", q["int8_channel"]["data_bytes"] / fp16, "==", 0.5)
    rep.check("INT4 weight data bytes / fp16", q["int4_group"]["data_bytes"] / fp16, "==", 0.25)
    rep.check("our FP8 rounding equals torch casts (1 = yes)", float(all(res.fp8_equal.values())), "==", 1)
    if res.cuda:
        for name, row in res.cuda.items():
            rep.notes.append(f"CUDA {name}: {row['tokens_per_s']:.0f} tok/s, peak {row['peak_mem'] / 2**20:.2f} MiB, "
                             f"weights {row['weights_mem'] / 2**20:.2f} MiB")
    return rep


def run(toy: bool = True, device: str = "auto", seed: int = 0):
    """The closed loop: :func:`experiment` then :func:`make_report`."""
    res = experiment(toy=toy, device=device, seed=seed)
    return make_report(res, toy, res.device, seed)
