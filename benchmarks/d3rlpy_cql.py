#!/usr/bin/env python
"""Our discrete CQL against d3rlpy's ``DiscreteCQL``: the loss on one batch with the same weights, and CartPole
returns on the same fixed datasets over learner seeds (the BCQ / CQL chapter's cross-check, issue 23).

d3rlpy 2.8.1 pins ``gymnasium==1.0.0``; the book needs ``gymnasium>=1.2``. So d3rlpy lives in its own virtual
environment and this script talks to it through one exchange file (``benchmarks/d3rlpy_side.py`` is its half):

    .venv/bin/python benchmarks/d3rlpy_cql.py --setup           # once: creates .venv-d3rlpy (torch CPU + d3rlpy)
    .venv/bin/python benchmarks/d3rlpy_cql.py                   # 5 learner seeds x medium, mixed; ~2 min on CPU-2
    .venv/bin/python benchmarks/d3rlpy_cql.py --seeds 0         # the loss check only

What is compared:

1. **Loss** (same batch, same online and target weights). Targets: both Double DQN (online net picks
   :math:`a'`, target net values it) -> equal. Conservative term
   :math:`\\mathbb E[\\log\\sum_{a'} e^{Q(s,a')} - Q(s,a)]` -> equal. TD term: ours is the CQL paper's
   :math:`\\tfrac12\\delta^2`, d3rlpy's is the Huber loss (``beta = 1``): equal on the rows with
   :math:`|\\delta| < 1` (the whole loss is compared there), and on the full batch d3rlpy's TD term equals
   ``torch.nn.functional.huber_loss`` of our :math:`\\delta`.
2. **Returns.** Both learners train 2000 steps (batch 128, Adam 1e-3, target period 100, alpha 1, hidden 64-64)
   from their own initialisation on the chapter's fixed CartPole datasets (``data_seed`` 0) and are evaluated
   greedily on the same 10 reset seeds. Ours should fall within the spread of d3rlpy's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from llmcore.core.errors import LLMCoreError  # noqa: E402
from llmcore.core.seed import seed_everything  # noqa: E402
from llmcore.offline_rl.bcq_cql import BCQCQLConfig, cartpole_datasets, cql_loss  # noqa: E402
from llmcore.offline_rl.bcq_cql.neural import THREADS, QNet, train_offline  # noqa: E402

VENV = ROOT / ".venv-d3rlpy"
D3RLPY = "d3rlpy==2.8.1"
EVAL_SEED = 10_000  # train_offline's default evaluation seed
FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated")


def setup(venv: Path) -> None:
    """Create the d3rlpy environment: the book's pinned torch (CPU wheel on Linux) and d3rlpy with its own deps."""
    torch_pin = next(line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
                     if line.startswith("torch=="))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # as `make torch-cpu`: torch alone from PyTorch's CPU index on Linux, else pip's own configuration provides it
    if sys.platform != "linux" or subprocess.run(
            pip + ["--no-deps", "--retries", "0", "--timeout", "20", "--index-url",
                   "https://download.pytorch.org/whl/cpu", torch_pin], capture_output=True).returncode != 0:
        print("note: torch not taken from PyTorch's CPU index; pip's own configuration provides it")
    subprocess.run(pip + [torch_pin, D3RLPY], check=True)


def batch_and_weights(data, hp: dict, n: int = 128) -> tuple[dict, dict]:
    """One batch of the medium dataset and a random online / target network pair (different inits, so the Double
    DQN target really uses two networks). Returns ``(exchange arrays, our numbers)``."""
    g = np.random.default_rng(0)
    idx = g.choice(data.size, n, replace=False)
    rows = {k: getattr(data, k)[idx] for k in FIELDS}
    torch.manual_seed(0)
    online = QNet(4, 2, hp["hidden"])
    torch.manual_seed(1)
    target = QNet(4, 2, hp["hidden"])
    with torch.no_grad():  # spread the Q-values so that both |delta| < 1 and |delta| > 1 rows occur
        online.net[4].weight.mul_(8.0)
        target.net[4].weight.mul_(8.0)
        S, S2 = torch.as_tensor(rows["obs"]), torch.as_tensor(rows["next_obs"])
        A, R = torch.as_tensor(rows["actions"]), torch.as_tensor(rows["rewards"], dtype=torch.float32)
        D = torch.as_tensor(rows["terminated"], dtype=torch.float32)
        a_star = online(S2).argmax(1, keepdim=True)
        y = R + hp["gamma"] * (1 - D) * target(S2).gather(1, a_star).squeeze(1)
        q = online(S)
        delta = q.gather(1, A[:, None]).squeeze(1) - y
        small = delta.abs() < 1.0
        _, parts = cql_loss(q, A, y, hp["alpha"])
        loss_small, _ = cql_loss(q[small], A[small], y[small], hp["alpha"])
        huber = F.huber_loss(q.gather(1, A[:, None]).squeeze(1), y, delta=1.0)
    arrays = {f"batch_{k}": v for k, v in rows.items()}
    arrays["small_td"] = small.numpy()
    arrays.update({f"online.{k}": v.numpy() for k, v in online.state_dict().items()})
    arrays.update({f"target.{k}": v.numpy() for k, v in target.state_dict().items()})
    ours = {"target": y.numpy(), "parts": parts, "loss_small": float(loss_small), "huber_td": float(huber),
            "rows_small": int(small.sum()), "rows": n}
    return arrays, ours


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", action="store_true", help=f"create {VENV.name} (torch + {D3RLPY}) and exit")
    ap.add_argument("--python", type=Path, default=VENV / "bin" / "python", help="the d3rlpy environment's python")
    ap.add_argument("--seeds", type=int, default=5, help="learner seeds per dataset (0: the loss check only)")
    ap.add_argument("--steps", type=int, default=None, help="gradient steps (default: the chapter's toy 2000)")
    ap.add_argument("--out", type=Path, default=ROOT / "output" / "d3rlpy_cql.json")
    args = ap.parse_args()
    if args.setup:
        setup(VENV)
        return
    if not args.python.exists():
        raise LLMCoreError(f"{args.python} not found: run `python benchmarks/d3rlpy_cql.py --setup` first "
                           f"(d3rlpy cannot live in the book's environment: it pins gymnasium==1.0.0)")
    if args.seeds < 0:
        raise LLMCoreError(f"--seeds {args.seeds}: must be >= 0")
    cfg = BCQCQLConfig.for_mode(True)
    neural = replace(cfg.neural, algo="cql", steps=args.steps or cfg.neural.steps)
    hp = {k: v for k, v in asdict(neural).items() if k in ("batch", "gamma", "lr", "target_every", "alpha", "hidden",
                                                         "steps", "eval_episodes")}
    hp.update(seeds=args.seeds, eval_seed=EVAL_SEED)
    seed_everything(cfg.data_seed, threads=THREADS)
    data, _ = cartpole_datasets(cfg, cfg.data_seed)
    arrays, ours = batch_and_weights(data["medium"], hp)
    for name in cfg.datasets:
        arrays.update({f"{name}_{k}": getattr(data[name], k) for k in FIELDS})
    with tempfile.TemporaryDirectory() as tmp:
        exchange, answers = Path(tmp) / "exchange.npz", Path(tmp) / "answers.json"
        np.savez(exchange, hparams=json.dumps(hp), datasets=np.array(cfg.datasets), **arrays)
        proc = subprocess.run([str(args.python), str(ROOT / "benchmarks" / "d3rlpy_side.py"), str(exchange),
                               str(answers)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LLMCoreError(f"the d3rlpy side failed:\n{proc.stderr[-2000:]}")
        theirs = json.loads(answers.read_text())
    lo = theirs["loss"]
    print(f"d3rlpy {theirs['d3rlpy']} (gymnasium {theirs['gymnasium']}, torch {theirs['torch']}) vs llmcore, "
          f"batch of {ours['rows']} medium transitions, alpha {hp['alpha']}")
    rows = {k: arrays[f"batch_{k}"] for k in FIELDS}  # d3rlpy's compute_target is Q_target(s', a*); y as in its TD
    y_d3 = rows["rewards"] + hp["gamma"] * (1 - rows["terminated"]) * np.array(lo["all"]["target"])
    checks = {
        "Double DQN targets y = r + gamma (1 - d) Q_target(s', argmax_a Q(s', a)), max |diff|":
            np.abs(y_d3 - ours["target"]).max(),
        "conservative term, |diff|": abs(lo["all"]["conservative"] - ours["parts"]["conservative"]),
        f"whole loss on the {ours['rows_small']} rows with |delta| < 1, |diff|":
            abs(lo["small_td"]["loss"] - ours["loss_small"]),
        "d3rlpy TD (Huber) vs F.huber_loss of our delta, full batch, |diff|": abs(lo["all"]["td"] - ours["huber_td"]),
    }
    for name, diff in checks.items():
        print(f"  [{'PASS' if diff < 1e-5 else 'FAIL'}] {name}: {diff:.2e}")
    print(f"  TD term on the full batch: ours (1/2 delta^2) {ours['parts']['td']:.4f}, "
          f"d3rlpy (Huber) {lo['all']['td']:.4f} -- differ by design on the |delta| >= 1 rows")
    table = {}
    if args.seeds:
        for name in cfg.datasets:
            mine = [train_offline(data[name], neural, s, eval_seed=EVAL_SEED).score for s in range(args.seeds)]
            d3 = [float(np.mean(theirs["runs"][f"{name}/{s}"]["returns"])) for s in range(args.seeds)]
            table[name] = {"llmcore": mine, "d3rlpy": d3}
            within = min(d3) <= np.mean(mine) <= max(d3)
            print(f"  CartPole {name}: llmcore CQL {np.mean(mine):6.1f} ± {np.std(mine):5.1f} "
                  f"[{min(mine):.0f}, {max(mine):.0f}]   d3rlpy DiscreteCQL {np.mean(d3):6.1f} ± {np.std(d3):5.1f} "
                  f"[{min(d3):.0f}, {max(d3):.0f}]   our mean within d3rlpy's range: {within}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"hparams": hp, "checks": {k: float(v) for k, v in checks.items()},
                                    "returns": table, "versions": {k: theirs[k] for k in ("d3rlpy", "gymnasium")}},
                                   indent=1))
    print(f"wrote {args.out}")
    if any(v >= 1e-5 for v in checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except LLMCoreError as err:
        sys.exit(f"error: {err}")
