"""Deterministic, task-level splits: a task is in train when md5(task_id) % 100 < train_pct.

Never by sample: every trajectory of a task lands on the same side, so held-out evaluation never
sees a task that training saw. The hash makes a split stable across machines and releases, and a
task added later does not move any other task.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Literal

from tracetune.errors import TracetuneError
from tracetune.tasks.schema import Task

Split = Literal["all", "train", "test"]
DEFAULT_TRAIN_PCT = 50


def task_bucket(task_id: str) -> int:
    return int(hashlib.md5(task_id.encode("utf-8")).hexdigest(), 16) % 100


def in_train(task_id: str, train_pct: int = DEFAULT_TRAIN_PCT) -> bool:
    return task_bucket(task_id) < train_pct


def select(tasks: Iterable[Task], split: str = "all",
           train_pct: int = DEFAULT_TRAIN_PCT) -> list[Task]:
    if not 0 <= train_pct <= 100:
        raise TracetuneError(f"train_pct must be within 0..100, not {train_pct}")
    if split == "all":
        return list(tasks)
    if split not in ("train", "test"):
        raise TracetuneError(f"unknown split {split!r} (all, train, test)")
    want_train = split == "train"
    return [t for t in tasks if in_train(t.id, train_pct) == want_train]
