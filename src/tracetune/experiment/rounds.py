"""Rounds of expert iteration behind a pre-registered gate ([rounds], spec.RoundsSection).

Round 1 is the loop's own baseline -> mine -> train -> export -> adapted -> capability. Each
later round r is one loop stage, `roundR`, that:

    1. asks the gate about round r-1 (`gate`): held-out gain over round r-2 at least min_gain
       with the stated test's two-sided p < alpha, and capability within max_capability_drop of
       the base model's; a round that fails stops the rounds (this stage and every later one
       record `ran: false` with the reason, and do nothing else);
    2. mines the train tasks of round r-1's evaluation (mode continue) or of every evaluation so
       far (mode retrain; duplicate programs removed by the miner)  -> RUN/rounds/rR/data/
    3. trains round r-1's adapter further (continue) or a fresh one from the base weights
       (retrain)                                                       -> RUN/rounds/rR/adapter/
    4. exports it (parity-checked like round 1's)                      -> RUN/rounds/rR/export/
    5. evaluates it on every [eval] task with the baseline's per-sample seeds (train tasks:
       the next round's data; held-out: its score)                     -> RUN/rounds/rR/eval/
    6. runs the capability check (greedy)                              -> RUN/rounds/rR/capability/

Each part is kept once complete, so a round killed anywhere continues there (evaluations keep
their finished episodes, training its last checkpoint). The compare stage reads `curve`: every
round's held-out success rate with its interval, against the base model and against the round
before, the gate's verdicts, the kept round and why the rounds stopped.

Expert iteration is rejection-sampling fine-tuning repeated on the model's own filtered samples
(Anthony et al. 2017, "Thinking Fast and Slow with Deep Learning and Tree Search"; SWE-Gym,
arXiv 2412.21139, applies it to coding agents).
"""

from __future__ import annotations

import json
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.experiment.layout import RunLayout
from tracetune.experiment.spec import Experiment
from tracetune.experiment.stages import Context


def round_stage_name(r: int) -> str:
    return f"round{r}"


def round_numbers(exp: Experiment) -> range:
    """The rounds that are loop stages of their own (2..[rounds] rounds)."""
    return range(2, exp.rounds.rounds + 1)


# --- one round ----------------------------------------------------------------------------------

def run_round(r: int, ctx: Context) -> dict:
    """The `roundR` stage (module docstring). Returns its summary: {"ran": bool, "reason"
    (when not ran), "gate": the verdict on round r-1 that let it run or stopped it, and when
    ran: "model" (spec), "data" (rows by kind), "train" ({rows, steps, seconds, first_loss,
    final_loss}), "eval" / "capability" ({run, n, successes})}."""
    from tracetune.experiment import stages

    exp, lay = ctx.exp, ctx.layout
    label = round_stage_name(r)
    for k in range(2, r):
        earlier = ctx.record(round_stage_name(k))["summary"]
        if not earlier.get("ran"):
            ctx.log(f"[{label}] not run: the rounds stopped at round {k}")
            return {"ran": False, "reason": f"the rounds stopped at round {k}: "
                                            f"{earlier.get('reason')}"}
    verdict = gate(exp, lay, r - 1)
    ctx.log(f"[{label}] gate on round {r - 1}: {verdict['detail']}")
    if not verdict["passed"]:
        return {"ran": False, "gate": verdict,
                "reason": f"round {r - 1} did not pass the gate: {verdict['detail']}"}

    parts, prev = lay.round_parts(r), lay.round_parts(r - 1)
    lay.round_dir(r).mkdir(parents=True, exist_ok=True)
    continuing = exp.rounds.mode == "continue"
    if not RunLayout.manifest(parts["data"]).is_file():
        sources = [prev["eval"]] if continuing else \
            [lay.round_parts(k)["eval"] for k in range(r)]
        try:
            stages.mine(ctx, out=parts["data"], sources=sources, label=label)
        except TracetuneError as exc:  # too few rows: a reason to stop, not a fault
            ctx.log(f"[{label}] stopped: {exc}")
            return {"ran": False, "gate": verdict, "reason": str(exc)}
    data = json.loads(RunLayout.manifest(parts["data"]).read_text())
    if not RunLayout.adapter_meta(parts["adapter"]).is_file():
        stages.train(ctx, data=parts["data"], out=parts["adapter"],
                     init_adapter=prev["adapter"] if continuing else None, label=label)
    return {"ran": True, "gate": verdict, "data": data.get("counts", {}),
            "train": _train_summary(parts["adapter"]),
            **export_and_evaluate(ctx, parts, label)}


def export_and_evaluate(ctx: Context, parts: dict[str, Path], label: str) -> dict:
    """Export the adapter in parts["adapter"] (unless [export] target is none; kept once done),
    evaluate the adapted model on every [eval] task and run the capability check. Returns
    {"model": its spec, "eval": {run, n, successes}, "capability": ... (when enabled)}."""
    from tracetune.experiment import stages

    exp = ctx.exp
    done = parts["export"] / "done"
    if exp.export.target != "none" and not done.is_file():
        stages.export(ctx, adapter=parts["adapter"], out=parts["export"], label=label)
        done.write_text("")
    spec = ctx.adapted_spec(parts["export"], parts["adapter"])
    out = {"model": spec, "eval": ctx.evaluate(label, exp.eval_config(spec), parts["eval"])}
    if exp.capability.enabled:
        out["capability"] = ctx.evaluate(label, exp.capability_config(spec), parts["capability"])
    return out


def _train_summary(adapter: Path) -> dict:
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
    g = exp.rounds
    cur, prev = (_episodes(layout.round_parts(k)["eval"]) for k in (r, r - 1))
    if cur is None or prev is None:
        raise TracetuneError(f"the gate on round {r} needs the evaluations of rounds {r - 1} "
                             f"and {r} in {layout.root}")
    cur, prev = _heldout(exp, cur), _heldout(exp, prev)
    rate = sum(e["success"] for e in cur) / len(cur)
    before = sum(e["success"] for e in prev) / len(prev)
    p = gate_p(g.test, cur, prev, seed=exp.info.seed)
    gain = rate - before
    significant = gain >= g.min_gain - 1e-12 and gain > 0 and p < g.alpha
    cap = cap_base = cap_delta = None
    cap_ok = True
    if exp.capability.enabled:
        now, base = (_episodes(layout.round_parts(k)["capability"]) for k in (r, 0))
        if now is None or base is None:
            raise TracetuneError(f"the gate on round {r} needs the capability checks of the "
                                 f"base model and round {r} in {layout.root}")
        cap = sum(e["success"] for e in now) / len(now)
        cap_base = sum(e["success"] for e in base) / len(base)
        cap_delta = cap - cap_base
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
            "capability_base": cap_base, "capability_delta": cap_delta,
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
    from tracetune.stats import clustered_wilson_interval

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
        n_pass = sum(e["success"] for e in eps)
        by_task: dict[str, list[bool]] = {}
        for e in eps:
            by_task.setdefault(e["task_id"], []).append(bool(e["success"]))
        ci = clustered_wilson_interval([sum(v) for v in by_task.values()],
                                       [len(v) for v in by_task.values()])
        row = {"round": r, "heldout": n_pass / len(eps), "ci": list(ci), "n": len(eps)}
        if r:
            row.update(delta=o.delta_success, delta_ci=[o.delta_ci_low, o.delta_ci_high],
                       p=gate_p(exp.rounds.test, eps, runs[0], seed=exp.info.seed))
            verdict = gate(exp, layout, r)
            row["gate"] = verdict
            row["train"] = _train_summary(layout.round_parts(r)["adapter"])
            row["seconds"] = _round_seconds(layout, r)
            if stopped is None:
                if verdict["passed"]:
                    kept = r
                else:
                    stopped = f"round {r} did not pass the gate: {verdict['detail']}"
        cap = caps.get(r)
        if cap:
            row["capability"] = sum(e["success"] for e in cap) / len(cap)
            if caps.get(0):
                row["capability_delta"] = row["capability"] - \
                    sum(e["success"] for e in caps[0]) / len(caps[0])
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


# --- a GRPO round after the rounds ---------------------------------------------------------------

def start_round(exp: Experiment, layout: RunLayout) -> int:
    """The round GRPO starts from: the kept round with [rounds] (0: the base model), else
    round 1 (the loop's adapter)."""
    return curve(exp, layout)["kept"] if exp.rounds.rounds > 1 else 1


def run_grpo(ctx: Context) -> dict:
    """The grpo stage: GRPO (train.grpo) on the [eval] suite's train tasks from the starting
    round's adapter (a fresh LoRA when no round was kept), then export, evaluation on every
    [eval] task with the baseline's seeds, and the capability check; each part kept once done
    (a killed GRPO training starts again). Returns {"ran": True, "start_round", "train" (the
    GRPO metadata's
    steps, train_seconds, completions, groups, zero_std_groups, reward_first, reward_last,
    kl_last), "model", "eval", "capability"}, or {"ran": False, "start_round", "reason"} when
    every group's rewards were equal (train.grpo.NoSignal)."""
    import dataclasses

    from tracetune.eval.runner import select_tasks
    from tracetune.experiment.stages import train_base
    from tracetune.train.grpo import NoSignal, train_grpo

    exp, lay = ctx.exp, ctx.layout
    start = start_round(exp, lay)
    parts = lay.grpo_parts()
    lay.grpo.mkdir(parents=True, exist_ok=True)
    if not RunLayout.adapter_meta(parts["adapter"]).is_file():
        tasks = select_tasks(dataclasses.replace(exp.eval, split="train"))
        init = lay.round_parts(start)["adapter"] if start else None
        ctx.log(f"[grpo] {len(tasks)} train tasks, starting from "
                f"{'round ' + str(start) if start else 'the base weights (no round kept)'}")
        try:
            train_grpo(tasks, train_base(exp), parts["adapter"], exp.grpo, init_adapter=init,
                       log=lambda line: ctx.log(f"[grpo] {line}"),
                       on_progress=lambda step, total, reward: ctx.progress(
                           "grpo", step, total,
                           f"reward {reward:.2f}" if reward is not None else ""))
        except NoSignal as exc:  # a result (GRPO had nothing to learn from), not a fault
            ctx.log(f"[grpo] {exc}")
            return {"ran": False, "start_round": start, "reason": str(exc)}
    meta = json.loads(RunLayout.adapter_meta(parts["adapter"]).read_text())
    keys = ("steps", "train_seconds", "completions", "groups", "zero_std_groups",
            "reward_first", "reward_last", "kl_last", "completion_length_mean")
    return {"ran": True, "start_round": start, "train": {k: meta.get(k) for k in keys},
            **export_and_evaluate(ctx, parts, "grpo")}


def grpo_result(exp: Experiment, layout: RunLayout) -> dict | None:
    """results.json's "grpo" (None until the grpo stage finished; {"ran": False, "start_round",
    "reason"} when it had nothing to learn from): {"ran": True, "start_round", "heldout"
    (success rate), "ci" (95% clustered Wilson), "n", "start_heldout", "delta" (against the
    starting round), "delta_ci", "p" ([rounds] test, against the starting round),
    "delta_vs_base", "p_vs_base", "capability", "capability_delta" (against the base model),
    "train" (the stage's GRPO summary), "seconds" and "peak_ram_gb" (the stage's wall time and
    peak memory: training, export and evaluations)}."""
    from tracetune.eval.compare import compare
    from tracetune.stats import clustered_wilson_interval

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
    by_task: dict[str, list[bool]] = {}
    for e in now:
        by_task.setdefault(e["task_id"], []).append(bool(e["success"]))
    ci = clustered_wilson_interval([sum(v) for v in by_task.values()],
                                   [len(v) for v in by_task.values()])
    rate = sum(e["success"] for e in now) / len(now)
    out = {"ran": True, "start_round": start, "heldout": rate, "ci": list(ci), "n": len(now),
           "start_heldout": sum(e["success"] for e in then) / len(then),
           "delta": o.delta_success, "delta_ci": [o.delta_ci_low, o.delta_ci_high],
           "test": exp.rounds.test,
           "p": gate_p(exp.rounds.test, now, then, seed=exp.info.seed),
           "delta_vs_base": rate - sum(e["success"] for e in base) / len(base),
           "p_vs_base": gate_p(exp.rounds.test, now, base, seed=exp.info.seed),
           "train": summary["train"], "seconds": record.get("seconds"),
           "peak_ram_gb": record.get("peak_ram_gb")}
    if exp.capability.enabled:
        cap = _episodes(layout.grpo_parts()["capability"])
        cap0 = _episodes(layout.round_parts(0)["capability"])
        out["capability"] = sum(e["success"] for e in cap) / len(cap)
        out["capability_delta"] = out["capability"] - sum(e["success"] for e in cap0) / len(cap0)
    return out
