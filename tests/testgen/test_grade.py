"""Grading generated pytest files (valid, wrong tests, bug-revealing, coverage) and the testgen
workflow end to end with the oracle and scripted models; bad test files each get one clear
result and leave nothing behind."""

from __future__ import annotations

import pytest

from tracetune.agents.spec import build_workflow
from tracetune.agents.teachers import load_policy
from tracetune.eval.metrics import summarize
from tracetune.sandbox import Sandbox, SandboxConfig
from tracetune.tasks import load_suite
from tracetune.testgen.grade import grade
from tracetune.testgen.workflow import own_copies_removed
from tracetune.types import SamplingParams

SIGN = '''def sign(x):
    if x > 0:
        return 1
    if x < 0:
        return -1
    return 0
'''

GOOD = '''import pytest
from solution import sign

@pytest.mark.parametrize("x, want", [(5, 1), (-3, -1), (0, 0)])
def test_sign(x, want):
    assert sign(x) == want
'''


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(timeout_s=10, workers=2)) as s:
        yield s


def test_a_good_file_is_valid_with_full_coverage_and_a_mutation_score(sb):
    g = grade(GOOD, SIGN, sb, max_mutants=8)
    assert g.status == "valid" and g.valid and g.success()
    assert g.collected == 3 and g.passed == 3 and g.wrong == []
    assert g.line_coverage == 1.0 and g.branch_coverage == 1.0
    assert g.mutation["total"] == 8 and 0 < g.mutation_score <= 1


def test_wrong_tests_are_counted_by_name_and_the_others_still_pass(sb):
    tests = GOOD + '''
def test_wrong():
    assert sign(2) == 2

def test_also_fine():
    assert sign(-9) == -1
'''
    g = grade(tests, SIGN, sb, mutation=False)
    assert g.status == "wrong_tests" and not g.valid and not g.success()
    assert [n.split("::")[-1] for n in g.wrong] == ["test_wrong"]
    assert g.collected == 5 and g.passed == 4
    assert g.mutation is None  # invalid files are not mutation-scored


def test_a_test_that_kills_the_run_does_not_hide_the_others(sb):
    # os._exit ends the run together: the tests after it never report; alone, each one does.
    tests = '''import os
from solution import sign

def test_a():
    assert sign(1) == 1

def test_exit():
    os._exit(0)

def test_b():
    assert sign(0) == 0
'''
    g = grade(tests, SIGN, sb, mutation=False, coverage=False)
    assert not g.valid
    assert any(n.endswith("test_exit") for n in g.wrong)


def test_coverage_counts_lines_and_branches_of_the_reference_only(sb):
    tests = "from solution import sign\n\ndef test_pos():\n    assert sign(3) == 1\n"
    g = grade(tests, SIGN, sb, mutation=False)
    assert g.valid
    assert 0 < g.line_coverage < 1 and 0 < g.branch_coverage < 1


def test_skipped_tests_are_not_passes(sb):
    tests = ("import pytest\nfrom solution import sign\n\n@pytest.mark.skip\n"
             "def test_s():\n    assert sign(1) == 1\n")
    g = grade(tests, SIGN, sb)
    assert g.status == "skipped" and not g.valid and g.mutation is None


def test_files_that_do_not_run_get_one_status_each(sb):
    assert grade("def test_x(:\n", SIGN, sb).status == "error"
    assert grade("from solution import nope\n\ndef test_x():\n    assert nope()\n",
                 SIGN, sb).status == "error"
    assert grade("from solution import sign\nX = sign(1)\n", SIGN, sb).status == "no_tests"


def test_a_file_that_imports_nothing_kills_no_mutant(sb):
    g = grade("def test_truth():\n    assert 1 + 1 == 2\n", SIGN, sb, max_mutants=6)
    assert g.valid and g.mutation_score == 0.0


def test_a_hanging_test_times_out_and_leaves_nothing_running(sb, processes_with):
    tests = ("from solution import sign\n\ndef test_hang():\n    import time\n"
             "    while True:\n        time.sleep(0.05)  # tracetune-hang-marker\n")
    with Sandbox(SandboxConfig(timeout_s=2, workers=1)) as short:
        g = grade(tests, SIGN, short, coverage=False)
    assert g.status == "wrong_tests" and not g.valid
    assert "timed out" in g.log
    assert processes_with("tracetune-hang-marker") == []


def test_spawned_processes_and_writes_to_the_module_do_not_survive_the_check(sb, processes_with):
    tests = '''import subprocess, sys
from solution import sign

def test_spawn_and_overwrite():
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)  # tt-spawn-marker"])
    open("solution.py", "w").write("def sign(x):\\n    return 42\\n")
    assert sign(1) == 1
'''
    g = grade(tests, SIGN, sb, max_mutants=4)
    assert g.valid
    assert processes_with("tt-spawn-marker") == []
    # The next file graded sees the real module, not the overwritten one.
    assert grade(GOOD, SIGN, sb, mutation=False, coverage=False).valid


def test_bug_revealing_needs_a_test_that_fails_on_the_buggy_version(sb):
    task = next(t for t in load_suite("bugs").tasks if t.id == "bugs/quicksort")
    revealing = grade(task.tests, task.reference, sb, module=task.module, buggy=task.buggy,
                      mutation=False, coverage=False)
    assert revealing.valid and revealing.bug_revealing is True and revealing.success()
    weak = ("from quicksort import quicksort\n\ndef test_empty():\n"
            "    assert quicksort([]) == []\n")
    blind = grade(weak, task.reference, sb, module=task.module, buggy=task.buggy,
                  mutation=False, coverage=False)
    assert blind.valid and blind.bug_revealing is False and not blind.success()


def test_own_copies_of_the_code_under_test_are_removed():
    tests = ("import pytest\n\n@staticmethod\ndef sign(x):\n    return 1\n\n"
             "def test_one():\n    assert sign(1) == 1\n")
    out = own_copies_removed(tests, "solution", ("sign",))
    assert "def sign" not in out and out.startswith("from solution import sign\n")
    assert "def test_one" in out
    unchanged = "from solution import sign\n\ndef test_one():\n    assert sign(1) == 1\n"
    assert own_copies_removed(unchanged, "solution", ("sign",)) == unchanged
    assert own_copies_removed("def (:", "solution", ("sign",)) == "def (:"


@pytest.mark.parametrize("suite, n", [("funcs", 4), ("bugs", 3)])
def test_the_oracle_writes_valid_test_files(sb, suite, n):
    workflow = build_workflow("testgen,max_mutants=6")
    policy = load_policy("oracle")
    episodes = []
    for i, task in enumerate(load_suite(suite).tasks[:n]):
        out = workflow.run(task, policy.bind(task), sb, params=SamplingParams(max_tokens=64),
                           seed=i)
        assert out.success, (task.id, out.final_check)
        assert out.metrics["valid"] and out.metrics["mutation_score"] > 0
        assert out.attempts[-1].guards[-1]["guard"] == "grade"
        if suite == "bugs":
            assert out.metrics["bug_revealing"] is True
        episodes.append({"task_id": task.id, "success": out.success, "metrics": out.metrics,
                         "workflow": "testgen", "n_attempts": len(out.attempts),
                         "duration_s": out.duration_s, "prompt_tokens": 0,
                         "completion_tokens": 0, "wrong_tests": out.wrong_tests})
    s = summarize("overall", episodes).testgen
    assert s.pass_at[1].mean == 1.0 and s.valid_rate == 1.0 and s.wrong_test_rate.mean == 0.0


class _Scripted:
    """A model that answers with fixed texts in turn (and records what it was asked)."""

    def __init__(self, answers):
        self.answers, self.asked = list(answers), []

    def generate(self, request):
        from tracetune.types import Completion, Usage

        self.asked.append(request.messages)
        return Completion(self.answers.pop(0), Usage(10, 10), 0.01, "stop")


def test_a_wrong_file_goes_back_with_its_pytest_log_then_the_fix_is_graded(sb):
    task = next(t for t in load_suite("funcs").tasks if t.id == "funcs/add_numbers")
    wrong = "```python\nfrom solution import add_numbers\n\ndef test_add():\n" \
            "    assert add_numbers(2, 2) == 5\n```"
    right = "```python\nfrom solution import add_numbers\n\ndef test_add():\n" \
            "    assert add_numbers(2, 2) == 4\n```"
    model = _Scripted([wrong, right])
    out = build_workflow("testgen,max_mutants=4").run(task, model, sb, params=SamplingParams(),
                                                    seed=0)
    assert out.success and len(out.attempts) == 2
    retry = model.asked[1][-1].content
    assert "fail on the correct code" in retry and "test_add" in retry
    assert not out.attempts[0].passed and out.attempts[1].passed
