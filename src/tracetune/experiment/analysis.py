"""The compare stage: every arm against the base model on held-out, train and all tasks (and the
capability suite), the flat metric table hypotheses and criteria read, the verdicts and the
decision, and every figure the report shows. Pure reading of the run directory: rerunning it
gives the same results.json.

RUN/results.json (`analyze`'s dict, written by the loop's compare stage). Rates are fractions in
0..1, durations seconds, paths relative to the run directory (see layout.RunLayout).

    experiment   the experiment's name
    comparisons  NAME (heldout, train, all, capability) -> {"baseline": "base", "models": [arm],
                 "results": per (model, task) rows and each model's "overall" row
                 (eval.compare.ComparisonResult as a dict), "metrics": per-task-mean metric
                 comparisons (eval.compare.MetricDelta), "excluded": model -> tasks left out}
    split        heldout / train / all -> the sorted task ids of that subset
    metrics      the flat table hypotheses and decision criteria read (spec: metric names)
    hypotheses   one verdict per [[hypothesis]]: id, claim, observed, detail, verdict, ...
    decision     {"outcome": GO | ITERATE | ABORT | NONE, "go": [...], "abort": [...], "rule"}
    failures     arm -> {failure kind -> failed held-out episodes}, most frequent first
    stages       stage -> {"seconds", "summary"} from RUN/stages/STAGE.json

Added for the report, so that it reads this file instead of reopening every store (a results.json
of an earlier release lacks them; the report then falls back to the run directory):

    arms         arm (base, adapted, control, reference names; in that order) -> {
                     "run": its evaluation run directory,
                     "episodes": finished episodes (all of its tasks),
                     "mean_attempts": mean model attempts per episode (null: no episodes),
                     "duration_s": the box plot of episode durations in seconds, without
                         outliers: {"q1", "med", "q3", "whislo", "whishi", "mean"} (whiskers at
                         the furthest duration within 1.5 IQR of the box; null: no episodes),
                     "packages": package -> version the run recorded (Store.run().packages)}
    datasets     "data" / "control_data" (the ones that exist) -> {"path", "counts": kind ->
                 rows, "dropped": filter -> rows dropped} from the dataset's manifest
    adapter      the trained adapter's metadata: {"rows", "steps", "train_seconds",
                 "first_loss", "last_loss", "versions"} (null: no adapter metadata)
    loss_curves  "adapter" / "control" (the ones that exist) -> the loss log's path

With [rounds] rounds > 1 (expert iteration):

    rounds       the per-round curve, the gate's verdicts, the kept round and why the rounds
                 stopped (experiment.gate.curve)

With [grpo] enabled:

    grpo         the GRPO round against the round it started from and the base model, its
                 training figures and cost (experiment.gate.grpo_result)
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from pathlib import Path
from statistics import median

from tracetune.eval.compare import AGENT_METRICS, TESTGEN_METRICS, Comparison, compare
from tracetune.eval.metrics import failure_kinds, summarize
from tracetune.experiment.layout import RunLayout
from tracetune.experiment.spec import (AGENT_STATS, STATS, TESTGEN_STATS, Experiment,
                                       Hypothesis)
from tracetune.tasks.splits import in_train

REPORT_KEYS = ("arms", "datasets", "adapter", "loss_curves")
"""The keys of results.json that hold the report's figures (absent in earlier releases')."""

STAT_TO_METRIC = {"avg_attempts": "attempts", "avg_duration_s": "duration_s",
                  "median_duration_s": "duration_s", "avg_tokens": "tokens",
                  **{stat: metric for metric, stat in AGENT_METRICS.items()},
                  **{stat: stat for stat in TESTGEN_METRICS}}
"""A hypothesis's STAT -> the per-task-mean metric its paired tests (Wilcoxon, t) use."""


def arm_runs(exp: Experiment, out: Path) -> dict[str, Path]:
    """Arm -> its evaluation run on the [eval] tasks: base, adapted, control (when enabled),
    then each reference model."""
    layout = RunLayout(out)
    return {arm: layout.arm_run(arm) for arm in exp.arms}


def subsets(exp: Experiment, episodes: list[dict]) -> dict[str, set[str]]:
    tasks = {e["task_id"] for e in episodes}
    train = {t for t in tasks if in_train(t, exp.eval.train_pct)}
    if exp.eval_on == "heldout":  # base and adapted saw held-out tasks only
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
    if summary.testgen is not None:
        for stat in TESTGEN_STATS:
            try:
                values[stat] = TESTGEN_METRICS[stat](summary.testgen)
            except KeyError:  # Pass@3 of a task with fewer than 3 samples
                pass
    return values


def analyze(exp: Experiment, out: Path) -> dict:
    """results.json of the run in `out` (see the module docstring for its keys)."""
    layout = RunLayout(out)
    arm_dirs = arm_runs(exp, layout.root)
    # Each store is opened once and stays open until every figure that needs it (episodes,
    # failure kinds, package versions) has been read.
    with ExitStack() as opened:
        stores = {arm: _open(path, opened) for arm, path in arm_dirs.items()}
        episodes = {arm: store.episodes() for arm, store in stores.items()}
        if exp.capability.enabled:
            cap = {arm: _open(layout.capability(arm), opened).episodes()
                   for arm in ("base", "adapted")}
        split = subsets(exp, episodes["base"])
        split = {name: tasks for name, tasks in split.items() if tasks}
        failures = {arm: dict(failure_kinds(store, split["heldout"]).most_common())
                    for arm, store in stores.items()} if "heldout" in split else {}
        packages = {arm: store.run().packages for arm, store in stores.items()}

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
        for stat in STATS + AGENT_STATS + TESTGEN_STATS:
            a, b = metrics.get(f"adapted.{name}.{stat}"), metrics.get(f"base.{name}.{stat}")
            if a is not None and b is not None:
                metrics[f"delta.{name}.{stat}"] = a - b
    stages = {stage: json.loads(p.read_text()) for stage, p in layout.markers().items()}
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
    decision = _decide(exp, metrics, verdicts)
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
        "failures": failures,
        "stages": {k: {"seconds": v.get("seconds"), "summary": v.get("summary")}
                   for k, v in stages.items()},
        # --- what the report shows besides the above (REPORT_KEYS) ---
        "arms": {arm: arm_summary(layout, path, episodes[arm], packages[arm])
                 for arm, path in arm_dirs.items()},
        **training_summary(layout),
        **({"rounds": _rounds_curve(exp, layout)} if exp.rounds.rounds > 1 else {}),
        **({"grpo": _grpo_result(exp, layout)} if exp.grpo is not None else {}),
    }


def _rounds_curve(exp: Experiment, layout: RunLayout) -> dict:
    from tracetune.experiment.gate import curve

    return curve(exp, layout)


def _grpo_result(exp: Experiment, layout: RunLayout) -> dict | None:
    from tracetune.experiment.gate import grpo_result

    return grpo_result(exp, layout)


def _open(path: Path, opened: ExitStack):
    """The trajectory store of the run in `path`, closed when `opened` closes."""
    from tracetune.errors import TracetuneError
    from tracetune.traces.store import Store

    if not RunLayout.store(path).is_file():  # the message load_episodes gives
        raise TracetuneError(f"{path} is not a run directory (no {RunLayout.store(path).name})")
    store = Store(path)
    opened.callback(store.close)
    return store


# --- the report's figures (shared with the report's fallback for earlier results.json) ----------

def arm_summary(layout: RunLayout, run: Path, episodes: list[dict], packages: dict) -> dict:
    """One arm's entry of results.json "arms" (module docstring)."""
    durations = [e["duration_s"] for e in episodes]
    return {"run": layout.relative(run), "episodes": len(episodes),
            "mean_attempts": sum(e["n_attempts"] for e in episodes) / len(episodes)
            if episodes else None,
            "duration_s": box_stats(durations) if durations else None,
            "packages": dict(packages)}


def box_stats(values: list[float]) -> dict[str, float]:
    """What a box plot without outliers draws, as matplotlib computes it (cbook.boxplot_stats
    with whis=1.5: linearly interpolated quartiles; each whisker at the furthest value within
    1.5 IQR of the box, never inside the box), so the report draws the same box from these five
    numbers as from every duration."""
    x = sorted(float(v) for v in values)

    def quantile(q: float) -> float:  # numpy's default ("linear") percentile
        pos = q * (len(x) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(x) - 1)
        return x[lo] + (x[hi] - x[lo]) * (pos - lo)

    q1, med, q3 = quantile(0.25), quantile(0.5), quantile(0.75)
    iqr = q3 - q1
    above = [v for v in x if v <= q3 + 1.5 * iqr]
    below = [v for v in x if v >= q1 - 1.5 * iqr]
    whishi = max(above) if above and max(above) >= q3 else q3
    whislo = min(below) if below and min(below) <= q1 else q1
    return {"q1": q1, "med": med, "q3": q3, "whislo": whislo, "whishi": whishi,
            "mean": sum(x) / len(x)}


def training_summary(layout: RunLayout) -> dict:
    """results.json "datasets", "adapter" and "loss_curves" (module docstring): read from the
    datasets' manifests and the adapters' files, whichever exist."""
    datasets = {}
    for key, path in (("data", layout.data), ("control_data", layout.control_data)):
        manifest = RunLayout.manifest(path)
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            datasets[key] = {"path": layout.relative(path), "counts": m["counts"],
                             "dropped": m["dropped"]}
    adapter = None
    meta = RunLayout.adapter_meta(layout.adapter)
    if meta.is_file():
        m = json.loads(meta.read_text())
        adapter = {k: m.get(k) for k in ("rows", "steps", "train_seconds", "first_loss",
                                         "last_loss", "versions")}
    curves = {key: layout.relative(RunLayout.loss_log(path))
              for key, path in (("adapter", layout.adapter), ("control", layout.control_adapter))
              if RunLayout.loss_log(path).is_file()}
    return {"datasets": datasets, "adapter": adapter, "loss_curves": curves}


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
        if h.test == "paired_permutation":
            p = _task_permutation_p(runs[h.treatment], runs[h.control], stat)
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


def _task_permutation_p(treatment: list[dict], control: list[dict], stat: str) -> float:
    """`stats.paired_permutation` on the per-task values of `stat` (each task's success rate
    over its trials, ...) of the tasks both arms ran: the task is the unit of the test."""
    from tracetune.stats import paired_permutation

    by_task = {arm: {} for arm in ("t", "c")}
    for arm, eps in (("t", treatment), ("c", control)):
        for e in eps:
            by_task[arm].setdefault(e["task_id"], []).append(e)
    shared = sorted(by_task["t"].keys() & by_task["c"].keys())
    return paired_permutation([stat_values(by_task["t"][t])[stat] for t in shared],
                              [stat_values(by_task["c"][t])[stat] for t in shared])


def _decide(exp: Experiment, metrics: dict, hypotheses: list[dict] | None = None) -> dict:
    def check(criteria):
        out = []
        for c in criteria:
            value = metrics.get(c.metric)
            out.append({"criterion": c.text, "observed": value,
                        "holds": value is not None and c.holds(value)})
        return out

    go, abort = check(exp.decision.go), check(exp.decision.abort)
    # A GO rests on the pre-registered hypotheses: each one not supported is a criterion that
    # fails, so the decision can never say GO above a hypothesis the data did not support.
    if go:
        go += [{"criterion": f"{h['id']} supported", "observed": h["verdict"],
                "holds": h["verdict"] == "SUPPORTED"} for h in hypotheses or []]
    if not go and not abort:
        outcome = "NONE"
    elif go and all(c["holds"] for c in go):
        outcome = "GO"
    elif abort and all(c["holds"] for c in abort):
        outcome = "ABORT"
    else:
        outcome = "ITERATE"
    return {"outcome": outcome, "go": go, "abort": abort,
            "rule": "GO when every go criterion holds and every hypothesis is supported; ABORT "
                    "when every abort criterion holds; otherwise ITERATE"}
