"""Workflow spec strings -> (registry entry, typed config), without importing any workflow.

    direct[,max_attempts=N]
    tdd[,max_attempts=N][,min_tests=N]
    repair[,max_iters=N][,test_policy=never|after_write|end][,max_loops=N][,max_context_chars=N]
    replay[,judge=similarity|MODEL_SPEC][,threshold=X]
    testgen[,max_attempts=N][,min_tests=N][,max_mutants=N][,mutation=BOOL][,coverage=BOOL]

What the rest of tracetune needs to know about a workflow (which suites it runs on, whether its
episodes carry tool metrics) is a field of its registry entry, never a test of its name.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from tracetune.agents.configs import (DirectConfig, RepairConfig, ReplayWorkflowConfig,
                                     TDDConfig, TestgenConfig)
from tracetune.errors import TracetuneError
from tracetune.tomlconf import build_from_strings, split_options


@dataclass(frozen=True)
class WorkflowInfo:
    name: str
    import_path: str
    """module:function taking the config and returning a Workflow; imported lazily."""
    config_cls: type
    suite_kinds: tuple[str, ...]
    """The kinds of suite whose tasks it runs: functions, repair, logged (tasks.KINDS)."""
    agent_metrics: bool
    """Episodes record tool-use metrics (parse errors, writes, loops...: Summary.agent)."""
    summary: str
    writes_tests: bool = False
    """Episodes write their own tests, checked against the reference (wrong tests counted)."""
    test_metrics: bool = False
    """Episodes grade a written test file (Pass@k, mutation score, coverage: Summary.testgen)."""
    one_completion: bool = False
    """Its first prompt is answered by one completion that the task's hidden tests grade: the
    shape a sampled-reward trainer scores (train.grpo)."""


WORKFLOWS: dict[str, WorkflowInfo] = {
    "direct": WorkflowInfo("direct", "tracetune.agents.workflow:direct", DirectConfig,
                           ("functions",), False, "spec -> implementation, checked by the hidden "
                           "tests; retries get the failure", one_completion=True),
    "tdd": WorkflowInfo("tdd", "tracetune.agents.workflow:tdd", TDDConfig, ("functions",), False,
                        "spec -> pytest tests -> implementation that passes them",
                        writes_tests=True),
    "repair": WorkflowInfo("repair", "tracetune.agents.repair:repair", RepairConfig, ("repair",),
                           True, "JSON tool-calling agent that fixes a bug in a small repo"),
    "testgen": WorkflowInfo("testgen", "tracetune.testgen.workflow:testgen", TestgenConfig,
                            ("functions", "repair"), False, "code under test -> one pytest "
                            "file, graded: valid, wrong tests, bug-revealing, mutation score, "
                            "coverage", writes_tests=True, test_metrics=True),
    "replay": WorkflowInfo("replay", "tracetune.agents.logged:replay", ReplayWorkflowConfig,
                           ("logged",), False, "a logged production request answered again, "
                           "graded by its tests or against the logged answer"),
}


@dataclass(frozen=True)
class WorkflowSpec:
    info: WorkflowInfo
    config: object
    """An instance of info.config_cls."""

    @property
    def name(self) -> str:
        return self.info.name

    def options(self) -> dict:
        """Every option with its value (defaults included), in field order."""
        return dataclasses.asdict(self.config)

    def text(self) -> str:
        """The canonical spec string: the name, then the options that differ from their
        defaults, in field order."""
        default = self.info.config_cls()
        changed = [f"{f.name}={getattr(self.config, f.name)}"
                   for f in dataclasses.fields(self.config)
                   if getattr(self.config, f.name) != getattr(default, f.name)]
        return ",".join([self.name, *changed])


def workflow_info(name: str) -> WorkflowInfo:
    if name not in WORKFLOWS:
        raise TracetuneError(f"unknown workflow {name!r} (one of {', '.join(WORKFLOWS)})")
    return WORKFLOWS[name]


def parse_workflow(spec: str, **overrides) -> WorkflowSpec:
    """`NAME[,key=value...]` (plus keyword `overrides`, already typed) -> WorkflowSpec, validated.
    Raises TracetuneError naming the spec and the bad option."""
    head, options = split_options(spec, f"workflow {spec!r}")
    info = workflow_info(head.strip())
    where = f"workflow {spec!r}"
    config = build_from_strings(info.config_cls, {**options, **overrides}, where)
    try:
        config.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where}: {exc}") from None
    return WorkflowSpec(info, config)


def build_workflow(spec: str | WorkflowSpec, **options):
    """The Workflow a spec names (imports its module now); `options` set the workflow's options
    (e.g. build_workflow("tdd", max_attempts=2))."""
    parsed = spec if isinstance(spec, WorkflowSpec) and not options else \
        parse_workflow(spec if isinstance(spec, str) else spec.text(), **options)
    module, _, attr = parsed.info.import_path.partition(":")
    return getattr(importlib.import_module(module), attr)(parsed.config)
