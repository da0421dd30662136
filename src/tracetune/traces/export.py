"""Exports of a run's trajectory store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tracetune.traces.store import Store


def iter_episodes(store: Store):
    """Every finished episode as a dict, with its attempts under "attempts"."""
    run = store.run()
    for ep in store.episodes():
        yield {"run_id": run.id, "model": run.model_spec, "suite": run.suite, **ep,
               "success": bool(ep["success"]),
               "wrong_tests": None if ep["wrong_tests"] is None else bool(ep["wrong_tests"]),
               "attempts": store.attempts(ep["id"])}


def export_jsonl(run_dir: Path, out: Path | None = None) -> int:
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
