"""Seed 000's tables from stored episodes: success rate with a 95% interval (Wilson's per
task; over several tasks, Wilson's with the effective sample size of trials clustered in tasks),
average attempts, average duration and tokens, per task and overall; for agent workflows
(repair) also seed 002's tool metrics: parse errors, share of runs that ever write or edit, loop
detections and steps per episode; and why failed episodes failed (`failure_kind`)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from statistics import fmean

from tracetune.stats import clustered_wilson_interval, wilson_interval
from tracetune.traces.store import Store


@dataclass(frozen=True)
class Summary:
    name: str
    """Task id, or "overall"."""
    n: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float
    """95% interval of rate: Wilson's when the episodes are of one task (independent trials);
    over several tasks, `stats.clustered_wilson_interval` (the tasks are the sample)."""
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
    """One Summary of `episodes` (of one task, or of several: "overall")."""
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    per_task: dict[str, list[int]] = {}  # task -> [successes, trials]
    for e in episodes:
        counts = per_task.setdefault(e.get("task_id"), [0, 0])
        counts[0] += bool(e["success"])
        counts[1] += 1
    if len(per_task) >= 2:  # trials of one task are correlated: the tasks are the sample
        lo, hi = clustered_wilson_interval([c[0] for c in per_task.values()],
                                           [c[1] for c in per_task.values()])
    else:
        lo, hi = wilson_interval(k, n)
    wrong = [e["wrong_tests"] for e in episodes if e.get("wrong_tests") is not None]
    writes_tests = any(_writes_tests(e["workflow"]) for e in episodes)
    return Summary(
        name=name, n=n, successes=k, rate=k / n if n else 0.0, ci_low=lo, ci_high=hi,
        avg_attempts=fmean(e["n_attempts"] for e in episodes) if n else 0.0,
        avg_duration_s=fmean(e["duration_s"] for e in episodes) if n else 0.0,
        avg_tokens=fmean(e["prompt_tokens"] + e["completion_tokens"] for e in episodes)
        if n else 0.0,
        wrong_tests=sum(map(bool, wrong)) if writes_tests else None,
        agent=summarize_agent(episodes),
    )


def _writes_tests(workflow: str) -> bool:
    """The workflow's episodes write tests that can be wrong (tdd); False for names this
    release does not know."""
    from tracetune.agents.spec import WORKFLOWS

    info = WORKFLOWS.get(workflow)
    return bool(info and info.writes_tests)


def summarize_run(episodes: list[dict]) -> tuple[list[Summary], Summary]:
    """Per-task summaries (in task order) and the overall one."""
    by_task: dict[str, list[dict]] = {}
    for e in episodes:
        by_task.setdefault(e["task_id"], []).append(e)
    return ([summarize(task, eps) for task, eps in by_task.items()],
            summarize("overall", episodes))


_RAISED = re.compile(r"(?m)^E\s+(\w+(?:Error|Exception|Exit|Interrupt))\b")


def failure_kind(guards: list[dict], finish_reason: str | None = None) -> str | None:
    """Why an attempt failed, from its stored guard results and why its generation stopped
    (None: every guard passed).

    An answer cut at max_tokens (finish_reason "length") that failed is "truncated", and one the
    backend returned no text for is "generation error", whatever its checks said: a cut answer
    is not a wrong one.

    A static guard that rejected the code gives its own name ("syntax", "names", ...). A test run
    gives "timeout"; "could not run" when pytest never ran a test (the module failed to import,
    e.g. the function is missing: collection error); "raised X" when a test raised exception X
    other than an assertion (wrong signature: TypeError, undefined name: NameError, too deep:
    RecursionError); "tests skipped" when tests were skipped, xfailed or deselected and none
    failed (a skip never counts as a pass); and "wrong answer" when the code ran and an assertion
    failed."""
    if finish_reason in ("length", "error") and not all(g["passed"] for g in guards):
        return "truncated" if finish_reason == "length" else "generation error"
    for g in guards:
        if g["passed"]:
            continue
        details = g.get("details") or {}
        if "status" not in details:
            return g["guard"]
        if details["status"] == "timeout":
            return "timeout"
        if details["status"] != "fail":
            return "could not run"
        if details.get("raised"):  # recorded by the sandbox from pytest's crash report
            return f"raised {details['raised']}"
        outcomes = [t[1] for t in details.get("tests", [])]
        if outcomes and "failed" not in outcomes:
            return "tests skipped"
        # Stores written before the sandbox recorded the exception type: read the feedback.
        m = _RAISED.search(g.get("feedback", ""))
        return f"raised {m.group(1)}" if m and m.group(1) != "AssertionError" else "wrong answer"
    return None


def failure_kinds(store: Store, tasks: set[str] | None = None) -> Counter:
    """Failed episodes of a Store by the failure kind of their last attempt (a
    `tracetune.types.Attempt`; restricted to `tasks` when given): {kind: episodes}. "other" when
    the episode has no attempt or its last attempt failed no guard (a repair agent that stopped,
    a tdd episode judged by its tests)."""
    out: Counter = Counter()
    for ep in store.episodes():
        if ep["success"] or (tasks is not None and ep["task_id"] not in tasks):
            continue
        attempts = store.attempts(ep["id"])
        last = attempts[-1] if attempts else None
        kind = failure_kind(last.guards, last.finish_reason) if last else None
        if kind is None and last is not None and last.finish_reason == "length":
            kind = "truncated"  # an agent step cut mid-message (no guard of its own failed)
        out[kind or "other"] += 1
    return out
