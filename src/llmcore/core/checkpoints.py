r"""Train once, cache by config hash, validate on load: the one checkpoint cache of the book.

Every model a chapter trains and a later chapter reuses (the tiny LM, the SFT model, the arithmetic
warm start) goes through :func:`train_once`::

    model = train_once("sft", cfg, train=lambda d: ...write files into d...,
                       load=lambda d: ...read them back..., version=1)

**Key.** ``key = sha1(json({config, version, python major.minor, torch major.minor}))[:12]``: a
dataclass (nested dataclasses too) or a dict, plus a version the caller bumps when the recipe
changes, plus the library versions whose kernels change the trained numbers. Each key is one folder
``output/checkpoints/<name>-<key>/``.

**Atomic writes.** ``train`` writes into a fresh ``<name>-<key>.tmp-<pid>`` folder; when it returns,
a ``manifest.json`` (config, and each file's size and sha256) is written last and the folder is
renamed into place. A run killed half-way leaves only a ``.tmp-*`` folder, which is never read (the
next run removes it).

**One trainer at a time.** Two processes that want the same entry (two notebooks re-executed in
parallel by ``make test``) would both train it. :func:`train_once` therefore holds an exclusive
``fcntl.flock`` on ``<name>-<key>.lock`` from the cache check to the rename: the second process
waits, then loads the first one's entry. The lock is advisory and released by the kernel when the
holder dies, so a killed run never blocks the next. (Where ``fcntl`` does not exist -- Windows --
there is no lock and each process trains its own copy, as before.)

**Validation on load.** The manifest must parse, every file it lists must exist with its recorded
size and sha256, and ``load`` must succeed. Otherwise the entry is *invalid*: it is retrained when
the caller can retrain (``retrain=True``, the default), or rejected with a one-line
:class:`~llmcore.core.errors.LLMCoreError` naming the file and the fix -- never a raw traceback.
Weights are read with ``safetensors`` (or ``torch.load(weights_only=True)``), never unpickled.

Cost of the hash check: a few MB read per load (the book's checkpoints are < 10 MB).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

try:
    import fcntl  # POSIX only: the cross-process lock of train_once
except ImportError:  # pragma: no cover -- Windows
    fcntl = None

from llmcore.core.errors import LLMCoreError
from llmcore.core.paths import output_dir

T = TypeVar("T")
MANIFEST = "manifest.json"


def _plain(obj: Any) -> Any:
    """A JSON-able form of ``obj``: dataclasses become dicts (recursively), tuples lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def env_versions() -> dict[str, str]:
    """Python and torch ``major.minor``: trained numbers can change with either (kernels, RNG)."""
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}",
            "torch": ".".join(torch.__version__.split("+")[0].split(".")[:2])}


def config_key(config: Any, version: int = 1, env: bool = True) -> str:
    """12 hex digits of ``sha1`` over the config, the recipe version and (``env``) the library versions."""
    blob = {"config": _plain(config), "version": version, **(env_versions() if env else {})}
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, config: Any, key: str) -> None:
    """Record every file of ``folder`` (size, sha256; top level only) and the config; written last."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"key": key, "config": _plain(config), "files": files}, indent=1))


def check_entry(folder: Path) -> str | None:
    """``None`` when ``folder`` is a complete entry, else why not (one line, naming the file)."""
    man = folder / MANIFEST
    if not man.is_file():
        return f"{man} is missing (an interrupted or older write)"
    try:
        files = json.loads(man.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        return f"{man} is not a valid manifest ({type(e).__name__})"
    for name, meta in files.items():
        p = folder / name
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != meta["bytes"]:
            return f"{p} has {p.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated?)"
        if _sha256(p) != meta["sha256"]:
            return f"{p} does not match its sha256 in the manifest (corrupted)"
    return None


def _alive(pid: str) -> bool:
    """Whether process ``pid`` still runs (its temporary folder may be in use: leave it alone)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def entry_dir(name: str, config: Any, version: int = 1, env: bool = True) -> Path:
    """The folder of ``name``'s cache entry for ``config`` (it may not exist yet)."""
    return output_dir("checkpoints") / f"{name}-{config_key(config, version, env)}"


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if absent) for the ``with`` block."""
    if fcntl is None:  # pragma: no cover -- Windows
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # blocks while another process trains this entry
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def train_once(name: str, config: Any, train: Callable[[Path], None], load: Callable[[Path], T], *,
               version: int = 1, env: bool = True, refresh: bool = False, retrain: bool = True) -> T:
    """``load(entry)`` of the cached entry for ``config``; train it first when absent or invalid.

    ``train(folder)`` writes the entry's files into an empty temporary ``folder``; ``load(folder)``
    reads them back (it should raise on bad content: safetensors and JSON readers do). ``refresh``
    retrains even when a valid entry exists. ``retrain=False`` never trains: a missing or invalid
    entry is an :class:`LLMCoreError` that names the file and the fix.
    """
    key = config_key(config, version, env)
    final = output_dir("checkpoints") / f"{name}-{key}"
    with _exclusive(final.with_name(f"{final.name}.lock")):
        return _train_once(final, key, config, train, load, refresh=refresh, retrain=retrain)


def _train_once(final: Path, key: str, config: Any, train: Callable[[Path], None], load: Callable[[Path], T], *,
                refresh: bool, retrain: bool) -> T:
    """:func:`train_once` for the entry folder ``final``, the caller holding its lock."""
    for stale in final.parent.glob(f"{final.name}.tmp-*"):  # leftovers of killed runs: never read
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    if final.exists() and not refresh:
        problem = check_entry(final)
        if problem is None:
            try:
                return load(final)
            except Exception as e:  # noqa: BLE001 -- any reader error means a bad entry
                first_line = (str(e).splitlines() or [""])[0][:120]
                problem = f"{final} could not be loaded ({type(e).__name__}: {first_line})"
        if not retrain:
            raise LLMCoreError(f"checkpoint cache entry is invalid: {problem}; delete {final} "
                               "(or pass refresh=True) to retrain it")
    elif not final.exists() and not retrain:
        raise LLMCoreError(f"no cached checkpoint at {final}; run the training that creates it "
                           f"(retrain=True) or restore the folder")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        train(tmp)
        write_manifest(tmp, config, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    try:
        tmp.replace(final)
    except OSError:  # another process put a complete entry there meanwhile: keep it, drop ours
        shutil.rmtree(tmp, ignore_errors=True)
    return load(final)
