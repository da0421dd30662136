"""A quick evaluation: one greedy completion per task, checked by the task's tests in the sandbox.

Generation overlaps with checking: each completion's check is submitted to the sandbox as soon as
the completion exists, while the model writes the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tracetune.agents.extract import extract_code
from tracetune.models import Model
from tracetune.sandbox import Job, Sandbox, SandboxResult
from tracetune.tasks import Suite, Task
from tracetune.types import Completion, GenerationRequest, SamplingParams, chat

PROMPT = ("{spec}\n\nReply with the complete Python code in a single ```python code block. "
          "Define exactly the names asked for.")


@dataclass(frozen=True)
class TaskResult:
    task: Task
    completion: Completion
    code: str
    check: SandboxResult


def request_for(task: Task, params: SamplingParams, seed: int) -> GenerationRequest:
    return GenerationRequest(chat(PROMPT.format(spec=task.spec)), params, seed)


def evaluate(model: Model, suite: Suite, sandbox: Sandbox, *, params: SamplingParams,
             seed: int = 0, on_done: Callable[[Task], None] | None = None) -> list[TaskResult]:
    pending = []
    for i, task in enumerate(suite.tasks):
        completion = model.generate(request_for(task, params, seed + i))
        code = extract_code(completion.text, task.names)
        future = sandbox.submit(Job.tests(task.tests, module=code))
        pending.append((task, completion, code, future))
        if on_done is not None:
            future.add_done_callback(lambda _f, t=task: on_done(t))
    return [TaskResult(t, c, code, f.result()) for t, c, code, f in pending]
