"""Continual learning on a task stream (seed 004): `tracetune continual FILE --out DIR`.

The question: when an agent keeps working through sessions of tasks, does a LoRA adapter
consolidated from its own trajectories keep improving on new sessions (forward transfer) without
losing the old ones (forgetting), and which consolidation strategy does that best?

The file holds a loop experiment's sections, minus what the stream decides, plus two:

    [experiment]  name, description, seed
    [models]      base (evaluated and, unless train_base, trained)
    [stream]      the sessions, in order (tasks.streams.stream_from_table); its suite is the
                  suite of every evaluation
    [eval]        how each session's tasks are run (EvalConfig without suite, tasks, split,
                  train_pct, model, seed)
    [mine]        what becomes training data (MineConfig; every task of a seen session is
                  trainable, so train_pct is 100 here)
    [train]       the LoRA recipe (TrainConfig)
    [export]      target (gguf-lora, merged-gguf or none)
    [capability]  the general-capability check after every round (HumanEval or a fixed subset)
    [continual]   strategies, orderings (seed 004's designs A-E), sessions_per_round, and one
                  sub-table of settings per strategy that takes any

The protocol of one (ordering, strategy), with K = sessions_per_round and R = ceil(S / K):

    round 0     the base model is evaluated on every session's tasks: the zero-shot row a[0]
    round i     1. data: the trajectories of the current model (round i-1's) on the sessions
                   first learned at round i (sessions (i-1)K .. iK-1) are mined
                2. consolidate with the strategy (below) -> adapter i
                3. export it (parity-checked), evaluate it on EVERY session's tasks (row a[i])
                   and on the capability suite

    sequential      continue adapter i-1 on the new rows only (the naive baseline)
    full_replay     a fresh adapter on every row mined so far (seed 004, experiment 1)
    partial_replay  continue adapter i-1 on the new rows mixed with a sample of a fixed-size
                    replay buffer (train.replay), the buffer then taking the new rows and
                    evicting by its priority (experiment 2)
    ewc             continue adapter i-1 on the new rows with online EWC's penalty towards it
                    (train.ewc; experiment 4); lambda = 0 is sequential exactly

A round with no new row (the model passed nothing on its new sessions) keeps the previous model.

Every piece of work is a *unit* (an evaluation of one model on one session, a dataset, an
adapter, an export, a capability check) stored in OUT/units/KIND-KEY/, KEY being the hash of
everything that defines it: a finished unit is never redone (a killed run continues at the
first unfinished one), and units that two strategies share (the zero-shot row; round 1, where
sequential, full replay and partial replay train the same adapter) run once. Each unit runs in
its own child process (experiment.child), which also measures its peak memory.

Outputs: OUT/matrix.jsonl (eval.continual.MatrixRow: one line per ordering, strategy, round,
session and task: every figure is recomputable from it), OUT/rounds.jsonl (per round: rows
trained, tokens, training seconds, peak RAM, capability), OUT/results.json (the CL metrics of
each strategy with bootstrap intervals, aggregated over orderings), OUT/report.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracetune.errors import TracetuneError
from tracetune.experiment.spec import (
    CAPABILITY_EVAL,
    EXPORT_TARGETS,
    CapabilitySection,
    ExperimentInfo,
    ExportSection,
    LoopMine,
    Models,
    _split_table,
    _with_eval,
    read_sections,
)
from tracetune.tomlconf import build
from tracetune.train.config import TrainConfig

SECTIONS = ("experiment", "models", "stream", "eval", "mine", "train", "export", "capability",
            "continual", "hypothesis")
CL_METRICS = ("acc", "forward_transfer", "forgetting", "bwt", "aulc", "cl_plasticity",
              "cl_stability", "cl_f1")
"""eval.continual.cl_metrics' names (each with a bootstrap interval per ordering)."""
COST_METRICS = ("train_seconds", "extra_seconds", "cost_seconds", "tokens", "rows",
                "peak_ram_gb")
"""A strategy's training cost over all rounds (cost_seconds = train + extra seconds)."""
OTHER_METRICS = ("capability_drop",)
"""Base capability minus capability after the last round (success rate)."""
HYPOTHESIS_OPS = (">=", "<=", ">", "<")
STRATEGIES = ("sequential", "full_replay", "partial_replay", "ewc")
EVAL_FIXED = ("model", "seed", "split", "suite", "tasks", "train_pct", "max_difficulty",
              "limit")
"""EvalConfig fields the stream and the experiment decide ([eval] may not state them)."""
MINE_FIXED = ("train_pct", "allow_heldout", "unfiltered", "seed")


@dataclass(frozen=True)
class PartialReplaySettings:
    """[continual.partial_replay]"""

    buffer_size: int = 64
    """Examples the replay buffer holds at most."""
    priority: str = "recency"
    """Which examples the full buffer keeps: recency, difficulty, diversity or confidence
    (train.replay)."""
    ratio: str = "1:1"
    """new:replay rows in each round's training set (train.replay.mix)."""


@dataclass(frozen=True)
class EwcSettings:
    """[continual.ewc] (the TOML key of `lam` is `lambda`)."""

    lam: float = 100.0
    """Penalty strength lambda (0: sequential exactly)."""
    fisher_samples: int = 32
    """Rows the diagonal Fisher of each round is estimated from."""
    accumulate: str = "average"
    """replace: the last round's Fisher only; average: online EWC's running average."""


STRATEGY_SETTINGS: dict[str, type | None] = {"sequential": None, "full_replay": None,
                                             "partial_replay": PartialReplaySettings,
                                             "ewc": EwcSettings}


@dataclass(frozen=True)
class ContinualSection:
    """[continual]"""

    strategies: tuple[str, ...] = ("sequential", "full_replay", "partial_replay")
    """Consolidation strategies compared on the same stream (STRATEGIES)."""
    orderings: tuple[str, ...] = ("A",)
    """Seed 004's split designs applied to the session order (tasks.streams.ORDERINGS)."""
    sessions_per_round: int = 1
    """K: a consolidation round after every K sessions."""
    bootstrap: int = 2000
    """Bootstrap resamples (over tasks) of each CL metric's interval."""
    partial_replay: PartialReplaySettings = field(default_factory=PartialReplaySettings)
    ewc: EwcSettings = field(default_factory=EwcSettings)


@dataclass(frozen=True)
class ClHypothesis:
    """[[hypothesis]] of a continual experiment: a pre-registered claim about one strategy's
    metric, or about it against another strategy's (seed 004's success criteria, e.g. "partial
    replay keeps >= 80% of full replay's retention at < 30% of its training cost" as two)."""

    id: str
    claim: str
    metric: str
    """STRATEGY.NAME, NAME one of CL_METRICS, COST_METRICS or OTHER_METRICS; its value is the
    mean over orderings."""
    op: str = ">="
    """>=, <=, > or <: metric OP value (or the comparison with `versus` OP value)."""
    value: float = 0.0
    versus: str | None = None
    """STRATEGY.NAME: compare metric / versus (compare = "ratio") or metric - versus
    ("difference") with `value` instead of the metric alone."""
    compare: str = "ratio"
    """ratio or difference (with versus)."""
    orderings_at_least: int = 0
    """> 0: the claim holds in at least this many orderings, each judged on its own value
    (seed 004 phase 2: "FT > 0 in 4 of 5 splits")."""


@dataclass(frozen=True)
class ContinualExperiment:
    path: Path
    info: ExperimentInfo
    models: Models
    stream_table: dict
    streams: dict
    """ordering -> tasks.streams.Stream (the [stream] in that design's session order)."""
    eval: object
    """EvalConfig of every session evaluation (model, tasks set per evaluation)."""
    mine: object
    """MineConfig (train_pct 100, seed from [experiment])."""
    loop_mine: LoopMine
    train: dict
    train_config: TrainConfig
    export: ExportSection
    capability: CapabilitySection
    continual: ContinualSection
    hypotheses: tuple[ClHypothesis, ...] = ()

    def preregistered(self) -> dict:
        """What is frozen into OUT/preregistration.json before any result exists."""
        return {"hypotheses": [asdict(h) for h in self.hypotheses],
                "decision": {"go": [], "abort": []}}

    @property
    def train_base(self) -> str:
        return self.models.train_base or self.models.base

    def rounds(self, n_sessions: int) -> int:
        return math.ceil(n_sessions / self.continual.sessions_per_round)

    def learned_at(self, session: int) -> int:
        """The round whose training data first holds session `session` (0-based)."""
        return session // self.continual.sessions_per_round + 1


def load_continual(path: Path) -> ContinualExperiment:
    """Read and validate a continual experiment file; every problem is one TracetuneError naming
    the file, the section and the key, before any work starts (bad stream, empty session, a task
    in two sessions, unknown strategy or ordering, settings for a strategy that takes none or
    that the experiment does not run)."""
    from tracetune.datasets.build import MineConfig
    from tracetune.eval.config import eval_config_from
    from tracetune.models import parse_spec
    from tracetune.tasks import load_suite
    from tracetune.tasks.streams import ORDERINGS, reorder, stream_from_table

    path = Path(path)
    data, where = read_sections(path, SECTIONS)
    info = build(ExperimentInfo, data.get("experiment", {}), f"{where} [experiment]")
    models = build(Models, data.get("models", {}), f"{where} [models]",
                   exclude=("adapted", "reference"))
    for key, spec in (("base", models.base), ("train_base", models.train_base)):
        if spec is not None:
            try:
                parse_spec(spec)
            except TracetuneError as exc:
                raise TracetuneError(f"{where} [models] {key}: {exc}") from None
    if "stream" not in data:
        raise TracetuneError(f"{where}: no [stream] section (the sessions, in order)")
    try:
        stream = stream_from_table(data["stream"], base_dir=path.parent)
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [stream]: {exc}") from None
    continual = _continual_section(data.get("continual", {}), f"{where} [continual]")
    bad = [o for o in continual.orderings if o not in ORDERINGS]
    if bad or not continual.orderings:
        raise TracetuneError(f"{where} [continual] orderings: {bad or '[]'} (valid: "
                             f"{', '.join(ORDERINGS)})")
    streams = {o: reorder(stream, o) for o in continual.orderings}

    ev = eval_config_from(data.get("eval", {}), f"{where} [eval]", model=models.base,
                          seed=info.seed, split="all", suite=stream.suite,
                          tasks=stream.task_ids(), train_pct=100, max_difficulty=0, limit=0)
    try:
        ev.validate()
        from tracetune.eval.runner import check_suite_kind

        check_suite_kind(ev.workflow_spec().info, load_suite(stream.suite).kind, stream.suite)
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [eval]: {exc}") from None
    mine_table, loop_mine = _split_table(data.get("mine", {}), LoopMine, f"{where} [mine]")
    mine = build(MineConfig, mine_table, f"{where} [mine]", exclude=MINE_FIXED)
    mine = dataclasses.replace(mine, train_pct=100, seed=info.seed)
    train_table = data.get("train", {})
    train_cfg = build(TrainConfig, train_table, f"{where} [train]")
    export = build(ExportSection, data.get("export", {}), f"{where} [export]")
    cap = _with_eval(CapabilitySection, data.get("capability", {}), CAPABILITY_EVAL,
                     f"{where} [capability]")
    for name, check in (("mine", mine.validate), ("train", train_cfg.validate)):
        try:
            check()
        except TracetuneError as exc:
            raise TracetuneError(f"{where} [{name}]: {exc}") from None
    set_by_strategy = sorted(k for k in train_table if k == "init_adapter" or
                             k.startswith("ewc_"))
    if set_by_strategy:
        raise TracetuneError(f"{where} [train] {', '.join(set_by_strategy)}: set by the "
                             "strategy of each round ([continual.ewc] for EWC), not here")
    if train_cfg.method != "sft" or "sft" not in mine.kinds:
        raise TracetuneError(f"{where} [train] method / [mine] kinds: the strategies train on "
                             "SFT rows (method = \"sft\", \"sft\" in kinds)")
    if loop_mine.min_rows < 0:
        raise TracetuneError(f"{where} [mine] min_rows: must be 0 or more")
    if export.target not in EXPORT_TARGETS:
        raise TracetuneError(f"{where} [export] target: {export.target!r} is not one of "
                             f"{', '.join(EXPORT_TARGETS)}")
    if cap.enabled:
        try:
            load_suite(cap.suite)
        except TracetuneError as exc:
            raise TracetuneError(f"{where} [capability] suite: {exc}") from None
        if _same_suite(cap.suite, stream.suite, path.parent):
            raise TracetuneError(f"{where} [capability] suite: {cap.suite!r} is the stream's "
                                 "own suite: the capability check would score tasks the "
                                 "rounds train on; name another suite")
        # rows whose code is a capability problem's answer are dropped when mined
        if cap.suite not in mine.leakage_suites:
            mine = dataclasses.replace(mine, leakage_suites=(*mine.leakage_suites, cap.suite))
    if any(_same_suite(s, stream.suite, path.parent) for s in mine.leakage_suites):
        raise TracetuneError(f"{where} [mine] leakage_suites: it holds the stream's suite "
                             f"{stream.suite!r}, so every mined row would be dropped")
    n_sessions = len(stream.sessions)
    if continual.sessions_per_round >= n_sessions:
        raise TracetuneError(f"{where} [continual] sessions_per_round: "
                             f"{continual.sessions_per_round} with {n_sessions} sessions is "
                             "one round; forward transfer and forgetting need two or more")
    orders: dict[tuple, str] = {}
    for o, st in streams.items():
        key = tuple(s.name for s in st.sessions)
        if key in orders:
            raise TracetuneError(f"{where} [continual] orderings: {orders[key]} and {o} give "
                                 "the same session order here; list one of them")
        orders[key] = o
    hyps = _hypotheses(data.get("hypothesis", []), continual, cap.enabled, where)
    exp = ContinualExperiment(path, info, models, data["stream"], streams, ev, mine, loop_mine,
                              train_table, train_cfg, export, cap, continual, hyps)
    try:
        from tracetune.models.resolve import adapted_spec

        adapted_spec(models.base, target=export.target, artifact=Path("adapter.gguf"),
                     adapter_dir=Path("adapter"), train_base=exp.train_base)
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [export]: {exc}") from None
    return exp


def _hypotheses(raw, continual: ContinualSection, capability: bool,
                where: str) -> tuple[ClHypothesis, ...]:
    if not isinstance(raw, list):
        raise TracetuneError(f"{where}: hypotheses are [[hypothesis]] tables")
    out, ids = [], set()
    for i, table in enumerate(raw):
        h = build(ClHypothesis, table, f"{where} [[hypothesis]] #{i + 1}")
        at = f"{where} [[hypothesis]] {h.id or '#' + str(i + 1)}"
        if not h.id or h.id in ids:
            raise TracetuneError(f"{at}: each hypothesis needs its own id")
        ids.add(h.id)
        for key, name in (("metric", h.metric), ("versus", h.versus)):
            if name is None:
                continue
            strategy, _, metric = name.partition(".")
            if strategy not in continual.strategies:
                raise TracetuneError(f"{at} {key}: {strategy!r} is not one of the strategies "
                                     f"({', '.join(continual.strategies)})")
            if metric not in CL_METRICS + COST_METRICS + OTHER_METRICS:
                raise TracetuneError(f"{at} {key}: no metric {metric!r} (valid: "
                                     f"{', '.join(CL_METRICS + COST_METRICS + OTHER_METRICS)})")
            if metric == "capability_drop" and not capability:
                raise TracetuneError(f"{at} {key}: capability_drop needs [capability]")
        if h.op not in HYPOTHESIS_OPS:
            raise TracetuneError(f"{at} op: {h.op!r} (valid: {', '.join(HYPOTHESIS_OPS)})")
        if h.compare not in ("ratio", "difference"):
            raise TracetuneError(f"{at} compare: ratio or difference, not {h.compare!r}")
        if h.orderings_at_least < 0 or h.orderings_at_least > len(continual.orderings):
            raise TracetuneError(f"{at} orderings_at_least: 0..{len(continual.orderings)} "
                                 "(the orderings the experiment runs)")
        if h.orderings_at_least and h.versus:
            raise TracetuneError(f"{at}: orderings_at_least judges one metric per ordering; "
                                 "it does not take versus")
        out.append(h)
    return tuple(out)


def _same_suite(a: str, b: str, base_dir: Path) -> bool:
    """Whether two suite names (built-in names or file paths) name the same suite."""
    def norm(x: str) -> str:
        p = Path(x)
        return str((base_dir / p).resolve()) if p.suffix in (".toml", ".json") else x

    return norm(a) == norm(b)


def _continual_section(table, where: str) -> ContinualSection:
    if not isinstance(table, dict):
        raise TracetuneError(f"{where} must be a table")
    own = {k: v for k, v in table.items() if k not in STRATEGY_SETTINGS}
    section = build(ContinualSection, own, where, exclude=("partial_replay", "ewc"))
    bad = [s for s in section.strategies if s not in STRATEGIES]
    if bad or not section.strategies:
        raise TracetuneError(f"{where} strategies: {bad or '[]'} (valid: {', '.join(STRATEGIES)})")
    if len(set(section.strategies)) != len(section.strategies):
        raise TracetuneError(f"{where} strategies: each strategy once")
    if section.sessions_per_round < 1:
        raise TracetuneError(f"{where} sessions_per_round: must be at least 1")
    if section.bootstrap < 100:
        raise TracetuneError(f"{where} bootstrap: at least 100 resamples")
    settings = {}
    for name, cls in STRATEGY_SETTINGS.items():
        if name not in table:
            continue
        sub = f"{where[:-1]}.{name}]"
        if cls is None:
            raise TracetuneError(f"{sub}: the {name} strategy takes no settings")
        if name not in section.strategies:
            raise TracetuneError(f"{sub}: settings for {name}, which strategies does not list")
        values = dict(table[name]) if isinstance(table[name], dict) else table[name]
        if cls is EwcSettings and isinstance(values, dict):
            # TOML says lambda (the field's standard name); Python cannot name a field so.
            if "lam" in values:
                raise TracetuneError(f"{sub}: unknown key(s) lam (the key is lambda)")
            if "lambda" in values:
                values["lam"] = values.pop("lambda")
        try:
            settings[name] = build(cls, values, sub)
        except TracetuneError as exc:
            raise TracetuneError(str(exc).replace("lam,", "lambda,").replace(": lam:", ": lambda:")
                                 .replace(", lam)", ", lambda)").replace("(valid: lam", "(valid: lambda")) \
                from None
    section = dataclasses.replace(section, **settings)
    _check_strategy_settings(section, where)
    return section


def _check_strategy_settings(section: ContinualSection, where: str) -> None:
    from tracetune.train.replay import PRIORITIES, parse_ratio

    pr, ewc = section.partial_replay, section.ewc
    base = where[:-1]
    if "partial_replay" in section.strategies:
        if pr.buffer_size < 1:
            raise TracetuneError(f"{base}.partial_replay] buffer_size: must be at least 1")
        if pr.priority not in PRIORITIES:
            raise TracetuneError(f"{base}.partial_replay] priority: {pr.priority!r} (valid: "
                                 f"{', '.join(PRIORITIES)})")
        try:
            parse_ratio(pr.ratio)
        except TracetuneError as exc:
            raise TracetuneError(f"{base}.partial_replay] ratio: {exc}") from None
    if "ewc" in section.strategies:
        if not ewc.lam >= 0 or math.isinf(ewc.lam):
            raise TracetuneError(f"{base}.ewc] lambda: a finite number >= 0")
        if ewc.fisher_samples < 1:
            raise TracetuneError(f"{base}.ewc] fisher_samples: must be at least 1")
        if ewc.accumulate not in ("replace", "average"):
            raise TracetuneError(f"{base}.ewc] accumulate: replace or average, not "
                                 f"{ewc.accumulate!r}")


# --- units ---------------------------------------------------------------------------------------

def unit_key(identity: dict) -> str:
    """The first 16 hex digits of sha256 over the canonical JSON of what defines a unit."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()) \
        .hexdigest()[:16]


@dataclass
class Units:
    """OUT/units/KIND-KEY/: each unit's work runs once, in a child process; `unit.json` is
    written last, so a unit without it is unfinished (its work function continues or redoes
    it)."""

    root: Path
    log: Callable[[str], None] = print
    progress: Callable[..., None] = field(default=lambda *a: None)

    def dir(self, kind: str, identity: dict) -> Path:
        return self.root / "units" / f"{kind}-{unit_key(identity)}"

    def record(self, kind: str, identity: dict) -> dict | None:
        path = self.dir(kind, identity) / "unit.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, kind: str, identity: dict, target: Callable, args: tuple,
            label: str) -> dict:
        """The unit's record ({kind, key, identity, summary, seconds, peak_ram_gb}); runs
        `target(*args, unit_dir, channel)` in a child first when the unit is not finished."""
        from tracetune.experiment.child import run_in_child

        done = self.record(kind, identity)
        if done is not None:
            return done
        d = self.dir(kind, identity)
        d.mkdir(parents=True, exist_ok=True)
        (d / "identity.json").write_text(json.dumps(identity, indent=2, sort_keys=True,
                                                    default=str))
        self.log(f"[{label}] running ({d.name})")
        t0 = time.time()
        summary, peak = run_in_child(target, (*args, str(d)), name=f"{kind}-{d.name}",
                                     log_file=self.root / "logs" / f"{d.name}.log",
                                     on_log=self.log, on_progress=self.progress)
        record = {"kind": kind, "key": d.name, "identity": identity, "summary": summary,
                  "seconds": round(time.time() - t0, 2), "peak_ram_gb": peak}
        tmp = d / "unit.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str))
        tmp.replace(d / "unit.json")
        return record


def _say(channel, msg: str) -> None:
    print(msg, flush=True)
    channel.put(("log", msg))


def _eval_unit(config, label: str, out: str, channel) -> dict:
    """Child: run (or continue) one evaluation into OUT/run; per-task passes and trials."""
    from tracetune.eval.compare import load_episodes
    from tracetune.eval.runner import run_eval
    from tracetune.traces.store import DB_NAME

    run = Path(out) / "run"
    run_eval(config, run, resume=(run / DB_NAME).is_file(),
             on_progress=lambda done, total: channel.put(("progress", label, done, total, "")))
    per_task: dict[str, list[int]] = {}
    for ep in load_episodes(run):
        per_task.setdefault(ep["task_id"], []).append(int(bool(ep["success"])))
    _say(channel, f"[{label}] {sum(map(sum, per_task.values()))}/"
                  f"{sum(map(len, per_task.values()))} passed")
    return {"tasks": {t: [len(v), sum(v)] for t, v in sorted(per_task.items())}}


def _mine_unit(runs: list[str], config, allowed: list[str], label: str, out: str,
               channel) -> dict:
    """Child: mine `runs` into OUT/data; rows of a task outside `allowed` (the seen sessions)
    are a leak and fail the unit. No episode to learn from gives an empty unit (rows 0)."""
    from tracetune.datasets.build import mine, read_rows, rows_path

    data = Path(out) / "data"
    if data.exists():
        shutil.rmtree(data)
    try:
        report = mine([Path(r) for r in runs], data, config)
    except TracetuneError as exc:
        if "no row" not in str(exc):
            raise
        _say(channel, f"[{label}] no row to learn from: {exc}")
        return {"rows": 0, "dropped": {}}
    rows = read_rows(rows_path(data, "sft")) if rows_path(data, "sft").is_file() else []
    leaked = sorted({r["task"] for r in rows} - set(allowed))
    if leaked:
        shutil.rmtree(data)
        raise TracetuneError(f"[{label}] mined rows of tasks outside the seen sessions "
                             f"(a leak): {', '.join(leaked[:5])}")
    _say(channel, f"[{label}] {len(rows)} rows; dropped {report.dropped}")
    return {"rows": len(rows), "dropped": report.dropped}


def _write_rows_unit(rows: list[dict], label: str, out: str, channel) -> dict:
    """Child: a training dataset of `rows` (SFT row dicts) at OUT/data."""
    from tracetune.datasets.build import write_dataset
    from tracetune.datasets.rows import Row

    data = Path(out) / "data"
    if data.exists():
        shutil.rmtree(data)
    write_dataset(data, {"sft": [Row(**r) for r in rows]},
                  {"config": {"builder": "tracetune.experiment.continual"}}, prefix="cl-data")
    _say(channel, f"[{label}] {len(rows)} rows")
    return {"rows": len(rows)}


def _train_unit(data: str, base: str, config: TrainConfig, label: str, out: str,
                channel) -> dict:
    """Child: train OUT/adapter on `data` (resumes a killed training); cost figures."""
    from tracetune.train.recipe import META
    from tracetune.train.recipe import train as train_adapter

    adapter = Path(out) / "adapter"

    def progress(step, total, loss):
        channel.put(("progress", label, step, total,
                     f"loss {loss:.3f}" if loss is not None else ""))

    train_adapter(Path(data), base, adapter, config, resume=True,
                  log=lambda line: _say(channel, f"[{label}] {line}"), on_progress=progress)
    meta = json.loads((adapter / META).read_text())
    tokens = meta["row_tokens"]  # the rows' tokens as training measured them (one epoch)
    _say(channel, f"[{label}] {meta['rows']} rows, {meta['steps']} steps, loss "
                  f"{meta['first_loss']:.3f} -> {meta['last_loss']:.3f}")
    out_meta = {"rows": meta["rows"], "steps": meta["steps"],
                "train_seconds": meta["train_seconds"], "first_loss": meta["first_loss"],
                "last_loss": meta["last_loss"], "tokens": tokens * config.epochs}
    if "ewc" in meta:
        out_meta["ewc"] = meta["ewc"]
    return out_meta


def _export_unit(adapter: str, target: str, base: str, label: str, out: str, channel) -> dict:
    """Child: export the adapter (parity-checked) into OUT/export."""
    from tracetune.experiment.layout import RunLayout
    from tracetune.export.run import export as export_adapter
    from tracetune.models.resolve import gguf_base

    dest = Path(out) / "export"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    artifact = RunLayout.export_file(dest, target)
    parity = export_adapter(Path(adapter), target, artifact, base=gguf_base(base))
    _say(channel, f"[{label}] {artifact.name}: {parity}")
    return {"artifact": str(artifact), "parity": parity}


def _losses_unit(adapter: str | None, base: str, rows: list[dict], max_seq_len: int,
                 label: str, out: str, channel) -> dict:
    """Child: each row's completion loss under base (+ adapter): the difficulty priority."""
    from tracetune.train.replay import row_losses

    losses = row_losses(Path(adapter) if adapter else None, base, rows,
                        max_seq_len=max_seq_len)
    _say(channel, f"[{label}] {len(rows)} row losses")
    return {"losses": losses}


# --- the protocol --------------------------------------------------------------------------------

@dataclass
class Model:
    """A model the protocol evaluates: the base, or base + a round's adapter."""

    spec: str
    key: dict
    """What identifies it in unit keys (the base spec, or the adapter unit's key)."""
    adapter: Path | None = None


@dataclass
class Round:
    """One (ordering, strategy, round): what it trained and what it cost."""

    ordering: str
    strategy: str
    round: int
    new_rows: int = 0
    trained_rows: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    peak_ram_gb: float = 0.0
    extra_seconds: float = 0.0
    """Work a strategy adds besides training (EWC's Fisher, replay's loss scoring)."""
    skipped: str = ""
    buffer_size: int = 0
    capability: float | None = None
    capability_passes: int = 0
    capability_n: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    ewc: dict = field(default_factory=dict)


class Protocol:
    """Runs the experiment's (ordering, strategy) trajectories over the shared units."""

    def __init__(self, exp: ContinualExperiment, out: Path, *, log=print, progress=None):
        self.exp, self.out = exp, Path(out)
        self.units = Units(self.out, log=log, progress=progress or (lambda *a: None))
        self.log = log
        self.efficiency: list[dict] = []
        """Per (ordering, strategy, round, session, task): seed 004's efficiency figures."""

    # one evaluation of `model` on `tasks`
    def evaluate(self, model: Model, tasks: tuple[str, ...], label: str) -> dict:
        config = dataclasses.replace(self.exp.eval, model=model.spec, tasks=tuple(tasks))
        identity = {"model": model.key, "eval": _eval_identity(config), "tasks": sorted(tasks)}
        return self.units.run("eval", identity, _eval_unit, (config, label), label)

    def capability(self, model: Model, label: str) -> dict:
        cap = self.exp.capability
        config = dataclasses.replace(
            self.exp.eval, model=model.spec, suite=cap.suite, workflow="direct,max_attempts=1",
            trials=1, tasks=(), max_difficulty=0, limit=cap.limit, **cap.eval)
        identity = {"model": model.key, "capability": _eval_identity(config)}
        return self.units.run("capability", identity, _eval_unit, (config, label), label)

    def row_of(self, model: Model, stream, tag: str) -> dict[int, dict]:
        """Evaluate `model` on every session: session index -> eval unit record."""
        return {j: self.evaluate(model, tuple(t.id for t in s.tasks),
                                 f"{tag} session {j + 1}/{len(stream.sessions)} {s.name}")
                for j, s in enumerate(stream.sessions)}

    def adapted(self, adapter_record: dict, export_record: dict | None) -> Model:
        from tracetune.experiment.layout import RunLayout
        from tracetune.models.resolve import adapted_spec

        adapter = self.units.root / "units" / adapter_record["key"] / "adapter"
        # the artifact's path from its unit's directory (not as stored): a run directory that
        # moved, or is named by another path, still finds it
        artifact = RunLayout.export_file(
            self.units.root / "units" / export_record["key"] / "export", self.exp.export.target) \
            if export_record else adapter / "none"
        spec = adapted_spec(self.exp.models.base, target=self.exp.export.target,
                            artifact=artifact, adapter_dir=adapter,
                            train_base=self.exp.train_base)
        return Model(spec=spec, key={"adapter": adapter_record["key"],
                                     "export": self.exp.export.target}, adapter=adapter)

    def run(self) -> list[dict]:
        """Every (ordering, strategy) trajectory; writes matrix.jsonl and rounds.jsonl and
        returns the round records."""
        from tracetune.eval.continual import MatrixRow

        exp = self.exp
        base = Model(spec=exp.models.base, key={"base": exp.models.base})
        matrix: list[MatrixRow] = []
        rounds: list[Round] = []
        for ordering, stream in exp.streams.items():
            zero = self.row_of(base, stream, f"{ordering} round 0")
            cap0 = self.capability(base, f"{ordering} capability base") \
                if exp.capability.enabled else None
            for strategy in exp.continual.strategies:
                rows_here, rounds_here = self.trajectory(ordering, stream, strategy, base,
                                                         zero, cap0)
                matrix += rows_here
                rounds += rounds_here
        _write_jsonl(self.out / "matrix.jsonl", [r.to_dict() for r in matrix])
        _write_jsonl(self.out / "rounds.jsonl", [asdict(r) for r in rounds])
        _write_jsonl(self.out / "efficiency.jsonl", self.efficiency)
        return [asdict(r) for r in rounds]

    def trajectory(self, ordering: str, stream, strategy: str, base: Model, zero: dict,
                   cap0: dict | None):
        from tracetune.eval.continual import MatrixRow

        exp = self.exp
        n = len(stream.sessions)
        rows: list[MatrixRow] = []
        rounds: list[Round] = []

        def add_row(i: int, evals: dict[int, dict]) -> None:
            for j, rec in evals.items():
                for task, (trials, passes) in rec["summary"]["tasks"].items():
                    rows.append(MatrixRow(stream=stream.name, ordering=ordering,
                                          strategy=strategy, seed=exp.info.seed, round=i,
                                          session=j, task=task, trials=trials, passes=passes))
                for task, values in _efficiency(self.units.root / "units" / rec["key"] / "run"):
                    self.efficiency.append({"ordering": ordering, "strategy": strategy,
                                            "round": i, "session": j, "task": task, **values})

        add_row(0, zero)
        r0 = Round(ordering, strategy, 0)
        if cap0 is not None:
            _set_capability(r0, cap0)
        rounds.append(r0)
        model, evals = base, zero
        seen_data: list[dict] = []       # every row mined so far (full replay's training set)
        buffer_json: str | None = None   # partial replay's buffer after the last round
        for i in range(1, exp.rounds(n) + 1):
            tag = f"{ordering} {strategy} round {i}"
            new = [j for j in range(n) if exp.learned_at(j) == i]
            seen = [t.id for j in range(n) if exp.learned_at(j) <= i
                    for t in stream.sessions[j].tasks]
            rec = Round(ordering, strategy, i)
            mined = self.units.run(
                "data", {"runs": [evals[j]["key"] for j in new], "mine": _mine_identity(exp)},
                _mine_unit, ([str(self.units.root / "units" / evals[j]["key"] / "run")
                              for j in new], exp.mine, seen, f"{tag} mine"), f"{tag} mine")
            new_rows = _unit_rows(self.units.root / "units" / mined["key"]) \
                if mined["summary"]["rows"] else []
            rec.new_rows = len(new_rows)
            seen_data += new_rows
            # confidence of a row (partial replay's priority): its task's pass rate in the
            # trajectories it was mined from
            conf = {t: p / n for j in new
                    for t, (n, p) in evals[j]["summary"]["tasks"].items() if n}
            plan = self.consolidation(strategy, i, model, new_rows, seen_data, buffer_json, tag,
                                      rec, stream, conf)
            if plan is None:
                rec.skipped = "no new rows" if not new_rows else \
                    f"{len(new_rows)} new rows, fewer than [mine] min_rows"
            else:
                train_rows, init, ewc = plan
                model = self.train_round(train_rows, init, ewc, tag, rec)
                if strategy == "partial_replay":
                    buffer_json = self.update_buffer(buffer_json, new_rows, i, stream, model,
                                                     tag, rec, conf)
            evals = self.row_of(model, stream, tag)
            add_row(i, evals)
            if exp.capability.enabled:
                _set_capability(rec, self.capability(model, f"{tag} capability"))
            rounds.append(rec)
        return rows, rounds

    def consolidation(self, strategy, i, model: Model, new_rows, seen_data, buffer_json, tag,
                      rec: Round, stream, conf: dict[str, float]):
        """(training rows, init adapter, ewc settings) of round i, or None to keep `model`."""
        exp = self.exp
        init = model.adapter
        if len(new_rows) < max(exp.loop_mine.min_rows, 1):
            # nothing new (or fewer rows than [mine] min_rows): the model stays as it is; full
            # replay too, which would retrain on exactly the data of its current adapter
            return None
        if strategy == "full_replay":
            return list(seen_data), None, None
        if strategy == "sequential":
            return new_rows, init, None
        if strategy == "ewc":
            return new_rows, init, exp.continual.ewc
        # partial replay: the new rows plus a sample of the buffer
        from tracetune.train.replay import mix

        settings = exp.continual.partial_replay
        buffer = self.buffer(buffer_json)
        rec.buffer_size = len(buffer)
        mixed = mix(self.examples(new_rows, i, stream, conf), buffer, settings.ratio,
                    seed=exp.info.seed + i)
        return mixed, init, None

    def buffer(self, buffer_json: str | None):
        """Partial replay's buffer after the last round (empty before the first)."""
        from tracetune.train.replay import ReplayBuffer

        settings = self.exp.continual.partial_replay
        return ReplayBuffer.from_json(buffer_json) if buffer_json else \
            ReplayBuffer(settings.buffer_size, settings.priority, seed=self.exp.info.seed)

    def examples(self, rows: list[dict], i: int, stream, conf: dict[str, float]) -> list:
        """Replay examples of round i's new rows; confidence = the pass rate of the row's task
        in the trajectories the rows were mined from."""
        from tracetune.train.replay import Example

        return [Example.of(r, task=r["task"], session=stream.session_of(r["task"]), round=i,
                           confidence=conf.get(r["task"], 0.0)) for r in rows]

    def update_buffer(self, buffer_json, new_rows, i, stream, model: Model, tag, rec,
                      conf: dict[str, float]) -> str:
        settings = self.exp.continual.partial_replay
        buffer = self.buffer(buffer_json)
        examples = self.examples(new_rows, i, stream, conf)
        losses = None
        if settings.priority == "difficulty":
            pool = list(buffer.examples) + examples
            scored = self.units.run(
                "losses", {"adapter": model.key, "rows": [e.key for e in pool],
                           "max_seq_len": self.exp.train_config.max_seq_len},
                _losses_unit, (str(model.adapter) if model.adapter else None,
                               self.exp.train_base, [e.row for e in pool],
                               self.exp.train_config.max_seq_len, f"{tag} losses"),
                f"{tag} losses")
            losses = dict(zip((e.key for e in pool), scored["summary"]["losses"]))
            rec.extra_seconds += scored["seconds"]
        buffer.add(examples, losses=losses)
        rec.buffer_size = len(buffer)
        return buffer.to_json()

    def train_round(self, rows: list[dict], init: Path | None, ewc: EwcSettings | None, tag,
                    rec: Round) -> Model:
        exp = self.exp
        data = self.units.run("rows", {"rows": [_row_key(r) for r in rows]},
                              _write_rows_unit, (rows, f"{tag} data"), f"{tag} data")
        config = dataclasses.replace(exp.train_config,
                                     init_adapter=str(init) if init else None)
        if ewc is not None:
            prev_state = init / "ewc_state.safetensors" if init else None
            config = dataclasses.replace(
                config, ewc_lambda=ewc.lam if prev_state and prev_state.is_file() else 0.0,
                ewc_state=str(prev_state) if prev_state and prev_state.is_file() else None,
                ewc_fisher_samples=ewc.fisher_samples, ewc_accumulate=ewc.accumulate)
        identity = {"data": data["key"], "base": exp.train_base,
                    "config": {**asdict(config), "init_adapter": init.parent.name if init
                               else None,
                               **({"ewc_state": init.parent.name} if ewc and init else {})}}
        trained = self.units.run(
            "adapter", identity, _train_unit,
            (str(self.units.root / "units" / data["key"] / "data"), exp.train_base, config,
             f"{tag} train"), f"{tag} train")
        s = trained["summary"]
        rec.trained_rows, rec.tokens = s["rows"], s["tokens"]
        rec.train_seconds, rec.peak_ram_gb = s["train_seconds"], trained["peak_ram_gb"]
        rec.first_loss, rec.last_loss = s["first_loss"], s["last_loss"]
        if "ewc" in s:
            rec.ewc = s["ewc"]
            rec.extra_seconds += float(s["ewc"].get("fisher_seconds") or 0.0)
        adapter_dir = self.units.root / "units" / trained["key"] / "adapter"
        exported = None
        if exp.export.target != "none":
            exported = self.units.run(
                "export", {"adapter": trained["key"], "target": exp.export.target,
                           "base": exp.models.base},
                _export_unit, (str(adapter_dir), exp.export.target, exp.models.base,
                               f"{tag} export"), f"{tag} export")
        return self.adapted(trained, exported)


def _efficiency(run: Path) -> list[tuple[str, dict]]:
    """Seed 004's efficiency figures of one evaluation, per task (means over its trials):
    tokens (prompt + completion, every call of the episode), steps (the repair agent's tool
    calls; attempts for the other workflows: steps to completion), and, for agent workflows,
    tool-use efficiency: the share of actions that were well-formed and ran without a tool
    error or a repeated call (each message is a step: agents.repair). The seed defines the last
    as successful action time over total time; episodes do not time each action, so this
    counts actions instead."""
    from statistics import fmean

    from tracetune.eval.compare import load_episodes

    by_task: dict[str, list[dict]] = {}
    for ep in load_episodes(run):
        by_task.setdefault(ep["task_id"], []).append(ep)
    out = []
    for task, eps in sorted(by_task.items()):
        agent = [e["metrics"] for e in eps if (e.get("metrics") or {}).get("steps") is not None]
        steps = [m["steps"] for m in agent] if len(agent) == len(eps) else \
            [e["n_attempts"] for e in eps]
        values = {"tokens": fmean(e["prompt_tokens"] + e["completion_tokens"] for e in eps),
                  "steps": fmean(steps), "tool_efficiency": None}
        if agent and len(agent) == len(eps):
            good = [max(m["steps"] - m.get("tool_errors", 0) - m.get("parse_errors", 0)
                        - m.get("loop_detections", 0), 0) / m["steps"]
                    for m in agent if m["steps"]]
            values["tool_efficiency"] = fmean(good) if good else None
        out.append((task, values))
    return out


def _eval_identity(config) -> dict:
    """What defines an evaluation's results, for its unit key: its settings less the model
    (keyed by Model.key, free of paths) and the concurrency (how many episodes run at once does
    not change any episode: each has its own seed)."""
    settings = config.settings()
    return {k: v for k, v in settings.items() if k not in ("model", "concurrency")}


def _set_capability(rec: Round, cap: dict) -> None:
    tasks = cap["summary"]["tasks"]
    rec.capability_n = sum(t[0] for t in tasks.values())
    rec.capability_passes = sum(t[1] for t in tasks.values())
    rec.capability = rec.capability_passes / rec.capability_n if rec.capability_n else None


def _mine_identity(exp: ContinualExperiment) -> dict:
    config = asdict(exp.mine)
    config["tiers"] = {k: list(v) for k, v in exp.mine.tiers.items()}
    return config


def _unit_rows(unit: Path) -> list[dict]:
    from tracetune.datasets.build import read_rows, rows_path

    path = rows_path(unit / "data", "sft")
    return read_rows(path) if path.is_file() else []


def _row_key(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()


def _write_jsonl(path: Path, items: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(item) + "\n" for item in items)
    tmp.replace(path)


def _preregister(exp: ContinualExperiment, out: Path) -> None:
    """Freeze the hypotheses into OUT/preregistration.json on the first run; on later runs
    refuse a file whose hypotheses differ from the frozen ones (results were judged, or will be,
    against those)."""
    from tracetune.experiment.prereg import freeze, load

    record = load(out)
    if record is None:
        if (out / "matrix.jsonl").is_file() and exp.hypotheses:
            raise TracetuneError(f"{out} holds results but no pre-registration: hypotheses "
                                 "added after the results exist are not pre-registered; "
                                 "start a new run directory to test them")
        freeze(exp, out)
        return
    now = json.loads(json.dumps(exp.preregistered()))
    if record["content"] != now:
        raise TracetuneError(f"the hypotheses in {exp.path} differ from those pre-registered in "
                             f"{out} at {record['frozen_at']}; start a new run directory to "
                             "test new hypotheses")


def run_continual(path: Path, out: Path, *, log=print, progress=None) -> dict:
    """Load and validate the experiment, run (or continue) every unit into `out`, then write
    results.json and report.md; returns the results."""
    from tracetune.experiment.continual_report import analyze, write_report
    from tracetune.staging import check_output_dir

    exp = load_continual(path)
    out = Path(out)
    check_output_dir(out)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _preregister(exp, out)
    plan = {"experiment": str(Path(path).resolve()),
            "streams": {o: [{"name": s.name, "tasks": [t.id for t in s.tasks]}
                            for s in st.sessions] for o, st in exp.streams.items()}}
    (out / "plan.json").write_text(json.dumps(plan, indent=2))
    t0 = time.time()
    Protocol(exp, out, log=log, progress=progress).run()
    results = analyze(exp, out)
    results["wall_seconds_this_run"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    md = write_report(exp, out, results)
    log(f"[report] {md}")
    return results
