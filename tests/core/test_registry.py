"""The registry is the one list of modules; the CLI, run.py and smoke test read it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmcore.core import LLMCoreError, registry
from llmcore.core.registry import ALGORITHMS, MODULES, PARTS, get, knowledge_map_markdown, names, rows
from llmcore.core.report import Report

ROOT = Path(__file__).resolve().parents[2]
KNOWLEDGE_MAP = ROOT.parent / "shared" / "KNOWLEDGE_MAP.md"


def test_twenty_seven_unique_rows_in_six_parts():
    assert len(rows()) == 27  # one chapter per knowledge-map row; a chapter may register several modules
    assert len(set(names())) == len(MODULES)
    assert len({m.chapter for m in MODULES}) == 27
    assert {m.part for m in MODULES} == set(PARTS)


def test_every_prerequisite_and_algorithm_refers_to_a_module():
    for m in MODULES:
        for p in m.prerequisites:
            get(p)
    for a in ALGORITHMS:
        get(a.module)


def test_unknown_module_lists_valid_names():
    with pytest.raises(LLMCoreError) as e:
        get("nope")
    assert "mdp" in str(e.value) and "valid modules" in str(e.value)


def test_written_modules_load_a_callable_and_have_their_files():
    for m in MODULES:
        if m.written:
            assert callable(m.load())
            assert (ROOT / m.source).is_file(), f"{m.name}: {m.source} missing"
            assert (ROOT / m.chapter).is_file(), f"{m.name}: {m.chapter} missing"


@pytest.mark.skipif(not KNOWLEDGE_MAP.is_file(), reason="shared/KNOWLEDGE_MAP.md not beside the checkout")
def test_key_points_match_the_seed_knowledge_map():
    text = KNOWLEDGE_MAP.read_text(encoding="utf-8")
    for m in rows():
        assert m.key_points.split(" — ")[0] in text, m.name


def test_knowledge_map_markdown_has_every_row():
    md = knowledge_map_markdown()
    for m in rows():
        assert m.title_zh in md
    assert md.count("\n| ") == 27 + 6  # 27 rows and a header row per part


def test_run_module_resolves_device_and_seed_once(monkeypatch):
    """``run_module`` hands the closed loop a torch.device and a seeded, thread-fixed torch."""
    seen = {}

    def fake_run(toy, device, seed):
        seen.update(device=device, seed=seed, threads=torch.get_num_threads(), draw=torch.rand(1))
        return Report("grpo", "t", toy, str(device), seed)

    monkeypatch.setattr(registry.Module, "load", lambda self: fake_run)
    rep = registry.run_module("grpo", toy=True, device="cpu", seed=7)
    assert seen["device"] == torch.device("cpu") and isinstance(seen["device"], torch.device)
    assert seen["threads"] == 1 == get("grpo").threads  # grpo.THREADS
    torch.manual_seed(7)
    assert torch.equal(seen["draw"], torch.rand(1)) and rep.seed == 7
    assert get("sft").threads == 2 and get("rag").threads == 2  # the default; unwritten modules too
    assert isinstance(rep.device, str) and rep.device == "cpu"
    with pytest.raises(LLMCoreError, match="unknown device"):
        registry.run_module("grpo", device="tpu")
    # multi-process loops keep the validated name ("auto" is a per-world-size backend choice there)
    registry.run_module("zero", toy=True, device="auto", seed=1)
    assert seen["device"] == "auto" and get("zero").spawns_ranks and not get("sft").spawns_ranks


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_cli_list_and_bad_input_exit_2_with_one_line():
    out = run_cli("--list")
    assert out.returncode == 0 and "mdp" in out.stdout and "written" in out.stdout
    for args, needle in [(("--module", "nope"), "valid modules"),
                         (("--module", "mdp", "--device", "tpu"), "unknown device"),
                         (("--module", "mdp", "--seed", "-3"), "seed"),
                         (("--module",), "expected one argument"),
                         ((), "--module")]:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (args, r.stderr)


def test_cli_cuda_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = run_cli("--module", "mdp", "--device", "cuda")
    assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr


def test_cli_runs_mdp_and_writes_report(tmp_path):
    r = run_cli("--module", "mdp", "--toy", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and (tmp_path / "mdp.json").is_file() and (tmp_path / "mdp.md").is_file()
