"""Terminal tables (rich) for runs."""

from __future__ import annotations

from rich.table import Table

from tracetune.eval.metrics import Summary
from tracetune.traces.store import RunInfo


AGENT_COLUMNS = ("parse errors", "wrote", "valid edit", "fault edit", "loops", "steps")


def agent_cells(s: Summary) -> list[str]:
    """parse errors / episode, share of episodes that wrote, share with a valid edit, share whose
    valid edit replaced the bug's line ("-" for episodes recorded before either metric), loop
    detections / episode, steps."""
    a = s.agent
    if a is None:
        return ["-"] * len(AGENT_COLUMNS)
    valid, fault = ("-" if rate is None else f"{100 * rate:.0f}%"
                    for rate in (a.valid_edit_rate, a.fault_edit_rate))
    return [f"{a.avg_parse_errors:.2f}", f"{100 * a.write_rate:.0f}%", valid, fault,
            f"{a.avg_loop_detections:.2f}", f"{a.avg_steps:.2f}"]


def testgen_table(run: RunInfo, rows: list[Summary], overall: Summary) -> Table:
    """The testgen workflow's metrics per task and overall: Pass@1, Pass@3, valid files, wrong-test
    rate, mutation score, line and branch coverage (percent; overall with 95% intervals over
    tasks)."""
    table = Table(title=f"{run.suite} / {run.workflow} / {run.model_spec}: test files "
                        f"({run.trials} sample{'s' if run.trials != 1 else ''} a task)")
    if overall.testgen is not None and 3 not in overall.testgen.pass_at:
        table.caption = "Pass@3 needs at least 3 samples a task (--trials 3)"
    bugs = overall.testgen is not None and overall.testgen.bug_revealing is not None
    for col in ("task", "Pass@1", "Pass@3", "valid", "wrong tests", "mutation score",
                "line cov", "branch cov") + (("bug-revealing",) if bugs else ()):
        table.add_column(col, justify="left" if col == "task" else "right")
    for i, s in enumerate(rows + [overall]):
        t = s.testgen
        if t is None:
            continue
        cell = (lambda m: "-" if m is None else m.text() if s is overall else
                f"{100 * m.mean:.1f}")
        table.add_row(s.name, cell(t.pass_at.get(1)), cell(t.pass_at.get(3)),
                      f"{100 * t.valid_rate:.0f}%", cell(t.wrong_test_rate),
                      cell(t.mutation_score), cell(t.line_coverage), cell(t.branch_coverage),
                      *([_share(t.bug_revealing)] if bugs else []),
                      end_section=(i == len(rows) - 1),
                      style="bold" if s is overall else None)
    return table


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def run_table(run: RunInfo, rows: list[Summary], overall: Summary) -> Table:
    tdd = overall.wrong_tests is not None
    agent = overall.agent is not None
    table = Table(title=f"{run.suite} / {run.workflow} / {run.model_spec} "
                        f"({run.trials} trial{'s' if run.trials != 1 else ''}, seed {run.seed})")
    # No separate n column: the success cell says k/n.
    for col in ("task", "success", "95% CI") + \
            (AGENT_COLUMNS if agent else ("avg attempts",)) + \
            ("avg duration s", "avg tokens") + (("wrong tests",) if tdd else ()):
        table.add_column(col, justify="left" if col == "task" else "right")
    for i, s in enumerate(rows + [overall]):
        cells = [s.name, f"{s.successes}/{s.n} {100 * s.rate:.1f}%",
                 f"[{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]",
                 *(agent_cells(s) if agent else [f"{s.avg_attempts:.2f}"]),
                 f"{s.avg_duration_s:.2f}", f"{s.avg_tokens:.0f}"]
        if tdd:
            cells.append(str(s.wrong_tests))
        table.add_row(*cells, end_section=(i == len(rows) - 1), style="bold" if s is overall else None)
    return table


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def comparison_tables(comp) -> list[Table]:
    """One table per compared model (per task and overall), then one for attempts, duration and
    tokens on per-task means."""
    from tracetune.stats import stars

    tables = []
    for model in comp.models:
        t = Table(title=f"{model} vs {comp.baseline}")
        for col in ("task", "n", comp.baseline, model, "Δ pp [95% CI]", "Fisher p", "Cohen's h",
                    "Δ attempts", "Δ duration s", "Δ tokens"):
            t.add_column(col, justify="left" if col == "task" else "right")
        rows = comp.per_task(model) + [comp.overall(model)]
        for i, r in enumerate(rows):
            t.add_row(r.task, str(r.n), f"{100 * r.baseline_rate:.1f}%",
                      f"{r.successes}/{r.n} {100 * r.success_rate:.1f}%",
                      f"{_pp(r.delta_success)} [{_pp(r.delta_ci_low)}, {_pp(r.delta_ci_high)}]",
                      f"{r.p_value:.3g}{stars(r.p_value)}", f"{r.cohens_h:+.2f}",
                      f"{r.delta_attempts:+.2f}", f"{r.delta_duration:+.2f}",
                      f"{r.delta_tokens:+.0f}", end_section=(i == len(rows) - 2),
                      style="bold" if r.task == "overall" else None)
        overall = comp.overall(model)
        if overall.mcnemar_p is not None:
            t.caption = (f"overall: McNemar p = {overall.mcnemar_p:.3g}"
                         f"{stars(overall.mcnemar_p)} on {overall.paired} paired (task, trial) "
                         "outcomes; overall CI: cluster-robust over tasks")
        if comp.excluded.get(model):
            t.caption = (t.caption or "") + (f"; {len(comp.excluded[model])} task(s) only in "
                                             "one run left out")
        tables.append(t)
    m = Table(title="per-task means (Wilcoxon signed-rank, paired t, paired t 95% CI)")
    for col in ("model", "metric", comp.baseline, "model value", "Δ [95% CI]", "Wilcoxon p",
                "t-test p", "tasks"):
        m.add_column(col, justify="left" if col in ("model", "metric") else "right")
    for d in comp.metrics:
        m.add_row(d.model, d.metric, f"{d.baseline:.2f}", f"{d.value:.2f}",
                  f"{d.delta:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}]",
                  f"{d.p_wilcoxon:.3g}{stars(d.p_wilcoxon)}", f"{d.p_t:.3g}{stars(d.p_t)}",
                  str(d.n_tasks))
    tables.append(m)
    return tables
