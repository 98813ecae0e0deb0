"""Tensor / pipeline / expert parallelism equal the single-process model; bubble; bytes; PD."""

from __future__ import annotations

import pytest
import torch

from llmcore.architecture.kv_cache import DynamicKVCache, kv_cache_bytes
from llmcore.core.errors import LLMCoreError
from llmcore.engineering.dist_utils import launch
from llmcore.engineering.distributed import Link, PlacementConfig, collective_time, placement_table
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
from llmcore.engineering.pipeline import (
    PPConfig,
    bubble_formula,
    ideal_timeline,
    measured_bubble,
    plot_schedule_diagram,
    pp_worker,
    schedule_ops,
)
from llmcore.engineering.tensor_parallel import TPConfig, plot_column_row_split, tp_worker


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



# -- the schedule diagram, the TP diagram and the alpha-beta model (no process groups) -----------------


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m,t_b", [(2, 1, 2.0), (4, 8, 2.0), (3, 5, 1.0), (4, 2, 3.0)])
def test_ideal_timeline_bubble_is_exactly_the_formula(kind, p, m, t_b):
    ranks = ideal_timeline(kind, p, m, t_f=1.0, t_b=t_b)
    assert measured_bubble(ranks) == pytest.approx(bubble_formula(p, m), abs=1e-12)
    end = max(r["events"][-1][3] for r in ranks)
    assert end == pytest.approx((m + p - 1) * (1.0 + t_b))  # hand-derived makespan
    for r in ranks:  # a stage never runs two ops at once, and follows schedule_ops' order
        ev = r["events"]
        assert [(o, i) for o, i, _a, _b in ev] == schedule_ops(kind, p, m, r["rank"])
        assert all(ev[k][3] <= ev[k + 1][2] + 1e-12 for k in range(len(ev) - 1))


def test_schedule_diagram_draws_every_op_and_the_stash():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    p, m = 4, 6
    assert plot_schedule_diagram(ax, "1f1b", p, m) is ax
    assert len(ax.patches) == p + 2 * p * m  # one idle background per stage + every F and B
    stash = [t.get_text() for t in ax.texts if t.get_text().startswith("stash")]
    assert stash == [f"stash ≤ {p - r}" for r in range(p)]  # 1F1B: stage r holds at most p - r micro-batches
    assert "3/9" in ax.get_title()
    plt.close(fig)


def test_column_row_split_diagram():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert plot_column_row_split(ax, 3) is ax
    labels = [t.get_text() for t in ax.texts]
    assert {"$A_1$", "$A_3$", "$B_2$", "rank 2"} <= set(labels)
    assert len(ax.patches) == 2 + 9 * 3  # X, Z, 4 boxes and 5 arrows per rank
    plt.close(fig)


def test_collective_time_hand_cases_and_errors():
    link = Link("test", 1e9, 1e-6, "")
    assert collective_time("all_reduce", 4096, 4, link) == pytest.approx(6e-6 + 6144 / 1e9)
    assert collective_time("all_gather", 4096, 4, link) == pytest.approx(3e-6 + 3072 / 1e9)
    assert collective_time("send", 1000, 8, link) == pytest.approx(1e-6 + 1e-6)
    assert collective_time("all_reduce", 4096, 1, link) == 0.0
    with pytest.raises(LLMCoreError, match="unknown collective"):
        collective_time("broadcast", 1, 2, link)
    with pytest.raises(LLMCoreError, match="n >= 1"):
        collective_time("all_reduce", 1, 0, link)


def test_placement_table_says_tp_inside_pp_dp_across():
    rows = {r["dim"]: r for r in placement_table(PlacementConfig())}
    # hand check of the TP row: 4 all-reduces of 1*4096*4096*2 B over 8 ranks on NVLink 4 (450 GB/s, 3 µs)
    act = 4096 * 4096 * 2
    assert rows["TP"]["inside_s"] == pytest.approx(4 * (14 * 3e-6 + 2 * 7 / 8 * act / 450e9))
    assert rows["TP"]["across_ratio"] > 1 > rows["TP"]["inside_ratio"]  # TP across nodes costs more than compute
    assert rows["PP"]["across_ratio"] < 0.2 and rows["DP"]["across_ratio"] < 0.2
