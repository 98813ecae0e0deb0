"""Checkpoints of a state graph in SQLite (a real file): one row per finished superstep, plus the pending writes
and interrupts of the step in progress.

Tables (``thread`` = one conversation / run; ``step`` = superstep number, 0 = the input):

* ``checkpoints(thread, step, state, next, barriers, routes)`` — the state after ``step``, the nodes triggered for
  ``step + 1``, the fan-in progress of every join, the routing decisions taken in ``step`` (JSON columns);
* ``pending(thread, step, node, result)`` — the update and triggers of a node that finished inside ``step`` before
  the step as a whole failed or paused; a resume does not run it again;
* ``interrupts(thread, step, node, payload, resumes)`` — a node waiting for a human, and the answers it already got.

Every write is its own committed transaction, so a process killed at any instant leaves the last finished
superstep on disk. State must be JSON-serialisable.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from llmcore.core.errors import LLMCoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (thread TEXT, step INTEGER, state TEXT, next TEXT, barriers TEXT,
                                        routes TEXT, PRIMARY KEY (thread, step));
CREATE TABLE IF NOT EXISTS pending (thread TEXT, step INTEGER, node TEXT, result TEXT,
                                    PRIMARY KEY (thread, step, node));
CREATE TABLE IF NOT EXISTS interrupts (thread TEXT, step INTEGER, node TEXT, payload TEXT, resumes TEXT,
                                       PRIMARY KEY (thread, step, node));
"""


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True)
    except TypeError as exc:
        raise LLMCoreError(f"cannot checkpoint {what}: {exc} (graph state must be JSON-serialisable)") from None


class SQLiteCheckpointer:
    """Save and load graph checkpoints in the SQLite file at ``path`` (created with its tables if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise LLMCoreError(f"checkpoint folder {self.path.parent} does not exist")
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        # one short-lived connection per call: nothing stays open across a crash, any process can read the file
        return sqlite3.connect(self.path)

    def _exec(self, sql: str, args: tuple = ()) -> list[tuple]:
        db = self._db()
        try:
            with db:  # commits on success
                rows = db.execute(sql, args).fetchall()
        finally:
            db.close()
        return rows

    def reset(self, thread: str) -> None:
        """Forget a thread (a fresh start on it)."""
        for table in ("checkpoints", "pending", "interrupts"):
            self._exec(f"DELETE FROM {table} WHERE thread = ?", (thread,))

    def save(self, thread: str, step: int, state: dict, nxt: list[str], barriers: dict, routes: list) -> None:
        """Commit superstep ``step``; the pending writes and interrupts of that step are cleared with it."""
        db = self._db()
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
                           (thread, step, _dumps(state, "the state"), json.dumps(nxt), json.dumps(barriers),
                            json.dumps(routes)))
                db.execute("DELETE FROM pending WHERE thread = ? AND step <= ?", (thread, step))
                db.execute("DELETE FROM interrupts WHERE thread = ? AND step <= ?", (thread, step))
        finally:
            db.close()

    def latest(self, thread: str) -> dict[str, Any] | None:
        """The last committed checkpoint of ``thread`` (``step``, ``state``, ``next``, ``barriers``), or None."""
        rows = self._exec("SELECT step, state, next, barriers FROM checkpoints WHERE thread = ? "
                          "ORDER BY step DESC LIMIT 1", (thread,))
        if not rows:
            return None
        step, state, nxt, barriers = rows[0]
        return {"step": step, "state": json.loads(state), "next": json.loads(nxt), "barriers": json.loads(barriers)}

    def history(self, thread: str) -> list[dict[str, Any]]:
        """Every committed state of ``thread`` in step order (step 0 = after the input)."""
        rows = self._exec("SELECT state FROM checkpoints WHERE thread = ? ORDER BY step", (thread,))
        return [json.loads(r[0]) for r in rows]

    def routes(self, thread: str) -> list[tuple[int, str, tuple[str, ...]]]:
        """Every routing decision of ``thread`` in step order: ``(step, source, targets)``."""
        rows = self._exec("SELECT routes FROM checkpoints WHERE thread = ? ORDER BY step", (thread,))
        return [(s, src, tuple(t)) for r in rows for s, src, t in json.loads(r[0])]

    def save_pending(self, thread: str, step: int, node: str, result: dict) -> None:
        self._exec("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
                   (thread, step, node, _dumps(result, f"node {node!r}'s update")))

    def pending(self, thread: str, step: int) -> dict[str, dict]:
        """``{node: {"update", "triggers", "routes"}}`` of nodes that finished inside the unfinished ``step``."""
        rows = self._exec("SELECT node, result FROM pending WHERE thread = ? AND step = ?", (thread, step))
        out = {}
        for node, result in rows:
            r = json.loads(result)
            r["routes"] = [(s, src, tuple(t)) for s, src, t in r["routes"]]
            out[node] = r
        return out

    def save_interrupt(self, thread: str, step: int, node: str, payload: Any, resumes: list) -> None:
        self._exec("INSERT OR REPLACE INTO interrupts VALUES (?, ?, ?, ?, ?)",
                   (thread, step, node, _dumps(payload, "the interrupt payload"), _dumps(resumes, "the answers")))

    def interrupts(self, thread: str, step: int) -> dict[str, dict]:
        """``{node: {"payload", "resumes"}}`` of nodes of ``step`` waiting for a human."""
        rows = self._exec("SELECT node, payload, resumes FROM interrupts WHERE thread = ? AND step = ?",
                          (thread, step))
        return {n: {"payload": json.loads(p), "resumes": json.loads(r)} for n, p, r in rows}

    def count(self, thread: str) -> int:
        """Number of committed checkpoints of ``thread``."""
        return int(self._exec("SELECT COUNT(*) FROM checkpoints WHERE thread = ?", (thread,))[0][0])
