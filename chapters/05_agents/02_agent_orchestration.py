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
# # Agent Orchestration / 智能体编排
#
# **中文摘要：** 智能体 = 语言模型 + 工具 + 控制流程。本章先定义全书唯一的 LLM 接口：输入 OpenAI 格式的对话消息，
# 输出文本或 OpenAI 函数调用格式的工具调用；模型的畸形输出会被捕获、在有界的预算内重试并记录，绝不崩溃或死循环。
# 后端可以是本书在合成工具轨迹上微调的 book LM（默认，离线）、任何 OpenAI 兼容服务（用官方 `openai` 客户端，
# 在本机对本书自己的 `llmcore serve` 测试），或本地 HF 模型。工具是真实的 Python 函数：事实库检索、键值数据库、
# 计算器。在同一个接口上实现三种编排范式——ReAct（思考—行动—观察循环）、Plan-and-Execute（先规划、逐步执行、
# 失败时重新规划）与 Self-Ask（追问子问题）——并在留出的多跳任务上比较成功率、步数与词元数。事实是随机生成的，
# 模型不可能"记住"，所以同一模型直接作答只有随机水平（约 1%，验收线 ≤ 15%）；带工具的 ReAct 智能体在约一分钟的玩具微调后解出
# 约四成任务（验收线 ≥ 20%，在所有种子上留有余量）——一个 200 万参数的模型复制未见过的名字还不可靠，本章如实报告
# 这个数字与失败分类；随包发布的配方模型（训练世界 8 倍、步数 2000，CPU 上约 12 分钟）在 100 个留出任务上用 ReAct
# 解出 ≥ 90%（验收线），直接作答 ≤ 30%。
#
# **Learning goals**
# - define one LLM interface for agents: OpenAI chat messages in, text or an OpenAI function call out; parse
#   model output, catch malformed output and retry it within a bounded, reported budget;
# - wrap real Python tools (search over a fact base, a key-value database, a safe calculator) in
#   function-calling JSON schemas;
# - implement ReAct, Plan-and-Execute and Self-Ask as control flows over that one interface, and run many
#   episodes in lockstep so every model call is batched;
# - fine-tune a small pretrained LM on synthetic tool-use traces with multi-turn labels, and measure what tools
#   buy on held-out multi-hop tasks: success, model calls, tokens, failure taxonomy;
# - check the agent end to end against an OpenAI-compatible HTTP server through the official `openai` client.
#
# **Prerequisites:** [Memory & RAG](01_rag.ipynb) (retrieval: the `search` tool is its simplest form);
# [SFT](../03_alignment/01_sft.ipynb) (the chat template, prompt-masked loss and the kit's SFT loop);
# [Inference frameworks](../04_engineering/02_inference.ipynb) (`llmcore serve`, the OpenAI-compatible server).

# %% tags=["parameters"]
toy = True  # True: 180-step fine-tune of the ~2M-parameter book LM on ~1k traces, 40 held-out tasks; False: GPU-size run
device = "auto"  # "cpu" | "cuda" | "auto"
seed = 0

# %%
# Colab / fresh kernel: install llmcore from this book's repository if it is missing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("llmcore") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "llmcore[hf,kernels,serve] @ git+https://github.com/llm-core/llm-core@main"])

# %%
import time

import matplotlib.pyplot as plt

from llmcore.agents import agent_orchestration as orch
from llmcore.agents import llm
from llmcore.agents.agent_orchestration import patterns, training, world
from llmcore.architecture.book_lm import book_tokenizer
from llmcore.core import pick_device, seed_everything, show_source, use_style

dev = pick_device(device)
seed_everything(seed)
use_style()
print(f"device={dev}, toy={toy}, seed={seed}")

# %% [markdown]
# ## Theory / 理论
#
# ### An agent is a policy over tool calls / 智能体是工具调用上的策略
#
# An agent alternates between a language model and an environment of tools. At step $t$ the model sees
# the history $h_t = (q, a_1, o_1, \dots, a_{t-1}, o_{t-1})$ -- the question, its earlier actions and
# the observations the tools returned -- and emits the next action
#
# $$ a_t \sim \pi_\theta(\cdot \mid h_t), \qquad o_t = \mathrm{tool}(a_t), $$
#
# until it emits a final answer instead of an action. Everything an agent framework adds is *control flow*
# around this loop: what goes into $h_t$, when to plan, when to stop. Toolformer {cite}`schick2023toolformer`
# showed that a model can be *trained* to emit such calls; here the book LM is fine-tuned on traces of them.
#
# **Why tools.** Our questions ask for facts that are drawn at random per world ("the population of the
# capital of koriba"). For any fixed model, the answer $y$ is independent of the weights given the question,
# so a direct answer is right with probability at most $\max_y P(y) \approx 1/90$ for populations in
# $10..99$ (less after a multiplication). With tools the answer is a deterministic function of the
# observations, $y = f(o_1, \dots, o_T)$: the model only has to route and copy correctly, which training can
# make reliable. The chapter measures both numbers.
#
# ### One interface, one protocol / 一个接口，一个协议
#
# Messages are OpenAI chat messages; tools are described by OpenAI function-calling JSON schemas. A model
# without native tool calling writes the call as text, which `parse_reply` turns back into a `ToolCall`:
#
# ```text
# Thought: look up its population
# Action: {"name": "lookup", "arguments": {"key": "zamute"}}
# ```
#
# A reply is **malformed** when the JSON does not parse, the tool is unknown, an argument is missing or of
# the wrong type, or a text reply lacks what the pattern needs (`Answer: ...`). The interface retries a
# malformed reply by sampling at a temperature (a greedy model would repeat its mistake) at most
# $R$ times, then *reports* it. An episode of at most $S$ model calls therefore draws at most
#
# $$ S\,(1 + R) $$
#
# completions: no crash, no infinite loop, whatever the model writes.
#
# Names are always written in double quotes (`"koriba"`): the BPE tokenizer merges a space with the next word,
# so a name after a space and the same name after a JSON quote would be different tokens, and every copy into
# an argument would be a translation. Before this choice most of the fine-tuned agent's errors were such copies.
# For the same reason the gold *thoughts* name the step ("find the capital", "look up its population") and never
# repeat a name or a number: each name is copied once, into the JSON argument, and every copy is a chance of error.
#
# ### Three control flows / 三种控制流程
#
# - **ReAct** {cite}`yao2023react`: one growing conversation, $h_{t+1} = h_t \oplus (\text{thought}_t, a_t, o_t)$;
#   the model decides after every observation. Cost grows with the history: $T$ calls each re-reading
#   $O(t)$ tokens is $O(T^2)$ prompt tokens.
# - **Plan-and-Execute** {cite}`wang2023planandsolve,xu2023rewoo`: a planner writes the steps once; an
#   executor turns each step (and the results so far) into one tool call in a *short* context; a failed step
#   goes back to the planner (replanning). Fewer tokens per call; but the plan is fixed before any observation.
# - **Self-Ask** {cite}`press2023selfask`: the model asks itself explicit follow-up sub-questions
#   ('Follow up: what is the capital of "koriba"?'), each answered by a tool ("Intermediate answer: ..."),
#   then "So the final answer is: ...". Decomposition is made explicit in the text.
#
# 智能体在"模型—工具"之间交替：模型看到问题、之前的动作和观察，输出下一个动作，直到给出最终答案。三种范式的区别
# 只在控制流程：ReAct 每一步都根据观察再决定；Plan-and-Execute 先写计划、再用短上下文逐步执行、失败时重新规划；
# Self-Ask 把分解写成显式的追问子问题。畸形输出在有界预算内重试：每个回合最多 $S(1+R)$ 次生成。
#
# The figure draws one held-out task under each pattern, from real (gold) episodes run by the code below.

# %%
heldout_world, heldout_tasks = orch.heldout(orch.AgentConfig.for_mode(toy, seed))
demo_task = next(t for t in heldout_tasks if t.op)
gold = {p: patterns.run_episodes(None, p, [demo_task], heldout_world)[0] for p in orch.AGENT_PATTERNS}
fig, ax = plt.subplots(figsize=(13, 4.2))
orch.plot_pattern_traces(ax, gold, demo_task.question)
plt.show()

# %% [markdown]
# ## The LLM interface / LLM 接口
#
# `parse_reply` reads the text protocol; `check_call` validates a call against the schemas (the same check
# applies to native OpenAI `tool_calls`).

# %%
show_source(llm.parse_reply, llm.check_call)

# %% [markdown]
# `chat_batch` is the whole retry policy: attempt 0 is greedy; every still-malformed reply is retried, all
# together in one batch, until it parses or the budget is spent. Backends only implement `complete`
# (conversations → raw text): `LocalLM` (the kit's `Llama`, left-padded batched decoding), `OpenAILM`
# (the official `openai` client), `HFLM` (`transformers`) and `ScriptedLM` (tests).

# %%
show_source(llm.ChatLLM.chat_batch)

# %% [markdown]
# A scripted model shows the budget at work: one that writes broken JSON twice and then a valid call, and one
# that never writes anything valid.

# %%
def flaky(messages, attempt):
    return "Action: {\"name\": \"lookup\", \"arguments\": {\"key\": " if attempt < 2 else \
        'Action: {"name": "lookup", "arguments": {"key": "zamute"}}'


for script in (flaky, lambda messages, attempt: "I would rather not."):
    reply = llm.ScriptedLM(script, max_retries=2).chat([{"role": "user", "content": "?"}], world.TOOL_SCHEMAS,
                                                       validate=llm.answer_validator("Answer:"))
    print(f"attempts={reply.attempts} failed={reply.failed} call={reply.tool_call}")
    for e in reply.errors:
        print("   caught:", e)

# %% [markdown]
# ## Tools and tasks / 工具与任务
#
# The tools are ordinary Python over a generated `World`: `search` ranks the fact sentences by word overlap,
# `lookup` reads a dictionary, `calculator` walks Python's `ast` (never `eval`). Names come from a hash split:
# held-out worlds use countries and cities that no training trace mentions.

# %%
show_source(world.World.search, world.calculate)

# %%
for s in world.TOOL_SCHEMAS:
    print(s["function"]["name"], "->", s["function"]["parameters"]["properties"])
print(heldout_world.facts[:4])
for t in heldout_tasks[:4]:
    print(f"{t.question!r:72s} answer {t.answer} ({t.hops} hops)")

# %% [markdown]
# ## The three patterns / 三种范式
#
# Each pattern is a generator: it yields a request (a conversation and the validator of a text reply), receives
# the reply, calls tools, and returns `(answer, failure)`. The driver `run_episodes` advances all episodes in
# lockstep and sends the pending requests of a kind as one batch. ReAct and Self-Ask share one loop
# (`_tool_loop`): they differ in their prompts, their gold turns and how an observation is worded.

# %%
show_source(patterns.react, patterns._tool_loop, patterns.plan_execute)

# %%
show_source(patterns.self_ask)

# %% [markdown]
# ## Training traces / 训练轨迹
#
# The fine-tuning data are the patterns themselves run with their gold replies on *training* worlds. A ReAct or
# Self-Ask episode is one growing conversation, scored at every assistant turn at once. At inference an
# earlier assistant turn is followed directly by the next role tag (the same rendering as `llmcore serve`),
# so the label at that tag is `<eos>`: the model learns to stop its turn where the tool takes over.

# %%
show_source(training.encode_trace)

# %%
tok = book_tokenizer()
[ep] = patterns.run_episodes(None, "react", [demo_task], heldout_world)
[(msgs, reply)] = training.maximal_pairs(ep)
ids, labels = training.encode_trace(tok, msgs, reply)
print(tok.decode(ids))
print(f"\n{len(ids)} tokens, {sum(label != -100 for label in labels)} scored "
      f"({labels.count(tok.eos_id)} of them <eos>: one per assistant turn)")

# %% [markdown]
# ## The closed loop / 闭环实验
#
# Fine-tune the book LM on the traces of all three patterns and of direct answers (cached by `train_once`: the
# unit tests load the same checkpoint), run every pattern and the direct answer on the held-out tasks, run the
# *un*-fine-tuned book LM through the same interface, and serve the fine-tuned model with `llmcore serve` to run
# the agent through the official `openai` client.

# %%
t0 = time.perf_counter()
cfg = orch.AgentConfig.for_mode(toy, seed)
res = orch.experiment(cfg, dev)
elapsed = time.perf_counter() - t0

# %% tags=["nbval-ignore-output"]
print(f"closed loop: {elapsed:.1f} s (fine-tune {res.metrics['train_s']:.1f} s on {res.metrics['n_traces']} traces "
      "when it ran; 0 when loaded from the cache). Wall times depend on the machine's load.")
for row in res.table():
    print(f"{row['pattern']:13s} success {row['success']:.3f}  calls/task {row['model calls']:.2f}  "
          f"tool calls/task {row['tool calls']:.2f}  tokens/task {row['tokens']:.0f}  retries {row['retries']}  "
          f"failures {row['failures']}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
orch.plot_results(axes, res)
plt.show()

# %% [markdown]
# ### Traces of the fine-tuned agent / 微调后智能体的轨迹
#
# The same held-out task under each pattern, as the fine-tuned model ran it (every model call and tool answer).

# %% tags=["nbval-ignore-output"]
k = res.tasks.index(demo_task)
fig, ax = plt.subplots(figsize=(13, 4.2))
orch.plot_pattern_traces(ax, {p: res.episodes[p][k] for p in orch.AGENT_PATTERNS}, demo_task.question)
plt.show()
for msg in res.episodes["react"][k].pairs[-1][0][1:]:
    print(f"[{msg['role']}] {llm.message_text(msg)}")
print("[assistant]", res.episodes["react"][k].pairs[-1][1])

# %% [markdown]
# ### Malformed output: the un-fine-tuned book LM / 畸形输出：未微调的 book LM
#
# The pretrained book LM has never seen the protocol: it continues the prompt with Python-like text. Every reply
# is caught as malformed, retried within the budget, and the episode ends with a reported failure.

# %% tags=["nbval-ignore-output"]
u = res.untrained
print(f"{len(u)} episodes: success {sum(e.correct for e in u)}, malformed replies caught "
      f"{sum(e.failed_parses for e in u)}, completions per episode max {max(e.attempts for e in u)} "
      f"(bound {cfg.max_steps * (1 + cfg.max_retries)})")
print("first raw reply:", repr(u[0].pairs[0][1][:120]))

# %% [markdown]
# ### Cross-check: the agent through the `openai` client on `llmcore serve` / 交叉验证：经 `openai` 客户端调用本书服务器
#
# The fine-tuned model is served by the inference chapter's OpenAI-compatible server (in a thread on
# localhost); `OpenAILM` reaches it with the official `openai` client. The served agent must give exactly
# the in-process answers (greedy decoding on both sides; the server renders chat messages with the same tokens).

# %%
assert res.served and res.served_agree == 1.0, res.served_agree
assert [e.pairs[-1][1] for e in res.served] == [e.pairs[-1][1] for e in res.episodes["react"][:len(res.served)]]
print(f"{len(res.served)} tasks through openai -> llmcore serve: answers equal in-process "
      f"({sum(e.correct for e in res.served)} correct)")

# %% [markdown]
# ## Results / 结果
#
# Trained numbers first (they move with the seed and the CPU's kernels), then the criteria. The gate is the
# default agent, ReAct, against the same model answering directly; Plan-and-Execute and Self-Ask run on the same
# tasks and are *compared*, not gated (they get a quarter of ReAct's traces, and write some malformed replies).
# ReAct's failures are wrong answers, not malformed output: the protocol is learned in a few dozen steps, the
# *copies* are not. Sorting ReAct's errors by their first wrong step (seed 0, while tuning): most are a held-out
# name copied with a syllable missing (`"piri capital"` for `"piriha"`; the search then finds another country's
# capital) or a city name garbled in the lookup key; the rest are the operator word mapped to the wrong symbol
# (`plus` -> `*`) and the final number copied with a wrong digit.
#
# **Two budgets, two gates.** A one-minute fine-tune does not reach 90% with tools: an earlier 500-step recipe
# (160 s) measured ReAct 0.92, 0.78 and 0.83 on seeds 0, 1 and 2, and the page must execute in about a minute. So
# the live fine-tune is gated on the measured effect with a margin on every seed and kernel (the robustness page):
# ReAct with tools >= 0.2 while the direct answer stays near chance (<= 0.15; chance is ~1% per task). The 90% bar
# is held by the **recipe model shipped with the package** (`src/llmcore/data/agent_lm`, trained by
# `python -m llmcore.agents.agent_orchestration.training`: the same loop with 8x the training worlds — 14,101
# traces — and 2000 steps, 11.8 min on this CPU): on 100 held-out tasks of this seed's world it must solve >= 90%
# with ReAct and <= 30% answering directly. What the extra budget buys is exactly what the error analysis above
# predicts: more distinct names to copy from, more passes to copy them exactly. In cost, Plan-and-Execute's
# executor calls read short contexts, while ReAct and Self-Ask re-read the whole history at every call.

# %% tags=["nbval-ignore-output"]
recipe = orch.RECIPE
print(f"recipe model ({recipe['n_train_worlds']} training worlds, {recipe['steps']} steps), {len(res.shipped['react'])} "
      f"held-out tasks: ReAct {res.shipped_success('react'):.3f}, direct answer {res.shipped_success('direct'):.3f}; "
      f"the one-minute fine-tune above: ReAct {res.success('react'):.3f}")

# %% tags=["nbval-ignore-output"]
report = orch.make_report(res, toy, str(dev), seed)
for name, value in report.metrics.items():
    print(f"{name}: {int(value) if value.is_integer() and value > 1 else round(value, 3)}")
print("\n".join(str(c) for c in report.criteria))

# %%
# NBVAL_CHECK_OUTPUT
for c in report.criteria:
    print(f"[{'PASS' if c.passed else 'FAIL'}] {c.name} {c.op} {c.threshold:g}")
assert report.passed, report.failures()

# %% [markdown]
# ## Play: run the agent / 动手：运行智能体
#
# Pick a pattern and a held-out task; the fine-tuned model runs the episode again and prints every message.

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

agent = orch.agent_llm(res.model, cfg)


def play(pattern: str = "react", task: int = 0) -> None:
    t = res.tasks[task]
    [e] = patterns.run_episodes(agent, pattern, [t], res.world, **orch.pattern_kwargs(pattern, cfg))
    for msgs, raw in e.pairs:
        print(f"[model sees {len(msgs)} messages, last: {llm.message_text(msgs[-1])[:70]!r}]")
        print("   ->", raw.replace("\n", " | "))
    print(f"answer {e.answer!r}, expected {t.answer!r}: {'correct' if e.correct else e.failure}")


widgets.interact(play, pattern=widgets.Dropdown(options=list(patterns.PATTERNS), value="react"),
                 task=widgets.IntSlider(value=0, min=0, max=len(res.tasks) - 1));

# %% [markdown]
# ```{admonition} Where this differs from the paper / production · 与论文和生产系统的差别
# :class: note
# - **Scale.** Our toy agent solves about half of the held-out tasks after a one-minute fine-tune and the shipped
#   recipe model (12 CPU minutes) over 90%; a production agent built on a large pretrained model copies names and
#   numbers almost perfectly. What transfers is the *gap* to the direct answer and the cost structure of the
#   patterns, not the absolute success rate.
# - **Model.** The papers prompt large models (PaLM-540B, GPT-3) with a few examples; a ~2M-parameter model
#   cannot learn a protocol from a prompt, so ours is *fine-tuned* on gold traces of each pattern
#   (Toolformer-style training, with traces written by a program instead of self-annotated). Its "thoughts"
#   are templated: it learns routing and copying, not open-ended reasoning.
# - **Tasks.** HotpotQA / Bamboogle / GSM8K questions over Wikipedia and the web; ours are generated two- and
#   three-hop questions over a random world, so success is exact and the direct baseline is at chance by
#   construction.
# - **Self-Ask.** The paper answers each follow-up with a search engine; here each follow-up names the tool that
#   answers it (search, the database or the calculator), as LangChain's self-ask agents with tools do.
# - **Plan-and-Execute.** Production versions (LangGraph's plan-and-execute, ReWOO) let the replanner also
#   decide when to answer; ours takes the last step's result as the answer, and the model was never trained
#   on replans, so replanning is exercised by the unit tests (a scripted model), rarely by the trained one.
# - **Protocol.** OpenAI models emit `tool_calls` natively (constrained decoding of the JSON); ours writes
#   the call as text and the parser validates it. `OpenAILM(native_tools=True)` uses the native path, tested
#   with the real client on an in-memory transport.
# - **Serving.** Real agents run many episodes concurrently against a server with continuous batching; our
#   in-process backend batches the episodes in lockstep, the served cross-check sends one request at a time.
# ```
#
# ```{admonition} Hardware and cost card · 硬件与成本
# :class: tip
# - **Toy (this page):** the fine-tune is 180 steps of 4 packed rows of 512 tokens (1609 traces, about two
#   passes). Measured at 130 steps: the page executed cold (no cached checkpoint) in 71 s wall (kernel start
#   included) with peak RAM 0.86 GB on the shared 2-core CPU, the fine-tune 46 s of it, the four evaluations of 40
#   held-out tasks (batched, in lockstep), the un-fine-tuned run and the served cross-check about 15 s; with the
#   checkpoint cached (`train_once`, shared with the unit tests) the page runs in 26 s. 180 steps add about 18 s
#   of fine-tune. 130 steps were too few: ReAct moved between 0.125 and 0.5 over seeds 0-4 (seed 3 at 0.125);
#   at 180 steps seed 3 measured 0.35.
# - **Full (`toy=False`):** 2000 training worlds, 3000 steps of 16 packed rows and 500 held-out tasks: about 24×
#   the toy's training tokens -- hours on this CPU, minutes on one GPU (an estimate: not measured here).
# ```
#
# ```{admonition} 要点 · Key points
# :class: important
# - 智能体 = 模型 + 工具 + 控制流程；框架之间的差别只在控制流程。 · An agent is a model, tools and a control
#   flow; agent frameworks differ only in the control flow.
# - 一个接口：OpenAI 对话消息输入，文本或函数调用输出；后端可互换（本地、HTTP、HF）。 · One interface: OpenAI
#   chat messages in, text or a function call out; backends are interchangeable (local, HTTP, HF).
# - 畸形输出是常态而非例外：解析、校验、有界重试并记录，绝不崩溃或死循环。 · Malformed output is the normal
#   case: parse, validate, retry within a bound and report it, never crash or loop forever.
# - 模型不可能知道随机事实；工具把答案变成观察的确定函数，模型只需正确路由与复制。 · A model cannot know
#   random facts; tools make the answer a deterministic function of observations, so the model only routes and copies.
# - ReAct 每步都重读历史，token 开销随步数二次增长；Plan-and-Execute 的执行步上下文很短。 · ReAct re-reads
#   the history at every step, so its prompt cost grows quadratically; Plan-and-Execute's executor contexts are short.
# - 训练与推理必须用同一个对话渲染；多轮标签在下一角色标记处放 `<eos>`。 · Training and inference must
#   render conversations identically; multi-turn labels put `<eos>` at the next role tag.
# ```
#
# ## Exercises / 练习
#
# 1. **Self-checked.** Write `calc(expression)` for integer `+ - *`, parentheses and unary minus by walking
#    `ast.parse(expression, mode="eval")` (no `eval`), and check it with `llmcore.exercises.check_calculator(calc)`.
# 2. **Self-checked.** Write `score(query, fact)`, the number of distinct lower-cased words (runs of `a-z0-9`)
#    the two share, and check it with `llmcore.exercises.check_search_score(score)`. Why does
#    "koriba capital" find the capital fact and not the river fact of the same country?
# 3. Set `max_retries=0` and run the un-fine-tuned book LM again: how many completions does an episode draw
#    now? Then give the fine-tuned agent `retry_temperature=2.0`: do retries ever rescue an episode?
# 4. Train without the Self-Ask traces (`trace_shares=(("react", 1.0), ("plan_execute", 0.25), ("direct", 0.25))`)
#    and run Self-Ask.
#    Which failure of the taxonomy appears, and why does the model still call the right tools sometimes?
# 5. Give the world a second fact with the same words ('the old capital of "koriba" is ...'). Which pattern
#    suffers first, and how would you make `search` robust (see the RAG chapter's BM25)?
# 6. Count prompt tokens per task for ReAct as a function of the number of hops (make 4-hop tasks). Fit the
#    growth and compare with Plan-and-Execute.
#
# :::{admonition} Solutions
# :class: dropdown
#
# 1. Recurse over the node types:
#
#    ```python
#    import ast, operator
#    OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
#    def calc(expression):
#        def ev(n):
#            if isinstance(n, ast.Constant) and type(n.value) is int:
#                return n.value
#            if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
#                return -ev(n.operand)
#            if isinstance(n, ast.BinOp) and type(n.op) in OPS:
#                return OPS[type(n.op)](ev(n.left), ev(n.right))
#            raise ValueError("unsupported")
#        return ev(ast.parse(expression.strip(), mode="eval").body)
#    ```
#
#    Precedence and parentheses come for free: the parser already built the tree.
# 2. `len(set(re.findall(r"[a-z0-9]+", query.lower())) & set(re.findall(r"[a-z0-9]+", fact.lower())))`. The
#    capital fact shares two words ("koriba", "capital"), the river fact one ("koriba"), another capital one.
# 3. With `max_retries=0` each call draws one completion, so an episode draws at most `max_steps` (here it
#    ends after the first malformed reply). Retries at a high temperature rarely help a model that has the
#    format right: its errors are copy errors, and sampling adds more of them.
# 4. Mostly "malformed output" (the Self-Ask scaffold is unknown, so the reply lacks "So the final answer is:")
#    or wrong answers; the tool calls themselves share the ReAct format, which the model knows.
# 5. ReAct and Self-Ask see the wrong observation and copy it; Plan-and-Execute too, since the executor only
#    copies. A ranking that weighs rare words (BM25's IDF) or an exact-phrase bonus fixes the tie.
# 6. Each ReAct call re-reads the history: prompt tokens grow roughly quadratically with the hops, while
#    Plan-and-Execute's executor contexts stay short, so its total grows about linearly.
# :::
#
# ## References / 参考文献
#
# ReAct {cite}`yao2023react`; Self-Ask {cite}`press2023selfask`; Plan-and-Solve {cite}`wang2023planandsolve`;
# ReWOO {cite}`xu2023rewoo`; Toolformer {cite}`schick2023toolformer`. Full entries:
# [bibliography](../../book/bibliography.md).
