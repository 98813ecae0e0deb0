r"""Returns and advantages: Monte-Carlo, n-step, λ-returns / TD(λ), and GAE(γ, λ) (Schulman et al. 2016).

All estimators take time-major tensors ``(T, N)`` (``T`` steps, ``N`` envs) with the conventions of
:mod:`llmcore.foundation_rl.rollout`: ``dones[t] = 1`` means the episode ended at step ``t`` (no
bootstrap from, and no credit flowing back from, step ``t + 1``); ``last_value (N,)`` is
:math:`V(s_T)`, the value of the observation after the last step, used for episodes still running.

The TD error and GAE:

.. math::
    \delta_t = r_t + \gamma (1 - d_t) V(s_{t+1}) - V(s_t), \qquad
    \hat A_t = \delta_t + \gamma\lambda (1 - d_t) \hat A_{t+1}
             = \sum_{l \ge 0} (\gamma\lambda)^l \delta_{t+l} \ \text{(within the episode)}.

λ = 0 gives :math:`\hat A_t = \delta_t`; λ = 1 gives :math:`\hat A_t = G_t - V(s_t)`, the
(bootstrapped) Monte-Carlo return minus the baseline. :math:`\hat A_t + V(s_t)` is the λ-return
:math:`G^\lambda_t = (1-\lambda)\sum_{n\ge1} \lambda^{n-1} G^{(n)}_t`, the target of TD(λ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.report import Report


def _check(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
           gamma: float, lam: float = 0.0) -> None:
    check_range("gamma", gamma, 0.0, 1.0)
    check_range("lam", lam, 0.0, 1.0)
    if rewards.ndim != 2 or values.shape != rewards.shape or dones.shape != rewards.shape:
        raise LLMCoreError(f"rewards, values, dones must all be (T, N); got {tuple(rewards.shape)}, "
                           f"{tuple(values.shape)}, {tuple(dones.shape)}")
    if last_value.shape != rewards.shape[1:]:
        raise LLMCoreError(f"last_value must be (N,) = {tuple(rewards.shape[1:])}, got {tuple(last_value.shape)}")


def bootstrap_truncation(rewards: torch.Tensor, truncations: torch.Tensor, final_values: torch.Tensor,
                         gamma: float) -> torch.Tensor:
    r"""Fold the value owed at a time-limit cut into the reward: :math:`r_t + \gamma V(s_\text{final})`.

    After this, a truncation can be treated as a done like a termination. ``(T, N)`` each.
    """
    return rewards + gamma * truncations * final_values


def next_values(values: torch.Tensor, last_value: torch.Tensor) -> torch.Tensor:
    """``(T, N)``: :math:`V(s_{t+1})` for every step (``values`` shifted by one, ``last_value`` last)."""
    return torch.cat([values[1:], last_value.unsqueeze(0)], dim=0)


def td_errors(rewards, values, dones, last_value, gamma: float) -> torch.Tensor:
    r"""One-step TD errors :math:`\delta_t = r_t + \gamma(1-d_t)V(s_{t+1}) - V(s_t)`, ``(T, N)``."""
    _check(rewards, values, dones, last_value, gamma)
    return rewards + gamma * (1.0 - dones) * next_values(values, last_value) - values


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_value: torch.Tensor,
                gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""GAE(γ, λ) by the backward recursion, vectorised over envs — the one PPO/A2C use.

    Args:
        rewards, values, dones: ``(T, N)``; ``last_value``: ``(N,)``.
    Returns:
        ``(advantages, returns)``, both ``(T, N)``; ``returns = advantages + values`` (the λ-return,
        the critic's regression target).
    """
    _check(rewards, values, dones, last_value, gamma, lam)
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(last_value)
    for t in reversed(range(T)):
        nonterminal = 1.0 - dones[t]
        next_v = last_value if t == T - 1 else values[t + 1]
        delta = rewards[t] + gamma * nonterminal * next_v - values[t]  # δ_t
        last_gae = delta + gamma * lam * nonterminal * last_gae  # Â_t = δ_t + γλ(1-d_t) Â_{t+1}
        adv[t] = last_gae
    return adv, adv + values


def compute_gae_loop(rewards, values, dones, last_value, gamma: float, lam: float) -> torch.Tensor:
    """The same as :func:`compute_gae` written as plain Python over scalars, env by env (a reference)."""
    _check(rewards, values, dones, last_value, gamma, lam)
    r, v, d, lv = (x.tolist() for x in (rewards, values, dones, last_value))
    T, N = len(r), len(lv)
    out = [[0.0] * N for _ in range(T)]
    for n in range(N):
        acc = 0.0
        for t in range(T - 1, -1, -1):
            nv = lv[n] if t == T - 1 else v[t + 1][n]
            delta = r[t][n] + gamma * (1 - d[t][n]) * nv - v[t][n]
            acc = delta + gamma * lam * (1 - d[t][n]) * acc
            out[t][n] = acc
    return torch.tensor(out, dtype=rewards.dtype)


def compute_gae_matrix(rewards, values, dones, last_value, gamma: float, lam: float) -> torch.Tensor:
    r"""GAE with no loop over time: :math:`\hat A = W\delta` with :math:`W_{tk} = \prod_{j=t}^{k-1}\gamma\lambda(1-d_j)`.

    ``W`` is upper-triangular per env, ``(N, T, T)``; it zeroes every path that crosses a done.
    O(T²) memory — a teaching device and a cross-check, not for long rollouts.
    """
    delta = td_errors(rewards, values, dones, last_value, gamma)  # (T, N)
    check_range("lam", lam, 0.0, 1.0)
    T = rewards.shape[0]
    f = (gamma * lam * (1.0 - dones)).T  # (N, T): factor carried from step j to j+1
    # log-free cumulative product over j in [t, k): P[t, k] = prod(f[t:k]); build via a masked cumprod
    fk = f.unsqueeze(1).expand(-1, T, -1).clone()  # (N, t, j)
    j = torch.arange(T)
    fk[:, j.unsqueeze(1) > j.unsqueeze(0)] = 1.0  # j < t: not part of the product
    W = torch.cumprod(fk, dim=2)  # W'[t, k] = prod_{j=t}^{k} f_j  (for k >= t)
    W = torch.cat([torch.ones_like(W[:, :, :1]), W[:, :, :-1]], dim=2)  # shift: prod_{j=t}^{k-1}
    W = torch.triu(W)  # k >= t only
    return torch.einsum("ntk,kn->tn", W, delta)


def discounted_returns(rewards, dones, last_value, gamma: float) -> torch.Tensor:
    r"""Monte-Carlo returns :math:`G_t = r_t + \gamma(1-d_t)G_{t+1}`, bootstrapped with ``last_value``
    for episodes still running at the end of the rollout. ``(T, N)``."""
    _check(rewards, torch.zeros_like(rewards), dones, last_value, gamma)
    G = torch.zeros_like(rewards)
    acc = last_value.clone()
    for t in reversed(range(rewards.shape[0])):
        acc = rewards[t] + gamma * (1.0 - dones[t]) * acc
        G[t] = acc
    return G


def nstep_returns(rewards, values, dones, last_value, gamma: float, n: int) -> torch.Tensor:
    r""":math:`G^{(n)}_t = \sum_{l=0}^{n-1}\gamma^l r_{t+l} + \gamma^n V(s_{t+n})`, cut at the episode's
    end (then it is the MC return) and at the rollout's end (then it bootstraps ``last_value``)."""
    _check(rewards, values, dones, last_value, gamma)
    check_range("n", n, 1, 10**9)
    T = rewards.shape[0]
    nv = next_values(values, last_value)
    G = torch.zeros_like(rewards)
    for t in range(T):
        acc = torch.zeros_like(last_value)
        disc = torch.ones_like(last_value)  # γ^k while the episode is alive, 0 after it ended
        for k in range(min(n, T - t)):
            acc = acc + disc * rewards[t + k]
            last = k == min(n, T - t) - 1
            disc_next = disc * gamma * (1.0 - dones[t + k])
            if last:
                acc = acc + disc_next * nv[t + k]  # bootstrap V(s_{t+k+1}) unless the episode ended
            disc = disc_next
        G[t] = acc
    return G


def lambda_returns_forward(rewards, values, dones, last_value, gamma: float, lam: float) -> torch.Tensor:
    r"""The forward view: :math:`G^\lambda_t = (1-\lambda)\sum_{n=1}^{T-1}\lambda^{n-1}G^{(n)}_t + \lambda^{T-1}G^{(T)}_t`.

    Built from :func:`nstep_returns` — O(T³), a cross-check for the recursion, not for training.
    (:math:`G^{(n)}_t` stops changing once ``n`` passes the episode's or the rollout's end, so the
    weights of all longer returns collapse onto it.)
    """
    T = rewards.shape[0]
    out = torch.zeros_like(rewards)
    for n in range(1, T + 1):
        w = (1 - lam) * lam ** (n - 1) if n < T else lam ** (T - 1)
        if w:
            out = out + w * nstep_returns(rewards, values, dones, last_value, gamma, n)
    return out


def normalize(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-batch advantage normalisation (zero mean, unit std), as in PPO implementations."""
    return (adv - adv.mean()) / (adv.std() + eps)


# -- TD(λ) prediction: the backward view with eligibility traces -------------------------------------

def td_lambda_offline(V: np.ndarray, states: np.ndarray, rewards: np.ndarray, gamma: float, lam: float,
                      alpha: float) -> np.ndarray:
    r"""Offline TD(λ) with accumulating traces over one *terminating* episode; returns the new ``V``.

    :math:`e \leftarrow \gamma\lambda e + \mathbf 1_{s_t}`, :math:`\Delta V \mathrel{+}= \alpha\,\delta_t\,e`,
    applied at the end of the episode. Its total update equals the forward view's
    :math:`\sum_t \alpha\,(G^\lambda_t - V(s_t))\,\mathbf 1_{s_t}` exactly (Sutton & Barto §12.1–12.2).
    ``states (L,)`` are the visited states, ``rewards (L,)``; the episode terminates after step L-1.
    """
    e = np.zeros_like(V)
    dV = np.zeros_like(V)
    L = len(states)
    for t in range(L):
        v_next = 0.0 if t == L - 1 else V[states[t + 1]]
        delta = rewards[t] + gamma * v_next - V[states[t]]
        e *= gamma * lam
        e[states[t]] += 1.0
        dV += alpha * delta * e
    return V + dV


# -- a chain MDP whose values are known in closed form ---------------------------------------------

@dataclass
class ChainMDP:
    r"""``n`` states in a row; a fixed policy moves right with probability ``p_right`` else left
    (left wall at 0). Stepping right from ``n-1`` terminates with ``goal_reward``; every step also
    pays ``step_reward`` plus Gaussian noise of std ``reward_noise``.

    True values solve :math:`(I - \gamma P_\pi) V = r_\pi` and :math:`Q(s,a) = R(s,a) + \gamma\sum_{s'}P(s'|s,a)V(s')`.
    """

    n: int = 8
    p_right: float = 0.6
    gamma: float = 0.95
    step_reward: float = -0.1
    goal_reward: float = 1.0
    reward_noise: float = 0.5

    def _next(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.where(a == 1, s + 1, np.maximum(s - 1, 0))  # a = 1 right, 0 left; s' == n: terminal

    def expected_reward(self) -> np.ndarray:
        """``R (n, 2)``."""
        R = np.full((self.n, 2), self.step_reward)
        R[self.n - 1, 1] += self.goal_reward
        return R

    def true_values(self) -> tuple[np.ndarray, np.ndarray]:
        """``(V (n,), Q (n, 2))`` of the fixed policy, exactly (a linear solve)."""
        n, g = self.n, self.gamma
        P = np.zeros((n, 2, n))  # continuing transitions only (terminal has value 0)
        for s in range(n):
            for a in (0, 1):
                s2 = int(self._next(np.array(s), np.array(a)))
                if s2 < n:
                    P[s, a, s2] = 1.0
        pi = np.array([1 - self.p_right, self.p_right])
        R = self.expected_reward()
        P_pi = np.einsum("a,sap->sp", pi, P)
        V = np.linalg.solve(np.eye(n) - g * P_pi, R @ pi)
        Q = R + g * P @ V
        return V, Q

    def sample(self, episodes: int, horizon: int, rng: np.random.Generator, start: int = 0) -> dict:
        """``episodes`` trajectories run side by side as ``N`` envs for ``horizon`` steps each.

        Returns time-major arrays ``states, actions, rewards, dones (T, N)`` and the states after the
        last step ``last_states (N,)``; a finished episode restarts at ``start`` (so a rollout can hold
        several episodes per env, as in PPO).
        """
        check_range("episodes", episodes, 1, 10**7)
        N, T = episodes, horizon
        s = np.full(N, start)
        S = np.zeros((T, N), dtype=np.int64)
        A = np.zeros((T, N), dtype=np.int64)
        R = np.zeros((T, N))
        D = np.zeros((T, N))
        for t in range(T):
            a = (rng.random(N) < self.p_right).astype(np.int64)
            s2 = self._next(s, a)
            done = s2 >= self.n
            r = self.step_reward + self.goal_reward * done + self.reward_noise * rng.standard_normal(N)
            S[t], A[t], R[t], D[t] = s, a, r, done
            s = np.where(done, start, s2)
        return {"states": S, "actions": A, "rewards": R, "dones": D, "last_states": s}


def advantage_bias_variance(chain: ChainMDP, lams, V_hat: np.ndarray, episodes: int = 2000, horizon: int = 32,
                            seed: int = 0) -> dict:
    r"""Bias and variance of GAE(γ, λ) advantages on ``chain``, measured per (state, action).

    The target is :math:`Q^\pi(s,a) - \hat V(s)`: the baseline :math:`\hat V(s_t)` does not change the
    policy gradient's expectation, so this is the part of :math:`\hat A_t` whose error matters
    (GAE paper §3). With an imperfect critic ``V_hat``, λ = 0 is biased by
    :math:`\gamma\,\mathbb E[\hat V(s') - V(s')]`; λ = 1 is unbiased but sums all future noise.

    Returns ``{"lams", "bias2", "variance", "mse"}`` — visitation-weighted means over (s, a) of the
    squared bias, the variance and their sum (arrays over ``lams``).
    """
    rng = np.random.default_rng(seed)
    _, Q = chain.true_values()
    # keep the first `keep_steps` steps of each env; the 200 steps after them let (nearly) every
    # kept step's episode finish, so the rollout-end bootstrap cannot bias the λ = 1 estimate
    keep_steps = horizon
    data = chain.sample(episodes, keep_steps + 200, rng)
    S, A = data["states"], data["actions"]
    rewards = torch.as_tensor(data["rewards"])
    dones = torch.as_tensor(data["dones"])
    values = torch.as_tensor(V_hat[S])
    last_value = torch.as_tensor(V_hat[data["last_states"]])
    keep = np.zeros_like(data["dones"], dtype=bool)
    keep[:keep_steps] = True
    key = (S * 2 + A)[keep]
    counts = np.bincount(key, minlength=2 * chain.n)
    target = (Q.reshape(-1) - np.repeat(V_hat, 2))  # (2n,) in the same (s*2+a) order
    out = {"lams": np.asarray(lams, dtype=float), "bias2": [], "variance": [], "mse": []}
    w = counts / counts.sum()
    for lam in lams:
        adv, _ = compute_gae(rewards, values, dones, last_value, chain.gamma, float(lam))
        x = adv.numpy()[keep]
        s1 = np.bincount(key, weights=x, minlength=2 * chain.n)
        s2 = np.bincount(key, weights=x * x, minlength=2 * chain.n)
        m = np.divide(s1, counts, out=np.zeros_like(s1), where=counts > 0)
        var = np.divide(s2, counts, out=np.zeros_like(s2), where=counts > 0) - m**2
        b2 = (m - target) ** 2
        out["bias2"].append(float(w @ b2))
        out["variance"].append(float(w @ var))
        out["mse"].append(float(w @ (b2 + var)))
    for k in ("bias2", "variance", "mse"):
        out[k] = np.asarray(out[k])
    return out


# -- the closed loop ---------------------------------------------------------------------------------

def lambda_weights(lam: float, n_max: int, remaining: int | None = None) -> np.ndarray:
    r"""Weights :math:`w_n` of the n-step estimators in GAE(λ), ``(n_max,)`` for ``n = 1..n_max``.

    :math:`w_n = (1-\lambda)\lambda^{n-1}`; if the episode ends after ``remaining`` steps, every
    :math:`n \ge` ``remaining`` gives the same (Monte-Carlo) estimator, so the tail mass
    :math:`\lambda^{\text{remaining}-1}` sits on ``n = remaining``. The weights sum to 1 (to
    :math:`1 - \lambda^{n_\max}` without an episode end).
    """
    check_range("lam", lam, 0.0, 1.0)
    n = np.arange(1, n_max + 1)
    w = (1 - lam) * lam ** (n - 1.0)
    if remaining is not None:
        check_range("remaining", remaining, 1, n_max)
        w[remaining - 1] = lam ** (remaining - 1.0)
        w[remaining:] = 0.0
    return w


def plot_lambda_weights(ax, lams=(0.0, 0.5, 0.9, 1.0), n_max: int = 12, remaining: int = 10) -> None:
    """Bar chart of :func:`lambda_weights`: how GAE(λ) mixes the 1-step ... Monte-Carlo estimators."""
    from llmcore.core.plotting import PALETTE

    width = 0.8 / len(lams)
    for k, lm in enumerate(lams):
        w = lambda_weights(lm, n_max, remaining)
        ax.bar(np.arange(1, n_max + 1) + (k - (len(lams) - 1) / 2) * width, w, width, color=PALETTE[k % len(PALETTE)],
               label=f"λ = {lm:g}")
    ax.axvline(remaining + 0.5, color="0.5", ls="--", lw=0.8)
    ax.text(remaining + 0.6, 0.9, f"episode ends:\nn ≥ {remaining} = MC return", fontsize=8, va="top")
    ax.set_xticks(range(1, n_max + 1))
    ax.set_xlabel(r"n  (the n-step estimator $\hat A^{(n)}_t$)"), ax.set_ylabel(r"weight $(1-\lambda)\lambda^{n-1}$")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)


@dataclass
class StabilityResult:
    """A2C on CartPole trained with several GAE λ, over several seeds."""

    lams: list  # [λ]
    seeds: list  # [seed]
    total_steps: int
    steps: np.ndarray  # (points,) common env-step grid of the curves
    curves: dict  # λ -> (seeds, points): mean return of the last 20 episodes at each grid step
    scores: dict  # λ -> (seeds,): mean return of the last 100 episodes at the end (cleanrl's score)


def lambda_stability(lams=(0.0, 0.5, 0.95, 1.0), seeds=(0, 1, 2), total_steps: int = 30_000,
                     workers: int | None = None) -> StabilityResult:
    r"""Train the book's A2C (:data:`llmcore.alignment.pg_ac.A2C_CONFIG`, only ``gae_lambda`` changed) on
    CartPole for ``total_steps`` env steps per (λ, seed), and read learning curves on a common grid.

    A2C is the estimator's best stage: one gradient step per 8-step rollout, no advantage normalisation
    and no clipping, so the advantage's bias (small λ: the untrained critic's error) or variance (λ = 1)
    goes straight into the policy update. Jobs run in up to 2 processes (:func:`pg_ac.train_many`).
    """
    # pg_ac imports compute_gae from this module: importing it at the top would be a cycle
    from dataclasses import replace

    from llmcore.alignment import pg_ac

    check_range("total_steps", total_steps, 1_000, 10**9)
    jobs = [(replace(pg_ac.A2C_CONFIG, total_steps=total_steps, gae_lambda=float(lm)), int(s))
            for lm in lams for s in seeds]
    runs = pg_ac.train_many(jobs, device="cpu", workers=workers)
    curves, scores, k = {}, {}, len(seeds)
    grid = None
    for i, lm in enumerate(lams):
        mine = runs[i * k:(i + 1) * k]
        grid, ys = pg_ac.curves_on_grid(mine, points=60, k=20)
        curves[float(lm)] = ys
        scores[float(lm)] = np.array([r.score for r in mine])
    return StabilityResult([float(x) for x in lams], list(seeds), total_steps, grid, curves, scores)


@dataclass
class GAEResult:
    """Everything the chapter prints and checks."""

    chain: ChainMDP
    V: np.ndarray
    Q: np.ndarray
    V_hat: np.ndarray
    err_lam0_td: float  # max |GAE(λ=0) - δ|
    err_lam1_mc: float  # max |GAE(λ=1) - (G - V)|, across dones and rollout ends
    err_trunc: float  # same with time-limit truncations bootstrapped
    err_vec_loop: float  # max |vectorised - plain loop|
    err_matrix: float  # max |matrix form - recursion|
    err_forward: float  # max |λ-return forward view (n-step mixture) - (GAE + V)|
    err_td_lambda: float  # max |offline TD(λ) backward view - forward view| over updates
    td_lambda_rmse: dict  # λ -> RMS error of V learned by TD(λ) vs the closed form
    bv: dict  # advantage_bias_variance output
    stability: StabilityResult | None = None  # A2C learning curves on CartPole per λ



def identity_errors(chain: ChainMDP, lam: float, seed: int, episodes: int = 64, horizon: int = 48) -> dict:
    """The λ-identities on random chain rollouts (several episodes per env, cut at the rollout end)."""
    rng = np.random.default_rng(seed)
    V, _ = chain.true_values()
    V_hat = V + 0.3 * rng.standard_normal(chain.n)
    d = chain.sample(episodes, horizon, rng)
    r = torch.as_tensor(d["rewards"])
    dn = torch.as_tensor(d["dones"])
    v = torch.as_tensor(V_hat[d["states"]])
    lv = torch.as_tensor(V_hat[d["last_states"]])
    g = chain.gamma
    adv0, _ = compute_gae(r, v, dn, lv, g, 0.0)
    adv1, _ = compute_gae(r, v, dn, lv, g, 1.0)
    advl, retl = compute_gae(r, v, dn, lv, g, lam)
    # λ = 1 against a Monte-Carlo return summed forward, independently of the recursion
    G = np.zeros_like(d["rewards"])
    T, N = G.shape
    for n in range(N):
        for t in range(T):
            acc, disc = 0.0, 1.0
            for k in range(t, T):
                acc += disc * d["rewards"][k, n]
                disc *= g
                if d["dones"][k, n]:
                    break
            else:
                acc += disc * float(lv[n])  # still running at the rollout's end: bootstrap
            G[t, n] = acc
    # truncation: cut every episode of env n at step 10 + n % 7 and bootstrap V(s_final)
    tr = torch.zeros_like(r)
    for n in range(N):
        tr[10 + n % 7, n] = 1.0 if dn[10 + n % 7, n] == 0 else 0.0
    final_v = torch.where(tr > 0, torch.as_tensor(V_hat[np.minimum(d["states"] + 1, chain.n - 1)]), 0.0)
    r_tr = bootstrap_truncation(r, tr, final_v, g)
    adv_tr, _ = compute_gae(r_tr, v, torch.clamp(dn + tr, max=1), lv, g, 1.0)
    G_tr = discounted_returns(r_tr, torch.clamp(dn + tr, max=1), lv, g)
    # the truncated step's return is r + γ V(s_final), and nothing leaks across the cut
    return {
        "lam0_td": float((adv0 - td_errors(r, v, dn, lv, g)).abs().max()),
        "lam1_mc": float((adv1 - (torch.as_tensor(G) - v)).abs().max()),
        "trunc": float((adv_tr - (G_tr - v)).abs().max()),
        "vec_loop": float((advl - compute_gae_loop(r, v, dn, lv, g, lam)).abs().max()),
        "matrix": float((advl - compute_gae_matrix(r, v, dn, lv, g, lam)).abs().max()),
        # forward view on a shorter window (it is O(T^3)): the window's last value bootstraps
        "forward": float((compute_gae(r[:24], v[:24], dn[:24], v[24], g, lam)[1]
                          - lambda_returns_forward(r[:24], v[:24], dn[:24], v[24], g, lam)).abs().max()),
    }


def td_lambda_check(chain: ChainMDP, lam: float, seed: int, episodes: int = 20) -> float:
    """Max |backward-view offline TD(λ) update − forward-view λ-return update| over ``episodes`` episodes."""
    rng = np.random.default_rng(seed)
    V0 = rng.standard_normal(chain.n)
    worst = 0.0
    for _ in range(episodes):
        d = chain.sample(1, 400, rng)
        end = int(np.flatnonzero(d["dones"][:, 0])[0]) + 1 if d["dones"][:, 0].any() else None
        if end is None:
            continue
        s, r = d["states"][:end, 0], d["rewards"][:end, 0]
        back = td_lambda_offline(V0, s, r, chain.gamma, lam, alpha=0.1)
        _, ret = compute_gae(torch.as_tensor(r)[:, None], torch.as_tensor(V0[s])[:, None],
                             torch.as_tensor(d["dones"][:end]), torch.zeros(1, dtype=torch.float64),
                             chain.gamma, lam)
        fwd = V0.copy()
        np.add.at(fwd, s, 0.1 * (ret[:, 0].numpy() - V0[s]))
        worst = max(worst, float(np.abs(back - fwd).max()))
    return worst


def td_lambda_learn(chain: ChainMDP, lam: float, episodes: int, alpha: float, seed: int) -> float:
    """RMS error of V learned by offline TD(λ) from ``episodes`` episodes, against the closed form."""
    rng = np.random.default_rng(seed)
    V_true, _ = chain.true_values()
    V = np.zeros(chain.n)
    d = chain.sample(episodes, 1000, rng)  # episode k = the first episode of env k
    for k in range(episodes):
        ended = np.flatnonzero(d["dones"][:, k])
        if len(ended) == 0:
            continue
        end = int(ended[0]) + 1
        V = td_lambda_offline(V, d["states"][:end, k], d["rewards"][:end, k], chain.gamma, lam, alpha)
    return float(np.sqrt(np.mean((V - V_true) ** 2)))


def experiment(toy: bool = True, seed: int = 0, gamma: float = 0.95, lam: float = 0.9,
               value_error: float = 0.5, lams=None, stability: bool = True) -> GAEResult:
    """Run all identities, the TD(λ) check and the bias/variance sweep on the chain MDP."""
    from llmcore.core.seed import seed_everything

    seed_everything(seed)
    check_range("value_error", value_error, 0.0, 100.0)
    chain = ChainMDP(gamma=gamma)
    V, Q = chain.true_values()
    rng = np.random.default_rng(seed + 1)
    V_hat = V + value_error * rng.standard_normal(chain.n)  # an imperfect critic
    ids = identity_errors(chain, lam, seed)
    lams = np.linspace(0.0, 1.0, 11) if lams is None else lams
    bv = advantage_bias_variance(chain, lams, V_hat, episodes=4000 if toy else 40_000, seed=seed)
    rmse = {lm: td_lambda_learn(chain, lm, 300 if toy else 3000, 0.05, seed) for lm in (0.0, 0.5, 0.9, 1.0)}
    stab = None
    if stability:  # toy: 3 seeds x 30k steps per λ; full: 5 seeds x 150k (the budget that solves CartPole)
        stab = lambda_stability(seeds=range(seed, seed + (3 if toy else 5)), total_steps=30_000 if toy else 150_000)
    return GAEResult(chain, V, Q, V_hat, ids["lam0_td"], ids["lam1_mc"], ids["trunc"], ids["vec_loop"],
                     ids["matrix"], ids["forward"], td_lambda_check(chain, lam, seed), rmse, bv, stab)


def make_report(res: GAEResult, toy: bool, device: str, seed: int) -> Report:
    rep = Report("gae", "GAE & Advantage / GAE 与优势估计", toy, device, seed)
    bv = res.bv
    rep.metric("gamma", res.chain.gamma)
    rep.metric("bias^2 at lambda=0", bv["bias2"][0])
    rep.metric("bias^2 at lambda=1", bv["bias2"][-1])
    rep.metric("variance at lambda=0", bv["variance"][0])
    rep.metric("variance at lambda=1", bv["variance"][-1])
    rep.metric("best lambda by MSE", bv["lams"][int(np.argmin(bv["mse"]))])
    for lm, e in res.td_lambda_rmse.items():
        rep.metric(f"TD({lm}) RMS error of V vs closed form", e)
    rep.check("max |GAE(lambda=0) - TD error|", res.err_lam0_td, "<", 1e-6)
    rep.check("max |GAE(lambda=1) - (MC return - V)| across dones", res.err_lam1_mc, "<", 1e-6)
    rep.check("max |GAE(lambda=1) - (G - V)| with truncation bootstrap", res.err_trunc, "<", 1e-6)
    rep.check("max |vectorised GAE - plain loop|", res.err_vec_loop, "<", 1e-6)
    rep.check("max |matrix GAE - recursion|", res.err_matrix, "<", 1e-6)
    rep.check("max |n-step mixture (forward view) - lambda-return|", res.err_forward, "<", 1e-6)
    rep.check("max |TD(lambda) backward view - forward view|", res.err_td_lambda, "<", 1e-9)
    b, v = bv["bias2"], bv["variance"]
    rep.check("bias^2 falls: lambda=1 / lambda=0", b[-1] / b[0], "<", 0.1)
    rep.check("variance rises: lambda=1 / lambda=0", v[-1] / v[0], ">", 2.0)
    rep.check("bias^2 non-increasing steps in lambda (count of rises > 5% of b0)",
              int(np.sum(np.diff(b) > 0.05 * b[0])), "==", 0)
    rep.check("variance non-decreasing steps in lambda (count of drops > 1%)",
              int(np.sum(np.diff(v) < -0.01 * v[-1])), "==", 0)
    st = res.stability
    if st is not None and 0.0 in st.scores and 0.95 in st.scores:
        for lm in st.lams:
            rep.metric(f"A2C CartPole {st.total_steps} steps, lambda={lm:g}: last-100 return (mean of "
                       f"{len(st.seeds)} seeds)", float(st.scores[lm].mean()))
        lo, hi = st.scores[0.0], st.scores[0.95]
        rep.check("A2C lambda sweep: mean return, lambda=0.95 - lambda=0", float(hi.mean() - lo.mean()), ">", 100.0)
        rep.check("A2C lambda sweep: lambda=0 stalls (mean last-100 return)", float(lo.mean()), "<", 75.0)
        rep.check("A2C lambda sweep: lambda=0.95 learns (mean last-100 return)", float(hi.mean()), ">", 120.0)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The GAE closed loop (NumPy/CPU torch; ``device`` is validated and recorded)."""
    dev = device  # resolved once by the registry (run_module)
    return make_report(experiment(toy=toy, seed=seed), toy, str(dev), seed)
