"""The pre-registered gate of [rounds] (spec.RoundsSection) and the results it reads: the
per-round curve and the GRPO round's result (results.json's "rounds" and "grpo").

Reads finished evaluations only (RUN/rounds/rR/eval, RUN/grpo/eval) and runs nothing, so the
compare stage and `tracetune report` use it without the stages that wrote them
(experiment.rounds runs those).
"""

from __future__ import annotations

import json
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.experiment.layout import RunLayout
from tracetune.experiment.spec import Experiment


def round_stage_name(r: int) -> str:
    return f"round{r}"


def round_numbers(exp: Experiment) -> range:
    """The rounds that are loop stages of their own (2..[rounds] rounds)."""
    return range(2, exp.rounds.rounds + 1)


def train_summary(adapter: Path) -> dict:
    meta = json.loads(RunLayout.adapter_meta(adapter).read_text())
    return {"rows": meta["rows"], "steps": meta["steps"], "seconds": meta["train_seconds"],
            "first_loss": meta["first_loss"], "final_loss": meta["last_loss"]}


# --- the gate -----------------------------------------------------------------------------------

def _episodes(run: Path) -> list[dict] | None:
    from tracetune.eval.compare import load_episodes

    return load_episodes(run) if RunLayout.store(run).is_file() else None


def _heldout(exp: Experiment, episodes: list[dict]) -> list[dict]:
    from tracetune.tasks.splits import in_train

    return [e for e in episodes if not in_train(e["task_id"], exp.eval.train_pct)]


def _rate(episodes: list[dict]) -> float:
    return sum(bool(e["success"]) for e in episodes) / len(episodes)


def _rate_ci(episodes: list[dict]) -> tuple[float, list[float]]:
    """Success rate (0..1) of `episodes` and its 95% interval: the clustered Wilson interval
    over their tasks (stats.clustered_wilson_interval), the interval every report row uses."""
    from tracetune.stats import clustered_wilson_interval

    by_task: dict[str, list[bool]] = {}
    for e in episodes:
        by_task.setdefault(e["task_id"], []).append(bool(e["success"]))
    ci = clustered_wilson_interval([sum(v) for v in by_task.values()],
                                   [len(v) for v in by_task.values()])
    return _rate(episodes), list(ci)


def _per_task_rates(a: list[dict], b: list[dict]) -> tuple[list[float], list[float]]:
    """Each task's success rate in `a` and in `b`, for the tasks both ran (sorted by task)."""
    def rates(eps):
        by: dict[str, list[bool]] = {}
        for e in eps:
            by.setdefault(e["task_id"], []).append(bool(e["success"]))
        return {t: sum(v) / len(v) for t, v in by.items()}

    ra, rb = rates(a), rates(b)
    shared = sorted(ra.keys() & rb.keys())
    return [ra[t] for t in shared], [rb[t] for t in shared]


def gate_p(test: str, treatment: list[dict], control: list[dict], *, seed: int = 0) -> float:
    """Two-sided p-value of `test` for held-out success of `treatment` against `control`
    (episodes of the same tasks and per-sample seeds). paired_permutation, wilcoxon and paired_t
    take each task's success rate as the unit (stats.paired_permutation,
    stats.wilcoxon_signed_rank, stats.paired_t); fisher and mcnemar count (task, trial) outcomes
    (stats.fisher_exact; stats.mcnemar on the pairs of the same task and trial, which share
    their sample seed). Raises ValueError when the arms share no task (or, for mcnemar, no
    (task, trial))."""
    from tracetune import stats

    if test in ("paired_permutation", "wilcoxon", "paired_t"):
        x, y = _per_task_rates(treatment, control)
        fn = {"paired_permutation": stats.paired_permutation,
              "wilcoxon": stats.wilcoxon_signed_rank, "paired_t": stats.paired_t}[test]
        return fn(x, y)
    if test == "fisher":
        return stats.fisher_exact(sum(bool(e["success"]) for e in treatment), len(treatment),
                                  sum(bool(e["success"]) for e in control), len(control))
    before = {(e["task_id"], e["trial"]): bool(e["success"]) for e in control}
    pairs = [(bool(e["success"]), before[k]) for e in treatment
             if (k := (e["task_id"], e["trial"])) in before]
    if not pairs:
        raise ValueError("mcnemar: no (task, trial) outcome in both arms")
    return stats.mcnemar(sum(a and not b for a, b in pairs), sum(b and not a for a, b in pairs))


def gate(exp: Experiment, layout: RunLayout, r: int) -> dict:
    """The pre-registered gate's verdict on round r (r >= 1) against round r-1 (0: the base
    model). Returns {"round", "heldout" and "previous" (held-out success rates, 0..1), "gain"
    (their difference), "test", "p", "alpha", "min_gain", "capability" and "capability_base"
    (capability success rates; None without [capability]), "capability_delta",
    "max_capability_drop", "significant", "capability_ok", "passed", "detail" (one line)}.
    Raises TracetuneError when round r or r-1 has no evaluation in `layout`."""
    cur, prev = (_episodes(layout.round_parts(k)["eval"]) for k in (r, r - 1))
    if cur is None or prev is None:
        raise TracetuneError(f"the gate on round {r} needs the evaluations of rounds {r - 1} "
                             f"and {r} in {layout.root}")
    now = base = None
    if exp.capability.enabled:
        now, base = (_episodes(layout.round_parts(k)["capability"]) for k in (r, 0))
        if now is None or base is None:
            raise TracetuneError(f"the gate on round {r} needs the capability checks of the "
                                 f"base model and round {r} in {layout.root}")
    return _verdict(exp, r, _heldout(exp, cur), _heldout(exp, prev), now, base)


def _verdict(exp: Experiment, r: int, cur: list[dict], prev: list[dict],
             cap_now: list[dict] | None, cap_base: list[dict] | None) -> dict:
    """`gate`'s verdict from episodes already loaded: held-out episodes of rounds r and r-1,
    capability episodes of round r and the base model (None without [capability])."""
    g = exp.rounds
    rate, before = _rate(cur), _rate(prev)
    p = gate_p(g.test, cur, prev, seed=exp.info.seed)
    gain = rate - before
    significant = gain >= g.min_gain - 1e-12 and gain > 0 and p < g.alpha
    cap = cap_base_rate = cap_delta = None
    cap_ok = True
    if cap_now is not None and cap_base is not None:
        cap, cap_base_rate = _rate(cap_now), _rate(cap_base)
        cap_delta = cap - cap_base_rate
        cap_ok = cap_delta >= -g.max_capability_drop - 1e-12
    previous = "base" if r == 1 else f"round {r - 1}"
    detail = (f"round {r} held-out {100 * rate:.1f}% vs {previous} {100 * before:.1f}% "
              f"({100 * gain:+.1f}pp, {g.test} p = {p:.3g}; needs >= {100 * g.min_gain:+.1f}pp "
              f"and p < {g.alpha})")
    if cap is not None:
        detail += (f"; capability {100 * cap_delta:+.1f}pp vs base (bound "
                   f"-{100 * g.max_capability_drop:.1f}pp)")
    passed = significant and cap_ok
    detail += ": passed" if passed else ": stop" + (
        "" if significant else " (gain not significant)") + (
        "" if cap_ok else " (capability below its bound)")
    return {"round": r, "heldout": rate, "previous": before, "gain": gain, "test": g.test,
            "p": p, "alpha": g.alpha, "min_gain": g.min_gain, "capability": cap,
            "capability_base": cap_base_rate, "capability_delta": cap_delta,
            "max_capability_drop": g.max_capability_drop, "significant": significant,
            "capability_ok": cap_ok, "passed": passed, "detail": detail}


# --- the curve the report shows -----------------------------------------------------------------

def curve(exp: Experiment, layout: RunLayout) -> dict:
    """results.json's "rounds": {"rounds": [one row per round that was evaluated, round 0 (the
    base model) first: {"round", "heldout" (success rate), "ci" (95%, the tasks' clustered
    Wilson interval), "n" (episodes), "delta" / "delta_ci" / "p" (against the base model: the
    difference, its interval, the gate's test), "capability", "capability_delta", "gate" (the
    verdict on this round, rounds >= 1), "train" (rounds >= 1), "seconds" (the round's stage
    wall time; round 1: its train, export, adapted and capability stages, the last of which
    also checks the base model)}],
    "kept": the last round of the unbroken run of rounds that passed the gate (0: none; the
    base model stays), "stopped": why no further round ran, "settings": the gate's settings}.
    """
    from tracetune.eval.compare import compare

    runs: dict[int, list[dict]] = {}
    caps: dict[int, list[dict] | None] = {}
    settings = {"rounds": exp.rounds.rounds, **exp.rounds.gate()}
    if not _evaluated(exp, layout, 0):
        return {"rounds": [], "kept": 0, "stopped": "the base model has not been evaluated",
                "settings": settings}
    for r in range(exp.rounds.rounds + 1):
        if not _evaluated(exp, layout, r):
            break
        parts = layout.round_parts(r)
        runs[r] = _heldout(exp, _episodes(parts["eval"]))
        caps[r] = _episodes(parts["capability"]) if exp.capability.enabled else None
    comp = compare({f"round{r}": eps for r, eps in runs.items()}, "round0", seed=exp.info.seed)
    rows, kept, stopped = [], 0, None
    for r, eps in runs.items():
        o = comp.overall(f"round{r}") if r else None
        rate, ci = _rate_ci(eps)
        row = {"round": r, "heldout": rate, "ci": ci, "n": len(eps)}
        if r:
            row.update(delta=o.delta_success, delta_ci=[o.delta_ci_low, o.delta_ci_high],
                       p=gate_p(exp.rounds.test, eps, runs[0], seed=exp.info.seed))
            verdict = _verdict(exp, r, eps, runs[r - 1], caps.get(r), caps.get(0))
            row["gate"] = verdict
            row["train"] = train_summary(layout.round_parts(r)["adapter"])
            row["seconds"] = _round_seconds(layout, r)
            if stopped is None:
                if verdict["passed"]:
                    kept = r
                else:
                    stopped = f"round {r} did not pass the gate: {verdict['detail']}"
        cap = caps.get(r)
        if cap:
            row["capability"] = _rate(cap)
            if caps.get(0):
                row["capability_delta"] = row["capability"] - _rate(caps[0])
        rows.append(row)
    if stopped is None:
        last = max(runs)
        nxt = layout.marker(round_stage_name(last + 1))
        if nxt.is_file():  # the next round stopped before its evaluation (e.g. too few rows)
            stopped = json.loads(nxt.read_text())["summary"].get("reason")
        else:
            stopped = f"all {exp.rounds.rounds} rounds ran and passed the gate" \
                if last == exp.rounds.rounds else f"round {last + 1} has not run yet"
    return {"rounds": rows, "kept": kept, "stopped": stopped, "settings": settings}


def _evaluated(exp: Experiment, layout: RunLayout, r: int) -> bool:
    """Round r's evaluations are complete: their stages finished (and round r >= 2 ran)."""
    if r == 0:
        return layout.marker("baseline").is_file() and (
            not exp.capability.enabled or layout.marker("capability").is_file())
    if r == 1:
        return layout.marker("adapted").is_file() and (
            not exp.capability.enabled or layout.marker("capability").is_file())
    path = layout.marker(round_stage_name(r))
    return path.is_file() and bool(json.loads(path.read_text())["summary"].get("ran"))


def _round_seconds(layout: RunLayout, r: int) -> float | None:
    names = ("train", "export", "adapted", "capability") if r == 1 else (round_stage_name(r),)
    total = 0.0
    for name in names:
        path = layout.marker(name)
        if path.is_file():
            total += json.loads(path.read_text()).get("seconds") or 0.0
    return round(total, 1)


# --- the GRPO round ---------------------------------------------------------------

def start_round(exp: Experiment, layout: RunLayout) -> int:
    """The round GRPO starts from: the kept round with [rounds] (0: the base model), else
    round 1 (the loop's adapter)."""
    return curve(exp, layout)["kept"] if exp.rounds.rounds > 1 else 1


def grpo_result(exp: Experiment, layout: RunLayout) -> dict | None:
    """results.json's "grpo" (None until the grpo stage finished; {"ran": False, "start_round",
    "reason"} when it had nothing to learn from): {"ran": True, "start_round", "heldout"
    (success rate), "ci" (95% clustered Wilson), "n", "start_heldout", "delta" (against the
    starting round), "delta_ci", "p" ([rounds] test, against the starting round),
    "delta_vs_base", "p_vs_base", "capability", "capability_delta" (against the base model),
    "train" (the stage's GRPO summary), "seconds" and "peak_ram_gb" (the stage's wall time and
    peak memory: training, export and evaluations)}."""
    from tracetune.eval.compare import compare

    path = layout.marker("grpo")
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    summary = record["summary"]
    start = summary["start_round"]
    if not summary.get("ran"):
        return {"ran": False, "start_round": start, "reason": summary.get("reason")}
    now = _heldout(exp, _episodes(layout.grpo_parts()["eval"]))
    then = _heldout(exp, _episodes(layout.round_parts(start)["eval"]))
    base = _heldout(exp, _episodes(layout.round_parts(0)["eval"]))
    o = compare({"start": then, "grpo": now}, "start", seed=exp.info.seed).overall("grpo")
    rate, ci = _rate_ci(now)
    out = {"ran": True, "start_round": start, "heldout": rate, "ci": ci, "n": len(now),
           "start_heldout": _rate(then),
           "delta": o.delta_success, "delta_ci": [o.delta_ci_low, o.delta_ci_high],
           "test": exp.rounds.test,
           "p": gate_p(exp.rounds.test, now, then, seed=exp.info.seed),
           "delta_vs_base": rate - _rate(base),
           "p_vs_base": gate_p(exp.rounds.test, now, base, seed=exp.info.seed),
           "train": summary["train"], "seconds": record.get("seconds"),
           "peak_ram_gb": record.get("peak_ram_gb")}
    if exp.capability.enabled:
        cap = _episodes(layout.grpo_parts()["capability"])
        cap0 = _episodes(layout.round_parts(0)["capability"])
        out["capability"] = _rate(cap)
        out["capability_delta"] = out["capability"] - _rate(cap0)
    return out
