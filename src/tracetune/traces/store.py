"""The trajectory store: one SQLite file per run directory (`RUN/trajectories.sqlite`).

Schema (version 2; `meta.schema_version`; a version 1 store is upgraded in place on open):

  run(id, created_at, suite, workflow, model_spec, seed, trials, config_json, packages_json)
      one row: what was run, with which seeds and package versions.
  episode(id, run_id, task_id, trial, workflow, seed, status, success, wrong_tests, failed_step,
          n_attempts, duration_s, prompt_tokens, completion_tokens, error, started_at, finished_at,
          metrics_json)
      one row per (task, trial). status: running -> done. UNIQUE(run_id, task_id, trial).
      metrics_json (v2): agent workflows' per-episode counts, e.g. repair's {"parse_errors",
      "loop_detections", "tool_errors", "writes", "wrote", "steps", "test_runs", "end"}; NULL else.
  attempt(id, episode_id, step, attempt, seed, messages_json, raw_output, code, passed,
          guards_json, feedback, prompt_tokens, completion_tokens, latency_s, check_s, created_at)
      one row per model call. guards_json: [{"guard", "passed", "feedback", "details"}].

Every write is its own transaction: an attempt is either fully recorded or not at all. An episode
counts only once it is `done`; on resume, unfinished episodes are deleted (with their attempts) and
run again from the start with the same derived seeds, so a killed run ends with exactly one row per
(task, trial).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tracetune.errors import TracetuneError

SCHEMA_VERSION = 2
DB_NAME = "trajectories.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, suite TEXT NOT NULL, workflow TEXT NOT NULL,
    model_spec TEXT NOT NULL, seed INTEGER NOT NULL, trials INTEGER NOT NULL,
    config_json TEXT NOT NULL, packages_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS episode (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES run(id), task_id TEXT NOT NULL,
    trial INTEGER NOT NULL, workflow TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    success INTEGER, wrong_tests INTEGER, failed_step TEXT, n_attempts INTEGER,
    duration_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER, error TEXT,
    started_at REAL NOT NULL, finished_at REAL, metrics_json TEXT,
    UNIQUE (run_id, task_id, trial)
);
CREATE TABLE IF NOT EXISTS attempt (
    id INTEGER PRIMARY KEY, episode_id INTEGER NOT NULL REFERENCES episode(id) ON DELETE CASCADE,
    step TEXT NOT NULL, attempt INTEGER NOT NULL, seed INTEGER NOT NULL,
    messages_json TEXT NOT NULL, raw_output TEXT NOT NULL, code TEXT NOT NULL,
    passed INTEGER NOT NULL, guards_json TEXT NOT NULL, feedback TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL, check_s REAL NOT NULL, created_at REAL NOT NULL,
    UNIQUE (episode_id, step, attempt)
);
CREATE INDEX IF NOT EXISTS attempt_episode ON attempt(episode_id);
"""


@dataclass(frozen=True)
class RunInfo:
    id: str
    created_at: float
    suite: str
    workflow: str
    model_spec: str
    seed: int
    trials: int
    config: dict
    packages: dict


class Store:
    """Thread-safe access to one run's SQLite file (one connection, one writer lock)."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        path = Path(path)
        if path.is_dir() or path.suffix != ".sqlite":
            path = path / DB_NAME
        if not create and not path.is_file():
            raise TracetuneError(f"no trajectory store at {path} (is it a run directory?)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            if create:
                self._db.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); commits itself
            with self._tx():
                row = self._db.execute(
                    "SELECT value FROM meta WHERE key='schema_version'").fetchone() \
                    if self._has_table("meta") else None
                if row is None:
                    if not create:
                        raise TracetuneError(f"{path} is not a tracetune trajectory store")
                    self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                     (str(SCHEMA_VERSION),))
                elif int(row["value"]) == 1:  # v1 -> v2: episodes gain metrics_json
                    self._db.execute("ALTER TABLE episode ADD COLUMN metrics_json TEXT")
                    self._db.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                                     (str(SCHEMA_VERSION),))
                elif int(row["value"]) != SCHEMA_VERSION:
                    raise TracetuneError(f"{path} has schema version {row['value']}; this "
                                         f"tracetune reads version {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise TracetuneError(f"{path} is not a readable SQLite trajectory store: {exc}") \
                from None

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                (name,)).fetchone() is not None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # -- run -------------------------------------------------------------------------------------
    def create_run(self, info: RunInfo) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM run").fetchone():
                raise TracetuneError(f"{self.path} already holds a run; use --resume to continue "
                                     "it or choose another --out directory")
            db.execute("INSERT INTO run VALUES (?,?,?,?,?,?,?,?,?)",
                       (info.id, info.created_at, info.suite, info.workflow, info.model_spec,
                        info.seed, info.trials, json.dumps(info.config, sort_keys=True),
                        json.dumps(info.packages, sort_keys=True)))

    def run(self) -> RunInfo:
        with self._lock:
            row = self._db.execute("SELECT * FROM run").fetchone()
        if row is None:
            raise TracetuneError(f"{self.path} holds no run")
        return RunInfo(row["id"], row["created_at"], row["suite"], row["workflow"],
                       row["model_spec"], row["seed"], row["trials"],
                       json.loads(row["config_json"]), json.loads(row["packages_json"]))

    # -- episodes --------------------------------------------------------------------------------
    def done_keys(self) -> set[tuple[str, int]]:
        with self._lock:
            rows = self._db.execute("SELECT task_id, trial FROM episode WHERE status='done'")
            return {(r["task_id"], r["trial"]) for r in rows}

    def drop_unfinished(self) -> int:
        """Delete episodes that never finished (a killed run), with their attempts."""
        with self._tx() as db:
            return db.execute("DELETE FROM episode WHERE status='running'").rowcount

    def start_episode(self, run_id: str, task_id: str, trial: int, workflow: str,
                      seed: int) -> int:
        with self._tx() as db:
            db.execute("DELETE FROM episode WHERE run_id=? AND task_id=? AND trial=? "
                       "AND status='running'", (run_id, task_id, trial))
            cur = db.execute(
                "INSERT INTO episode (run_id, task_id, trial, workflow, seed, status, started_at)"
                " VALUES (?,?,?,?,?, 'running', ?)",
                (run_id, task_id, trial, workflow, seed, time.time()))
            return int(cur.lastrowid)

    def add_attempt(self, episode_id: int, row: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO attempt (episode_id, step, attempt, seed, messages_json, raw_output,"
                " code, passed, guards_json, feedback, prompt_tokens, completion_tokens,"
                " latency_s, check_s, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (episode_id, row["step"], row["attempt"], row["seed"],
                 json.dumps(row["messages"]), row["raw_output"], row["code"], int(row["passed"]),
                 json.dumps(row["guards"]), row["feedback"], row["prompt_tokens"],
                 row["completion_tokens"], row["latency_s"], row["check_s"], time.time()))

    def finish_episode(self, episode_id: int, *, success: bool, wrong_tests: bool | None,
                       failed_step: str | None, n_attempts: int, duration_s: float,
                       prompt_tokens: int, completion_tokens: int, error: str | None,
                       metrics: dict | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE episode SET status='done', success=?, wrong_tests=?, failed_step=?,"
                " n_attempts=?, duration_s=?, prompt_tokens=?, completion_tokens=?, error=?,"
                " finished_at=?, metrics_json=? WHERE id=?",
                (int(success), None if wrong_tests is None else int(wrong_tests), failed_step,
                 n_attempts, duration_s, prompt_tokens, completion_tokens, error, time.time(),
                 None if metrics is None else json.dumps(metrics, sort_keys=True), episode_id))

    def episodes(self, *, done_only: bool = True) -> list[dict]:
        """Episodes as dicts; `metrics` holds the decoded metrics_json (None if absent)."""
        sql = "SELECT * FROM episode" + (" WHERE status='done'" if done_only else "")
        with self._lock:
            rows = [dict(r) for r in self._db.execute(sql + " ORDER BY task_id, trial")]
        for r in rows:
            raw = r.pop("metrics_json", None)
            r["metrics"] = json.loads(raw) if raw else None
        return rows

    def attempts(self, episode_id: int) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM attempt WHERE episode_id=? ORDER BY id",
                                    (episode_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["messages"] = json.loads(d.pop("messages_json"))
            d["guards"] = json.loads(d.pop("guards_json"))
            d["passed"] = bool(d["passed"])
            out.append(d)
        return out
