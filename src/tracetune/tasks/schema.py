"""The task and suite records (the loaders and the split live beside them in `tasks`)."""

from __future__ import annotations

from dataclasses import dataclass, field

FUNCTIONS, REPAIR = "functions", "repair"
KINDS = (FUNCTIONS, REPAIR)
"""Suite kinds: write code from a spec, or fix a bug in a small repository."""


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

    @property
    def module(self) -> str:
        """The module the tests import: the repair file's stem, else `solution`."""
        return self.file[:-3] if self.file.endswith(".py") else "solution"

    @property
    def is_repair(self) -> bool:
        return bool(self.buggy)


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
