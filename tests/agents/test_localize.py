"""Spectrum-based fault localisation (agents.localize) and the repair agent's `localize` option:
the Ochiai formula, the spectrum coverage.py records per test in the sandbox, the suspects shown
to the agent and the anchored edits held to them, and the `fault_edit` metric."""

import math

import pytest
from scripted import FINAL, call, episode

from tracetune.agents.configs import RepairConfig
from tracetune.agents.localize import (Suspect, fault_lines, ochiai, rank_suspects,
                                       removed_lines, spectrum, suspects_text,
                                       suspicious_lines)
from tracetune.agents.repair import _Episode, first_messages
from tracetune.agents.tools import Workspace, toolset
from tracetune.errors import TracetuneError
from tracetune.tasks import load_suite


def test_ochiai_is_ef_over_the_root_of_all_failing_times_all_executing():
    outcomes = {"a": "failed", "b": "failed", "c": "passed", "d": "passed", "e": "skipped"}
    lines = {1: ["a", "b"], 2: ["a", "c", "d"], 3: ["c"], 4: ["a", "e"]}
    scores = ochiai(outcomes, lines)
    assert scores[1] == pytest.approx(2 / math.sqrt(2 * 2))
    assert scores[2] == pytest.approx(1 / math.sqrt(2 * 3))
    assert scores[4] == pytest.approx(1 / math.sqrt(2 * 1))   # a skipped test counts as neither
    assert 3 not in scores                                    # no failing test ran it
    assert ochiai({"a": "passed"}, {1: ["a"]}) == {}


def test_suspects_ranked_from_a_hand_spectrum_keep_the_tie_at_the_cut():
    outcomes = {"a": "failed", "b": "failed", "c": "passed", "d": "passed"}
    lines = {1: ["a", "b"], 2: ["a", "c", "d"], 3: ["b", "c", "d"], 4: ["c"], 5: ["a", "b"]}
    source = "x = 1\n  y = 2\nz = 3\nw = 4\n\n"  # line 5 is blank: never a suspect
    top = rank_suspects(outcomes, lines, source, top=2)
    assert top == [Suspect(1, "x = 1", 1.0, 2, 0),
                   Suspect(2, "y = 2", round(1 / math.sqrt(6), 4), 1, 2),
                   Suspect(3, "z = 3", round(1 / math.sqrt(6), 4), 1, 2)]  # tied with the cut
    assert rank_suspects(outcomes, lines, source, top=0) == []
    assert rank_suspects({"c": "passed"}, lines, source, top=3) == []


def test_the_spectrum_records_each_tests_lines_and_outcome(task, sandbox):
    """tiny/maximum: `if x < best:` (line 5) where `>` is meant; test_single passes without
    entering the loop, test_sorted and test_negative fail."""
    outcomes, lines = spectrum(task.tests, task.buggy, sandbox, module=task.module)
    assert {k.split("::")[-1]: v for k, v in outcomes.items()} == {
        "test_sorted": "failed", "test_single": "passed", "test_negative": "failed"}
    tests_of = {n: sorted(t.split("::")[-1] for t in ids) for n, ids in lines.items()}
    assert tests_of[5] == ["test_negative", "test_sorted"]
    assert tests_of[3] == ["test_negative", "test_single", "test_sorted"]
    assert tests_of[6] == ["test_negative"]
    assert tests_of.get(1, []) == []   # the def line runs at import, under no test


def test_the_faulty_line_comes_first_and_ties_at_the_cut_are_kept(task, sandbox):
    top = suspicious_lines(task.tests, task.buggy, sandbox, top=1, module=task.module)
    assert [(s.line, s.text, s.score, s.failing, s.passing) for s in top] == [
        (5, "if x < best:", 1.0, 2, 0)]
    two = suspicious_lines(task.tests, task.buggy, sandbox, top=2, module=task.module)
    # best = xs[0], the loop and the return tie at 2/sqrt(2*3); all three are kept, in line order
    assert [s.line for s in two] == [5, 3, 4, 7]
    assert suspects_text(two[:2]) == "   5| if x < best:\n   3| best = xs[0]"


def test_nothing_is_suspect_when_no_test_fails_or_the_module_does_not_import(task, sandbox):
    assert suspicious_lines(task.tests, task.reference, sandbox, top=3, module=task.module) == []
    assert suspicious_lines(task.tests, "raise ImportError('x')\n", sandbox, top=3,
                            module=task.module) == []


def test_fault_lines_are_what_the_fix_replaces_for_every_bug():
    """Every bug of the built-in suite has a faulty line to score localisation against."""
    for t in load_suite("bugs").tasks:
        faults = fault_lines(t.buggy, t.reference)
        assert faults and faults <= {line.strip() for line in t.buggy.splitlines()}, t.id
    assert fault_lines("a\nb\n", "a\nx\nb\n") == frozenset()     # an insertion replaces nothing
    assert removed_lines("a\n  b\nc\n", "a\n  B\nc\n") == {"b"}


def test_localize_shows_the_suspects_in_the_first_message(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, [FINAL], localize=1)
    goal = out.attempts[0].messages[1]["content"]
    assert goal.endswith("MOST SUSPICIOUS LINES of maximum.py (fault localisation from the "
                         "tests' coverage; most likely first):\n   5| if x < best:")
    plain = episode(tmp_path, task, sandbox, [FINAL])
    assert "SUSPICIOUS" not in plain.attempts[0].messages[1]["content"]
    # the reference passes: nothing is suspect, nothing is shown
    fixed = first_messages(task, RepairConfig(localize=3), None, [])
    assert "SUSPICIOUS" not in fixed[1].content


def test_anchored_edits_of_the_module_are_held_to_the_suspects(tmp_path, task, sandbox):
    (tmp_path / task.file).write_text(task.buggy)
    (tmp_path / "README.md").write_text("# maximum\n")

    def module_searches(**options):
        config = RepairConfig(constrained=True, anchored_edits=True, **options)
        ep = _Episode(task, config, sandbox, Workspace(tmp_path))
        schema = ep.schema(toolset(anchored=True))
        return {v["properties"]["args"]["properties"]["rel_path"]["const"]:
                v["properties"]["args"]["properties"]["search"]["enum"]
                for v in schema["oneOf"] if v["properties"].get("name", {}).get("const") == "edit"}

    assert module_searches(localize=1)[task.file] == ["if x < best:"]
    assert module_searches(localize=1)["README.md"] == ["# maximum"]
    assert len(module_searches()[task.file]) == 6   # `best = x` is inside `best = xs[0]`
    (tmp_path / task.file).write_text(task.reference)   # fixed: no suspect, every line again
    assert len(module_searches(localize=1)[task.file]) == 6


def test_fault_edit_says_whether_a_valid_edit_touched_the_faulty_line(tmp_path, task, sandbox):
    wrong = episode(tmp_path, task, sandbox, [
        call("edit", rel_path="maximum.py", search="best = xs[0]", replace="best = xs[-1]"),
        FINAL])
    assert wrong.metrics["valid_edit"] and not wrong.metrics["fault_edit"]
    right = episode(tmp_path, task, sandbox, [
        call("edit", rel_path="maximum.py", search="if x < best:", replace="if x <= best:"),
        FINAL])
    assert right.metrics["fault_edit"] and right.metrics["fault_edits"] == 1
    assert not right.success   # found the line, did not fix it


@pytest.mark.parametrize("bad", [-1, True, "3"])
def test_a_bad_localize_is_refused(bad):
    with pytest.raises(TracetuneError, match="localize"):
        RepairConfig(localize=bad).validate()


def test_localize_is_a_workflow_option():
    from tracetune.agents.spec import parse_workflow

    workflow = parse_workflow("repair,localize=3,constrained=true,anchored_edits=true")
    assert workflow.config.localize == 3
