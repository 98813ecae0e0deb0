#!/usr/bin/env python
"""KV cache vs recomputation, and each weight / cache format (fp32, INT8 KV cache, bf16, torch's INT8
weight-only kernel, simulated INT8): greedy decode, same model and prompt, side by side.

    python benchmarks/kv_cache.py                      # 512 new tokens, CPU
    python benchmarks/kv_cache.py --device cuda        # on a GPU: adds fp16 and the allocator's growth per model

The model is a randomly initialised LLaMA-style decoder (weights do not change timings); the prompt is
fixed (``decoding.cache_speedup``, which the Decoding chapter also calls). Prints tokens/s for each side,
the ratio, and whether the generated tokens are identical.
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
from llmcore.core import pick_device  # noqa: E402


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
    r = D.cache_speedup(a.new_tokens, a.prompt_len, a.d_model, a.layers, a.heads, a.kv_heads, dev, a.seed)
    model, prompt = r["model_obj"], r["prompt"]
    print(f"device={dev} model: {r['model']} params={r['params']:,}; prompt={a.prompt_len}, "
          f"new tokens={a.new_tokens}; torch threads={torch.get_num_threads()}")
    for name, key in (("no cache (recompute)", "no_cache_s"), ("static KV cache", "cache_s")):
        print(f"{name:<24} {a.new_tokens / r[key]:9.1f} tok/s   wall {r[key]:7.2f} s")
    print(f"static cache {r['cache_bytes'] / 2**10:.1f} KiB")
    print(f"speed-up with cache: {r['ratio']:.1f}x (goal >= 5x); identical tokens: {r['same_tokens']}")

    print("\nweight / cache formats, each model loaded and decoded alone (decoding.precision_report)")
    rows, skipped = D.precision_report(model, prompt, a.new_tokens)
    for r in rows:
        mem = (f"weights {r.weights_mem / 2**20:.1f} MiB, decode peak +{r.decode_mem / 2**20:.1f} MiB (allocator)"
               if r.weights_mem is not None else f"weights {r.weights_bytes / 2**20:.2f} MiB (byte accounting)")
        print(f"{r.name:<40} {r.tokens_per_s:9.1f} tok/s   {mem}   KV {r.cache_bytes / 2**10:.1f} KiB   [{r.path}]")
    for name, why in skipped.items():
        print(f"{name:<40} not run here: {why}")

if __name__ == "__main__":
    main()
