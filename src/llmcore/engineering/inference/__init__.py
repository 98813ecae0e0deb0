"""Inference engine (re-exports; docstring below is temporary)."""

from llmcore.engineering.inference.closed_loop import (  # noqa: F401
    InferenceConfig,
    experiment,
    hf_greedy,
    make_report,
    mixed_workload,
    run,
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
from llmcore.engineering.inference.radix import RadixCache  # noqa: F401
from llmcore.engineering.inference.scheduler import Engine, EngineConfig, Request  # noqa: F401
