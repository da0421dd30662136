"""The repair agent's file tools over one task directory, and the JSON tool protocol (seed 002).

Protocol: every assistant message is exactly one JSON object and nothing else:
    {"type": "tool_call", "name": TOOL, "args": {...}}
    {"type": "final", "message": "what was changed"}
Tool results go back as user messages starting with `[tool_result]`. A message that is not one
such object (bad JSON, text around it, an unknown type or tool, missing/unknown/mistyped args) is a
parse error: the driver answers with an error saying what is wrong.

Tools never reach outside the workspace root: absolute paths, `..` components and symlinks that
resolve outside are refused; writes are capped in size and must be text.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

# name -> (required {arg: type}, optional {arg: default}); one-line help for the system prompt
TOOLS: dict[str, tuple[dict[str, type], dict[str, object], str]] = {
    "list_files": ({}, {"rel_dir": ".", "max_files": 200},
                   "the files under a directory, one relative path per line"),
    "read_file": ({"rel_path": str}, {"max_chars": 4000}, "the text of a file"),
    "grep": ({"pattern": str}, {"rel_dir": ".", "max_matches": 50},
             "lines matching a regular expression, as path:line: text"),
    "write_file": ({"rel_path": str, "content": str}, {}, "replace a whole file with content"),
    "edit": ({"rel_path": str, "search": str, "replace": str}, {},
             "replace one occurrence of the search text (close matches are found too)"),
}
LINE_TOOLS: dict[str, tuple[dict[str, type], dict[str, object], str]] = {
    "replace_lines": ({"rel_path": str, "start": int, "end": int, "content": str}, {},
                      "replace lines start..end (1-based, inclusive) with content (re-indented "
                      "to the first replaced line; empty content deletes them)"),
}
"""Tools an agent gets on request (the repair agent's `line_edit` option)."""
WRITE_TOOLS = ("write_file", "edit", "replace_lines")
CREATING_TOOLS = ("write_file",)
"""Tools whose path may name a file that does not exist yet."""
MAX_WRITE_CHARS = 100_000
MAX_READ_CHARS = 20_000
FUZZY_THRESHOLD = 0.8
"""Least similarity (difflib ratio of whitespace-normalised lines) a fuzzy edit match needs."""


@dataclass(frozen=True)
class Parsed:
    """One assistant message, read against the protocol."""

    kind: str
    """tool_call, final or error."""
    name: str = ""
    args: dict = field(default_factory=dict)
    """As given (canonical JSON and training targets use these)."""
    error: str = ""
    message: str = ""
    """final: the model's summary."""

    def canonical(self) -> str:
        """The message as compact canonical JSON ("" for a parse error)."""
        if self.kind == "tool_call":
            obj = {"type": "tool_call", "name": self.name, "args": self.args}
        elif self.kind == "final":
            obj = {"type": "final", "message": self.message}
        else:
            return ""
        return json.dumps(obj, ensure_ascii=False)

    def call_key(self) -> str:
        """Identity of a call for loop detection: the name and its args with defaults filled."""
        _, optional, _ = tool_spec(self.name)
        return json.dumps([self.name, {**optional, **self.args}], sort_keys=True)


def toolset(*, line_edit: bool = False, edit_only: bool = False, anchored: bool = False
            ) -> dict[str, tuple[dict[str, type], dict[str, object], str]]:
    """The tools an agent is offered: TOOLS, plus LINE_TOOLS with `line_edit`; with `edit_only`
    only those of them that change a file (WRITE_TOOLS); with `anchored` (anchored edits) not
    write_file, so a file changes only by an edit of one of its lines (or by line range)."""
    tools = {**TOOLS, **(LINE_TOOLS if line_edit else {})}
    if anchored:
        tools.pop("write_file")
    return {k: v for k, v in tools.items() if k in WRITE_TOOLS} if edit_only else tools


def tool_spec(name: str) -> tuple[dict[str, type], dict[str, object], str]:
    """(required args, optional args with defaults, help) of any known tool; KeyError if none."""
    return TOOLS[name] if name in TOOLS else LINE_TOOLS[name]


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer"}[t]


def parse_message(text: str, tools: dict = TOOLS) -> Parsed:
    """Read one assistant message against the protocol with `tools` (default TOOLS; see
    `toolset`). Never raises: problems come back as kind "error"."""
    body = text.strip()
    if not body:
        return Parsed("error", error="empty message; reply with one JSON object")
    try:
        obj, end = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as exc:
        return Parsed("error", error=f"not valid JSON ({exc.msg} at char {exc.pos}); reply with "
                      "one JSON object and nothing else")
    if body[end:].strip():
        return Parsed("error", error="text after the JSON object; reply with one JSON object "
                      "and nothing else")
    if not isinstance(obj, dict):
        return Parsed("error", error=f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "final":
        extra = sorted(set(obj) - {"type", "message"})
        if extra:
            return Parsed("error", error=f"unknown key(s) {', '.join(extra)} in a final answer")
        message = obj.get("message", "")
        if not isinstance(message, str):
            return Parsed("error", error="final: message must be a string")
        return Parsed("final", message=message)
    if kind != "tool_call":
        return Parsed("error", error='"type" must be "tool_call" or "final"')
    extra = sorted(set(obj) - {"type", "name", "args"})
    if extra:
        return Parsed("error", error=f"unknown key(s) {', '.join(extra)} in a tool call "
                      "(keys: type, name, args)")
    name = obj.get("name")
    if not isinstance(name, str) or name not in tools:
        return Parsed("error", error=f"unknown tool {name!r} (tools: {', '.join(tools)})")
    if "args" not in obj:
        return Parsed("error", name=name, error=f"{name}: missing \"args\" (an object)")
    args = obj["args"]
    if not isinstance(args, dict):
        return Parsed("error", name=name, error=f"{name}: \"args\" must be an object")
    required, optional, _ = tools[name]
    missing = [k for k in required if k not in args]
    if missing:
        return Parsed("error", name=name, error=f"{name}: missing arg(s) {', '.join(missing)}")
    unknown = sorted(set(args) - set(required) - set(optional))
    if unknown:
        valid = ", ".join([*required, *optional])
        return Parsed("error", name=name,
                      error=f"{name}: unknown arg(s) {', '.join(unknown)} (args: {valid})")
    for key, value in args.items():
        want = required.get(key) or type(optional[key])
        if not isinstance(value, want) or isinstance(value, bool):
            return Parsed("error", name=name, error=f"{name}: {key} must be {_type_name(want)}")
    return Parsed("tool_call", name=name, args=args)


class ToolError(Exception):
    """A tool refused or failed; the message goes back to the model."""


class Workspace:
    """The task's directory and the tools that act on it."""

    def __init__(self, root: Path, *, max_write_chars: int = MAX_WRITE_CHARS,
                 numbered: bool = False, lint: bool = False) -> None:
        self.root = Path(root).resolve()
        self.max_write_chars = max_write_chars
        self.numbered = numbered
        """read_file shows each line after its number (`numbered_lines`)."""
        self.lint = lint
        """A write that adds a lint problem to a `.py` file is refused (`lint_problems`)."""

    def call(self, parsed: Parsed) -> str:
        """Run a parsed tool call; raises ToolError with a message for the model."""
        _, optional, _ = tool_spec(parsed.name)
        args = {**optional, **parsed.args}
        return getattr(self, parsed.name)(**args)

    def paths(self) -> list[str]:
        """Every file of the workspace as a relative POSIX path, sorted (what list_files lists
        from the root, hidden directories and caches left out)."""
        return [self._rel(p) for p in self._files(".")]

    def resolve(self, rel: str, *, must_exist: bool = True) -> Path:
        if not rel or "\0" in rel:
            raise ToolError("empty or invalid path")
        if rel.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", rel):
            raise ToolError(f"{rel}: absolute paths are not allowed; use a path relative to the "
                            "repository root")
        if ".." in re.split(r"[\\/]+", rel):
            raise ToolError(f"{rel}: '..' is not allowed; paths stay inside the repository")
        path = (self.root / rel).resolve()
        if path != self.root and not path.is_relative_to(self.root):
            raise ToolError(f"{rel}: outside the repository")
        if must_exist and not path.exists():
            raise ToolError(f"{rel}: no such file or directory")
        return path

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _files(self, rel_dir: str) -> list[Path]:
        base = self.resolve(rel_dir)
        if not base.is_dir():
            raise ToolError(f"{rel_dir}: not a directory")
        out = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames
                                 if not d.startswith(".") and d != "__pycache__")
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.resolve().is_relative_to(self.root):  # no symlinks out
                    out.append(p)
        return out

    def _text(self, path: Path, rel: str) -> str:
        if path.is_dir():
            raise ToolError(f"{rel}: is a directory (use list_files)")
        data = path.read_bytes()
        if b"\0" in data:
            raise ToolError(f"{rel}: binary file, not shown")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise ToolError(f"{rel}: not UTF-8 text, not shown") from None

    # -- tools ------------------------------------------------------------------------------------
    def list_files(self, rel_dir: str, max_files: int) -> str:
        files = self._files(rel_dir)
        shown = [self._rel(p) for p in files[:max(1, max_files)]]
        more = len(files) - len(shown)
        return "\n".join(shown) + (f"\n... ({more} more)" if more > 0 else "") \
            if files else "(no files)"

    def read_file(self, rel_path: str, max_chars: int) -> str:
        text = self._text(self.resolve(rel_path), rel_path)
        if self.numbered:
            text = numbered_lines(text)
        limit = max(1, min(max_chars, MAX_READ_CHARS))
        if len(text) > limit:
            return text[:limit] + f"\n... (truncated: {len(text) - limit} more chars)"
        return text

    def grep(self, pattern: str, rel_dir: str, max_matches: int) -> str:
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ToolError(f"bad regular expression {pattern!r}: {exc}") from None
        hits = []
        for p in self._files(rel_dir):
            try:
                text = self._text(p, self._rel(p))
            except ToolError:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                if rx.search(line):
                    hits.append(f"{self._rel(p)}:{n}: {line}")
        if not hits:
            return "(no matches)"
        limit = max(1, max_matches)
        return "\n".join(hits[:limit]) + (f"\n... ({len(hits) - limit} more)"
                                          if len(hits) > limit else "")

    def write_file(self, rel_path: str, content: str) -> str:
        self._check_content(content)
        path = self.resolve(rel_path, must_exist=False)
        if path.is_dir():
            raise ToolError(f"{rel_path}: is a directory")
        if path.is_file():
            try:
                old = path.read_text(encoding="utf-8")
                _refuse_no_change("write_file", old, content)
                self._refuse_lint("write_file", rel_path, old, content)
            except UnicodeDecodeError:  # a binary file: overwritten as any other
                pass
        else:
            self._refuse_lint("write_file", rel_path, "", content)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return f"wrote {self._rel(path)} ({len(content)} chars)"

    def edit(self, rel_path: str, search: str, replace: str) -> str:
        path = self.resolve(rel_path)
        text = self._text(path, rel_path)
        if not search.strip():
            raise ToolError("edit: search must not be empty (use write_file for a new file)")
        new, how = fuzzy_replace(text, search, replace)
        _refuse_no_change("edit", text, new)
        self._check_content(new)
        self._refuse_lint("edit", rel_path, text, new)
        path.write_text(new, encoding="utf-8")
        return f"edited {self._rel(path)} ({how})"

    def replace_lines(self, rel_path: str, start: int, end: int, content: str) -> str:
        """Lines start..end (1-based, inclusive) of the file replaced by `content`, re-indented
        like an edit's replacement (its first non-blank line at the depth of the first replaced
        non-blank line, the file's indentation unit and line ending); returns what changed with
        the new lines numbered, two lines of context either side."""
        path = self.resolve(rel_path)
        text = self._text(path, rel_path)
        lines = text.splitlines(keepends=True)
        if not 1 <= start <= end:
            raise ToolError(f"replace_lines: need 1 <= start <= end, got start={start} "
                            f"end={end}")
        if end > len(lines):
            raise ToolError(f"replace_lines: {rel_path} has {len(lines)} lines; end={end} is "
                            "past its last line")
        old = lines[start - 1:end]
        new_lines = content.splitlines()
        anchor = next((ln for ln in old if ln.strip()), old[0])
        first = next((ln for ln in new_lines if ln.strip()), "")
        content_unit = _indent_unit(new_lines)  # the content is both the "search" and the edit
        conformed = _conform(new_lines, first, anchor, _indent_unit(text.splitlines()),
                             content_unit, content_unit)
        eol = "\r\n" if anchor.endswith("\r\n") else "\n"
        ending = eol if old[-1].endswith("\n") else ""
        block = eol.join(conformed) + (ending if conformed else "")
        out = "".join(lines[:start - 1]) + block + "".join(lines[end:])
        _refuse_no_change("replace_lines", text, out)
        self._check_content(out)
        self._refuse_lint("replace_lines", rel_path, text, out)
        path.write_text(out, encoding="utf-8")
        shown_from = max(1, start - 2)
        after = out.splitlines()
        view = numbered_lines("\n".join(after[shown_from - 1:start - 1 + len(conformed) + 2]),
                              first=shown_from)
        return (f"replaced lines {start}-{end} of {self._rel(path)} with {len(conformed)} "
                f"line(s):\n{view}")

    def _refuse_lint(self, tool: str, rel_path: str, old: str, new: str) -> None:
        """With lint on, a write to a `.py` file that adds lint problems (`new_lint_problems`) is
        refused, the file left as it was."""
        if not self.lint or not rel_path.endswith(".py"):
            return
        added = new_lint_problems(old, new, rel_path)
        if added:
            shown = "; ".join(added[:3]) + (f"; and {len(added) - 3} more" if len(added) > 3
                                            else "")
            raise ToolError(f"{tool}: not applied, {rel_path} is unchanged: the new text would "
                            f"have {shown}")

    def _check_content(self, content: str) -> None:
        if len(content) > self.max_write_chars:
            raise ToolError(f"content too large: {len(content)} chars (limit "
                            f"{self.max_write_chars})")
        if "\0" in content:
            raise ToolError("content contains NUL bytes: only text files can be written")


LINT_PROBLEMS = ("UndefinedName", "UndefinedLocal", "UndefinedExport", "DuplicateArgument")
"""pyflakes' messages an edit may not add besides a syntax error: SWE-agent's edit linter refuses
edits that add flake8's E999 (syntax), F821 (undefined name), F822 (undefined name in __all__) or
F831 (duplicate argument) (Yang et al., "SWE-agent: Agent-Computer Interfaces Enable Automated
Software Engineering", NeurIPS 2024, section 3 and its linter configuration); F821/F822/F831 are
pyflakes' UndefinedName, UndefinedExport and DuplicateArgument, and UndefinedLocal (a name read
before its assignment in the same scope) is F823."""


def lint_problems(text: str, filename: str = "<module>") -> list[str]:
    """The problems in Python source `text` an edit may not add: a syntax error (then only it:
    nothing else can be checked), else pyflakes' messages of `LINT_PROBLEMS`, each as
    `line N: MESSAGE` (e.g. "line 5: undefined name 'ares'"), in line order. pyflakes, the
    library behind flake8's F codes, does the analysis; nothing is run."""
    from pyflakes import checker

    try:
        tree = ast.parse(text, filename)
    except (SyntaxError, ValueError) as exc:  # ValueError: NUL bytes
        line = getattr(exc, "lineno", None)
        return [f"line {line}: SyntaxError: {getattr(exc, 'msg', exc)}" if line
                else f"SyntaxError: {exc}"]
    found = checker.Checker(tree, filename=filename).messages
    found = [m for m in found if type(m).__name__ in LINT_PROBLEMS]
    return [f"line {m.lineno}: {m.message % m.message_args}"
            for m in sorted(found, key=lambda m: (m.lineno, m.col))]


def new_lint_problems(old: str, new: str, filename: str = "<module>") -> list[str]:
    """The lint problems (`lint_problems`) of `new` that `old` did not have, compared without
    their line numbers (an edit moves lines), so a file that was already broken can still be
    edited as long as nothing is added. When `old` does not parse, only a new syntax error counts
    (what its syntax error hid cannot be told apart from what the edit adds)."""
    def key(problem: str) -> str:
        return problem.split(": ", 1)[-1]

    before: dict[str, int] = {}
    for p in lint_problems(old, filename) if old else []:
        before[key(p)] = before.get(key(p), 0) + 1
    found = lint_problems(new, filename)
    if any(k.startswith("SyntaxError") for k in before):
        found = [p for p in found if key(p).startswith("SyntaxError")]
    added = []
    for p in found:
        if before.get(key(p), 0):
            before[key(p)] -= 1
        else:
            added.append(p)
    return added


def _refuse_no_change(tool: str, old: str, new: str) -> None:
    """A write that would leave the file as it is is refused (a tool error), not run: it changes
    nothing, so it must neither count as a write nor reset loop detection (which forgets the
    calls seen once a file changes). The 135M model's commonest edit replaced a line by itself."""
    if old == new:
        raise ToolError(f"{tool}: nothing changed: the new text equals the file's text; change "
                        "what is wrong")


def numbered_lines(text: str, first: int = 1) -> str:
    """`text` with each line after its number and a bar (`  12| x = 1`), numbers from `first`:
    the line-numbered view of reads, which `replace_lines` addresses."""
    return "\n".join(f"{n:>4}| {line}" for n, line in enumerate(text.splitlines(), first))


def clip_observation(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (0: not cut), saying how much was left out."""
    if limit <= 0 or len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more chars not shown)"


def _norm(line: str) -> str:
    return " ".join(line.split())


def _lead(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def _indent_unit(lines: list[str]) -> str:
    """The indentation one nesting level adds in `lines`: a tab when indented lines start with
    tabs, else the smallest positive step between the space indentations (4 when none)."""
    leads = [_lead(ln) for ln in lines if ln.strip()]
    if any(lead.startswith("\t") for lead in leads):
        return "\t"
    widths = sorted({len(lead) for lead in leads})
    steps = [b - a for a, b in zip([0] + widths, widths) if b > a]
    return " " * (min(steps) if steps else 4)


def _levels(lead: str, unit: str) -> float:
    """Nesting depth of an indentation in units (a tab counts as one level)."""
    if unit == "\t":
        return lead.count("\t") + lead.count(" ") / 4
    return lead.count("\t") + lead.count(" ") / len(unit)


def _conform(replace: list[str], searched_first: str, matched_first: str,
             file_unit: str, search_unit: str, edit_unit: str) -> list[str]:
    """The replace lines re-indented into the file's own style: each line keeps its depth
    relative to the searched text's first line, written in the file's indentation unit (tabs in
    a tab-indented file) from the depth of the matched line."""
    base = _levels(_lead(matched_first), file_unit)
    ref = _levels(_lead(searched_first), search_unit)
    out = []
    for ln in replace:
        if not ln.strip():
            out.append("")
            continue
        depth = max(0, round(base + _levels(_lead(ln), edit_unit) - ref))
        out.append(file_unit * depth + ln.lstrip(" \t"))
    return out


def fuzzy_replace(text: str, search: str, replace: str) -> tuple[str, str]:
    """Replace one occurrence of `search` in `text`; returns (new text, how it matched).

    1. exact: the search text occurs exactly once;
    2. whitespace: one window of lines equal to the search lines after normalising whitespace
       (indentation, runs of spaces, trailing blanks);
    3. fuzzy: the window of as many lines with the highest similarity (difflib ratio of the
       normalised lines), when it is at least FUZZY_THRESHOLD and clearly ahead of the runner-up.
    In 2 and 3 the matched lines are replaced by the replace text, re-indented into the file's
    own conventions: each line keeps its depth relative to the searched text, written with the
    file's indentation unit (tabs stay tabs) and the file's line ending (CRLF stays CRLF). Raises
    ToolError when nothing fits.
    """
    file_unit = _indent_unit(text.splitlines())
    search_unit = _indent_unit(search.splitlines())
    edit_unit = _indent_unit(replace.splitlines())
    wrong_char = " " if file_unit == "\t" else "\t"
    same_style = not any(ln.startswith(wrong_char) and ln.strip() for ln in replace.splitlines())
    count = text.count(search)
    # An exact match is spliced as written unless the replacement is indented in another style
    # than the file (spaces into a tab-indented file): that goes through the line-based path.
    if count == 1 and same_style:
        return text.replace(search, replace, 1), "exact match"
    if count > 1:
        raise ToolError(f"edit: the search text occurs {count} times; include more surrounding "
                        "lines so it matches once")
    lines = text.splitlines(keepends=True)
    want = [ln for ln in search.splitlines()]
    while want and not want[0].strip():
        want.pop(0)
    while want and not want[-1].strip():
        want.pop()
    if not want:
        raise ToolError("edit: search must not be empty")
    n = len(want)
    target = [_norm(w) for w in want]
    windows = [(i, [_norm(ln) for ln in lines[i:i + n]]) for i in range(len(lines) - n + 1)]
    same = [i for i, w in windows if w == target]
    if len(same) > 1:
        raise ToolError(f"edit: the search text matches {len(same)} places (ignoring "
                        "whitespace); include more surrounding lines")
    if same:
        start, how = same[0], "whitespace-insensitive match"
    else:
        joined = "\n".join(target)
        scored = sorted(((difflib.SequenceMatcher(None, "\n".join(w), joined).ratio(), i)
                         for i, w in windows), reverse=True)
        if not scored:
            raise ToolError("edit: the search text is longer than the file")
        best, start = scored[0]
        runner_up = scored[1][0] if len(scored) > 1 else 0.0
        if best < FUZZY_THRESHOLD or best - runner_up < 0.02:
            shown = "".join(lines[start:start + n]).rstrip("\n")
            raise ToolError(f"edit: search text not found (closest: lines {start + 1}-"
                            f"{start + n}, similarity {best:.2f}):\n{shown}")
        how = f"fuzzy match, similarity {best:.2f}"
    matched = lines[start:start + n]
    first = next(k for k, w in enumerate(want) if w.strip())
    new_lines = _conform(replace.splitlines(), want[first], matched[first], file_unit,
                         search_unit, edit_unit)
    eol = "\r\n" if matched[first].endswith("\r\n") else "\n"
    ending = eol if matched[-1].endswith("\n") else ""
    block = eol.join(new_lines) + (ending if new_lines else "")
    out = "".join(lines[:start]) + block + "".join(lines[start + n:])
    return out, f"{how}, lines {start + 1}-{start + n}"


_JSON_TYPES = {str: "string", int: "integer"}


def anchor_lines(text: str, *, max_chars: int = 200) -> list[str]:
    """The lines of `text` an anchored edit may search for: each non-blank line without its
    indentation and trailing blanks, kept when it occurs exactly once in the whole text (so the
    edit tool's exact match takes it, and the replacement inherits the line's indentation) and is
    at most `max_chars` long; in file order."""
    out: list[str] = []
    for line in text.splitlines():
        body = line.strip()
        if body and len(body) <= max_chars and body not in out and text.count(body) == 1:
            out.append(body)
    return out


def tool_call_schema(tools: dict = TOOLS, files: list[str] | None = None,
                     anchors: dict[str, list[str]] | None = None) -> dict:
    """The JSON schema of one valid assistant message of the protocol, built from `TOOLS`: one of
    each tool's call object (its exact args, the required ones required, no others) or the final
    answer. Backends turn it into a grammar (`GenerationRequest.json_schema`).

    `files`: the workspace's files (relative POSIX paths, e.g. `Workspace.paths()`). Given, an
    arg that must name an existing file (`rel_path` of every tool but write_file, which may
    create one) is one of them (`enum`) and a directory arg (`rel_dir`) one of their directories,
    so a constrained model cannot call a tool on a path that is not there (a tool error
    unconstrained). Without it paths are any string.

    `anchors` (anchored edits): file -> the lines an `edit` of it may search for (`anchor_lines`
    of its text). Given, `edit` becomes one call per file with anchors, its `rel_path` that file
    and its `search` one of them (`enum`), so every constrained edit matches exactly one line;
    `replace` stays free. A file without anchors cannot be edited (write_file still can).

    It accepts what `parse_message` accepts, with one difference JSON Schema cannot express: an
    integral float (`1.0`) is an integer to the schema, not to the parser. Grammars built from the
    schema write integers as digits only, so constrained output never has it. Properties are in
    the order grammars write them: type, name, args. `tools`: the tool set (default TOOLS; see
    `toolset`)."""
    known: dict[str, dict] = {}
    if files is not None:
        dirs = sorted({posixpath.dirname(f) or "." for f in files} | {"."})
        known = {"rel_path": {"enum": sorted(files)}, "rel_dir": {"enum": dirs}}
    calls = []
    for name, (required, optional, _) in tools.items():
        args = {**{k: _JSON_TYPES[t] for k, t in required.items()},
                **{k: _JSON_TYPES[type(v)] for k, v in optional.items()}}
        props = {k: known[k] if k in known and name not in CREATING_TOOLS else {"type": t}
                 for k, t in args.items()}
        variants = [props]
        if name == "edit" and anchors is not None:
            variants = [{**props, "rel_path": {"const": path}, "search": {"enum": lines}}
                        for path, lines in sorted(anchors.items()) if lines]
        calls += [{
            "type": "object",
            "properties": {
                "type": {"const": "tool_call"},
                "name": {"const": name},
                "args": {"type": "object", "properties": variant,
                         "required": list(required), "additionalProperties": False},
            },
            "required": ["type", "name", "args"], "additionalProperties": False,
        } for variant in variants]
    final = {"type": "object",
             "properties": {"type": {"const": "final"}, "message": {"type": "string"}},
             "required": ["type"], "additionalProperties": False}
    return {"title": "tool_call", "oneOf": [*calls, final]}


def describe_tools(tools: dict = TOOLS) -> str:
    """One line per tool of `tools` (default TOOLS) for the system prompt: the name, each arg
    with its JSON type (and default), what it does, e.g.
    `- read_file(rel_path: string, max_chars: integer = 4000): the text of a file`.

    Args are named with their types, not shown as a JSON call with placeholder values: small
    models copy such placeholders verbatim (writing "CONTENT" to a file named "REL_PATH" was the
    commonest edit of the 135M model in the repair ablation); the prompt's one example call shows
    the JSON form."""
    out = []
    for name, (required, optional, help_text) in tools.items():
        args = [f"{k}: {_JSON_TYPES[t]}" for k, t in required.items()]
        args += [f"{k}: {_JSON_TYPES[type(v)]} = {json.dumps(v)}" for k, v in optional.items()]
        out.append(f"- {name}({', '.join(args)}): {help_text}")
    return "\n".join(out)
