"""Prove a suite's reference solutions pass their own acceptance tests (in the sandbox)."""

from __future__ import annotations

from tracetune.errors import TracetuneError
from tracetune.sandbox import Job, Sandbox, SandboxResult
from tracetune.tasks import Suite, Task


def check_references(suite: Suite, sandbox: Sandbox) -> list[tuple[Task, SandboxResult]]:
    """The tasks whose reference does not pass its acceptance tests, with the sandbox's verdict."""
    results = sandbox.map([Job.tests(t.tests, module=t.reference) for t in suite.tasks])
    return [(t, r) for t, r in zip(suite.tasks, results) if not r.passed]


def require_valid(suite: Suite, sandbox: Sandbox) -> None:
    bad = check_references(suite, sandbox)
    if bad:
        lines = "; ".join(f"{t.id}: {r.status} ({r.reason})" for t, r in bad[:5])
        raise TracetuneError(f"suite {suite.name}: {len(bad)} reference solution(s) fail their "
                             f"own tests: {lines}")
