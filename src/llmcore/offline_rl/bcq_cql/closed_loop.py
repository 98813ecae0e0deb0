"""BCQ and CQL, the closed loop: the tabular sweeps on CliffWalking and the CartPole comparison."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from llmcore.alignment.pg_ac import run_jobs
from llmcore.core.device import CPU
from llmcore.core.errors import LLMCoreError, check_range
from llmcore.core.progress import progress
from llmcore.core.report import Report
from llmcore.core.seed import seed_everything
from llmcore.foundation_rl.mdp import TabularMDP, evaluate_stochastic, greedy
from llmcore.offline_rl.bcq_cql.neural import (
    ALGOS,
    THREADS,
    NeuralConfig,
    QNet,
    behaviour_policy,
    collect_cartpole,
    train_offline,
)
from llmcore.offline_rl.bcq_cql.tabular import (
    closed_states,
    cql_loss,
    cql_loss_float64,
    cql_policy_evaluation,
    tabular_bcq,
    train_tabular_cql,
)
from llmcore.offline_rl.offline_rl import (
    GAMMA,
    Dataset,
    EmpiricalMDP,
    collect_tabular,
    empirical_mdp,
    eps_greedy_policy,
    make_env,
    offline_q_iteration,
    optimal_q,
    policy_value,
    true_mdp,
)

# -- the closed loop -----------------------------------------------------------------------------------

@dataclass
class BCQCQLConfig:
    """The BCQ / CQL experiment: a tabular study on CliffWalking, then neural learners on CartPole."""

    tabular_episodes: int = 200  # episodes per tabular dataset
    tabular_eps: dict = field(default_factory=lambda: {"medium": 0.3, "expert": 0.05})  # ε around π*
    taus: tuple = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)  # BCQ threshold sweep (tabular)
    alphas: tuple = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)  # CQL weight sweep (tabular)
    cql_steps: int = 1000  # tabular CQL: full-batch gradient steps
    ppo_steps: int = 16_384  # env steps of the PPO run whose policy collects the CartPole data
    transitions: int = 20_000  # CartPole transitions per dataset
    datasets: tuple = ("medium", "mixed")  # CartPole datasets the learners train on
    seeds: int = 2  # learner seeds per dataset and algorithm (seed, seed + 1, ...)
    data_seed: int = 0  # seeds the PPO behaviour policy and the CartPole data: fixed, NOT the run seed (see experiment)
    neural: NeuralConfig = field(default_factory=NeuralConfig)
    workers: int | None = None  # processes for the neural runs (None: up to 2)

    @classmethod
    def for_mode(cls, toy: bool) -> BCQCQLConfig:
        """Toy: 2 learner seeds, 2000 gradient steps; full: 5 seeds, 20000 steps, 4x the data."""
        if toy:
            return cls()
        return cls(tabular_episodes=2000, ppo_steps=32_768, transitions=80_000, seeds=5,
                   neural=NeuralConfig(steps=20_000, eval_every=2000, eval_episodes=20))

    def validate(self) -> None:
        check_range("tabular_episodes", self.tabular_episodes, 1, 10**7)
        check_range("ppo_steps", self.ppo_steps, 1024, 10**9)
        check_range("transitions", self.transitions, 64, 10**9)
        check_range("seeds", self.seeds, 1, 1000)
        check_range("data_seed", self.data_seed, 0, 2**31 - 1)
        for t in self.taus:
            check_range("tau", t, 0.0, 1.0)
        for a in self.alphas:
            check_range("alpha", a, 0.0, 1e6)
        for d in self.datasets:
            if d not in ("random", "medium", "expert", "mixed"):
                raise LLMCoreError(f"dataset {d!r}; valid: random, medium, expert, mixed")
        if not {"medium", "mixed"} <= set(self.datasets):
            raise LLMCoreError(f"datasets={self.datasets}: the report compares on 'medium' and 'mixed', include both")
        self.neural.validate()


@dataclass
class TabularStudy:
    """BCQ's τ sweep and CQL's α sweep on one tabular dataset (all values exact, discounted, at the start)."""

    name: str
    emp: EmpiricalMDP
    v_star: float
    v_bc: float
    v_naive: float
    bcq_values: list  # V(s0) per tau
    bcq_tau0_diff: float  # max |Q_BCQ(tau=0) - Q_naive|
    bcq_tau1_off_mode: int  # seen states where BCQ(tau=1) picks an action that is not a most frequent one
    cql_values: list  # V(s0) of the greedy CQL policy per alpha
    cql_q_s0: list  # max_a Q_CQL(s0, a) per alpha
    cql_unseen_gap: list  # mean Q_CQL - Q* on unseen pairs of seen states per alpha
    cql_eval_bound: list  # max over closed states of V_hat_CQL(pi) - V^pi (true), per alpha > 0
    cql_eval_closed: list  # number of closed states per alpha > 0


def tabular_study(name: str, data: Dataset, mdp: TabularMDP, Q_star: np.ndarray, cfg: BCQCQLConfig) -> TabularStudy:
    emp = empirical_mdp(data, mdp.n_states, mdp.n_actions, mdp.gamma)
    Q_naive = offline_q_iteration(emp)
    bcq_values, tau0, off_mode = [], float("nan"), -1
    for tau in cfg.taus:
        Q, pi = tabular_bcq(emp, tau)
        bcq_values.append(policy_value(mdp, pi))
        if tau == 0.0:
            tau0 = float(np.max(np.abs(Q - Q_naive)))
        if tau == 1.0:
            mode = emp.counts == emp.counts.max(1, keepdims=True)
            off_mode = int(np.sum(~mode[np.arange(mdp.n_states), pi] & emp.state_seen))
    unseen = ~emp.seen & emp.state_seen[:, None]
    vals, qs0, gaps, bound, closed = [], [], [], [], []
    for alpha in cfg.alphas:
        Q = train_tabular_cql(emp, alpha, steps=cfg.cql_steps)
        pi = greedy(Q)
        vals.append(policy_value(mdp, pi))
        qs0.append(float(mdp.mu0 @ Q.max(1)))
        gaps.append(float((Q - Q_star)[unseen].mean()) if unseen.any() else float("nan"))
        if alpha > 0 and np.all(emp.seen[np.arange(mdp.n_states), pi] | ~emp.state_seen):  # pi stays on the data
            pim = np.eye(mdp.n_actions)[pi]
            V_hat = cql_policy_evaluation(emp, pim, alpha)
            V_true, _ = evaluate_stochastic(mdp, pim)
            ok = closed_states(mdp, pim, emp)
            bound.append(float(np.max((V_hat - V_true)[ok])) if ok.any() else float("nan"))
            closed.append(int(ok.sum()))
    v_star = float(mdp.mu0 @ Q_star.max(1))
    return TabularStudy(name, emp, v_star, policy_value(mdp, greedy(emp.counts)), policy_value(mdp, greedy(Q_naive)),
                        bcq_values, tau0, off_mode, vals, qs0, gaps, bound, closed)


def cartpole_datasets(cfg: BCQCQLConfig, seed: int) -> tuple[dict, dict]:
    """Random, medium, expert and mixed CartPole datasets from one partly trained PPO policy.

    medium = the PPO policy's own stochastic actions; expert = its greedy actions; mixed = half expert, half a
    bad but *consistent* controller that always pushes right (in the start region, where its many short
    episodes outnumber the expert's, the data's most frequent action is the wrong one). Returns
    ``(datasets, behaviour returns)`` (mean undiscounted return of the episodes each dataset contains).
    """
    agent = behaviour_policy(cfg.ppo_steps, seed)
    n = cfg.transitions

    def probs_medium(obs):
        return agent.actor(obs).softmax(-1)

    def probs_expert(obs):
        return F.one_hot(agent.actor(obs).argmax(-1), 2).double()

    def probs_random(obs):
        return torch.full((len(obs), 2), 0.5)

    def probs_right(obs):
        return torch.tensor([[0.0, 1.0]]).repeat(len(obs), 1)

    data = {"random": collect_cartpole(probs_random, n, seed + 1, "random"),
            "medium": collect_cartpole(probs_medium, n, seed + 2, "medium"),
            "expert": collect_cartpole(probs_expert, n, seed + 3, "expert")}
    data["mixed"] = Dataset.concat("mixed", [collect_cartpole(probs_right, n // 2, seed + 4, "push right"),
                                             collect_cartpole(probs_expert, n - n // 2, seed + 5, "expert")])
    behaviour = {k: float(np.mean(d.episode_returns)) for k, d in data.items()}
    return data, behaviour


@dataclass
class BCQCQLResult:
    cfg: BCQCQLConfig
    tabular: dict  # name -> TabularStudy
    behaviour: dict  # CartPole dataset -> mean episode return of its behaviour policy
    sizes: dict  # CartPole dataset -> transitions
    runs: list  # [NeuralRun]
    loss_check: float  # |cql_loss - the paper's formula in float64| on a random batch and network

    def scores(self, dataset: str, algo: str) -> np.ndarray:
        return np.array([r.score for r in self.runs if r.dataset == dataset and r.algo == algo])


def loss_cross_check(seed: int = 0) -> float:
    """|:func:`cql_loss` - :func:`cql_loss_float64`| on one batch through one random network (float64)."""
    g = torch.Generator().manual_seed(seed)
    net = QNet(4, 2).double()
    obs = torch.randn(64, 4, generator=g, dtype=torch.float64)
    acts = torch.randint(0, 2, (64,), generator=g)
    y = torch.randn(64, generator=g, dtype=torch.float64) * 10
    with torch.no_grad():
        q = net(obs)
        ours = float(cql_loss(q, acts, y, 0.7)[0])
    return abs(ours - cql_loss_float64(q.numpy(), acts.numpy(), y.numpy(), 0.7))


def experiment(cfg: BCQCQLConfig, seed: int = 0, show_progress: bool = False) -> BCQCQLResult:
    """Tabular BCQ / CQL sweeps, then the CartPole datasets and every (dataset, algorithm, learner seed) run.

    The CartPole datasets are benchmark datasets, fixed like D4RL's: the PPO behaviour policy is trained and the
    data are collected with ``cfg.data_seed`` whatever the run ``seed``; the run seed varies the tabular data and
    the offline learners only. Why: when every run seed trained its own PPO behaviour policy, the datasets changed
    with the seed, and on run seed 3 that dataset alone turned two CartPole comparisons around (mixed: BCQ - naive
    DQN 25.6 against a median of 298 over seeds 0-4; medium: CQL / behaviour 0.84 against a median of 1.33) -- a
    property of that one behaviour policy, not of the learners, whose seeds the chapter's spread is about.

    The neural runs are independent and seed themselves, so :func:`~llmcore.alignment.pg_ac.run_jobs` spreads
    them over up to two processes with results identical to running them one after another.
    """
    cfg.validate()
    mdp = true_mdp(GAMMA)
    Q_star = optimal_q(mdp)
    env = make_env(100)
    stages = [*cfg.tabular_eps, "CartPole datasets", "offline learners"]
    bar = progress(total=len(stages), desc="BCQ / CQL", disable=not show_progress)
    tab = {}
    for k, (name, eps) in enumerate(cfg.tabular_eps.items()):
        bar.set_postfix_str(f"tabular {name}")
        data = collect_tabular(env, eps_greedy_policy(Q_star, eps), cfg.tabular_episodes, seed * 1_000_003 + 31 * k,
                               name)
        tab[name] = tabular_study(name, data, mdp, Q_star, cfg)
        bar.update()
    bar.set_postfix_str("PPO behaviour policy + CartPole datasets")
    seed_everything(cfg.data_seed, threads=THREADS)
    data, behaviour = cartpole_datasets(cfg, cfg.data_seed)
    bar.update()
    bar.set_postfix_str(f"{len(cfg.datasets) * len(ALGOS) * cfg.seeds} offline runs")
    jobs = [(train_offline, (data[d], replace(cfg.neural, algo=a), seed + s))
            for d in cfg.datasets for a in ALGOS for s in range(cfg.seeds)]
    runs = run_jobs(jobs, cfg.workers)
    bar.update()
    bar.close()
    return BCQCQLResult(cfg, tab, behaviour, {k: v.size for k, v in data.items()}, runs, loss_cross_check(seed))


def make_report(res: BCQCQLResult, toy: bool, device: str, seed: int) -> Report:
    """Metrics and acceptance criteria of the BCQ / CQL chapter (thresholds live here only)."""
    rep = Report("bcq_cql", "BCQ / CQL / BCQ 与 CQL", toy, device, seed)
    cfg = res.cfg
    for name, t in res.tabular.items():
        rep.metric(f"tabular {name}: V*(s0)", t.v_star)
        rep.metric(f"tabular {name}: V(naive offline Q)", t.v_naive)
        for tau, v in zip(cfg.taus, t.bcq_values):
            rep.metric(f"tabular {name}: V(BCQ tau={tau:g})", v)
        for alpha, v, q in zip(cfg.alphas, t.cql_values, t.cql_q_s0):
            rep.metric(f"tabular {name}: V(CQL alpha={alpha:g})", v)
            rep.metric(f"tabular {name}: max_a Q_CQL(s0, a), alpha={alpha:g}", q)
        rep.check(f"tabular {name}: BCQ tau=0 equals naive Q-learning (max |dQ|)", t.bcq_tau0_diff, "<", 1e-9)
        rep.check(f"tabular {name}: BCQ tau=1 states off BC's most frequent action", t.bcq_tau1_off_mode, "==", 0)
        rep.check(f"tabular {name}: CQL evaluation lower bound, max over alpha > 0 and states of V_hat - V^pi",
                  max(t.cql_eval_bound, default=float("nan")), "<=", 1e-9)
        rep.metric(f"tabular {name}: alphas whose CQL policy stays on the data (bound checked)", len(t.cql_eval_bound))
        best_cql = max(v for a, v in zip(cfg.alphas, t.cql_values) if a > 0)
        rep.check(f"tabular {name}: CQL (best alpha > 0) - naive offline Q at s0", best_cql - t.v_naive, ">", 5.0)
    rep.metric("CartPole data seed (fixed: behaviour policy and data do not follow the run seed)", cfg.data_seed)
    for d in cfg.datasets:
        rep.metric(f"CartPole {d}: behaviour return", res.behaviour[d])
        rep.metric(f"CartPole {d}: transitions", res.sizes[d])
        means = {a: float(res.scores(d, a).mean()) for a in ALGOS}
        for a in ALGOS:
            rep.metric(f"CartPole {d}: {a} return (mean over {cfg.seeds} seeds)", means[a])
            rep.metric(f"CartPole {d}: {a} return (sd)", float(res.scores(d, a).std()))
        for a in ("bcq", "cql"):
            rep.check(f"CartPole {d}: {a} - naive DQN, mean return", means[a] - means["dqn"], ">", 50.0)
    mixed, medium = ({a: float(res.scores(d, a).mean()) for a in ALGOS} for d in ("mixed", "medium"))
    rep.check("CartPole mixed: cql - BC, mean return", mixed["cql"] - mixed["bc"], ">", 50.0)
    rep.check("CartPole medium: cql return / behaviour return", medium["cql"] / res.behaviour["medium"], ">=", 1.0)
    # BCQ (tau = 0.3) on these two comparisons varies too much between PPO behaviour policies to hold with
    # margin on every seed (prototype runs: mixed 358 vs BC 59, 192 vs 156, 316 vs 136; medium 0.4x, 1.3x, 1.3x
    # the behaviour): measured and reported, not claimed
    rep.metric("CartPole mixed: bcq - BC, mean return", mixed["bcq"] - mixed["bc"])
    rep.metric("CartPole medium: bcq return / behaviour return", medium["bcq"] / res.behaviour["medium"])
    rep.check("our CQL loss vs the paper's formula in float64 (abs diff)", res.loss_check, "<", 1e-10)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """The BCQ / CQL closed loop. Networks run on the CPU whatever the device (tiny MLPs, a CPU env)."""
    res = experiment(BCQCQLConfig.for_mode(toy), seed=seed, show_progress=True)
    rep = make_report(res, toy, str(device), seed)
    rep.notes.append("networks run on the CPU whatever the device: per-step transfers cost more than the MLP")
    return rep
