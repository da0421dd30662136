import pytest

from tracetune.errors import TracetuneError
from tracetune.sandbox import Job, Sandbox
from tracetune.tasks import builtin_suites, load_suite, parse_suite


def test_demo_suite_references_pass_their_own_tests():
    suite = load_suite("demo")
    assert "demo" in builtin_suites() and len(suite.tasks) >= 5
    with Sandbox() as sb:
        results = sb.map([Job.tests(t.tests, module=t.reference) for t in suite.tasks])
    assert [(t.id, r.status) for t, r in zip(suite.tasks, results)] == \
        [(t.id, "pass") for t in suite.tasks]


def test_demo_suite_tests_reject_a_wrong_solution():
    suite = load_suite("demo")
    with Sandbox() as sb:
        results = sb.map([Job.tests(t.tests, module=f"def {t.names[0]}(*a):\n    return None\n")
                          for t in suite.tasks])
    assert all(r.status == "fail" for r in results)


@pytest.mark.parametrize("text, message", [
    ("not toml [", "not valid TOML"),
    ("[[task]]\nid='a'\n", "missing \\[suite\\]"),
    ("[suite]\nname='s'\n", "no \\[\\[task\\]\\]"),
    ("[suite]\nname='s'\n[[task]]\nid='a'\nspec='x'\n", "missing names, reference, tests"),
    ("[suite]\nname='s'\n[[task]]\nid='a'\nspec='x'\nnames=['f']\nreference='r'\ntests='t'\n"
     "colour='red'\n", "unknown keys colour"),
])
def test_malformed_suites_are_rejected_by_name_and_reason(text, message):
    with pytest.raises(TracetuneError, match=message):
        parse_suite(text, "my.toml")
