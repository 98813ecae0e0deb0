"""The module registry: the one list of the book's modules (knowledge-map rows).

Everything that needs "all the modules" reads :data:`MODULES`: the chapters, ``run.py``,
the ``llmcore`` console script, ``tools/smoke_test.py``, the intro page's status table
and the tests. A module is *written* when it has a closed loop (``run`` is set).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmcore.core.device import pick_device
from llmcore.core.errors import LLMCoreError
from llmcore.core.report import Report
from llmcore.core.seed import NUM_THREADS, seed_everything

#: The book's parts: folder name under chapters/ and src/llmcore/, English and Chinese titles.
PARTS: dict[str, tuple[str, str, str]] = {
    "foundation_rl": ("01_foundation_rl", "Theory & Optimization", "理论根基：算法与优化"),
    "architecture": ("02_architecture", "Architecture & Scaling", "架构核心：Transformer、多模态与 MoE"),
    "alignment": ("03_alignment", "Post-Training & Alignment", "能力塑形：微调、对齐与仿真"),
    "engineering": ("04_engineering", "Engineering & Scaling", "系统性能：并发、并行与 PD 分离"),
    "agents": ("05_agents", "Agents & Mesh", "应用闭环：自主智能体与多机协作"),
    "offline_rl": ("06_offline_rl", "Advanced Topics: Offline RL", "进阶课题：离线强化学习"),
}


@dataclass(frozen=True)
class Module:
    """One registered module.

    ``run`` is ``"package.module:function"`` with signature
    ``run(toy: bool, device: torch.device, seed: int) -> Report``, or ``None`` while unwritten.
    :func:`run_module` resolves the device and the seed once before calling it.
    """

    name: str
    part: str
    stem: str  # chapter file stem, e.g. "01_mdp"
    title_en: str
    title_zh: str
    area: str  # knowledge-map "Area" column (bilingual)
    key_points: str
    run: str | None = None
    prerequisites: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    #: the closed loop starts ``torch.distributed`` ranks: its ``device`` stays the validated name, since
    #: ``"auto"`` there means "NCCL when there is one GPU per rank, else gloo on CPU" (a choice per world
    #: size that one ``torch.device`` cannot express)
    spawns_ranks: bool = False
    #: the chapter's code grew into a package ``src/llmcore/<part>/<topic>/`` (a module past ~500 lines)
    package: bool = False
    #: the source module's name when it is not the chapter stem's topic (``mesh``: ``graph``, not ``state_machine``)
    topic: str | None = None

    @property
    def title(self) -> str:
        return f"{self.title_en} / {self.title_zh}"

    @property
    def chapter(self) -> str:
        """Chapter path relative to the repository root (jupytext percent ``.py``)."""
        return f"chapters/{PARTS[self.part][0]}/{self.stem}.py"

    @property
    def source(self) -> str:
        """Reference implementation path relative to the repository root (a package's ``__init__.py``)."""
        topic = self.topic or self.stem.split('_', 1)[1]
        return f"src/llmcore/{self.part}/{topic}/__init__.py" if self.package else f"src/llmcore/{self.part}/{topic}.py"

    @property
    def written(self) -> bool:
        return self.run is not None

    def load(self) -> Callable[..., Report]:
        """Import and return the closed-loop function."""
        if self.run is None:
            raise LLMCoreError(f"module {self.name!r} is on the knowledge map but not written yet")
        mod_name, func = self.run.split(":")
        return getattr(importlib.import_module(mod_name), func)

    @property
    def threads(self) -> int:
        """torch threads for this module's runs: its code module's ``THREADS`` (default ``NUM_THREADS``)."""
        if self.run is None:
            return NUM_THREADS
        return int(getattr(importlib.import_module(self.run.split(":")[0]), "THREADS", NUM_THREADS))


_P1 = "foundation_rl"
_P2 = "architecture"
_P3 = "alignment"
_P4 = "engineering"
_P5 = "agents"
_P6 = "offline_rl"

MODULES: tuple[Module, ...] = (
    # ---- Part 1 -----------------------------------------------------------------------------
    Module("overview", _P1, "00_overview", "RL Foundations", "强化学习基础", "理论概览 Overview",
           "强化学习基础概念、算法分类与学习路径 — concepts, taxonomy, learning path",
           run="llmcore.foundation_rl.overview:run",
           criteria=("trained tabular agent beats the random agent on FrozenLake",
                     "taxonomy map built from the registry")),
    Module("mdp", _P1, "01_mdp", "MDP & Bellman Equations", "MDP 与 Bellman 方程", "决策建模 Decision modelling",
           "MDP 五元组与 Bellman 备份方程 — the 5-tuple, Bellman backups",
           run="llmcore.foundation_rl.mdp:run", prerequisites=("overview",),
           criteria=("VI and PI give the same policy", "V* equals the LP solution to 1e-6",
                     "Bellman residual < 1e-8", "greedy success rate matches V*(s0) within sampling error")),
    Module("td", _P1, "02_td_learning", "TD Learning", "时序差分学习", "价值学习 Value learning",
           "Q-Learning (off-policy) 与 SARSA (on-policy) 的差异", prerequisites=("mdp",),
           run="llmcore.foundation_rl.td_learning:run",
           criteria=("SARSA's online return beats Q-learning's with eps=0.1 (S&B Example 6.6)",
                     "Q-learning's greedy path is the 13-step cliff edge, SARSA's the safe path")),
    Module("gae", _P1, "03_gae", "GAE & Advantage", "GAE 与优势估计", "优势估计 Advantage estimation",
           "GAE、多步回报与训练稳定性的方差权衡 — n-step returns, bias/variance", prerequisites=("td",),
           run="llmcore.foundation_rl.gae:run",
           criteria=("lambda=0 equals the TD error, lambda=1 equals MC return minus V (1e-6), across dones "
                     "and truncation", "vectorised GAE equals a plain loop", "bias falls and variance rises with lambda")),
    # ---- Part 2 -----------------------------------------------------------------------------
    Module("transformer", _P2, "01_transformer", "Transformer Core", "Transformer 核心", "基础架构 Core architecture",
           "MHA、Pre-LN 稳定性、文本/多模态 Embedding 对齐",
           run="llmcore.architecture.transformer:run",
           criteria=("BPE compression within 10% of HF tokenizers", "logits equal HF LlamaForCausalLM (< 1e-4)",
                     "tiny LM val loss far below the unigram baseline",
                     "deep Post-LN without warmup trains worse than Pre-LN")),
    Module("attention", _P2, "02_attention", "Attention Mechanisms", "注意力机制", "注意力内核 Attention kernels",
           "MHA / GQA / MQA 变体与 Flash Attention 工程实现", prerequisites=("transformer",),
           run="llmcore.architecture.attention:run",
           criteria=("MHA/GQA/MQA, tiled and Triton attention equal SDPA (1e-5)",
                     "tiled peak memory grows linearly, naive quadratically (measured)",
                     "KV size vs validation loss table for MHA / GQA / MQA")),
    Module("moe", _P2, "03_moe", "Mixture of Experts", "混合专家模型 (MoE)", "扩展架构 Scaling architecture",
           "Expert Parallelism、Load Balancing 与稀疏计算优化", prerequisites=("transformer",),
           run="llmcore.architecture.moe:run", package=True,
           criteria=("MoE block equals HF MixtralSparseMoeBlock / Qwen2MoeSparseMoeBlock (outputs and router "
                     "logits, 1e-6)", "MoE LM beats the dense LM of equal active parameters at equal steps",
                     "without the aux loss the load collapses (max share, CV); with it the load is flat",
                     "capacity sweep: dropped fraction >= 1 - c, dropping raises the loss",
                     "grouped dispatch equals the per-token loop and is faster")),
    Module("vlm", _P2, "04_vlm", "VLM (LLaVA, Flamingo, BLIP-2)", "视觉语言模型", "模态融合 Modality fusion",
           "MLP Projector、Cross-Attention 与多模态对齐策略", prerequisites=("transformer",),
           run="llmcore.architecture.vlm:run", package=True,
           criteria=("our CLIP loss equals HF CLIPModel's (return_loss=True) on the same embeddings and scale",
                     "our LLaVA projector equals HF LlavaMultiModalProjector with copied weights",
                     "Flamingo with every gate at 0 equals the text-only book LM exactly",
                     "CLIP zero-shot accuracy >= 50% on held-out scenes (24 captions, chance 1/24)",
                     "LLaVA, Flamingo, BLIP-2: VQA exact match >= 60% on held-out scenes (chance 40%)")),
    Module("diffusion", _P2, "05_diffusion", "Diffusion / DiT", "扩散模型与 DiT", "多媒体生成 Generation",
           "Diffusion Transformer (DiT)、Stable Diffusion 与生成控制", prerequisites=("transformer",),
           run="llmcore.architecture.diffusion:run", package=True,
           criteria=("schedules, add_noise and every DDPM/DDIM step equal diffusers' schedulers (1e-6)",
                     "a DiT block's adaLN-Zero starts as the identity",
                     "U-Net: >= 80% of guided samples recognised as the requested digit by a trained judge",
                     "guidance raises accuracy and lowers within-class diversity (measured)",
                     "DDIM at 10 steps: >= 80% recognised, Frechet distance <= 1.5x DDPM's full chain",
                     "U-Net and DiT at equal parameters (15%) and steps; DiT >= 25% recognised (chance: 10%)",
                     "latent diffusion: <= half the pixel DiT's sampling FLOPs, >= 80% recognised")),
    Module("decoding", _P2, "06_decoding", "Decoding Strategy", "解码策略", "生成推理 Inference-time generation",
           "Flash Attention、KV Cache 与定点量化 (INT8/FP8)", prerequisites=("attention",),
           run="llmcore.architecture.decoding:run",
           criteria=("samplers equal HF logits processors; beam search equals HF generate(num_beams)",
                     "greedy tokens identical with/without the static KV cache; cache bytes = formula",
                     "speculative decoding output equals the target's greedy output",
                     "tokens per verification pass within 15% of (1-alpha^(k+1))/(1-alpha), alpha = pooled "
                     "per-position acceptance",
                     "speculative sampling's output distributed as the target's (chi-square p >= 1e-3; draft "
                     "samples rejected); first-position acceptance = sum min(p, q) within 4 s.e.",
                     "INT8 halves and INT4 quarters fp16 weight bytes; perplexity +<=1% / +<=5%",
                     "our FP8 rounding equals torch's float8 casts")),
    # ---- Part 3 -----------------------------------------------------------------------------
    Module("sft", _P3, "01_sft", "Supervised Fine-Tuning", "监督微调 (SFT)", "监督学习 Supervised learning",
           "监督微调、数据质量与合成、指令遵循", run="llmcore.alignment.sft:run", prerequisites=("transformer",),
           criteria=("fine-tuned book LM: held-out exact match >= 95%", "unseen phrasing clearly above 0 (>= 10%)",
                     "pretrained start beats scratch at equal steps", "masked loss equals HF labels=-100 loss (1e-5)",
                     "packed logits equal unpacked", "corrupted responses measurably hurt")),
    Module("peft", _P3, "02_peft", "PEFT (LoRA, Prefix Tuning, Merging)", "参数高效微调",
           "参数高效微调 Parameter-efficient FT", "LoRA、Prefix Tuning 与模型融合 (Model Merging)",
           run="llmcore.alignment.peft:run", prerequisites=("sft",),
           criteria=("LoRA logits equal PEFT's (1e-6)", "merge + unmerge restores W0",
                     "LoRA within 5 points of full FT",
                     "TIES merge keeps >= 80% of each task (full mode; reported in toy mode)",
                     "TIES beats plain averaging (full mode; reported in toy mode)")),
    Module("pg_ac", _P3, "03_pg_ac", "Policy Gradient & Actor-Critic", "策略梯度与演员-评论家",
           "基础算法 Basic algorithms", "Policy Gradient (REINFORCE) 与 Actor-Critic 架构基础",
           prerequisites=("gae",), run="llmcore.alignment.pg_ac:run",
           criteria=("a baseline cuts the policy-gradient variance (measured ratio)",
                     "PPO reaches >= 475 mean return over the last 100 episodes on CartPole-v1 on every one of "
                     "3 seeds by 90% of its budget; A2C on the median seed")),
    Module("ppo", _P3, "04_ppo_dpo", "PPO / DPO", "PPO 与 DPO 偏好对齐", "偏好对齐 Preference alignment",
           "在线/离线对齐算法、奖励模型 (RM) 与隐式偏好优化 (DPO)", run="llmcore.alignment.ppo_dpo:run",
           prerequisites=("sft", "pg_ac"),
           criteria=("RM held-out pair accuracy >= 90%", "PPO raises the true reward with bounded KL",
                     "without KL, a weaker proxy's reward rises while the true reward falls")),
    Module("dpo", _P3, "04_ppo_dpo", "DPO (Direct Preference Optimization)", "DPO 直接偏好优化",
           "偏好对齐 Preference alignment", "离线偏好优化：隐式奖励、β 约束与 IPO 变体",
           run="llmcore.alignment.ppo_dpo:run_dpo", prerequisites=("sft",),
           criteria=("our DPO/IPO loss equals TRL DPOTrainer's (1e-5)",
                     "DPO beats SFT on >= 70% of held-out prompts by the true reward",
                     "DPO raises the preferred style and keeps correctness (within 2 points)")),
    Module("grpo", _P3, "05_grpo", "DeepSeek GRPO", "DeepSeek GRPO 推理对齐", "推理对齐 Reasoning alignment",
           "GRPO 对齐范式、奖励建模与复杂推理链验证", run="llmcore.alignment.grpo:run", prerequisites=("ppo",),
           criteria=("GRPO beats its partial SFT start of the book LM (stopped at 60%, checked in [50%, 80%)) "
                     "on held-out prompts: exact McNemar p < 1e-4; gain, pass@1 and pass@8 reported",
                     "advantages equal TRL's formula")),
    Module("agentic_rl", _P3, "06_agentic_rl", "Agentic RL", "智能体强化学习", "智能体强化学习 Agentic RL",
           "Agentic-RL 训练范式、MARL (MAPPO) 与 User Simulator", prerequisites=("pg_ac", "grpo"),
           run="llmcore.alignment.agentic_rl:run", package=True,
           criteria=("loss mask: gradient exactly 0 on environment (user, tool, padding) token logits",
                     "GRPO over whole dialogues raises held-out task success by >= 10 points over the SFT start "
                     "and cuts turns per success by >= 1",
                     "PPO with per-turn credit raises held-out task success by >= 10 points over the SFT start "
                     "and cuts turns per success by >= 1",
                     "the user simulator passes gymnasium's check_env and is deterministic per seed",
                     "SpreadGrid passes PettingZoo's parallel/seed/state/AEC API tests",
                     "MAPPO and IPPO each close > 25% of the random-to-planner gap; MAPPO not worse than IPPO "
                     "by more than 0.1 (measured: a tie)")),
    Module("data_eval", _P3, "07_data_eval", "Data & Evaluation", "数据与评估", "数据与评估 Data & evaluation",
           "数据清洗、对抗性测试与 LLM-as-a-Judge", prerequisites=("sft",),
           run="llmcore.alignment.data_eval:run", package=True,
           criteria=("our MinHash signatures and LSH candidate pairs equal datasketch's",
                     "planted near-duplicates found with >= 95% precision and recall",
                     "planted junk removed, PII masked, exact duplicates and leaks found",
                     "contamination inflates accuracy and decontamination removes it",
                     "verifier-filtered synthetic data beats unfiltered at equal size",
                     "typos and distractor clauses measurably cut accuracy",
                     "judge position bias measured and removed by swap-and-average; kappa equals sklearn's",
                     "the SFT model under attack: typos and a distractor signature cut exact match",
                     "book LM perplexity equals exp(HF loss); it removes garbage and is fooled by repetition",
                     "self-preference: LM judges favour their own model's samples")),
    # ---- Part 4 -----------------------------------------------------------------------------
    Module("distributed", _P4, "01_distributed", "Distributed Training (Megatron)", "分布式训练",
           "并行策略 Parallelism", "TP/PP/EP (专家并行) 通信开销与 PD 分离架构", prerequisites=("transformer",),
           run="llmcore.engineering.distributed:run", spawns_ranks=True,
           criteria=("TP/PP/EP outputs and gradients equal single-process (1e-5) on 2-4 gloo ranks",
                     "measured pipeline bubble within noise of (p-1)/(m+p-1)",
                     "bytes sent equal the analytic formula for every scheme",
                     "PD disaggregation: identical tokens, KV bytes = formula, no prefill stalls in decode (TTFT/TPOT plotted)")),
    Module("inference", _P4, "02_inference", "Inference Engines (vLLM / SGLang)", "推理框架",
           "推理框架 Inference frameworks", "PagedAttention、RadixAttention 与算子融合调优",
           prerequisites=("decoding",), run="llmcore.engineering.inference:run", package=True,
           criteria=("greedy outputs equal HF generate on >= 32 mixed requests, with preemption (recompute and swap) "
                     "and prefix caching",
                     "parallel samples (n > 1, shared blocks) equal independent seeded requests; paged beam search "
                     "equals HF beam search; sharing lowers the peak block count",
                     "paged KV utilisation >= 90% vs <= 50% for contiguous pre-allocation",
                     "static batching needs >= 3x the engine steps (tokens/s ratio reported)",
                     "prefix-cache hit rate >= 50% on shared-prefix prompts; prefill tokens saved = hits",
                     "zero blocks leaked")),
    Module("kernels", _P4, "03_cuda_precision", "CUDA / Precision", "算子与混合精度", "算子与加速 Kernels & speed",
           "CUDA Kernel 优化、混合精度与量化加速原理", prerequisites=("attention",),
           run="llmcore.engineering.cuda_precision:run", package=True,
           criteria=("Triton vector add / online softmax / RMSNorm fwd+bwd / autotuned matmul equal torch "
                     "(tolerance per kernel)", "format table equals torch.finfo (bit-twiddled independently)",
                     "Kahan sum within 2u in bf16/fp16, >= 10x better than naive",
                     "fp16 gradients underflow without loss scaling, survive with it",
                     "our dynamic loss scaler equals torch.amp.GradScaler step for step (scale, skipped steps)",
                     "bf16 (and fp16+scaling on a GPU) final val loss within 0.1 nats of fp32",
                     "torch._int_mm INT8 GEMM exact; W8A16 equals its dequantized matmul")),
    Module("zero", _P4, "04_zero", "DeepSpeed ZeRO", "ZeRO 显存优化", "工程框架 Training frameworks",
           "ZeRO 系列显存优化与训练流水线", prerequisites=("distributed",),
           run="llmcore.engineering.zero:run", spawns_ranks=True,
           criteria=("ZeRO-1/2/3 loss equals DDP step for step (1e-6)",
                     "per-rank model-state bytes within 10% of the paper's formula (N = 1, 2, 4)",
                     "agrees with torch ZeroRedundancyOptimizer (ZeRO-1) and FSDP2 fully_shard (ZeRO-3)",
                     "activation checkpointing: same gradients, less activation memory")),
    # ---- Part 5 -----------------------------------------------------------------------------
    Module("rag", _P5, "01_rag", "Memory & RAG", "记忆与检索增强生成", "信息检索 Retrieval",
           "RAG、Query 理解、向量检索与 Rerank 模型", run="llmcore.agents.rag:run", package=True,
           prerequisites=("data_eval",),
           criteria=("BM25 scores equal rank_bm25.BM25Okapi (1e-9); mean pooling equals sentence-transformers",
                     "exact dense top-10 equals faiss IndexFlatIP; HNSW recall@10 vs exact >= 0.9",
                     "hybrid (RRF) recall@5 >= BM25's and dense's; reranking raises MRR@10",
                     "BM25 wins lexical questions, dense wins paraphrased ones; decomposition helps compound ones",
                     "long-term (vector) memory recalls facts older than the window that window memory loses")),
    Module("agents", _P5, "02_agent_orchestration", "Agent Orchestration", "智能体编排", "编排范式 Orchestration patterns",
           "ReAct、Plan-and-Execute 与 Self-Ask", prerequisites=("rag",),
           run="llmcore.agents.agent_orchestration:run", package=True,
           criteria=("the ReAct agent with tools solves >= 20% of held-out multi-hop tasks after a one-minute fine-tune "
                     "(Plan-and-Execute and Self-Ask compared: success, model calls, tokens, failures)",
                     "the same model answering directly (no tools) solves <= 15% (chance: ~1%)",
                     "malformed output of the un-fine-tuned book LM is caught, retried within the budget and reported; "
                     "no episode exceeds its completion budget",
                     "the agent through the openai client on llmcore serve gives the in-process answers",
                     "the recipe model shipped with the package (8x the worlds, 11x the steps) solves >= 90% of held-out "
                     "multi-hop tasks with ReAct and <= 30% answering directly")),
    Module("mesh", _P5, "03_state_machine", "Mesh & State Machine", "异步编排与状态机", "系统架构 System architecture",
           "异步编排、复杂状态机与条件路由", prerequisites=("agents",),
           run="llmcore.agents.graph:run", package=True, topic="graph",
           criteria=("state trace, nodes per superstep, routing decisions and final state equal LangGraph's on the "
                     "same graph (conditional loop + parallel fan-out)",
                     "step limit stops a no-exit cycle where LangGraph's recursion_limit does",
                     "interrupt + resume with the human's answer equals LangGraph (approve, reject, edit); a "
                     "rejected call never runs",
                     "resume from the SQLite checkpoint after an exception and after SIGKILL reproduces the "
                     "uninterrupted trace and final state",
                     "fan-out of N slow tools takes ~max not sum (wall / chain wall < 0.5)")),
    Module("multi_agent", _P5, "04_multi_agent", "Multi-Agent Systems", "多智能体协作", "多智能体协作 Multi-agent",
           "去中心化编排、通信协议与 Human-in-the-Loop", prerequisites=("mesh",),
           run="llmcore.agents.multi_agent:run", package=True,
           criteria=("our agents list and call the book's tools on a real MCP stdio server; results equal the same "
                     "tools called in process",
                     "every bus message is validated by the pydantic schema; malformed ones are refused",
                     "supervisor team and decentralised mesh each solve >= 90% of the task set",
                     "team beats the single agent on the same tasks (success +0.15; research wall time < 0.8x)",
                     "a looping worker, a hanging worker and a timing-out tool are detected and recovered from "
                     "(reassignment, fallback route); the answers stay correct",
                     "approval gate: every gated call pauses (interrupt + SQLite) and resumes with the human's "
                     "answer; a rejected call never runs, an edited one runs with the edit; equals LangGraph")),
    # ---- Part 6 -----------------------------------------------------------------------------
    Module("offline_rl", _P6, "01_offline_rl", "Offline RL", "离线强化学习", "算法复现 Overview",
           "离线强化学习与数据分布偏移 — distribution shift", prerequisites=("td",),
           run="llmcore.offline_rl.offline_rl:run",
           criteria=("naive offline Q-learning overvalues every unseen action (Q - Q* > 0, exact Q*)",
                     "its greedy policy underperforms the data's behaviour and BC (exact values)",
                     "with full coverage the same learner finds the optimal policy; online Q-learning too",
                     "Q-learning replayed over the dataset equals its exact fixed point")),
    Module("bcq_cql", _P6, "02_bcq_cql", "BCQ / CQL", "BCQ 与 CQL", "代表算法 Representative algorithms",
           "Batch-Constrained Q-Learning 与 Conservative Q-Learning", prerequisites=("offline_rl",),
           run="llmcore.offline_rl.bcq_cql:run", package=True,
           criteria=("tabular BCQ: tau=0 equals naive Q-learning, tau=1 takes BC's action",
                     "tabular CQL evaluation is a lower bound of the exact V^pi",
                     "CartPole: BCQ and CQL beat naive offline DQN on the medium and mixed datasets",
                     "CartPole: CQL beats BC on mixed data and reaches the medium behaviour's return "
                     "(BCQ: measured, not claimed)",
                     "our CQL loss equals the CQL paper's formula in float64")),
)


@dataclass(frozen=True)
class Algorithm:
    """An RL algorithm the book implements, placed in the usual taxonomy (for the overview map)."""

    name: str
    module: str  # registry name of the chapter that implements it
    family: str  # "dynamic programming" | "value-based" | "policy-based" | "actor-critic" | "imitation"
    policy: str  # "on-policy" | "off-policy" | "n/a (planning)"
    data: str  # "online" | "offline" | "model (known P, R)"
    model: str = "model-free"
    tags: tuple[str, ...] = field(default_factory=tuple)


ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm("Policy evaluation", "mdp", "dynamic programming", "n/a (planning)", "model (known P, R)", "model-based"),
    Algorithm("Value iteration", "mdp", "dynamic programming", "n/a (planning)", "model (known P, R)", "model-based"),
    Algorithm("Policy iteration", "mdp", "dynamic programming", "n/a (planning)", "model (known P, R)", "model-based"),
    Algorithm("Q-learning", "td", "value-based", "off-policy", "online"),
    Algorithm("SARSA", "td", "value-based", "on-policy", "online"),
    Algorithm("REINFORCE", "pg_ac", "policy-based", "on-policy", "online"),
    Algorithm("A2C", "pg_ac", "actor-critic", "on-policy", "online"),
    Algorithm("PPO", "pg_ac", "actor-critic", "on-policy", "online"),
    Algorithm("PPO-RLHF", "ppo", "actor-critic", "on-policy", "online", tags=("LLM",)),
    Algorithm("DPO", "ppo", "policy-based", "off-policy", "offline", tags=("LLM",)),
    Algorithm("GRPO", "grpo", "policy-based", "on-policy", "online", tags=("LLM",)),
    Algorithm("MAPPO", "agentic_rl", "actor-critic", "on-policy", "online", tags=("multi-agent",)),
    Algorithm("Behaviour cloning", "offline_rl", "imitation", "off-policy", "offline"),
    Algorithm("Offline DQN", "offline_rl", "value-based", "off-policy", "offline"),
    Algorithm("BCQ", "bcq_cql", "value-based", "off-policy", "offline"),
    Algorithm("CQL", "bcq_cql", "value-based", "off-policy", "offline"),
)


def rows() -> list[Module]:
    """One module per chapter (knowledge-map row): the first registered for that chapter.

    A chapter may register several closed loops (``ppo`` and ``dpo`` share the PPO / DPO chapter).
    """
    seen: dict[str, Module] = {}
    for m in MODULES:
        seen.setdefault(m.chapter, m)
    return list(seen.values())


def modules_of(chapter: str) -> list[Module]:
    """Every module registered for one chapter path."""
    return [m for m in MODULES if m.chapter == chapter]


def names() -> list[str]:
    return [m.name for m in MODULES]


def get(name: str) -> Module:
    """The module called ``name``; an unknown name is an error that lists the valid ones."""
    for m in MODULES:
        if m.name == name:
            return m
    raise LLMCoreError(f"unknown module {name!r}; valid modules: {', '.join(names())}")


def written() -> list[Module]:
    return [m for m in MODULES if m.written]


def run_module(name: str, toy: bool = True, device: str | torch.device = "auto", seed: int = 0) -> Report:
    """Run a module's closed loop and stamp the report with its wall-clock time.

    The one place a run's device and seed are resolved: ``pick_device(device)`` and
    ``seed_everything(seed, threads=module.threads)``; the closed loop gets the ``torch.device``
    (multi-process modules, ``spawns_ranks``, get the validated name: see :class:`Module`).
    """
    mod = get(name)
    fn = mod.load()
    dev = pick_device(device)
    seed_everything(seed, threads=mod.threads)
    t0 = time.perf_counter()
    report = fn(toy=toy, device=str(device) if mod.spawns_ranks else dev, seed=seed)
    report.device = str(report.device)
    report.wall_s = time.perf_counter() - t0
    return report


def knowledge_map_markdown(has_chapter: Callable[[Module], bool] | None = None) -> str:
    """The seed's knowledge map, bilingual, with a status column (the intro page includes it).

    ``has_chapter(module)`` decides the status (default: the module's closed loop is written).
    Written rows link to their chapter with a MyST ``{doc}`` role.
    """
    has_chapter = has_chapter or (lambda m: m.written)
    out: list[str] = []
    for part, (folder, en, zh) in PARTS.items():
        out += [f"### {folder[:2].lstrip('0')}. {zh} — {en}", "",
                "| 领域 Area | 内容 Row | 要点 Key points | status 状态 |", "|---|---|---|---|"]
        for m in rows():
            if m.part != part:
                continue
            if has_chapter(m):
                row = f"{{doc}}`{m.title_en} · {m.title_zh} </{m.chapter[:-3]}>`"
                status = "✅ written · " + ", ".join(f"`{x.name}`" for x in modules_of(m.chapter))
            else:
                row, status = f"{m.title_en} · {m.title_zh}", "planned 计划中"
            out.append(f"| {m.area} | {row} | {m.key_points} | {status} |")
        out.append("")
    n = sum(bool(has_chapter(m)) for m in rows())
    out.append(f"**{n} of {len(rows())} rows written.**")
    return "\n".join(out) + "\n"
