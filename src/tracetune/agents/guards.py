"""Guards: checks on one step's extracted code. A failed guard's feedback goes into the retry prompt.

Guards are cheap-first: static checks (parse, names, test count) run before sandboxed tests.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Protocol

from tracetune.sandbox import Job, Sandbox, SandboxResult
from tracetune.tasks import Task

MODULE = "solution"
"""The module name every implementation is written to, and every test file imports from."""


@dataclass(frozen=True)
class GuardResult:
    guard: str
    passed: bool
    feedback: str = ""
    """What the model is told when the guard fails."""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"guard": self.guard, "passed": self.passed, "feedback": self.feedback,
                "details": self.details}


@dataclass(frozen=True)
class StepContext:
    task: Task
    sandbox: Sandbox
    outputs: dict[str, str]
    """Accepted code of the steps already done, by step name."""


class Guard(Protocol):
    name: str

    def check(self, code: str, ctx: StepContext) -> GuardResult:
        ...


def defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _parse(code: str) -> tuple[ast.Module | None, str]:
    if not code.strip():
        return None, "The answer contained no code."
    try:
        return ast.parse(code), ""
    except SyntaxError as exc:
        return None, f"SyntaxError: {exc.msg} (line {exc.lineno})"
    except (ValueError, RecursionError) as exc:  # null bytes, absurd nesting
        return None, f"The code could not be parsed: {exc}"


@dataclass(frozen=True)
class SyntaxGuard:
    """The code parses and defines the task's required names at top level."""

    name: str = "syntax"

    def check(self, code: str, ctx: StepContext) -> GuardResult:
        tree, problem = _parse(code)
        if tree is None:
            return GuardResult(self.name, False, problem)
        missing = [n for n in ctx.task.names if n not in defined_names(tree)]
        if missing:
            return GuardResult(self.name, False,
                               f"The code does not define {', '.join(missing)}.",
                               {"missing": missing})
        return GuardResult(self.name, True)


def count_tests(tree: ast.Module) -> int:
    """pytest-collectable tests: top-level test_* functions and test_* methods of Test* classes."""
    n = 0
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                node.name.startswith("test"):
            n += 1
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            n += sum(isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and m.name.startswith("test") for m in node.body)
    return n


_SKIPPING = ("skip", "skipif", "xfail", "importorskip", "skipTest", "expectedFailure")


def skipping_constructs(tree: ast.Module) -> list[str]:
    """Names of the constructs in a test file that skip or expect failure instead of testing
    (`@pytest.mark.skip`, `pytest.skip()`, `@pytest.mark.xfail`, `@unittest.skip`,
    `self.skipTest()`...), in source order. Tests that never run prove nothing, so a written test
    suite that uses one is sent back."""
    found = []
    for node in ast.walk(tree):
        name = node.attr if isinstance(node, ast.Attribute) else \
            node.id if isinstance(node, ast.Name) else None
        if name in _SKIPPING:
            found.append(ast.unparse(node))
    return found


def imports_module(tree: ast.Module, module: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            return True
        if isinstance(node, ast.Import) and any(a.name == module for a in node.names):
            return True
    return False


@dataclass(frozen=True)
class TestSuiteGuard:
    """Generated tests: valid syntax, import the target module, at least `min_tests` tests."""

    __test__ = False  # not a pytest test class, despite its name
    min_tests: int = 3
    name: str = "test_suite"
    module: str = MODULE
    """The module the tests must import."""

    def check(self, code: str, ctx: StepContext) -> GuardResult:
        tree, problem = _parse(code)
        if tree is None:
            return GuardResult(self.name, False, problem)
        if not imports_module(tree, self.module):
            names = ", ".join(ctx.task.names) or "..."
            return GuardResult(self.name, False,
                               f"The tests must import the code under test with "
                               f"`from {self.module} import {names}`.")
        skips = skipping_constructs(tree)
        if skips:
            return GuardResult(self.name, False,
                               f"The tests must run: remove {', '.join(dict.fromkeys(skips))} "
                               f"(skipped and expected-failure tests check nothing).",
                               {"skips": skips})
        n = count_tests(tree)
        if n < self.min_tests:
            return GuardResult(self.name, False,
                               f"Write at least {self.min_tests} test functions named test_...; "
                               f"found {n}.", {"tests": n})
        return GuardResult(self.name, True, details={"tests": n})


def summarize_failures(result: SandboxResult, limit: int = 2, chars: int = 300) -> str:
    """A short account of a failed test run, for the model."""
    if result.status == "timeout":
        return "The tests timed out: the code may loop forever."
    failed = [t for t in result.tests if t.outcome == "failed"]
    if not failed:
        tail = (result.stdout + result.stderr).strip()[-chars:]
        return f"The tests could not run ({result.reason}).\n{tail}".strip()
    lines = [f"{len(failed)} of {len(result.tests)} tests failed."]
    for t in failed[:limit]:
        lines.append(f"- {t.nodeid.split('::')[-1]}: {t.message.strip()[-chars:]}")
    return "\n".join(lines)


@dataclass(frozen=True)
class TestGuard:
    """The code passes a test file in the sandbox: the task's acceptance tests (`source=None`)
    or the accepted output of an earlier step (e.g. the tests written by g_test)."""

    __test__ = False  # not a pytest test class, despite its name
    source: str | None = None
    name: str = "tests"

    def check(self, code: str, ctx: StepContext) -> GuardResult:
        tests = ctx.task.tests if self.source is None else ctx.outputs[self.source]
        result = ctx.sandbox.run(Job.tests(tests, module=code, module_name=MODULE))
        details = result.verdict()
        if result.passed:
            return GuardResult(self.name, True, details=details)
        return GuardResult(self.name, False, summarize_failures(result), details)
