#!/usr/bin/env python
"""Does it hold on your machine? Run every module's toy closed loop over seeds x CPU kernel sets.

    python tools/robustness.py                                  # written modules x seeds 0-4 x native,default,avx2
    python tools/robustness.py --modules mdp,gae --seeds 0-2    # a subset
    python tools/robustness.py --page                           # only rewrite book/robustness.md from the JSON

Trained numbers move with the CPU's vector kernels (PyTorch picks AVX-512, AVX2 or plain code at start-up;
``ATEN_CPU_CAPABILITY`` overrides the pick), so a criterion must pass with margin on every cell of the
matrix, not only on the machine that executed the book. Each cell is one ``run.py --module M --toy --seed S``
in a fresh process with ``ATEN_CPU_CAPABILITY`` set (``native`` leaves it unset; the others get their own
``output/`` so that cached models are trained with their kernels). Results go to
``output/robustness/robustness.json`` and the book page ``book/robustness.md`` (per criterion: pass count,
min / median / max of the measured value, the threshold). Each cell records which files its run read -- every
``llmcore`` source file it imported, the package data, ``run.py`` -- and their hash: a later run keeps a cell
while those files, torch and Python are unchanged (an interrupted matrix resumes, and a change to one chapter's
code re-runs only the modules that import it).

``--jobs`` runs cells side by side. Every cell keeps the book's thread count (2, fixed by
``seed_everything``), so results do not depend on ``--jobs``; only the wall-clock does. The non-vectorised
``default`` kernels are several times slower than the native ones: this is a benchmark-style run, not
part of ``make test``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from llmcore.core.device import cpu_name  # noqa: E402
from llmcore.core.registry import MODULES  # noqa: E402

OUT = ROOT / "output" / "robustness"
PAGE = ROOT / "book" / "robustness.md"
KERNELS = ("native", "default", "avx2")


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3"`` -> [0, 3]."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def kernel_env(kernel: str) -> dict[str, str]:
    """The environment of one cell. A non-native kernel set also gets its own ``output/`` (caches of trained
    models), so its cells train with its kernels as a reader's fresh machine would, instead of loading a
    model that the native kernels trained."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["LLMCORE_NO_PROGRESS"] = "1"
    if kernel != "native":
        env["ATEN_CPU_CAPABILITY"] = kernel
        env["LLMCORE_OUTPUT"] = str(OUT / f"output-{kernel}")
    return env


def capability(kernel: str) -> str:
    """The kernel set torch actually uses under ``kernel`` (asked in a fresh process)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=kernel_env(kernel), capture_output=True, text=True)
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def code_version() -> str:
    """The git tree hash of ``src/`` (+dirty): cells measured on the same library code are kept across
    commits that change only chapters, docs or tools."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD:src"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "run.py"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


#: runs ``run.py`` (argv after ``--``) and, at exit, writes the repository files its process imported
#: from ``src/llmcore`` to the JSON file named by argv[1]
_CELL_WRAPPER = """
import atexit, json, runpy, sys
from pathlib import Path
root, listing = Path(sys.argv[2]), Path(sys.argv[1])
def _dump():
    src = root / "src" / "llmcore"
    files = {str(Path(m.__file__).resolve().relative_to(root)) for m in list(sys.modules.values())
             if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(src)}
    listing.write_text(json.dumps(sorted(files)))
atexit.register(_dump)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


REGISTRY = "src/llmcore/core/registry.py"


def data_files() -> list[str]:
    """The package data files present now (repository-relative, sorted)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src" / "llmcore" / "data").rglob("*") if p.is_file())


@functools.cache
def _added_in(rel: str) -> str | None:
    """The commit that added ``rel`` (None: not committed)."""
    out = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", rel], cwd=ROOT, capture_output=True,
                         text=True).stdout.split()
    return out[-1] if out else None


@functools.cache
def _is_ancestor(a: str, b: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", a, b], cwd=ROOT, capture_output=True).returncode == 0


def cell_data(cell: dict) -> list[str]:
    """The package data files a cell's fingerprint covers: those present when it ran. Cells recorded before
    the list was stored cover the data files their commit already had (a file added later cannot have
    changed what that run read)."""
    if "data" in cell:
        return cell["data"]
    return [f for f in data_files() if (a := _added_in(f)) is not None and _is_ancestor(a, cell.get("commit", ""))]


def fingerprint(files: list[str], module: str, data: list[str] | None = None) -> str:
    """sha256 over ``files`` (repository-relative), ``run.py``, the package data present when the cell ran
    (``data``; default: all of it now), torch's and Python's versions: what a cell's result depends on
    besides the machine. Of the registry, which every run imports and every new chapter edits, only
    ``module``'s own row counts."""
    data = data_files() if data is None else data
    rows = {m.name: m for m in MODULES}
    h = hashlib.sha256(f"{_torch_version()} {platform.python_version()}".encode())
    for rel in sorted(set(files) | set(data) | {"run.py"}):
        path = ROOT / rel
        if rel == REGISTRY:
            content = repr(rows.get(module)).encode()
        else:
            content = path.read_bytes() if path.is_file() else b"<missing>"
        h.update(rel.encode() + b"\0" + content + b"\0")
    return h.hexdigest()[:16]


def still_valid(cell: dict) -> bool:
    """A recorded cell is kept while every file its run read, and the package data it had, are unchanged
    (and torch, Python)."""
    return bool(cell.get("files")) and cell.get("fingerprint") == fingerprint(cell["files"], cell["module"],
                                                                              cell_data(cell))


def run_cell(module: str, seed: int, kernel: str, timeout: int) -> dict:
    """One ``run.py`` in a fresh process; its report JSON (or the error), the files it read and their hash."""
    folder = OUT / "runs" / f"{module}-s{seed}-{kernel}"
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "files.json"
    listing.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _CELL_WRAPPER, str(listing), str(ROOT), str(ROOT / "run.py"), "--module", module,
           "--toy", "--seed", str(seed), "--device", "cpu", "--out", str(folder)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=kernel_env(kernel), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, err = -1, f"timed out after {timeout} s"
    cell = {"module": module, "seed": seed, "kernel": kernel, "rc": rc, "wall_s": time.perf_counter() - t0,
            "commit": git_commit()}
    if listing.is_file():
        cell["files"] = json.loads(listing.read_text())
        cell["data"] = data_files()
        cell["fingerprint"] = fingerprint(cell["files"], module, cell["data"])
    report = folder / f"{module}.json"
    if rc in (0, 1) and report.is_file():
        d = json.loads(report.read_text())
        cell["passed"] = d["passed"]
        cell["criteria"] = [{"name": c["name"], "value": c["value"], "op": c["op"], "threshold": c["threshold"]}
                            for c in d["criteria"]]
    else:
        cell["passed"] = False
        cell["error"] = (err or "").strip().splitlines()[-1:] or ["no report written"]
    return cell


def _passes(c: dict) -> bool:
    v, t = c["value"], c["threshold"]
    return {"<": v < t, "<=": v <= t, ">": v > t, ">=": v >= t, "==": v == t}[c["op"]]


def summarize(cells: list[dict]) -> dict[str, list[dict]]:
    """Per module, per criterion: pass count, min / median / max, threshold."""
    table: dict[str, list[dict]] = {}
    for module in sorted({c["module"] for c in cells}):
        mine = [c for c in cells if c["module"] == module]
        names: list[str] = []
        for c in mine:
            for crit in c.get("criteria", []):
                if crit["name"] not in names:
                    names.append(crit["name"])
        rows = []
        for name in names:
            hits = [crit for c in mine for crit in c.get("criteria", []) if crit["name"] == name]
            values = [h["value"] for h in hits]
            rows.append({"criterion": name, "op": hits[0]["op"], "threshold": hits[0]["threshold"],
                         "passed": sum(_passes(h) for h in hits), "n": len(mine), "min": min(values),
                         "median": statistics.median(values), "max": max(values)})
        table[module] = rows
    return table


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) and x != int(x) else f"{int(x)}" if x == x else "nan"


def write_page(result: dict) -> Path:
    table = summarize(result["cells"])
    cells = result["cells"]
    n_ok = sum(c["passed"] for c in cells)
    lines = [
        "# Does it hold on your machine? / 结果是否可复现",
        "",
        "<!-- Generated by tools/robustness.py from output/robustness/robustness.json — do not edit by hand. -->",
        "",
        "Trained numbers depend on which CPU kernels run (AVX-512, AVX2 or plain code), on the seed and on library",
        "versions. Every acceptance criterion of the book must therefore pass **with margin on every cell** of a",
        "matrix of seeds and kernel sets, not only on the machine that executed the book. This page is generated",
        "by `make robust` (`python tools/robustness.py`); each cell is one `run.py --module M --toy --seed S` in a",
        "fresh process with `ATEN_CPU_CAPABILITY` set.",
        "",
        "训练得到的数字随 CPU 向量内核、随机种子和库版本而变；本书的每条验收标准都必须在下表的每个格子里留有余量地通过。",
        "",
        "- command(s): " + "; ".join(f"`{c}`" for c in (result.get("commands") or [result["command"]]) if c),
        f"- date: {result['date']}; commit `{result['commit']}` (library tree `{result.get('code_version', '?')}`); "
        f"wall-clock {result['wall_s'] / 60:.1f} min",
        "- cells measured at commits: " + ", ".join(f"`{c}`" for c in sorted({c.get("commit", "?") for c in cells}))
        + " (a cell is kept while every file its run read is unchanged)",
        f"- hardware: {result['hardware']['cpu']} ({result['hardware']['cores']} cores); torch {result['torch']}, "
        f"Python {result['python']}",
        "- kernel sets: " + ", ".join(f"`{k}` → torch uses `{v}`" for k, v in result["capabilities"].items()),
        f"- seeds: {', '.join(map(str, result['seeds']))}",
        f"- cells passing every criterion: **{n_ok} / {len(cells)}**",
        "",
    ]
    written = [m.name for m in MODULES if m.written]
    missing = [m for m in written if m not in table]
    if missing:
        lines += [f"Not in this matrix yet: {', '.join(f'`{m}`' for m in missing)}. The last matrix measured for each "
                  "of them, at an earlier commit, is listed in the [benchmarks page](benchmarks.md) (section "
                  "\"Robustness ledger\").", ""]
    for module, rows in table.items():
        mine = [c for c in cells if c["module"] == module]
        ok = sum(c["passed"] for c in mine)
        seeds_m = sorted({c["seed"] for c in mine})
        kernels_m = [k for k in KERNELS if any(c["kernel"] == k for c in mine)]
        lines += [f"## `{module}` — {ok} / {len(mine)} cells pass", "",
                  f"Cells: seeds {', '.join(map(str, seeds_m))} × kernel sets {', '.join(kernels_m)}.", "",
                  "| criterion | target | passes | min | median | max |", "|---|---|---|---|---|---|"]
        for r in rows:
            mark = "" if r["passed"] == r["n"] else " ⚠"
            lines.append(f"| {r['criterion'].replace('|', '∣')} | {r['op']} {_fmt(r['threshold'])} | "
                         f"{r['passed']} / {r['n']}{mark} | {_fmt(r['min'])} | {_fmt(r['median'])} | {_fmt(r['max'])} |")
        errors = [c for c in mine if "error" in c]
        for c in errors:
            lines.append(f"\n- seed {c['seed']}, `{c['kernel']}`: no report ({'; '.join(c['error'])})")
        lines.append("")
    PAGE.write_text("\n".join(lines), encoding="utf-8")
    return PAGE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modules", default=None, help="comma-separated (default: every written module)")
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2 (default 0-4)")
    ap.add_argument("--kernels", default=",".join(KERNELS), help="native,default,avx2 (default: all three)")
    ap.add_argument("--jobs", type=int, default=1, help="cells run side by side (default 1)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    ap.add_argument("--fresh", action="store_true", help="re-run cells already in the JSON for this commit")
    ap.add_argument("--page", action="store_true", help="only rewrite the book page from the JSON")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    store = OUT / "robustness.json"
    if args.page:
        if not store.is_file():
            print(f"error: {store} does not exist; run the matrix first", file=sys.stderr)
            return 2
        print(f"wrote {write_page(json.loads(store.read_text())).relative_to(ROOT)}")
        return 0

    known = {m.name: m for m in MODULES}
    names = args.modules.split(",") if args.modules else [m.name for m in MODULES if m.written]
    bad = [n for n in names if n not in known or not known[n].written]
    if bad:
        print(f"error: not a written module: {', '.join(bad)} (written: "
              f"{', '.join(m.name for m in MODULES if m.written)})", file=sys.stderr)
        return 2
    kernels = args.kernels.split(",")
    if set(kernels) - set(KERNELS):
        print(f"error: kernel sets are {', '.join(KERNELS)}", file=sys.stderr)
        return 2
    seeds = parse_seeds(args.seeds)
    commit, version = git_commit(), code_version()
    previous = json.loads(store.read_text()) if store.is_file() else {}
    old_cells = [] if args.fresh else previous.get("cells", [])
    keep = [c for c in old_cells if still_valid(c)]
    done = {(c["module"], c["seed"], c["kernel"]) for c in keep}
    todo = [(m, s, k) for m in names for k in kernels for s in seeds if (m, s, k) not in done]
    print(f"{len(todo)} cells to run ({len(keep)} kept: the files their runs read are unchanged; "
          f"{len(old_cells) - len(keep)} stale)", flush=True)

    t0 = time.perf_counter()
    cells = list(keep)
    command = "python tools/robustness.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": command,
        "commands": (previous.get("commands") or [previous.get("command")] if keep else []) + [command],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
        "code_version": version,
        "hardware": {"cpu": cpu_name(), "cores": os.cpu_count()}, "torch": _torch_version(),
        "python": platform.python_version(),
        "capabilities": {**(previous.get("capabilities", {}) if keep else {}), **{k: capability(k) for k in kernels}},
        "seeds": sorted(set(seeds) | (set(previous.get("seeds", [])) if keep else set())), "cells": cells, "wall_s": previous.get("wall_s", 0.0) if keep else 0.0,
    }

    def one(job: tuple[str, int, str]) -> dict:
        cell = run_cell(*job, timeout=args.timeout)
        status = "PASS" if cell["passed"] else "FAIL"
        print(f"  {status}  {job[0]:<12} seed {job[1]}  {job[2]:<8} {cell['wall_s']:6.1f} s", flush=True)
        return cell

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for cell in pool.map(one, todo):
            cells.append(cell)
            result["wall_s"] = (previous.get("wall_s", 0.0) if keep else 0.0) + time.perf_counter() - t0
            store.write_text(json.dumps(result, indent=1))  # after every cell: an interrupted matrix resumes
    store.write_text(json.dumps(result, indent=1))
    page = write_page(result)
    n_ok = sum(c["passed"] for c in cells)
    print(f"{n_ok} / {len(cells)} cells pass every criterion; wrote {store.relative_to(ROOT)} and "
          f"{page.relative_to(ROOT)} ({result['wall_s'] / 60:.1f} min)")
    return 0 if n_ok == len(cells) else 1


@functools.lru_cache(maxsize=1)
def _torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                         text=True)
    return out.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
