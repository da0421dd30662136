"""Seed 000's tables from stored episodes: success rate with a 95% Wilson interval, average
attempts, average duration and tokens, per task and overall; for agent workflows (repair) also
seed 002's tool metrics: parse errors, share of runs that ever write or edit, loop detections and
steps per episode."""

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
    agent: AgentSummary | None = None
    """Agent workflows (episodes that recorded metrics): the tool-use metrics."""


@dataclass(frozen=True)
class AgentSummary:
    avg_parse_errors: float
    """Invalid protocol messages per episode."""
    write_rate: float
    """Share of episodes that ever wrote or edited a file successfully."""
    avg_loop_detections: float
    avg_steps: float
    """Assistant messages (tool calls and the final answer) per episode."""
    avg_tool_errors: float


def summarize_agent(episodes: list[dict]) -> AgentSummary | None:
    rows = [e["metrics"] for e in episodes if e.get("metrics")]
    if not rows or len(rows) != len(episodes):
        return None
    return AgentSummary(
        avg_parse_errors=fmean(m["parse_errors"] for m in rows),
        write_rate=fmean(bool(m["wrote"]) for m in rows),
        avg_loop_detections=fmean(m["loop_detections"] for m in rows),
        avg_steps=fmean(m["steps"] for m in rows),
        avg_tool_errors=fmean(m["tool_errors"] for m in rows))


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
        agent=summarize_agent(episodes),
    )


def summarize_run(episodes: list[dict]) -> tuple[list[Summary], Summary]:
    """Per-task summaries (in task order) and the overall one."""
    by_task: dict[str, list[dict]] = {}
    for e in episodes:
        by_task.setdefault(e["task_id"], []).append(e)
    return ([summarize(task, eps) for task, eps in by_task.items()],
            summarize("overall", episodes))
