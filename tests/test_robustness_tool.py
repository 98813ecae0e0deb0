"""tools/robustness.py: seeds parsing, one real cell, and when a recorded cell stays valid."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import robustness as R  # noqa: E402


def test_parse_seeds():
    assert R.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert R.parse_seeds("0,3") == [0, 3]
    assert R.parse_seeds("2") == [2]


@pytest.fixture(scope="module")
def mdp_cell(tmp_path_factory):
    out, R.OUT = R.OUT, tmp_path_factory.mktemp("robust")
    try:
        yield R.run_cell("mdp", 0, "native", timeout=300)
    finally:
        R.OUT = out


def test_a_cell_records_the_files_its_run_read(mdp_cell):
    assert mdp_cell["passed"] and mdp_cell["rc"] == 0
    files = mdp_cell["files"]
    assert "src/llmcore/foundation_rl/mdp.py" in files and R.REGISTRY in files
    assert not any("alignment" in f for f in files)  # the registry imports a module only when it runs it


def test_a_cell_stays_valid_until_a_file_it_read_changes(mdp_cell):
    assert R.still_valid(mdp_cell)
    # another module's registry row does not count, this module's row and its source files do
    assert R.fingerprint(mdp_cell["files"], "mdp") != R.fingerprint(mdp_cell["files"], "td")
    assert R.fingerprint(mdp_cell["files"] + ["src/llmcore/alignment/grpo.py"], "mdp") != mdp_cell["fingerprint"]
    assert not R.still_valid({**mdp_cell, "fingerprint": "0" * 16})
    assert not R.still_valid({k: v for k, v in mdp_cell.items() if k != "files"})  # older cells: re-run


def test_a_cell_covers_the_package_data_it_had(mdp_cell):
    """A data file added later (a new shipped checkpoint) cannot have changed what an earlier run read, so it
    does not make the cell stale; a change to a data file the cell had does."""
    assert mdp_cell["data"] == R.data_files()
    assert R.fingerprint(mdp_cell["files"], "mdp", mdp_cell["data"][:-1]) != mdp_cell["fingerprint"]
    legacy = {k: v for k, v in mdp_cell.items() if k != "data"}  # recorded before the list was stored
    assert R.cell_data(legacy) == [f for f in R.data_files() if R._added_in(f)]  # the data files its commit had
    assert R.cell_data({**legacy, "commit": "0000000"}) == []
