"""The repair agent's edit linter (`lint_edits`): a write that would add a syntax error or an
undefined name to a Python file is refused and the file kept; what was already wrong does not
block an edit; other files and the option off are untouched."""

import pytest
from scripted import FINAL, call, episode

from tracetune.agents.tools import (ToolError, Workspace, lint_problems, new_lint_problems)

GOOD = "def f(xs):\n    best = xs[0]\n    return best\n"


def test_lint_problems_are_syntax_errors_and_undefined_names():
    assert lint_problems(GOOD) == []
    assert lint_problems("def f(:\n    pass\n") == ["line 1: SyntaxError: invalid syntax"]
    assert lint_problems("def f(xs):\n    return ares[0]\n") == ["line 2: undefined name 'ares'"]
    assert lint_problems("def f(a, a):\n    return a\n")[0].startswith("line 1: duplicate argument")
    # unused imports and the like are not an edit's problem
    assert lint_problems("import os\n\ndef f():\n    return 1\n") == []


def test_only_added_problems_count_and_line_shifts_do_not_matter():
    broken = "def f(xs):\n    return ares[0]\n"
    assert new_lint_problems(broken, "\n\n" + broken) == []           # same problem, moved
    assert new_lint_problems(GOOD, broken) == ["line 2: undefined name 'ares'"]
    assert new_lint_problems(broken, broken.replace("ares", "xs")) == []
    # a file that does not parse may be edited into one whose other problems it hid
    assert new_lint_problems("def f(:\n", "def f():\n    return q\n") == []
    assert new_lint_problems("def f(:\n", "def f(:\n    pass\n") == []     # still the same error
    assert new_lint_problems("def f(:\n", "def f():\n    x = (\n") == [
        "line 2: SyntaxError: '(' was never closed"]


def test_a_workspace_with_lint_refuses_and_keeps_the_file(tmp_path):
    (tmp_path / "m.py").write_text(GOOD)
    (tmp_path / "notes.txt").write_text("a\n")
    ws = Workspace(tmp_path, lint=True)
    for tool, args in [("edit", dict(rel_path="m.py", search="best = xs[0]",
                                     replace="best = xs[0")),
                       ("edit", dict(rel_path="m.py", search="return best", replace="return bst")),
                       ("write_file", dict(rel_path="m.py", content="x = (\n")),
                       ("replace_lines", dict(rel_path="m.py", start=3, end=3, content="return 1 +"))]:
        with pytest.raises(ToolError, match="not applied, m.py is unchanged"):
            getattr(ws, tool)(**args)
        assert (tmp_path / "m.py").read_text() == GOOD
    assert "edited" in ws.edit("m.py", "return best", "return best + 0")
    assert "wrote" in ws.write_file("notes.txt", "not python (\n")   # not a .py file
    assert "wrote" in Workspace(tmp_path).write_file("m.py", "x = (\n")   # lint off


def test_a_refused_edit_is_a_tool_error_and_not_a_write(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, [
        call("edit", rel_path="maximum.py", search="if x < best:", replace="if x > bst:"),
        call("edit", rel_path="maximum.py", search="if x < best:", replace="if x > best:"),
        FINAL], lint_edits=True)
    first = out.attempts[0]
    assert first.facts["tool_ok"] is False and "undefined name 'bst'" in first.feedback
    assert out.metrics["writes"] == 1 and out.metrics["tool_errors"] == 1 and out.success
    unlinted = episode(tmp_path, task, sandbox, [
        call("edit", rel_path="maximum.py", search="if x < best:", replace="if x > bst:"), FINAL])
    assert unlinted.metrics["writes"] == 1 and unlinted.metrics["valid_edit"]


def test_drop_failed_calls_keeps_failures_out_of_what_the_model_sees_next(tmp_path, task,
                                                                          sandbox):
    """A parse error, a failed tool call and a loop are recorded and counted, but the next
    request holds only the messages that worked."""
    read = call("read_file", rel_path="maximum.py")
    texts = ["not json", call("read_file", rel_path="nope.py"), read, read, FINAL]
    out = episode(tmp_path, task, sandbox, texts, drop_failed_calls=True, max_iters=6)
    kinds = [a.facts["kind"] for a in out.attempts]
    assert kinds == ["parse_error", "tool_call", "tool_call", "loop", "final"]
    assert out.metrics["parse_errors"] == 1 and out.metrics["tool_errors"] == 1
    assert out.metrics["loop_detections"] == 1
    sent = [len(a.messages) for a in out.attempts]
    assert sent == [2, 2, 2, 4, 4]          # only the successful read joined the conversation
    assert out.attempts[3].messages[2]["content"] == read
    kept = episode(tmp_path, task, sandbox, texts, max_iters=6)
    assert [len(a.messages) for a in kept.attempts] == [2, 4, 6, 8, 10]
