"""The trajectory store: one SQLite file per run directory (`RUN/trajectories.sqlite`).

Schema (version 4; `meta.schema_version`; a version 1, 2 or 3 store is upgraded in place on open,
one version per transaction):

  run(id, created_at, suite, workflow, model_spec, seed, trials, config_json, packages_json)
      one row: what was run, with which seeds and package versions.
  episode(id, run_id, task_id, trial, workflow, seed, status, success, wrong_tests, failed_step,
          n_attempts, duration_s, prompt_tokens, completion_tokens, error, started_at, finished_at,
          metrics_json)
      one row per (task, trial). status: running -> done. UNIQUE(run_id, task_id, trial).
      metrics_json (v2): agent workflows' per-episode counts, e.g. repair's {"parse_errors",
      "loop_detections", "tool_errors", "writes", "module_edits", "fault_edits", "wrote",
      "valid_edit", "fault_edit", "steps", "test_runs", "end"}; NULL else.
  attempt(id, episode_id, step, attempt, seed, messages_json, raw_output, code, passed,
          guards_json, feedback, prompt_tokens, completion_tokens, latency_s, check_s, created_at,
          facts_json, finish_reason)
      one row per model call: a `tracetune.types.Attempt` (`add_attempt` / `attempts`).
      guards_json: [{"guard", "passed", "feedback", "details"?}], details being a sandbox verdict
      (`SandboxResult.verdict()`) or a static guard's findings.
      facts_json (v3): an agent step's facts {"kind", "name", "tool_ok", "tests"}; NULL for
      guarded-workflow attempts.
      finish_reason (v4): why generation stopped: stop, length (cut at max_tokens) or error;
      NULL for attempts recorded before v4 (not known).

Upgrades: v1 -> v2 adds episode.metrics_json. v2 -> v3 adds attempt.facts_json and moves an agent
step's facts there out of its first guard (a v2 repair step recorded them as
guards_json[0] = {"guard": "protocol", ..., "details": facts}); the guard keeps guard, passed and
feedback, so an upgraded repair run reads exactly like one recorded by v3. v3 -> v4 adds
attempt.finish_reason (NULL: recorded before finish reasons were kept).

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
from typing import Iterator

from tracetune.errors import TracetuneError
from tracetune.types import Attempt

SCHEMA_VERSION = 4
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
    latency_s REAL NOT NULL, check_s REAL NOT NULL, created_at REAL NOT NULL, facts_json TEXT,
    finish_reason TEXT,
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
    """Thread-safe access to one run's SQLite file (one connection, one writer lock).

    Opening a store of an older schema upgrades it in place (see the module docstring).
    Raises TracetuneError when the file is missing (unless `create`), is not SQLite, is not a
    tracetune store, or has a schema newer than this code reads."""

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
        except sqlite3.DatabaseError as exc:
            raise TracetuneError(f"{path} is not a readable SQLite trajectory store: {exc}") \
                from None
        try:
            self._open(create)
        except BaseException as exc:
            self._db.close()  # a refused or failed open leaves no connection behind
            if isinstance(exc, sqlite3.DatabaseError):
                raise TracetuneError(f"{path} is not a readable SQLite trajectory store: {exc}") \
                    from None
            raise

    def _open(self, create: bool) -> None:
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        if create:
            self._db.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); commits itself
        with self._tx():
            version = self._version()
            if version is None:
                if not create:
                    raise TracetuneError(f"{self.path} is not a tracetune trajectory store")
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                 (str(SCHEMA_VERSION),))
                version = SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise TracetuneError(f"{self.path} has schema version {version}, newer than this "
                                 f"tracetune (it reads version {SCHEMA_VERSION} and older); "
                                 "upgrade tracetune to open it")
        self._upgrade(version)

    def _version(self) -> int | None:
        """The stored schema version; None when the file has no tracetune meta table."""
        if not self._has_table("meta"):
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return None
        try:
            version = int(row["value"])
        except ValueError:
            version = 0
        if version < 1:
            raise TracetuneError(f"{self.path} has an unknown schema version {row['value']!r}")
        return version

    def _upgrade(self, version: int) -> None:
        """Bring an older store to SCHEMA_VERSION, one version per transaction: a crash between
        steps leaves a consistent store of an intermediate version, upgraded on the next open.
        Each step re-reads the version inside its transaction, so two processes opening the same
        old store do not both apply it."""
        while version < SCHEMA_VERSION:
            try:
                with self._tx() as db:
                    version = self._version() or SCHEMA_VERSION
                    if version >= SCHEMA_VERSION:
                        break
                    _UPGRADES[version](db)
                    version += 1
                    db.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                               (str(version),))
            except sqlite3.OperationalError as exc:  # e.g. a read-only copy of an old run
                raise TracetuneError(f"{self.path} has schema version {version} and must be "
                                     f"upgraded in place to {SCHEMA_VERSION}, which failed: "
                                     f"{exc}") from None

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

    def get_meta(self, key: str) -> str | None:
        """A value of the `meta` table (schema_version, tasks: the run's task fingerprints);
        None when absent."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of the `meta` table (not schema_version, which the store manages)."""
        if key == "schema_version":
            raise ValueError("schema_version is managed by the store")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def add_attempt(self, episode_id: int, attempt: Attempt) -> None:
        """Record one attempt of an episode (created_at is the time of this call; the
        argument's own created_at is ignored and left as it is).

        Raises TypeError for anything but a `tracetune.types.Attempt`, and sqlite3.IntegrityError
        when the episode already holds this (step, attempt) or does not exist."""
        if not isinstance(attempt, Attempt):
            raise TypeError(f"add_attempt takes a tracetune.types.Attempt, not "
                            f"{type(attempt).__name__}")
        a = attempt
        with self._tx() as db:
            db.execute(
                "INSERT INTO attempt (episode_id, step, attempt, seed, messages_json, raw_output,"
                " code, passed, guards_json, feedback, prompt_tokens, completion_tokens,"
                " latency_s, check_s, created_at, facts_json, finish_reason)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (episode_id, a.step, a.attempt, a.seed, json.dumps(a.messages), a.raw_output,
                 a.code, int(a.passed), json.dumps(a.guards), a.feedback, a.prompt_tokens,
                 a.completion_tokens, a.latency_s, a.check_s, time.time(),
                 None if a.facts is None else json.dumps(a.facts), a.finish_reason))

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

    def attempts(self, episode_id: int) -> list[Attempt]:
        """The episode's attempts in recording order (created_at as stored; [] for an unknown
        episode)."""
        return [a for _, a in self.attempt_records(episode_id)]

    def attempt_records(self, episode_id: int) -> list[tuple[int, Attempt]]:
        """(attempt table id, attempt) pairs in recording order: `attempts` with the row ids,
        for exports that name each stored row."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM attempt WHERE episode_id=? ORDER BY id",
                                    (episode_id,)).fetchall()
        return [(r["id"], _attempt(r)) for r in rows]


def _attempt(r: sqlite3.Row) -> Attempt:
    return Attempt(
        step=r["step"], attempt=r["attempt"], seed=r["seed"],
        messages=json.loads(r["messages_json"]), raw_output=r["raw_output"], code=r["code"],
        passed=bool(r["passed"]), guards=json.loads(r["guards_json"]), feedback=r["feedback"],
        prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
        latency_s=r["latency_s"], check_s=r["check_s"],
        facts=None if r["facts_json"] is None else json.loads(r["facts_json"]),
        finish_reason=r["finish_reason"], created_at=r["created_at"])


# -- upgrades: _UPGRADES[v](db) turns a version-v store into a version-(v + 1) one ---------------
AGENT_GUARD = "protocol"
"""The first guard of an agent step (tool protocol) in every schema version."""


def _v1_to_v2(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE episode ADD COLUMN metrics_json TEXT")


def _v2_to_v3(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE attempt ADD COLUMN facts_json TEXT")
    # A v2 agent step kept its facts in guards[0].details, where other rows keep sandbox verdicts.
    # The LIKE only narrows the scan; the JSON decides.
    rows = db.execute("SELECT id, guards_json FROM attempt WHERE guards_json LIKE ?",
                      (f'%"{AGENT_GUARD}"%',)).fetchall()
    for r in rows:
        guards = json.loads(r["guards_json"])
        if not guards or not isinstance(guards[0], dict) or guards[0].get("guard") != AGENT_GUARD:
            continue
        # `or {}`: a protocol guard without details still marks an agent step (the v2 miner
        # read such a step as one of unknown kind), so it must not become a guarded attempt.
        facts = guards[0].pop("details", None) or {}
        db.execute("UPDATE attempt SET guards_json=?, facts_json=? WHERE id=?",
                   (json.dumps(guards), json.dumps(facts), r["id"]))


def _v3_to_v4(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE attempt ADD COLUMN finish_reason TEXT")


_UPGRADES = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}
