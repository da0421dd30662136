"""The repair agent's tool and prompt design options (issue 18's ablation): line-numbered reads,
an edit by line range, clipped observations, the module shown in the first message, the task's
own module in the example call and only the editing tools; each off by default, each changing
exactly what it names."""

import json

import jsonschema
import pytest
from scripted import FINAL, call, episode

from tracetune.agents.configs import RepairConfig
from tracetune.agents.repair import run_repair_episode, system_prompt
from tracetune.agents.teachers import oracle_edit
from tracetune.agents.tools import (LINE_TOOLS, TOOLS, ToolError, Workspace, anchor_lines,
                                    clip_observation, fuzzy_replace, numbered_lines, parse_message,
                                    tool_call_schema, toolset)
from tracetune.errors import TracetuneError
from tracetune.tasks import load_suite
from tracetune.types import SamplingParams


def workspace(tmp_path, text, **kw):
    (tmp_path / "m.py").write_text(text)
    return Workspace(tmp_path, **kw)


# --- the tools -----------------------------------------------------------------------------------

def test_numbered_lines_count_from_one_and_keep_the_text():
    assert numbered_lines("a\n  b\n") == "   1| a\n   2|   b"
    assert numbered_lines("x", first=9) == "   9| x"


def test_a_numbered_read_numbers_every_line_and_a_plain_read_does_not(tmp_path):
    text = "def f():\n    return 1\n"
    plain = workspace(tmp_path, text).read_file("m.py", 4000)
    numbered = workspace(tmp_path, text, numbered=True).read_file("m.py", 4000)
    assert plain == text
    assert numbered == "   1| def f():\n   2|     return 1"


def test_replace_lines_replaces_the_range_reindented_to_the_file(tmp_path):
    ws = workspace(tmp_path, "def f(x):\n    if x < 0:\n        return 0\n    return x\n")
    out = ws.replace_lines("m.py", 2, 3, "if x <= 0:\n    return -1")
    assert (tmp_path / "m.py").read_text() == \
        "def f(x):\n    if x <= 0:\n        return -1\n    return x\n"
    assert out.startswith("replaced lines 2-3 of m.py with 2 line(s):")
    assert "   2|     if x <= 0:" in out and "   4|     return x" in out


def test_replace_lines_keeps_tabs_and_crlf_and_deletes_with_empty_content(tmp_path):
    (tmp_path / "m.py").write_bytes(b"def f():\r\n\tx = 1\r\n\ty = 2\r\n\treturn x\r\n")
    ws = Workspace(tmp_path)
    ws.replace_lines("m.py", 2, 2, "    x = 3")
    assert (tmp_path / "m.py").read_bytes() == b"def f():\r\n\tx = 3\r\n\ty = 2\r\n\treturn x\r\n"
    ws.replace_lines("m.py", 3, 3, "")
    assert (tmp_path / "m.py").read_bytes() == b"def f():\r\n\tx = 3\r\n\treturn x\r\n"


@pytest.mark.parametrize("start,end,why", [(0, 1, "1 <= start <= end"), (3, 2, "1 <= start"),
                                           (2, 9, "has 2 lines")])
def test_replace_lines_refuses_a_range_outside_the_file(tmp_path, start, end, why):
    ws = workspace(tmp_path, "a = 1\nb = 2\n")
    with pytest.raises(ToolError, match=why):
        ws.replace_lines("m.py", start, end, "c = 3")
    assert (tmp_path / "m.py").read_text() == "a = 1\nb = 2\n"


def test_replace_lines_stays_inside_the_workspace(tmp_path):
    inside = tmp_path / "ws"
    inside.mkdir()
    (tmp_path / "m.py").write_text("a\n")
    ws = workspace(inside, "a\n")
    with pytest.raises(ToolError, match="not allowed"):
        ws.replace_lines("../m.py", 1, 1, "b")
    assert (tmp_path / "m.py").read_text() == "a\n"


def test_clip_observation_says_what_it_left_out():
    assert clip_observation("x" * 50, 0) == "x" * 50
    assert clip_observation("x" * 50, 60) == "x" * 50
    assert clip_observation("x" * 50, 40) == "x" * 40 + "\n... (10 more chars not shown)"


# --- the protocol with and without the line edit -------------------------------------------------

def test_replace_lines_is_a_tool_only_when_offered():
    msg = call("replace_lines", rel_path="m.py", start=2, end=2, content="x = 1")
    assert parse_message(msg).kind == "error"
    assert "unknown tool" in parse_message(msg).error
    assert parse_message(msg, toolset(line_edit=True)).kind == "tool_call"
    assert parse_message(call("replace_lines", rel_path="m.py", start="2", end=2, content=""),
                         toolset(line_edit=True)).error == "replace_lines: start must be an integer"
    assert set(toolset()) == set(TOOLS)
    assert set(toolset(line_edit=True)) == set(TOOLS) | set(LINE_TOOLS)


def test_the_schema_follows_the_offered_tools():
    msg = json.loads(call("replace_lines", rel_path="m.py", start=2, end=3, content="y"))
    plain = jsonschema.Draft202012Validator(tool_call_schema())
    offered = jsonschema.Draft202012Validator(tool_call_schema(toolset(line_edit=True)))
    assert not plain.is_valid(msg) and offered.is_valid(msg)
    assert not offered.is_valid({**msg, "args": {**msg["args"], "start": "2"}})
    assert "replace_lines" in system_prompt("after_write", RepairConfig(line_edit=True))
    assert "replace_lines" not in system_prompt("after_write", RepairConfig())


def test_with_the_files_the_schema_names_only_existing_paths(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("# m\n")
    files = Workspace(tmp_path).paths()
    assert files == ["README.md", "pkg/m.py"]
    schema = jsonschema.Draft202012Validator(tool_call_schema(toolset(line_edit=True), files))
    for name, args in [("read_file", {"rel_path": "pkg/m.py"}),
                       ("replace_lines", {"rel_path": "pkg/m.py", "start": 1, "end": 1,
                                          "content": "x = 2"}),
                       ("edit", {"rel_path": "README.md", "search": "m", "replace": "n"}),
                       ("write_file", {"rel_path": "pkg/new.py", "content": ""}),  # may create
                       ("grep", {"pattern": "x", "rel_dir": "pkg"}),
                       ("list_files", {"rel_dir": "."})]:
        assert schema.is_valid(json.loads(call(name, **args))), name
    for name, args in [("read_file", {"rel_path": "REL_PATH"}),
                       ("edit", {"rel_path": "m.py", "search": "x", "replace": "y"}),
                       ("replace_lines", {"rel_path": "pkg/new.py", "start": 1, "end": 1,
                                          "content": ""}),
                       ("list_files", {"rel_dir": "src"})]:
        assert not schema.is_valid(json.loads(call(name, **args))), name
    anywhere = jsonschema.Draft202012Validator(tool_call_schema(toolset(line_edit=True)))
    assert anywhere.is_valid(json.loads(call("read_file", rel_path="REL_PATH")))


def test_anchor_lines_are_the_lines_that_occur_once_without_indentation():
    text = ("def f(xs):\n    total = 0\n\n    for x in xs:\n        total += x\n"
            "    y = total\n    yy = total\n    total = 0\n    return total\n")
    # `total = 0` occurs twice, `y = total` inside `yy = total`: an edit could not tell them apart
    assert anchor_lines(text) == ["def f(xs):", "for x in xs:", "total += x", "yy = total",
                                  "return total"]
    assert anchor_lines("x = 1\n" + "s = '" + "a" * 300 + "'\n") == ["x = 1"]  # long: left out


def anchored_edit(rel_path, search, replace="pass"):
    return {"type": "tool_call", "name": "edit",
            "args": {"rel_path": rel_path, "search": search, "replace": replace}}


def test_the_anchored_schema_holds_each_files_edits_to_its_own_lines():
    anchors = {"m.py": ["def f():", "return 1"], "README.md": ["# m"], "empty.txt": []}
    files = sorted(anchors)
    schema = jsonschema.Draft202012Validator(
        tool_call_schema(toolset(line_edit=True), files, anchors))
    assert schema.is_valid(anchored_edit("m.py", "return 1", "return 2"))
    assert schema.is_valid(anchored_edit("README.md", "# m"))
    for bad in (anchored_edit("m.py", "# m"),             # another file's line
                anchored_edit("m.py", "    return 1"),    # with its indentation
                anchored_edit("m.py", "return"),          # a part of a line
                anchored_edit("empty.txt", "x")):         # nothing to search for
        assert not schema.is_valid(bad), bad
    other = json.loads(call("write_file", rel_path="empty.txt", content="x"))
    assert schema.is_valid(other)  # the other tools are as without anchors
    free = jsonschema.Draft202012Validator(tool_call_schema(toolset(), files))
    assert free.is_valid(anchored_edit("m.py", "return"))


def test_every_anchor_of_every_bug_is_an_exact_edit_and_the_oracles_fix_is_anchored():
    """Each anchor line of each bugs module is taken by the edit tool as an exact match (so a
    constrained edit is never refused), and the oracle's fix searches for one of them (so its
    trajectories are valid under the anchored schema: SFT data for that design)."""
    for t in load_suite("bugs").tasks:
        anchors = anchor_lines(t.buggy)
        schema = jsonschema.Draft202012Validator(
            tool_call_schema(toolset(edit_only=True), [t.file], {t.file: anchors}))
        for line in anchors:
            assert fuzzy_replace(t.buggy, line, "pass")[1] == "exact match", (t.id, line)
        fix = oracle_edit(t)
        assert fix["search"] in anchors and schema.is_valid(anchored_edit(**fix)), t.id
        assert fuzzy_replace(t.buggy, fix["search"], fix["replace"])[0] == t.reference


def test_the_tool_list_names_arg_types_and_holds_no_placeholder_to_copy():
    text = system_prompt("after_write", RepairConfig(line_edit=True))
    assert "- read_file(rel_path: string, max_chars: integer = 4000): the text of a file" in text
    assert "- replace_lines(rel_path: string, start: integer, end: integer, content: string)" \
        in text
    assert "REL_PATH" not in text and "CONTENT" not in text


@pytest.mark.parametrize("bad,why", [({"observation_chars": 10}, "observation_chars"),
                                     ({"observation_chars": -1}, "observation_chars"),
                                     ({"line_edit": "yes"}, "line_edit"),
                                     ({"task_example": 1}, "task_example"),
                                     ({"edit_only": True}, "needs show_file"),
                                     ({"lint_edits": "yes"}, "lint_edits"),
                                     ({"anchored_edits": True}, "needs constrained")])
def test_bad_design_options_are_refused(bad, why):
    with pytest.raises(TracetuneError, match=why):
        RepairConfig(**bad).validate()


# --- episodes ------------------------------------------------------------------------------------

def test_a_line_edit_fixes_the_bug_counts_as_a_write_and_gets_the_tests(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, [
        call("read_file", rel_path="maximum.py"),
        call("replace_lines", rel_path="maximum.py", start=5, end=5, content="if x > best:"),
        FINAL], numbered_reads=True, line_edit=True)
    assert out.success and out.metrics["writes"] == 1 and out.metrics["parse_errors"] == 0
    read, edit = out.attempts[0], out.attempts[1]
    assert "   5|         if x < best:" in read.feedback
    assert edit.facts["tests"] == "pass" and edit.feedback.endswith("[TESTS PASS]")


def test_a_valid_edit_changes_the_module_and_leaves_it_python(tmp_path, task, sandbox):
    """writes counts every accepted write; module_edits only those that changed the module and
    left it a candidate fix: not a write to another file, a module that does not parse or no
    longer defines what the tests import (junk that happens to parse)."""
    out = episode(tmp_path, task, sandbox, [
        call("write_file", rel_path="notes.txt", content="CONTENT"),
        call("edit", rel_path="maximum.py", search="if x < best:", replace="if x < best"),
        call("edit", rel_path="maximum.py", search="if x < best", replace="if x > best:"),
        FINAL], max_iters=6)
    assert [a.facts.get("module_edit") for a in out.attempts[:3]] == [False, False, True]
    assert out.metrics["writes"] == 3 and out.metrics["module_edits"] == 1
    assert out.metrics["valid_edit"] and out.success
    for junk in ("CONTENT(", "list_to_list.txt", "def other(xs):\n    return 0\n"):
        none = episode(tmp_path, task, sandbox, [call("write_file", rel_path="maximum.py",
                                                      content=junk), FINAL])
        assert none.metrics["wrote"] and not none.metrics["valid_edit"], junk
    kept = episode(tmp_path, task, sandbox, [call("write_file", rel_path="maximum.py",
                                                  content="import os\nmaximum = max\n"), FINAL])
    assert kept.metrics["valid_edit"] and kept.success


def test_a_write_that_changes_nothing_is_refused_and_repeating_it_is_a_loop(tmp_path, task,
                                                                            sandbox):
    """A line replaced by itself (the 135M model's commonest edit) is a tool error, not a write:
    it does not count, and it does not reset loop detection, so repeating it is a loop."""
    same = call("edit", rel_path="maximum.py", search="if x < best:", replace="if x < best:")
    out = episode(tmp_path, task, sandbox, [
        same, same,
        call("replace_lines", rel_path="maximum.py", start=5, end=5, content="if x < best:"),
        call("write_file", rel_path="maximum.py", content=task.buggy), FINAL],
        line_edit=True, max_iters=6)
    kinds = [(a.facts["kind"], a.facts["tool_ok"]) for a in out.attempts]
    assert kinds == [("tool_call", False), ("loop", None), ("tool_call", False),
                     ("tool_call", False), ("final", None)]
    assert "nothing changed" in out.attempts[0].feedback
    assert out.metrics["writes"] == 0 and out.metrics["tool_errors"] == 3
    assert out.metrics["loop_detections"] == 1 and not out.metrics["wrote"]


def test_without_line_edit_the_same_call_is_a_parse_error(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, [
        call("replace_lines", rel_path="maximum.py", start=5, end=5, content="if x > best:"),
        FINAL])
    assert not out.success and out.metrics["parse_errors"] == 1 and out.metrics["writes"] == 0


def test_observations_are_clipped_but_the_test_verdict_is_not(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, [
        call("read_file", rel_path="maximum.py"),
        call("write_file", rel_path="maximum.py", content=task.reference + "\n# " + "z" * 300),
        FINAL], observation_chars=40)
    read, write = out.attempts[0], out.attempts[1]
    assert read.feedback == "[tool_result]\n" + clip_observation(task.buggy, 40)
    assert write.feedback.endswith("[TESTS PASS]")


def test_show_file_puts_the_module_and_the_failing_tests_in_the_first_message(tmp_path, task,
                                                                              sandbox):
    out = episode(tmp_path, task, sandbox, [FINAL], show_file=True, numbered_reads=True)
    goal = out.attempts[0].messages[1]["content"]
    assert goal.startswith("GOAL:\n" + task.spec)
    assert "FILE maximum.py:\n   1| def maximum(xs):" in goal
    assert "TESTS NOW: [TESTS FAIL] failed: test_sorted" in goal
    plain = episode(tmp_path, task, sandbox, [FINAL])
    assert plain.attempts[0].messages[1]["content"] == "GOAL:\n" + task.spec


def test_task_example_names_the_tasks_module_in_the_example_call(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, [FINAL], task_example=True)
    system = out.attempts[0].messages[0]["content"]
    assert '"args": {"rel_path": "maximum.py"}' in system and "example.py" not in system
    plain = episode(tmp_path, task, sandbox, [FINAL])
    assert '"args": {"rel_path": "example.py"}' in plain.attempts[0].messages[0]["content"]


def test_edit_only_offers_just_the_tools_that_change_a_file(tmp_path, task, sandbox):
    assert set(toolset(edit_only=True)) == {"write_file", "edit"}
    assert set(toolset(edit_only=True, line_edit=True)) == {"write_file", "edit", "replace_lines"}
    system = system_prompt("after_write", RepairConfig(show_file=True, edit_only=True))
    assert "read_file" not in system and '"name": "edit"' in system
    out = episode(tmp_path, task, sandbox, [
        call("read_file", rel_path="maximum.py"),
        call("edit", rel_path="maximum.py", search="if x < best:", replace="if x > best:"),
        FINAL], show_file=True, edit_only=True)
    read, edit = out.attempts[0], out.attempts[1]
    assert read.facts["kind"] == "parse_error" and "unknown tool" in read.feedback
    assert edit.facts["tests"] == "pass" and out.success


def test_anchored_edits_offer_no_whole_file_rewrite():
    assert "write_file" not in toolset(anchored=True)
    assert set(toolset(edit_only=True, line_edit=True, anchored=True)) == {"edit",
                                                                             "replace_lines"}
    text = system_prompt("after_write", RepairConfig(constrained=True, anchored_edits=True))
    assert "write_file" not in text and "search is one whole line of the file" in text
    assert "one whole line" not in system_prompt("after_write", RepairConfig(constrained=True))


def test_the_oracle_edits_at_once_when_the_module_is_shown(task, sandbox):
    """Under the every-option design (the module shown, only editing tools, constrained, edits
    anchored), the teacher's trajectory is valid there: edit, then final, no call to a tool not
    offered."""
    from tracetune.agents.teachers import OracleModel

    config = RepairConfig(constrained=True, numbered_reads=True, line_edit=True, show_file=True,
                          task_example=True, edit_only=True, observation_chars=600,
                          anchored_edits=True)
    out = run_repair_episode(task, config, OracleModel().bind(task), sandbox,
                             params=SamplingParams(), seed=1)
    assert out.success and out.metrics["valid_edit"] and out.metrics["parse_errors"] == 0
    assert [a.facts["name"] for a in out.attempts] == ["edit", None]
