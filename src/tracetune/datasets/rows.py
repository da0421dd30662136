"""The mined row: one training example (SFT, DPO pair or failure->fix pair) and its JSON form.

`Row.to_dict()` is the dataset's row schema (version `SCHEMA_VERSION`, written to
`rows/{kind}.jsonl`), its keys in this order:
  sft, fix  {"id", "kind", "step", "task", "tiers", "prompt", "completion", "code", "provenance"}
  dpo       {"id", "kind", "step", "task", "tiers", "prompt", "chosen", "rejected", "code",
             "provenance"}
The order is part of the format: datasets mined from the same runs are identical byte for byte,
whichever release of the miner wrote them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

SCHEMA_VERSION = 1
KINDS = ("sft", "dpo", "fix")


def row_id(*parts: object) -> str:
    """A row's id: the first 16 hex digits of sha1 over its content (the miner passes the kind,
    the prompt and the target message(s)), so the same example always gets the same id."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Row:
    """One mined example. Raises ValueError when built with an unknown kind or with the wrong
    target fields for its kind (sft/fix: completion only; dpo: chosen and rejected only)."""

    id: str
    """`row_id` of the row's content."""
    kind: str
    """sft, dpo or fix."""
    step: str
    """The workflow step the row teaches (impl, g_test, g_impl, repair)."""
    task: str
    """Task id."""
    tiers: list[str]
    """The quality tiers the source attempt satisfies (see tracetune.datasets.mine)."""
    prompt: list[dict]
    """Chat messages up to the assistant's turn ([{"role", "content"}])."""
    code: str
    """The program the row teaches (dedup and leakage checks read it)."""
    provenance: dict
    """Where it came from: {"source", "run_id", "task", "trial", "attempt", "step", "model",
    "episode_seed", "guard_result", "timestamp"}, dpo rows adding the other side's origin."""
    completion: dict | None = None
    """sft/fix: the target assistant message."""
    chosen: dict | None = None
    """dpo: the preferred assistant message."""
    rejected: dict | None = None
    """dpo: the dispreferred assistant message."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown row kind {self.kind!r} ({', '.join(KINDS)})")
        pair = self.kind == "dpo"
        has = (self.completion is not None, self.chosen is not None, self.rejected is not None)
        if has != ((False, True, True) if pair else (True, False, False)):
            raise ValueError(f"a row of kind {self.kind} needs " + (
                "chosen and rejected (and no completion)" if pair
                else "a completion (and no chosen or rejected)"))

    @property
    def targets(self) -> list[dict]:
        """The assistant message(s) the row trains on: [completion] or [chosen, rejected]."""
        return [self.chosen, self.rejected] if self.kind == "dpo" else [self.completion]

    def to_dict(self) -> dict:
        """The row's JSON object (module docstring: keys and their order)."""
        d: dict = {"id": self.id, "kind": self.kind, "step": self.step, "task": self.task,
                   "tiers": self.tiers, "prompt": self.prompt}
        if self.kind == "dpo":
            d["chosen"], d["rejected"] = self.chosen, self.rejected
        else:
            d["completion"] = self.completion
        d["code"], d["provenance"] = self.code, self.provenance
        return d
