"""The JSON tool protocol parser, the workspace tools (paths confined to the task directory) and
the fuzzy edit."""

import json
import os

import pytest

from tracetune.agents.tools import (MAX_WRITE_CHARS, ToolError, Workspace, fuzzy_replace,
                                    parse_message)


def call(name, **args):
    return json.dumps({"type": "tool_call", "name": name, "args": args})


# --- protocol ----------------------------------------------------------------------------------

def test_valid_tool_call_and_final():
    p = parse_message('  {"type": "tool_call", "name": "read_file", "args": {"rel_path": "a.py"}}\n')
    assert (p.kind, p.name, p.args) == ("tool_call", "read_file", {"rel_path": "a.py"})
    assert json.loads(p.canonical()) == {"type": "tool_call", "name": "read_file",
                                         "args": {"rel_path": "a.py"}}
    f = parse_message('{"type": "final", "message": "fixed"}')
    assert (f.kind, f.message) == ("final", "fixed")
    assert parse_message('{"type": "final"}').kind == "final"


@pytest.mark.parametrize("text, needle", [
    ("", "empty message"),
    ("I will read the file", "not valid JSON"),
    ('```json\n{"type": "final"}\n```', "not valid JSON"),
    ('{"type": "final"} and then some prose', "text after the JSON object"),
    ('[1, 2]', "expected a JSON object"),
    ('{"type": "run", "name": "x"}', '"type" must be'),
    ('{"type": "tool_call", "name": "pytest", "args": {}}', "unknown tool 'pytest'"),
    ('{"type": "tool_call", "name": "read_file"}', 'missing "args"'),
    ('{"type": "tool_call", "name": "read_file", "args": []}', '"args" must be an object'),
    ('{"type": "tool_call", "name": "edit", "args": {"rel_path": "a.py"}}',
     "missing arg(s) search, replace"),
    ('{"type": "tool_call", "name": "read_file", "args": {"rel_path": "a", "path": "b"}}',
     "unknown arg(s) path"),
    ('{"type": "tool_call", "name": "read_file", "args": {"rel_path": 3}}',
     "rel_path must be a string"),
    ('{"type": "tool_call", "name": "list_files", "args": {"max_files": true}}',
     "max_files must be an integer"),
    ('{"type": "tool_call", "name": "list_files", "args": {}, "why": "x"}', "unknown key(s) why"),
    ('{"type": "final", "message": 3}', "message must be a string"),
])
def test_invalid_messages_are_parse_errors(text, needle):
    p = parse_message(text)
    assert p.kind == "error" and needle in p.error and p.canonical() == ""


def test_call_key_fills_defaults():
    a = parse_message(call("list_files"))
    b = parse_message(call("list_files", rel_dir=".", max_files=200))
    assert a.call_key() == b.call_key()
    assert a.call_key() != parse_message(call("list_files", rel_dir="src")).call_key()


# --- workspace ----------------------------------------------------------------------------------

@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "main.py").write_text("def f(x):\n    return x + 1\n")
    (root / "pkg" / "util.py").write_text("VALUE = 1\n# TODO fix\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    (root / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "secret.txt").write_text("outside")
    return Workspace(root)


def run(ws, text):
    return ws.call(parse_message(text))


@pytest.mark.parametrize("path", ["../secret.txt", "/etc/passwd", "pkg/../../secret.txt",
                                  "~/x", "..", "pkg\\..\\..\\secret.txt", "C:/x"])
def test_paths_outside_the_repository_are_refused(ws, path):
    for text in (call("read_file", rel_path=path), call("write_file", rel_path=path, content="x"),
                 call("list_files", rel_dir=path), call("edit", rel_path=path, search="a",
                                                        replace="b")):
        with pytest.raises(ToolError):
            run(ws, text)
    assert (ws.root.parent / "secret.txt").read_text() == "outside"


def test_symlink_out_of_the_repository_is_refused(ws):
    os.symlink(ws.root.parent / "secret.txt", ws.root / "link.txt")
    with pytest.raises(ToolError, match="outside the repository"):
        run(ws, call("read_file", rel_path="link.txt"))
    with pytest.raises(ToolError, match="outside the repository"):
        run(ws, call("write_file", rel_path="link.txt", content="pwned"))
    assert "link.txt" not in run(ws, call("list_files"))
    assert (ws.root.parent / "secret.txt").read_text() == "outside"


def test_list_read_grep(ws):
    listing = run(ws, call("list_files")).splitlines()
    assert listing == ["blob.bin", "latin.txt", "main.py", "pkg/util.py"]
    assert run(ws, call("list_files", max_files=2)).endswith("... (2 more)")
    assert run(ws, call("read_file", rel_path="main.py")) == "def f(x):\n    return x + 1\n"
    assert "truncated" in run(ws, call("read_file", rel_path="main.py", max_chars=5))
    assert run(ws, call("grep", pattern="TODO")) == "pkg/util.py:2: # TODO fix"
    assert run(ws, call("grep", pattern="nothing here")) == "(no matches)"
    with pytest.raises(ToolError, match="bad regular expression"):
        run(ws, call("grep", pattern="("))
    with pytest.raises(ToolError, match="no such file"):
        run(ws, call("read_file", rel_path="missing.py"))
    with pytest.raises(ToolError, match="is a directory"):
        run(ws, call("read_file", rel_path="pkg"))


def test_binary_and_non_utf8_files_are_not_shown(ws):
    with pytest.raises(ToolError, match="binary file"):
        run(ws, call("read_file", rel_path="blob.bin"))
    with pytest.raises(ToolError, match="not UTF-8"):
        run(ws, call("read_file", rel_path="latin.txt"))
    with pytest.raises(ToolError, match="binary file"):
        run(ws, call("edit", rel_path="blob.bin", search="a", replace="b"))


def test_writes(ws):
    assert "wrote pkg/new/mod.py" in run(ws, call("write_file", rel_path="pkg/new/mod.py",
                                                  content="X = 2\n"))
    assert (ws.root / "pkg" / "new" / "mod.py").read_text() == "X = 2\n"
    with pytest.raises(ToolError, match="content too large"):
        run(ws, call("write_file", rel_path="big.py", content="x" * (MAX_WRITE_CHARS + 1)))
    with pytest.raises(ToolError, match="NUL"):
        run(ws, call("write_file", rel_path="nul.py", content="a\0b"))
    with pytest.raises(ToolError, match="is a directory"):
        run(ws, call("write_file", rel_path="pkg", content="x"))
    assert not (ws.root / "big.py").exists() and not (ws.root / "nul.py").exists()


# --- fuzzy edit ---------------------------------------------------------------------------------

SRC = """def total(xs):
    s = 0
    for i in range(1, len(xs)):
        s += xs[i]
    return s
"""


def test_exact_edit():
    new, how = fuzzy_replace(SRC, "range(1, len(xs))", "range(len(xs))")
    assert "range(len(xs))" in new and how == "exact match"


def test_ambiguous_exact_edit_is_refused():
    with pytest.raises(ToolError, match="occurs 2 times"):
        fuzzy_replace("a = 1\na = 1\n", "a = 1", "a = 2")


def test_whitespace_insensitive_edit_keeps_the_file_indentation():
    new, how = fuzzy_replace(SRC, "for i in range(1,  len(xs)):\n    s += xs[i]",
                             "for i in range(len(xs)):\n    s += xs[i]")
    assert how.startswith("whitespace-insensitive match, lines 3-4")
    assert "    for i in range(len(xs)):\n        s += xs[i]\n" in new
    compile(new, "total.py", "exec")


def test_fuzzy_edit_tolerates_a_typo_in_the_search_text():
    new, how = fuzzy_replace(SRC, "    for i in range(1, len(x)):\n", "    for i in range(len(xs)):\n")
    assert how.startswith("fuzzy match, similarity")
    assert new == SRC.replace("range(1, len(xs))", "range(len(xs))")


def test_edit_that_matches_nothing_shows_the_closest_lines():
    with pytest.raises(ToolError, match=r"search text not found \(closest: lines"):
        fuzzy_replace(SRC, "while True:\n    break", "pass")


def test_edit_through_the_workspace(ws):
    out = run(ws, call("edit", rel_path="main.py", search="return x + 1", replace="return x + 2"))
    assert "edited main.py (exact match)" == out
    assert "x + 2" in (ws.root / "main.py").read_text()
    with pytest.raises(ToolError, match="search must not be empty"):
        run(ws, call("edit", rel_path="main.py", search="  ", replace="x"))


@pytest.mark.parametrize("search,replace", [
    # spaces in the edit, tabs in the file: a whitespace-insensitive match
    ("    if x > hi:\n        return lo\n", "    if x > hi:\n        return hi\n"),
    # the exact text of the file as search, the replacement written with spaces
    ("\tif x > hi:\n\t\treturn lo\n", "    if x > hi:\n        return hi\n"),
])
def test_edit_follows_the_files_tabs(search, replace):
    from tracetune.agents.tools import fuzzy_replace

    text = "def clamp(x, lo, hi):\n\tif x < lo:\n\t\treturn lo\n\tif x > hi:\n\t\treturn lo\n" \
           "\treturn x\n"
    new, _ = fuzzy_replace(text, search, replace)
    assert new == text.replace("\t\treturn lo\n\treturn x", "\t\treturn hi\n\treturn x")
    compile(new, "clamp.py", "exec")


def test_edit_keeps_crlf_and_two_space_indentation():
    from tracetune.agents.tools import fuzzy_replace

    text = "def f(x):\r\n  if x:\r\n    return 1\r\n  return 0\r\n"
    new, how = fuzzy_replace(text, "if x:\n    return 1\n", "if x:\n    y = 2\n    return y\n")
    assert new == "def f(x):\r\n  if x:\r\n    y = 2\r\n    return y\r\n  return 0\r\n", how
