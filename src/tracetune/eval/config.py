"""`EvalConfig`: every setting of an evaluation, declared once.

The same fields are the options of `tracetune eval` and `tracetune rollouts` (derived from the
dataclass: defaults and help written here only), the keys of an experiment's `[eval]` table, and
the config stored with a run (reused on resume). The workflow is a spec string whose options are
the workflow's own (`agents.configs`): `repair,max_iters=5`.

Earlier releases had the workflows' options as flat keys (`max_attempts`, `min_tests`,
`max_iters`, `test_policy`) beside the others; `upgrade_eval_values` folds them into the workflow
spec, so experiment files and run stores written by those releases keep loading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tracetune.errors import TracetuneError
from tracetune.types import SamplingParams

SPLITS = ("all", "train", "test")
LEGACY_WORKFLOW_KEYS = ("max_attempts", "min_tests", "max_iters", "test_policy")
"""Workflow options that earlier releases kept as flat eval settings."""


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation run (stored with the run, reused on resume)."""

    suite: str = "funcs"
    """Built-in suite name or a suite .toml file; SUITE:train / SUITE:test name its split."""
    workflow: str = "direct"
    """Workflow spec NAME[,key=value...]: direct, tdd or repair (repair suites), e.g.
    repair,max_iters=5 (see `tracetune workflows`)."""
    model: str = "embedded"
    """Model spec (see `tracetune models`)."""
    trials: int = 1
    """Episodes per task."""
    seed: int = 0
    """Base seed; each (task, trial, step, attempt) derives its own."""
    temperature: float = 0.8
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass, within (0, 1]."""
    max_tokens: int = 512
    """Most completion tokens per model call."""
    split: str = "all"
    """all, train or test (task-level, by hash)."""
    train_pct: int | None = None
    """Share of tasks (by hash) in the train split, 0-100 (default: the suite's own, 50 or
    bugs' 70)."""
    tasks: tuple[str, ...] = ()
    """Only these task ids (empty: all of the split)."""
    max_difficulty: int = 0
    """Only tasks of at most this difficulty tier (0: every tier)."""
    limit: int = 0
    """At most this many tasks (0: no limit), after the split and the task filter."""
    concurrency: int = 4
    """Episodes in flight at once."""
    check_timeout_s: float = 10.0
    """Sandbox wall-clock limit per check, seconds."""

    def validate(self) -> None:
        """Raise TracetuneError naming the first setting a run would refuse (nothing is run)."""
        from tracetune.models import parse_spec

        for name in ("trials", "concurrency"):
            if getattr(self, name) < 1:
                raise TracetuneError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("seed", "max_difficulty", "limit"):
            if getattr(self, name) < 0:
                raise TracetuneError(f"{name} must be 0 or more, not {getattr(self, name)}")
        self.params().validate()  # temperature, top_p, max_tokens: SamplingParams' ranges
        if not (math.isfinite(self.check_timeout_s) and self.check_timeout_s > 0):
            raise TracetuneError(f"check_timeout_s must be a positive number of seconds, not "
                                 f"{self.check_timeout_s}")
        if self.split not in SPLITS:
            raise TracetuneError(f"unknown split {self.split!r} (one of {', '.join(SPLITS)})")
        if self.train_pct is not None and not 0 <= self.train_pct <= 100:
            raise TracetuneError(f"train_pct must be within 0..100, not {self.train_pct}")
        self.workflow_spec()
        parse_spec(self.model)  # a bad spec fails here, before any work starts

    def workflow_spec(self, **overrides):
        """The parsed workflow spec (agents.spec.WorkflowSpec); `overrides` set options."""
        from tracetune.agents.spec import parse_workflow

        return parse_workflow(self.workflow, **overrides)

    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.max_tokens)

    def settings(self) -> dict:
        """Every setting as flat JSON data, the workflow's options expanded beside the others
        (what an experiment's stage records hold and its keys hash)."""
        from dataclasses import asdict

        spec = self.workflow_spec()
        return {**{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
                "workflow": spec.name, **spec.options()}


def upgrade_eval_values(values: dict, where: str) -> dict:
    """An [eval] table or a stored run config -> EvalConfig keyword values: a `workflow` table
    ({name = "repair", max_iters = 5}) becomes a spec string, and the flat workflow keys of
    earlier releases are folded into the spec when the workflow has that option (they never
    applied to the others, which ignored them). Raises TracetuneError on a conflict."""
    from tracetune.agents.spec import parse_workflow

    values = dict(values)
    workflow = values.get("workflow", EvalConfig.workflow)
    if isinstance(workflow, dict):
        table = dict(workflow)
        name = table.pop("name", None)
        if not isinstance(name, str):
            raise TracetuneError(f"{where} workflow: a workflow table needs name = \"direct\", "
                                 "\"tdd\" or \"repair\"")
        workflow = parse_workflow(name, **table).text()  # options type-checked there
    elif not isinstance(workflow, str):
        raise TracetuneError(f"{where} workflow: must be a string like \"repair,max_iters=5\" "
                             "or a table with a name")
    legacy = {k: values.pop(k) for k in LEGACY_WORKFLOW_KEYS if k in values}
    if legacy:
        spec = parse_workflow(workflow)
        own = {k: v for k, v in legacy.items() if k in spec.options()}
        stated = _stated(workflow)
        for k, v in own.items():
            if k in stated and spec.options()[k] != v:
                raise TracetuneError(f"{where}: {k} = {v!r} conflicts with the workflow's "
                                     f"{k}={spec.options()[k]!r}")
        if own:
            workflow = parse_workflow(workflow, **own).text()
    values["workflow"] = parse_workflow(workflow).text()  # canonical: defaults left out
    return values


def _stated(workflow: str) -> set[str]:
    """The options a workflow spec string states (whatever their values)."""
    from tracetune.tomlconf import split_options

    return set(split_options(workflow, f"workflow {workflow!r}")[1])


def with_workflow_defaults(values: dict, defaults: dict) -> dict:
    """`values` (EvalConfig keyword values, possibly with the flat keys of earlier releases)
    with `defaults` applied to the workflow's options that neither its spec nor a flat key
    states, and that the workflow has (e.g. a teacher's test_policy=never, max_attempts=1)."""
    from tracetune.agents.spec import parse_workflow

    workflow = values.get("workflow", EvalConfig.workflow)
    spec = parse_workflow(workflow)
    unstated = {k: v for k, v in defaults.items()
                if k in spec.options() and k not in _stated(workflow) and k not in values}
    return {**values, "workflow": parse_workflow(workflow, **unstated).text()} if unstated \
        else values


def legacy_option_types() -> dict[str, type]:
    """LEGACY_WORKFLOW_KEYS -> their type in the workflow configs that have them (for the hidden
    command-line options kept for earlier releases' scripts, e.g. --max-attempts 1)."""
    import dataclasses
    import typing

    from tracetune.agents.spec import WORKFLOWS

    out: dict[str, type] = {}
    for info in WORKFLOWS.values():
        hints = typing.get_type_hints(info.config_cls)
        out.update({f.name: hints[f.name] for f in dataclasses.fields(info.config_cls)
                    if f.name in LEGACY_WORKFLOW_KEYS})
    return out


def eval_config_from(values: dict, where: str, **fixed) -> EvalConfig:
    """An [eval] table (or a stored run config) -> EvalConfig, every key and type checked;
    `fixed` supplies settings the table may not state (e.g. the experiment's model)."""
    from tracetune.tomlconf import build

    try:
        values = upgrade_eval_values(values, where)
    except TracetuneError as exc:
        message = str(exc)
        raise TracetuneError(message if message.startswith(where) else f"{where}: {message}") \
            from None
    config = build(EvalConfig, values, where, exclude=tuple(fixed))
    if fixed:
        import dataclasses

        config = dataclasses.replace(config, **fixed)
    return config
