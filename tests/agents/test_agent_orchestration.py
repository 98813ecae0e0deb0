"""Agent orchestration: tools and tasks by hand, the patterns' control flow with scripted models (replan, step
budget, malformed output), the trace labels, and the fine-tuned book LM (cached once, shared with the chapter)
in process, through the openai client on ``llmcore serve`` and through HF ``transformers``."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from llmcore.agents import agent_orchestration as orch
from llmcore.agents import llm
from llmcore.agents.agent_orchestration import patterns, training, world
from llmcore.architecture.book_lm import book_lm_path, book_tokenizer
from llmcore.core.errors import LLMCoreError

HAND = world.World(capitals={"koriba": "zamute", "teba": "lomu"}, rivers={"koriba": "suda", "teba": "fapi"},
                   population={"zamute": 47, "lomu": 12})


# ---- tools and tasks --------------------------------------------------------------------------------------
def test_calculator_by_hand_and_safe():
    assert world.calculate("47 * 6") == 282 and world.calculate("2 + 3 * 4") == 14 and world.calculate("-(2 - 9)") == 7
    for bad in ("__import__('os')", "2 ** 10", "1 / 2", "47 *", "x + 1"):
        with pytest.raises(ValueError):
            world.calculate(bad)


def test_search_and_lookup_by_hand():
    assert HAND.search("koriba capital") == 'the capital of "koriba" is "zamute".'  # 2 shared words, the river fact 1
    assert HAND.search("teba river") == 'the river of "teba" is "fapi".'
    assert HAND.search("zzz") == "no result."
    box = world.Toolbox(HAND)
    assert box.call(llm.ToolCall("lookup", {"key": '"Zamute" '})) == "47"
    assert box.call(llm.ToolCall("lookup", {"key": "paris"})).startswith("error: no key")
    assert box.call(llm.ToolCall("calculator", {"expression": "2 **"})).startswith("error:")
    assert box.call(llm.ToolCall("lookup", {"k": "zamute"})).startswith("error:") and len(box.log) == 4


def test_tasks_have_correct_answers_and_heldout_names():
    w = world.make_world(10, "test", seed=3)
    for t in world.make_tasks(w, 20, seed=3):
        p = w.population[w.capitals[t.country]]
        assert t.answer == str({"": p, "plus": p + t.k, "minus": p - t.k, "times": p * t.k}[t.op])
    train = set()
    for s in range(30):
        tw = world.make_world(8, "train", seed=s)
        train |= set(tw.capitals) | set(tw.population) | set(tw.rivers.values())
    assert not train & (set(w.capitals) | set(w.population) | set(w.rivers.values()))
    with pytest.raises(LLMCoreError, match="unknown task families"):
        world.make_tasks(w, 2, 0, families=("pop", "trivia"))


# ---- the patterns: gold replies and scripted models ---------------------------------------------------------
TASK = world.Task("calc", 'what is the population of the capital of "koriba" times 6?', "282", "koriba", "zamute", 47,
                  "times", 6)


@pytest.mark.parametrize("pattern, calls", [("react", 4), ("self_ask", 4), ("plan_execute", 4), ("direct", 1)])
def test_gold_replies_solve_every_pattern(pattern, calls):
    [ep] = patterns.run_episodes(None, pattern, [TASK], HAND)
    assert ep.correct and ep.answer == "282" and ep.calls == calls and ep.tool_calls == (0 if pattern == "direct" else 3)


def _say(*texts):
    """A scripted model that replies ``texts`` in order (one per request), then repeats the last."""
    state = {"n": 0}

    def script(messages, attempt):
        state["n"] += 1
        return texts[min(state["n"] - 1, len(texts) - 1)]
    return llm.ScriptedLM(script, max_retries=1)


def test_plan_execute_replans_after_a_tool_error():
    act = patterns._act
    model = _say("Plan:\n1. search the capital of koriba\n2. lookup it", act("search", query="koriba capital"),
                 act("lookup", key="koriba"),  # wrong key -> tool error -> replan
                 "Plan:\n1. search the capital of koriba\n2. lookup the capital",
                 act("search", query="koriba capital"), act("lookup", key="zamute"))
    task = replace(TASK, family="pop", question="what is the population of the capital of koriba?", answer="47", op="",
                   k=0)
    [ep] = patterns.run_episodes(model, "plan_execute", [task], HAND, max_replans=1)
    assert ep.correct and ep.calls == 6 and ep.tool_calls == 4
    replan = ep.pairs[3][0]
    assert replan[-1]["content"].startswith("step 2 failed: error: no key") and replan[-2]["role"] == "assistant"


def test_react_stops_at_the_step_budget_and_on_malformed_output():
    loop = _say(patterns._act("search", query="koriba capital"))  # never answers
    [ep] = patterns.run_episodes(loop, "react", [TASK], HAND, max_steps=3)
    assert ep.failure == "step budget" and ep.calls == 3 and ep.tool_calls == 3
    junk = _say("I am not sure.")  # neither an action nor 'Answer:'
    [ep] = patterns.run_episodes(junk, "react", [TASK], HAND)
    assert ep.failure == "malformed output" and ep.calls == 1 and ep.attempts == 2 and ep.failed_parses == 2


def test_unknown_pattern_and_bad_config():
    with pytest.raises(LLMCoreError, match="unknown pattern"):
        patterns.run_episodes(None, "tree_of_thought", [TASK], HAND)
    with pytest.raises(LLMCoreError, match="steps must be >= 1"):
        orch.AgentConfig(steps=0)
    with pytest.raises(LLMCoreError, match="unknown patterns"):
        orch.AgentConfig(trace_shares=(("react", 1.0), ("reflexion", 1.0)))
    with pytest.raises(LLMCoreError, match="must be in"):
        orch.AgentConfig(trace_shares=(("react", 1.5),))


# ---- traces --------------------------------------------------------------------------------------------------
def test_trace_labels_score_assistant_turns_and_stop_each_with_eos():
    tok = book_tokenizer()
    [ep] = patterns.run_episodes(None, "react", [TASK], HAND)
    [(msgs, reply)] = training.maximal_pairs(ep)  # one growing conversation: only the last pair is kept
    ids, labels = training.encode_trace(tok, msgs, reply)
    assert len(ids) == len(labels) and ids[:len(llm.chat_ids(tok, msgs))] == llm.chat_ids(tok, msgs)
    assert labels.count(tok.eos_id) == 4  # four assistant turns, each ends in <eos>
    scored = [t for t in labels if t not in (-100, tok.eos_id)]
    turns = [m for m in msgs if m["role"] == "assistant"]
    assert tok.decode(scored) == "".join(llm.message_text(m) for m in turns) + reply
    # the <eos> labels sit where the next role tag is the input (an earlier turn) or at the end
    tags = {tok.special["<|tool|>"], tok.eos_id}
    assert all(ids[i] in tags for i, t in enumerate(labels) if t == tok.eos_id)
    [pe] = patterns.run_episodes(None, "plan_execute", [TASK], HAND)
    assert len(training.maximal_pairs(pe)) == 4  # planner + 3 separate executor conversations


# ---- the fine-tuned model (cached by train_once; the chapter loads the same entry) ----------------------------
@pytest.fixture(scope="module")
def agent():
    cfg = orch.AgentConfig.for_mode(True, seed=0)
    model, metrics = orch.agent_model(cfg)
    return cfg, model, metrics


def test_fine_tuned_agent_solves_heldout_tasks_direct_does_not(agent):
    cfg, model, metrics = agent
    w, tasks = orch.heldout(cfg)
    tasks = tasks[:20]
    lm = orch.agent_llm(model, cfg)
    react = patterns.run_episodes(lm, "react", tasks, w, max_steps=cfg.max_steps)
    direct = patterns.run_episodes(lm, "direct", tasks, w)
    assert sum(e.correct for e in react) >= 4 and sum(e.correct for e in direct) <= 1
    assert all(e.failure in ("", "wrong answer") for e in react)  # the protocol is learned: errors are copies
    assert metrics["loss"][-1] < 0.2 * metrics["loss"][0]


def test_served_and_hf_backends_give_the_same_answers(agent, tmp_path):
    cfg, model, _ = agent
    w, tasks = orch.heldout(cfg)
    tasks = tasks[:3]
    local = patterns.run_episodes(orch.agent_llm(model, cfg), "react", tasks, w, max_steps=cfg.max_steps)
    served = orch.served_episodes(model, cfg, w, tasks)  # the openai client -> llmcore serve (localhost)
    model.save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(book_lm_path() / f, tmp_path / f)
    hf = patterns.run_episodes(llm.HFLM(str(tmp_path), max_new_tokens=cfg.max_new_tokens), "react", tasks, w,
                               max_steps=cfg.max_steps)
    assert [e.answer for e in served] == [e.answer for e in local] == [e.answer for e in hf]
    assert [e.pairs[-1][1] for e in served] == [e.pairs[-1][1] for e in local]


def test_full_mode_starts():
    cfg = orch.AgentConfig.for_mode(False, seed=0, steps=2, n_train_worlds=1, batch_rows=2)
    model, losses, n = training.finetune_agent(cfg, desc=None)
    assert len(losses) == 2 and n > 16 and cfg.n_test == 500


# ---- the recipe model shipped in data/agent_lm ------------------------------------------------------------
def test_shipped_recipe_model_is_the_recipe_and_solves_heldout_tasks():
    model, log = training.load_shipped_agent()
    cfg = orch.AgentConfig.for_mode(True, seed=3)  # the held-out world where it scored lowest (0.925 of 40)
    recipe = training.recipe_config(orch.AgentConfig())
    assert log["config"] == {k: getattr(recipe, k) for k in orch.TRAIN_FIELDS} | {"trace_shares": [
        list(t) for t in recipe.trace_shares]}
    assert len(log["loss"]) == recipe.steps == orch.RECIPE["steps"] and log["n_traces"] > 10_000
    assert sum(log["loss"][-10:]) / 10 < 0.01 * log["loss"][0]
    w, tasks = orch.heldout(replace(cfg, n_test=20))
    lm = orch.agent_llm(model, cfg)
    react = patterns.run_episodes(lm, "react", tasks, w, max_steps=cfg.max_steps)
    direct = patterns.run_episodes(lm, "direct", tasks, w)
    assert sum(e.correct for e in react) >= 16 and sum(e.correct for e in direct) <= 2


def test_missing_or_corrupt_shipped_model_is_one_clear_error(tmp_path):
    with pytest.raises(LLMCoreError, match="lacks model.safetensors"):
        for f in ("config.json", "training_log.json"):
            shutil.copy(training.shipped_agent_path() / f, tmp_path / f)
        training.load_shipped_agent(path=tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(LLMCoreError, match="is corrupt"):
        training.load_shipped_agent(path=tmp_path)
