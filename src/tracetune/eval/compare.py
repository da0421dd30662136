"""`tracetune compare`: runs against a baseline run, per task and overall, with seed 000's
ComparisonResult fields plus intervals and paired tests.

Per task (trials of one task are independent samples):
  success rate with its Wilson interval; delta vs the baseline with Newcombe's interval; Fisher's
  exact p-value; Cohen's h; mean attempts, duration and tokens and their deltas.
Overall (over the tasks both runs share; the tasks are the sample, trials of one task are
correlated):
  the same, with intervals that take tasks and trials as the units: the success rate's Wilson
  interval with the effective sample size of the clustered trials, and the success delta's
  cluster-robust interval over tasks (pairing by task, never narrower than the trial-level
  interval, so never of zero width; `stats.clustered_difference_interval`); plus McNemar on
  paired outcomes (same task and trial, which share their sampling seed when both runs used the
  same base seed). Attempts, duration and tokens are compared on per-task means with the
  Wilcoxon signed-rank test, the paired t-test and its t interval; so are, for agent workflows,
  parse errors, loop detections, steps and tool errors per episode, and the share of runs that
  write (binary per episode: the clustered difference interval, by task).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from tracetune import stats
from tracetune.errors import TracetuneError
from tracetune.eval.metrics import summarize
from tracetune.traces.store import DB_NAME, Store

METRICS = {"attempts": "avg_attempts", "duration_s": "avg_duration_s", "tokens": "avg_tokens"}
"""Per-task-mean metrics compared with paired tests -> the Summary field that holds them."""
AGENT_METRICS = {"parse_errors": "avg_parse_errors", "wrote": "write_rate",
                 "loop_detections": "avg_loop_detections", "steps": "avg_steps",
                 "tool_errors": "avg_tool_errors", "valid_edit": "valid_edit_rate",
                 "fault_edit": "fault_edit_rate"}
"""Agent workflows (repair) add these, from the episodes' tool metrics (Summary.agent)."""
TESTGEN_METRICS = {"pass_at_3": lambda t: t.pass_at[3].mean,
                   "mutation_score": lambda t: t.mutation_score_all.mean}
"""The testgen workflow adds these per-task means (Summary.testgen): Pass@3 (tasks with at least
3 samples) and the mutation score of every file (an invalid one scoring 0)."""
BINARY_METRICS = {"wrote": lambda e: e["metrics"]["wrote"],
                  "valid_edit": lambda e: e["metrics"]["valid_edit"],
                  "fault_edit": lambda e: e["metrics"]["fault_edit"]}
"""Metrics that are the share of a 0/1 value per episode -> that value (their interval is the
clustered difference of proportions, not the t interval)."""


@dataclass(frozen=True)
class ComparisonResult:
    """One model's result on one task (or "overall") against the baseline (seed 000's fields
    first)."""

    model: str
    task: str
    success_rate: float
    avg_attempts: float
    avg_duration: float
    delta_success: float
    """success_rate minus the baseline's, as a fraction (0.05 = 5pp)."""
    p_value: float
    """Fisher's exact test, two-sided."""
    cohens_h: float
    n: int
    successes: int
    ci_low: float
    ci_high: float
    """95% interval of success_rate: Wilson per task; overall, Wilson with the clustered trials'
    effective sample size (`stats.clustered_wilson_interval`)."""
    baseline_rate: float
    delta_ci_low: float
    delta_ci_high: float
    """95% interval of delta_success: Newcombe per task; overall, cluster-robust over tasks
    (`stats.clustered_difference_interval`; Newcombe when the runs share one task)."""
    avg_tokens: float
    delta_attempts: float
    delta_duration: float
    delta_tokens: float
    mcnemar_p: float | None = None
    """Overall only: exact McNemar on outcomes paired by (task, trial)."""
    paired: int = 0
    """Overall only: how many (task, trial) outcomes both runs have."""


@dataclass(frozen=True)
class MetricDelta:
    """A per-task-mean metric (attempts, duration_s, tokens) of a model against the baseline."""

    model: str
    metric: str
    baseline: float
    value: float
    delta: float
    ci_low: float
    ci_high: float
    """95% interval of delta: paired t over tasks; for the share of runs that write (binary per
    episode), the clustered difference interval with tasks weighted equally."""
    p_wilcoxon: float
    p_t: float
    n_tasks: int


@dataclass
class Comparison:
    baseline: str
    models: list[str]
    results: list[ComparisonResult] = field(default_factory=list)
    metrics: list[MetricDelta] = field(default_factory=list)
    baseline_rows: list[ComparisonResult] = field(default_factory=list)
    """The baseline's own per-task and overall rows (deltas zero)."""
    excluded: dict[str, list[str]] = field(default_factory=dict)
    """Per model, task ids left out because only one side has them."""

    def overall(self, model: str) -> ComparisonResult:
        return next(r for r in self.results if r.model == model and r.task == "overall")

    def per_task(self, model: str) -> list[ComparisonResult]:
        return [r for r in self.results if r.model == model and r.task != "overall"]


def load_episodes(run: Path) -> list[dict]:
    """A run directory's finished episodes."""
    run = Path(run)
    if not (run / DB_NAME).is_file():
        raise TracetuneError(f"{run} is not a run directory (no {DB_NAME})")
    store = Store(run)
    try:
        return store.episodes()
    finally:
        store.close()


def compare(runs: dict[str, list[dict]], baseline: str, *,
            tasks: set[str] | None = None, seed: int = 0) -> Comparison:
    """Compare every run in `runs` (label -> episodes) with `runs[baseline]`, optionally only on
    `tasks`. `seed` is accepted for callers and unused: every interval is computed, none
    resampled. Raises TracetuneError for an unknown baseline, a run with no episode (on
    `tasks`), or a run that shares no task with the baseline."""
    if baseline not in runs:
        raise TracetuneError(f"baseline {baseline!r} is not one of the runs "
                             f"({', '.join(runs)})")
    if tasks is not None:
        runs = {k: [e for e in v if e["task_id"] in tasks] for k, v in runs.items()}
    for label, eps in runs.items():
        if not eps:
            raise TracetuneError(f"run {label!r} has no finished episodes"
                                 + (" on the selected tasks" if tasks is not None else ""))
    base = _by_task(runs[baseline])
    out = Comparison(baseline, [k for k in runs if k != baseline])
    out.baseline_rows = _rows(baseline, base, base)
    for label in out.models:
        mine = _by_task(runs[label])
        common = [t for t in base if t in mine]
        out.excluded[label] = sorted(set(base) ^ set(mine))
        if not common:
            raise TracetuneError(f"run {label!r} shares no task with the baseline {baseline!r}")
        a = {t: mine[t] for t in common}
        b = {t: base[t] for t in common}
        out.results += _rows(label, a, b)
        out.metrics += _metric_deltas(label, a, b)
    return out


def compare_dirs(runs: list[Path], *, baseline: str | None = None,
                 labels: list[str] | None = None) -> Comparison:
    """`tracetune compare`: run directories, labelled by their names (or `labels`)."""
    labels = labels or [Path(r).name for r in runs]
    if len(set(labels)) != len(labels):
        raise TracetuneError("two runs have the same label; name them with --label")
    loaded = {label: load_episodes(r) for label, r in zip(labels, runs)}
    if baseline is not None and baseline not in loaded:
        by_path = {str(Path(r)): label for label, r in zip(labels, runs)}
        baseline = by_path.get(str(Path(baseline)), baseline)
    return compare(loaded, baseline or labels[0])


# --- internals -----------------------------------------------------------------------------------

def _by_task(episodes: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in sorted(episodes, key=lambda e: (e["task_id"], e["trial"])):
        out.setdefault(e["task_id"], []).append(e)
    return out


def _mean(eps: list[dict], metric: str) -> float:
    summary = summarize("", eps)
    if metric in AGENT_METRICS:
        return getattr(summary.agent, AGENT_METRICS[metric])
    if metric in TESTGEN_METRICS:
        return TESTGEN_METRICS[metric](summary.testgen)
    return getattr(summary, METRICS[metric])


def metric_names(a: dict[str, list[dict]], b: dict[str, list[dict]]) -> list[str]:
    """The per-task-mean metrics both runs have (agent metrics only when every episode has;
    testgen metrics when every episode is a testgen one, Pass@3 when every task has 3 samples)."""
    eps = [e for side in (a, b) for task in side.values() for e in task]
    testgen = all((e.get("metrics") or {}).get("testgen") for e in eps)
    agent = not testgen and all(e.get("metrics") for e in eps)
    extra = list(AGENT_METRICS) if agent else []
    for later in ("valid_edit", "fault_edit"):  # stores recorded before the metric existed
        if agent and not all(later in e["metrics"] for e in eps):
            extra.remove(later)
    if testgen:
        enough = all(len(task) >= 3 for side in (a, b) for task in side.values())
        extra = [m for m in TESTGEN_METRICS if enough or m != "pass_at_3"]
    return list(METRICS) + extra


def _row(model: str, task: str, a: list[dict], b: list[dict]) -> ComparisonResult:
    sa, sb = summarize(task, a), summarize(task, b)
    dlo, dhi = stats.newcombe_interval(sa.successes, sa.n, sb.successes, sb.n)
    return ComparisonResult(
        model=model, task=task, success_rate=sa.rate, avg_attempts=sa.avg_attempts,
        avg_duration=sa.avg_duration_s, delta_success=sa.rate - sb.rate,
        p_value=stats.fisher_exact(sa.successes, sa.n, sb.successes, sb.n),
        cohens_h=stats.cohens_h(sa.rate, sb.rate), n=sa.n, successes=sa.successes,
        ci_low=sa.ci_low, ci_high=sa.ci_high, baseline_rate=sb.rate, delta_ci_low=dlo,
        delta_ci_high=dhi, avg_tokens=sa.avg_tokens,
        delta_attempts=sa.avg_attempts - sb.avg_attempts,
        delta_duration=sa.avg_duration_s - sb.avg_duration_s,
        delta_tokens=sa.avg_tokens - sb.avg_tokens)


def _grid(a: dict[str, list[dict]], b: dict[str, list[dict]],
          value) -> tuple[list[list[float]], list[list[float]]]:
    """Per-episode 0/1 `value`s of two runs on the same tasks as (tasks, trial slots) grids, NaN
    where a run has no episode; slot i of a task holds the same trial number in both runs."""
    slots = {t: sorted({e["trial"] for e in a[t] + b[t]}) for t in a}
    width = max(len(trials) for trials in slots.values())
    grids = []
    for run in (a, b):
        rows = []
        for task, trials in slots.items():
            row = [float("nan")] * width
            col = {trial: i for i, trial in enumerate(trials)}
            for e in run[task]:
                row[col[e["trial"]]] = float(bool(value(e)))
            rows.append(row)
        grids.append(rows)
    return grids[0], grids[1]


def _rows(model: str, a: dict[str, list[dict]],
          b: dict[str, list[dict]]) -> list[ComparisonResult]:
    rows = [_row(model, t, a[t], b[t]) for t in a]
    all_a = [e for eps in a.values() for e in eps]
    all_b = [e for eps in b.values() for e in eps]
    overall = _row(model, "overall", all_a, all_b)
    # paired outcomes: the same (task, trial) under both runs
    ob = {(e["task_id"], e["trial"]): bool(e["success"]) for e in all_b}
    pairs = [(bool(e["success"]), ob[(e["task_id"], e["trial"])]) for e in all_a
             if (e["task_id"], e["trial"]) in ob]
    a_only = sum(x and not y for x, y in pairs)
    b_only = sum(y and not x for x, y in pairs)
    # tasks are the sample: a cluster-robust interval over tasks (one task: Newcombe's, above)
    if len(rows) >= 2 and a is not b:
        _, lo, hi = stats.clustered_difference_interval(*_grid(a, b, lambda e: e["success"]))
    else:
        lo, hi = overall.delta_ci_low, overall.delta_ci_high
    overall = dataclasses.replace(overall, delta_ci_low=lo, delta_ci_high=hi,
                                  paired=len(pairs),
                                  mcnemar_p=stats.mcnemar(a_only, b_only) if pairs else None)
    return rows + [overall]


def _metric_deltas(model: str, a: dict[str, list[dict]],
                   b: dict[str, list[dict]]) -> list[MetricDelta]:
    out = []
    tasks = list(a)
    for metric in metric_names(a, b):
        x = [_mean(a[t], metric) for t in tasks]
        y = [_mean(b[t], metric) for t in tasks]
        if len(tasks) >= 2:
            if metric in BINARY_METRICS:
                delta, lo, hi = stats.clustered_difference_interval(
                    *_grid(a, b, BINARY_METRICS[metric]), weights="tasks")
            else:
                delta, lo, hi = stats.paired_t_interval(x, y)
            p_w = stats.wilcoxon_signed_rank(x, y)
            p_t = stats.paired_t(x, y)
        else:
            delta, lo, hi, p_w, p_t = x[0] - y[0], -math.inf, math.inf, 1.0, 1.0
        out.append(MetricDelta(model, metric, fmean(y), fmean(x), delta, lo, hi, p_w, p_t,
                               len(tasks)))
    return out
