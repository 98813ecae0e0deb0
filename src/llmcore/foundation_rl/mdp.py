r"""Finite MDPs and dynamic programming: policy evaluation, value iteration, policy iteration.

An MDP is the 5-tuple :math:`(\mathcal S, \mathcal A, P, R, \gamma)`. Here it is read straight
from a gymnasium toy-text environment's transition table ``env.unwrapped.P``:
``P[s][a] = [(prob, s_next, reward, terminated), ...]``.

Arrays (``S`` states, ``A`` actions):

* ``P``    ``(S, A, S)``  transition probabilities, rows sum to 1;
* ``Pc``   ``(S, A, S)``  the same, with transitions that *terminate* zeroed, so that
  bootstrapping stops at the end of an episode: :math:`\sum_{s'} P_c(s'|s,a) V(s')`;
* ``R``    ``(S, A)``     expected immediate reward :math:`\sum_{s'} P(s'|s,a)\, r(s,a,s')`.

The Bellman optimality backup is :math:`(TV)(s)=\max_a R(s,a)+\gamma\sum_{s'}P_c(s'|s,a)V(s')`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linprog

from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.report import Report

ARROWS = "←↓→↑"  # FrozenLake's action order: 0 LEFT, 1 DOWN, 2 RIGHT, 3 UP


@dataclass
class TabularMDP:
    """A finite MDP in array form (see the module docstring for shapes)."""

    P: np.ndarray  # (S, A, S)
    Pc: np.ndarray  # (S, A, S) continuing part of P
    R: np.ndarray  # (S, A)
    gamma: float
    mu0: np.ndarray  # (S,) initial-state distribution
    terminal: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (S,) absorbing states

    @property
    def n_states(self) -> int:
        return self.R.shape[0]

    @property
    def n_actions(self) -> int:
        return self.R.shape[1]


def from_gymnasium(env, gamma: float) -> TabularMDP:
    """Read the 5-tuple from a gymnasium toy-text env (FrozenLake, CliffWalking, Taxi)."""
    check_range("gamma", gamma, 0.0, 1.0)
    u = env.unwrapped
    if not hasattr(u, "P"):
        raise LLMCoreError(f"{env.spec.id if env.spec else env} has no transition table `P`")
    S, A = u.observation_space.n, u.action_space.n
    P = np.zeros((S, A, S))
    Pc = np.zeros((S, A, S))
    R = np.zeros((S, A))
    for s in range(S):
        for a in range(A):
            for prob, s2, r, done in u.P[s][a]:
                P[s, a, s2] += prob
                Pc[s, a, s2] += prob * (not done)
                R[s, a] += prob * r
    terminal = np.array([all(s2 == s and d for _a in range(A) for _p, s2, _r, d in u.P[s][_a]) for s in range(S)])
    mu0 = np.asarray(getattr(u, "initial_state_distrib", np.eye(S)[0]), dtype=float)
    return TabularMDP(P=P, Pc=Pc, R=R, gamma=gamma, mu0=mu0, terminal=terminal)


# -- Bellman backups -----------------------------------------------------------------------------

def q_from_v(mdp: TabularMDP, V: np.ndarray) -> np.ndarray:
    """:math:`Q(s,a) = R(s,a) + \\gamma \\sum_{s'} P_c(s'|s,a) V(s')`, shape ``(S, A)``."""
    return mdp.R + mdp.gamma * mdp.Pc @ V


def greedy(Q: np.ndarray, decimals: int = 9) -> np.ndarray:
    """Greedy policy ``(S,)``; ties (equal up to ``decimals``) go to the lowest action index."""
    return np.argmax(np.round(Q, decimals), axis=1)


def bellman_residual(mdp: TabularMDP, V: np.ndarray) -> float:
    """:math:`\\|TV - V\\|_\\infty` — zero exactly at the fixed point :math:`V^*`."""
    return float(np.max(np.abs(q_from_v(mdp, V).max(axis=1) - V)))


def policy_evaluation(mdp: TabularMDP, pi: np.ndarray, tol: float = 1e-12, max_sweeps: int = 100_000):
    """Iterative policy evaluation of a deterministic policy ``pi`` ``(S,)``.

    Sweeps :math:`V \\leftarrow R_\\pi + \\gamma P_\\pi V` until the change is below ``tol``.
    Returns ``(V, sweeps)``.
    """
    idx = np.arange(mdp.n_states)
    R_pi, P_pi = mdp.R[idx, pi], mdp.Pc[idx, pi]
    V = np.zeros(mdp.n_states)
    for sweep in range(1, max_sweeps + 1):
        V_new = R_pi + mdp.gamma * P_pi @ V
        delta = np.max(np.abs(V_new - V))
        V = V_new
        if delta < tol:
            return V, sweep
    raise LLMCoreError(f"policy evaluation did not converge in {max_sweeps} sweeps (gamma={mdp.gamma})")


def policy_evaluation_exact(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    """Solve :math:`(I - \\gamma P_\\pi) V = R_\\pi` directly (needs a proper policy when gamma = 1)."""
    idx = np.arange(mdp.n_states)
    A = np.eye(mdp.n_states) - mdp.gamma * mdp.Pc[idx, pi]
    return np.linalg.solve(A, mdp.R[idx, pi])


def value_iteration(mdp: TabularMDP, tol: float = 1e-12, max_sweeps: int = 100_000, keep: int = 0):
    """Value iteration :math:`V_{k+1} = T V_k` from :math:`V_0 = 0`.

    Returns ``(V, pi, sweeps, history)`` where ``history`` holds the first ``keep`` iterates
    (``V_0 .. V_keep``) for plotting how the backup spreads value from the goal.
    """
    V = np.zeros(mdp.n_states)
    history = [V.copy()] if keep else []
    for sweep in range(1, max_sweeps + 1):
        V_new = q_from_v(mdp, V).max(axis=1)
        delta = np.max(np.abs(V_new - V))
        V = V_new
        if sweep <= keep:
            history.append(V.copy())
        if delta < tol:
            return V, greedy(q_from_v(mdp, V)), sweep, history
    raise LLMCoreError(f"value iteration did not converge in {max_sweeps} sweeps (gamma={mdp.gamma})")


def policy_iteration(mdp: TabularMDP, max_iters: int = 1000):
    """Howard's policy iteration: exact evaluation, then greedy improvement, until stable.

    Returns ``(V, pi, iterations)``.
    """
    pi = np.zeros(mdp.n_states, dtype=int)
    for it in range(1, max_iters + 1):
        V = policy_evaluation_exact(mdp, pi)
        pi_new = greedy(q_from_v(mdp, V))
        if np.array_equal(pi_new, pi):
            return V, pi, it
        pi = pi_new
    raise LLMCoreError(f"policy iteration did not stabilise in {max_iters} iterations")


def solve_lp(mdp: TabularMDP) -> np.ndarray:
    r"""V* as the linear program :math:`\min_V \sum_s V(s)` s.t. :math:`V(s) \ge R(s,a) + \gamma \sum_{s'} P_c V(s')`.

    Each (s, a) gives one row of ``A_ub V <= b_ub``: :math:`(\gamma P_c(\cdot|s,a) - e_s) V \le -R(s,a)`.
    """
    S, A = mdp.n_states, mdp.n_actions
    A_ub = mdp.gamma * mdp.Pc.reshape(S * A, S) - np.repeat(np.eye(S), A, axis=0)
    b_ub = -mdp.R.reshape(S * A)
    res = linprog(c=np.ones(S), A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * S, method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if not res.success:
        raise LLMCoreError(f"linprog failed: {res.message}")
    return res.x


# -- stochastic policies and the policy-improvement theorem ----------------------------------------

def policy_matrix(pi: np.ndarray, n_actions: int) -> np.ndarray:
    """A deterministic policy ``(S,)`` as a stochastic one ``(S, A)`` (one-hot rows)."""
    return np.eye(n_actions)[np.asarray(pi)]


def evaluate_stochastic(mdp: TabularMDP, pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact :math:`V^\pi` ``(S,)`` and :math:`Q^\pi` ``(S, A)`` of a stochastic policy ``pi (S, A)``.

    Bellman expectation equation for a stochastic policy:
    :math:`V^\pi(s) = \sum_a \pi(a|s)\,[R(s,a) + \gamma\sum_{s'}P(s'|s,a)V^\pi(s')]`, i.e. the linear system
    :math:`(I - \gamma P_\pi)V = R_\pi` with :math:`P_\pi = \sum_a \pi(a|s) P(\cdot|s,a)`,
    :math:`R_\pi = \sum_a \pi(a|s)R(s,a)`; then :math:`Q^\pi = R + \gamma P V^\pi`.
    """
    pi = np.asarray(pi, dtype=float)
    if pi.shape != mdp.R.shape or not np.allclose(pi.sum(1), 1) or (pi < 0).any():
        raise LLMCoreError(f"pi must be a (S, A) = {mdp.R.shape} matrix of probabilities, got shape {pi.shape}")
    P_pi = np.einsum("sa,sap->sp", pi, mdp.Pc)
    R_pi = np.sum(pi * mdp.R, axis=1)
    V = np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * P_pi, R_pi)
    return V, q_from_v(mdp, V)


def improvement_trace(mdp: TabularMDP, max_iters: int = 100) -> list[np.ndarray]:
    r"""Policy iteration started from the uniform random policy; returns :math:`V^{\pi_0}, V^{\pi_1}, \dots`.

    The policy-improvement theorem says each greedy step can only help: :math:`V^{\pi_{k+1}} \ge V^{\pi_k}`
    in every state, with equality everywhere only when :math:`\pi_k` is already optimal.
    """
    pi = np.full(mdp.R.shape, 1.0 / mdp.n_actions)
    trace = []
    for _ in range(max_iters):
        V, Q = evaluate_stochastic(mdp, pi)
        trace.append(V)
        pi_new = policy_matrix(greedy(Q), mdp.n_actions)
        if np.array_equal(pi_new, pi):
            return trace
        pi = pi_new
    raise LLMCoreError(f"policy iteration did not stabilise in {max_iters} iterations")


def finite_horizon_value(mdp: TabularMDP, pi: np.ndarray, horizon: int) -> np.ndarray:
    """Undiscounted expected return within ``horizon`` steps of a stochastic policy ``pi (S, A)``, ``(S,)``."""
    P_pi = np.einsum("sa,sap->sp", pi, mdp.Pc)
    R_pi = np.sum(pi * mdp.R, axis=1)
    V = np.zeros(mdp.n_states)
    for _ in range(horizon):
        V = R_pi + P_pi @ V
    return V


def plot_backup_diagram(ax, kind: str = "v") -> None:
    """Sutton & Barto's backup diagram for :math:`V^\\pi` (``kind="v"``) or :math:`Q^\\pi` (``"q"``).

    Open circles are states, filled dots are actions; arcs are the sums the Bellman equation takes
    (over :math:`\\pi(a|s)` at a state, over :math:`P(s'|s,a)` at an action).
    """
    if kind not in ("v", "q"):
        raise LLMCoreError(f"kind={kind!r}; valid: 'v', 'q'")
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-0.6, 3.6)
    ax.axis("off")

    def state(x, y, label=""):
        ax.scatter([x], [y], s=260, facecolors="white", edgecolors="k", zorder=3)
        if label:
            ax.text(x, y + 0.32, label, ha="center", fontsize=9)

    def action(x, y, label=""):
        ax.scatter([x], [y], s=90, color="k", zorder=3)
        if label:
            ax.text(x + 0.18, y + 0.12, label, fontsize=9)

    def edge(p, q):
        ax.plot([p[0], q[0]], [p[1], q[1]], color="k", lw=1, zorder=1)

    if kind == "v":
        state(0, 3, r"$s$: $V^\pi(s)$")
        acts = [-1.6, 0, 1.6]
        for x in acts:
            edge((0, 3), (x, 2))
            action(x, 2)
        ax.text(-2.9, 2.45, r"$\sum_a \pi(a|s)$", fontsize=9, color="C0")
        ax.text(1.75, 2.0, r"$a$, reward $r$", fontsize=9)
        for x in acts:
            for dx in (-0.5, 0.5):
                edge((x, 2), (x + dx, 1))
                state(x + dx, 1)
        ax.text(-2.9, 1.45, r"$\sum_{s'} P(s'|s,a)$", fontsize=9, color="C1")
        ax.text(2.2, 0.55, r"$s'$: $V^\pi(s')$", fontsize=9)
        ax.set_title(r"$V^\pi(s)=\sum_a\pi(a|s)\,[R(s,a)+\gamma\sum_{s'}P(s'|s,a)V^\pi(s')]$", fontsize=9)
    else:
        action(0, 3, r"$(s,a)$: $Q^\pi(s,a)$")
        nxt = [-1.6, 0, 1.6]
        for x in nxt:
            edge((0, 3), (x, 2))
            state(x, 2)
        ax.text(-2.9, 2.45, r"$\sum_{s'} P(s'|s,a)$", fontsize=9, color="C1")
        ax.text(1.8, 2.0, r"$s'$", fontsize=9)
        for x in nxt:
            for dx in (-0.5, 0.5):
                edge((x, 2), (x + dx, 1))
                action(x + dx, 1)
        ax.text(-2.9, 1.45, r"$\sum_{a'} \pi(a'|s')$", fontsize=9, color="C0")
        ax.text(2.2, 0.55, r"$a'$: $Q^\pi(s',a')$", fontsize=9)
        ax.set_title(r"$Q^\pi(s,a)=R(s,a)+\gamma\sum_{s'}P(s'|s,a)\sum_{a'}\pi(a'|s')Q^\pi(s',a')$", fontsize=9)


def finite_horizon_success(mdp: TabularMDP, pi: np.ndarray, horizon: int) -> np.ndarray:
    """Undiscounted expected return of ``pi`` within ``horizon`` steps (the env's time limit).

    For FrozenLake (reward 1 only on reaching the goal) this is the probability of success
    before the episode is truncated — exactly what simulating the env estimates.
    """
    idx = np.arange(mdp.n_states)
    R_pi, P_pi = mdp.R[idx, pi], mdp.Pc[idx, pi]
    V = np.zeros(mdp.n_states)
    for _ in range(horizon):
        V = R_pi + P_pi @ V
    return V


def simulate(env, pi: np.ndarray, episodes: int, seed: int, show_progress: bool = True) -> np.ndarray:
    """Run ``pi`` in the real gymnasium env; returns the undiscounted return per episode ``(episodes,)``."""
    from llmcore.core.progress import progress

    returns = np.zeros(episodes)
    obs, _ = env.reset(seed=seed)
    for ep in progress(range(episodes), desc="simulate greedy policy", disable=not show_progress):
        if ep:
            obs, _ = env.reset()
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(int(pi[obs]))
            returns[ep] += r
            done = term or trunc
    return returns


def policy_grid(desc: np.ndarray, pi: np.ndarray) -> list[str]:
    """The policy drawn as arrows on the map (holes ``H`` and goal ``G`` kept)."""
    rows = []
    n_rows, n_cols = desc.shape
    for i in range(n_rows):
        row = ""
        for j in range(n_cols):
            c = desc[i, j].decode() if isinstance(desc[i, j], bytes) else str(desc[i, j])
            row += c if c in "HG" else ARROWS[pi[i * n_cols + j]]
        rows.append(row)
    return rows


# -- the closed loop ------------------------------------------------------------------------------

@dataclass
class MDPResult:
    """Everything the chapter plots and checks."""

    map_name: str
    desc: np.ndarray
    mdp: TabularMDP
    V_vi: np.ndarray
    pi_vi: np.ndarray
    vi_sweeps: int
    vi_history: list[np.ndarray]
    V_pi: np.ndarray
    pi_pi: np.ndarray
    pi_iters: int
    V_lp: np.ndarray
    V_eval: np.ndarray
    eval_sweeps: int
    residual: float
    success_exact: float
    sim_returns: np.ndarray
    horizon: int
    improvement: list[np.ndarray] = field(default_factory=list)  # V of policy iteration from the uniform policy
    V_uniform: np.ndarray | None = None  # (S,) V of the uniform random policy (stochastic Bellman equation)
    Q_uniform: np.ndarray | None = None  # (S, A) its Q


def make_env(map_name: str = "4x4", slippery: bool = True):
    import gymnasium as gym

    if map_name not in ("4x4", "8x8"):
        raise LLMCoreError(f"map_name={map_name!r}; valid: '4x4', '8x8'")
    return gym.make("FrozenLake-v1", map_name=map_name, is_slippery=slippery)


def experiment(toy: bool = True, seed: int = 0, gamma: float = 0.99, episodes: int | None = None,
               keep: int = 12, show_progress: bool = True) -> MDPResult:
    """Solve FrozenLake by VI, PI and LP; evaluate; simulate the greedy policy in gymnasium."""
    from llmcore.core.seed import seed_everything

    seed_everything(seed)
    map_name = "4x4" if toy else "8x8"
    episodes = episodes or (1000 if toy else 20_000)
    check_range("episodes", episodes, 1, 10_000_000)
    env = make_env(map_name)
    mdp = from_gymnasium(env, gamma)
    V_vi, pi_vi, vi_sweeps, hist = value_iteration(mdp, keep=keep)
    V_pi, pi_pi, pi_iters = policy_iteration(mdp)
    V_lp = solve_lp(mdp)
    V_eval, eval_sweeps = policy_evaluation(mdp, pi_vi)
    horizon = env.spec.max_episode_steps
    success = finite_horizon_success(mdp, pi_vi, horizon)
    rets = simulate(env, pi_vi, episodes, seed, show_progress=show_progress)
    env.close()
    trace = improvement_trace(mdp)
    V_u, Q_u = evaluate_stochastic(mdp, np.full(mdp.R.shape, 1.0 / mdp.n_actions))
    return MDPResult(map_name, env.unwrapped.desc, mdp, V_vi, pi_vi, vi_sweeps, hist, V_pi, pi_pi, pi_iters,
                     V_lp, V_eval, eval_sweeps, bellman_residual(mdp, V_vi), float(mdp.mu0 @ success),
                     rets, horizon, trace, V_u, Q_u)


def make_report(res: MDPResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and acceptance criteria of the MDP chapter."""
    rep = Report("mdp", "MDP & Bellman Equations / MDP 与 Bellman 方程", toy, device, seed)
    nonterm = ~res.mdp.terminal
    rep.metric("states", res.mdp.n_states)
    rep.metric("vi_sweeps", res.vi_sweeps)
    rep.metric("pi_iterations", res.pi_iters)
    rep.metric("V*(s0) discounted", float(res.mdp.mu0 @ res.V_vi))
    rep.metric("success prob within time limit (exact)", res.success_exact)
    n = len(res.sim_returns)
    rate = float(res.sim_returns.mean())
    se = float(np.sqrt(res.success_exact * (1 - res.success_exact) / n))
    rep.metric("success rate simulated", rate)
    rep.metric("episodes", n)
    rep.check("VI/PI policy disagreements (non-terminal states)",
              int(np.sum(res.pi_vi[nonterm] != res.pi_pi[nonterm])), "==", 0)
    rep.check("max |V_VI - V_PI|", float(np.max(np.abs(res.V_vi - res.V_pi))), "<", 1e-8)
    rep.check("max |V_VI - V_LP|", float(np.max(np.abs(res.V_vi - res.V_lp))), "<", 1e-6)
    rep.check("Bellman residual ||TV - V||_inf", res.residual, "<", 1e-8)
    rep.check("max |V_eval(pi*) - V*| (policy evaluation)", float(np.max(np.abs(res.V_eval - res.V_vi))), "<", 1e-8)
    rep.check("|simulated - exact success| in standard errors", abs(rate - res.success_exact) / se, "<", 3.0)
    if res.improvement:
        steps = [b - a for a, b in zip(res.improvement, res.improvement[1:])]
        rep.metric("policy iteration from the uniform policy: iterations", len(res.improvement))
        rep.metric("V(s0): uniform random policy", float(res.mdp.mu0 @ res.improvement[0]))
        rep.check("policy improvement: min over steps and states of V_k+1 - V_k", min(float(d.min()) for d in steps),
                  ">=", -1e-10)
        rep.check("policy improvement: last V equals V* (max abs diff)",
                  float(np.max(np.abs(res.improvement[-1] - res.V_vi))), "<", 1e-8)
        u = np.full(res.mdp.R.shape, 1.0 / res.mdp.n_actions)
        rep.check("stochastic Bellman: max |V_pi - sum_a pi Q_pi| (uniform policy)",
                  float(np.max(np.abs(res.V_uniform - np.sum(u * res.Q_uniform, 1)))), "<", 1e-10)
        resid = res.V_uniform - (u * (res.mdp.R + res.mdp.gamma * res.mdp.Pc @ res.V_uniform)).sum(1)
        rep.check("stochastic Bellman residual of V_uniform", float(np.max(np.abs(resid))), "<", 1e-10)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The MDP closed loop (tabular, so ``device`` is validated and recorded but unused)."""
    dev = device  # resolved once by the registry (run_module)
    res = experiment(toy=toy, seed=seed, show_progress=True)
    rep = make_report(res, toy, str(dev), seed)
    rep.notes.append("greedy policy:\n" + "\n".join(policy_grid(res.desc, res.pi_vi)))
    return rep
