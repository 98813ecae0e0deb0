# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Mesh & State Machine / 异步编排与状态机
#
# **中文摘要：** 一个会调用工具、会反思、会等人审批的智能体，本质上是一台**状态机**：节点读写一份带类型的共享状态，
# 条件边根据状态决定下一步，循环需要步数上限，并行分支（fan-out）要在汇合点（fan-in）合并。本章从零实现一个
# 异步状态图引擎：按 Pregel 的**超步（superstep）**批量同步执行——同一超步内的节点用 asyncio 并发运行、读同一份
# 状态快照，它们的写入按节点名顺序经各键的 **reducer** 合并，所以结果与分支完成的先后无关；每个超步之后把状态
# 写入 SQLite 检查点，进程崩溃（甚至被 SIGKILL）后可从检查点恢复，已完成的兄弟节点不会重跑；`interrupt` 让节点
# 暂停等待人类审批，恢复时把人的答复交回节点。交叉验证：把同一张图原样搭在 LangGraph 上，在相同的确定性节点上
# 得到完全相同的状态轨迹、路由决策和最终状态（含条件循环与并行 fan-out）；N 个慢工具并行的耗时约等于最慢的一个
# 而非总和；注入故障后恢复得到与不中断运行相同的最终状态。
#
# **Learning goals**
# - model an agent workflow as a state machine: typed state, nodes, guarded (conditional) transitions, cycles;
# - execute it in bulk-synchronous supersteps and see why reducers plus a fixed merge order make parallel
#   branches deterministic;
# - run a fan-out of slow tools concurrently with `asyncio` and measure that it costs the *max*, not the *sum*;
# - checkpoint after every superstep to SQLite, kill the process, and resume to the same final state;
# - pause for a human with `interrupt`, resume with the human's answer; a rejected tool call never runs;
# - check all of it against LangGraph, the production library, on the same graph.
#
# **Prerequisites:** what the nodes of an agent do ([Agent Orchestration](02_agent_orchestration.ipynb));
# Python `async`/`await`; the idea of a finite-state machine.

# %% tags=["parameters"]
toy = True  # True: 8 slow tools of 50 ms each (CPU, seconds); False: 64 tools of 200 ms and a longer step limit
device = "auto"  # graph orchestration: validated and recorded, no tensors are used
seed = 0  # recorded; every node is deterministic, nothing random is drawn

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[agents] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import matplotlib.pyplot as plt

from llmcore.agents import graph
from llmcore.agents.graph import workflows
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
cfg = graph.MeshConfig.for_mode(toy)
print(f"device={dev}, toy={toy}, seed={seed}: {cfg.n_tools} tools x {cfg.tool_delay_s}s, step limit {cfg.step_limit}")

# %% [markdown]
# ## Theory / 理论
#
# ### From state machines to state graphs / 从状态机到状态图
#
# A finite-state machine is a set of states and guarded transitions $q \xrightarrow{g} q'$. Harel's statecharts
# {cite}`harel1987statecharts` added what real controllers need — extended (typed) variables beside the control
# state, hierarchy and **concurrent regions**. An agent workflow is exactly that: control sits in *nodes*
# (plan, search, draft, critique, ...), data in a typed **state** $s$ (a record of keys), and each node is a
# function from the state to a *partial update* $u_v = f_v(s)$, a dict over some of the keys. Transitions are
# **edges**: a plain edge $a \to b$, a **conditional edge** whose router $r_a(s)$ names the next node(s) (a
# guard), a **join** $\{a_1, \dots, a_m\} \to b$ that waits for all of its sources, and cycles (critique →
# revise → critique) that run until a guard sends control elsewhere.
#
# ### Supersteps and reducers / 超步与归约函数
#
# Which nodes run concurrently, and what happens when two of them write the same key? We use Pregel's
# **bulk-synchronous** model {cite}`malewicz2010pregel`, which LangGraph uses too {cite}`langgraph2024`. A run
# is a sequence of supersteps $k = 1, 2, \dots$; the triggered set $T_k$ runs *concurrently on the same snapshot*
# $s_{k-1}$, and only then are the updates folded in, key by key, with that key's reducer $\oplus_c$, in
# node-name order $v_1 < v_2 < \dots$:
#
# $$
# s_k[c] = \big(\cdots\big((s_{k-1}[c] \oplus_c u_{v_1}[c]) \oplus_c u_{v_2}[c]\big)\cdots\big).
# $$
#
# A key without a reducer keeps the last value and may have at most one writer per superstep — two would be a
# race, so the engine rejects it. With `operator.add` on a list, `evidence` collects every search tool's facts.
# Why a *fixed* order? List concatenation is associative but not commutative, so folding in completion order
# would make the state depend on which API answered first; folding in name order makes the run a pure function
# of the graph and the input, however the branches interleave — that is what lets us demand *equal traces* from
# two engines. The next trigger set is the union of what every finished node emits: its plain edges, its
# routers' choices, and the targets of joins all of whose sources have now run:
#
# $$
# T_{k+1} = \bigcup_{v \in T_k} \operatorname{succ}\!\big(v,\; s_{k-1} \oplus u_v\big)
#   \;\cup\; \{\, b : \{a_1..a_m\} \to b,\ \text{all } a_i \text{ ran since } b \text{ was last triggered} \,\}.
# $$
#
# A router sees the step's start state plus *its own* node's update, never a sibling's: routing is then as
# timing-independent as the state. The run ends when $T_{k+1} = \emptyset$.
#
# ### Cycles need a budget / 循环需要步数上限
#
# Whether a graph with data-dependent guards halts is undecidable in general, so a production engine bounds the
# number of supersteps per run (LangGraph's `recursion_limit`, our `step_limit`) and fails loudly when a cycle
# never reaches its exit — a *loop with a budget*, like the revise loop below (at most 3 revisions).
#
# ### Checkpoints, crashes and humans / 检查点、崩溃与人工审批
#
# After every superstep the engine commits $(k, s_k, T_{k+1}, \text{join progress})$ to SQLite. A node that
# finishes inside a step that later fails has its update saved at once as a **pending write**. Resuming loads
# the last checkpoint and runs only the nodes of $T_{k+1}$ without a pending write: since $s_k$ and
# $T_{k+1}$ determine everything after step $k$, the resumed run reproduces the uninterrupted one exactly, and a
# side-effecting tool that had finished is not called twice. `interrupt(payload)` is the same mechanism used on
# purpose: the node stops, the payload goes to a human, and `Command(resume=answer)` re-runs that node *from
# its start* with `interrupt` now returning the answer — so code before an `interrupt` must be safe to repeat.
#
# The diagram is drawn from the graph object itself: dashed blue edges are conditional (a label is the router's
# key), the curved one closes the revise loop.

# %%
research = workflows.research_graph(target=cfg.target_score, max_revisions=cfg.max_revisions)
fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), gridspec_kw={"width_ratios": [1.6, 1]})
graph.plot_graph(axes[0], research, "research workflow: conditional fan-out + conditional loop")
graph.plot_graph(axes[1], workflows.approval_graph(), "approval gate: interrupt -> execute or END")
plt.show()

# %% [markdown]
# ## The implementation / 实现
#
# The state is a `TypedDict`; a key annotated `Annotated[T, reducer]` merges concurrent writes. The
# research workflow's state:

# %%
show_source(workflows.ResearchState)

# %% [markdown]
# `apply_updates` is the fold above: updates sorted by node name, reducers for annotated keys, one writer for
# the rest, and a type check against the schema (LangGraph does not check types; a wrong type is one clear error).

# %%
show_source(graph.apply_updates)

# %% [markdown]
# `successors` is what a finished node emits: plain edges, the router's choice (through its path map), and a
# `join:` mark per join the node feeds; `_commit_triggers` (in the engine) turns the marks into a trigger when the
# last source of a join arrives.

# %%
show_source(graph.CompiledGraph.successors)

# %% [markdown]
# The superstep loop: start (fresh input, a crash resume, or a human's `Command`), then per step run the
# triggered nodes concurrently with `asyncio.gather`, keep finished nodes' results, stop on an error or an
# interrupt, fold, checkpoint, repeat until nothing is triggered or the step limit is hit.

# %%
show_source(graph.CompiledGraph.ainvoke)

# %% [markdown]
# `interrupt` reads the running node's context (a `contextvars` variable, so concurrent nodes each see their
# own): the k-th call returns the k-th answer the human gave, or raises to pause.

# %%
show_source(graph.interrupt)

# %% [markdown]
# ## The closed loop / 闭环实验
#
# Six parts, one progress bar: (1) six research questions chosen to take every route (1, 2 and 4 tools in the
# fan-out; the revise loop run 0, 1 and 3 times) in our engine and in LangGraph; (2) a cycle with no exit under
# a step limit; (3) the approval gate answered approve / reject / edit, in both engines; (4) an exception
# injected in the second `critique` call, then a resume from the SQLite file; (5) a child process killed with
# SIGKILL in the middle of a fan-out, resumed here; (6) the fan-out of slow tools timed against a chain of the
# same tools.

# %%
res = graph.experiment(cfg)
report = graph.make_report(res, toy, str(dev), seed)

# %% [markdown]
# ### One run, superstep by superstep / 逐个超步看一次运行
#
# The question *"How does a checkpoint work with a reducer?"* makes `plan` pick the two tools whose facts
# mention its words; they run in the same superstep; `critique` scores 4 facts × 20 = 80 < 90, so the guard
# sends control to `revise`, and the second critique (80 + 15) lets it `finish`.

# %%
ours, theirs = res.ours[0], res.theirs[0]
for k, nodes in enumerate(ours.steps, 1):
    taken = [f"{src} -> {', '.join(t)}" for s, src, t in ours.routes if s == k]
    print(f"step {k}: {', '.join(nodes):<28} | route: {'; '.join(taken) or '-':<42} | "
          f"score={ours.trace[k].get('score', '-')} revisions={ours.trace[k]['revisions']}")
print("final draft:", ours.state["draft"][:110], "...")

# %% [markdown]
# ### Cross-check: the same graph in LangGraph / 交叉验证：同一张图在 LangGraph 中运行
#
# `to_langgraph` rebuilds the graph in `langgraph.graph.StateGraph` — same schema, same node functions, same
# routers (wrapped only to log the decision with LangGraph's own superstep number). Everything must be equal:
# the state after every superstep, which nodes ran in each superstep, every routing decision, the final state.

# %%
show_source(graph.to_langgraph)

# %%
for q, a, b in zip(cfg.questions, res.ours, res.theirs):
    assert a.trace == b.trace and a.steps == b.steps and a.routes == b.routes and a.state == b.state, q
    print(f"{q:<45} {len(a.steps):>2} supersteps, fan-out {len(a.steps[1])}, revisions {a.state['revisions']}: "
          "equal to LangGraph")
assert res.limit_calls == (cfg.step_limit, cfg.step_limit)
print(f"no-exit cycle: both engines stop after {res.limit_calls[0]} node calls (step_limit = recursion_limit = "
      f"{cfg.step_limit})")

# %% [markdown]
# ### Fan-out: max, not sum / 并行：耗时取最大值而非总和
#
# `asyncio` runs one superstep's async nodes on one thread: while a tool awaits its (simulated) API call, the
# event loop runs the others. Eight tools of 50 ms should take about 50 ms in parallel and about 400 ms in a
# chain. Each bar is one node execution (colour = superstep).

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharex=True)
graph.plot_timeline(axes[0], res.spans["fanout"], f"fan-out: {res.timing['fanout']:.3f} s")
graph.plot_timeline(axes[1], res.spans["chain"], f"chain: {res.timing['chain']:.3f} s")
plt.show()
t = res.timing
print(f"{cfg.n_tools} tools x {cfg.tool_delay_s}s: fan-out {t['fanout']:.3f}s, chain {t['chain']:.3f}s "
      f"(sum of delays {t['sum_of_delays']:.2f}s), LangGraph fan-out {t['langgraph_fanout']:.3f}s")
print(f"ratio fan-out / chain = {t['fanout'] / t['chain']:.3f} (ideal 1/{cfg.n_tools} = {1 / cfg.n_tools:.3f}); "
      f"fan-out / slowest tool = {t['fanout'] / t['max_delay']:.2f}")

# %% [markdown]
# ### Crash and resume / 崩溃与恢复
#
# First an exception raised inside the second `critique` call (the run stops with the last checkpoint on disk);
# a *fresh* graph object opens the same SQLite file and resumes. Then the harder case: a child Python process
# runs the question that fans out to all four tools, and the web tool kills its own process with SIGKILL after
# the other three have finished — no exception handler, no cleanup. This process then resumes from the file.

# %%
c, k = res.crash, res.kill
print(f"exception: {c['raised']!r}; last checkpoint: step {c['crashed_after_step']}")
assert c["state"] == c["reference"] and c["history"] == c["trace"]
print("resumed: final state and the whole checkpoint history equal the uninterrupted run")
if k:
    print(f"child process exit code {k['returncode']} (-9 = SIGKILL); last checkpoint: step {k['killed_after_step']}; "
          f"pending writes saved for {k['pending_saved']}")
    print(f"resumed: re-ran {k['rerun_in_killed_step']} in the killed step, then finished")
    assert k["state"] == k["reference"] and k["history"] == k["trace"]

# %% [markdown]
# ### A human approves, rejects or edits / 人工审批：批准、拒绝或修改
#
# The approval graph pauses in `approve`; the human's answer arrives later through a fresh graph object on the
# same SQLite file. A rejected email is never sent; an edited one is sent with the edit. LangGraph, given the same
# answers, ends in the same states.

# %%
for h in res.human:
    assert h["ours"] == h["theirs"] and h["paused"] and h["payload_equal"]
    print(f"{h['answer']['action']:<8} -> decision={h['ours']['decision']:<8} outbox={h['outbox']}")
assert res.human[1]["outbox"] == [] and "see you at 10" in res.human[2]["outbox"][0]

# %% [markdown]
# ## Results / 结果
#
# The checked cell prints each criterion with its threshold (what holds on any machine); measured values follow.

# %%
# NBVAL_CHECK_OUTPUT
for crit in report.criteria:
    print(f"[{'PASS' if crit.passed else 'FAIL'}] {crit.name} {crit.op} {crit.threshold:g}")
assert report.passed, report.failures()

# %%
print(report.summary())

# %% [markdown]
# ## Play: you are the human / 动手：你来审批
#
# The approval panel below runs the gate for real: pick an action (and an edited body), and the paused graph
# is resumed from its SQLite checkpoint with your answer. The static book shows the default (approve).

# %% tags=["nbval-ignore-output"]
import tempfile
from pathlib import Path

import ipywidgets as widgets

panel_db = Path(tempfile.mkdtemp(prefix="approval_")) / "panel.sqlite"


def approval_panel(action: str = "approve", body: str = "lunch at noon?") -> None:
    app = workflows.approval_graph().compile(checkpointer=graph.SQLiteCheckpointer(panel_db))
    paused = app.invoke({"request": "ana@example.org: lunch at noon?"}, "panel")
    print("the graph asks:", paused.interrupts["approve"])
    answer = {"action": action, "args": {"body": body}} if action == "edit" else {"action": action}
    done = app.invoke(graph.Command(resume=answer), "panel")
    print(f"you said {answer} -> steps {done.steps}")
    print("outbox:", done.state["outbox"] or "(nothing was sent)")


widgets.interact(approval_panel, action=widgets.ToggleButtons(options=["approve", "reject", "edit"]),
                 body=widgets.Text(value="lunch at noon?", description="edit body"));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Same semantics, smaller engine.** LangGraph also has `Send` (a dynamic fan-out that hands each branch its
#   own input), subgraphs, streaming of tokens, retries per node, durable execution modes and a Postgres
#   checkpointer; we implement the superstep core those are built on and check it against LangGraph.
# - **Threads vs tasks.** Our sync nodes run inline on the event loop (they block it); LangGraph runs them in a
#   thread pool. Only `async` nodes overlap here — the tools that wait on I/O, which is where the time goes.
# - **Re-running a paused node.** Both engines re-execute an interrupted node from its start; production code
#   keeps side effects after the `interrupt` call or makes them idempotent.
# - **Typed state.** We check values against the schema's types at every write; LangGraph trusts them.
# - **Real nodes are LLM calls.** Here they are deterministic functions so that two engines can be compared
#   exactly; the multi-agent chapter puts the book's LLM interface inside the nodes.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** six research runs in two engines, the approval gate three times, two crash/resume
#   experiments (one in a child process) and the fan-out timing: the page executes in 7 s and the closed loop
#   (`run.py --module mesh --toy`) takes 6 s, peak RAM 0.31 GB (mostly the torch import), on the 2-core CI CPU;
#   no GPU.
# - **Full (`toy=False`):** 64 tools of 200 ms: measured 18 s in all, of which the chain is 12.8 s and the
#   fan-out 0.20 s (ratio 0.016); still CPU only — a GPU does not help orchestration.
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 智能体工作流就是带类型状态的状态机：节点产生部分更新，条件边是守卫，循环要有预算。 · An agent workflow
#   is a state machine with typed state: nodes return partial updates, conditional edges are guards, loops need a budget.
# - 超步内的节点读同一快照并发执行，写入按节点名顺序经 reducer 合并，结果与完成先后无关。 · Nodes of a superstep
#   read one snapshot; their writes are folded by reducers in name order, so the result does not depend on timing.
# - 并行 fan-out 的耗时约等于最慢的工具而不是总和（实测比值约 1/N）。 · A fan-out of slow tools costs about the
#   slowest one, not the sum (measured ratio about 1/N).
# - 每个超步后写 SQLite 检查点；崩溃或 SIGKILL 后恢复，得到与不中断运行相同的状态轨迹，已完成的节点不重跑。 ·
#   A checkpoint after every superstep lets a crashed or killed run resume to the same trace, without re-running
#   finished nodes.
# - `interrupt` 暂停节点等待人类；恢复时节点从头重跑并拿到人的答复；被拒绝的工具调用不会执行。 · `interrupt`
#   pauses for a human; the node re-runs with the answer, and a rejected tool call never runs.
# - 同一张图在 LangGraph 与本书引擎上给出相同的轨迹、路由与最终状态。 · The same graph gives the same trace,
#   routes and final state in LangGraph and in the book's engine.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `superstep_schedule(nodes, edges, joins)` that returns a 0/1 array `runs` of shape
#    `(len(nodes), n_steps)` with `runs[i, k] = 1` when `nodes[i]` runs in superstep `k + 1` (an acyclic graph
#    without routers, `nodes[0]` entered from START; a plain edge triggers its target in the next step, once per
#    step; a join waits for all its sources). Check it with `llmcore.exercises.check_superstep_schedule(fn)`.
# 2. Replace the reducer of `evidence` by "last value" and run the research graph. What does the engine say,
#    and why is that the right answer rather than "keep one of them"?
# 3. Make `draft` join the search tools with a join edge (`add_edge([...], "draft")`) instead of plain edges.
#    For which questions does the graph now stall, and why?
# 4. Move the `interrupt` call in `approve` after a line that appends to `outbox`. Approve once: how many
#    emails are in the outbox, and what does that teach about code before `interrupt`?
# 5. Set `step_limit` to 5 and run the question "hello". Which superstep fails, and what is the smallest limit
#    that lets it finish?
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Simulate the supersteps with a frontier set and per-join "seen" sets:
#
#    ```python
#    import numpy as np
#
#    def superstep_schedule(nodes, edges, joins):
#        runs, frontier, seen = [], {nodes[0]}, [set() for _ in joins]
#        while frontier:
#            runs.append(frontier)
#            nxt = {b for a, b in edges if a in frontier}
#            for i, (srcs, b) in enumerate(joins):
#                seen[i] |= frontier & set(srcs)
#                if seen[i] >= set(srcs):
#                    nxt.add(b)
#                    seen[i] = set()
#            frontier = nxt
#        out = np.zeros((len(nodes), len(runs)))
#        for k, ran in enumerate(runs):
#            for n in ran:
#                out[nodes.index(n), k] = 1
#        return out
#    ```
#
#    The checker rejects a join that fires on its first source and a breadth-first "each node once" answer
#    (a node with two incoming paths of different lengths runs twice).
# 2. Two search tools write `evidence` in one superstep: `GraphError: nodes 'search_code' and 'search_docs' both
#    wrote 'evidence' in one step`. Keeping one would silently drop evidence and depend on timing.
# 3. A join waits for *all* its sources; `plan` triggers only the tools the question needs, so any question that
#    does not use all four tools never triggers `draft` — the run ends after the searches.
# 4. Two: the node runs once until `interrupt`, and again from its start on resume. Side effects go after the
#    interrupt (or in a later node, as `execute` is here).
# 5. "hello" needs 11 supersteps (plan, searches, draft, critique, then revise/critique × 3, finish): after 5
#    supersteps the engine refuses to start the 6th and raises `StepLimitError`; `step_limit=11` is the smallest
#    that finishes.
# :::
#
# ## References / 参考文献
#
# Harel {cite}`harel1987statecharts` (statecharts); Malewicz et al. {cite}`malewicz2010pregel` (Pregel's
# supersteps); LangGraph documentation {cite}`langgraph2024` (graphs, reducers, persistence, interrupts); for
# the multi-agent systems built on top: AutoGen {cite}`wu2023autogen`, MetaGPT {cite}`hong2024metagpt`, and the
# Model Context Protocol {cite}`anthropic2024mcp`. Full entries: [bibliography](../../book/bibliography.md).
