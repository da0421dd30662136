"""The report of a loop: RUN/report.md (plots in RUN/report_files/) and RUN/report.html, one
self-contained file (plots inlined as PNG data URIs, no scripts, no external resources).

Sections: the answer in one paragraph; hypothesis verdicts with the numbers that decided them;
the decision with each criterion; per-task success of every arm with 95% intervals; attempts,
duration and tokens; the training loss; the capability check; reproducibility (seeds, package
versions, hashes, row counts of every data set). The pre-registration is checked first: a report
is never written against hypotheses edited after they were frozen.

Inputs: RUN/results.json (every number and figure; see analysis for its keys), the loss logs it
names, the experiment and the pre-registration. No trajectory store is opened, except for a
results.json written by an earlier release that lacks the report's figures: those are then read
from the run directory once, by `_figures_from_run_directory`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.experiment import prereg
from tracetune.experiment.analysis import REPORT_KEYS
from tracetune.experiment.layout import RunLayout
from tracetune.experiment.spec import experiment_hash, load_experiment
from tracetune.stats import stars

COLORS = {"base": "#7f7f7f", "adapted": "#1f77b4", "control": "#ff7f0e"}


def write_report(out: Path) -> tuple[Path, Path]:
    """Write RUN/report.md (with RUN/report_files/) and RUN/report.html; returns their paths."""
    layout = RunLayout(out)
    if not layout.experiment.is_file():
        raise TracetuneError(f"{layout.root} is not a loop directory (no "
                             f"{layout.experiment.name})")
    exp = load_experiment(layout.experiment)
    record = prereg.verify(exp, layout.root)
    if not layout.results.is_file():
        raise TracetuneError(f"{layout.root} has no {layout.results.name} yet: run the loop's "
                             "compare stage")
    results = json.loads(layout.results.read_text())
    if all(key in results for key in REPORT_KEYS):
        figures = {key: results[key] for key in REPORT_KEYS}
    else:  # a results.json of an earlier release: its runs must still report
        figures = _figures_from_run_directory(exp, layout)
    plots = _plots(exp, layout, results, figures)
    layout.report_files.mkdir(exist_ok=True)
    for name, png in plots.items():
        layout.report_plot(name).write_bytes(png)
    blocks = _blocks(exp, layout, results, figures, record)
    layout.report_md.write_text(_markdown(blocks, plots, layout))
    layout.report_html.write_text(_html(exp.info.name, blocks, plots))
    return layout.report_md, layout.report_html


def _figures_from_run_directory(exp, layout: RunLayout) -> dict:
    """FALLBACK for a results.json written before the compare stage recorded the report's
    figures (REPORT_KEYS): compute them from the run directory exactly as that stage now does
    (analysis.arm_summary, analysis.training_summary), so such a run reports as a new one would.
    The only place the report opens a trajectory store."""
    from tracetune.experiment.analysis import arm_runs, arm_summary, training_summary
    from tracetune.traces.store import Store

    arms = {}
    for arm, path in arm_runs(exp, layout.root).items():
        store = Store(path)
        try:
            arms[arm] = arm_summary(layout, path, store.episodes(), store.run().packages)
        finally:
            store.close()
    return {"arms": arms, **training_summary(layout)}


# --- content, shared by both renderings ----------------------------------------------------------

def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}pp"


def _answer(results: dict) -> str:
    split = "heldout" if "heldout" in results["comparisons"] else "all"
    where = "held-out tasks" if split == "heldout" else "tasks (all of them also trained on)"
    held = results["comparisons"][split]
    row = next(r for r in held["results"] if r["model"] == "adapted" and r["task"] == "overall")
    base = row["baseline_rate"]
    text = (f"On {len(results['split'][split])} {where} ({row['n']} samples per "
            f"model), the adapted model passed {_pct(row['success_rate'])} against the base "
            f"model's {_pct(base)}: Δ = {_pp(row['delta_success'])} (95% CI "
            f"{_pp(row['delta_ci_low'])} to {_pp(row['delta_ci_high'])}), Fisher p = "
            f"{row['p_value']:.3g}, McNemar p = {row['mcnemar_p']:.3g}")
    # The pre-registered hypothesis on this metric decides (its own test and alpha), so this
    # sentence and the hypotheses' verdicts can never disagree; without one, Fisher and the
    # interval must both exclude "no difference".
    hyp = next((h for h in results.get("hypotheses", [])
                if h.get("metric") == f"{split}.success_rate" and h.get("p_value") is not None
                and h.get("control") == "base" and h.get("treatment") == "adapted"), None)
    if hyp is not None:
        text += (f", {hyp['test'].replace('_', ' ')} p = {hyp['p_value']:.3g} "
                 f"(pre-registered test of {hyp['id']}). ")
        significant = hyp["p_value"] < hyp["alpha"]
    else:
        text += ". "
        significant = row["p_value"] < 0.05 and (row["delta_ci_low"] > 0
                                                 or row["delta_ci_high"] < 0)
    if significant and row["delta_success"] > 0:
        text += "**The adapter helped**" + (" on tasks it never trained on." if split == "heldout"
                                            else ", on the tasks it trained on.")
    elif significant:
        text += "**The adapter hurt**."
    else:
        text += ("**No reliable difference**: " + (
            f"{hyp['test'].replace('_', ' ')} p >= {hyp['alpha']}" if hyp is not None else
            "the interval includes zero or the test is not significant")
            + ", so this run does not show that the adapter helped.")
    tool = {m["metric"]: m for m in held["metrics"] if m["model"] == "adapted"}
    if "parse_errors" in tool:
        pe, wr, lp, st = (tool[k] for k in ("parse_errors", "wrote", "loop_detections", "steps"))
        text += (f" Tool use (per episode, means over tasks): parse errors {pe['baseline']:.2f} → "
                 f"{pe['value']:.2f} (Δ {pe['delta']:+.2f}, 95% CI {pe['ci_low']:+.2f} to "
                 f"{pe['ci_high']:+.2f}, Wilcoxon p = {pe['p_wilcoxon']:.3g}); episodes that "
                 f"wrote or edited a file {_pct(wr['baseline'])} → {_pct(wr['value'])}"
                 + (f", that made a valid edit {_pct(tool['valid_edit']['baseline'])} → "
                    f"{_pct(tool['valid_edit']['value'])}" if "valid_edit" in tool else "")
                 + (f", whose valid edit replaced the bug's line "
                    f"{_pct(tool['fault_edit']['baseline'])} → {_pct(tool['fault_edit']['value'])}"
                    if "fault_edit" in tool else "")
                 + "; loop "
                 f"detections {lp['baseline']:.2f} → {lp['value']:.2f}; steps "
                 f"{st['baseline']:.2f} → {st['value']:.2f}.")
    cap = results["comparisons"].get("capability")
    if cap:
        c = next(r for r in cap["results"] if r["model"] == "adapted" and r["task"] == "overall")
        text += (f" On the capability check ({c['n']} problems, greedy) it scored "
                 f"{_pct(c['success_rate'])} against {_pct(c['baseline_rate'])} "
                 f"(Δ = {_pp(c['delta_success'])}, McNemar p = {c['mcnemar_p']:.3g}).")
    return text


def _blocks(exp, layout: RunLayout, results: dict, figures: dict,
            record: dict) -> list[tuple[str, object]]:
    """The report as (kind, payload) blocks: ("h", title), ("p", text), ("table", (head, rows)),
    ("plot", name), ("pre", text)."""
    b: list[tuple[str, object]] = []
    b.append(("p", exp.info.description or ""))
    b.append(("h", "Answer"))
    b.append(("p", _answer(results)))
    b.append(("h", "Pre-registered hypotheses"))
    rows = [[v["id"], v["claim"], v["verdict"], v["detail"]] for v in results["hypotheses"]]
    b.append(("table", (["id", "claim", "verdict", "numbers that decided"], rows)))
    b.append(("p", f"Frozen at {record['frozen_at']} before any result existed "
                   f"(sha256 {record['sha256']}); checked unchanged when this report was "
                   "written."))
    d = results["decision"]
    b.append(("h", f"Decision: {d['outcome']}"))
    crit = [[kind, c["criterion"], "n/a" if c["observed"] is None else
             c["observed"] if isinstance(c["observed"], str) else f"{c['observed']:.4g}",
             "yes" if c["holds"] else "no"] for kind in ("go", "abort") for c in d[kind]]
    b.append(("table", (["set", "criterion", "observed", "holds"], crit)))
    b.append(("p", d["rule"] + "."))
    for name, title in (("heldout", "Held-out tasks"), ("train", "Train tasks"),
                        ("capability", "Capability check")):
        comp = results["comparisons"].get(name)
        if not comp:
            continue
        b.append(("h", f"{title}: success against the base model"))
        head = ["model", "task", "n", "success [95% CI]", "Δ vs base [95% CI]", "Fisher p",
                "Cohen's h", "avg attempts", "avg duration s"]
        table = []
        for r in comp["results"]:
            if r["task"] != "overall" and name == "capability":
                continue
            lo, hi = r["ci_low"], r["ci_high"]
            delta = "" if r["model"] == comp["baseline"] else \
                f"{_pp(r['delta_success'])} [{_pp(r['delta_ci_low'])}, {_pp(r['delta_ci_high'])}]"
            p = "" if r["model"] == comp["baseline"] else f"{r['p_value']:.3g}{stars(r['p_value'])}"
            h = "" if r["model"] == comp["baseline"] else f"{r['cohens_h']:+.2f}"
            table.append([r["model"], r["task"], str(r["n"]),
                          f"{_pct(r['success_rate'])} [{_pct(lo)}, {_pct(hi)}]", delta, p, h,
                          f"{r['avg_attempts']:.2f}", f"{r['avg_duration']:.2f}"])
        b.append(("table", (head, table)))
        overall = [r for r in comp["results"] if r["task"] == "overall"
                   and r["model"] != comp["baseline"]]
        for r in overall:
            b.append(("p", f"{r['model']}: McNemar p = {r['mcnemar_p']:.3g} on {r['paired']} "
                           "paired (task, trial) outcomes; the overall interval is "
                           "cluster-robust over tasks."))
        if comp["metrics"]:
            b.append(("table", (["model", "metric (per-task mean)", "base", "model", "Δ [95% CI]",
                                 "Wilcoxon p", "paired t p"],
                                [[m["model"], m["metric"], f"{m['baseline']:.2f}",
                                  f"{m['value']:.2f}",
                                  f"{m['delta']:+.2f} [{m['ci_low']:+.2f}, {m['ci_high']:+.2f}]",
                                  f"{m['p_wilcoxon']:.3g}", f"{m['p_t']:.3g}"]
                                 for m in comp["metrics"]])))
    if results.get("rounds"):
        b += _rounds_blocks(results["rounds"], exp.capability.suite)
    if results.get("grpo"):
        b += _grpo_blocks(results["grpo"], exp.capability.suite)
    failures = results.get("failures") or {}
    if any(failures.values()):
        arms = list(failures)
        kinds = sorted({k for f in failures.values() for k in f},
                       key=lambda k: -sum(f.get(k, 0) for f in failures.values()))
        b.append(("h", "Held-out tasks: why failed episodes failed"))
        b.append(("p", "Each failed episode by its last attempt: a static check that rejected "
                       "the code (syntax), a test that timed out, a module the tests could not "
                       "import, an exception the code raised, or a wrong answer."))
        b.append(("table", (["failure", *arms],
                            [[k, *(str(failures[a].get(k, 0)) for a in arms)] for k in kinds])))
    b.append(("h", "Plots"))
    b.append(("plot", "success_per_task"))
    b.append(("plot", "attempts_duration"))
    b.append(("plot", "loss"))
    if "capability" in results["comparisons"]:
        b.append(("plot", "capability"))
    b.append(("h", "Reproducibility"))
    b.append(("pre", _repro(exp, layout, results, figures, record)))
    return b


def _rounds_blocks(rounds: dict, suite: str) -> list[tuple[str, object]]:
    """The rounds of expert iteration: one row per round, the gate's verdicts, the kept round."""
    g = rounds["settings"]
    b: list[tuple[str, object]] = [("h", "Rounds of expert iteration")]
    b.append(("p", f"Up to {g['rounds']} rounds, mode {g['mode']}. Pre-registered gate before "
                   f"each next round: held-out gain over the previous round of at least "
                   f"{_pp(g['min_gain'])} with {g['test']} p < {g['alpha']}, and "
                   f"{suite} within {_pp(-g['max_capability_drop'])} of the base model."))
    head = ["round", "held-out success [95% CI]", "Δ vs base [95% CI]", f"{g['test']} p vs base",
            "Δ vs previous, p", suite, "train rows, s", "gate"]
    table = []
    for r in rounds["rounds"]:
        gate = r.get("gate")
        table.append([
            str(r["round"]) + (" (base)" if r["round"] == 0 else ""),
            f"{_pct(r['heldout'])} [{_pct(r['ci'][0])}, {_pct(r['ci'][1])}] (n={r['n']})",
            "" if not r["round"] else
            f"{_pp(r['delta'])} [{_pp(r['delta_ci'][0])}, {_pp(r['delta_ci'][1])}]",
            "" if not r["round"] else f"{r['p']:.3g}{stars(r['p'])}",
            "" if not gate else f"{_pp(gate['gain'])}, p = {gate['p']:.3g}",
            "" if r.get("capability") is None else _pct(r["capability"]) + (
                "" if not r["round"] or r.get("capability_delta") is None
                else f" ({_pp(r['capability_delta'])})"),
            "" if not r["round"] else
            f"{r['train']['rows']}, {_num(r.get('seconds'), '.0f')}",
            "" if not gate else ("passed" if gate["passed"] else "stop")])
    b.append(("table", (head, table)))
    kept = rounds["kept"]
    b.append(("p", (f"Kept: round {kept}." if kept else "Kept: no round (the base model "
                    "stays).") + f" Stopped: {rounds['stopped']}. Train rows and seconds: the "
                   "round's training rows, and its stages' wall time."))
    b.append(("plot", "rounds"))
    return b


def _grpo_blocks(g: dict, suite: str) -> list[tuple[str, object]]:
    """The GRPO round: held-out success against the round it started from and the base."""
    start = f"round {g['start_round']}" if g["start_round"] else "the base model"
    b: list[tuple[str, object]] = [("h", "GRPO from sandbox rewards")]
    if not g.get("ran"):
        return b + [("p", f"Started from {start}; no adapter came out: {g['reason']}")]
    t = g["train"]
    b.append(("p", f"Started from {start} ({_pct(g['start_heldout'])} held-out). Reward: the "
                   "share of a task's hidden tests each completion passes; groups whose rewards "
                   "were all equal are skipped (no signal) and counted."))
    rows = [["held-out success [95% CI]",
             f"{_pct(g['heldout'])} [{_pct(g['ci'][0])}, {_pct(g['ci'][1])}] (n={g['n']})"],
            [f"Δ vs {start} [95% CI], {g['test']} p",
             f"{_pp(g['delta'])} [{_pp(g['delta_ci'][0])}, {_pp(g['delta_ci'][1])}], "
             f"p = {g['p']:.3g}"],
            [f"Δ vs base, {g['test']} p", f"{_pp(g['delta_vs_base'])}, p = {g['p_vs_base']:.3g}"],
            ["optimizer steps, completions",
             f"{t['steps']}, {t['completions']} in {t['groups']} groups "
             f"({t['zero_std_groups']} skipped: equal rewards)"],
            ["mean reward first → last logged step",
             f"{_num(t['reward_first'], '.3f')} → {_num(t['reward_last'], '.3f')}"],
            ["KL to the reference (last step)", _num(t["kl_last"], ".4g")],
            ["cost", f"{_num(t['train_seconds'], '.0f')} s training; stage "
                     f"{_num(g['seconds'], '.0f')} s, peak RAM {_num(g['peak_ram_gb'], '.2f')} GB"]]
    if g.get("capability") is not None:
        rows.append([suite, f"{_pct(g['capability'])} ({_pp(g['capability_delta'])} vs base)"])
    b.append(("table", (["", "value"], rows)))
    return b


def _num(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _repro(exp, layout: RunLayout, results: dict, figures: dict, record: dict) -> str:
    from tracetune.tomlconf import read_toml

    lines = [f"experiment      {exp.info.name} ({layout.experiment})",
             f"config sha256   {experiment_hash(read_toml(layout.experiment))}",
             f"prereg sha256   {record['sha256']}",
             f"eval seed       {exp.info.seed} (per-sample seeds derived from it; base and "
             "adapted share them)",
             f"train seed      {exp.train_config.seed}",
             f"split           md5(task id) % 100 < {exp.eval.train_pct} -> train "
             f"({len(results['split'].get('train', []))} train, "
             f"{len(results['split'].get('heldout', []))} "
             "held-out tasks)"]
    packages = figures["arms"]["base"]["packages"]  # the base model's evaluation run's
    lines.append("packages        " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items())))
    for key, d in figures["datasets"].items():
        label = key.replace("_", " ")
        lines.append(f"{label:<16}rows {d['counts']}, dropped {d['dropped']} "
                     f"({layout.root / d['path']})")
    m = figures["adapter"]
    if m:
        lines.append(f"adapter         {m['rows']} rows, {m['steps']} steps, "
                     f"{_num(m['train_seconds'], '.0f')} s, loss {_num(m['first_loss'], '.3f')} "
                     f"-> {_num(m['last_loss'], '.3f')}; versions {m['versions']}")
    for arm, a in figures["arms"].items():
        lines.append(f"run {arm:<12}{layout.root / a['run']}")
    for stage, info in results["stages"].items():
        lines.append(f"stage {stage:<10}{info['seconds']} s")
    lines.append(f"reproduce       tracetune loop {layout.experiment} --out NEW_DIR")
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------

def _plots(exp, layout: RunLayout, results: dict, figures: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}

    def png(fig) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        return buf.getvalue()

    # per-task success with Wilson intervals, held-out and train
    splits = [s for s in ("heldout", "train") if s in results["comparisons"]]
    n_tasks = max(len(results["split"][s]) for s in splits)
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 1.2 + 0.28 * n_tasks),
                             squeeze=False)
    for ax, split in zip(axes[0], splits):
        comp = results["comparisons"][split]
        models = [comp["baseline"]] + comp["models"]
        tasks = sorted({r["task"] for r in comp["results"] if r["task"] != "overall"})
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            rows = {r["task"]: r for r in comp["results"] if r["model"] == model}
            ys = [j + i * width for j in range(len(tasks))]
            rates = [rows[t]["success_rate"] if t in rows else 0 for t in tasks]
            err = [[max(0, rows[t]["success_rate"] - rows[t]["ci_low"]) if t in rows else 0
                    for t in tasks],
                   [max(0, rows[t]["ci_high"] - rows[t]["success_rate"]) if t in rows else 0
                    for t in tasks]]
            ax.barh(ys, rates, height=width, xerr=err, label=model,
                    color=COLORS.get(model), error_kw={"elinewidth": 0.6, "capsize": 1.5})
        ax.set_yticks([j + 0.4 - width / 2 for j in range(len(tasks))])
        ax.set_yticklabels([t.split("/")[-1] for t in tasks], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("success rate (95% Wilson CI)")
        ax.set_title(f"{split} tasks")
        ax.legend(fontsize=7, loc="lower right")
    plots["success_per_task"] = png(fig)

    # attempts and duration per arm (every episode of each arm's run), from the compare
    # stage's figures: the box plot is drawn from its recorded statistics (bxp), not from the
    # episodes
    nan = float("nan")
    arms = list(figures["arms"])
    attempts = [nan if figures["arms"][a]["mean_attempts"] is None
                else figures["arms"][a]["mean_attempts"] for a in arms]
    boxes = [figures["arms"][a]["duration_s"]
             or dict.fromkeys(("q1", "med", "q3", "whislo", "whishi", "mean"), nan) for a in arms]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    a1.bar(arms, attempts, color=[COLORS.get(a, "#2ca02c") for a in arms])
    a1.set_ylabel("mean attempts per episode")
    a1.set_title("attempts")
    a2.bxp([dict(box) for box in boxes], showfliers=False)
    a2.set_xticks(range(1, len(arms) + 1))
    a2.set_xticklabels(arms)
    a2.set_ylabel("episode duration, s")
    a2.set_title("duration")
    plots["attempts_duration"] = png(fig)

    # training loss
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, rel in figures["loss_curves"].items():
        path = layout.root / rel
        if path.is_file():
            points = [json.loads(x) for x in path.read_text().splitlines()]
            ax.plot([p["step"] for p in points], [p["loss"] for p in points], marker=".",
                    label=label, color=COLORS.get("adapted" if label == "adapter" else label))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("LoRA training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plots["loss"] = png(fig)

    # capability: base vs adapted with CIs
    cap = results["comparisons"].get("capability")
    if cap:
        rows = [r for r in cap["results"] if r["task"] == "overall"]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for i, r in enumerate(rows):
            ax.bar(i, r["success_rate"], yerr=[[r["success_rate"] - r["ci_low"]],
                                               [r["ci_high"] - r["success_rate"]]],
                   color=COLORS.get(r["model"]), capsize=4)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r["model"] for r in rows])
        ax.set_ylabel("pass@1 (greedy), 95% CI")
        delta = rows[-1]["delta_success"]
        ax.set_title(f"{exp.capability.suite}: Δ = {_pp(delta)}")
        plots["capability"] = png(fig)

    rounds = results.get("rounds")
    if rounds and rounds["rounds"]:
        rows = rounds["rounds"]
        xs = [r["round"] for r in rows]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ys = [r["heldout"] for r in rows]
        ax.errorbar(xs, ys, yerr=[[y - r["ci"][0] for y, r in zip(ys, rows)],
                                  [r["ci"][1] - y for y, r in zip(ys, rows)]],
                    marker="o", capsize=4, label="held-out success (95% CI)",
                    color=COLORS.get("adapted"))
        caps = [(r["round"], r["capability"]) for r in rows if r.get("capability") is not None]
        if caps:
            ax.plot(*zip(*caps), marker="s", linestyle="--", label=exp.capability.suite,
                    color=COLORS.get("base"))
        ax.axvline(rounds["kept"], color="grey", linestyle=":", label="kept round")
        ax.set_xticks(xs)
        ax.set_xlabel("round (0: base model)")
        ax.set_ylabel("success rate")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("Expert iteration: success per round")
        plots["rounds"] = png(fig)
    return plots


# --- renderings --------------------------------------------------------------------------------

CAPTIONS = {"success_per_task": "Per-task success of each model (95% Wilson intervals)",
            "attempts_duration": "Attempts and episode duration per model",
            "loss": "Training loss", "capability": "Capability check: base vs adapted",
            "rounds": "Held-out success and capability per round"}


def _markdown(blocks, plots, layout: RunLayout) -> str:
    out = []
    for kind, payload in blocks:
        if kind == "h":
            out.append(f"## {payload}\n")
        elif kind == "p":
            if payload:
                out.append(f"{payload}\n")
        elif kind == "table":
            head, rows = payload
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |"
                    for r in rows]
            out.append("")
        elif kind == "plot" and payload in plots:
            out.append(f"![{CAPTIONS[payload]}]({layout.relative(layout.report_plot(payload))})\n")
        elif kind == "pre":
            out.append(f"```\n{payload}\n```\n")
    return "# tracetune report\n\n" + "\n".join(out)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:nth-child(-n+2),th{text-align:left}
pre{background:#f5f5f5;padding:1em;overflow-x:auto;font-size:12px}img{max-width:100%}
.SUPPORTED{color:#1a7f37;font-weight:bold}.NOT{color:#b42318;font-weight:bold}"""


VERDICT_CLASS = {"SUPPORTED": ' class="SUPPORTED"', "NOT SUPPORTED": ' class="NOT"'}


def _html(title: str, blocks, plots) -> str:
    esc = html.escape
    body = [f"<h1>tracetune report: {esc(title)}</h1>"]
    for kind, payload in blocks:
        if kind == "h":
            body.append(f"<h2>{esc(str(payload))}</h2>")
        elif kind == "p":
            text = esc(str(payload))
            while "**" in text:
                text = text.replace("**", "<strong>", 1).replace("**", "</strong>", 1)
            body.append(f"<p>{text}</p>")
        elif kind == "table":
            head, rows = payload
            cells = "".join(f"<th>{esc(h)}</th>" for h in head)
            trs = []
            for r in rows:
                tds = "".join(f"<td{VERDICT_CLASS.get(str(c), '')}>{esc(str(c))}</td>"
                              for c in r)
                trs.append(f"<tr>{tds}</tr>")
            body.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(trs)}"
                        "</tbody></table>")
        elif kind == "plot" and payload in plots:
            data = base64.b64encode(plots[payload]).decode()
            body.append(f'<figure><img alt="{esc(CAPTIONS[payload])}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f"{esc(CAPTIONS[payload])}</figcaption></figure>")
        elif kind == "pre":
            body.append(f"<pre>{esc(str(payload))}</pre>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>tracetune report: {esc(title)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
