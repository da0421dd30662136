"""Terminal tables (rich) for runs."""

from __future__ import annotations

from rich.table import Table

from tracetune.eval.metrics import Summary
from tracetune.traces.store import RunInfo


def run_table(run: RunInfo, rows: list[Summary], overall: Summary) -> Table:
    tdd = overall.wrong_tests is not None
    table = Table(title=f"{run.suite} / {run.workflow} / {run.model_spec} "
                        f"({run.trials} trial{'s' if run.trials != 1 else ''}, seed {run.seed})")
    for col in ("task", "n", "success", "95% CI", "avg attempts", "avg duration s",
                "avg tokens") + (("wrong tests",) if tdd else ()):
        table.add_column(col, justify="left" if col == "task" else "right")
    for i, s in enumerate(rows + [overall]):
        cells = [s.name, str(s.n), f"{s.successes}/{s.n} {100 * s.rate:.1f}%",
                 f"[{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}]", f"{s.avg_attempts:.2f}",
                 f"{s.avg_duration_s:.2f}", f"{s.avg_tokens:.0f}"]
        if tdd:
            cells.append(str(s.wrong_tests))
        table.add_row(*cells, end_section=(i == len(rows) - 1), style="bold" if s is overall else None)
    return table
