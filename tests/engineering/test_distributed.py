"""Tensor / pipeline / expert parallelism equal the single-process model; bubble; bytes; PD."""

from __future__ import annotations

import pytest
import torch

from llmcore.architecture.kv_cache import DynamicKVCache, kv_cache_bytes
from llmcore.engineering.dist_utils import launch
from llmcore.engineering.expert_parallel import EPConfig, ep_worker
from llmcore.engineering.pd_disagg import (
    PDConfig,
    build_model,
    expected_kv_bytes,
    kv_to_tensor,
    pd_worker,
    reference_tokens,
    summarize,
    tensor_to_kv,
)
from llmcore.engineering.pipeline import PPConfig, bubble_formula, measured_bubble, pp_worker, schedule_ops
from llmcore.engineering.tensor_parallel import TPConfig, tp_worker


@pytest.mark.parametrize("world", [2, 4])
def test_tensor_parallel_block_equals_single_process(world):
    res = launch(tp_worker, world, (TPConfig(),))
    for r in res:
        assert r["out_err"] < 1e-5
        assert r["x_grad_err"] < 1e-5
        assert r["max_grad_err"] < 1e-5, r["grad_err"]
        assert r["sent_bytes"] == r["analytic_bytes"]  # 4 ring all-reduces of B*T*d*4 bytes
        assert r["all_reduces"] == 4
        assert r["params_local"] < r["params_full"]


def test_tensor_parallel_gqa_block_equals_single_process():
    """The kit's LLaMA block with 4 query and 2 key/value heads: each rank keeps its heads' GQA partner."""
    for r in launch(tp_worker, 2, (TPConfig(n_kv_heads=2),)):
        assert r["out_err"] < 1e-5 and r["x_grad_err"] < 1e-5 and r["max_grad_err"] < 1e-5, r["grad_err"]
        assert r["sent_bytes"] == r["analytic_bytes"] and r["all_reduces"] == 4


@pytest.mark.parametrize("world", [2, 4])
def test_pipeline_equals_single_process_and_bubble_follows_formula(world):
    cfgs = [PPConfig(schedule=s, micro_batches=m) for s in ("gpipe", "1f1b") for m in (1, 4)]
    for _attempt in range(2):  # the bubble is a timing: one re-run if a loaded machine blurred it
        res = launch(pp_worker, world, (cfgs,))
        dev = [abs(measured_bubble([res[r][k] for r in range(world)]) - bubble_formula(world, c.micro_batches))
               for k, c in enumerate(cfgs)]
        if max(dev) < 0.05:
            break
    assert max(dev) < 0.05, dev
    for k, cfg in enumerate(cfgs):
        ranks = [res[r][k] for r in range(world)]
        assert max(r["loss_err"] for r in ranks) < 1e-5
        assert max(r["grad_err"] for r in ranks) < 1e-5
        assert all(r["sent_bytes"] == r["expected_bytes"] for r in ranks)
        if cfg.schedule == "gpipe":
            assert ranks[0]["peak_stash"] == cfg.micro_batches
        else:
            assert ranks[0]["peak_stash"] == min(world, cfg.micro_batches)


@pytest.mark.parametrize("p,m", [(2, 1), (2, 5), (4, 3), (4, 8)])
def test_schedules_are_complete_and_causal(p, m):
    for kind in ("gpipe", "1f1b"):
        for r in range(p):
            ops = schedule_ops(kind, p, m, r)
            assert sorted(ops) == sorted([("F", i) for i in range(m)] + [("B", i) for i in range(m)])
            assert all(ops.index(("F", i)) < ops.index(("B", i)) for i in range(m))
            if kind == "1f1b":  # never more than p - r micro-batches in flight
                live = peak = 0
                for op, _ in ops:
                    live += 1 if op == "F" else -1
                    peak = max(peak, live)
                assert peak <= min(p - r, m)
    with pytest.raises(ValueError):
        schedule_ops("zb", 2, 2, 0)


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_moe_equals_single_process(world):
    res = launch(ep_worker, world, (EPConfig(),))
    for r in res:
        assert r["out_err"] < 1e-5
        assert r["grad_err"] < 1e-5
        assert r["sent_activation_bytes"] == r["expected_activation_bytes"]
        assert r["sent_metadata_bytes"] == r["expected_metadata_bytes"]
    assert sum(sum(r["send_rows"]) for r in res) == sum(sum(r["recv_rows"]) for r in res)


def test_pd_disaggregation_tokens_bytes_and_tpot():
    cfg = PDConfig(n_requests=12, rates=(24.0,), p_long=0.5)
    ratios = []
    for _attempt in range(3):  # a timing measurement: re-run if a loaded machine blurred it
        raw = launch(pd_worker, 2, (cfg,))
        (row,) = summarize(raw, cfg)
        for mode in ("colocated", "disaggregated"):
            assert row[mode]["tokens_match"], mode
            assert row[mode]["n"] == cfg.n_requests
        assert raw[0][0]["kv_sent_bytes"] == expected_kv_bytes(cfg)
        # prefills stall a colocated worker's decodes; the decode-only worker is never stalled
        ratios.append(row["disaggregated"]["tpot_p90_ms"] / row["colocated"]["tpot_p90_ms"])
        if ratios[-1] < 1.0:
            break
    assert min(ratios) < 1.0, ratios


def test_pd_ships_the_llama_kv_cache_through_the_protocol():
    """Prefill here, ship the tensor, continue decoding from the rebuilt cache: same tokens as one process."""
    cfg = PDConfig()
    model = build_model(cfg)
    prompt = torch.randint(0, cfg.lm.vocab_size, (11,), generator=torch.Generator().manual_seed(0))
    cache = DynamicKVCache(cfg.lm.n_layers)
    with torch.no_grad():
        toks = [int(model(prompt[None], kv_cache=cache)[0, -1].argmax())]
        shipped = kv_to_tensor(cache, cfg.lm.n_layers)
        assert shipped.shape == (2, 2, 4, 11, 8)  # (layers, k/v, kv_heads, tokens, head_dim)
        assert shipped.nbytes == kv_cache_bytes(2, 4, 8, 4, 11) == 2 * 2 * 4 * 8 * 4 * 11
        remote = tensor_to_kv(shipped.clone())
        for _ in range(5):
            toks.append(int(model(torch.tensor([[toks[-1]]]), kv_cache=remote)[0, -1].argmax()))
    assert toks == reference_tokens(model, prompt, 6)

