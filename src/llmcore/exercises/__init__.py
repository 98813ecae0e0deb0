"""Self-checking exercises: ``check_<name>(fn)`` runs your function on hidden cases against the book's
reference implementation, prints one PASS line, or raises an AssertionError that says which input,
what was expected and what came back.

    >>> from llmcore.exercises import check_gae
    >>> check_gae(my_gae)  # doctest: +SKIP
    PASS check_gae: 6 hidden cases agree with the book's reference implementation
"""

from llmcore.exercises.agentic_rl import (
    check_per_turn_gae,
)
from llmcore.exercises.agents import (
    check_calculator,
    check_search_score,
)
from llmcore.exercises.alignment import (
    check_bradley_terry_loss,
    check_dpo_loss,
    check_masked_sft_loss,
    check_sft_loss_mask,
)
from llmcore.exercises.architecture import (
    check_online_softmax,
    check_repeat_kv,
    check_rmsnorm,
    check_rope,
)
from llmcore.exercises.cuda_precision import (
    check_loss_scale_update,
)
from llmcore.exercises.data_eval import (
    check_jaccard_estimate,
    check_pass_at_k,
)
from llmcore.exercises.decoding import (
    check_kv_cache_bytes,
    check_speculative_accept,
    check_top_p_filter,
)
from llmcore.exercises.diffusion import (
    check_cfg,
    check_ddim_step,
)
from llmcore.exercises.engineering import (
    check_allreduce_time,
    check_column_parallel_split,
    check_pipeline_bubble,
    check_ring_allreduce_bytes,
    check_zero_memory,
)
from llmcore.exercises.foundation_rl import (
    check_bellman_q,
    check_discounted_return,
    check_double_q_target,
    check_gae,
)
from llmcore.exercises.inference import (
    check_block_slots,
    check_blocks_needed,
)
from llmcore.exercises.mesh import (
    check_superstep_schedule,
)
from llmcore.exercises.moe import (
    check_capacity_keep,
    check_load_balancing_loss,
)
from llmcore.exercises.multi_agent import (
    check_context_window,
)
from llmcore.exercises.offline_rl import (
    check_behaviour_cloning,
    check_cql_loss,
)
from llmcore.exercises.peft import (
    check_lora_forward,
    check_lora_param_count,
    check_ties_merge,
)
from llmcore.exercises.policy_gradient import (
    check_group_advantages,
    check_ppo_clip_loss,
    check_reinforce_returns,
)
from llmcore.exercises.rag import (
    check_bm25_scores,
    check_reciprocal_rank_fusion,
)
from llmcore.exercises.vlm import (
    check_clip_loss,
    check_qformer_mask,
)

__all__ = [
    "check_allreduce_time",
    "check_behaviour_cloning",
    "check_bellman_q",
    "check_block_slots",
    "check_blocks_needed",
    "check_bm25_scores",
    "check_bradley_terry_loss",
    "check_calculator",
    "check_capacity_keep",
    "check_cfg",
    "check_clip_loss",
    "check_column_parallel_split",
    "check_context_window",
    "check_cql_loss",
    "check_ddim_step",
    "check_discounted_return",
    "check_double_q_target",
    "check_dpo_loss",
    "check_gae",
    "check_group_advantages",
    "check_jaccard_estimate",
    "check_kv_cache_bytes",
    "check_load_balancing_loss",
    "check_lora_forward",
    "check_lora_param_count",
    "check_loss_scale_update",
    "check_masked_sft_loss",
    "check_online_softmax",
    "check_pass_at_k",
    "check_per_turn_gae",
    "check_pipeline_bubble",
    "check_ppo_clip_loss",
    "check_qformer_mask",
    "check_reciprocal_rank_fusion",
    "check_reinforce_returns",
    "check_repeat_kv",
    "check_ring_allreduce_bytes",
    "check_rmsnorm",
    "check_rope",
    "check_search_score",
    "check_sft_loss_mask",
    "check_speculative_accept",
    "check_superstep_schedule",
    "check_ties_merge",
    "check_top_p_filter",
    "check_zero_memory",
]
