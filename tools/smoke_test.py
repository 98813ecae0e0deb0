#!/usr/bin/env python
"""Run every written module's toy closed loop; write output/smoke_reports/<module>.{json,md} + summary.md.

    python tools/smoke_test.py                 # all written modules
    python tools/smoke_test.py --modules mdp   # a subset

Exits 1 if any acceptance criterion fails or a module raises, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llmcore.core.errors import LLMCoreError  # noqa: E402
from llmcore.core.paths import output_dir  # noqa: E402
from llmcore.core.registry import get, run_module, written  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", help="comma-separated registry names (default: every written module)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        mods = [get(n.strip()) for n in args.modules.split(",")] if args.modules else written()
        unwritten = [m.name for m in mods if not m.written]
        if unwritten:
            raise LLMCoreError(f"not written yet: {', '.join(unwritten)}")
    except LLMCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = output_dir("smoke_reports")
    rows, ok = [], True
    for m in mods:
        print(f"[smoke] {m.name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            rep = run_module(m.name, toy=True, device=args.device, seed=args.seed)
            rep.save(out)
            status = "PASS" if rep.passed else "FAIL"
            detail = "; ".join(str(c) for c in rep.failures()) or f"{len(rep.criteria)} criteria passed"
        except Exception as e:  # noqa: BLE001 - one module's crash must not hide the others
            status, detail = "ERROR", f"{type(e).__name__}: {e}"
            (out / f"{m.name}.error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        wall = time.perf_counter() - t0
        ok &= status == "PASS"
        rows.append(f"| `{m.name}` | {m.title_en} | {status} | {wall:.1f} | {detail.replace('|', '/')} |")
        print(f"[smoke] {m.name}: {status} in {wall:.1f}s — {detail}", flush=True)
    summary = ["# Smoke test (toy mode)", "", "| module | title | result | wall s | detail |",
               "|---|---|---|---|---|", *rows, ""]
    (out / "summary.md").write_text("\n".join(summary), encoding="utf-8")
    print(f"[smoke] summary: {out / 'summary.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
