"""The `testgen` workflow: code under test -> one pytest file, graded in the sandbox.

One step, `testgen`, with up to `max_attempts` attempts:
  1. the model gets seed 001's tests-only prompt (`tracetune.testgen.prompt`) holding the task's
     reference module (for repair tasks: the fixed module, under its own module name);
  2. the answer's test file is extracted (a raw file or a fenced one), stripped of any copy of
     the code under test it defines itself (`own_copies_removed`), and checked statically:
     it parses, imports the module, defines at least `min_tests` tests and skips none;
  3. it runs against the reference in the sandbox, together and each test alone
     (`grade.run_on_reference`); a file with wrong tests goes back with its pytest log.
The accepted file (or the last one) is then graded in full (`grade.grade`): bug-revealing for
tasks with a buggy version, mutation score, coverage. The episode succeeds when the file is valid
and, where defined, bug-revealing (what Pass@k counts); the grade is the episode's `metrics` and
the accepted attempt's last guard record (`grade`), where the miner reads it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from tracetune.agents.configs import TestgenConfig
from tracetune.agents.extract import extract_code
from tracetune.agents.guards import GuardResult, StepContext, TestSuiteGuard, imports_module
from tracetune.agents.workflow import FENCE_END, MAX_OUTPUT_CHARS
from tracetune.sandbox import Sandbox
from tracetune.tasks import Task
from tracetune.testgen.grade import Grade, grade, run_on_reference
from tracetune.testgen.prompt import FIX_TEMPLATE, render
from tracetune.types import (Attempt, EpisodeOutcome, GenerationRequest, Message, SamplingParams,
                             derive_seed)

STEP = "testgen"


def grade_metrics(g: Grade) -> dict:
    """The episode's `metrics`: the grade's figures (fractions in [0, 1], counts in tests)."""
    m = g.mutation or {}
    return {"testgen": True, "status": g.status, "valid": g.valid, "tests": g.collected,
            "wrong_tests": len(g.wrong), "bug_revealing": g.bug_revealing,
            "mutation_score": g.mutation_score, "mutants": m.get("total"),
            "killed": m.get("killed"), "line_coverage": g.line_coverage,
            "branch_coverage": g.branch_coverage}


def own_copies_removed(tests: str, module: str, names: tuple[str, ...]) -> str:
    """The test file without its own top-level definitions of the code under test (`names`),
    importing them from `module` instead (added when missing).

    Small models often paste the function into the test file and test that copy, which tests
    nothing of the module; with the copy removed the same tests run against the real code. A file
    that does not parse, or defines none of the names, is returned unchanged."""
    import ast

    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError):
        return tests
    copies = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.ClassDef)) and n.name in names]
    if not copies:
        return tests
    lines = tests.splitlines(keepends=True)
    for node in reversed(copies):
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        del lines[start:node.end_lineno]
    text = "".join(lines)
    if not imports_module(ast.parse(text), module):
        text = f"from {module} import {', '.join(names)}\n" + text
    return text


class TestgenWorkflow:
    __test__ = False  # not a pytest test class
    name = STEP

    def __init__(self, config: TestgenConfig) -> None:
        self.config = config

    def run(self, task: Task, model, sandbox: Sandbox, *, params: SamplingParams, seed: int,
            on_attempt: Callable[[Attempt], None] | None = None) -> EpisodeOutcome:
        t0 = time.perf_counter()
        module = task.module
        ctx = StepContext(task, sandbox, {})
        first = Message("user", render(task.reference, module=module, names=task.names))
        messages = [first]
        params = dataclasses.replace(params, stop=tuple(params.stop) + (FENCE_END,))
        records: list[Attempt] = []
        accepted: str | None = None
        last_code = ""
        for attempt in range(1, self.config.max_attempts + 1):
            attempt_seed = derive_seed(seed, STEP, attempt)
            c = model.generate(GenerationRequest(tuple(messages), params, attempt_seed))
            raw = c.text[:MAX_OUTPUT_CHARS].encode("utf-8", "replace").decode("utf-8")
            code = own_copies_removed(extract_code(raw, (), tests=True), module, task.names)
            last_code = code
            t_check = time.perf_counter()
            results = [TestSuiteGuard(self.config.min_tests, module=module).check(code, ctx)]
            if results[0].passed:
                checked = run_on_reference(code, task.reference, sandbox, module=module)
                g = checked[0]
                feedback = "" if g.valid else FIX_TEMPLATE.format(
                    log=_failure_summary(g))
                results.append(GuardResult("reference", g.valid, feedback,
                                           {"status": g.status, "tests": g.collected,
                                            "wrong": g.wrong, "skipped": g.skipped}))
            passed = all(r.passed for r in results)
            feedback = "" if passed else results[-1].feedback
            if not passed and c.finish_reason == "length":
                feedback = (f"Your answer was cut off at the limit of {params.max_tokens} "
                            f"tokens; write fewer tests.\n{feedback}")
            if passed:
                accepted = code
            record = Attempt(STEP, attempt, attempt_seed, [m.to_dict() for m in messages], raw,
                             code, passed, [r.to_dict() for r in results], feedback,
                             c.usage.prompt_tokens, c.usage.completion_tokens, c.latency_s,
                             time.perf_counter() - t_check, finish_reason=c.finish_reason)
            if passed:  # the full grade rides on the accepted attempt, for the miner
                final = self._grade(accepted, task, sandbox, module, checked)
                record = dataclasses.replace(record, guards=[
                    *record.guards, {"guard": "grade", "passed": final.success(),
                                     "feedback": "", "details": final.to_dict()}])
            records.append(record)
            if on_attempt is not None:
                on_attempt(record)
            if passed:
                break
            messages = [first, Message("assistant", raw),
                        Message("user", feedback or FIX_TEMPLATE.format(log="(no output)"))]
        if accepted is None:
            final = self._grade(last_code, task, sandbox, module) if last_code.strip() else \
                Grade("error", 0, 0, log="no test file in the answer")
        # A file no attempt accepted (it failed the static checks: no import of the module, no
        # test, a skip) is graded for the record, but it is not a pass.
        success = accepted is not None and final.success()
        return EpisodeOutcome(success, None if success else STEP,
                              None if final.collected == 0 else bool(final.wrong), records,
                              time.perf_counter() - t0, final.to_dict(), grade_metrics(final))

    def _grade(self, code: str, task: Task, sandbox: Sandbox, module: str,
               reference_run=None) -> Grade:
        return grade(code, task.reference, sandbox, module=module, buggy=task.buggy or None,
                     mutation=self.config.mutation, coverage=self.config.coverage,
                     max_mutants=self.config.max_mutants or None, reference_run=reference_run)


def _failure_summary(g: Grade) -> str:
    head = {"wrong_tests": f"{len(g.wrong)} of {g.collected} tests fail on the correct code: "
                           f"{', '.join(n.split('::')[-1] for n in g.wrong[:5])}.",
            "skipped": "The tests were skipped; they must run.",
            "no_tests": "pytest collected no tests.",
            "error": "The test file could not run."}.get(g.status, "")
    return f"{head}\n{g.log}".strip()


def testgen(config: TestgenConfig) -> TestgenWorkflow:
    return TestgenWorkflow(config)


testgen.__test__ = False  # a factory, not a pytest test
