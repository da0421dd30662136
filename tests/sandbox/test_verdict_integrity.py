"""A verdict means what it says: skips never pass, failure kinds are right, cleaning an answer
keeps what it computes, concurrent sandboxes never touch each other's checks, and with bubblewrap
the checked code cannot read the task answers."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from tracetune.agents.extract import sanitize
from tracetune.agents.guards import StepContext, TestGuard, TestSuiteGuard
from tracetune.eval.metrics import failure_kind
from tracetune.sandbox import Job, Sandbox, SandboxConfig
from tracetune.sandbox.core import UidLease, detect_isolation
from tracetune.tasks.schema import Task

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "from solution import add\n\ndef test_a():\n    assert add(1, 2) == 3\n\n" \
        "def test_b():\n    assert add(-1, -2) == -3\n"


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(timeout_s=20, workers=4)) as box:
        yield box


@pytest.mark.parametrize("module,tests", [
    # the solution skips whatever test calls it
    ("import pytest\ndef add(a, b):\n    pytest.skip('later')\n", TESTS),
    # the solution skips the whole test module at import
    ("import pytest\npytest.skip('no', allow_module_level=True)\n" + ADD, TESTS),
    # the solution raises unittest's SkipTest
    ("import unittest\ndef add(a, b):\n    raise unittest.SkipTest('x')\n", TESTS),
    # wrong code, tests marked skip / xfail
    ("def add(a, b):\n    return a - b\n",
     "import pytest\nfrom solution import add\n\n@pytest.mark.skip(reason='later')\n"
     "def test_a():\n    assert add(1, 2) == 3\n"),
    ("def add(a, b):\n    return a - b\n",
     "import pytest\nfrom solution import add\n\n@pytest.mark.xfail\n"
     "def test_a():\n    assert add(1, 2) == 3\n"),
    # right code, an xfail test that passes unexpectedly, next to a passing test
    (ADD, TESTS + "\nimport pytest\n@pytest.mark.xfail\ndef test_c():\n    assert add(0, 0) == 0\n"),
])
def test_skipped_or_expected_failures_never_pass(sb, module, tests):
    r = sb.run(Job.tests(tests, module=module))
    assert r.status != "pass", r.reason
    guard = {"guard": "tests", "passed": False, "feedback": "", "details": r.verdict()}
    assert failure_kind([guard]) in ("tests skipped", "wrong answer")


def test_all_tests_passing_is_a_pass(sb):
    r = sb.run(Job.tests(TESTS, module=ADD))
    assert r.status == "pass" and r.reason == "2 tests passed"


def test_failure_kind_names_the_exception_even_when_the_traceback_is_long(sb):
    deep = "def add(a, b):\n    return add(a, b)\n"
    r = sb.run(Job.tests(TESTS, module=deep))
    guard = {"guard": "tests", "passed": False, "feedback": "2 of 2 tests failed.",
             "details": r.verdict()}
    assert failure_kind([guard]) == "raised RecursionError"
    wrong = sb.run(Job.tests(TESTS, module="def add(a, b):\n    return a - b\n"))
    guard = {"guard": "tests", "passed": False, "feedback": "", "details": wrong.verdict()}
    assert failure_kind([guard]) == "wrong answer"


def test_written_tests_that_skip_are_sent_back(sb):
    task = Task(id="t/add", spec="add", names=("add",), tests=TESTS, reference=ADD)
    ctx = StepContext(task=task, sandbox=sb, outputs={})
    skipping = ("import pytest\nfrom solution import add\n\n" + "".join(
        f"@pytest.mark.skip(reason='todo')\ndef test_{i}():\n    assert add({i}, 0) == {i}\n\n"
        for i in range(3)))
    result = TestSuiteGuard(min_tests=3).check(skipping, ctx)
    assert not result.passed and "pytest.mark.skip" in result.feedback
    # And tests that skip at run time do not accept an implementation either.
    ctx = StepContext(task=task, sandbox=sb, outputs={"g_test": skipping})
    assert not TestGuard(source="g_test").check("def add(a, b):\n    return a - b\n", ctx).passed


FIB = ("def _build(limit):\n    t = [0, 1]\n    while len(t) <= limit:\n"
       "        t.append(t[-1] + t[-2])\n    return t\n\n_TABLE = _build(90)\n\n\n"
       "def fib(n):\n    return _TABLE[n]\n\nprint(fib(10))\nassert fib(3) == 99\n")
DEEP = ("import sys\n\nsys.setrecursionlimit(20000)\n\n\ndef depth(x):\n"
        "    return 0 if not isinstance(x, list) else 1 + depth(x[0]) if x else 1\n\n"
        "depth([[[]]])\n")
FILLED = ("CACHE = {}\n\ndef sq(n):\n    return CACHE[n]\n\nfor i in range(10):\n"
          "    CACHE[i] = i * i\n\nprint(sq(3))\n")


@pytest.mark.parametrize("code,tests,dropped", [
    (FIB, "from solution import fib\n\ndef test_f():\n    assert fib(90) == 2880067194370816120\n",
     ("print(fib(10))", "assert fib(3)")),
    (DEEP, "from solution import depth\n\ndef test_d():\n    x = []\n    for _ in range(5000):\n"
     "        x = [x]\n    assert depth(x) == 5001\n", ("depth([[[]]])",)),
    (FILLED, "from solution import sq\n\ndef test_s():\n    assert sq(9) == 81\n",
     ("print(sq(3))",)),
])
def test_sanitize_keeps_what_the_definitions_compute(sb, code, tests, dropped):
    assert sb.run(Job.tests(tests, module=code.split("\nprint(")[0].split("\nassert")[0])).passed
    clean = sanitize(code)
    for fragment in dropped:
        assert fragment not in clean
    r = sb.run(Job.tests(tests, module=clean))
    assert r.passed, (clean, r.reason, r.stdout[-500:])


def test_rebinding_a_definition_is_kept():
    code = "import functools\n\ndef f(n):\n    return n\n\nf = functools.lru_cache(f)\nf(3)\n"
    clean = sanitize(code)
    assert "f = functools.lru_cache(f)" in clean and "\nf(3)" not in clean


# -- concurrency ------------------------------------------------------------------------------
_SLEEPERS = textwrap.dedent("""
    import json, sys
    import tracetune.sandbox.core as core
    if sys.argv[1] == "process":
        core.detect_isolation = lambda requested="auto": "process"
    from tracetune.sandbox import Job, Sandbox, SandboxConfig
    with Sandbox(SandboxConfig(timeout_s=30, workers=6)) as sb:
        print("uids", json.dumps(sb._lease.uids if sb._lease else []), flush=True)
        results = sb.map([Job.program("import time\\ntime.sleep(1.0)\\n") for _ in range(12)])
    print(json.dumps([r.status + " " + r.reason for r in results]))
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="per-check uids are used only as root")
@pytest.mark.parametrize("mode", ["process", "auto"])
def test_two_processes_never_kill_each_others_checks(tmp_path, mode):
    script = tmp_path / "sleepers.py"
    script.write_text(_SLEEPERS)
    procs = [subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    uid_sets = []
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err[-2000:]
        lines = out.strip().splitlines()
        uid_sets.append(set(json.loads(lines[0].split(" ", 1)[1])))
        assert json.loads(lines[-1]) == ["pass exit code 0"] * 12
    assert len(uid_sets[0]) == 6 and not uid_sets[0] & uid_sets[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="per-check uids are used only as root")
def test_uid_leases_are_exclusive_and_released():
    a = UidLease(3, 61000)
    b = UidLease(3, 61000)
    try:
        assert not set(a.uids) & set(b.uids)
    finally:
        a.release()
    c = UidLease(3, 61000)  # a's uids are free again
    try:
        assert set(c.uids) == set(a.uids)
    finally:
        b.release()
        c.release()


# -- what the checked code can read -----------------------------------------------------------
def test_checked_code_cannot_read_the_answers(tmp_path):
    if detect_isolation() != "bwrap":
        pytest.skip("needs bubblewrap")
    import tracetune.tasks as tasks_pkg

    suites = os.path.join(os.path.dirname(tasks_pkg.__file__), "suites")
    runs = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "runs-probe")
    os.makedirs(runs, exist_ok=True)
    try:
        with open(os.path.join(runs, "trajectories.sqlite"), "w") as f:
            f.write("answers")
        project = os.path.dirname(runs)
        answers = [os.path.join(suites, "demo.toml"), os.path.join(runs, "trajectories.sqlite"),
                   os.path.join(project, "README.md"), os.path.join(project, "Makefile"),
                   os.path.join(project, "pyproject.toml")]
        probe = (f"import os\nfor p in {answers!r}:\n"
                 "    print(p, os.path.exists(p))\n"
                 "import pytest\nprint('pytest', pytest.__version__)\n")
        with Sandbox(SandboxConfig(timeout_s=20, workers=1)) as sb:
            r = sb.run(Job.program(probe))
    finally:
        import shutil
        shutil.rmtree(runs)
    assert r.passed, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1].startswith("pytest ")
    assert all(line.endswith(" False") for line in lines[:-1]), r.stdout


def test_without_bubblewrap_every_sandbox_says_answers_are_readable():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Sandbox(SandboxConfig(isolation="process", workers=1)):
            pass
    assert any("CAN READ THE TASK ANSWERS" in str(w.message) for w in caught)
