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
    testgen: TestgenSummary | None = None
    """The testgen workflow: Pass@k, wrong tests, mutation score and coverage."""


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
    valid_edit_rate: float | None = None
    """Share of episodes with a valid edit (a write that changed the task's module and left it
    parseable Python defining the names its tests import: the repair episodes' `valid_edit`);
    None when an episode predates that metric."""
    fault_edit_rate: float | None = None
    """Share of episodes whose valid edit replaced a line the task's reference fix changes (the
    bug's own line, fixed or not: the repair episodes' `fault_edit`); None when an episode
    predates that metric."""


@dataclass(frozen=True)
class Mean:
    """A mean over tasks (each task's mean over its episodes first) with a 95% t-interval over
    tasks: trials of one task are correlated, so the tasks are the sample. n: tasks; the
    interval is (mean, mean) for one task."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        return (f"{scale * self.mean:.{digits}f} [{scale * self.ci_low:.{digits}f}, "
                f"{scale * self.ci_high:.{digits}f}]")


def task_mean(values: dict[str, list[float]]) -> Mean | None:
    """`Mean` of {task: [value per episode]} (tasks without values are left out; None if none)."""
    per_task = [fmean(v) for v in values.values() if v]
    if not per_task:
        return None
    m = fmean(per_task)
    if len(per_task) < 2 or len(set(per_task)) == 1:
        return Mean(m, m, m, len(per_task))
    from scipy import stats as st

    lo, hi = st.t.interval(0.95, len(per_task) - 1, loc=m, scale=st.sem(per_task))
    return Mean(m, max(0.0, float(lo)), min(1.0, float(hi)), len(per_task))


@dataclass(frozen=True)
class TestgenSummary:
    """Seed 001's metrics of generated test files. Pass@k is the unbiased estimator of Chen et
    al. (2021), `stats.pass_at_k`, per task over its n samples (defined for tasks with n >= k),
    a sample passing when its file is valid and, where defined, bug-revealing; the others are
    per-file values averaged per task, then over tasks (`Mean`)."""

    __test__ = False  # not a pytest test class
    pass_at: dict[int, Mean]
    """k -> Pass@k (k = 1, 3)."""
    valid_rate: float
    """Share of episodes whose file is valid."""
    wrong_test_rate: Mean | None
    """Wrong tests / collected tests per file (files that collected tests)."""
    mutation_score: Mean | None
    """Killed / total mutants (valid files)."""
    line_coverage: Mean | None
    branch_coverage: Mean | None
    bug_revealing: float | None
    """Share of valid files that reveal the bug (tasks with a buggy version); None: none."""
    mutation_score_all: Mean | None = None
    """Mutation score of every file, an invalid one scoring 0 (what comparisons use: a model
    that writes fewer valid files is not rewarded for the few it writes)."""


def summarize_testgen(episodes: list[dict]) -> TestgenSummary | None:
    rows = [(e, e["metrics"]) for e in episodes if (e.get("metrics") or {}).get("testgen")]
    if not rows or len(rows) != len(episodes):
        return None
    from tracetune.stats import pass_at_k

    def per_task(key, keep=lambda m: True) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for e, m in rows:
            v = m.get(key) if keep(m) else None
            out.setdefault(e["task_id"], [])
            if v is not None:
                out[e["task_id"]].append(float(v))
        return out

    by_task: dict[str, list[bool]] = {}
    for e, _ in rows:
        by_task.setdefault(e["task_id"], []).append(bool(e["success"]))
    pass_at = {}
    for k in (1, 3):
        vals = {t: [pass_at_k(len(v), sum(v), k)] for t, v in by_task.items() if len(v) >= k}
        got = task_mean(vals)
        if got is not None:
            pass_at[k] = got
    wrong: dict[str, list[float]] = {}
    for e, m in rows:
        if m.get("tests"):
            wrong.setdefault(e["task_id"], []).append(m["wrong_tests"] / m["tests"])
    revealing = [m["bug_revealing"] for _, m in rows if m.get("bug_revealing") is not None]
    return TestgenSummary(
        pass_at=pass_at, valid_rate=fmean(bool(m.get("valid")) for _, m in rows),
        wrong_test_rate=task_mean(wrong),
        mutation_score=task_mean(per_task("mutation_score", lambda m: m.get("valid"))),
        line_coverage=task_mean(per_task("line_coverage")),
        branch_coverage=task_mean(per_task("branch_coverage")),
        bug_revealing=fmean(map(bool, revealing)) if revealing else None,
        mutation_score_all=task_mean({t: [m.get("mutation_score") or 0.0 for e, m in rows
                                          if e["task_id"] == t] for t in by_task}))


def summarize_agent(episodes: list[dict]) -> AgentSummary | None:
    rows = [e["metrics"] for e in episodes
            if e.get("metrics") and not e["metrics"].get("testgen")]
    if not rows or len(rows) != len(episodes):
        return None
    return AgentSummary(
        avg_parse_errors=fmean(m["parse_errors"] for m in rows),
        write_rate=fmean(bool(m["wrote"]) for m in rows),
        avg_loop_detections=fmean(m["loop_detections"] for m in rows),
        avg_steps=fmean(m["steps"] for m in rows),
        avg_tool_errors=fmean(m["tool_errors"] for m in rows),
        valid_edit_rate=fmean(bool(m["valid_edit"]) for m in rows)
        if all("valid_edit" in m for m in rows) else None,
        fault_edit_rate=fmean(bool(m["fault_edit"]) for m in rows)
        if all("fault_edit" in m for m in rows) else None)


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
        testgen=summarize_testgen(episodes),
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
