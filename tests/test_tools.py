"""tools/execute.py: the committed notebook has one parameters cell, a pinned install cell, and the book's Python."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("execute_tool", ROOT / "tools" / "execute.py")
execute_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_tool)

PARAMS = 'toy = True  # small run\ndevice = "auto"  # "cuda" on a GPU # really\nseed = 0\ngamma = 0.99'
URL = "https://github.com/llm-core/llm-core"
INSTALL = ('import importlib.util\nif importlib.util.find_spec("llmcore") is None:\n'
           f'    pip("llmcore[hf] @ git+{URL}@main")')


def notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["papermill"] = {}  # papermill.execute_notebook sets this up before it parameterizes
    untagged = {"tags": []}  # as jupytext writes them (papermill reads every cell's tags)
    nb.cells = [nbformat.v4.new_markdown_cell("# T", metadata=untagged),
                nbformat.v4.new_code_cell(PARAMS, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(INSTALL, metadata=untagged),
                nbformat.v4.new_code_cell("print(toy, device, seed)", metadata=untagged)]
    return nb


def test_fold_papermills_injected_cell_into_the_parameters_cell():
    # papermill itself injects the cell; folding it writes exactly these (hand-written) values back
    nb = parameterize_notebook(notebook(), {"toy": False, "device": "cuda", "seed": 3})
    assert [c.metadata.get("tags") for c in nb.cells][2] == ["injected-parameters"]
    execute_tool.fold_injected_parameters(nb)
    assert len(nb.cells) == 4 and not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert nb.cells[1].source == ('toy = False  # small run\ndevice = "cuda"  # "cuda" on a GPU # really\n'
                                  'seed = 3\ngamma = 0.99')
    nbformat.validate(nb)


def test_default_values_leave_the_parameters_cell_byte_identical():
    nb = parameterize_notebook(notebook(), {"toy": True, "device": "auto", "seed": 0})
    execute_tool.fold_injected_parameters(nb)
    assert nb.cells[1].source == PARAMS


def test_a_parameter_the_cell_does_not_assign_is_an_error():
    with pytest.raises(ValueError, match="does not assign seed"):
        execute_tool.set_parameters("toy = True\n", {"seed": 1})


def test_non_ascii_comment_before_the_value_keeps_offsets_right():
    src = 'device = "auto"\ntoy = True  # 玩具模式\nseed = 0'
    assert execute_tool.set_parameters(src, {"toy": False, "seed": 12}) == 'device = "auto"\ntoy = False  # 玩具模式\nseed = 12'


def test_pin_install_cell_replaces_the_ref_with_the_commit():
    nb = notebook()
    sha = "0123456789abcdef0123456789abcdef01234567"
    execute_tool.pin_install_cell(nb, URL, sha)
    assert nb.cells[2].source.endswith(f'pip("llmcore[hf] @ git+{URL}@{sha}")')
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('find_spec("llmcore")\npip("llmcore")')])
    with pytest.raises(ValueError, match="install cell"):
        execute_tool.pin_install_cell(other, URL, sha)


def test_book_python_and_repository_are_read_from_the_config():
    assert re.fullmatch(r"3\.\d+", execute_tool.book_python())
    assert execute_tool.repository_url().startswith("https://")


def test_another_python_is_refused_with_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setattr(execute_tool, "book_python", lambda: "2.7")
    assert execute_tool.main(["chapters/01_foundation_rl/01_mdp.py"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Python 2.7" in err and "--any-python" in err
    # the override gets past the guard (to the next check: a path that is not a chapter)
    assert execute_tool.main(["--any-python", "no_such_chapter.txt"]) == 2
    assert "not a chapter .py file" in capsys.readouterr().err

