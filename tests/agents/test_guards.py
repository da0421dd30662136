import pytest

from tracetune.agents.guards import (StepContext, SyntaxGuard, TestGuard, TestSuiteGuard,
                                     count_tests)
from tracetune.sandbox import Sandbox
from tracetune.tasks import Task

TASK = Task(id="t/add", spec="add two numbers", names=("add",),
            reference="def add(a, b):\n    return a + b\n",
            tests="from solution import add\n\ndef test_a():\n    assert add(1, 2) == 3\n\n"
                  "def test_b():\n    assert add(-1, 1) == 0\n")


@pytest.fixture(scope="module")
def ctx():
    with Sandbox() as sb:
        yield StepContext(TASK, sb, {})


@pytest.mark.parametrize("code, ok, feedback", [
    ("def add(a, b):\n    return a + b\n", True, ""),
    ("def plus(a, b):\n    return a + b\n", False, "does not define add"),
    ("def add(a, b)\n    return a + b\n", False, "SyntaxError"),
    ("   \n", False, "no code"),
])
def test_syntax_guard(ctx, code, ok, feedback):
    r = SyntaxGuard().check(code, ctx)
    assert r.passed is ok and feedback in r.feedback


@pytest.mark.parametrize("code, ok, feedback", [
    ("from solution import add\n" + "".join(f"def test_{i}():\n    assert add(1, 1) == 2\n"
                                            for i in range(3)), True, ""),
    ("import solution\nclass TestAdd:\n    def test_a(self): pass\n    def test_b(self): pass\n"
     "    def test_c(self): pass\n", True, ""),
    ("def test_a():\n    pass\n" * 3, False, "from solution import add"),
    ("from solution import add\ndef test_a():\n    assert add(1, 1) == 2\n", False,
     "at least 3"),
    ("from solution import (\n", False, "SyntaxError"),
])
def test_test_suite_guard(ctx, code, ok, feedback):
    r = TestSuiteGuard(min_tests=3).check(code, ctx)
    assert r.passed is ok and feedback in r.feedback


def test_count_tests_counts_functions_and_methods():
    import ast

    code = "def test_a(): pass\ndef helper(): pass\nclass TestX:\n    def test_b(self): pass\n"
    assert count_tests(ast.parse(code)) == 2


def test_test_guard_runs_acceptance_tests(ctx):
    assert TestGuard().check(TASK.reference, ctx).passed
    r = TestGuard().check("def add(a, b):\n    return a - b\n", ctx)
    assert not r.passed and "2 of 2 tests failed" in r.feedback and "test_a" in r.feedback
    assert r.details["tests"] == [["test_a", "failed"], ["test_b", "failed"]]


def test_test_guard_uses_a_previous_step_output(ctx):
    tests = "from solution import add\ndef test_x():\n    assert add(2, 2) == 5\n"
    c = StepContext(TASK, ctx.sandbox, {"g_test": tests})
    r = TestGuard(source="g_test").check(TASK.reference, c)
    assert not r.passed and "1 of 1 tests failed" in r.feedback


def test_test_guard_reports_a_hanging_program():
    from tracetune.sandbox import SandboxConfig

    hang = "def add(a, b):\n    while True:\n        pass\n"
    with Sandbox(SandboxConfig(timeout_s=1)) as sb:
        r = TestGuard().check(hang, StepContext(TASK, sb, {}))
    assert not r.passed and "timed out" in r.feedback
    from tracetune.eval.metrics import failure_kind

    assert failure_kind([r.to_dict()]) == "timeout"


@pytest.mark.parametrize("code, kind", [
    (TASK.reference, None),
    ("def add(a, b):\n    return a - b\n", "wrong answer"),
    ("def add(a, b):\n    assert a < 0\n    return a + b\n", "wrong answer"),
    ("def add(a):\n    return a\n", "raised TypeError"),
    ("def add(a, b):\n    return a + c\n", "raised NameError"),
    ("def plus(a, b):\n    return a + b\n", "could not run"),  # the import fails: no test runs
    ("def add(a, b)\n    return a + b\n", "syntax"),
])
def test_failure_kind_from_real_guard_results(ctx, code, kind):
    from tracetune.eval.metrics import failure_kind

    guards = [SyntaxGuard(), TestGuard()]
    results = []
    for g in guards:  # as the workflow runs them: cheap first, stop at the first failure
        results.append(g.check(code, ctx).to_dict())
        if not results[-1]["passed"]:
            break
    if kind == "could not run":  # past the static guard, straight to the tests
        results = [TestGuard().check(code, ctx).to_dict()]
    assert failure_kind(results) == kind
