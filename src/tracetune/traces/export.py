"""Exports of a run's trajectory store.

JSONL export (`export_jsonl`): one finished episode per line, in task/trial order:
  {"run_id", "model", "suite", then every episode column ("id", "task_id", "trial", "workflow",
   "seed", "status", "success", "wrong_tests", "failed_step", "n_attempts", "duration_s",
   "prompt_tokens", "completion_tokens", "error", "started_at", "finished_at"), "metrics",
   "attempts": [{"id", "episode_id", then every `tracetune.types.Attempt` field ("step",
   "attempt", "seed", "messages", "raw_output", "code", "passed", "guards", "feedback",
   "prompt_tokens", "completion_tokens", "latency_s", "check_s", "facts", "created_at")}]}
success is a bool, wrong_tests a bool or null, facts an agent step's facts or null.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Callable, Iterator

from tracetune.traces.store import DB_NAME, Store


def iter_episodes(store: Store) -> Iterator[dict]:
    """Every finished episode as a dict (the line shape above), with its attempts under
    "attempts". Raises TracetuneError when the store holds no run."""
    run = store.run()
    for ep in store.episodes():
        yield {"run_id": run.id, "model": run.model_spec, "suite": run.suite, **ep,
               "success": bool(ep["success"]),
               "wrong_tests": None if ep["wrong_tests"] is None else bool(ep["wrong_tests"]),
               "attempts": [{"id": rid, "episode_id": ep["id"], **dataclasses.asdict(a)}
                            for rid, a in store.attempt_records(ep["id"])]}


def export_jsonl(run_dir: Path, out: Path | None = None, *, force: bool = False,
                 line: Callable[[dict], dict] | None = None) -> int:
    """Write the run's episodes as JSONL to `out` (stdout when None); returns how many.
    `line` turns each episode dict into the object written (e.g. an ATIF trajectory); default:
    the episode as `iter_episodes` yields it.

    The file is written beside `out` and renamed into place when complete (a failed export
    leaves what was there). Raises TracetuneError when run_dir holds no readable store (see
    `Store`), when `out` is the store itself (or its journal) or a directory, or when `out`
    exists and `force` is not set: checked before anything is opened for writing."""
    from tracetune.staging import atomic_file, check_output_file

    if out is not None:
        db = Path(run_dir) / DB_NAME if Path(run_dir).is_dir() else Path(run_dir)
        check_output_file(out, force=force, inputs=(db, Path(f"{db}-wal"), Path(f"{db}-shm")))
    shape = line or (lambda episode: episode)
    store = Store(run_dir)
    n = 0
    try:
        if out is None:
            for episode in iter_episodes(store):
                sys.stdout.write(json.dumps(shape(episode), ensure_ascii=False) + "\n")
                n += 1
            return n
        with atomic_file(out) as stream:
            for episode in iter_episodes(store):
                stream.write(json.dumps(shape(episode), ensure_ascii=False) + "\n")
                n += 1
    finally:
        store.close()
    return n
