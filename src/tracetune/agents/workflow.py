"""Guarded workflows (AtomicGuard style): a small DAG of steps, each a prompt plus guards.

A step's attempt is: render the prompt, ask the model, extract code, run the guards. A failed guard's
feedback goes into the next attempt's prompt, up to `max_attempts`. Steps run in dependency order;
a step's prompt may use the accepted output of the steps it `needs`.

Built-in workflows:
  direct  impl (spec -> implementation; guards: syntax + the acceptance tests)
  tdd     g_test (spec -> pytest tests; guards: syntax, imports the target, >= N tests)
          -> g_impl (spec + generated tests -> implementation; guards: syntax + generated tests)
The episode succeeds when the final implementation passes the task's hidden acceptance tests.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

from tracetune.agents.configs import DirectConfig, TDDConfig
from tracetune.agents.extract import extract_code, sanitize
from tracetune.agents.guards import (MODULE, Guard, GuardResult, StepContext, SyntaxGuard,
                                     TestGuard, TestSuiteGuard)
from tracetune.errors import TracetuneError
from tracetune.models import Model
from tracetune.sandbox import Job, Sandbox
from tracetune.tasks import Task
from tracetune.types import (Attempt, EpisodeOutcome, GenerationRequest, Message, SamplingParams,
                             derive_seed)

IMPL_PROMPT = (
    "{spec}\n\n"
    "Write the implementation in Python. Reply with the complete code in a single ```python code "
    "block."
)
TEST_PROMPT = (
    "{spec}\n\n"
    "Write pytest unit tests for this specification. The implementation is in the module "
    "`" + MODULE + "`: start with `from " + MODULE + " import {names}`. Write at least {min_tests} "
    "test functions named test_..., covering normal use and edge cases. Reply with only the test "
    "code in a single ```python code block."
)
IMPL_FROM_TESTS_PROMPT = (
    "{spec}\n\n"
    "Write the implementation in Python so that these tests pass (they import it from the module "
    "`" + MODULE + "`):\n```python\n{g_test}\n```\n\n"
    "Reply with the complete implementation in a single ```python code block."
)
RETRY_PROMPT = (
    "That answer failed a check:\n{feedback}\n\n"
    "Reply with the corrected complete code in a single ```python code block."
)


@dataclass(frozen=True)
class Step:
    name: str
    prompt: str
    """Template: {spec}, {names}, {min_tests} and {<needed step>} are filled in."""
    guards: tuple[Guard, ...]
    needs: tuple[str, ...] = ()
    max_attempts: int = 3
    writes_tests: bool = False
    """The step's output is a test file (changes how code is extracted)."""


@dataclass(frozen=True)
class GuardedWorkflow:
    """A small DAG of guarded steps (the Workflow protocol's direct and tdd)."""

    name: str
    steps: tuple[Step, ...]
    impl_step: str
    """The step whose accepted output is the final implementation."""
    tests_step: str | None = None
    """The step that writes tests (checked against the reference to spot wrong tests)."""
    min_tests: int = 3

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.steps:  # steps are listed in a valid order: every need comes first
            missing = [n for n in step.needs if n not in seen]
            if missing:
                raise TracetuneError(f"workflow {self.name}: step {step.name} needs "
                                     f"{', '.join(missing)} before it")
            seen.add(step.name)
        if self.impl_step not in seen:
            raise TracetuneError(f"workflow {self.name}: no step named {self.impl_step}")

    def run(self, task: Task, model: Model, sandbox: Sandbox, *, params: SamplingParams,
            seed: int, on_attempt: Callable[[Attempt], None] | None = None) -> EpisodeOutcome:
        return run_episode(task, self, model, sandbox, params=params, seed=seed,
                           on_attempt=on_attempt)


def direct(config: DirectConfig) -> GuardedWorkflow:
    """spec -> implementation; guards: syntax, then the task's hidden tests."""
    return GuardedWorkflow("direct", (
        Step("impl", IMPL_PROMPT, (SyntaxGuard(), TestGuard()),
             max_attempts=config.max_attempts),
    ), impl_step="impl")


def tdd(config: TDDConfig) -> GuardedWorkflow:
    """g_test (spec -> tests) then g_impl (spec + those tests -> implementation)."""
    return GuardedWorkflow("tdd", (
        Step("g_test", TEST_PROMPT, (TestSuiteGuard(config.min_tests),),
             max_attempts=config.max_attempts, writes_tests=True),
        Step("g_impl", IMPL_FROM_TESTS_PROMPT, (SyntaxGuard(), TestGuard(source="g_test")),
             needs=("g_test",), max_attempts=config.max_attempts),
    ), impl_step="g_impl", tests_step="g_test", min_tests=config.min_tests)


MAX_OUTPUT_CHARS = 200_000  # a runaway completion is kept only up to this length
FENCE_END = "\n```\n"
"""Generation stops when the first code block closes: the code is all a step needs, and small
models otherwise ramble on (explanations, repeated blocks) until max_tokens."""


def run_episode(task: Task, workflow: GuardedWorkflow, model: Model, sandbox: Sandbox, *,
                params: SamplingParams, seed: int,
                on_attempt: Callable[[Attempt], None] | None = None) -> EpisodeOutcome:
    """Run one task through the workflow. Model errors propagate; everything the model writes
    (no code, huge output, a hanging program) becomes a failed attempt with a reason."""
    t0 = time.perf_counter()
    outputs: dict[str, str] = {}
    records: list[Attempt] = []
    ctx = StepContext(task, sandbox, outputs)
    failed_step = None
    for step in workflow.steps:
        accepted = _run_step(step, task, workflow, model, ctx, params, seed, records, on_attempt)
        if accepted is None:
            failed_step = step.name
            break
        outputs[step.name] = accepted
    wrong_tests = None
    if workflow.tests_step and workflow.tests_step in outputs:
        ref = sandbox.run(Job.tests(outputs[workflow.tests_step], module=task.reference,
                                    module_name=MODULE))
        wrong_tests = not ref.passed
    final = None
    success = False
    if failed_step is None:
        impl = next(s for s in workflow.steps if s.name == workflow.impl_step)
        if any(isinstance(g, TestGuard) and g.source is None for g in impl.guards):
            # The acceptance tests were this step's own guard, and its accepted code passed them.
            final = [r for r in records if r.step == impl.name][-1].guards[-1]["details"]
            success = True
        else:
            check = sandbox.run(Job.tests(task.tests, module=outputs[workflow.impl_step],
                                          module_name=MODULE))
            final = check.verdict()
            success = check.passed
    return EpisodeOutcome(success, failed_step, wrong_tests, records,
                          time.perf_counter() - t0, final)


def _run_step(step: Step, task: Task, workflow: GuardedWorkflow, model: Model,
              ctx: StepContext, params: SamplingParams, seed: int, records: list[Attempt],
              on_attempt: Callable[[Attempt], None] | None) -> str | None:
    fields = {"spec": task.spec, "names": ", ".join(task.names), "min_tests": workflow.min_tests,
              **{n: ctx.outputs[n].strip() for n in step.needs}}
    first = Message("user", step.prompt.format(**fields))
    messages = [first]
    params = dataclasses.replace(params, stop=tuple(params.stop) + (FENCE_END,))
    for attempt in range(1, step.max_attempts + 1):
        attempt_seed = derive_seed(seed, step.name, attempt)
        completion = model.generate(GenerationRequest(tuple(messages), params, attempt_seed))
        # Lone surrogates (from undecodable bytes) cannot be stored or written as UTF-8.
        raw = completion.text[:MAX_OUTPUT_CHARS].encode("utf-8", "replace").decode("utf-8")
        code = extract_code(raw, task.names, tests=step.writes_tests)
        if not step.writes_tests:
            code = sanitize(code)
        t_check = time.perf_counter()
        results: list[GuardResult] = []
        for guard in step.guards:
            result = guard.check(code, ctx)
            results.append(result)
            if not result.passed:
                break
        check_s = time.perf_counter() - t_check
        passed = all(r.passed for r in results)
        feedback = "" if passed else results[-1].feedback
        if not passed and completion.finish_reason == "length":
            feedback = (f"Your answer was cut off at the limit of {params.max_tokens} tokens; "
                        f"answer with shorter code only.\n{feedback}")
        record = Attempt(step.name, attempt, attempt_seed,
                         [m.to_dict() for m in messages], raw, code, passed,
                         [r.to_dict() for r in results], feedback,
                         completion.usage.prompt_tokens, completion.usage.completion_tokens,
                         completion.latency_s, check_s, finish_reason=completion.finish_reason)
        records.append(record)
        if on_attempt is not None:
            on_attempt(record)
        if passed:
            return code
        # Only the latest failed answer stays in context: small models have small windows.
        messages = [first, Message("assistant", raw),
                    Message("user", RETRY_PROMPT.format(feedback=feedback))]
    return None
