r"""An inference engine for the book LM: paged KV cache, continuous batching, radix prefix cache, fusion, server.

A package (the row is ~1700 lines): :mod:`.paged` (block manager with copy-on-write and a host-side swap
pool, the kit's cache protocol over blocks, the ragged forward), :mod:`.paged_attention` (decode attention
through the block table: torch gather path and a Triton kernel), :mod:`.scheduler` (continuous batching,
chunked prefill, preemption by recompute or swapping, waiting/running/swapped queues, parallel sampling,
per-request TTFT/TPOT; the static-batching baseline), :mod:`.beam` (beam search with forked block tables),
:mod:`.radix` (SGLang's radix tree with LRU eviction),
:mod:`.fused` (residual add + RMSNorm as one Triton kernel), :mod:`.closed_loop` (workloads, the HF
``generate`` oracle, the experiment and its report), :mod:`.plots`, and :mod:`.server` (the OpenAI-compatible
FastAPI server; imported on its own since it needs the ``serve`` extra). Everything else public is
re-exported here.

The memory argument in one line: a contiguous cache reserves ``max_len`` positions per sequence, a paged
one ``ceil(len / b) * b``; with KV bytes per position

$$ 2 \times \text{layers} \times \text{kv\_heads} \times \text{head\_dim} \times \text{bytes per element}, $$

the pool that holds 8 reserved 512-token rows holds ~30 live requests of ~130 tokens -- and the scheduler
keeps them all busy.
"""

from llmcore.engineering.inference.beam import PagedBeamResult, beam_search_paged  # noqa: F401
from llmcore.engineering.inference.closed_loop import (  # noqa: F401
    InferenceConfig,
    InferenceResult,
    RunResult,
    Workload,
    corpus_ids,
    experiment,
    hf_greedy,
    make_report,
    mixed_workload,
    peak_blocks,
    percentile,
    run,
    sampling_prompts,
    serve,
    serve_samples,
    shared_prefix_workload,
)
from llmcore.engineering.inference.fused import add_rmsnorm, add_rmsnorm_triton, time_fusion  # noqa: F401
from llmcore.engineering.inference.paged import (  # noqa: F401
    BlockManager,
    BlockTable,
    OutOfBlocks,
    PagedKVCache,
    forward_paged,
)
from llmcore.engineering.inference.paged_attention import (  # noqa: F401
    forward_decode,
    paged_attention_torch,
    paged_attention_triton,
)
from llmcore.engineering.inference.plots import (  # noqa: F401
    demo_pool,
    figures,
    plot_block_tables,
    plot_latency,
    plot_utilisation,
)
from llmcore.engineering.inference.radix import RadixCache, RadixNode  # noqa: F401
from llmcore.engineering.inference.scheduler import Engine, EngineConfig, Request, StepStats  # noqa: F401
