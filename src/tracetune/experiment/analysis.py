"""The compare stage: every arm against the base model on held-out, train and all tasks (and the
capability suite), the flat metric table hypotheses and criteria read, the verdicts and the
decision. Pure reading of the run directory: rerunning it gives the same results.json.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from statistics import median

from tracetune.eval.compare import AGENT_METRICS, Comparison, compare, load_episodes
from tracetune.eval.metrics import failure_kinds, summarize
from tracetune.experiment.spec import AGENT_STATS, STATS, Experiment, Hypothesis
from tracetune.tasks.splits import in_train

STAT_TO_METRIC = {"avg_attempts": "attempts", "avg_duration_s": "duration_s",
                  "median_duration_s": "duration_s", "avg_tokens": "tokens",
                  **{stat: metric for metric, stat in AGENT_METRICS.items()}}
"""A hypothesis's STAT -> the per-task-mean metric its paired tests (Wilcoxon, t) use."""


def arm_runs(exp: Experiment, out: Path) -> dict[str, Path]:
    runs = {"base": out / "baseline", "adapted": out / "adapted"}
    if exp.control.enabled:
        runs["control"] = out / "control" / "eval"
    for name in exp.models.reference:
        runs[name] = out / "reference" / name
    return runs


def subsets(exp: Experiment, episodes: list[dict]) -> dict[str, set[str]]:
    tasks = {e["task_id"] for e in episodes}
    train = {t for t in tasks if in_train(t, exp.eval.train_pct)}
    if exp.eval.eval_on == "heldout":  # base and adapted saw held-out tasks only
        return {"heldout": tasks - train}
    return {"heldout": tasks - train, "train": train, "all": tasks}


def stat_values(episodes: list[dict]) -> dict[str, float]:
    if not episodes:
        return {}
    summary = summarize("", episodes)
    values = {"success_rate": summary.rate, "avg_attempts": summary.avg_attempts,
              "avg_duration_s": summary.avg_duration_s,
              "median_duration_s": median(e["duration_s"] for e in episodes),
              "avg_tokens": summary.avg_tokens, "n": summary.n}
    if summary.agent is not None:
        values.update({stat: getattr(summary.agent, stat) for stat in AGENT_STATS})
    return values


def analyze(exp: Experiment, out: Path) -> dict:
    out = Path(out)
    episodes = {arm: load_episodes(path) for arm, path in arm_runs(exp, out).items()}
    if exp.capability.enabled:
        cap = {arm: load_episodes(out / "capability" / arm) for arm in ("base", "adapted")}
    split = subsets(exp, episodes["base"])
    split = {name: tasks for name, tasks in split.items() if tasks}

    # --- comparisons (each arm vs base) and the flat metric table -------------------------------
    comparisons: dict[str, Comparison] = {}
    metrics: dict[str, float] = {}
    for name, tasks in split.items():
        runs = {arm: [e for e in eps if e["task_id"] in tasks] for arm, eps in episodes.items()}
        runs = {arm: eps for arm, eps in runs.items() if eps}
        comparisons[name] = compare(runs, "base", seed=exp.info.seed)
        for arm, eps in runs.items():
            for stat, value in stat_values(eps).items():
                metrics[f"{arm}.{name}.{stat}"] = value
    if exp.capability.enabled:
        comparisons["capability"] = compare(cap, "base", seed=exp.info.seed)
        for arm, eps in cap.items():
            for stat, value in stat_values(eps).items():
                metrics[f"{arm}.capability.{stat}"] = value
    for name in comparisons:
        for stat in STATS + AGENT_STATS:
            a, b = metrics.get(f"adapted.{name}.{stat}"), metrics.get(f"base.{name}.{stat}")
            if a is not None and b is not None:
                metrics[f"delta.{name}.{stat}"] = a - b
    stages = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    train = stages.get("train", {}).get("summary", {})
    for key in ("seconds", "rows", "final_loss"):
        if train.get(key) is not None:
            metrics[f"train.{key}"] = train[key]
    if "train" in stages:
        metrics["train.peak_ram_gb"] = stages["train"]["peak_ram_gb"]
    if "adapted" in stages:
        metrics["adapted.peak_ram_gb"] = stages["adapted"]["peak_ram_gb"]

    # --- verdicts and decision --------------------------------------------------------------------
    verdicts = [_verdict(h, comparisons, episodes, cap if exp.capability.enabled else {},
                         split, exp.info.seed) for h in exp.hypotheses]
    decision = _decide(exp, metrics)
    return {
        "experiment": exp.info.name,
        "comparisons": {name: {"baseline": c.baseline, "models": c.models,
                               "results": [dataclasses.asdict(r)
                                           for r in c.baseline_rows + c.results],
                               "metrics": [dataclasses.asdict(m) for m in c.metrics],
                               "excluded": c.excluded}
                        for name, c in comparisons.items()},
        "split": {k: sorted(v) for k, v in split.items()},
        "metrics": metrics, "hypotheses": verdicts, "decision": decision,
        "failures": _failures(arm_runs(exp, out), split["heldout"]) if "heldout" in split
        else {},
        "stages": {k: {"seconds": v.get("seconds"), "summary": v.get("summary")}
                   for k, v in stages.items()},
    }


def _failures(runs: dict[str, Path], tasks: set[str]) -> dict[str, dict[str, int]]:
    """Held-out failed episodes of each arm by failure kind (see eval.metrics.failure_kind)."""
    from tracetune.traces.store import Store

    out = {}
    for arm, path in runs.items():
        store = Store(path)
        try:
            out[arm] = dict(failure_kinds(store, tasks).most_common())
        finally:
            store.close()
    return out


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}pp"


def _verdict(h: Hypothesis, comparisons: dict[str, Comparison], episodes: dict,
             cap: dict, split: dict, seed: int) -> dict:
    evaluation, stat = h.metric.split(".")
    source = cap if evaluation == "capability" else episodes
    tasks = None if evaluation == "capability" else split[evaluation]
    runs = {arm: [e for e in source[arm] if tasks is None or e["task_id"] in tasks]
            for arm in (h.treatment, h.control)}
    # against the base model the tables' comparison already holds it (same numbers as reported)
    comp = comparisons[evaluation] if h.control == "base" else \
        compare(runs, h.control, seed=seed)
    overall = comp.overall(h.treatment)
    rate = stat == "success_rate"
    fmt = _pp if rate else (lambda x: f"{x:+.3g}")
    record = {"id": h.id, "claim": h.claim, "metric": h.metric, "treatment": h.treatment,
              "control": h.control, "test": h.test, "alpha": h.alpha}
    if h.within is not None:  # per-task closeness (seed 000's H2)
        close = []
        for r in comp.per_task(h.treatment):
            a = [e for e in runs[h.treatment] if e["task_id"] == r.task]
            b = [e for e in runs[h.control] if e["task_id"] == r.task]
            diff = stat_values(a)[stat] - stat_values(b)[stat]
            close.append((r.task, diff, abs(diff) <= h.within + 1e-12))
        k = sum(ok for *_, ok in close)
        supported = k >= h.min_tasks
        record.update(observed=k, tasks={t: d for t, d, _ in close}, detail=(
            f"{k} of {len(close)} tasks within {fmt(h.within).lstrip('+')} of {h.control}; "
            f"needs at least {h.min_tasks}"))
    else:
        a, b = stat_values(runs[h.treatment])[stat], stat_values(runs[h.control])[stat]
        delta = a - b
        if rate:
            lo, hi = overall.delta_ci_low, overall.delta_ci_high
            p = {"fisher": overall.p_value, "mcnemar": overall.mcnemar_p}.get(h.test)
        else:
            md = next(m for m in comp.metrics
                      if m.model == h.treatment and m.metric == STAT_TO_METRIC[stat])
            lo, hi = md.ci_low, md.ci_high
            p = {"wilcoxon": md.p_wilcoxon, "paired_t": md.p_t}.get(h.test)
        passes_test = h.test == "none" or (p is not None and p < h.alpha)
        if h.min_delta is not None:
            supported = delta >= h.min_delta - 1e-12 and passes_test
            needs = f"needs Δ ≥ {fmt(h.min_delta)}"
        else:
            supported = delta <= h.max_delta + 1e-12 and passes_test
            needs = f"needs Δ ≤ {fmt(h.max_delta)}"
        test_text = "no test (point estimate)" if h.test == "none" else \
            f"{h.test} p = {p:.3g} {'<' if passes_test else '>='} {h.alpha}"
        record.update(observed=delta, ci=[lo, hi], p_value=p, treatment_value=a,
                      control_value=b, n=overall.n, detail=(
                          f"Δ = {fmt(delta)} (95% CI {fmt(lo)} to {fmt(hi)}), {test_text}; "
                          f"{needs}"))
    record["verdict"] = "SUPPORTED" if supported else "NOT SUPPORTED"
    return record


def _decide(exp: Experiment, metrics: dict) -> dict:
    def check(criteria):
        out = []
        for c in criteria:
            value = metrics.get(c.metric)
            out.append({"criterion": c.text, "observed": value,
                        "holds": value is not None and c.holds(value)})
        return out

    go, abort = check(exp.decision.go), check(exp.decision.abort)
    if not go and not abort:
        outcome = "NONE"
    elif go and all(c["holds"] for c in go):
        outcome = "GO"
    elif abort and all(c["holds"] for c in abort):
        outcome = "ABORT"
    else:
        outcome = "ITERATE"
    return {"outcome": outcome, "go": go, "abort": abort,
            "rule": "GO when every go criterion holds; ABORT when every abort criterion holds; "
                    "otherwise ITERATE"}
