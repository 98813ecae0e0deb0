#!/usr/bin/env python
"""Execute chapters with papermill into the executed ``.ipynb`` beside each jupytext ``.py``.

    python tools/execute.py                      # every written chapter (from the registry), toy mode
    python tools/execute.py chapters/01_foundation_rl/01_mdp.py --full --device cuda
    python tools/execute.py --modules mdp,overview

The injected-parameters cell is tagged ``remove-cell`` (hidden in the book). A chapter that
raises leaves its previous ``.ipynb`` untouched and the script exits 1 naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
TOY_CELL_TIMEOUT_S = 900
KERNEL = "python3"


def chapter_paths(modules: str | None) -> list[Path]:
    from llmcore.core.registry import get, rows

    mods = [get(n.strip()) for n in modules.split(",") if n.strip()] if modules else rows()
    paths = dict.fromkeys(ROOT / m.chapter for m in mods)  # ppo and dpo share one chapter: run it once
    return [p for p in paths if p.is_file()]


def clean_metadata(nb) -> None:
    """Drop run-specific noise (timestamps, durations) so re-executions diff cleanly."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]


def execute(py: Path, toy: bool, device: str, seed: int) -> float:
    import jupytext
    import nbformat
    import papermill as pm

    nb = jupytext.read(py)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    target = py.with_suffix(".ipynb")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.ipynb", Path(tmp) / "out.ipynb"
        nbformat.write(nb, src)
        t0 = time.perf_counter()
        pm.execute_notebook(
            str(src), str(out), parameters={"toy": toy, "device": device, "seed": seed},
            kernel_name=KERNEL, cwd=str(py.parent), progress_bar=False, log_output=False,
            request_save_on_cell_execute=False,
            # toy cells take seconds; a cell still running after 15 min is a hung kernel, not work
            execution_timeout=TOY_CELL_TIMEOUT_S if toy else None,
        )
        wall = time.perf_counter() - t0
        done = nbformat.read(out, as_version=4)
        clean_metadata(done)
        nbformat.write(done, target)
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chapters", nargs="*", help="chapter .py files (default: every written chapter)")
    ap.add_argument("--modules", help="comma-separated registry names instead of paths")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--toy", dest="toy", action="store_true", default=True)
    mode.add_argument("--full", dest="toy", action="store_false")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    try:
        from llmcore.core.device import pick_device
        from llmcore.core.errors import LLMCoreError

        pick_device(args.device)
        paths = [Path(p).resolve() for p in args.chapters] or chapter_paths(args.modules)
    except LLMCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = [p for p in paths if not p.is_file() or p.suffix != ".py"]
    if missing:
        print(f"error: not a chapter .py file: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    failed = []
    for py in paths:
        rel = py.relative_to(ROOT) if py.is_relative_to(ROOT) else py
        print(f"executing {rel} (toy={args.toy}, device={args.device}, seed={args.seed}) ...", flush=True)
        try:
            wall = execute(py, args.toy, args.device, args.seed)
            print(f"  ok in {wall:.1f}s -> {py.with_suffix('.ipynb').name}", flush=True)
        except Exception as e:  # noqa: BLE001 - report the chapter and carry on
            msg = str(e).strip().splitlines()
            print(f"  FAILED: {type(e).__name__}: {msg[-1] if msg else ''}", flush=True)
            failed.append(str(rel))
    if failed:
        print(f"error: {len(failed)} chapter(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
