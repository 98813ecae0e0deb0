r"""Prefill / decode (PD) disaggregation: a prefill worker and a decode worker, the KV cache in between.

Serving an LLM has two phases with opposite profiles (DistServe, Zhong et al., 2024; Splitwise,
Patel et al., 2024):

* **prefill** runs the whole prompt at once — compute-bound, its time grows with the prompt length;
  it produces the KV cache and the first token (**TTFT**, time to first token);
* **decode** adds one token per step for every running request — memory-bound, a step costs about the
  same whatever the batch (**TPOT**, time per output token).

A *colocated* worker interleaves both: every prefill it runs stalls all the decodes in flight, so TPOT
jitters with the arrival of long prompts. A *disaggregated* system runs prefills on one worker, ships the
KV cache (``2 x layers x kv_heads x head_dim x prompt_len`` values per request) to a decode worker that
only decodes, and trades a KV transfer (and a separately provisioned prefill pool) for a steady TPOT.

Both systems here use the same two processes (gloo ranks): colocated = two identical workers that split
the requests, disaggregated = rank 0 prefills, rank 1 decodes. The model is the book's ``Llama`` (tiny,
random weights) with the kit's KV-cache protocol (:mod:`llmcore.architecture.kv_cache`): a prefill fills
a :class:`~llmcore.architecture.kv_cache.DynamicKVCache`, the decode worker refills one from the shipped
tensor through ``update``; greedy tokens are checked against the kit's single-process ``generate``.
Every prefill / decode step is padded to a
GPU-like cost model (:class:`CostModel`) so that timings show the scheduling effect rather than the
2-core CPU's noise (``pad=False`` uses the raw compute time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from llmcore.architecture.generate import generate
from llmcore.architecture.kv_cache import DynamicKVCache, kv_cache_bytes
from llmcore.architecture.llama import Llama, ModelConfig
from llmcore.engineering.dist_utils import Comm, worker_device

# -- the model and its KV cache: the book's Llama through the cache protocol -------------------------

#: The served model: the book's decoder (:class:`~llmcore.architecture.llama.Llama`), tiny and random
#: (the experiment is about scheduling, not text); no special tokens in its 64-token vocabulary.
PD_MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, max_seq_len=512,
                       bos_id=None, eos_id=None, pad_id=None)


def build_model(cfg: PDConfig) -> Llama:
    """The same random ``Llama`` on every rank and in the reference (seeded by ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return Llama(cfg.lm).eval()


def reference_tokens(model: Llama, prompt: torch.Tensor, n_new: int) -> list[int]:
    """Greedy decoding in one process with the kit's :func:`~llmcore.architecture.generate.generate`."""
    return generate(model, prompt[None], n_new, cache="dynamic").tokens[0, len(prompt):].tolist()


def kv_to_tensor(cache, n_layers: int) -> torch.Tensor:
    """Stack a batch-1 cache (any of the protocol, read by ``get``) into one ``(layers, 2, K, T, D)`` tensor
    for a single send."""
    return torch.stack([torch.stack(cache.get(i))[:, 0] for i in range(n_layers)])


def tensor_to_kv(t: torch.Tensor) -> DynamicKVCache:
    """Inverse of :func:`kv_to_tensor`: a cache holding the shipped ``(layers, 2, K, T, D)`` keys/values,
    filled through the protocol's ``update`` (a static or paged cache would be filled the same way)."""
    cache = DynamicKVCache(t.shape[0])
    for i in range(t.shape[0]):
        cache.update(i, t[i, 0][None], t[i, 1][None])
    return cache


def kv_bytes(lm: ModelConfig, prompt_len: int) -> int:
    """``2 x layers x kv_heads x head_dim x prompt_len x 4`` bytes (fp32, one sequence)."""
    return kv_cache_bytes(lm.n_layers, lm.n_kv_heads, lm.head_dim, 4, prompt_len, 1)


# -- workload and cost model --------------------------------------------------------------------------


@dataclass
class CostModel:
    """GPU-like op times: prefill is compute-bound (linear in prompt tokens), a decode step is
    memory-bound (a fixed cost for reading the weights plus a little per request in the batch)."""

    prefill_base_s: float = 0.006
    prefill_per_token_s: float = 0.0003
    decode_base_s: float = 0.024
    decode_per_seq_s: float = 0.001

    def prefill(self, prompt_len: int) -> float:
        return self.prefill_base_s + self.prefill_per_token_s * prompt_len

    def decode(self, batch: int) -> float:
        return self.decode_base_s + self.decode_per_seq_s * batch


@dataclass
class PDConfig:
    n_requests: int = 10
    rates: tuple[float, ...] = (5.0, 10.0, 20.0)  # request arrivals per second (Poisson)
    short_len: int = 16
    long_len: int = 256
    p_long: float = 0.25
    n_new: int = 10
    pad: bool = True
    repeats: int = 2  # timing: per rate keep the least-disturbed repeat (smallest total makespan)
    seed: int = 0
    lm: ModelConfig = field(default_factory=lambda: replace(PD_MODEL))
    cost: CostModel = field(default_factory=CostModel)


def make_workload(cfg: PDConfig, rate: float, seed: int) -> list[dict[str, Any]]:
    """Poisson arrivals at ``rate``/s, a mix of short and long prompts of random tokens."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, cfg.n_requests))
    t -= t[0]
    reqs = []
    for i in range(cfg.n_requests):
        L = cfg.long_len if rng.random() < cfg.p_long else cfg.short_len
        reqs.append({"id": i, "arrival": float(t[i]),
                     "prompt": torch.from_numpy(rng.integers(0, cfg.lm.vocab_size, L)).long()})
    return reqs


def _pad(t0: float, dur: float, on: bool) -> None:
    if on:
        left = t0 + dur - time.perf_counter()
        if left > 0:
            time.sleep(left)


class _Clock:
    def __init__(self, t0: float):
        self.t0 = t0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def sleep_until(self, t: float) -> None:
        left = t - self.now()
        if left > 0:
            time.sleep(left)


@torch.no_grad()
def _decode_step(model, running: list[dict], cfg: PDConfig, clock: _Clock) -> None:
    """One decode step for every running request (one new token each), padded to the cost model."""
    t0 = time.perf_counter()
    for r in running:
        logits = model(torch.tensor([[r["tokens"][-1]]]), kv_cache=r["cache"])  # the cache grows in place
        r["tokens"].append(int(logits[0, -1].argmax()))
    _pad(t0, cfg.cost.decode(len(running)), cfg.pad)
    now = clock.now()
    for r in running:
        r["times"].append(now)


@torch.no_grad()
def _prefill(model, req: dict, cfg: PDConfig, clock: _Clock) -> None:
    """Run the prompt once: fills a fresh KV cache and yields the first token."""
    t0 = time.perf_counter()
    req["cache"] = DynamicKVCache(model.config.n_layers)
    logits = model(req["prompt"][None], kv_cache=req["cache"])
    req["tokens"] = [int(logits[0, -1].argmax())]
    _pad(t0, cfg.cost.prefill(len(req["prompt"])), cfg.pad)
    req["times"] = [clock.now()]


def serve_colocated(model, reqs: list[dict], cfg: PDConfig, clock: _Clock) -> list[dict]:
    """One worker doing both phases; new prompts are prefilled first (they stall running decodes)."""
    waiting, running, done = sorted(reqs, key=lambda r: r["arrival"]), [], []
    while waiting or running:
        arrived = [r for r in waiting if r["arrival"] <= clock.now()]
        if arrived:
            for r in arrived:
                waiting.remove(r)
                _prefill(model, r, cfg, clock)
                running.append(r)
        elif running:
            _decode_step(model, running, cfg, clock)
        else:
            clock.sleep_until(waiting[0]["arrival"])
        for r in [r for r in running if len(r["tokens"]) >= cfg.n_new]:
            running.remove(r)
            done.append(r)
    return done


def _doorbell():
    """The process group's key-value store: a counter the prefill worker bumps per shipped request, so the
    decode worker can *poll* for arrivals between decode steps (gloo's ``irecv`` cannot be polled)."""
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def serve_prefill(model, reqs: list[dict], cfg: PDConfig, clock: _Clock, comm: Comm, key: str) -> list[dict]:
    """Rank 0 of the disaggregated system: prefill in arrival order, ship (header, KV) to rank 1."""
    works, bell = [], _doorbell()
    for r in sorted(reqs, key=lambda r: r["arrival"]):
        clock.sleep_until(r["arrival"])
        _prefill(model, r, cfg, clock)
        kv = kv_to_tensor(r.pop("cache"), cfg.lm.n_layers)
        header = torch.tensor([r["id"], len(r["prompt"]), r["tokens"][0]], dtype=torch.int64)
        works += [comm.send(header, 1, tag="pd.header"), comm.send(kv, 1, tag="pd.kv_cache")]
        bell.add(key, 1)  # ring: one more KV cache is on its way
    for w in works:
        w.wait()
    return reqs


def serve_decode(model, cfg: PDConfig, clock: _Clock, comm: Comm, key: str) -> list[dict]:
    """Rank 1: between decode steps, admit every request whose KV cache was shipped, then run one batched
    decode step; block only when nothing is running."""
    L, K, D = cfg.lm.n_layers, cfg.lm.n_kv_heads, cfg.lm.head_dim
    bell = _doorbell()
    running, done, admitted = [], [], 0
    while admitted < cfg.n_requests or running:
        shipped = bell.add(key, 0)  # non-blocking read of the counter
        while admitted < shipped or (not running and admitted < cfg.n_requests):
            rid, plen, first = comm.recv(torch.empty(3, dtype=torch.int64), 0).tolist()
            kv = comm.recv(torch.empty(L, 2, K, plen, D), 0)
            running.append({"id": rid, "tokens": [first], "cache": tensor_to_kv(kv), "times": [clock.now()]})
            admitted += 1
        _decode_step(model, running, cfg, clock)
        for r in [r for r in running if len(r["tokens"]) >= cfg.n_new]:
            running.remove(r)
            done.append(r)
    return done


def pd_worker(rank: int, world: int, cfg: PDConfig) -> list[dict[str, Any]]:
    """For each arrival rate: the colocated system, then the disaggregated one (2 ranks)."""
    if world != 2:
        raise ValueError("the PD experiment uses exactly 2 ranks (prefill + decode)")
    model = build_model(cfg)
    comm = Comm()
    results = []
    for k, rate in enumerate(cfg.rates):
        reqs = make_workload(cfg, rate, cfg.seed + k)
        best: dict[str, Any] | None = None
        for rep in range(max(1, cfg.repeats)):
            row = _serve_both(rank, model, reqs, cfg, comm, f"{k}/{rep}")
            row["rate"] = rate
            if best is None or row["makespan"] < best["makespan"]:
                best = row
        results.append(best)
    return [{"rows": results, "kv_sent_bytes": comm.sent_bytes(tag="pd.kv_cache") // max(1, cfg.repeats)}]


def _serve_both(rank: int, model, reqs: list[dict], cfg: PDConfig, comm: Comm, key: str) -> dict[str, Any]:
    """One repeat at one rate: the colocated system, then the disaggregated one."""
    row: dict[str, Any] = {"makespan": 0.0}
    dev = worker_device(rank)  # an NCCL group only moves CUDA tensors
    for mode in ("colocated", "disaggregated"):
        mine = [dict(r) for r in reqs if mode == "disaggregated" or r["id"] % 2 == rank]
        t0 = torch.tensor([time.perf_counter()], dtype=torch.float64, device=dev)
        dist.barrier()
        dist.broadcast(t0, 0)  # one time origin: perf_counter is system-wide
        clock = _Clock(float(t0))
        if mode == "colocated":
            out = serve_colocated(model, mine, cfg, clock)
        elif rank == 0:
            out = serve_prefill(model, mine, cfg, clock, comm, f"pd/shipped/{key}")
        else:
            out = serve_decode(model, cfg, clock, comm, f"pd/shipped/{key}")
        span = torch.tensor([clock.now()], dtype=torch.float64, device=dev)
        dist.all_reduce(span, op=dist.ReduceOp.MAX)
        row["makespan"] += span.item()  # the same on both ranks, so both keep the same repeat
        arrival = {r["id"]: r["arrival"] for r in reqs}
        row[mode] = [{"id": r["id"], "arrival": arrival[r["id"]], "times": r["times"], "tokens": r["tokens"],
                      "prompt_len": len(reqs[r["id"]]["prompt"])} for r in out]
    return row


def summarize(ranks: list[list[dict]], cfg: PDConfig) -> list[dict[str, Any]]:
    """Merge the two ranks' records per rate: TTFT and TPOT per request, and their means / p90."""
    model = build_model(cfg)
    out = []
    for k, rate in enumerate(cfg.rates):
        reqs = make_workload(cfg, rate, cfg.seed + k)
        ref = {r["id"]: reference_tokens(model, r["prompt"], cfg.n_new) for r in reqs}
        row: dict[str, Any] = {"rate": rate}
        for mode in ("colocated", "disaggregated"):
            if mode == "colocated":
                recs = [rec for rk in ranks for rec in rk[0]["rows"][k][mode]]
            else:  # timings: first token from rank 0, the rest from rank 1
                first = {rec["id"]: rec["times"][0] for rec in ranks[0][0]["rows"][k][mode]}
                recs = [dict(rec, times=[first[rec["id"]], *rec["times"][1:]]) for rec in ranks[1][0]["rows"][k][mode]]
            ttft = np.array([rec["times"][0] - rec["arrival"] for rec in recs])
            tpot = np.array([(rec["times"][-1] - rec["times"][0]) / (len(rec["times"]) - 1) for rec in recs])
            gaps = np.concatenate([np.diff(rec["times"]) for rec in recs])
            row[mode] = {
                "n": len(recs), "ttft": ttft, "tpot": tpot,
                "ttft_mean_ms": 1e3 * ttft.mean(), "ttft_p90_ms": 1e3 * np.percentile(ttft, 90),
                "tpot_mean_ms": 1e3 * tpot.mean(), "tpot_p90_ms": 1e3 * np.percentile(tpot, 90),
                "max_gap_ms": 1e3 * gaps.max(),
                "tokens_match": all(rec["tokens"] == ref[rec["id"]] for rec in recs) and len(recs) == len(reqs),
            }
        out.append(row)
    return out


def expected_kv_bytes(cfg: PDConfig) -> int:
    """Every request's prompt KV cache crosses from the prefill to the decode worker once."""
    return sum(kv_bytes(cfg.lm, len(r["prompt"])) for k, rate in enumerate(cfg.rates)
               for r in make_workload(cfg, rate, cfg.seed + k))


def plot_tradeoff(summary: list[dict[str, Any]], axes=None):
    """Mean TTFT and p90 TPOT against the arrival rate, colocated vs disaggregated."""
    import matplotlib.pyplot as plt

    if axes is None:
        _fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    rates = [s["rate"] for s in summary]
    for mode, marker in (("colocated", "o"), ("disaggregated", "s")):
        axes[0].plot(rates, [s[mode]["ttft_mean_ms"] for s in summary], marker=marker, label=mode)
        axes[1].plot(rates, [s[mode]["tpot_p90_ms"] for s in summary], marker=marker, label=mode)
    axes[0].set(xlabel="arrival rate (req/s)", ylabel="mean TTFT (ms)", title="time to first token")
    axes[1].set(xlabel="arrival rate (req/s)", ylabel="p90 TPOT (ms)", title="time per output token")
    axes[1].legend()
    return axes

