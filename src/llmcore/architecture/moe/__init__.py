r"""Mixture of Experts: the model kit's one sparse feed-forward layer, and a small MoE language model.

A package: :mod:`.layer` (the layer, routers, losses, capacity, HF copy), :mod:`.closed_loop` (the MoE LM and
the closed loop), :mod:`.plots` (what the chapter draws). Everything public is re-exported here.

A token :math:`x \in \mathbb R^d` is scored by a router :math:`\ell = W_r x \in \mathbb R^E`,
:math:`p = \operatorname{softmax}(\ell)`, sent to the :math:`k` experts of largest :math:`p`, and the
experts' outputs are mixed:

.. math:: y = \sum_{e \in \mathcal T_k(x)} g_e(x)\, E_e(x), \qquad
          g_e = \frac{p_e}{\sum_{e' \in \mathcal T_k} p_{e'}} \ (\text{Mixtral}), \quad
          g_e = p_e \ (\text{Switch}, k = 1: \text{the router still gets a gradient}).

Load balancing (Switch Transformer, eq. 4): with :math:`f_e` the fraction of tokens routed to
:math:`e` (summed over the :math:`k` slots) and :math:`P_e` the mean router probability,

.. math:: \mathcal L_\text{aux} = E \sum_{e=1}^{E} f_e P_e \quad (= k \text{ when balanced}),
          \qquad \mathcal L_z = \operatorname{mean}_x \big(\log \textstyle\sum_e e^{\ell_e}\big)^2 .

Capacity: expert :math:`e` takes at most :math:`C = \lceil c \cdot N k / E \rceil` of the :math:`N k`
assignments (first choices before second choices, then token order); the rest are *dropped* (they add
nothing; the residual stream carries the token on). Shapes: ``N`` tokens, ``d`` model width, ``E``
experts, ``k`` experts per token, ``F`` expert hidden size.

The layer also has DeepSeekMoE's *shared* experts (always on, Qwen2-MoE's sigmoid gate), noisy top-k
(Shazeer et al. 2017), DeepSeek-V3's auxiliary-loss-free balancing (a per-expert bias that shifts the
*selection* only) and expert-choice routing (Zhou et al. 2022: each expert picks its top-:math:`C` tokens).
:mod:`llmcore.engineering.expert_parallel` splits this layer's experts over ranks.
"""

from __future__ import annotations

from llmcore.architecture.moe.closed_loop import (
    MoEConfig,
    MoELM,
    MoEResult,
    active_params,
    evaluate_moe,
    experiment,
    hf_check,
    make_report,
    run,
    time_dispatch,
)
from llmcore.architecture.moe.layer import (
    ROUTERS,
    Expert,
    MoE,
    SwiGLUExpert,
    capacity,
    capacity_keep,
    copy_to_hf,
    load_balancing_loss,
    load_stats,
    route_topk,
    router_z_loss,
)
from llmcore.architecture.moe.plots import (
    plot_moe_diagram,
    plot_results,
    route_table,
)

__all__ = [
    "Expert", "SwiGLUExpert", "route_topk", "load_balancing_loss", "router_z_loss", "capacity",
    "capacity_keep", "load_stats", "MoE", "copy_to_hf", "ROUTERS", "MoELM", "active_params",
    "MoEConfig", "MoEResult", "evaluate_moe", "time_dispatch", "hf_check", "experiment",
    "make_report", "run", "route_table", "plot_moe_diagram", "plot_results",
]
