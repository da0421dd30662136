"""Workflows on a replay model: retries with feedback, the tdd workflow, wrong-test detection."""

import json

import pytest

from tracetune.agents import build_workflow
from tracetune.agents.workflow import run_episode
from tracetune.types import derive_seed
from tracetune.errors import TracetuneError
from tracetune.models import load_model
from tracetune.sandbox import Sandbox, SandboxConfig
from tracetune.tasks import Task
from tracetune.types import SamplingParams

TASK = Task(id="t/double", spec="Write `double(x)` returning 2 * x.", names=("double",),
            reference="def double(x):\n    return 2 * x\n",
            tests="from solution import double\n\ndef test_pos():\n    assert double(2) == 4\n\n"
                  "def test_zero():\n    assert double(0) == 0\n")
GOOD = "```python\ndef double(x):\n    return 2 * x\n```"
BAD = "```python\ndef double(x):\n    return x + 2\n```"
TESTS_OK = ("```python\nfrom solution import double\n\ndef test_a():\n    assert double(1) == 2\n\n"
            "def test_b():\n    assert double(3) == 6\n\ndef test_c():\n    assert double(0) == 0\n```")
TESTS_WRONG = TESTS_OK.replace("double(3) == 6", "double(3) == 7")


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=2)) as sb:
        yield sb


def replay(tmp_path, *texts):
    p = tmp_path / "script.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return load_model(f"replay:{p}")


def run(model, sandbox, workflow="direct", **kw):
    return run_episode(TASK, build_workflow(workflow, **kw), model, sandbox,
                       params=SamplingParams(), seed=1)


def test_direct_success_first_attempt(tmp_path, sandbox):
    out = run(replay(tmp_path, GOOD), sandbox)
    assert out.success and len(out.attempts) == 1 and out.failed_step is None
    assert out.final_check["status"] == "pass"


def test_retry_puts_guard_feedback_into_the_next_prompt(tmp_path, sandbox):
    out = run(replay(tmp_path, BAD, GOOD), sandbox)
    assert out.success and [a.passed for a in out.attempts] == [False, True]
    first, second = out.attempts
    assert "tests failed" in first.feedback
    assert second.messages[1] == {"role": "assistant", "content": BAD}
    assert first.feedback in second.messages[2]["content"]
    assert first.seed != second.seed


def test_attempts_are_bounded(tmp_path, sandbox):
    out = run(replay(tmp_path, BAD, BAD), sandbox, max_attempts=2)
    assert not out.success and out.failed_step == "impl" and len(out.attempts) == 2


@pytest.mark.parametrize("output, reason", [
    ("I'm sorry, I cannot write code.", "SyntaxError"),
    ("", "no code"),
    ("```python\n" + "x = 1\n" * 50000 + "```", "SyntaxError"),  # cut at 200k characters
    ("```python\ndef double(x):\n    while True:\n        pass\n```", "timed out"),
    ("```python\ndef double(x):\n    return '\udcff'\n```", "tests failed"),
    ("```python\ndef double(x):\n    return '\x00'\n```", "null bytes"),
])
def test_bad_outputs_are_failed_attempts_with_a_reason(tmp_path, sandbox, output, reason):
    out = run(replay(tmp_path, output), sandbox, max_attempts=1)
    assert not out.success and len(out.attempts) == 1
    assert reason in out.attempts[0].feedback


def test_tdd_success(tmp_path, sandbox):
    out = run(replay(tmp_path, TESTS_OK, GOOD), sandbox, workflow="tdd")
    assert out.success and out.wrong_tests is False
    assert [a.step for a in out.attempts] == ["g_test", "g_impl"]
    assert "def test_a" in out.attempts[1].messages[0]["content"]  # g_impl sees the tests


def test_tdd_scripted_wrong_test_is_counted(tmp_path, sandbox):
    # The tests expect double(3) == 7: no correct implementation can pass them.
    out = run(replay(tmp_path, TESTS_WRONG, GOOD, GOOD), sandbox, workflow="tdd", max_attempts=2)
    assert not out.success and out.failed_step == "g_impl"
    assert out.wrong_tests is True


def test_tdd_test_guard_feedback(tmp_path, sandbox):
    too_few = "```python\nfrom solution import double\ndef test_a():\n    assert double(1) == 2\n```"
    out = run(replay(tmp_path, too_few, TESTS_OK, GOOD), sandbox, workflow="tdd")
    assert out.success and [a.passed for a in out.attempts] == [False, True, True]
    assert "at least 3" in out.attempts[0].feedback


def test_unknown_workflow():
    with pytest.raises(TracetuneError, match="unknown workflow"):
        build_workflow("nope")


def test_derive_seed_is_stable():
    assert derive_seed(0, "funcs/x", 3) == derive_seed(0, "funcs/x", 3)
    assert derive_seed(0, "funcs/x", 3) != derive_seed(0, "funcs/x", 4)
    assert derive_seed(0, "a", 1) == 1104693125  # the same on every machine and release
