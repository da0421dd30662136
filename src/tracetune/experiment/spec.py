"""Experiment files: one TOML file that defines a whole `tracetune loop` and what it must show.

    [experiment]  name, description, seed
    [models]      base (evaluated), train_base (HF weights to train; default: base), adapted
                  (a spec for the adapted model; default: derived from the export), reference
                  (table name -> spec: models the adapted one is compared with, seed 000's 14B)
    [eval]        the evaluation: the fields of tracetune.eval.config.EvalConfig except model,
                  seed and split (suite, workflow spec with its options, trials, split share,
                  sampling...), plus eval_on = "heldout" to evaluate the held-out tasks only
                  (cheaper when the training data comes from a teacher)
    [teacher]     model (e.g. "oracle"), rollouts, temperature: trajectories of the train tasks
                  that the miner reads instead of the base model's
    [mine]        what becomes training data: the fields of tracetune.datasets.build.MineConfig
                  that the loop does not set itself, plus min_rows
    [train]       the LoRA recipe (tracetune.train.config.TrainConfig)
    [export]      target: gguf-lora, merged-gguf or none (none: the adapted model runs in
                  transformers with the PEFT adapter)
    [capability]  general-capability check (HumanEval, or a fixed subset), greedy
    [control]     enabled: also train an adapter on as many unfiltered rows, evaluate it the same
    [rounds]      rounds of expert iteration after the first, each behind a pre-registered gate
                  (RoundsSection; experiment.rounds)
    [grpo]        enabled, plus the fields of tracetune.train.grpo.GrpoConfig: a GRPO round from
                  sandbox rewards after the rounds, started from the kept round's adapter
    [[hypothesis]] pre-registered claims with their thresholds and test
    [decision]    GO / ITERATE / ABORT criteria (seed 003)

Every key is checked before any work starts: unknown keys, wrong types, a metric that does not
exist, an arm that is not in the experiment each give one message naming the key.

Metric names (used by hypotheses and decision criteria):
    ARM.EVAL.STAT     ARM: base, adapted, control, or a reference name
                      EVAL: heldout, train, all (the [eval] tasks), capability
                      STAT: success_rate, avg_attempts, avg_duration_s, median_duration_s,
                            avg_tokens; repair adds avg_parse_errors, write_rate,
                            valid_edit_rate, fault_edit_rate, avg_loop_detections, avg_steps,
                            avg_tool_errors
    delta.EVAL.STAT   adapted minus base
    train.STAT        peak_ram_gb, seconds, rows, final_loss (the adapter's training)
    adapted.peak_ram_gb   peak memory of the process while it evaluated the adapted model
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tracetune.errors import TracetuneError
from tracetune.tomlconf import build, read_toml
from tracetune.train.config import TrainConfig
from tracetune.train.grpo import GrpoConfig

if TYPE_CHECKING:
    from tracetune.datasets.build import MineConfig
    from tracetune.eval.config import EvalConfig

EVALS = ("heldout", "train", "all", "capability")
STATS = ("success_rate", "avg_attempts", "avg_duration_s", "median_duration_s", "avg_tokens")
AGENT_STATS = ("avg_parse_errors", "write_rate", "valid_edit_rate", "fault_edit_rate",
               "avg_loop_detections",
               "avg_steps", "avg_tool_errors")
"""Per-episode tool metrics of agent workflows (repair): Summary.agent."""
TESTGEN_STATS = ("pass_at_3", "mutation_score")
"""The testgen workflow's per-task means (Summary.testgen; eval.compare.TESTGEN_METRICS)."""
EVAL_ON = ("all", "heldout")
TRAIN_STATS = ("peak_ram_gb", "seconds", "rows", "final_loss")
TESTS = ("fisher", "mcnemar", "paired_permutation", "wilcoxon", "paired_t", "none")
EXPORT_TARGETS = ("gguf-lora", "merged-gguf", "none")
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
       "==": operator.eq}
_CRITERION = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(>=|<=|==|>|<)\s*(-?[0-9.]+(?:e-?\d+)?)\s*$")


@dataclass(frozen=True)
class ExperimentInfo:
    name: str = "experiment"
    """Short name (used in the report's title)."""
    description: str = ""
    """What the experiment asks."""
    seed: int = 0
    """Base seed of every evaluation's sampling (base and adapted share per-sample seeds)."""


@dataclass(frozen=True)
class Models:
    base: str = "embedded"
    """Model spec of the base model (evaluated as is)."""
    train_base: str | None = None
    """Weights LoRA trains on (default: base). E.g. base an openai: server, train_base hf:NAME."""
    adapted: str | None = None
    """Spec of the adapted model (default: base + the exported adapter)."""
    reference: dict[str, str] = field(default_factory=dict)
    """name -> spec: reference models evaluated like the others (seed 000's 14B)."""


@dataclass(frozen=True)
class LoopEval:
    """Keys of [eval] that only the loop reads (the rest are EvalConfig's)."""

    eval_on: str = "all"
    """all: base and adapted run on every task (train and held-out); heldout: only held-out."""


EVAL_FIXED = ("model", "seed", "split")
"""EvalConfig fields the loop sets itself ([models], [experiment] seed, eval_on)."""
EVAL_DEFAULTS = {"trials": 8, "train_pct": 50}
"""Where an experiment's [eval] default differs from `tracetune eval`'s: a comparison needs
several samples per task and a held-out half (earlier releases' defaults, kept)."""


@dataclass(frozen=True)
class TeacherSection:
    """[teacher]: these keys, plus the EvalConfig fields in TEACHER_EVAL (the teacher's own
    sampling), stated in the same table."""

    model: str | None = None
    """A model spec whose trajectories of the train tasks become the training data (oracle: the
    scripted reference fix). None: mine the base model's own baseline episodes."""
    rollouts: int = 1
    """Trajectories per train task."""
    max_iters: int = 10
    """repair: the teacher's own iteration budget (the student's is the [eval] workflow's)."""
    eval: dict = field(default_factory=dict)
    """The EvalConfig values the teacher's rollouts use instead of [eval]'s (TEACHER_EVAL's keys,
    at its defaults unless the table states them)."""


TEACHER_EVAL = {"temperature": 0.2, "max_tokens": 512}
"""EvalConfig fields [teacher] may state, with the teacher's defaults."""


@dataclass(frozen=True)
class LoopMine:
    """Keys of [mine] that only the loop reads (the rest are MineConfig's)."""

    min_rows: int = 1
    """Stop the loop (before training) when mining yields fewer rows than this (seed 000: 50)."""


MINE_FIXED = ("train_pct", "allow_heldout", "unfiltered", "seed")
"""MineConfig fields the loop sets itself (the [eval] split, the control's draw, the seed)."""


@dataclass(frozen=True)
class ExportSection:
    target: str = "gguf-lora"


@dataclass(frozen=True)
class CapabilitySection:
    """[capability]: these keys, plus the EvalConfig fields in CAPABILITY_EVAL."""

    enabled: bool = True
    """Check general capability before and after (base and adapted)."""
    suite: str = "humaneval"
    """The capability suite."""
    limit: int = 0
    """First N problems of the suite (a fixed subset); 0: all of them."""
    eval: dict = field(default_factory=dict)
    """The EvalConfig values of the check (CAPABILITY_EVAL's keys, at its defaults unless the
    table states them)."""


CAPABILITY_EVAL = {"temperature": 0.0, "max_tokens": 512, "check_timeout_s": 10.0}
"""EvalConfig fields [capability] may state, with the check's defaults (greedy)."""


@dataclass(frozen=True)
class ControlSection:
    enabled: bool = False
    """Train a control adapter on as many rows drawn from the same runs without any filter."""


ROUND_MODES = ("continue", "retrain")
GATE_TESTS = ("paired_permutation", "fisher", "mcnemar", "wilcoxon", "paired_t")


@dataclass(frozen=True)
class RoundsSection:
    """[rounds]: expert iteration (rejection-sampling fine-tuning repeated; SWE-Gym, arXiv
    2412.21139). Round 1 is the loop's own baseline -> mine -> train -> export -> adapted ->
    capability; round r >= 2 evaluates round r-1's model on every [eval] task, mines its train
    tasks, trains, exports and evaluates on every task and the capability suite. Before round
    r+1 runs, the gate judges round r: its held-out success rate must exceed round r-1's by at
    least min_gain with `test` p < alpha, and its capability success rate must be within
    max_capability_drop of the base model's; otherwise the rounds stop and the kept round is the
    last one that passed (0: the base model)."""

    rounds: int = 1
    """How many rounds at most (1: the loop as without [rounds])."""
    mode: str = "continue"
    """continue: round r trains round r-1's adapter further on round r-1's own passing answers;
    retrain: round r trains a fresh adapter from the base weights on the rows mined from every
    evaluation so far (baseline and each earlier round), duplicates removed."""
    test: str = "paired_permutation"
    """The gate's test of round r against round r-1 on held-out success (the task as the unit:
    paired_permutation, wilcoxon, paired_t; (task, trial) outcomes: fisher, mcnemar)."""
    alpha: float = 0.05
    """The gate's significance level (two-sided p < alpha)."""
    min_gain: float = 0.0
    """The smallest held-out gain over round r-1 the gate accepts (a fraction, 0.05 = 5pp)."""
    max_capability_drop: float = 0.02
    """The largest capability drop below the base model the gate accepts (fraction; needs
    [capability] enabled, else ignored)."""

    def gate(self) -> dict:
        """The settings the gate and the rounds read (what round stages hash; not `rounds`, so
        that raising it keeps the rounds already run)."""
        return {k: v for k, v in asdict(self).items() if k != "rounds"}


@dataclass(frozen=True)
class LoopGrpo:
    """Keys of [grpo] that only the loop reads (the rest are GrpoConfig's)."""

    enabled: bool = False
    """Run the grpo stage: GRPO on the train tasks from the kept round's adapter (the loop's
    adapter without [rounds]), then export, evaluation and capability check like any round."""


@dataclass(frozen=True)
class Hypothesis:
    id: str
    claim: str
    metric: str
    """EVAL.STAT, e.g. heldout.success_rate."""
    treatment: str = "adapted"
    control: str = "base"
    min_delta: float | None = None
    """Supported when treatment - control >= min_delta (and the test's p < alpha)."""
    max_delta: float | None = None
    """Supported when treatment - control <= max_delta (and the test's p < alpha): for metrics
    that should fall, e.g. avg_parse_errors with max_delta = -1."""
    test: str = "fisher"
    """fisher or mcnemar (success_rate, (task, trial) outcomes as the unit), wilcoxon or
    paired_t (per-task means), paired_permutation (any metric: a sign-flip test over tasks, the
    unit of a paired design whose trials share a task), none."""
    alpha: float = 0.05
    within: float | None = None
    """Per-task form: |treatment - control| <= within on at least min_tasks tasks."""
    min_tasks: int = 1


@dataclass(frozen=True)
class Criterion:
    text: str
    metric: str
    op: str
    value: float

    def holds(self, observed: float) -> bool:
        return OPS[self.op](observed, self.value)


@dataclass(frozen=True)
class Decision:
    go: tuple[Criterion, ...] = ()
    """GO when every one holds."""
    abort: tuple[Criterion, ...] = ()
    """ABORT when every one holds (and GO does not); otherwise ITERATE."""


@dataclass(frozen=True)
class Experiment:
    path: Path
    info: ExperimentInfo
    models: Models
    eval: EvalConfig
    """The [eval] table as the baseline runs it: model = base, seed = [experiment] seed, split
    from eval_on, train_pct resolved to the suite's share when not stated."""
    loop_eval: LoopEval
    teacher: TeacherSection
    mine: MineConfig
    """The [mine] table; the loop sets MINE_FIXED when it mines."""
    loop_mine: LoopMine
    train: dict
    """The [train] table as written (what stage keys hash)."""
    train_config: TrainConfig
    """The same table, validated, with defaults filled in."""
    export: ExportSection
    capability: CapabilitySection
    control: ControlSection
    hypotheses: tuple[Hypothesis, ...]
    decision: Decision
    rounds: RoundsSection = RoundsSection()
    grpo: GrpoConfig | None = None
    """[grpo]'s training settings when the grpo stage runs ([grpo] enabled), else None."""

    @property
    def arms(self) -> tuple[str, ...]:
        return ("base", "adapted") + (("control",) if self.control.enabled else ()) + \
            tuple(self.models.reference)

    def section(self, name: str) -> dict:
        """A section's settings as plain JSON data (what stage records hold and keys hash): the
        values the stages use, the workflow's options flat beside the other [eval] keys."""
        if name == "eval":
            settings = {k: v for k, v in self.eval.settings().items() if k not in EVAL_FIXED}
            return as_json({**settings, **asdict(self.loop_eval)})
        if name == "mine":
            mine = {k: v for k, v in asdict(self.mine).items() if k not in MINE_FIXED}
            return as_json({**mine, **asdict(self.loop_mine)})
        if name == "grpo":
            return as_json({"enabled": self.grpo is not None,
                            **asdict(self.grpo or GrpoConfig())})
        value = getattr(self, name)
        if isinstance(value, (TeacherSection, CapabilitySection)):  # overrides stated flat
            own = asdict(value)
            return as_json({**{k: v for k, v in own.items() if k != "eval"}, **value.eval})
        return as_json(value if isinstance(value, dict) else asdict(value))

    def section_defaults(self, name: str) -> dict:
        """The defaults of `section(name)`'s settings, the same shape (settings a record from an
        earlier tracetune lacks must hold these)."""
        if name == "eval":
            from tracetune.eval.config import EvalConfig

            spec = self.eval.workflow_spec()
            return as_json({**field_defaults(EvalConfig), **EVAL_DEFAULTS,
                            **field_defaults(spec.info.config_cls), **field_defaults(LoopEval)})
        if name == "mine":
            from tracetune.datasets.build import MineConfig

            return as_json({**field_defaults(MineConfig), **field_defaults(LoopMine)})
        if name == "grpo":
            return as_json({"enabled": False, **field_defaults(GrpoConfig)})
        if name in ("teacher", "capability"):
            own = field_defaults(type(getattr(self, name)))
            own.pop("eval")
            return {**own, **as_json(TEACHER_EVAL if name == "teacher" else CAPABILITY_EVAL)}
        return field_defaults(getattr(self, name))

    # --- the evaluations the loop runs (each validated when the experiment loads) ---------------
    @property
    def eval_on(self) -> str:
        return self.loop_eval.eval_on

    def eval_config(self, model: str, **changes):
        """The [eval] evaluation of `model` (changes: other EvalConfig fields)."""
        import dataclasses

        return dataclasses.replace(self.eval, model=model, **changes)

    def teacher_config(self):
        """The [teacher]'s rollouts of the train tasks (its own sampling and, for workflows
        that have it, its own max_iters)."""
        t = self.teacher
        spec = self.eval.workflow_spec()
        own = {"max_iters": t.max_iters} if "max_iters" in spec.options() else {}
        return self.eval_config(t.model or self.models.base, split="train", trials=t.rollouts,
                                workflow=self.eval.workflow_spec(**own).text(), **t.eval)

    def capability_config(self, model: str):
        """The capability check: one greedy attempt per problem of the capability suite."""
        cap = self.capability
        return self.eval_config(model, suite=cap.suite, workflow="direct,max_attempts=1",
                                trials=1, tasks=(), max_difficulty=0, limit=cap.limit,
                                **cap.eval)

    def heldout_split(self) -> str:
        """The split of the control's evaluation: held-out tasks, or all when none are."""
        return "test" if self.eval.train_pct < 100 else "all"

    def preregistered(self) -> dict:
        """What is frozen before any result exists: hypotheses and decision criteria."""
        frozen = {"hypotheses": [asdict(h) for h in self.hypotheses],
                  "decision": {"go": [c.text for c in self.decision.go],
                               "abort": [c.text for c in self.decision.abort]}}
        if self.rounds.rounds > 1:  # the gate is pre-registered too (absent: one round)
            frozen["rounds_gate"] = self.rounds.gate()
        return frozen


SECTIONS = ("experiment", "models", "eval", "teacher", "mine", "train", "export", "capability",
            "control", "rounds", "grpo", "hypothesis", "decision")


def load_experiment(path: Path) -> Experiment:
    """Read and validate an experiment file; every problem is one TracetuneError naming the
    file, the section and the key. Every evaluation, the mining and the training the loop would
    run are validated by their own components here, before anything is frozen or run."""
    import dataclasses

    from tracetune.datasets.build import MineConfig
    from tracetune.eval.config import eval_config_from
    from tracetune.models import parse_spec
    from tracetune.tasks import load_suite
    path = Path(path)
    data, where = read_sections(path, SECTIONS)
    info = build(ExperimentInfo, data.get("experiment", {}), f"{where} [experiment]")
    models = build(Models, data.get("models", {}), f"{where} [models]")
    eval_table, loop_eval = _split_table(data.get("eval", {}), LoopEval, f"{where} [eval]")
    ev = eval_config_from({**EVAL_DEFAULTS, **eval_table}, f"{where} [eval]",
                          model=models.base, seed=info.seed, split="all")
    teacher = _with_eval(TeacherSection, data.get("teacher", {}), TEACHER_EVAL,
                         f"{where} [teacher]")
    mine_table, loop_mine = _split_table(data.get("mine", {}), LoopMine, f"{where} [mine]")
    mine = build(MineConfig, mine_table, f"{where} [mine]", exclude=MINE_FIXED)
    train_table = data.get("train", {})
    train_cfg = build(TrainConfig, train_table, f"{where} [train]")
    export = build(ExportSection, data.get("export", {}), f"{where} [export]")
    cap = _with_eval(CapabilitySection, data.get("capability", {}), CAPABILITY_EVAL,
                     f"{where} [capability]")
    control = build(ControlSection, data.get("control", {}), f"{where} [control]")
    rounds = build(RoundsSection, data.get("rounds", {}), f"{where} [rounds]")
    grpo_table, loop_grpo = _split_table(data.get("grpo", {}), LoopGrpo, f"{where} [grpo]")
    grpo = build(GrpoConfig, grpo_table, f"{where} [grpo]")
    try:
        grpo.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [grpo]: {exc}") from None
    hyps, decision = preregistration_tables(data, Hypothesis, where)

    # --- values and cross-references ------------------------------------------------------------
    for key, spec in [("base", models.base), ("train_base", models.train_base),
                      ("adapted", models.adapted), *models.reference.items(),
                      ("[teacher] model", teacher.model)]:
        if spec is not None:
            try:
                parse_spec(spec)
            except TracetuneError as exc:
                section = "" if key.startswith("[") else "[models] "
                raise TracetuneError(f"{where} {section}{key}: {exc}") from None
    if teacher.model is not None and teacher.rollouts < 1:
        raise TracetuneError(f"{where} [teacher] rollouts: must be at least 1")
    clash = set(models.reference) & {"base", "adapted", "control", "delta", "train"}
    if clash:
        raise TracetuneError(f"{where} [models] reference: the names {', '.join(sorted(clash))} "
                             "are reserved")
    try:
        ev.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [eval]: {exc}") from None
    if loop_eval.eval_on not in EVAL_ON:
        raise TracetuneError(f"{where} [eval] eval_on: {loop_eval.eval_on!r} is not one of "
                             f"{', '.join(EVAL_ON)}")
    for section, suite in (("eval", ev.suite), ("capability", cap.suite)):
        if section == "capability" and not cap.enabled:
            continue
        try:
            loaded = load_suite(suite)
        except TracetuneError as exc:
            raise TracetuneError(f"{where} [{section}] suite: {exc}") from None
        if section == "eval":
            from tracetune.eval.runner import check_suite_kind

            try:
                check_suite_kind(ev.workflow_spec().info, loaded.kind, suite)
            except TracetuneError as exc:
                raise TracetuneError(f"{where} [eval] workflow: {exc}") from None
            if ev.train_pct is None:  # the suite's own share, stated from here on
                ev = dataclasses.replace(ev, train_pct=loaded.train_pct)
    if not 1 <= ev.train_pct <= 100:
        raise TracetuneError(f"{where} [eval] train_pct: must be within 1..100 (100: train on "
                             "every task, no held-out split)")
    if loop_eval.eval_on == "heldout":
        if ev.train_pct == 100:
            raise TracetuneError(f"{where} [eval] eval_on = heldout needs held-out tasks "
                                 "(train_pct < 100)")
        ev = dataclasses.replace(ev, split="test")
    try:
        mine.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [mine]: {exc}") from None
    if loop_mine.min_rows < 0:
        raise TracetuneError(f"{where} [mine] min_rows: must be 0 or more")
    try:
        train_cfg.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [train]: {exc}") from None
    if train_cfg.method == "dpo" and "dpo" not in mine.kinds:
        raise TracetuneError(f"{where} [train] method = dpo needs 'dpo' in [mine] kinds")
    if mine.tokenizer is not None and mine.max_seq_len > train_cfg.max_seq_len:
        # Training drops every row over its own limit: rows mined up to a longer one would be
        # mined only to be thrown away (a shorter mining limit is fine).
        default = {name: "" if "max_seq_len" in table else " (the default)"
                   for name, table in (("mine", mine_table), ("train", train_table))}
        raise TracetuneError(f"{where} [mine] max_seq_len = {mine.max_seq_len}{default['mine']} "
                             f"is greater than [train] max_seq_len = {train_cfg.max_seq_len}"
                             f"{default['train']}: training would drop the mined rows "
                             "between the two; make [mine] max_seq_len at most [train]'s")
    if export.target not in EXPORT_TARGETS:
        raise TracetuneError(f"{where} [export] target: {export.target!r} is not one of "
                             f"{', '.join(EXPORT_TARGETS)}")
    exp = Experiment(path, info, models, ev, loop_eval, teacher, mine, loop_mine, train_table,
                     train_cfg, export, cap, control, hyps, decision, rounds,
                     grpo if loop_grpo.enabled else None)
    _check_rounds(exp, f"{where} [rounds]")
    _check_grpo(exp, f"{where} [grpo]")
    _check_evaluations(exp, where)
    names = set()
    for i, h in enumerate(hyps):
        _check_hypothesis(exp, h, f"{where} [[hypothesis]] {h.id or '#' + str(i + 1)}")
        if h.id in names:
            raise TracetuneError(f"{where}: two hypotheses are called {h.id!r}")
        names.add(h.id)
    known = metric_names(exp)
    for c in decision.go + decision.abort:
        if c.metric not in known:
            raise TracetuneError(f"{where} [decision] {c.text!r}: no metric {c.metric!r}"
                                 f"{_suggest(c.metric, known)}")
    return exp


def read_sections(path: Path, sections: tuple[str, ...]) -> tuple[dict, str]:
    """An experiment file's tables and the name errors use for it. Raises TracetuneError for a
    file that is not TOML or holds a section not in `sections`."""
    data = read_toml(path)
    where = str(path)
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise TracetuneError(f"{where}: unknown section(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(sections)})")
    return data, where


def preregistration_tables(data: dict, hypothesis_cls: type,
                           where: str) -> tuple[tuple, Decision]:
    """An experiment file's [[hypothesis]] tables (as `hypothesis_cls`) and its [decision]
    (go / abort criteria, checked for form only). Raises TracetuneError naming the table."""
    raw_h = data.get("hypothesis", [])
    if not isinstance(raw_h, list):
        raise TracetuneError(f"{where}: hypotheses are [[hypothesis]] tables")
    hyps = tuple(build(hypothesis_cls, h, f"{where} [[hypothesis]] #{i + 1}")
                 for i, h in enumerate(raw_h))
    raw_d = data.get("decision", {})
    if not isinstance(raw_d, dict) or set(raw_d) - {"go", "abort"}:
        raise TracetuneError(f"{where} [decision]: only the keys go and abort (lists of "
                             "'METRIC OP NUMBER')")
    decision = Decision(
        go=tuple(_criterion(t, f"{where} [decision] go") for t in _strings(raw_d, "go", where)),
        abort=tuple(_criterion(t, f"{where} [decision] abort")
                    for t in _strings(raw_d, "abort", where)))
    return hyps, decision


def _split_table(table, loop_cls: type, where: str) -> tuple[dict, object]:
    """A section's table -> (the component's keys, the loop's own keys as `loop_cls`)."""
    if not isinstance(table, dict):
        raise TracetuneError(f"{where} must be a table")
    own = {f.name for f in fields(loop_cls)}
    return ({k: v for k, v in table.items() if k not in own},
            build(loop_cls, {k: v for k, v in table.items() if k in own}, where))


def _with_eval(cls: type, table, defaults: dict, where: str):
    """A section whose table mixes its own keys with EvalConfig fields (those in `defaults`):
    the latter are type-checked against EvalConfig and kept in the section's `eval`."""
    import typing

    from tracetune.eval.config import EvalConfig
    from tracetune.tomlconf import check_type

    if not isinstance(table, dict):
        raise TracetuneError(f"{where} must be a table")
    own_keys = {f.name for f in fields(cls)} - {"eval"}
    hints = typing.get_type_hints(EvalConfig)
    unknown = sorted(set(table) - own_keys - set(defaults))
    if unknown:
        raise TracetuneError(f"{where}: unknown key(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(sorted(own_keys | set(defaults)))})")
    given = {k: check_type(f"{where}: {k}", v, hints[k])
             for k, v in table.items() if k in defaults}
    own = build(cls, {k: v for k, v in table.items() if k in own_keys}, where,
                exclude=("eval",))
    import dataclasses

    return dataclasses.replace(own, eval={**defaults, **given})


def _check_evaluations(exp: Experiment, where: str) -> None:
    """Every evaluation the loop will run passes its own validation and selects tasks now; the
    training base, the adapted model's spec and the mining's teacher are resolved now."""
    from pathlib import Path as _Path

    from tracetune.eval.runner import select_tasks
    from tracetune.models.resolve import adapted_spec
    from tracetune.train.recipe import base_config

    runs = [("[eval]", lambda: exp.eval)]
    if exp.teacher.model is not None:
        runs.append(("[teacher]", exp.teacher_config))
    if exp.capability.enabled:
        runs.append(("[capability]", lambda: exp.capability_config(exp.models.base)))
    if exp.control.enabled:
        runs.append(("[control]", lambda: exp.eval_config(exp.models.base,
                                                          split=exp.heldout_split())))
    for section, make in runs:
        try:
            config = make()
            config.validate()
            select_tasks(config)
        except TracetuneError as exc:
            raise TracetuneError(f"{where} {section}: {exc}") from None
    train_base = exp.models.train_base or exp.models.base
    try:
        base_config(train_base, exp.train_config)
    except TracetuneError as exc:
        raise TracetuneError(f"{where} [models] train_base / [train]: {exc}") from None
    if exp.models.adapted is None:
        try:
            adapted_spec(exp.models.base, target=exp.export.target,
                         artifact=_Path("export") / "adapter.gguf", adapter_dir=_Path("adapter"),
                         train_base=train_base)
        except TracetuneError as exc:
            raise TracetuneError(f"{where} [export] target: {exc}") from None
    rows = {"sft": ("sft", "fix"), "dpo": ("dpo",)}[exp.train_config.method]
    if not set(rows) & set(exp.mine.kinds):
        raise TracetuneError(f"{where} [train] method = {exp.train_config.method} trains on "
                             f"{' or '.join(rows)} rows; [mine] kinds {list(exp.mine.kinds)} "
                             "yields none")


def _check_rounds(exp: Experiment, where: str) -> None:
    """[rounds]: values in range, and an experiment whose rounds can run (each round mines the
    previous round's own answers on the train tasks and is judged on the held-out ones)."""
    r = exp.rounds
    if r.rounds < 1:
        raise TracetuneError(f"{where} rounds: must be at least 1 (1: a single round)")
    if r.mode not in ROUND_MODES:
        raise TracetuneError(f"{where} mode: {r.mode!r} is not one of {', '.join(ROUND_MODES)}")
    if r.test not in GATE_TESTS:
        raise TracetuneError(f"{where} test: {r.test!r} is not one of {', '.join(GATE_TESTS)}")
    if not 0 < r.alpha < 1:
        raise TracetuneError(f"{where} alpha: must be within (0, 1)")
    if not 0 <= r.max_capability_drop <= 1 or not -1 <= r.min_gain <= 1:
        raise TracetuneError(f"{where}: min_gain and max_capability_drop are fractions "
                             "(0.02 = 2pp)")
    if r.rounds == 1:
        return
    why = None
    if exp.eval.train_pct == 100:
        why = "[eval] train_pct = 100 leaves no held-out tasks for the gate"
    elif exp.eval_on != "all":
        why = "[eval] eval_on = heldout: each round mines its own answers on the train tasks"
    elif exp.teacher.model is not None:
        why = "[teacher]: rounds mine the model's own answers, not a teacher's"
    elif exp.train_config.method != "sft":
        why = f"[train] method = {exp.train_config.method}: rounds train SFT adapters"
    if why:
        raise TracetuneError(f"{where} rounds = {r.rounds}: {why}")


def _check_grpo(exp: Experiment, where: str) -> None:
    """[grpo] enabled: an experiment whose GRPO stage can run (the reward runs a completion of
    the direct workflow's prompt against the hidden tests; the result is judged on held-out
    tasks)."""
    if exp.grpo is None:
        return
    spec = exp.eval.workflow_spec()
    why = None
    if not spec.info.one_completion:
        from tracetune.agents.spec import WORKFLOWS

        one = ", ".join(n for n, w in WORKFLOWS.items() if w.one_completion)
        why = (f"[eval] workflow = {spec.name}: the reward scores one completion of a "
               f"workflow's first prompt ({one})")
    elif exp.eval.train_pct == 100:
        why = "[eval] train_pct = 100 leaves no held-out tasks to judge it on"
    elif exp.train_config.method != "sft":
        why = f"[train] method = {exp.train_config.method}: GRPO continues an SFT adapter"
    if why:
        raise TracetuneError(f"{where} enabled: {why}")


def evals_of(exp: Experiment) -> list[str]:
    """The evaluations this experiment produces."""
    out = ["heldout"] if exp.eval.train_pct < 100 else []
    if exp.eval_on == "all":
        out += ["train", "all"]
    return out + (["capability"] if exp.capability.enabled else [])


def stats_of(exp: Experiment, evaluation: str) -> tuple[str, ...]:
    info = exp.eval.workflow_spec().info
    if evaluation == "capability":
        return STATS
    return STATS + (AGENT_STATS if info.agent_metrics else ()) + \
        (TESTGEN_STATS if info.test_metrics else ())


def metric_names(exp: Experiment) -> set[str]:
    evals = evals_of(exp)
    control_eval = "heldout" if exp.eval.train_pct < 100 else "all"
    names = {f"{arm}.{e}.{s}" for arm in exp.arms for e in evals for s in stats_of(exp, e)
             if (e != "capability" or arm in ("base", "adapted"))
             and (arm != "control" or e == control_eval)}
    names |= {f"delta.{e}.{s}" for e in evals for s in stats_of(exp, e)}
    names |= {f"train.{s}" for s in TRAIN_STATS} | {"adapted.peak_ram_gb"}
    return names


def experiment_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def as_json(data):
    """`data` as a JSON record holds it (tuples become lists, other objects strings)."""
    return json.loads(json.dumps(data, default=str))


def field_defaults(obj) -> dict:
    """A dataclass's (or dataclass instance's) field defaults as JSON data; fields without a
    default are left out. Anything else: {}."""
    from tracetune.tomlconf import field_defaults as defaults

    return as_json(defaults(type(obj) if not isinstance(obj, type) else obj)) \
        if is_dataclass(obj) else {}


def same_settings(old, new, defaults) -> bool:
    """`old`, recorded by this or an earlier tracetune, states what `new` states: the same
    values, except that a key missing from a dict of `old` is a setting added since, which `new`
    must hold at its default (`defaults` mirrors the nesting of the dicts; a list's are those of
    its items)."""
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(map(same_settings, old, new,
                                                [defaults] * len(old)))
    if isinstance(old, dict) and isinstance(new, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        return old.keys() <= new.keys() and all(
            same_settings(old[k], v, defaults.get(k)) if k in old
            else k in defaults and v == defaults[k] for k, v in new.items())
    return old == new


def _strings(table: dict, key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TracetuneError(f"{where} [decision] {key}: must be a list of strings like "
                             "'adapted.heldout.success_rate >= 0.3'")
    return value


def _criterion(text: str, where: str) -> Criterion:
    m = _CRITERION.match(text)
    if not m:
        raise TracetuneError(f"{where}: {text!r} is not 'METRIC OP NUMBER' "
                             f"(OP one of {' '.join(OPS)})")
    return Criterion(text.strip(), m.group(1), m.group(2), float(m.group(3)))


def _check_hypothesis(exp: Experiment, h: Hypothesis, where: str) -> None:
    if not h.id or not h.claim:
        raise TracetuneError(f"{where}: id and claim must not be empty")
    parts = h.metric.split(".")
    stats = STATS + AGENT_STATS + TESTGEN_STATS
    if len(parts) != 2 or parts[0] not in EVALS or parts[1] not in stats:
        raise TracetuneError(f"{where} metric: {h.metric!r} does not exist (EVAL.STAT with EVAL "
                             f"in {', '.join(EVALS)} and STAT in {', '.join(stats)})")
    if parts[0] == "heldout" and exp.eval.train_pct == 100:
        raise TracetuneError(f"{where} metric: [eval] train_pct = 100 leaves no held-out tasks")
    if parts[0] in ("train", "all") and exp.eval_on == "heldout":
        raise TracetuneError(f"{where} metric: [eval] eval_on = heldout evaluates held-out "
                             "tasks only")
    if parts[1] in AGENT_STATS and (not exp.eval.workflow_spec().info.agent_metrics
                                    or parts[0] == "capability"):
        raise TracetuneError(f"{where} metric: {parts[1]} is a tool metric of agent workflows "
                             "(repair), not of the capability check or workflow "
                             f"{exp.eval.workflow_spec().name}")
    if parts[1] in TESTGEN_STATS and (not exp.eval.workflow_spec().info.test_metrics
                                      or parts[0] == "capability"):
        raise TracetuneError(f"{where} metric: {parts[1]} is a metric of test-writing workflows "
                             "(testgen), not of the capability check or workflow "
                             f"{exp.eval.workflow_spec().name}")
    if parts[0] == "capability" and not exp.capability.enabled:
        raise TracetuneError(f"{where} metric: {h.metric!r} needs [capability] enabled")
    for role, arm in (("treatment", h.treatment), ("control", h.control)):
        if arm not in exp.arms:
            raise TracetuneError(f"{where} {role}: {arm!r} is not a model of this experiment "
                                 f"({', '.join(exp.arms)})")
        if parts[0] == "capability" and arm not in ("base", "adapted"):
            raise TracetuneError(f"{where} {role}: the capability check runs base and "
                                 "adapted only")
        if arm == "control" and parts[0] != "heldout" and exp.eval.train_pct < 100:
            raise TracetuneError(f"{where} {role}: the control adapter is evaluated on held-out "
                                 "tasks only (metric heldout.STAT)")
    if h.treatment == h.control:
        raise TracetuneError(f"{where}: treatment and control are both {h.treatment!r}")
    if sum(x is not None for x in (h.min_delta, h.max_delta, h.within)) != 1:
        raise TracetuneError(f"{where}: give exactly one of min_delta (a difference of at least "
                             "this much), max_delta (at most this much) or within (per task, "
                             "within this much)")
    if h.test not in TESTS:
        raise TracetuneError(f"{where} test: {h.test!r} is not one of {', '.join(TESTS)}")
    if h.test in ("fisher", "mcnemar") and parts[1] != "success_rate":
        raise TracetuneError(f"{where} test: {h.test} applies to success_rate; use wilcoxon or "
                             f"paired_t for {parts[1]}")
    if not 0 < h.alpha < 1:
        raise TracetuneError(f"{where} alpha: must be within (0, 1)")
    if h.within is not None and h.min_tasks < 1:
        raise TracetuneError(f"{where} min_tasks: must be at least 1")


def _suggest(name: str, known: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else \
        " (metrics are ARM.EVAL.STAT, delta.EVAL.STAT, train.STAT)"
