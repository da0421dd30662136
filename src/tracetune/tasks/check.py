"""Prove a suite's tasks are sound (in the sandbox): every reference solution passes its own
acceptance tests, and in a repair suite every buggy module fails them."""

from __future__ import annotations

from tracetune.errors import TracetuneError
from tracetune.sandbox import Job, Sandbox, SandboxResult
from tracetune.tasks import Suite, Task


def check_references(suite: Suite, sandbox: Sandbox) -> list[tuple[Task, str, SandboxResult]]:
    """(task, problem, verdict) for every task whose reference does not pass its acceptance
    tests, or whose buggy module (repair tasks) does not fail them."""
    # a logged task without tests is judged against its logged answer: nothing to run; one
    # with tests holds the logged answer (prose and fences), whose code must pass them
    checks = [(t, "reference fails its tests", _code(t), "pass") for t in suite.tasks
              if t.tests]
    checks += [(t, "buggy module does not fail its tests", t.buggy, "fail")
               for t in suite.tasks if t.is_repair]
    results = sandbox.map([Job.tests(t.tests, module=src, module_name=t.module)
                           for t, _, src, _ in checks])
    return [(t, problem, r) for (t, problem, _, want), r in zip(checks, results)
            if r.status != want]


def _code(task: Task) -> str:
    if not task.chat:
        return task.reference
    from tracetune.agents.extract import extract_code, sanitize

    return sanitize(extract_code(task.reference, task.names))


def require_valid(suite: Suite, sandbox: Sandbox) -> None:
    bad = check_references(suite, sandbox)
    if bad:
        lines = "; ".join(f"{t.id}: {problem} ({r.status}: {r.reason})" for t, problem, r in bad[:5])
        raise TracetuneError(f"suite {suite.name}: {len(bad)} task check(s) failed: {lines}")
