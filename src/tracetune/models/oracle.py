"""`oracle`: a scripted teacher that knows each task's reference solution, so the whole pipeline
(rollouts, step-level mining, training) runs offline.

It is a model only once bound to a task (the runner binds it per episode):
  repair  list_files -> read_file (the module) -> edit (the reference fix; write_file if the edit
          failed) -> final, deciding each step from the conversation so far;
  direct  the reference implementation in one python block.
Usage counts whitespace-separated words as tokens (an oracle has no tokenizer).
"""

from __future__ import annotations

from typing import Sequence

from tracetune.errors import ModelError
from tracetune.models.common import Scripted
from tracetune.models.configs import OracleConfig
from tracetune.tasks import Task
from tracetune.types import Completion, GenerationRequest


class OracleModel:
    def __init__(self, config: OracleConfig | None = None, spec: str = "oracle") -> None:
        self.spec = spec
        self.config = config or OracleConfig()

    def bind(self, task: Task) -> BoundOracle:
        return BoundOracle(task, self.spec)

    def generate(self, request: GenerationRequest) -> Completion:
        raise ModelError("the oracle answers only within an episode that knows the task "
                         "(tracetune eval / rollouts bind it to each task)")

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass


class BoundOracle(Scripted):
    def __init__(self, task: Task, spec: str) -> None:
        self.task, self.spec = task, spec

    def _text(self, request: GenerationRequest) -> str:
        from tracetune.agents.repair import canonical_json, oracle_step

        messages = [m.to_dict() for m in request.messages]
        if self.task.is_repair:
            return canonical_json(oracle_step(self.task, messages))
        if any(m["role"] == "assistant" for m in messages) or "pytest" in messages[-1]["content"]:
            raise ModelError("the oracle writes reference implementations (workflow direct) "
                             "and repairs (workflow repair); it does not write tests or retries")
        return f"```python\n{self.task.reference.strip()}\n```"
