#!/usr/bin/env python
"""One training step (forward + backward + AdamW) of our LLaMA vs HF ``LlamaForCausalLM``, same config and batch.

    python benchmarks/train_step.py                    # CPU, d=256 L=4, batch 8 x 256
    python benchmarks/train_step.py --device cuda --d-model 1024 --layers 8 --batch 16 --seq 1024

Both models hold identical weights (ours copied into HF's), see the same batches, and run interleaved
(ours, HF, ours, HF, ...) so machine noise hits both sides alike. Prints the median step time of each,
the ratio ours/HF (goal <= 1.0) and the loss difference on the first step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from llmcore.architecture.llama import Llama, ModelConfig  # noqa: E402
from llmcore.architecture.training import TrainConfig, loss_of, make_optimizer  # noqa: E402
from llmcore.core import pick_device, seed_everything  # noqa: E402


def step_fn(model, opt, idx):
    def step():
        loss = loss_of(model, idx, idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())
    return step


def timed(step, dev) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=264)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (after 2 warm-up steps)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (1 is steadier on a busy machine)")
    a = ap.parse_args()
    dev = pick_device(a.device)
    seed_everything(a.seed, threads=a.threads)
    cfg = ModelConfig(vocab_size=a.vocab, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads,
                      n_kv_heads=a.kv_heads, max_seq_len=a.seq, tie_embeddings=False)
    ours = Llama(cfg).to(dev)
    hf = ours.to_hf().train()
    hf.config._attn_implementation = "sdpa"
    tcfg = TrainConfig(lr=1e-3)
    idx = torch.randint(0, a.vocab, (a.batch, a.seq), generator=torch.Generator().manual_seed(a.seed)).to(dev)
    s_ours, s_hf = step_fn(ours, make_optimizer(ours, tcfg), idx), step_fn(hf, make_optimizer(hf, tcfg), idx)
    l_ours, l_hf = s_ours(), s_hf()  # warm-up (and the same first loss: identical weights)
    s_ours(), s_hf()
    t_ours, t_hf = [], []
    for _ in range(a.steps):
        t_ours.append(timed(s_ours, dev))
        t_hf.append(timed(s_hf, dev))
    mo, mh = statistics.median(t_ours), statistics.median(t_hf)
    print(f"device={dev} torch threads={torch.get_num_threads()} params={ours.num_params():,} "
          f"d={a.d_model} L={a.layers} H={a.heads} K={a.kv_heads} batch={a.batch}x{a.seq}")
    print(f"first-step loss: ours {l_ours:.6f}  HF {l_hf:.6f}  |diff| {abs(l_ours - l_hf):.2e}")
    print(f"{'':<22}{'ours':>12}{'HF Llama':>12}{'ours/HF':>10}")
    print(f"{'median step time (ms)':<22}{mo * 1e3:>12.1f}{mh * 1e3:>12.1f}{mo / mh:>10.3f}")
    print(f"{'tokens/s':<22}{idx.numel() / mo:>12.0f}{idx.numel() / mh:>12.0f}")
    print(f"goal ours/HF <= 1.0: {'MET' if mo / mh <= 1.0 else 'NOT MET'}")


if __name__ == "__main__":
    main()
