"""Workflows: how a model works on one task, behind one small Protocol.

A workflow takes a task, a model and a sandbox and returns an `EpisodeOutcome` with every
model call as a `types.Attempt`. Workflows are named by spec strings, `NAME[,key=value...]`,
whose options are the fields of the workflow's config class (`agents.configs`); the registry
(`agents.spec.WORKFLOWS`) maps names to import paths, resolved only when a workflow is built.

    direct   spec -> implementation; guards: syntax, then the hidden tests (agents.workflow)
    tdd      spec -> tests -> implementation against them (agents.workflow)
    repair   a JSON tool-calling agent fixes a bug in a small repository (agents.repair)
    replay   a logged production request answered again, graded by its tests or against the
             logged answer (agents.logged)
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from tracetune.agents.spec import WORKFLOWS, WorkflowSpec, build_workflow, parse_workflow
from tracetune.types import Attempt, EpisodeOutcome, SamplingParams


@runtime_checkable
class Workflow(Protocol):
    """Runs one episode: a task through a model, checked in a sandbox."""

    name: str

    def run(self, task, model, sandbox, *, params: SamplingParams, seed: int,
            on_attempt: Callable[[Attempt], None] | None = None) -> EpisodeOutcome:
        """One episode. `seed` derives every request's seed; `on_attempt` sees each Attempt as
        it is made (the runner stores it then). Model errors propagate; anything the model
        writes (no code, huge output, a hanging program) is a failed attempt with a reason."""
        ...


__all__ = ["WORKFLOWS", "Workflow", "WorkflowSpec", "build_workflow", "parse_workflow"]
