#!/usr/bin/env python
"""Execute chapters with papermill into the executed ``.ipynb`` beside each jupytext ``.py``.

    python tools/execute.py                      # every written chapter (from the registry), toy mode
    python tools/execute.py chapters/01_foundation_rl/01_mdp.py --full --device cuda
    python tools/execute.py --modules mdp,overview
    python tools/execute.py book/reference.py    # a book page that is a notebook too

What the committed notebook looks like (a Colab reader opens exactly this file):

* **One parameters cell.** papermill runs the notebook with an extra ``injected-parameters`` cell
  after the ``parameters`` cell. Left in the committed file, that cell would override whatever a Colab
  reader types into the parameters cell (Colab ignores the ``remove-cell`` tag). So after the run the
  injected cell is dropped and its values (``toy``, ``device``, ``seed``) are written into the tagged
  ``parameters`` cell (:func:`fold_injected_parameters`): a default run (``--toy --device auto
  --seed 0``) leaves that cell byte-identical to the ``.py``; a ``--full --device cuda`` run commits a
  notebook whose one parameters cell says so. We keep papermill's injection (rather than executing
  without parameters) because it is the one mechanism that also serves non-default runs.
* **A pinned install cell.** The chapter's install cell in the ``.py`` installs
  ``llmcore[<extras>] @ git+<repository.url>@main``; in the executed notebook ``@main`` becomes
  ``@<git rev-parse HEAD>`` (:func:`pin_install_cell`), so a reader gets the code the outputs came
  from. Commit code first, then execute, then commit the notebooks: when ``src/`` or
  ``pyproject.toml`` have uncommitted changes the pinned commit lacks them, and this script warns.
* **The book's Python.** Trained numbers move with library and numeric versions, and the wheels pip
  resolves depend on the Python version, so the committed outputs are executed with one Python
  (``book-python`` under ``[tool.llmcore]`` in ``pyproject.toml``). Another Python is refused with
  exit status 2 unless ``--any-python`` is given (``make book ANY_PYTHON=1``).

A chapter that raises leaves its previous ``.ipynb`` untouched and the script exits 1 naming it.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
TOY_CELL_TIMEOUT_S = 900
KERNEL = "python3"
#: the parameters every run injects (papermill) and folds back into the parameters cell
RUN_PARAMETERS = ("toy", "device", "seed")
INSTALL_MARKER = 'find_spec("llmcore")'


def book_python() -> str:
    """The ``major.minor`` Python the committed notebooks are executed with (pyproject.toml)."""
    m = re.search(r'^book-python\s*=\s*"(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    if not m:
        raise RuntimeError("pyproject.toml: [tool.llmcore] book-python = \"X.Y\" is missing")
    return m.group(1)


def repository_url() -> str:
    """``repository.url`` from ``_config.yml`` (the one setting for where the book lives)."""
    m = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(encoding="utf-8"), re.M)
    if not m:
        raise RuntimeError("_config.yml: repository.url is missing")
    return m.group(1)


def install_ref_pattern(url: str) -> re.Pattern:
    """Matches ``git+<url>@<ref>`` in an install cell; group 1 is everything before the ref."""
    return re.compile(rf"(git\+{re.escape(url)}@)([0-9A-Za-z._/-]+)")


def git_head() -> tuple[str | None, bool]:
    """(HEAD commit or None outside a git checkout, whether src/ or pyproject.toml have uncommitted changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "pyproject.toml"], cwd=ROOT,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return head.stdout.strip(), bool(dirty.stdout.strip())


def python_literal(value) -> str:
    """Source text for a parameter value, in the chapters' style (double-quoted strings)."""
    if isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        text = repr(value)
    if ast.literal_eval(text) != value:
        raise ValueError(f"cannot write {value!r} as a literal")
    return text


def set_parameters(source: str, values: dict) -> str:
    """Rewrite the top-level ``name = <literal>`` assignments of ``values`` in a parameters cell.

    Only the value's characters change (comments and layout stay); an assignment whose literal
    already equals the value is left as written. A name the cell does not assign is an error.
    """
    lines = source.splitlines(keepends=True)
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    missing = [k for k in values if k not in found]
    if missing:
        raise ValueError(f"the parameters cell does not assign {', '.join(missing)}")
    # edit from the bottom up so earlier offsets stay valid
    for name in sorted(values, key=lambda k: (found[k].lineno, found[k].col_offset), reverse=True):
        node = found[name]
        try:
            same = ast.literal_eval(node) == values[name] and type(ast.literal_eval(node)) is type(values[name])
        except ValueError:
            same = False
        if same:
            continue
        if node.lineno != node.end_lineno:
            raise ValueError(f"parameter {name} spans several lines; write it on one")
        i = node.lineno - 1
        line = lines[i].encode("utf-8")  # ast offsets are in UTF-8 bytes
        new = line[: node.col_offset] + python_literal(values[name]).encode("utf-8") + line[node.end_col_offset:]
        lines[i] = new.decode("utf-8")
    return "".join(lines)


def fold_injected_parameters(nb) -> None:
    """Drop papermill's ``injected-parameters`` cell(s), writing their values into the ``parameters`` cell."""
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    if not injected:
        return
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(params) != 1:
        raise ValueError(f"expected one cell tagged parameters, found {len(params)}")
    values = {}
    for cell in injected:
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                values[node.targets[0].id] = ast.literal_eval(node.value)
    params[0].source = set_parameters(params[0].source, values)
    nb.cells = [c for c in nb.cells if not any(c is i for i in injected)]


def pin_install_cell(nb, url: str, commit: str) -> None:
    """Replace the ``@<ref>`` of ``git+<url>@<ref>`` in the install cell with ``commit``."""
    pattern = install_ref_pattern(url)
    cells = [c for c in nb.cells if c.cell_type == "code" and INSTALL_MARKER in c.source]
    if len(cells) != 1 or not pattern.search(cells[0].source):
        raise ValueError(f"needs one install cell with git+{url}@<ref>")
    cells[0].source = pattern.sub(lambda m: m.group(1) + commit, cells[0].source)


def clean_metadata(nb) -> None:
    """Drop run-specific noise (timestamps, durations) so re-executions diff cleanly."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)


def chapter_paths(modules: str | None) -> list[Path]:
    from llmcore.core.registry import get, rows

    mods = [get(n.strip()) for n in modules.split(",") if n.strip()] if modules else rows()
    paths = dict.fromkeys(ROOT / m.chapter for m in mods)  # ppo and dpo share one chapter: run it once
    return [p for p in paths if p.is_file()]


def execute(py: Path, toy: bool, device: str, seed: int, url: str, commit: str) -> float:
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
        fold_injected_parameters(done)
        pin_install_cell(done, url, commit)
        nbformat.validate(done)
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
    ap.add_argument("--any-python", action="store_true",
                    help="execute with a Python other than the book's (pyproject.toml book-python); numbers may differ")
    args = ap.parse_args(argv)
    want, have = book_python(), f"{sys.version_info.major}.{sys.version_info.minor}"
    if have != want and not args.any_python:
        print(f"error: the book is executed with Python {want} (pyproject.toml book-python), this is {have}: "
              "trained numbers would differ from the committed ones; pass --any-python (make ANY_PYTHON=1) "
              "to execute anyway", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # the inline backend even when the caller exported Agg (the Makefile does, for tests): under Agg the
    # executed notebooks would carry no figures
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
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
    url = repository_url()
    commit, dirty = git_head()
    if commit is None:
        commit = "main"
        print("warning: not a git checkout: install cells keep @main (not pinned to a commit)", file=sys.stderr)
    elif dirty:
        print(f"warning: src/ or pyproject.toml has uncommitted changes; install cells pin {commit[:12]}, "
              "which lacks them: commit, then re-execute before publishing", file=sys.stderr)
    failed = []
    for py in paths:
        rel = py.relative_to(ROOT) if py.is_relative_to(ROOT) else py
        print(f"executing {rel} (toy={args.toy}, device={args.device}, seed={args.seed}) ...", flush=True)
        try:
            wall = execute(py, args.toy, args.device, args.seed, url, commit)
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
