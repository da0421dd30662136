"""Seed 000's tables from stored episodes: success rate with a 95% Wilson interval, average
attempts, average duration and tokens, per task and overall."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from tracetune.stats import wilson_interval


@dataclass(frozen=True)
class Summary:
    name: str
    """Task id, or "overall"."""
    n: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float
    avg_attempts: float
    avg_duration_s: float
    avg_tokens: float
    """Prompt + completion tokens per episode."""
    wrong_tests: int | None
    """tdd: episodes whose accepted generated tests fail on the reference (None: not tdd)."""


def summarize(name: str, episodes: list[dict]) -> Summary:
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    lo, hi = wilson_interval(k, n)
    wrong = [e["wrong_tests"] for e in episodes if e.get("wrong_tests") is not None]
    is_tdd = any(e["workflow"] == "tdd" for e in episodes)
    return Summary(
        name=name, n=n, successes=k, rate=k / n if n else 0.0, ci_low=lo, ci_high=hi,
        avg_attempts=fmean(e["n_attempts"] for e in episodes) if n else 0.0,
        avg_duration_s=fmean(e["duration_s"] for e in episodes) if n else 0.0,
        avg_tokens=fmean(e["prompt_tokens"] + e["completion_tokens"] for e in episodes)
        if n else 0.0,
        wrong_tests=sum(map(bool, wrong)) if is_tdd else None,
    )


def summarize_run(episodes: list[dict]) -> tuple[list[Summary], Summary]:
    """Per-task summaries (in task order) and the overall one."""
    by_task: dict[str, list[dict]] = {}
    for e in episodes:
        by_task.setdefault(e["task_id"], []).append(e)
    return ([summarize(task, eps) for task, eps in by_task.items()],
            summarize("overall", episodes))
