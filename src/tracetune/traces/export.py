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
from typing import Iterator

from tracetune.traces.store import Store


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


def export_jsonl(run_dir: Path, out: Path | None = None) -> int:
    """Write the run's episodes as JSONL to `out` (stdout when None); returns how many.
    Raises TracetuneError when run_dir holds no readable store (see `Store`)."""
    store = Store(run_dir)
    n = 0
    stream = open(out, "w", encoding="utf-8") if out is not None else sys.stdout
    try:
        for episode in iter_episodes(store):
            stream.write(json.dumps(episode, ensure_ascii=False) + "\n")
            n += 1
    finally:
        if out is not None:
            stream.close()
        store.close()
    return n
