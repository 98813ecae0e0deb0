"""BCQ and CQL, tabular: the shared losses, BCQ's filter, CQL on a Q-table, CQL's closed-form evaluation, and
the one-state mechanism figure. (The math is in the package docstring, :mod:`llmcore.offline_rl.bcq_cql`.)"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from llmcore.core.errors import LLMCoreError, check_range
from llmcore.foundation_rl.mdp import TabularMDP
from llmcore.offline_rl.offline_rl import (
    GAMMA,
    Dataset,
    EmpiricalMDP,
    empirical_mdp,
    offline_q_iteration,
)

# -- losses (shared by the tabular and the neural learners) -------------------------------------------

def bcq_allowed(probs: np.ndarray | torch.Tensor, tau: float):
    r"""BCQ's action filter :math:`G(a|s) / \max_{\hat a} G(\hat a|s) \ge \tau`, ``(..., A)`` bool.

    ``tau = 0`` allows every action, ``tau = 1`` only the most likely one(s).
    """
    check_range("tau", tau, 0.0, 1.0)
    if isinstance(probs, torch.Tensor):
        return probs / probs.max(-1, keepdim=True).values >= tau
    probs = np.asarray(probs, dtype=float)
    return probs / probs.max(-1, keepdims=True) >= tau


def cql_loss(q: torch.Tensor, actions: torch.Tensor, target: torch.Tensor, alpha: float,
             weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    r"""Discrete CQL(H): :math:`\alpha\,[\log\sum_{a'}e^{Q(s,a')} - Q(s,a)] + \tfrac12 (Q(s,a) - y)^2`, averaged.

    Args:
        q: ``(B, A)`` Q-values of the batch's states; ``actions``: ``(B,)`` the data's actions;
        target: ``(B,)`` Bellman targets ``y`` (no gradient flows into them); ``alpha``: the conservative
        weight (0 = plain DQN loss); ``weight``: ``(B,)`` optional row weights (a weighted mean).
    Returns:
        ``(loss, {"td": ..., "conservative": ...})``.
    """
    check_range("alpha", alpha, 0.0, 1e6)
    q_data = q.gather(1, actions.long()[:, None]).squeeze(1)
    td = 0.5 * (q_data - target.detach()) ** 2
    conservative = torch.logsumexp(q, dim=1) - q_data
    w = torch.full_like(td, 1.0 / len(td)) if weight is None else weight / weight.sum()
    td_m, cons_m = (w * td).sum(), (w * conservative).sum()
    return td_m + alpha * cons_m, {"td": td_m.item(), "conservative": cons_m.item()}


def cql_loss_float64(q, actions, target, alpha: float) -> float:
    """The CQL paper's discrete loss (its Eq. 4 with the TD term), written out with Python floats, row by row:
    an independent evaluation of the formula to check :func:`cql_loss` against (no torch)."""
    q = np.asarray(q, dtype=np.float64)
    total = 0.0
    for row, a, y in zip(q, np.asarray(actions), np.asarray(target, dtype=np.float64)):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        total += alpha * (lse - row[int(a)]) + 0.5 * (row[int(a)] - y) ** 2
    return total / len(q)


def bcq_loss(q: torch.Tensor, logits: torch.Tensor, actions: torch.Tensor, target: torch.Tensor,
             logit_reg: float = 1e-2) -> tuple[torch.Tensor, dict]:
    r"""Discrete BCQ's loss: TD (Huber, as in the paper) + the imitation head's cross-entropy
    :math:`-\log G_\omega(a|s)` + a small penalty on its logits. ``q, logits (B, A)``; ``actions, target (B,)``."""
    q_data = q.gather(1, actions.long()[:, None]).squeeze(1)
    td = F.smooth_l1_loss(q_data, target.detach())
    ce = F.cross_entropy(logits, actions.long())
    return td + ce + logit_reg * (logits ** 2).mean(), {"td": td.item(), "ce": ce.item()}


# -- tabular BCQ and CQL --------------------------------------------------------------------------------

def tabular_bcq(emp: EmpiricalMDP, tau: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Tabular discrete BCQ: :func:`~llmcore.offline_rl.offline_rl.offline_q_iteration` with the max over
    :math:`\mathcal A_\tau(s)` (:math:`G = \hat\beta`, the counts), and the greedy policy within it.
    Returns ``(Q (S, A), pi (S,))``."""
    allowed = bcq_allowed(emp.behaviour, tau)
    Q = offline_q_iteration(emp, allowed=allowed)
    return Q, np.argmax(np.where(allowed, np.round(Q, 9), -np.inf), axis=1)


def cql_table_gradient(Q: np.ndarray, emp: EmpiricalMDP, y: np.ndarray, alpha: float) -> np.ndarray:
    r"""Gradient of :func:`cql_loss` averaged over the whole tabular dataset with respect to the table, ``(S, A)``:

    .. math::
        \frac{\partial L}{\partial Q(s,a)} = \frac1N\Big[n(s,a)\,(Q(s,a) - \bar y(s,a))
        + \alpha\,\big(n(s)\,\mathrm{softmax}\,Q(s,\cdot)_a - n(s,a)\big)\Big],

    with :math:`\bar y(s,a)` the mean target of the pair's transitions ``y (S, A)``. (The tests check it equals
    autograd of :func:`cql_loss` over the raw transitions.)
    """
    n = emp.counts
    z = Q - Q.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return (n * (Q - y) + alpha * (n.sum(1, keepdims=True) * p - n)) / n.sum()


def train_tabular_cql(emp: EmpiricalMDP, alpha: float, steps: int = 2000, lr: float = 0.5,
                      target_every: int = 10) -> np.ndarray:
    r"""CQL(H) on a Q-*table* ``(S, A)``: full-batch gradient descent on :func:`cql_loss` (through
    :func:`cql_table_gradient`) with the target :math:`\bar y = \hat r + \gamma \hat P_c \max_{a'} Q'` from a
    frozen copy :math:`Q'` refreshed every ``target_every`` steps. Starts from 0.

    The step is scaled per state by :math:`N / n(s)` (a state's rows weigh :math:`n(s)/N` in the loss), so a
    rarely visited state converges as fast as a common one: a seen pair moves by
    :math:`\text{lr}\,[\hat\beta(a|s)(Q - \bar y) + \alpha(\mu - \hat\beta)]`, stable for ``lr`` <= 1; an unseen
    pair only by :math:`-\text{lr}\,\alpha\,\mu(a|s)`, downwards, ever more slowly as it sinks.
    """
    check_range("steps", steps, 1, 10**7)
    check_range("alpha", alpha, 0.0, 1e6)
    check_range("lr", lr, 0.0, 1.0)
    Q = np.zeros(emp.counts.shape)
    scale = emp.counts.sum() / np.maximum(emp.counts.sum(1, keepdims=True), 1.0)
    for step in range(steps):
        if step % target_every == 0:
            y = emp.R + emp.gamma * emp.Pc @ Q.max(1)
        Q = Q - lr * scale * cql_table_gradient(Q, emp, y, alpha)
    return Q


def cql_policy_evaluation(emp: EmpiricalMDP, pi: np.ndarray, alpha: float) -> np.ndarray:
    r"""CQL's conservative evaluation of ``pi (S, A)`` on the dataset's model, in closed form (Theorem 3.2):
    :math:`\hat V = (I - \gamma\hat P_\pi)^{-1}(\hat R_\pi - \alpha D_\pi)`, ``(S,)``, with
    :math:`D_\pi(s) = \sum_a \pi^2/\hat\beta - 1`. States without data have no transitions (value 0);
    ``pi`` must stay on seen actions in states with data."""
    beta = emp.behaviour
    on_data = emp.state_seen
    if np.any((pi > 0) & ~emp.seen & on_data[:, None]):
        raise LLMCoreError("pi puts probability on an action the data never take (D would be infinite)")
    D = np.where(on_data, np.sum(np.where(emp.seen, pi ** 2 / np.maximum(beta, 1e-300), 0.0), 1) - 1.0, 0.0)
    P_pi = np.einsum("sa,sap->sp", pi * emp.seen, emp.Pc)
    R_pi = np.sum(pi * emp.seen * emp.R, 1)
    return np.linalg.solve(np.eye(len(D)) - emp.gamma * P_pi, R_pi - alpha * D)


def closed_states(mdp: TabularMDP, pi: np.ndarray, emp: EmpiricalMDP) -> np.ndarray:
    """``(S,)`` bool: states with data from which ``pi`` never reaches a state without data (in the true MDP),
    where the empirical model of a deterministic env equals the true one along ``pi``."""
    P_pi = np.einsum("sa,sap->sp", pi, mdp.Pc)
    bad = ~emp.state_seen
    for _ in range(mdp.n_states):
        new = bad | ((P_pi > 0) & bad[None, :]).any(1)
        if np.array_equal(new, bad):
            break
        bad = new
    return ~bad


# -- figures --------------------------------------------------------------------------------------------

def one_state_example(alpha: float, counts=(6, 3, 1, 0), rewards=(1.0, 2.0, 3.0, 0.0)) -> dict:
    """One state, four actions, one-step episodes: the data take actions 0-2 ``counts`` times with rewards
    ``rewards``; action 3 never. Returns what the mechanism figure draws: the naive table, BCQ's ratios, and
    the CQL table trained with :func:`train_tabular_cql` at ``alpha``."""
    acts = np.repeat(np.arange(4), counts)
    n = len(acts)
    data = Dataset("one state", np.zeros(n, int), acts, np.asarray(rewards)[acts], np.zeros(n, int),
                   np.ones(n, bool), np.zeros(n, bool), np.full((n, 4), 0.25), np.zeros(1))
    emp = empirical_mdp(data, 1, 4, GAMMA)
    return {"beta": emp.behaviour[0], "naive": offline_q_iteration(emp, q_init=5.0)[0],
            "cql": train_tabular_cql(emp, alpha, steps=1000)[0], "rewards": np.asarray(rewards), "q_init": 5.0}


def plot_mechanism(axes, tau: float = 0.3, alpha: float = 1.0):
    r"""Two panels on one state with four actions (action 3 unseen): BCQ's filter
    :math:`\hat\beta(a|s)/\max\hat\beta \ge \tau`, and the values naive Q-learning (unseen pair left at its
    initial value, here 5) and CQL at ``alpha`` assign. Computed with this module's functions; returns ``axes``."""
    ex = one_state_example(alpha)
    x = np.arange(4)
    ratio = ex["beta"] / ex["beta"].max()
    ok = ratio >= tau
    axes[0].bar(x, ratio, color=["#0072B2" if o else "0.75" for o in ok])
    axes[0].axhline(tau, color="#D55E00", ls="--", label=f"τ = {tau:g}")
    axes[0].set_xticks(x, [f"a{i}\nn={c}" for i, c in enumerate((6, 3, 1, 0))])
    axes[0].set_ylabel(r"$\hat\beta(a|s)\,/\,\max_{\hat a}\hat\beta(\hat a|s)$")
    axes[0].set_title("BCQ: only blue actions may be chosen", fontsize=9)
    axes[0].legend(fontsize=8)
    w = 0.27
    axes[1].bar(x - w, ex["rewards"] * (x < 3), w, color="0.6", label="true value (a3: unknown)")
    axes[1].bar(x, ex["naive"], w, color="#D55E00", label=f"naive (a3 keeps Q0 = {ex['q_init']:g})")
    axes[1].bar(x + w, np.maximum(ex["cql"], -3.0), w, color="#009E73", label=f"CQL, α = {alpha:g}")
    axes[1].set_xticks(x, [f"a{i}" for i in range(4)])
    axes[1].set_ylim(-3.2, 6)
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].set_title("values: the max picks a3 naively; CQL pushes it down", fontsize=9)
    axes[1].legend(fontsize=7, loc="upper left")
    return axes


