"""Distillation experiments (seed 003): production logs -> suites -> a smaller model trained on
the logged answers -> replayed on the newest logged requests -> GO / ITERATE / ABORT.

An experiment file with a [logs] section is one of these (`tracetune loop` and
`tracetune check-experiment` take both kinds):

    [experiment]   name, description, seed
    [logs]         source (a log file, relative to the experiment file), format (as
                   `tracetune import`), roles, split (train/val/test %, time-ordered),
                   dedup_threshold, classify_model, max_rows (newest train items mined; 0: all)
    [models]       base (the candidate, e.g. embedded), train_base, adapted
    [replay]       the replay of the test items: judge, threshold (the replay workflow's options)
                   and the sampling of `tracetune eval` (trials, temperature, top_p, max_tokens,
                   check_timeout_s, concurrency)
    [train]        the LoRA recipe (TrainConfig)
    [export]       target: gguf-lora, merged-gguf or none
    [[hypothesis]] id, claim, metric (delta.quality), min_delta, test (paired_permutation or
                   none), alpha
    [decision]     go / abort: "METRIC OP NUMBER" over the metrics below

Stages (the loop engine's, `loop.Loop`, with this table):
    logs          import the log into RUN/interactions/, classify roles, build the suites,
                  profile the logged baseline                         RUN/interactions/
    mine          SFT rows from the logged answers of the train items (leakage-checked
                  against the test items)                              RUN/data/
    train, export as in every loop                                     RUN/adapter/, RUN/export/
    baseline      the candidate base model replays the test items      RUN/baseline/
    adapted       the adapted model replays the same items and seeds   RUN/adapted/
    compare       metrics, hypotheses, decision                        RUN/results.json
    report        RUN/report.md

Metrics:
    logged.success_rate, logged.latency_mean_s, logged.latency_median_s, logged.latency_p95_s
        the logged calls of the chosen roles (every call, failed ones included): the baseline
    base.quality, adapted.quality
        share of test items answered acceptably (their tests pass, or the judge accepts), per
        item averaged over trials, then over items
    base.latency_mean_s, base.latency_median_s, adapted.latency_mean_s, adapted.latency_median_s,
    adapted.latency_p95_s
        generation seconds per request of the replay
    adapted.peak_ram_gb          peak memory of the process that replayed with the adapted model
    adapted.speedup              logged.latency_mean_s / adapted.latency_mean_s
    adapted.quality_ratio        adapted.quality / logged.success_rate (seed 003's "quality
                                 maintained": >= 0.98)
    delta.quality                adapted.quality - base.quality
    train.seconds, train.rows, train.peak_ram_gb
A GO needs every go criterion and every hypothesis; ABORT needs every abort criterion;
otherwise ITERATE (seed 003's decision criteria: deploy if fast enough at equal quality, iterate
if either fails, abort if neither improved).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.experiment.spec import (Criterion, Decision, ExperimentInfo, ExportSection,
                                      Models, as_json, field_defaults, preregistration_tables,
                                      read_sections)
from tracetune.experiment.stages import Context, Stage
from tracetune.experiment.stages import export as export_stage
from tracetune.experiment.stages import train as train_stage
from tracetune.experiment.stages import write_results
from tracetune.tomlconf import build, read_toml
from tracetune.train.config import TrainConfig

SECTIONS = ("experiment", "logs", "models", "replay", "train", "export", "hypothesis",
            "decision")
INTERACTIONS = "interactions"
SUITES = "suites"
METRICS = ("logged.success_rate", "logged.latency_mean_s", "logged.latency_median_s",
           "logged.latency_p95_s", "base.quality", "adapted.quality", "base.latency_mean_s",
           "base.latency_median_s", "adapted.latency_mean_s", "adapted.latency_median_s",
           "adapted.latency_p95_s", "adapted.peak_ram_gb", "adapted.speedup",
           "adapted.quality_ratio", "delta.quality", "train.seconds", "train.rows",
           "train.peak_ram_gb")
TESTS = ("paired_permutation", "none")


@dataclass(frozen=True)
class LogsSection:
    source: str = ""
    """The log file (relative paths are read from the experiment file's directory)."""
    format: str = "openai-jsonl"
    """Its format, as `tracetune import --format` takes it."""
    roles: tuple[str, ...] = ()
    """Agent roles whose items make the suites (empty: every role)."""
    split: tuple[int, ...] = (80, 10, 10)
    """Train, val and test shares in percent, in time order."""
    dedup_threshold: float = 0.8
    """Near-duplicate threshold (estimated Jaccard of word 3-shingles)."""
    classify_model: str | None = None
    """A model spec that classifies what the rules leave at `other` (None: rules only)."""
    max_rows: int = 0
    """Train on the newest this many train items' logged answers (0: all of them)."""


@dataclass(frozen=True)
class ReplaySection:
    judge: str = "similarity"
    """How items without runnable tests are graded: similarity, or a judge model spec."""
    threshold: float = 0.6
    """similarity: the least similarity to the logged answer that passes."""
    trials: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    check_timeout_s: float = 10.0
    concurrency: int = 1


@dataclass(frozen=True)
class DistillHypothesis:
    id: str
    claim: str
    metric: str = "delta.quality"
    min_delta: float = 0.0
    test: str = "paired_permutation"
    alpha: float = 0.05


@dataclass(frozen=True)
class DistillExperiment:
    path: Path
    info: ExperimentInfo
    logs: LogsSection
    models: Models
    replay: ReplaySection
    train: dict
    train_config: TrainConfig
    export: ExportSection
    hypotheses: tuple[DistillHypothesis, ...]
    decision: Decision

    kind = "distill"

    @property
    def source(self) -> Path:
        src = Path(self.logs.source)
        return src if src.is_absolute() else (self.path.parent / src)

    def section(self, name: str) -> dict:
        value = getattr(self, name)
        return as_json(value if isinstance(value, dict) else asdict(value))

    def section_defaults(self, name: str) -> dict:
        return field_defaults(getattr(self, name)) if name != "train" else \
            field_defaults(TrainConfig)

    def suite_config(self):
        from tracetune.logs.suites import SuiteConfig

        return SuiteConfig(roles=tuple(self.logs.roles), split=tuple(self.logs.split),
                           dedup_threshold=self.logs.dedup_threshold,
                           classify_model=self.logs.classify_model)

    def replay_config(self, model: str, suite: Path):
        from tracetune.eval.config import EvalConfig

        r = self.replay
        workflow = "replay" + (f",judge={r.judge}" if r.judge != "similarity" else "") + \
            (f",threshold={r.threshold}" if r.threshold != ReplaySection.threshold else "")
        return EvalConfig(suite=str(suite), workflow=workflow, model=model, trials=r.trials,
                          temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                          check_timeout_s=r.check_timeout_s, concurrency=r.concurrency,
                          seed=self.info.seed, split="all", train_pct=100)

    def preregistered(self) -> dict:
        return {"hypotheses": [asdict(h) for h in self.hypotheses],
                "decision": {"go": [c.text for c in self.decision.go],
                             "abort": [c.text for c in self.decision.abort]}}


def is_distill(path: Path) -> bool:
    """Whether an experiment file is a distillation experiment (it has a [logs] section)."""
    return "logs" in read_toml(Path(path))


def load_distill(path: Path) -> DistillExperiment:
    """Read and validate a distillation experiment; every problem is one TracetuneError naming
    the file, section and key, before anything runs."""
    from tracetune.logs.importers import FORMATS
    from tracetune.models import parse_spec

    path = Path(path)
    data, where = read_sections(path, SECTIONS)
    info = build(ExperimentInfo, data.get("experiment", {}), f"{where} [experiment]")
    logs = build(LogsSection, data.get("logs", {}), f"{where} [logs]")
    models = build(Models, data.get("models", {}), f"{where} [models]")
    replay = build(ReplaySection, data.get("replay", {}), f"{where} [replay]")
    train_table = data.get("train", {})
    train_cfg = build(TrainConfig, train_table, f"{where} [train]")
    export = build(ExportSection, data.get("export", {}), f"{where} [export]")
    hyps, decision = preregistration_tables(data, DistillHypothesis, where)
    exp = DistillExperiment(path, info, logs, models, replay, train_table, train_cfg, export,
                            hyps, decision)
    # --- values and cross-references ------------------------------------------------------
    if not logs.source:
        raise TracetuneError(f"{where} [logs] source: name the log file")
    if not exp.source.is_file():
        raise TracetuneError(f"{where} [logs] source: no file {exp.source}")
    if logs.format not in FORMATS:
        raise TracetuneError(f"{where} [logs] format: {logs.format!r} is not one of "
                             f"{', '.join(FORMATS)}")
    if logs.max_rows < 0:
        raise TracetuneError(f"{where} [logs] max_rows: must be 0 (all) or more")
    try:
        exp.suite_config().validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [logs]: {exc}") from None
    for key, spec in (("base", models.base), ("train_base", models.train_base),
                      ("adapted", models.adapted), ("[logs] classify_model",
                                                    logs.classify_model)):
        if spec is not None:
            try:
                parse_spec(spec)
            except TracetuneError as exc:
                raise TracetuneError(f"{where} {'' if key.startswith('[') else '[models] '}"
                                     f"{key}: {exc}") from None
    try:
        config = exp.replay_config(models.base, Path("suite.test.json"))
        config.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [replay]: {exc}") from None
    try:
        train_cfg.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [train]: {exc}") from None
    if train_cfg.method != "sft":
        raise TracetuneError(f"{where} [train] method: logged answers make SFT rows only")
    from tracetune.experiment.spec import EXPORT_TARGETS

    if export.target not in EXPORT_TARGETS:
        raise TracetuneError(f"{where} [export] target: {export.target!r} is not one of "
                             f"{', '.join(EXPORT_TARGETS)}")
    from tracetune.train.recipe import base_config

    try:
        base_config(models.train_base or models.base, train_cfg)
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [models] train_base / [train]: {exc}") from None
    names = set()
    for h in hyps:
        w = f"{where} [[hypothesis]] {h.id}"
        if h.metric not in METRICS:
            raise TracetuneError(f"{w}: no metric {h.metric!r} (one of {', '.join(METRICS)})")
        if h.test not in TESTS:
            raise TracetuneError(f"{w}: test {h.test!r} is not one of {', '.join(TESTS)}")
        if h.test == "paired_permutation" and h.metric != "delta.quality":
            raise TracetuneError(f"{w}: paired_permutation tests delta.quality (per item)")
        if h.id in names:
            raise TracetuneError(f"{where}: two hypotheses are called {h.id!r}")
        names.add(h.id)
    for c in decision.go + decision.abort:
        if c.metric not in METRICS:
            raise TracetuneError(f"{where} [decision] {c.text!r}: no metric {c.metric!r} (one "
                                 f"of {', '.join(METRICS)})")
    return exp


# --- stages -------------------------------------------------------------------------------------

def _interactions(ctx: Context) -> Path:
    return ctx.layout.root / INTERACTIONS


def _suites(ctx: Context) -> Path:
    return _interactions(ctx) / SUITES


def logs_stage(ctx: Context) -> dict:
    from tracetune.logs.importers import import_logs
    from tracetune.logs.profile import baseline_profile
    from tracetune.logs.store import LogStore
    from tracetune.logs.suites import build_suites

    exp: DistillExperiment = ctx.exp
    root = _interactions(ctx)
    if root.exists():  # a killed stage: start over (the import is minutes at most)
        shutil.rmtree(root)
    report = import_logs(exp.source, exp.logs.format, root)
    ctx.log(f"[logs] {report.summary()}")
    suites = build_suites(root, _suites(ctx), exp.suite_config(),
                          log=lambda text: [ctx.log(f"[logs] {line}")
                                            for line in text.splitlines()])
    roles = set(suites.counts)
    with LogStore(root) as store:
        chosen = [r for r in store.interactions() if r.role in roles]
    profile = baseline_profile(chosen)
    (root / "baseline_profile.json").write_text(json.dumps(profile, indent=2))
    return {"imported": report.imported, "suites": suites.counts,
            "dropped": suites.dropped, "runnable": suites.runnable}


def mine_stage(ctx: Context) -> dict:
    from tracetune.logs.suites import mine_logged

    out = ctx.layout.data
    if out.exists():
        shutil.rmtree(out)
    return mine_logged(_suites(ctx), out, max_rows=ctx.exp.logs.max_rows,
                       threshold=ctx.exp.logs.dedup_threshold, log=ctx.log)


def _test_suite(ctx: Context) -> Path:
    from tracetune.logs.suites import COMBINED

    return _suites(ctx) / f"{COMBINED}.test.json"


def baseline_stage(ctx: Context) -> dict:
    return ctx.evaluate("baseline", ctx.exp.replay_config(ctx.exp.models.base,
                                                          _test_suite(ctx)),
                        ctx.layout.baseline)


def adapted_stage(ctx: Context) -> dict:
    spec = ctx.adapted_spec(ctx.layout.export, ctx.layout.adapter)
    return {**ctx.evaluate("adapted", ctx.exp.replay_config(spec, _test_suite(ctx)),
                           ctx.layout.adapted), "model": spec}


def compare_stage(ctx: Context) -> dict:
    return write_results(ctx, analyze_distill(ctx.exp, ctx.layout))


def report_stage(ctx: Context) -> dict:
    md = write_distill_report(ctx.layout.root)
    ctx.log(f"[report] {md}")
    return {"markdown": md.name}


def _train_base(exp) -> dict:
    return {"train_base": exp.models.train_base or exp.models.base}


DISTILL_STAGES: tuple[Stage, ...] = (
    Stage("logs", logs_stage, reads=("experiment", "logs"),
          outputs=lambda lay: (lay.root / INTERACTIONS,)),
    Stage("mine", mine_stage, needs=("logs",), outputs=lambda lay: (lay.data,)),
    Stage("train", train_stage, reads=("train", "models.train_base"), needs=("mine",),
          outputs=lambda lay: (lay.adapter,), resolved=_train_base),
    Stage("export", export_stage, reads=("export",), needs=("train",),
          outputs=lambda lay: (lay.export,), active=lambda exp: exp.export.target != "none"),
    Stage("baseline", baseline_stage, reads=("models.base", "replay"), needs=("logs",),
          outputs=lambda lay: (lay.baseline,)),
    Stage("adapted", adapted_stage, reads=("models.adapted", "replay"),
          needs=("baseline", "export"), outputs=lambda lay: (lay.adapted,)),
    Stage("compare", compare_stage, needs=("baseline", "adapted"),
          outputs=lambda lay: (lay.results,)),
    Stage("report", report_stage, needs=("compare",), outputs=lambda lay: (lay.report_md,)),
)


# --- analysis -----------------------------------------------------------------------------------

def _replay(run: Path) -> dict:
    """{task: [successes]}, per-request latencies (s) of a replay run."""
    from tracetune.traces.store import Store

    store = Store(run)
    try:
        per_task: dict[str, list[int]] = {}
        latencies: list[float] = []
        for ep in store.episodes():
            per_task.setdefault(ep["task_id"], []).append(int(ep["success"]))
            latencies += [a.latency_s for _, a in store.attempt_records(ep["id"])]
    finally:
        store.close()
    return {"tasks": per_task, "latencies": latencies}


def _arm(replay: dict) -> dict:
    from tracetune.logs.profile import latency_stats
    from tracetune.stats import clustered_wilson_interval

    tasks = sorted(replay["tasks"])
    rates = [sum(replay["tasks"][t]) / len(replay["tasks"][t]) for t in tasks]
    lo, hi = clustered_wilson_interval([sum(replay["tasks"][t]) for t in tasks],
                                       [len(replay["tasks"][t]) for t in tasks])
    lat = latency_stats(replay["latencies"])
    return {"quality": sum(rates) / len(rates) if rates else 0.0, "quality_ci": [lo, hi],
            "items": len(tasks), "samples": sum(len(v) for v in replay["tasks"].values()),
            "latency": lat, "per_task": dict(zip(tasks, rates))}


def analyze_distill(exp: DistillExperiment, layout) -> dict:
    """results.json of a distillation run: metrics, hypothesis verdicts, decision."""
    from tracetune.stats import paired_permutation

    profile = json.loads((layout.root / INTERACTIONS / "baseline_profile.json").read_text())
    logged = profile["all"]
    base, adapted = _arm(_replay(layout.baseline)), _arm(_replay(layout.adapted))
    record = lambda s: json.loads(layout.marker(s).read_text())  # noqa: E731
    train = record("train")
    adapted_ram = record("adapted")["peak_ram_gb"]
    m = {
        "logged.success_rate": logged["success_rate"],
        "logged.latency_mean_s": logged["latency_s"]["mean"],
        "logged.latency_median_s": logged["latency_s"]["median"],
        "logged.latency_p95_s": logged["latency_s"]["p95"],
        "base.quality": base["quality"], "adapted.quality": adapted["quality"],
        "base.latency_mean_s": base["latency"]["mean"],
        "base.latency_median_s": base["latency"]["median"],
        "adapted.latency_mean_s": adapted["latency"]["mean"],
        "adapted.latency_median_s": adapted["latency"]["median"],
        "adapted.latency_p95_s": adapted["latency"]["p95"],
        "adapted.peak_ram_gb": adapted_ram,
        "delta.quality": adapted["quality"] - base["quality"],
        "train.seconds": train["seconds"], "train.rows": train["summary"]["rows"],
        "train.peak_ram_gb": train["peak_ram_gb"],
    }
    m["adapted.speedup"] = (m["logged.latency_mean_s"] / m["adapted.latency_mean_s"]
                            if m["adapted.latency_mean_s"] else None)
    m["adapted.quality_ratio"] = (m["adapted.quality"] / m["logged.success_rate"]
                                  if m["logged.success_rate"] else None)
    tasks = sorted(set(base["per_task"]) & set(adapted["per_task"]))
    x = [adapted["per_task"][t] for t in tasks]
    y = [base["per_task"][t] for t in tasks]
    p = paired_permutation(x, y) if tasks else 1.0
    hyps = []
    for h in exp.hypotheses:
        observed = m.get(h.metric)
        reaches = observed is not None and observed >= h.min_delta
        significant = h.test == "none" or p < h.alpha
        detail = (f"{h.metric} = {observed:+.3f} (needs >= {h.min_delta:+.3f})"
                  if observed is not None else f"{h.metric} unknown")
        if h.test == "paired_permutation":
            detail += f", paired permutation p = {p:.3g} over {len(tasks)} items (alpha " \
                      f"{h.alpha})"
        hyps.append({"id": h.id, "claim": h.claim, "metric": h.metric,
                     "observed": observed, "p": p if h.test != "none" else None,
                     "verdict": "SUPPORTED" if reaches and significant else "NOT SUPPORTED",
                     "detail": detail})
    decision = _decide(exp.decision, m, hyps)
    judge = (f"similarity >= {exp.replay.threshold} (rapidfuzz.fuzz.ratio / 100)"
             if exp.replay.judge == "similarity" else f"model {exp.replay.judge}")
    return {"kind": "distill", "judge": judge, "metrics": m, "logged": profile, "base": base,
            "adapted": adapted, "paired_permutation_p": p, "hypotheses": hyps,
            "decision": decision, "suites": json.loads(
                (layout.root / INTERACTIONS / SUITES / "suites.json").read_text())}


def _decide(decision: Decision, metrics: dict, hyps: list[dict]) -> dict:
    def check(criteria: tuple[Criterion, ...]) -> list[dict]:
        return [{"criterion": c.text, "observed": metrics.get(c.metric),
                 "holds": metrics.get(c.metric) is not None and c.holds(metrics[c.metric])}
                for c in criteria]

    go, abort = check(decision.go), check(decision.abort)
    supported = all(h["verdict"] == "SUPPORTED" for h in hyps)
    if go and all(c["holds"] for c in go) and supported:
        outcome = "GO"
    elif abort and all(c["holds"] for c in abort):
        outcome = "ABORT"
    else:
        outcome = "ITERATE"
    return {"outcome": outcome, "go": go, "abort": abort, "hypotheses_supported": supported}


# --- report -------------------------------------------------------------------------------------

def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _s(v) -> str:
    return "-" if v is None else f"{v:.2f} s"


def write_distill_report(root: Path) -> Path:
    """RUN/report.md of a distillation run (from results.json and the stage records)."""
    from tracetune.experiment.layout import RunLayout

    layout = RunLayout(Path(root))
    r = json.loads(layout.results.read_text())
    m = r["metrics"]
    logged = r["logged"]["all"]
    lines = [f"# Distillation report: {Path(root).name}", "",
             "## Answer", "",
             f"On {r['adapted']['items']} of the newest logged requests "
             f"({r['adapted']['samples']} replays per model), the adapted model's answers were "
             f"acceptable {_pct(m['adapted.quality'])} of the time "
             f"(95% CI {_pct(r['adapted']['quality_ci'][0])} to "
             f"{_pct(r['adapted']['quality_ci'][1])}) against the base model's "
             f"{_pct(m['base.quality'])} (Δ {100 * m['delta.quality']:+.1f}pp, paired "
             f"permutation p = {r['paired_permutation_p']:.3g}); the logged calls succeeded "
             f"{_pct(m['logged.success_rate'])} of the time. Mean latency "
             f"{_s(m['adapted.latency_mean_s'])} per request against the logged "
             f"{_s(m['logged.latency_mean_s'])} (speed-up {m['adapted.speedup']:.1f}x), peak "
             f"memory {m['adapted.peak_ram_gb']:.2f} GB. Decision: "
             f"**{r['decision']['outcome']}**.", "",
             "## Logged baseline (seed 003's profile)", "",
             "| group | n | success | 95% CI | latency mean | median | p95 | max |",
             "|---|---|---|---|---|---|---|---|"]
    for name, p in [("all", logged), *r["logged"]["roles"].items()]:
        lat = p["latency_s"]
        lines.append(f"| {name} | {p['n']} | {_pct(p['success_rate'])} | "
                     f"{_pct(p['success_ci'][0])} to {_pct(p['success_ci'][1])} | "
                     f"{_s(lat['mean'])} | {_s(lat['median'])} | {_s(lat['p95'])} | "
                     f"{_s(lat['max'])} |")
    lines += ["", "Providers: " + ", ".join(f"{k} {v['n']} ({100 * v['share']:.1f}%)"
                                            for k, v in logged["providers"].items()), "",
              "## Suites", "", "| role | train | val | test | runnable |", "|---|---|---|---|---|"]
    suites = r["suites"]
    for role, c in suites["counts"].items():
        lines.append(f"| {role} | {c['train']} | {c['val']} | {c['test']} | "
                     f"{suites['runnable'][role]} |")
    lines += ["", "Dropped: " + (", ".join(f"{k} {v}" for k, v in suites["dropped"].items())
                                 or "none") + ". Items with runnable tests are graded by "
              "running them in the sandbox; the others by the replay judge "
              f"({r['judge']}).", "",
              "## Replay of the test items", "",
              "| model | quality | 95% CI | latency mean | median | p95 |", "|---|---|---|---|---|---|"]
    for arm in ("base", "adapted"):
        a = r[arm]
        lines.append(f"| {arm} | {_pct(a['quality'])} | {_pct(a['quality_ci'][0])} to "
                     f"{_pct(a['quality_ci'][1])} | {_s(a['latency']['mean'])} | "
                     f"{_s(a['latency']['median'])} | {_s(a['latency']['p95'])} |")
    lines += ["", "## Hypotheses", ""]
    for h in r["hypotheses"]:
        lines.append(f"- **{h['id']}** {h['verdict']}: {h['claim']} ({h['detail']})")
    lines += ["", f"## Decision: {r['decision']['outcome']}", ""]
    for kind in ("go", "abort"):
        for c in r["decision"][kind]:
            obs = c["observed"]
            lines.append(f"- {kind} if `{c['criterion']}`: observed "
                         f"{'-' if obs is None else f'{obs:.4g}'} -> "
                         f"{'holds' if c['holds'] else 'does not hold'}")
    lines += ["", "## Stages", "", "| stage | seconds | peak RAM (GB) |", "|---|---|---|"]
    markers = layout.markers()
    for stage in [s.name for s in DISTILL_STAGES if s.name in markers]:
        rec = json.loads(markers[stage].read_text())
        lines.append(f"| {stage} | {rec['seconds']:.0f} | {rec['peak_ram_gb']} |")
    md = layout.report_md
    md.write_text("\n".join(lines) + "\n")
    return md


def load_any(path: Path):
    """(experiment, stage table) of any experiment file: a distillation experiment when it has
    a [logs] section, else a loop experiment."""
    from tracetune.experiment.spec import load_experiment
    from tracetune.experiment.rounds import stage_table

    if is_distill(path):
        return load_distill(path), DISTILL_STAGES
    exp = load_experiment(path)
    return exp, stage_table(exp)

