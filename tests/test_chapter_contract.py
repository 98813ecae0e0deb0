"""The chapter contract of DESIGN.md, checked for every chapter (text-level, no execution).

Run one module's checks with ``pytest tests/test_chapter_contract.py -k <module>``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from llmcore.core.registry import MODULES, rows

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = (ROOT / "_toc.yml").read_text(encoding="utf-8")
CJK = re.compile(r"[\u4e00-\u9fff]")
WRITTEN = [m for m in rows() if (ROOT / m.chapter).is_file()]


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


def test_install_cell_uses_the_configured_repository(chapter):
    _, nb, _ = chapter
    url = CONFIG["repository"]["url"]
    install = [c for c in code_cells(nb) if "pip" in c.source and "find_spec(\"llmcore\")" in c.source]
    assert install, "needs the Colab install cell"
    assert f"git+{url}" in install[0].source, f"install cell must use repository.url {url}"


def test_imports_llmcore_and_shows_source(chapter):
    _, nb, _ = chapter
    code = "\n".join(c.source for c in code_cells(nb))
    assert re.search(r"^(from|import) llmcore", code, re.M)
    assert "show_source(" in code, "show the implementation with show_source (never paste it)"
    assert "pick_device(device)" in code and re.search(r"seed_everything\(seed[,)]", code)


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


def test_registered_and_in_toc(chapter):
    m, _, _ = chapter
    assert f"file: {m.chapter[:-3]}\n" in TOC, f"{m.chapter} is not in _toc.yml (run tools/gen_toc.py)"


def test_executed_notebook_is_fresh_and_clean(chapter):
    m, nb, ipynb = chapter
    assert ipynb.is_file(), f"{ipynb.name} missing: run tools/execute.py {m.chapter}"
    done = nbformat.read(ipynb, as_version=4)
    ours = [c.source for c in code_cells(nb)]
    theirs = [c.source for c in code_cells(done)]
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
    injected = [c for c in done.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert all("remove-cell" in c.metadata["tags"] for c in injected), "injected parameters must be hidden"
