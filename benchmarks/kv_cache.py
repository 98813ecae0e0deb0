#!/usr/bin/env python
"""KV cache vs recomputation, and INT8 vs fp32 weights: greedy decode, same model and prompt, side by side.

    python benchmarks/kv_cache.py                      # 512 new tokens, CPU
    python benchmarks/kv_cache.py --device cuda        # on a GPU: adds torch.cuda.max_memory_allocated

The model is a randomly initialised LLaMA-style decoder (weights do not change timings); the prompt is
fixed. Prints tokens/s for each side, the ratio, and whether the generated tokens are identical.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from llmcore.architecture import decoding as D  # noqa: E402
from llmcore.architecture import quantization as Q  # noqa: E402
from llmcore.architecture.generate import generate  # noqa: E402
from llmcore.architecture.llama import Llama, ModelConfig  # noqa: E402
from llmcore.core import pick_device, seed_everything  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    dev = pick_device(a.device)
    seed_everything(a.seed)
    cfg = ModelConfig(vocab_size=264, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.kv_heads,
                      max_seq_len=a.prompt_len + a.new_tokens, init_std=0.1)
    model = Llama(cfg).to(dev).eval()
    prompt = torch.randint(0, 256, (1, a.prompt_len), generator=torch.Generator().manual_seed(a.seed)).to(dev)
    print(f"device={dev} model: d={a.d_model} L={a.layers} H={a.heads} K={a.kv_heads} "
          f"params={model.num_params():,}; prompt={a.prompt_len}, new tokens={a.new_tokens}; "
          f"torch threads={torch.get_num_threads()}")

    rows = {}
    for name, kw in (("no cache (recompute)", dict(cache=None)), ("static KV cache", dict(cache="static"))):
        res = generate(model, prompt, a.new_tokens, **kw)
        rows[name] = res
        print(f"{name:<24} {a.new_tokens / res.wall_s:9.1f} tok/s   wall {res.wall_s:7.2f} s   "
              f"cache {res.cache_bytes / 2**10:8.1f} KiB")
    same = torch.equal(rows["no cache (recompute)"].tokens, rows["static KV cache"].tokens)
    speed = rows["no cache (recompute)"].wall_s / rows["static KV cache"].wall_s
    print(f"speed-up with cache: {speed:.1f}x (goal >= 5x); identical tokens: {same}")

    print("\nweights: fp32 vs INT8 per-channel (dequantized on the fly), both with the static cache")
    for name, m in (("fp32 weights", model), ("int8 weights", Q.quantize_model(model, "int8_channel"))):
        r = D.measure_decode(m, prompt, a.new_tokens)
        mem = (f"peak {r['peak_mem'] / 2**20:.1f} MiB (torch.cuda.max_memory_allocated)" if "peak_mem" in r
               else f"param+buffer bytes {r['weights_bytes'] / 2**20:.2f} MiB (byte accounting)")
        print(f"{name:<24} {r['tokens_per_s']:9.1f} tok/s   {mem}")


if __name__ == "__main__":
    main()
