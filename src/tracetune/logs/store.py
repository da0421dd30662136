"""The interaction store: one SQLite file, `interactions.sqlite`, in a run directory.

Schema (version 1, `meta.schema_version`):

  interaction(id TEXT PRIMARY KEY, started_at, messages_json, response, params_json,
              tool_calls_json, model, provider, role, agent, status, error, latency_s, ttft_s,
              prompt_tokens, completion_tokens, stream, source, session_id, meta_json)
      one row per `tracetune.logs.record.Interaction`, its fields one to one (JSON for the
      nested ones).

Every record is one transaction in write-ahead-log mode: it is in the file whole or not at all,
and a committed record survives `kill -9` of the writing process (SQLite's WAL guarantees
durability against a process crash at `synchronous=NORMAL`; only a power loss can roll back the
last commits). Several processes may write one store at once (SQLite's locking; a writer waits up
to 30 s for the lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator

from tracetune.errors import TracetuneError
from tracetune.logs.record import ROLES, Interaction

DB_NAME = "interactions.sqlite"
SCHEMA_VERSION = 1

_COLUMNS = ("id", "started_at", "messages_json", "response", "params_json", "tool_calls_json",
            "model", "provider", "role", "agent", "status", "error", "latency_s", "ttft_s",
            "prompt_tokens", "completion_tokens", "stream", "source", "session_id", "meta_json")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interaction (
    id TEXT PRIMARY KEY, started_at REAL NOT NULL, messages_json TEXT NOT NULL,
    response TEXT NOT NULL, params_json TEXT NOT NULL, tool_calls_json TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT NOT NULL, role TEXT, agent TEXT,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')), error TEXT, latency_s REAL,
    ttft_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER, stream INTEGER NOT NULL,
    source TEXT NOT NULL, session_id TEXT, meta_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS interaction_time ON interaction(started_at);
"""


def store_path(where: Path) -> Path:
    """`where` itself when it names a .sqlite file, else `where/interactions.sqlite`."""
    where = Path(where)
    return where if where.suffix == ".sqlite" else where / DB_NAME


class LogStore:
    """An interaction store, opened (and created with `create`) at `where` (a run directory or
    the .sqlite file). Thread-safe: one connection behind a lock.

    Raises TracetuneError when the store does not exist and `create` is false, or when the file
    is not an interaction store of a version this tracetune reads."""

    def __init__(self, where: Path, *, create: bool = False) -> None:
        self.path = store_path(where)
        for parent in (self.path.parent, *self.path.parent.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise TracetuneError(f"{parent} is a file, not a folder for an interaction "
                                         "store")
                break
        if not self.path.is_file():
            if not create:
                raise TracetuneError(f"no interaction store at {self.path} (record one with "
                                     "`tracetune proxy` or `tracetune import`)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise TracetuneError(f"{self.path} is not an interaction store ({exc})") from None
        if row is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise TracetuneError(f"{self.path} has schema version {row[0]}; this tracetune "
                                 f"reads up to {SCHEMA_VERSION} (upgrade tracetune)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "LogStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------
    def add(self, rec: Interaction) -> bool:
        """Record one interaction in its own transaction. Returns False (and writes nothing)
        when a record with its id is already there."""
        return self.add_many([rec]) == 1

    def add_many(self, recs: Iterable[Interaction]) -> int:
        """Record several interactions in one transaction (all or none); those whose id is
        already stored are skipped. Returns how many were added."""
        rows = [_row(r) for r in recs]
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                cur.executemany(f"INSERT OR IGNORE INTO interaction ({', '.join(_COLUMNS)}) "
                                f"VALUES ({', '.join('?' * len(_COLUMNS))})", rows)
                added = self._db.total_changes - before
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return added

    def set_roles(self, roles: dict[str, str]) -> None:
        """Set the role of each interaction id in `roles` (one transaction)."""
        bad = sorted(set(roles.values()) - set(ROLES))
        if bad:
            raise TracetuneError(f"unknown role(s) {', '.join(bad)} (one of {', '.join(ROLES)})")
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            cur.executemany("UPDATE interaction SET role=? WHERE id=?",
                            [(role, i) for i, role in roles.items()])
            cur.execute("COMMIT")

    # --- reading -----------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM interaction").fetchone()[0]

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM interaction")}

    def interactions(self) -> Iterator[Interaction]:
        """Every record, oldest first (ties by id)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM interaction "
                                    "ORDER BY started_at, id").fetchall()
        for row in rows:
            yield _record(row)

    def __iter__(self) -> Iterator[Interaction]:
        return self.interactions()


def _row(r: Interaction) -> tuple:
    dumps = lambda v: json.dumps(v, ensure_ascii=False, sort_keys=True)  # noqa: E731
    return (r.id, r.started_at, dumps(list(r.messages)), r.response, dumps(r.params),
            dumps(list(r.tool_calls)), r.model, r.provider, r.role, r.agent, r.status, r.error,
            r.latency_s, r.ttft_s, r.prompt_tokens, r.completion_tokens, int(r.stream),
            r.source, r.session_id, dumps(r.meta))


def _record(row: tuple) -> Interaction:
    d = dict(zip(_COLUMNS, row))
    return Interaction(
        id=d["id"], started_at=d["started_at"], messages=tuple(json.loads(d["messages_json"])),
        response=d["response"], params=json.loads(d["params_json"]),
        tool_calls=tuple(json.loads(d["tool_calls_json"])), model=d["model"],
        provider=d["provider"], role=d["role"], agent=d["agent"], status=d["status"],
        error=d["error"], latency_s=d["latency_s"], ttft_s=d["ttft_s"],
        prompt_tokens=d["prompt_tokens"], completion_tokens=d["completion_tokens"],
        stream=bool(d["stream"]), source=d["source"], session_id=d["session_id"],
        meta=json.loads(d["meta_json"]))
