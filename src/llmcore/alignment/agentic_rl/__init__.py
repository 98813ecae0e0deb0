r"""Agentic RL: multi-turn RL of the book LM against a user simulator, with tool calls in the loop.

The package (a chapter past ~500 lines becomes one):

* :mod:`~llmcore.alignment.agentic_rl.user_sim` -- the booking user (reveals a slot only when asked,
  sometimes answers ``not sure``, ends the dialogue), its availability tool, scripted agents, the
  ``gymnasium`` wrapper :class:`~llmcore.alignment.agentic_rl.user_sim.BookingEnv`;
* :mod:`~llmcore.alignment.agentic_rl.multiturn` -- batched dialogue rollouts of the LM, the agent-token
  loss mask, per-turn values and GAE over turns;
* :mod:`~llmcore.alignment.agentic_rl.lm_loop` -- SFT on mixed demonstrations, then GRPO over whole
  trajectories and PPO with per-turn credit (:class:`~llmcore.alignment.agentic_rl.lm_loop.AgenticConfig`,
  :func:`~llmcore.alignment.agentic_rl.lm_loop.experiment`);
* :mod:`~llmcore.alignment.agentic_rl.marl` -- MAPPO vs IPPO on a cooperative PettingZoo environment
  (``SpreadGrid``, the multi-agent half).

:func:`run` is the registry's closed loop. Its criteria are lists of ``(name, value, op, threshold)``
(:func:`lm_criteria`, :func:`~llmcore.alignment.agentic_rl.marl.criteria`): one report holds both halves.
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium.utils.env_checker import check_env

from llmcore.alignment.agentic_rl import lm_loop, marl, multiturn, user_sim
from llmcore.alignment.agentic_rl.lm_loop import AgenticConfig, AgenticResult, experiment
from llmcore.core.device import CPU
from llmcore.core.report import Report

__all__ = ["AgenticConfig", "AgenticResult", "experiment", "lm_loop", "marl", "multiturn", "user_sim",
           "env_checks", "lm_metrics", "lm_criteria", "make_report", "run", "THREADS"]

#: torch threads for this module's runs (one, as the other RL chapters: results then do not depend on how
#: many cores the machine has)
THREADS = 1


def env_checks(cfg: user_sim.SimConfig | None = None, seed: int = 0) -> dict[str, bool]:
    """The simulator as a ``gymnasium.Env``: ``check_env`` passes (it raises otherwise), and two resets with
    the same seed followed by the same actions give the same observations and rewards."""
    check_env(user_sim.BookingEnv(cfg), skip_render_check=True)
    env_a, env_b = user_sim.BookingEnv(cfg), user_sim.BookingEnv(cfg)
    obs_a, _ = env_a.reset(seed=seed)
    obs_b, _ = env_b.reset(seed=seed)
    same = bool(np.array_equal(obs_a, obs_b))
    for _ in range(env_a.cfg.max_turns):
        act = user_sim.action_ids(("ask", "day")) + [user_sim.PAD]
        a, b = env_a.step(act), env_b.step(act)
        same &= bool(np.array_equal(a[0], b[0])) and a[1] == b[1] and a[2] == b[2]
        if a[2]:
            break
    return {"check_env": True, "deterministic per seed": same}


def lm_metrics(res: AgenticResult) -> dict[str, float]:
    """The LM half's metrics: simulator statistics, SFT start vs each RL method (held-out, sampled), times."""
    out = {f"simulator (demonstrator) {k}": v for k, v in res.sim_demo.items()}
    out |= {f"simulator (optimal script) {k}": v for k, v in res.sim_optimal.items()}
    for name, summ in [("SFT start", res.start)] + [(m.upper(), s) for m, s in res.final.items()]:
        out |= {f"{name} {k}": v for k, v in summ.items()}
    out |= {"loss mask: max |grad| on agent-token logits": res.mask_check["agent"],
            "SFT seconds": res.sft_s} | {f"{m.upper()} seconds": s for m, s in res.rl_s.items()}
    return out


def lm_criteria(res: AgenticResult) -> list[tuple[str, float, str, float]]:
    """``(name, value, op, threshold)``: the loss mask is exact, and each RL method raises held-out task
    success and lowers turns per success over the SFT start."""
    out = [("loss mask: max |grad| on environment-token logits", res.mask_check["environment"], "==", 0.0)]
    # measured (toy, seeds 0-4, native / avx2 / default kernels): gains 15-47 points, cuts 2.4-5.2 turns
    for m, s in res.final.items():
        out.append((f"{m.upper()} success gain over SFT start (points)", 100 * (s["success"] - res.start["success"]),
                    ">=", 10.0))
        out.append((f"{m.upper()} turns per success, cut from SFT start", res.start["turns per success"]
                    - s["turns per success"], ">=", 1.0))
    return out


def make_report(res: AgenticResult, toy: bool, device: str, seed: int,
                marl_res: marl.MARLResult | None = None) -> Report:
    """Both halves' metrics and criteria: the LM half from ``res``, the multi-agent half from ``marl_res``
    (its PettingZoo API checks, MAPPO and IPPO above random, MAPPO not worse than IPPO)."""
    rep = Report("agentic_rl", "Agentic RL", toy, device, seed)
    for k, v in lm_metrics(res).items():
        rep.metric(k, v)
    checks = env_checks(res.cfg.sim, seed)
    crit = lm_criteria(res) + [("BookingEnv passes gymnasium check_env", float(checks["check_env"]), "==", 1.0),
                               ("simulator deterministic per seed", float(checks["deterministic per seed"]), "==", 1.0)]
    for c in crit:
        rep.check(*c)
    if marl_res is not None:
        api = marl.api_checks(marl_res.cfg.env)
        rep.check("SpreadGrid passes PettingZoo's API tests (parallel, seed, state, AEC)", float(all(api.values())),
                  "==", 1.0)
        marl.report_into(rep, marl_res)
    return rep


def run(toy: bool = True, device: torch.device = CPU, seed: int = 0) -> Report:
    """Closed loop: simulator -> SFT start of the book LM -> GRPO (trajectory) and PPO (per turn) -> held-out
    success and turns; then MAPPO vs IPPO on ``SpreadGrid`` (same seed), both in one report."""
    res = experiment(AgenticConfig.for_mode(toy), device, seed)
    marl_res = marl.compare(marl.MARLConfig.for_mode(toy), seed)
    return make_report(res, toy, str(device), seed, marl_res)
