"""The chapter contract of DESIGN.md, checked for every chapter (text-level, no execution).

Run one module's checks with ``pytest tests/test_chapter_contract.py -k <module>``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import itertools
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import llmcore.exercises as exercises
from llmcore.core.registry import MODULES, rows

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = (ROOT / "_toc.yml").read_text(encoding="utf-8")
CJK = re.compile(r"[\u4e00-\u9fff]")
WRITTEN = [m for m in rows() if (ROOT / m.chapter).is_file()]
URL = CONFIG["repository"]["url"]
#: the install requirement in a chapter's .py (``@main``) and executed notebook (``@<commit>``)
INSTALL_REQ = re.compile(rf'"llmcore(?:\[([a-z,]+)\])? @ git\+{re.escape(URL)}@([0-9A-Za-z._/-]+)"')
#: every jupytext source that is executed into a committed notebook: the chapters and the book's notebook pages
SOURCES = sorted({ROOT / m.chapter for m in WRITTEN} | set((ROOT / "book").glob("*.py")))
NOTEBOOKS = sorted(p for p in ROOT.rglob("*.ipynb")
                   if not {"_build", "output", "node_modules", ".venv"} & set(p.relative_to(ROOT).parts)
                   and not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


@pytest.fixture(params=WRITTEN, ids=[m.name for m in WRITTEN])
def chapter(request):
    m = request.param
    py = ROOT / m.chapter
    return m, jupytext.read(py), py.with_suffix(".ipynb")


def test_every_chapter_file_is_registered():
    registered = {m.chapter for m in MODULES}
    for py in sorted((ROOT / "chapters").rglob("*.py")):
        assert str(py.relative_to(ROOT)) in registered, f"{py} is not in the registry"


def test_toc_follows_the_prerequisite_graph():
    """A written chapter comes after every written chapter it lists as a prerequisite (issue 17)."""
    order = [line.split("file: ", 1)[1] for line in TOC.splitlines() if "file: chapters/" in line]
    by_name = {m.name: m.chapter[:-3] for m in MODULES}
    for m in WRITTEN:
        for p in m.prerequisites:
            if by_name[p] in order and by_name[p] != m.chapter[:-3]:
                assert order.index(by_name[p]) < order.index(m.chapter[:-3]), \
                    f"{m.chapter} comes before its prerequisite {by_name[p]} in _toc.yml (reorder the registry)"


def test_toc_and_knowledge_map_are_generated_from_the_registry():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_toc.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_title_summary_and_order(chapter):
    m, nb, _ = chapter
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    title = first.source.splitlines()[0]
    assert title.startswith("# ") and CJK.search(title), f"H1 needs English / 中文: {title!r}"
    assert "中文摘要" in first.source and "Learning goals" in first.source and "Prerequisites" in first.source
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert tags.index(["parameters"]) == 1, "the parameters cell comes right after the title"


def test_parameters_cell(chapter):
    _, nb, _ = chapter
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    src = params[0].source
    for name, value in (("toy", "True"), ("device", '"auto"'), ("seed", "0")):
        assert re.search(rf"^{name} = {re.escape(value)}(?=\s|$)", src, re.M), f"parameters cell needs `{name} = {value}`"


def install_cell(nb):
    cells = [c for c in code_cells(nb) if "pip" in c.source and 'find_spec("llmcore")' in c.source]
    assert len(cells) == 1, "needs one Colab install cell (pip install when find_spec(\"llmcore\") is None)"
    return cells[0]


def test_install_cell_uses_the_configured_repository(chapter):
    _, nb, _ = chapter
    m = INSTALL_REQ.search(install_cell(nb).source)
    assert m, f"install cell must install \"llmcore[...] @ git+{URL}@main\" (repository.url)"
    assert m.group(2) == "main", "the .py installs @main; tools/execute.py pins the executed notebook to a commit"


# --- which extras a chapter's install cell needs: the third-party imports it reaches, statically ---

def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath("src", *name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def _imports(tree: ast.AST, package: str):
    """Absolute names of every import in ``tree`` (function-local ones too: they run when called)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module
            yield mod
            yield from (f"{mod}.{a.name}" for a in node.names)


def third_party_imports(code: str) -> set[str]:
    """Top-level non-stdlib modules reached from ``code``, following ``llmcore`` modules transitively.

    An over-approximation (an import inside a function the chapter never calls still counts), so an
    extra it asks for may be more than the run needs, never less.
    """
    todo, seen, found = list(_imports(ast.parse(code), "")), set(), set()
    while todo:
        name = todo.pop()
        top = name.split(".")[0]
        if top != "llmcore":
            if top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            f = _module_file(sub)
            if f is not None and f not in seen:
                seen.add(f)
                todo += _imports(ast.parse(f.read_text(encoding="utf-8")), sub if f.name == "__init__.py" else sub.rpartition(".")[0])
    return found


def requirement_closure(reqs: list[str]) -> set[str]:
    """Canonical names of ``reqs`` and everything they depend on (installed metadata, no extras)."""
    out, todo = set(), list(reqs)
    while todo:
        r = Requirement(todo.pop())
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(r.name)
        if name in out:
            continue
        out.add(name)
        try:
            todo += importlib.metadata.requires(r.name) or []
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def needed_extras(code: str) -> set[str]:
    """The smallest set of llmcore extras whose packages cover every third-party import ``code`` reaches."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = {k: v for k, v in project["optional-dependencies"].items() if k in ("hf", "kernels", "data", "serve", "agents")}
    base = requirement_closure(project["dependencies"])
    by_module = importlib.metadata.packages_distributions()
    covers = []  # per third-party module: the extras that provide it
    for mod in sorted(third_party_imports(code)):
        # not installed here (triton on macOS): assume the distribution is named like the module
        dists = {canonicalize_name(d) for d in by_module.get(mod, [])} or {canonicalize_name(mod)}
        if dists & base:
            continue
        # an extra's own requirements count whatever their platform marker says (triton: Linux only)
        covering = {k for k, reqs in extras.items()
                    if dists & (requirement_closure(reqs) | {canonicalize_name(Requirement(r).name) for r in reqs})}
        if len(covering) > 1 and covering - {"agents"}:  # Part 5's extra is asked for only where no other serves
            covering -= {"agents"}
        assert covering, f"{mod} ({', '.join(sorted(dists))}) is in no dependency or extra of pyproject.toml"
        covers.append(covering)
    # the smallest set of extras meeting every module (scikit-learn is in two extras: either will do); "agents"
    # is tried last, since its sentence-transformers pulls in transformers and would otherwise stand in for "hf"
    for size in range(len(extras) + 1):
        for pick in itertools.combinations(sorted(extras, key=lambda k: (k == "agents", k)), size):
            if all(c & set(pick) for c in covers):
                return set(pick)
    raise AssertionError("unreachable: all extras together cover every module")


@pytest.mark.parametrize("py", SOURCES, ids=[p.stem for p in SOURCES])
def test_install_cell_asks_for_exactly_the_extras_it_needs(py):
    nb = jupytext.read(py)
    m = INSTALL_REQ.search(install_cell(nb).source)
    assert m, f"{py.name}: install cell must install \"llmcore[...] @ git+{URL}@main\""
    asked = set(filter(None, (m.group(1) or "").split(",")))
    code = "\n".join(c.source for c in code_cells(nb) if not c.source.lstrip().startswith(("!", "%")))
    need = needed_extras(code)
    assert asked == need, f"{py.name}: install cell asks for extras {sorted(asked)}, the imports need {sorted(need)}"


def test_extras_analysis_sees_function_local_and_package_imports():
    # hand-checked: llmcore.alignment.peft imports peft inside a function; the MDP module needs scipy only
    assert "peft" in third_party_imports("from llmcore.alignment import peft")
    reached = third_party_imports("from llmcore.foundation_rl import mdp")
    assert {"scipy", "numpy", "gymnasium"} <= reached and "transformers" not in reached
    assert needed_extras("from llmcore.foundation_rl import mdp") == set()
    assert needed_extras("from llmcore.alignment.peft import apply_lora") == {"hf"}


def test_imports_llmcore_and_shows_source(chapter):
    _, nb, _ = chapter
    code = "\n".join(c.source for c in code_cells(nb))
    assert re.search(r"^(from|import) llmcore", code, re.M)
    assert "show_source(" in code, "show the implementation with show_source (never paste it)"
    assert "pick_device(device)" in code and re.search(r"seed_everything\(seed[,)]", code)


def test_llmcore_modules_imported_by_their_own_names(chapter):
    """``peft.apply_lora``, not ``P.apply_lora``: one-letter aliases meant three modules across chapters."""
    _, nb, _ = chapter
    code = "\n".join(c.source for c in code_cells(nb))
    short = re.findall(r"^from llmcore[\w.]* import \w+ as (\w{1,2})$", code, re.M)
    assert not short, f"import llmcore modules by their own names, not as {short}"


def test_results_cell_checked_by_nbval_with_asserts(chapter):
    _, nb, _ = chapter
    checked = [c for c in code_cells(nb) if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked, "needs a results cell starting with # NBVAL_CHECK_OUTPUT"
    assert any(re.search(r"^assert ", c.source, re.M) for c in checked), "results cell must assert the criteria"


def test_play_cell_with_widgets_ignored_by_nbval(chapter):
    _, nb, _ = chapter
    play = [c for c in code_cells(nb) if "ipywidgets" in c.source]
    assert play, "needs an ipywidgets play cell"
    assert all("nbval-ignore-output" in c.metadata.get("tags", []) for c in play)


def test_exercises_and_references(chapter):
    _, nb, _ = chapter
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "## Exercises" in md and "## References" in md and "{cite}" in md


ADMONITION = re.compile(r"^```\{admonition\} (.+)$", re.M)


def editorial_problems(nb) -> list[str]:
    """What a chapter's markdown lacks of the editorial contract (DESIGN.md, point 9); empty when complete."""
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    problems = [f"heading without Chinese: {h!r}" for h in re.findall(r"^##+ .+$", md, re.M) if not CJK.search(h)]
    boxes = {title.strip(): None for title in ADMONITION.findall(md)}
    for title in ("Where this differs from the paper / production · 与论文和生产系统的差别",
                  "Hardware and cost card · 硬件与成本", "要点 · Key points"):
        if title not in boxes:
            problems.append(f"missing the admonition {title!r}")
    key = re.search(r"^```\{admonition\} 要点 · Key points\n(.*?)^```", md, re.M | re.S)
    if key:
        bullets = re.findall(r"^- (.+(?:\n  .+)*)", key.group(1), re.M)
        if not 5 <= len(bullets) <= 8:
            problems.append(f"Key points needs 5-8 bullets, has {len(bullets)}")
        problems += [f"Key point not in both languages: {b[:50]!r}" for b in bullets
                     if not (CJK.search(b) and re.search(r"[A-Za-z]{4,} [a-z]{2,}", b))]
    ex = re.search(r"^## Exercises / 练习\n(.*?)(?=^## )", md, re.M | re.S)
    if not ex:
        problems.append("missing '## Exercises / 练习'")
    else:
        if len(re.findall(r"^\d+\. ", ex.group(1), re.M)) < 3:
            problems.append("needs 3+ numbered exercises")
        checks = set(re.findall(r"llmcore\.exercises\.(check_\w+)", ex.group(1)))
        if not checks:
            problems.append("no self-checked exercise (llmcore.exercises.check_<name>)")
        problems += [f"{c} is not in llmcore.exercises" for c in sorted(checks - set(exercises.__all__))]
        if ":::{admonition} Solutions\n:class: dropdown" not in ex.group(1):
            problems.append("solutions belong in a collapsed ':::{admonition} Solutions' (:class: dropdown) block")
    return problems


def test_editorial_contract(chapter):
    m, nb, _ = chapter
    problems = editorial_problems(nb)
    assert not problems, f"{m.chapter}: " + "; ".join(problems)


def test_registered_and_in_toc(chapter):
    m, _, _ = chapter
    assert f"file: {m.chapter[:-3]}\n" in TOC, f"{m.chapter} is not in _toc.yml (run tools/gen_toc.py)"


def test_executed_notebook_is_fresh_and_clean(chapter):
    m, nb, ipynb = chapter
    assert ipynb.is_file(), f"{ipynb.name} missing: run tools/execute.py {m.chapter}"
    done = nbformat.read(ipynb, as_version=4)
    ours = [c.source for c in code_cells(nb)]
    theirs = [unpin(c.source) for c in code_cells(done)]
    assert ours == theirs, f"{ipynb.name} is stale: its code cells differ from {m.chapter}; re-execute it"
    md_ours = [c.source for c in nb.cells if c.cell_type == "markdown"]
    md_theirs = [c.source for c in done.cells if c.cell_type == "markdown"]
    assert md_ours == md_theirs, f"{ipynb.name} is stale: markdown differs from {m.chapter}"
    assert done.metadata["kernelspec"]["name"] == "python3"
    for c in code_cells(done):
        assert c.get("execution_count"), f"unexecuted cell in {ipynb.name}: {c.source[:60]!r}"
        for o in c.outputs:
            assert o.output_type != "error", f"{ipynb.name} has an error output: {o.get('ename')}"
    checked = [c for c in code_cells(done) if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert all(c.outputs for c in checked), "the results cell printed nothing"


def unpin(source: str) -> str:
    """An executed install cell with its pinned commit put back to ``@main`` (as in the .py)."""
    return INSTALL_REQ.sub(lambda m: m.group(0).replace(f"@{m.group(2)}\"", '@main"'), source)


def _is_full_clone() -> bool:
    r = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "false"


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_one_parameters_cell_and_a_pinned_install(ipynb):
    """A Colab reader edits the one parameters cell: no papermill injected cell may override it."""
    done = nbformat.read(ipynb, as_version=4)
    nbformat.validate(done)
    tags = [c.metadata.get("tags", []) for c in done.cells]
    assert sum("parameters" in t for t in tags) == 1, f"{ipynb.name}: needs exactly one cell tagged parameters"
    assert not any("injected-parameters" in t for t in tags), \
        f"{ipynb.name}: papermill's injected-parameters cell overrides the parameters cell (tools/execute.py folds it)"
    m = INSTALL_REQ.search(install_cell(done).source)
    assert m and re.fullmatch(r"[0-9a-f]{40}", m.group(2)), \
        f"{ipynb.name}: install cell must pin the commit it was executed with (git+{URL}@<40-hex sha>)"
    if _is_full_clone():
        r = subprocess.run(["git", "cat-file", "-e", f"{m.group(2)}^{{commit}}"], cwd=ROOT, capture_output=True)
        assert r.returncode == 0, f"{ipynb.name}: pinned commit {m.group(2)} is not in this repository's history"
