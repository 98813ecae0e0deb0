"""The kit's MoE layer: HF Mixtral / Qwen2-MoE equality, the aux loss by hand and vs HF, capacity dropping,
grouped dispatch = per-token loop, expert parallelism = the local layer, the closed loop's plumbing."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from llmcore.architecture import moe as M
from llmcore.architecture.llama import Llama
from llmcore.core.errors import LLMCoreError
from llmcore.engineering.dist_utils import launch
from llmcore.engineering.expert_parallel import EPConfig, ep_worker


def test_equals_hf_mixtral_and_qwen2moe_blocks():
    for seed in (0, 1):
        err = M.hf_check(seed)
        assert max(err.values()) < 1e-6, err


def test_aux_loss_hand_case_and_hf():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    idx = probs.argmax(-1, keepdim=True)  # experts 0, 0, 1, 0: f = (3/4, 1/4), P = (0.65, 0.35)
    assert M.load_balancing_loss(probs, idx, 2).item() == pytest.approx(2 * (0.75 * 0.65 + 0.25 * 0.35))
    uniform = torch.full((6, 3), 1 / 3)
    assert M.load_balancing_loss(uniform, torch.tensor([[0], [1], [2], [0], [1], [2]]), 3).item() == pytest.approx(1.0)
    logits = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    for k in (1, 2):
        _, idx, p = M.route_topk(logits, k)
        assert M.load_balancing_loss(p, idx, 8).item() == pytest.approx(load_balancing_loss_func((logits,), 8, k).item(),
                                                                        abs=1e-6)


def test_z_loss_and_routing_conventions():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    assert M.router_z_loss(logits).item() == pytest.approx((math.log(2) ** 2 + math.log(4) ** 2) / 2)
    g, idx, p = M.route_topk(logits, 1, renormalize=False)  # Switch: gate = the probability itself
    assert torch.allclose(g[:, 0], p.max(-1).values) and g[1, 0].item() == pytest.approx(0.75)
    g, _, _ = M.route_topk(logits, 1)  # Mixtral, k = 1: gate 1 (no gradient to the router)
    assert torch.equal(g, torch.ones(2, 1))
    g, idx, p = M.route_topk(logits, 1, renormalize=False, bias=torch.tensor([0.0, 1.0]))
    assert idx[:, 0].tolist() == [1, 1] and g[1, 0].item() == pytest.approx(0.25)  # bias picks, gate unbiased


def test_capacity_dropping_hand_case():
    idx = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]])
    keep = M.capacity_keep(idx, 3, cap=2)  # first choices (0,0,0,1) before second choices (1,1,2,0)
    assert keep.tolist() == [[True, True], [True, False], [False, True], [True, False]]
    assert M.capacity(100, 2, 8, 1.25) == 32 and M.capacity(10, 1, 4, 1.0) == 3
    torch.manual_seed(0)
    layer = M.MoE(8, 16, 4, 2, capacity_factor=0.5).eval()
    x = torch.randn(32, 8)
    y = layer(x)
    assert layer.stats["dropped"] >= 0.5  # at most c * N * k of the N * k assignments fit
    gates, idx, _, _ = layer.route(x)
    kept = M.capacity_keep(idx, 4, M.capacity(32, 2, 4, 0.5))
    assert layer.stats["dropped"] == pytest.approx(1 - kept.float().mean().item())
    assert torch.allclose(y, layer.dispatch(x, gates * kept, idx), atol=1e-6)


@pytest.mark.parametrize("kw", [{}, {"router": "switch", "n_shared": 1}, {"capacity_factor": 0.75},
                                {"expert": "gelu", "top_k": 1}])
def test_grouped_dispatch_equals_per_token_loop(kw):
    torch.manual_seed(1)
    layer = M.MoE(8, 12, 4, kw.pop("top_k", 2), **kw).eval()
    x = torch.randn(3, 10, 8)
    with torch.no_grad():
        assert (layer(x) - layer.forward_loop(x)).abs().max() < 1e-6


def test_expert_choice_balances_by_construction():
    torch.manual_seed(0)
    layer = M.MoE(8, 12, 4, 1, router="expert_choice").eval()
    x = torch.randn(20, 8)
    y = layer(x)
    logits = layer.router(x)
    chosen = logits.softmax(-1).t().topk(M.capacity(20, 1, 4, 1.0), dim=-1).indices  # (E, C)
    ref = torch.zeros_like(x)
    for e in range(4):
        g = logits.softmax(-1)[chosen[e], e, None]
        ref = ref.index_add(0, chosen[e], g * layer.experts[e](x[chosen[e]]))
    assert torch.allclose(y, ref, atol=1e-6)


def test_bias_balancing_moves_toward_underloaded_experts():
    torch.manual_seed(0)
    layer = M.MoE(8, 12, 4, 1, router="switch", bias_rate=0.01)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] = 1.0  # every token with a positive sum prefers expert 0
    x = torch.randn(64, 8).abs()
    layer(x)
    assert layer.expert_bias[0] < 0 and (layer.expert_bias[1:] > 0).all()


def test_expert_parallel_swiglu_equals_local_layer():
    for r in launch(ep_worker, 2, (EPConfig(expert="swiglu"),)):
        assert r["out_err"] < 1e-6 and r["grad_err"] < 1e-5
        assert r["sent_activation_bytes"] == r["expected_activation_bytes"]


def test_moe_lm_losses_and_active_params():
    cfg = M.MoEConfig()
    torch.manual_seed(0)
    lm = M.MoELM(cfg.model_config(cfg.dense_ff), 4, 2, 8, router="topk", aux_coef=0.5)
    idx = torch.randint(0, 256, (2, 16))
    lm.train()
    _, loss_train = lm(idx, labels=idx)
    aux = sum(m.stats["aux"] + 1e-3 * m.stats["z"] / 0.5 for m in lm.moe_layers)
    lm.eval()
    _, loss_eval = lm(idx, labels=idx)
    assert loss_train.item() == pytest.approx(loss_eval.item() + 0.5 * aux.item(), rel=1e-5)
    per_expert = 3 * 64 * 8
    assert M.active_params(lm) == sum(p.numel() for p in lm.parameters()) - 2 * 2 * per_expert
    dense = Llama(cfg.model_config(cfg.dense_ff))
    full = M.MoELM(cfg.model_config(cfg.dense_ff), cfg.n_experts, cfg.top_k, cfg.expert_ff)
    assert M.active_params(full) <= M.active_params(dense)
    rows = M.route_table(full, "def f")
    assert len(rows) == 5 and all(len(r["layer 0"]) == 2 for r in rows)


def test_bad_input_is_one_clear_error():
    with pytest.raises(LLMCoreError, match="top_k"):
        M.MoE(8, 8, 4, 5)
    with pytest.raises(LLMCoreError, match="router"):
        M.MoE(8, 8, 4, 1, router="hash")
    with pytest.raises(LLMCoreError, match="capacity_factor"):
        M.MoE(8, 8, 4, 1, capacity_factor=0)
    with pytest.raises(LLMCoreError):
        M.MoEConfig(router="expert_choice")
    with pytest.raises(LLMCoreError):
        M.MoEConfig(capacity_factors=(0.0,))
    with pytest.raises(LLMCoreError, match="empty"):
        M.route_table(M.MoELM(M.MoEConfig().model_config(8), 2, 1, 8), "")


def test_full_mode_starts_and_the_report_reads_it():
    cfg = replace(M.MoEConfig.for_mode(False), steps=2, eval_windows=2, timing_tokens=8, capacity_factors=(0.5, 2.0))
    res = M.experiment(cfg, torch.device("cpu"), 0, show_progress=False)
    assert set(res.val) == {"dense", "moe", "moe_noaux"} and res.load_history["moe"].shape == (1, 2, 16)
    rep = M.make_report(res, {"mixtral_out": 0.0, "mixtral_logits": 0.0, "qwen2moe_out": 0.0,
                              "qwen2moe_logits": 0.0}, False, "cpu", 0)
    names = [c.name for c in rep.criteria]
    assert any("Mixtral" in n for n in names) and any("dense - MoE" in n for n in names)
    M.plot_results(res)
    M.plot_moe_diagram()
