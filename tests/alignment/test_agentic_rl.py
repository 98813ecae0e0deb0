"""Agentic RL (LM half): the user simulator, its gymnasium API, the loss mask, per-turn advantages."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from llmcore.alignment.agentic_rl import env_checks, lm_criteria
from llmcore.alignment.agentic_rl import lm_loop as L
from llmcore.alignment.agentic_rl import multiturn as M
from llmcore.alignment.agentic_rl import user_sim as U
from llmcore.architecture.book_lm import BOOK_LM_CONFIG
from llmcore.architecture.llama import Llama
from llmcore.core.errors import LLMCoreError
from llmcore.foundation_rl.gae import compute_gae_loop

CFG = U.SimConfig()


def tiny_lm(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(replace(BOOK_LM_CONFIG, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=64)).eval()


# ---- the simulator ----------------------------------------------------------------------------------------
def test_actions_round_trip_and_invalid_turns():
    for a in [("ask", "day"), ("ask", "size"), ("find", 3, 4), ("check", 7, 1), ("book", 0)]:
        ids = U.action_ids(a)
        assert ids[-1] == U.EOS and len(ids) <= U.W_AGENT
        assert U.parse_action(ids + [U.PAD] * (U.W_AGENT - len(ids))) == a
    assert U.parse_action(U.W["ask"] + U.W["no"]) == ("invalid",)
    assert U.parse_action([U.DIGIT[3], U.EOS]) == ("invalid",)


def test_user_reveals_only_when_asked_and_rewards_by_hand():
    for s in range(40):
        u = U.BookingUser(CFG, np.random.default_rng(s))
        if u.revealed == ("day",):
            break
    opening = u.opening()
    assert len(opening) == U.W_OPEN and U.DIGIT[u.goal["size"]] not in opening[opening.index(U.USER):][3:]
    assert opening[-1] == U.ASSISTANT and U.DIGIT[u.goal["day"]] in opening
    # ask until a clear answer: each turn costs c = 0.1
    turns = 0
    while True:
        reply, r, done, _ = u.respond(U.action_ids(("ask", "size")))
        turns += 1
        assert r == pytest.approx(-0.1) and not done and len(reply) == U.W_ENV
        if reply[1] in U.DIGIT_OF:
            assert U.DIGIT_OF[reply[1]] == u.goal["size"]
            break
        assert tuple(reply[1:3]) == U.W["not sure"]
    reply, r, done, _ = u.respond(U.action_ids(("find", u.goal["day"], u.goal["size"])))
    assert reply[0] == U.TOOL and U.DIGIT_OF[reply[1]] == u.secret
    reply, r, done, _ = u.respond(U.action_ids(("book", u.secret)))
    assert done and u.success and r == pytest.approx(1 - 0.1)  # success on the last turn, minus its penalty
    assert u.turns == turns + 2


def test_wrong_search_gives_another_code_and_booking_fails():
    u = U.BookingUser(CFG, np.random.default_rng(3))
    d = u.goal["day"] % CFG.n_days + 1  # a wrong day
    reply, _, _, _ = u.respond(U.action_ids(("find", d, u.goal["size"])))
    code = U.DIGIT_OF[reply[1]]
    assert code != u.secret
    _, r, done, _ = u.respond(U.action_ids(("book", code)))
    assert done and not u.success and r == pytest.approx(-0.1)


def test_user_ends_the_dialogue_after_max_turns():
    u = U.BookingUser(CFG, np.random.default_rng(0))
    for _ in range(CFG.max_turns):
        reply, r, done, _ = u.respond(U.action_ids(("ask", "day")))
    assert done and tuple(reply[1:3]) == U.W["bye"] and not u.success
    with pytest.raises(LLMCoreError):
        u.respond(U.action_ids(("ask", "day")))


def test_simulator_is_deterministic_per_seed():
    a = U.demo_dialogues(U.ScriptedAgent(0.5, 0.5, 0.5), CFG, 30, seed=4)
    b = U.demo_dialogues(U.ScriptedAgent(0.5, 0.5, 0.5), CFG, 30, seed=4)
    c = U.demo_dialogues(U.ScriptedAgent(0.5, 0.5, 0.5), CFG, 30, seed=5)
    assert [x["ids"] for x in a] == [x["ids"] for x in b]
    assert [x["ids"] for x in a] != [x["ids"] for x in c]


def test_scripted_agents_statistics():
    opt = U.simulator_stats(CFG, U.ScriptedAgent(), n=500)
    demo = U.simulator_stats(CFG, L.AgenticConfig().demonstrator(), n=500)
    assert opt["success"] > 0.9 and demo["success"] < opt["success"] - 0.1
    assert demo["turns of a successful dialogue"] > opt["turns of a successful dialogue"] + 0.4
    assert opt["'not sure' answers"] > 0.2 and 0.9 < opt["tool calls"] <= 1.0


def test_demonstrations_mask_only_agent_tokens():
    d = U.demo_dialogues(U.ScriptedAgent(), CFG, 5, seed=0)[0]
    ids, mask = np.array(d["ids"]), np.array(d["mask"])
    assert len(ids) == U.W_OPEN + d["turns"] * U.W_TURN
    for k in range(d["turns"]):
        s = M.agent_positions(k)
        turn = ids[s][mask[s] == 1]
        assert turn[-1] == U.EOS and U.parse_action(turn) != ("invalid",)
    env = ids[mask == 0]
    assert U.EOS not in env.tolist() or env.tolist().count(U.EOS) == 0


def test_gymnasium_check_env_and_determinism():
    assert env_checks() == {"check_env": True, "deterministic per seed": True}


# ---- rollouts, the loss mask, per-turn credit -------------------------------------------------------------
def test_rollout_layout_and_seeded_sampling():
    model = tiny_lm()
    users = M.users_for(CFG, range(8))
    ro = M.rollout(model, users, 1.0, torch.Generator().manual_seed(0))
    ro2 = M.rollout(model, M.users_for(CFG, range(8)), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(ro.ids, ro2.ids)
    B, Lg = ro.ids.shape
    assert (Lg - U.W_OPEN) % U.W_TURN == 0
    turn = M.turn_of_position(Lg)
    assert (ro.mask[:, turn < 0] == 0).all()  # nothing outside the agent slots is ever trained
    # an untrained model babbles: every dialogue runs to max_turns and fails with reward -c * turns
    assert torch.allclose(ro.returns, -0.1 * ro.turns.float() + ro.success.float())
    assert int(ro.turn_mask.sum()) == int(ro.turns.sum())


def test_loss_mask_gradient_is_zero_on_environment_tokens():
    model = tiny_lm()
    d = U.demo_dialogues(U.ScriptedAgent(0.5, 0.5, 0.5), CFG, 4, seed=1)
    Lg = max(len(x["ids"]) for x in d)
    ids = torch.full((4, Lg), U.PAD)
    mask = torch.zeros(4, Lg)
    for i, x in enumerate(d):
        ids[i, :len(x["ids"])] = torch.tensor(x["ids"])
        mask[i, :len(x["mask"])] = torch.tensor(x["mask"], dtype=torch.float)
    adv = M.turn_token_advantages(torch.randn(4, CFG.max_turns, generator=torch.Generator().manual_seed(0)), Lg)
    g = M.logit_grad_by_kind(model, ids, mask, adv)
    assert g["environment"] == 0.0 and g["agent"] > 0
    assert g["agent tokens"] == int(mask.sum()) and g["agent tokens"] + g["environment tokens"] == 4 * (Lg - 1)


def test_per_turn_gae_by_hand_and_against_the_loop():
    rewards = torch.tensor([[-0.1, -0.1, 0.9], [-0.1, 0.9, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.8], [0.4, 0.7, 0.3]])
    tmask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv, ret = M.per_turn_gae(rewards, values, tmask, 1.0, 1.0)  # lambda=1: return-to-go minus V
    assert torch.allclose(adv, torch.tensor([[0.2, 0.2, 0.1], [0.4, 0.2, 0.0]]), atol=1e-6)
    adv0, _ = M.per_turn_gae(rewards, values, tmask, 1.0, 0.0)  # lambda=0: the TD error of the turn
    assert torch.allclose(adv0, torch.tensor([[0.0, 0.1, 0.1], [0.2, 0.2, 0.0]]), atol=1e-6)
    dones = torch.tensor([[0.0, 0, 1], [0, 1, 1]])
    ref = compute_gae_loop(rewards.T, (values * tmask).T, dones.T, torch.zeros(2), 1.0, 0.9).T * tmask
    assert torch.allclose(M.per_turn_gae(rewards, values, tmask, 1.0, 0.9)[0], ref, atol=1e-6)
    assert torch.allclose(ret, (adv + values) * tmask)


def test_turn_advantages_spread_over_the_turns_tokens():
    Lg = U.W_OPEN + 2 * U.W_TURN
    tok = M.turn_token_advantages(torch.tensor([[1.5, -2.0, 9.0]]), Lg)[0]
    assert (tok[M.agent_positions(0)] == 1.5).all() and (tok[M.agent_positions(1)] == -2.0).all()
    assert tok.abs().sum() == pytest.approx(U.W_AGENT * 3.5)
    assert M.state_position(0) == U.W_OPEN - 1
    assert M.state_position(1) == M.agent_positions(0).stop + U.W_ENV - 1


def test_sft_batches_label_only_agent_tokens():
    demos = U.demo_dialogues(U.ScriptedAgent(), CFG, 10, seed=0)
    b = L.sft_batches(demos, 4, np.random.default_rng(0))(0)
    scored = b.labels != -100
    assert torch.equal(b.idx[scored], b.labels[scored])
    assert not torch.isin(b.idx[scored], torch.tensor([U.USER, U.TOOL, U.ASSISTANT, U.PAD, U.BOS])).any()


def test_criteria_read_the_result():
    res = L.AgenticResult(L.AgenticConfig(), {}, {}, {"success": 0.6, "turns per success": 7.0})
    res.final = {"grpo": {"success": 0.7, "turns per success": 5.0}}
    res.mask_check = {"environment": 0.0, "agent": 1.0}
    crit = {c[0]: c for c in lm_criteria(res)}
    assert crit["GRPO success gain over SFT start (points)"][1] == pytest.approx(10.0)
    assert crit["GRPO turns per success, cut from SFT start"][1] == pytest.approx(2.0)
    assert crit["GRPO success gain over SFT start (points)"][2:] == (">=", 10.0)


def test_config_modes():
    toy, full = L.AgenticConfig.for_mode(True), L.AgenticConfig.for_mode(False)
    assert full.rounds > toy.rounds and full.users_per_round > toy.users_per_round
    with pytest.raises(LLMCoreError):
        L.train_rl("dpo", tiny_lm(), toy, 0)


def test_habits_count_the_demonstrators_habits():
    for agent, key, want in [(U.ScriptedAgent(p_check=1.0), "confirmations", 1.0),
                             (U.ScriptedAgent(p_reask=1.0), "re-asks of a known slot", None),
                             (U.ScriptedAgent(p_hasty=1.0), "moves on after 'not sure'", None),
                             (U.ScriptedAgent(p_skip=1.0), "bookings without a search", 1.0)]:
        d = U.demo_dialogues(agent, CFG, 300, seed=0)
        h = M.habits([x["ids"] for x in d], [x["turns"] for x in d])
        assert h["invalid turns"] == 0 and all(v == 0 for k, v in h.items() if k != key)
        if key == "re-asks of a known slot":  # one per dialogue whose opening gave a slot
            want = np.mean([x["revealed"] > 0 for x in d])
        if key == "moves on after 'not sure'":  # it only asks unknown slots, and guesses after every 'not sure'
            want = np.mean([x["ambiguous"] for x in d])
        assert h[key] == pytest.approx(want, abs=0.02)
    assert M.habits([x["ids"] for x in U.demo_dialogues(U.ScriptedAgent(), CFG, 50, 0)],
                    [x["turns"] for x in U.demo_dialogues(U.ScriptedAgent(), CFG, 50, 0)]) == \
        {"re-asks of a known slot": 0, "confirmations": 0, "bookings without a search": 0,
         "moves on after 'not sure'": 0, "invalid turns": 0}


@pytest.mark.parametrize("method", ["grpo", "ppo"])
def test_full_mode_rounds_run_off_policy_inner_steps(method):
    """The full config's code path (two inner steps: old log-probs, clipping) on a tiny model, one round."""
    cfg = replace(L.AgenticConfig.for_mode(False), rounds=1, users_per_round=2, group_size=2, eval_users=4)
    assert cfg.inner_epochs == 2
    res = L.AgenticResult(cfg, {}, {}, {})
    model = tiny_lm()
    before = [p.detach().clone() for p in model.parameters()]
    policy = L.train_rl(method, model, cfg, seed=0, res=res)
    assert set(res.history[method]) >= {"success", "turns", "kl", "clip_frac"}
    assert len(res.curves[method]["success"]) == 1
    if method == "ppo":  # the value loss moves the shared trunk (GRPO: an untrained model's returns all tie, A = 0)
        assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the start is not modified
