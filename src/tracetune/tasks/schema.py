"""The task and suite records (the loaders and the split live beside them in `tasks`)."""

from __future__ import annotations

from dataclasses import dataclass, field

FUNCTIONS, REPAIR, LOGGED = "functions", "repair", "logged"
KINDS = (FUNCTIONS, REPAIR, LOGGED)
"""Suite kinds: write code from a spec, fix a bug in a small repository, or answer a logged
production request (built from an interaction store by `tracetune logs suite`)."""


@dataclass(frozen=True)
class Task:
    id: str
    spec: str
    names: tuple[str, ...]
    reference: str
    tests: str
    tags: tuple[str, ...] = ()
    difficulty: int = 1
    file: str = ""
    """Repair tasks: the module under repair (its tests import it by this name)."""
    buggy: str = ""
    """Repair tasks: the module's buggy source (`reference` is the fixed one)."""
    chat: str = ""
    """Logged tasks: the request's chat messages as JSON text ([{"role", "content"}, ...]);
    `reference` is the logged answer, and `tests` (optional) the tests its code must pass."""
    order: int | None = None
    """Streams (`by = "field"`): the task's place in a stated order (None: not stated)."""
    created_at: str = ""
    """Streams (`by = "field"`): when the task arose, ISO 8601 text; compared as text, so one
    format and time zone across a suite."""

    @property
    def module(self) -> str:
        """The module the tests import: the repair file's stem, else `solution`."""
        return self.file[:-3] if self.file.endswith(".py") else "solution"

    @property
    def is_repair(self) -> bool:
        return bool(self.buggy)

    @property
    def messages(self) -> list[dict]:
        """Logged tasks: the request's chat messages ([] for other kinds)."""
        import json

        return json.loads(self.chat) if self.chat else []


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    description: str
    tasks: tuple[Task, ...] = field(default_factory=tuple)
    kind: str = FUNCTIONS
    """functions (write code from a spec) or repair (fix a bug in a small repository)."""
    train_pct: int = 50
    """The suite's train share for SUITE:train / SUITE:test."""

    @property
    def is_repair(self) -> bool:
        return self.kind == REPAIR
