"""Results and report of a continual experiment (experiment.continual): read OUT/matrix.jsonl
and OUT/rounds.jsonl, compute every strategy's CL metrics with bootstrap intervals, aggregate
over orderings, test strategies against sequential, and write OUT/report.md with the accuracy
matrices as heatmaps (OUT/report_files/).

Every figure is computed from the two files; rerunning `tracetune continual` on a finished run
directory reuses every unit and only recomputes them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS = ("acc", "forward_transfer", "forgetting", "bwt", "aulc", "cl_plasticity",
           "cl_stability", "cl_f1")
LABELS = {"acc": "ACC", "forward_transfer": "FT", "forgetting": "F", "bwt": "BWT",
          "aulc": "AULC", "cl_plasticity": "CL-plasticity", "cl_stability": "CL-stability",
          "cl_f1": "CL-F1"}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def analyze(exp, out: Path) -> dict:
    """results.json's content: per (ordering, strategy) the matrix, metrics with 95% bootstrap
    intervals over tasks, and training cost; per strategy the aggregate over orderings; paired
    tests of each strategy against sequential on per-task final accuracy; a two-way ANOVA
    (ordering x strategy) when there are several of each."""
    from tracetune.eval.continual import (
        MatrixRow,
        accuracy_matrix,
        bootstrap_ci,
        cl_metrics,
    )

    k = exp.continual.sessions_per_round
    rows = [MatrixRow.from_dict(d) for d in _read_jsonl(Path(out) / "matrix.jsonl")]
    rounds = _read_jsonl(Path(out) / "rounds.jsonl")
    runs = []
    for ordering in exp.streams:
        for strategy in exp.continual.strategies:
            mine = [r for r in rows if r.ordering == ordering and r.strategy == strategy]
            if not mine:
                continue
            a = accuracy_matrix(mine)
            point = cl_metrics(a, k)
            metrics = {}
            for name in METRICS:
                _value, low, high = bootstrap_ci(
                    mine, lambda m, name=name: cl_metrics(m, k)[name], k=k,
                    n_boot=exp.continual.bootstrap, seed=exp.info.seed)
                metrics[name] = {"value": _num(point[name]), "low": _num(low),
                                 "high": _num(high)}
            cost = [r for r in rounds if r["ordering"] == ordering and r["strategy"] == strategy]
            trained = [r for r in cost if r["round"] > 0]
            runs.append({
                "ordering": ordering, "strategy": strategy,
                "sessions": [s.name for s in exp.streams[ordering].sessions],
                "matrix": [[_num(x) for x in row] for row in a.tolist()],
                "metrics": metrics,
                "cost": {"train_seconds": round(sum(r["train_seconds"] for r in trained), 1),
                         "extra_seconds": round(sum(r["extra_seconds"] for r in trained), 1),
                         "tokens": sum(r["tokens"] for r in trained),
                         "rows": sum(r["trained_rows"] for r in trained),
                         "peak_ram_gb": max((r["peak_ram_gb"] for r in trained), default=0.0)},
                "rounds": cost,
            })
    results = {"experiment": exp.info.name, "sessions_per_round": k, "runs": runs,
               "strategies": _aggregate(runs, exp.continual.strategies),
               "tests": _paired_tests(rows, exp),
               "anova": _anova(rows, exp)}
    results["hypotheses"] = [judge(h, runs) for h in exp.hypotheses]
    eff_path = Path(out) / "efficiency.jsonl"
    if eff_path.is_file():
        eff = _read_jsonl(eff_path)
        for run in runs:
            run["efficiency"] = _efficiency(eff, run, exp.continual.bootstrap, exp.info.seed)
    return results


EFFICIENCY = ("steps", "tokens", "tool_efficiency")


def _efficiency(eff: list[dict], run: dict, n_boot: int, seed: int) -> dict:
    """Seed 004's efficiency figures of one (ordering, strategy) run, before (round 0) and after
    the last round: the mean over tasks of each task's mean, with a 95% percentile bootstrap
    interval over tasks (numpy; resampling tasks with replacement)."""
    import numpy as np

    mine = [e for e in eff if e["ordering"] == run["ordering"] and
            e["strategy"] == run["strategy"]]
    if not mine:
        return {}
    last = max(e["round"] for e in mine)
    rng = np.random.Generator(np.random.PCG64(seed))
    out = {}
    for name in EFFICIENCY:
        for label, rnd in (("base", 0), ("last", last)):
            values = np.array([e[name] for e in mine if e["round"] == rnd and
                               e[name] is not None], dtype=float)
            if not len(values):
                continue
            means = rng.choice(values, size=(n_boot, len(values)), replace=True).mean(axis=1)
            lo, hi = np.percentile(means, [2.5, 97.5])
            out.setdefault(name, {})[label] = {"value": round(float(values.mean()), 4),
                                               "low": round(float(lo), 4),
                                               "high": round(float(hi), 4)}
    return out


def _value(run: dict, name: str) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of one metric of one (ordering, strategy) run; no interval for costs
    and capability."""
    if name in run["metrics"]:
        m = run["metrics"][name]
        return m["value"], m["low"], m["high"]
    if name == "cost_seconds":
        return run["cost"]["train_seconds"] + run["cost"]["extra_seconds"], None, None
    if name in run["cost"]:
        return run["cost"][name], None, None
    if name == "capability_drop":
        caps = [r["capability"] for r in run["rounds"]]
        if caps and caps[0] is not None and caps[-1] is not None:
            return round(caps[0] - caps[-1], 4), None, None
    return None, None, None


def judge(h, runs: list[dict]) -> dict:
    """A hypothesis's verdict: SUPPORTED, NOT SUPPORTED or INCONCLUSIVE, with what was observed.

    One metric: its mean over orderings against the bound; with one ordering and a bootstrap
    interval, SUPPORTED only when the whole 95% interval is on the claimed side (INCONCLUSIVE
    when the point is but the interval is not). Against another strategy (versus): the ratio or
    difference of the two means, judged on the point estimates (no interval: said so).
    orderings_at_least: SUPPORTED when that many orderings satisfy the bound on their own."""
    from tracetune.experiment.spec import OPS

    holds = OPS[h.op]

    def per_ordering(name: str) -> list[tuple[float | None, float | None, float | None]]:
        strategy, _, metric = name.partition(".")
        return [_value(r, metric) for r in runs if r["strategy"] == strategy]

    out = {"id": h.id, "claim": h.claim, "metric": h.metric, "op": h.op, "value": h.value,
           "versus": h.versus}
    mine = per_ordering(h.metric)
    points = [v for v, _, _ in mine if v is not None]
    if not points:
        return {**out, "verdict": "INCONCLUSIVE", "observed": None,
                "detail": f"{h.metric} is undefined here (e.g. FT with a single round)"}
    if h.orderings_at_least:
        n = sum(1 for v in points if holds(v, h.value))
        return {**out, "observed": n,
                "verdict": "SUPPORTED" if n >= h.orderings_at_least else "NOT SUPPORTED",
                "detail": f"{h.metric} {h.op} {h.value} in {n} of {len(mine)} orderings "
                          f"(needs {h.orderings_at_least})"}
    mean = sum(points) / len(points)
    if h.versus:
        other = [v for v, _, _ in per_ordering(h.versus) if v is not None]
        if not other:
            return {**out, "verdict": "INCONCLUSIVE", "observed": None,
                    "detail": f"{h.versus} is undefined here"}
        ref = sum(other) / len(other)
        if h.compare == "ratio":
            if ref == 0:
                return {**out, "verdict": "INCONCLUSIVE", "observed": None,
                        "detail": f"{h.versus} is 0: no ratio"}
            observed = mean / ref
        else:
            observed = mean - ref
        return {**out, "observed": round(observed, 4),
                "verdict": "SUPPORTED" if holds(observed, h.value) else "NOT SUPPORTED",
                "detail": f"{h.metric} {mean:.4g} {'/' if h.compare == 'ratio' else '-'} "
                          f"{h.versus} {ref:.4g} = {observed:.4g} {h.op} {h.value}? "
                          "(point estimates, no interval)"}
    detail = f"{h.metric} = {mean:.4g} {h.op} {h.value}?"
    if len(mine) == 1 and mine[0][1] is not None:
        low, high = mine[0][1], mine[0][2]
        bound = low if h.op in (">=", ">") else high
        detail += f" 95% interval [{low:.4g}, {high:.4g}]"
        verdict = "SUPPORTED" if holds(bound, h.value) else \
            "INCONCLUSIVE" if holds(mean, h.value) else "NOT SUPPORTED"
    else:
        verdict = "SUPPORTED" if holds(mean, h.value) else "NOT SUPPORTED"
        detail += f" (mean over {len(points)} orderings)"
    return {**out, "observed": round(mean, 4), "verdict": verdict, "detail": detail}


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 4)


def _aggregate(runs: list[dict], strategies) -> dict:
    """Per strategy, over orderings: mean and variance of each metric, and how many orderings
    had FT > 0 (seed 004 phase 2's robustness count)."""
    import statistics

    out = {}
    for s in strategies:
        mine = [r for r in runs if r["strategy"] == s]
        agg = {}
        for name in METRICS:
            vals = [r["metrics"][name]["value"] for r in mine
                    if r["metrics"][name]["value"] is not None]
            agg[name] = {"mean": round(statistics.fmean(vals), 4) if vals else None,
                         "variance": round(statistics.variance(vals), 6) if len(vals) > 1
                         else None, "n": len(vals)}
        ft = [r["metrics"]["forward_transfer"]["value"] for r in mine]
        agg["orderings_with_positive_ft"] = sum(1 for v in ft if v is not None and v > 0)
        agg["orderings"] = len(mine)
        agg["train_seconds"] = round(sum(r["cost"]["train_seconds"] for r in mine), 1)
        out[s] = agg
    return out


def _final_per_task(rows, ordering: str, strategy: str) -> dict[str, float]:
    last = max((r.round for r in rows if r.ordering == ordering and r.strategy == strategy),
               default=None)
    return {r.task: r.passes / r.trials for r in rows
            if r.ordering == ordering and r.strategy == strategy and r.round == last}


def _paired_tests(rows, exp) -> list[dict]:
    """Each strategy against sequential, paired by task: each task's final accuracy averaged
    over the orderings first (a task is one unit however many orderings ran it), then the mean
    difference, paired t and Wilcoxon signed-rank p-values over tasks (scipy)."""
    from scipy import stats

    if "sequential" not in exp.continual.strategies:
        return []

    def per_task(strategy: str) -> dict[str, float]:
        values: dict[str, list[float]] = {}
        for o in exp.streams:
            for t, v in _final_per_task(rows, o, strategy).items():
                values.setdefault(t, []).append(v)
        return {t: sum(v) / len(v) for t, v in values.items()}

    ref = per_task("sequential")
    out = []
    for s in exp.continual.strategies:
        if s == "sequential":
            continue
        other = per_task(s)
        diffs = [other[t] - ref[t] for t in sorted(set(ref) & set(other))]
        entry = {"strategy": s, "versus": "sequential", "metric": "final per-task accuracy",
                 "pairs": len(diffs),
                 "mean_diff": round(sum(diffs) / len(diffs), 4) if diffs else None,
                 "paired_t_p": None, "wilcoxon_p": None}
        if len(diffs) >= 2 and any(d != 0 for d in diffs):
            entry["paired_t_p"] = _num(stats.ttest_1samp(diffs, 0.0).pvalue)
            entry["wilcoxon_p"] = _num(stats.wilcoxon(diffs, zero_method="zsplit").pvalue)
        out.append(entry)
    return out


def _anova(rows, exp) -> dict | None:
    """Two-way ANOVA (statsmodels OLS, type II sums of squares) of final per-task accuracy on
    ordering x strategy, with the task as a block (every cell holds the same tasks, so tasks
    are not independent replicates across cells); None with fewer than two of either."""
    if len(exp.streams) < 2 or len(exp.continual.strategies) < 2:
        return None
    import pandas as pd
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    data = [{"ordering": o, "strategy": s, "task": t, "acc": v}
            for o in exp.streams for s in exp.continual.strategies
            for t, v in _final_per_task(rows, o, s).items()]
    frame = pd.DataFrame(data)
    model = ols("acc ~ C(ordering) * C(strategy) + C(task)", data=frame).fit()
    table = sm.stats.anova_lm(model, typ=2)
    return {str(idx): {"F": _num(row["F"]), "p": _num(row["PR(>F)"]),
                       "df": _num(row["df"])} for idx, row in table.iterrows()}


def _fmt(m: dict) -> str:
    if m["value"] is None:
        return "n/a"
    lo, hi = m["low"], m["high"]
    ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else ""
    return f"{m['value']:+.3f}{ci}"


def _heatmap(matrix: list[list], sessions: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a = np.array([[np.nan if x is None else x for x in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * a.shape[1], 1.0 + 0.5 * a.shape[0]))
    im = ax.imshow(a, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center",
                    color="white" if a[i, j] < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(a.shape[1]), sessions, rotation=30, ha="right")
    ax.set_yticks(range(a.shape[0]), [f"round {i}" for i in range(a.shape[0])])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _retention(runs: list[dict], ordering: str, k: int, path: Path) -> None:
    """Mean accuracy over the sessions seen so far (the first i*k after round i), after each
    round, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for run in runs:
        if run["ordering"] != ordering:
            continue
        m = run["matrix"]
        ys = []
        for i in range(1, len(m)):
            seen = [x for j, x in enumerate(m[i][:min(i * k, len(m[i]))]) if x is not None]
            ys.append(sum(seen) / len(seen) if seen else float("nan"))
        ax.plot(range(1, len(m)), ys, marker="o", label=run["strategy"])
    ax.set_xlabel("round")
    ax.set_ylabel("mean accuracy on seen sessions")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(exp, out: Path, results: dict) -> Path:
    """OUT/report.md (and its figures in OUT/report_files/); returns the markdown's path."""
    out = Path(out)
    files = out / "report_files"
    files.mkdir(exist_ok=True)
    lines = [f"# {exp.info.name}: continual learning", "", exp.info.description, "",
             (f"Stream `{next(iter(exp.streams.values())).name}`, "
             f"{len(next(iter(exp.streams.values())).sessions)} sessions, a consolidation "
             f"round every {results['sessions_per_round']} session(s); strategies "
             f"{', '.join(exp.continual.strategies)}; orderings "
             f"{', '.join(exp.streams)}. Model {exp.models.base}; [eval] "
             f"{exp.eval.workflow}, {exp.eval.trials} trials per task."), "",
             ("a[i][j] is the success rate on session j's tasks after round i (round 0: the base "
             "model). Intervals: 95% percentile bootstrap over tasks (resampled within "
             "sessions)."), ""]
    for ordering in exp.streams:
        lines += [f"## Ordering {ordering}", "",
                  "| strategy | " + " | ".join(LABELS[m] for m in METRICS) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for run in results["runs"]:
            if run["ordering"] == ordering:
                lines.append(f"| {run['strategy']} | " +
                             " | ".join(_fmt(run["metrics"][m]) for m in METRICS) + " |")
        lines += ["", ("| strategy | rows trained | tokens | train s | extra s | peak RAM GiB "
                  "| capability after each round |"), "|---|---|---|---|---|---|---|"]
        for run in results["runs"]:
            if run["ordering"] != ordering:
                continue
            c = run["cost"]
            caps = " → ".join("n/a" if r["capability"] is None else f"{r['capability']:.0%}"
                              for r in run["rounds"])
            lines.append(f"| {run['strategy']} | {c['rows']} | {c['tokens']} | "
                         f"{c['train_seconds']} | {c['extra_seconds']} | {c['peak_ram_gb']} | "
                         f"{caps} |")
        lines.append("")
        eff_runs = [r for r in results["runs"] if r["ordering"] == ordering and r.get("efficiency")]
        if eff_runs:
            names = [n for n in EFFICIENCY if any(n in r["efficiency"] for r in eff_runs)]
            lines += [("Resolve rate is ACC above. Per task, base -> after the last round (95% "
                      "bootstrap intervals over tasks):"), "",
                      "| strategy | " + " | ".join(names) + " |",
                      "|---|" + "---|" * len(names)]
            for run in eff_runs:
                cells = []
                for n in names:
                    e = run["efficiency"].get(n, {})
                    cells.append(" → ".join(
                        f"{e[k]['value']:.3g} [{e[k]['low']:.3g}, {e[k]['high']:.3g}]"
                        for k in ("base", "last") if k in e) or "n/a")
                lines.append(f"| {run['strategy']} | " + " | ".join(cells) + " |")
            lines.append("")
        for run in results["runs"]:
            if run["ordering"] != ordering:
                continue
            png = files / f"matrix_{ordering}_{run['strategy']}.png"
            _heatmap(run["matrix"], run["sessions"], f"{run['strategy']} ({ordering})", png)
            lines.append(f"![{run['strategy']} accuracy matrix]({files.name}/{png.name})")
            skipped = [f"round {r['round']}: {r['skipped']}" for r in run["rounds"]
                       if r.get("skipped")]
            if skipped:
                lines.append(f"{run['strategy']}: " + "; ".join(skipped) + ".")
        png = files / f"retention_{ordering}.png"
        _retention(results["runs"], ordering, results["sessions_per_round"], png)
        lines += ["", f"![retention]({files.name}/{png.name})", ""]
    if len(exp.streams) > 1:
        lines += ["## Over orderings", "", ("| strategy | orderings | FT > 0 in | mean FT | "
                  "var FT | mean F | mean ACC |"), "|---|---|---|---|---|---|---|"]
        for s, agg in results["strategies"].items():
            lines.append(f"| {s} | {agg['orderings']} | {agg['orderings_with_positive_ft']} | "
                         f"{agg['forward_transfer']['mean']} | "
                         f"{agg['forward_transfer']['variance']} | {agg['forgetting']['mean']}"
                         f" | {agg['acc']['mean']} |")
        lines.append("")
    if results["tests"]:
        lines += ["## Strategies against sequential (final per-task accuracy)", "",
                  "| strategy | pairs | mean diff | paired t p | Wilcoxon p |",
                  "|---|---|---|---|---|"]
        for t in results["tests"]:
            lines.append(f"| {t['strategy']} | {t['pairs']} | {t['mean_diff']} | "
                         f"{t['paired_t_p']} | {t['wilcoxon_p']} |")
        lines.append("")
    if results.get("anova"):
        lines += ["## Two-way ANOVA (ordering x strategy, final per-task accuracy)", "",
                  "| term | F | p | df |", "|---|---|---|---|"]
        for term, row in results["anova"].items():
            lines.append(f"| {term} | {row['F']} | {row['p']} | {row['df']} |")
        lines.append("")
    if results.get("hypotheses"):
        lines += ["## Pre-registered hypotheses", "",
                  "| id | claim | verdict | detail |", "|---|---|---|---|"]
        for v in results["hypotheses"]:
            lines.append(f"| {v['id']} | {v['claim']} | **{v['verdict']}** | {v['detail']} |")
        lines.append("")
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n")
    return md
