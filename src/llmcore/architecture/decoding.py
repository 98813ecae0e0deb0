r"""Decoding strategies: beam search, speculative decoding, and the Decoding chapter's closed loop.

The pieces every chapter shares live in the model kit and are re-exported here for the chapter:
the samplers and the one generation loop in :mod:`llmcore.architecture.generate`
(:func:`generate`, :class:`SamplerConfig`, ``apply_*`` processors), the KV caches in
:mod:`llmcore.architecture.kv_cache` (:class:`StaticKVCache`, :class:`Int8KVCache`, ...). Shapes:
``B`` batch, ``V`` vocabulary, ``T`` new tokens, ``S`` cached + new positions, ``K`` key/value heads,
``D`` head size, ``L`` layers.

* **Beam search**: keep the ``n`` best partial sequences by summed log-probability.
* **Speculative decoding** (greedy): a small draft proposes ``k`` tokens, the target scores all of
  them in one forward pass and keeps the longest agreeing prefix plus its own next token, so the
  output is *exactly* the target's greedy output. Both caches are cropped back after a rejection.
* **Measurements**: cache size $2 \cdot L \cdot K \cdot D \cdot \text{bytes} \cdot S \cdot B$ against
  :func:`kv_cache_bytes`, tokens/s, and (on CUDA) allocator peaks; weight/KV quantization perplexity.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle

from llmcore.architecture import quantization as Q
from llmcore.architecture.generate import (  # noqa: F401  (re-exported for the chapter)
    GenerationResult,
    SamplerConfig,
    _cuda_sync,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    generate,
    next_token,
    process_logits,
)
from llmcore.architecture.kv_cache import (  # noqa: F401  (re-exported for the chapter)
    DynamicKVCache,
    Int8KVCache,
    StaticKVCache,
    kv_cache_bytes,
)
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.architecture.pretrained import corpus_ids, tiny_lm
from llmcore.architecture.speculative import (  # noqa: F401  (re-exported for the chapter)
    SpeculativeResult,
    expected_tokens_per_pass,
    plot_speculative_round,
    rejection_probs,
    sampling_check,
    speculative_accept,
    speculative_generate,
    speculative_sample,
)
from llmcore.architecture.training import evaluate
from llmcore.core.device import pick_device
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report
from llmcore.core.seed import seed_everything

# =================================================================================================
# Beam search
# =================================================================================================


@torch.no_grad()
def beam_search(model, prompt: torch.Tensor, max_new_tokens: int, num_beams: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Beam search without an end-of-sequence token (every beam runs ``max_new_tokens`` steps).

    Beam score = $\sum_t \log p(y_t \mid y_{<t})$. Each step scores all ``num_beams x V`` one-token
    extensions and keeps the ``num_beams`` best. ``prompt (1, T)`` -> ``(sequences (n, T + new), scores (n,))``
    sorted best first (as HF ``generate(num_beams=n, num_return_sequences=n)`` with no EOS).
    Uses a :class:`DynamicKVCache` whose rows are re-ordered (``reorder``) when beams are re-ranked.
    A search over ``n`` hypotheses, not one sampled continuation, so it is not a mode of :func:`generate`.
    """
    if prompt.shape[0] != 1:
        raise LLMCoreError("beam_search takes one prompt (batch 1)")
    model.eval()
    kv = DynamicKVCache(model.config.n_layers)
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
        kv.reorder(beam)  # the cache rows follow the surviving beams
        step_in = tok[:, None]
    return seqs, scores


# =================================================================================================
# Diagram: the KV cache grows by one column per step
# =================================================================================================


def plot_kv_cache_growth(ax, prompt_len: int = 3, steps: int = 4):
    r"""What a decode step computes and what it reads, with and without a KV cache.

    Row $t$ (top to bottom: the prefill, then ``steps`` decode steps) shows the positions the model
    attends over at that step. Orange: positions whose $k, v$ are *computed* this step; blue: positions
    whose $k, v$ are *read back* from the cache. With the cache (left) only the newest position is
    computed; without it (right) every position is recomputed, every step. The cache holds
    $2 \cdot L \cdot K \cdot D \cdot \text{bytes}$ per position. Returns ``ax``; one square per (row,
    position) on each side, ``2 * sum(prompt_len + t for t in range(steps + 1))`` in all.
    """
    check_range("prompt_len", prompt_len, 1)
    check_range("steps", steps, 1)
    width = prompt_len + steps
    gap = width + 2.5
    ax.set_xlim(-2.6, 2 * width + 2.8)
    ax.set_ylim(-steps - 1.6, 1.6)
    ax.set_aspect("equal")
    ax.axis("off")
    computed, cached = "#fdae6b", "#9ecae1"
    for side, with_cache in ((0.0, True), (gap, False)):
        for t in range(steps + 1):
            n = prompt_len + t
            for j in range(n):
                new = (t == 0) or (j == n - 1) or not with_cache
                ax.add_patch(Rectangle((side + j, -t), 0.9, 0.9, fc=computed if new else cached, ec="k", lw=0.6))
            ax.text(side - 0.3, -t + 0.45, "prefill" if t == 0 else f"step {t}", ha="right", va="center",
                    fontsize=7)
        ax.text(side + width / 2, 1.2, "with KV cache: compute 1, read t" if with_cache
                else "no cache: recompute all t positions", ha="center", fontsize=8)
    ax.text(0, -steps - 1.2, "orange: k, v computed this step    blue: k, v read from the cache "
            r"($2\,L\,K\,D\cdot$bytes per position)", fontsize=7)
    return ax


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


def measure_decode(model, prompt: torch.Tensor, max_new_tokens: int, cache: str | object | None = "static") -> dict:
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
    res = generate(model, prompt, max_new_tokens, cache=cache)
    out = {"tokens_per_s": max_new_tokens / res.wall_s, "wall_s": res.wall_s, "cache_bytes": res.cache_bytes,
           "weights_bytes": param_bytes(model), "memory_source": "byte accounting (CPU)"}
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        out.update(weights_mem=base, peak_mem=peak, kv_mem=peak - base,
                   memory_source="torch.cuda.max_memory_allocated")
    return out


def cuda_report(model, prompt: torch.Tensor, max_new_tokens: int = 256) -> dict:
    """The GPU-backed numbers: fp32 vs INT8-weight model, static cache vs INT8 cache (needs CUDA)."""
    if prompt.device.type != "cuda":
        raise LLMCoreError("cuda_report needs a model and prompt on a CUDA device (device='cuda'); "
                           "no GPU is available here")
    max_new_tokens = min(max_new_tokens, model.config.max_seq_len + 1 - prompt.shape[1])  # stay within RoPE's range
    rows = {"fp32 weights, fp32 cache": measure_decode(model, prompt, max_new_tokens)}
    rows["fp32 weights, int8 cache"] = measure_decode(model, prompt, max_new_tokens, cache="int8")
    qm = Q.quantize_model(copy.deepcopy(model), "int8_channel")
    rows["int8 weights, fp32 cache"] = measure_decode(qm, prompt, max_new_tokens)
    return rows


def timing_curve(model, prompt: torch.Tensor, max_new_tokens: int, cache: str | None) -> list[float]:
    """Seconds per decode step (step 0 = prefill) for a greedy decode."""
    return generate(model, prompt, max_new_tokens, cache=cache).step_s


def cache_speedup(new_tokens: int = 512, prompt_len: int = 16, d_model: int = 256, layers: int = 4, heads: int = 8,
                  kv_heads: int = 2, device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Greedy decode of ``new_tokens`` with no cache (recompute the prefix every step) and with the static
    cache, same randomly initialised model (weights do not change timings) and prompt, one run each.

    Returns the wall seconds of both, their ratio and whether the tokens are identical; the benchmark
    ``benchmarks/kv_cache.py`` and the chapter call it (a wall-clock ratio: shown, never checked).
    """
    dev = pick_device(device)
    seed_everything(seed)
    cfg = ModelConfig(vocab_size=264, d_model=d_model, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                      ffn_hidden=None, max_seq_len=prompt_len + new_tokens, init_std=0.1)
    model = Llama(cfg).to(dev).eval()
    prompt = torch.randint(0, 256, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(dev)
    none = generate(model, prompt, new_tokens, cache=None)
    static = generate(model, prompt, new_tokens, cache="static")
    return {"new_tokens": new_tokens, "params": model.num_params(), "no_cache_s": none.wall_s,
            "cache_s": static.wall_s, "ratio": none.wall_s / static.wall_s,
            "same_tokens": torch.equal(none.tokens, static.tokens), "cache_bytes": static.cache_bytes,
            "model": f"d={d_model} L={layers} H={heads} K={kv_heads}", "model_obj": model, "prompt": prompt}


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
    return math.exp(evaluate(model, tokens, seq_len, max_windows=max_windows))


# =================================================================================================
# The closed loop
# =================================================================================================

#: Two-token continuations drawn by speculative sampling for the distribution check (toy, full).
SAMPLING_N = {True: 4000, False: 40000}
#: Greedy speculative decoding: tokens per verification pass may differ from the i.i.d. formula
#: $(1-\alpha^{k+1})/(1-\alpha)$ (pooled $\alpha$) by at most this fraction (acceptance is not i.i.d.).
TOKENS_PER_PASS_RTOL = 0.15

#: The draft model of speculative decoding: the tiny LM's recipe at half the width and one layer.
DRAFT_OVERRIDES = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=96, steps=300, desc="draft LM")


def load_models(device: str | torch.device = "cpu"):
    """The book's tiny pretrained LM (target) and a smaller draft trained the same way (both cached)."""
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
    spec_sampling: dict  # sampling_check: chi-square p-values, TV distances, first-position acceptance
    quant: dict[str, dict]  # scheme -> {ppl, bytes..., err}
    kv_int8: dict[str, float]
    fp8_equal: dict[str, bool]
    cuda: dict | None = None
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage (machine-dependent)


def experiment(toy: bool = True, device: str = "auto", seed: int = 0) -> DecodingResults:
    """Samplers vs HF, KV cache (equality, bytes, timing), speculative decoding, quantization, (CUDA)."""
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
    # speculative *sampling*: many two-token continuations of the prompt against the target's exact distribution
    gen = torch.Generator(device=dev).manual_seed(seed)
    spec_sampling = sampling_check(target, draft, prompt, SAMPLING_N[toy], k=2, generator=gen)
    lap("speculative sampling")

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
                                                        Int8KVCache)
    a = generate(target, prompt, n_new, cache="static")
    q8 = generate(target, prompt, n_new, cache="int8")
    agree = float((a.tokens[0, prompt.shape[1]:] == q8.tokens[0, prompt.shape[1]:]).float().mean())
    # the first new token (0-based) where the INT8-cache decode differs; None when all n_new agree
    first_diff = int((a.tokens[0] != q8.tokens[0]).nonzero()[0]) - prompt.shape[1] if agree < 1 else None
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
                           base.wall_s, spec_equal, spec_sampling, quant, kv_int8, fp8_equal, cuda, stage_s)


def make_report(res: DecodingResults, toy: bool, device: str, seed: int):
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
    # speculative decoding, per position (new in the editorial pass; the criteria above are unchanged)
    for r in res.spec:
        rep.metric(f"speculative k={r.k}: pooled per-position acceptance alpha", r.alpha)
        rep.metric(f"speculative k={r.k}: tokens/verification pass", r.tokens_per_pass)
        rep.metric(f"speculative k={r.k}: (1-alpha^(k+1))/(1-alpha)", r.predicted_tokens_per_pass)
    ss = res.spec_sampling
    rep.metric(f"speculative sampling k={ss['k']}: pooled per-position acceptance alpha", ss["alpha"])
    rep.metric(f"speculative sampling k={ss['k']}: tokens/verification pass", ss["tokens_per_pass"])
    rep.metric(f"speculative sampling k={ss['k']}: (1-alpha^(k+1))/(1-alpha)", ss["predicted_tokens_per_pass"])
    worst = max([abs(r.tokens_per_pass / r.predicted_tokens_per_pass - 1) for r in res.spec]
                + [abs(ss["tokens_per_pass"] / ss["predicted_tokens_per_pass"] - 1)])
    rep.check("speculative tokens/pass vs (1-alpha^(k+1))/(1-alpha), max rel. error", worst, "<=",
              TOKENS_PER_PASS_RTOL)
    rep.check(f"speculative sampling: chi-square p, first token ({ss['n']} samples)", ss["chi2_p_x1"], ">=", 1e-3)
    rep.check("speculative sampling: chi-square p, first two tokens (joint)", ss["chi2_p_joint"], ">=", 1e-3)
    rep.check("same test on draft samples rejects them (chi-square p)", ss["chi2_p_draft_samples"], "<=", 1e-6)
    rep.check("first-position acceptance vs sum(min(p, q)) (standard errors)",
              abs(ss["acceptance_1"] - ss["acceptance_1_closed_form"]) / ss["acceptance_1_se"], "<=", 4.0)
    if res.cuda:
        for name, row in res.cuda.items():
            rep.notes.append(f"CUDA {name}: {row['tokens_per_s']:.0f} tok/s, peak {row['peak_mem'] / 2**20:.2f} MiB, "
                             f"weights {row['weights_mem'] / 2**20:.2f} MiB")
    return rep


def run(toy: bool = True, device: str = "auto", seed: int = 0):
    """The closed loop: :func:`experiment` then :func:`make_report`."""
    res = experiment(toy=toy, device=device, seed=seed)
    return make_report(res, toy, res.device, seed)
