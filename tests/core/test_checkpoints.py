"""The train-once checkpoint cache: hits, keys, corruption, atomicity (llmcore.core.checkpoints)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmcore.core import checkpoints as C
from llmcore.core.errors import LLMCoreError


@dataclasses.dataclass
class Cfg:
    width: int = 4
    lr: float = 1e-3
    families: tuple[str, ...] = ("add",)


@pytest.fixture(autouse=True)
def _isolated_output(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCORE_OUTPUT", str(tmp_path))


class Trainer:
    """Writes a weight file and a metrics file; counts how often it is asked to train."""

    def __init__(self, value: float = 1.5) -> None:
        self.calls, self.value = 0, value

    def train(self, folder: Path) -> None:
        self.calls += 1
        save_file({"w": torch.full((64, 64), self.value)}, str(folder / "model.safetensors"))
        (folder / "metrics.json").write_text(json.dumps({"loss": self.value}))

    @staticmethod
    def load(folder: Path) -> dict:
        return {"w": load_file(str(folder / "model.safetensors"))["w"],
                "metrics": json.loads((folder / "metrics.json").read_text()), "path": folder}


def cached(trainer: Trainer, cfg=None, **kw):
    return C.train_once("toy", cfg or Cfg(), trainer.train, trainer.load, **kw)


def test_key_is_sha1_of_the_config_version_and_library_versions():
    cfg = Cfg()
    blob = {"config": {"width": 4, "lr": 1e-3, "families": ["add"]}, "version": 1, **C.env_versions()}
    expected = hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]
    assert C.config_key(cfg) == expected
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    assert C.env_versions()["torch"] == f"{major}.{minor}"
    # a dict with the same fields is the same config; nested dataclasses are flattened
    assert C.config_key({"width": 4, "lr": 1e-3, "families": ("add",)}) == C.config_key(cfg)
    assert C.config_key({"a": cfg}) == C.config_key({"a": dataclasses.asdict(cfg)})


def test_different_config_or_version_gives_a_different_key():
    keys = {C.config_key(Cfg()), C.config_key(Cfg(width=5)), C.config_key(Cfg(lr=2e-3)),
            C.config_key(Cfg(families=("add", "sub"))), C.config_key(Cfg(), version=2),
            C.config_key(Cfg(), env=False)}
    assert len(keys) == 6


def test_cache_hit_loads_without_retraining():
    t = Trainer()
    first = cached(t)
    second = cached(t)
    assert t.calls == 1
    assert torch.equal(first["w"], second["w"]) and second["metrics"] == {"loss": 1.5}
    assert first["path"] == second["path"] == C.entry_dir("toy", Cfg())
    cached(t, Cfg(width=8))  # another config: its own entry
    assert t.calls == 2
    cached(t, refresh=True)  # refresh retrains even a valid entry
    assert t.calls == 3


def test_manifest_records_sizes_and_hashes():
    t = Trainer()
    path = cached(t)["path"]
    man = json.loads((path / C.MANIFEST).read_text())
    w = path / "model.safetensors"
    assert man["files"]["model.safetensors"] == {"bytes": w.stat().st_size,
                                                 "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
    assert man["config"]["width"] == 4 and man["key"] == C.config_key(Cfg())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "bad_manifest", "no_manifest"])
def test_corrupt_entry_is_detected_and_retrained(damage):
    t = Trainer()
    path = cached(t)["path"]
    w = path / "model.safetensors"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:100])
    elif damage == "garbage":
        data = bytearray(w.read_bytes())
        data[200:216] = b"\xff" * 16  # same size, different content
        w.write_bytes(bytes(data))
    elif damage == "delete":
        w.unlink()
    elif damage == "bad_manifest":
        (path / C.MANIFEST).write_text("{not json")
    else:
        (path / C.MANIFEST).unlink()
    assert C.check_entry(path) is not None
    again = cached(t)
    assert t.calls == 2
    assert torch.equal(again["w"], torch.full((64, 64), 1.5)) and C.check_entry(path) is None


def test_entry_whose_content_cannot_be_read_is_retrained():
    """The manifest matches (written over an unreadable file), but the reader fails: retrain."""
    t = Trainer()
    path = cached(t)["path"]
    (path / "metrics.json").write_text("{broken")
    C.write_manifest(path, Cfg(), C.config_key(Cfg()))
    assert cached(t)["metrics"] == {"loss": 1.5} and t.calls == 2


def test_corrupt_entry_without_retrain_is_one_clear_error():
    t = Trainer()
    path = cached(t)["path"]
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LLMCoreError) as e:
        cached(t, retrain=False)
    msg = str(e.value)
    assert "\n" not in msg and "model.safetensors" in msg and "delete" in msg
    with pytest.raises(LLMCoreError, match="no cached checkpoint"):
        cached(t, Cfg(width=99), retrain=False)
    assert t.calls == 1


def test_leftover_tmp_folder_is_ignored_and_removed():
    t = Trainer(value=2.0)
    final = C.entry_dir("toy", Cfg())
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    stale = final.with_name(f"{final.name}.tmp-{dead_pid}")
    stale.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(stale / "model.safetensors"))  # a half-written run
    out = cached(t)
    assert t.calls == 1 and torch.equal(out["w"], torch.full((64, 64), 2.0))
    assert not stale.exists() and not any(p.name.startswith(final.name + ".tmp") for p in final.parent.iterdir())


def test_a_training_run_that_dies_leaves_no_entry():
    def boom(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        C.train_once("toy", Cfg(), boom, Trainer.load)
    assert not C.entry_dir("toy", Cfg()).exists()
    t = Trainer()
    cached(t)
    assert t.calls == 1
    entries = [p.name for p in C.entry_dir("toy", Cfg()).parent.iterdir() if not p.name.endswith(".lock")]
    assert entries == [C.entry_dir("toy", Cfg()).name]


#: a process that asks for the same entry as its twin: training takes 1.5 s and logs the trainer's pid
_TWIN = """
import os, sys, time
from pathlib import Path
from llmcore.core import checkpoints as C
log = Path(sys.argv[1])

def train(folder):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(1.5)
    (folder / "value.txt").write_text(str(os.getpid()))

print(C.train_once("twin", {"width": 4}, train, lambda d: (d / "value.txt").read_text()))
"""


def test_two_processes_asking_for_one_entry_train_it_once(tmp_path):
    """Two notebooks run in parallel (``make test``) must not both train the same model: the second waits
    on the entry's lock, then loads the first one's files."""
    log = tmp_path / "trainers.log"
    env = {**os.environ, "LLMCORE_OUTPUT": str(tmp_path / "out")}
    procs = [subprocess.Popen([sys.executable, "-c", _TWIN, str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    trainers = log.read_text().split()
    assert len(trainers) == 1  # one process trained ...
    assert outs == [trainers[0], trainers[0]]  # ... and both loaded its entry
