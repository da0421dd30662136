"""The `replay` workflow: a logged production request, answered again by the model under test
and graded against what was logged (tracetune.logs.suites builds its suites).

One attempt per episode: the task's chat messages go to the model as they were logged
(system, user and assistant turns; tool and function turns become user turns holding their
text). The answer is graded by
    tests       when the request carried runnable tests (the task's `tests`): the answer's
                code must pass them in the sandbox, like the direct workflow's check;
    similarity  otherwise, by default: RapidFuzz's normalized Indel similarity
                (`rapidfuzz.fuzz.ratio` / 100, i.e. 1 - Indel distance / (len(a) + len(b)),
                the measure Python's difflib.SequenceMatcher.ratio approximates) between the
                answer and the logged answer, passing at >= `threshold`;
    a model     `judge=SPEC`: the judge model is shown the request, the logged (reference)
                answer and the new one, and must answer PASS or FAIL (greedy).
The grade and its evidence (score, threshold, judge) are the attempt's guard record.
"""

from __future__ import annotations

import time
from typing import Callable

from tracetune.agents.configs import ReplayWorkflowConfig
from tracetune.agents.extract import extract_code, sanitize
from tracetune.agents.guards import StepContext, TestGuard
from tracetune.sandbox import Sandbox
from tracetune.tasks import Task
from tracetune.types import (Attempt, EpisodeOutcome, GenerationRequest, Message, SamplingParams,
                             derive_seed)

STEP = "answer"
JUDGE_PROMPT = (
    "You grade an assistant's answer to a request against a reference answer that was "
    "accepted in production. Reply PASS if the new answer does what the reference does "
    "(same substance; wording may differ), otherwise FAIL. Reply with one word.\n\n"
    "Request:\n{request}\n\nReference answer:\n{reference}\n\nNew answer:\n{answer}")


def similarity(a: str, b: str) -> float:
    """Normalized Indel similarity of two texts in [0, 1] (RapidFuzz `fuzz.ratio` / 100)."""
    from rapidfuzz import fuzz

    return fuzz.ratio(a.strip(), b.strip()) / 100.0


def chat_messages(task: Task) -> tuple[Message, ...]:
    """The task's logged messages as chat Messages (roles other than system/user/assistant
    become user turns, their content as text)."""
    from tracetune.logs.record import content_text

    out = []
    for m in task.messages:
        role = m.get("role")
        out.append(Message(role if role in ("system", "user", "assistant") else "user",
                           content_text(m.get("content"))))
    return tuple(out)


class ReplayWorkflow:
    name = "replay"

    def __init__(self, config: ReplayWorkflowConfig) -> None:
        self.config = config
        self._judge = None

    def _judge_model(self):
        if self._judge is None:
            from tracetune.models import load_model

            self._judge = load_model(self.config.judge)
        return self._judge

    def grade(self, task: Task, answer: str, sandbox: Sandbox) -> tuple[bool, dict, str]:
        """(passed, guard record, code checked) for one answer."""
        if task.tests:
            code = sanitize(extract_code(answer, task.names))
            result = TestGuard().check(code, StepContext(task, sandbox, {}))
            return result.passed, result.to_dict(), code
        if self.config.judge == "similarity":
            score = similarity(answer, task.reference)
            passed = score >= self.config.threshold
            return passed, {"guard": "similarity", "passed": passed,
                            "feedback": "" if passed else
                            f"similarity {score:.3f} to the logged answer is below "
                            f"{self.config.threshold}",
                            "details": {"score": round(score, 4),
                                        "threshold": self.config.threshold,
                                        "metric": "rapidfuzz.fuzz.ratio/100"}}, answer
        judge = self._judge_model()
        request = "\n".join(f"[{m.role}] {m.content}" for m in chat_messages(task))[-4000:]
        verdict = judge.generate(GenerationRequest(
            (Message("user", JUDGE_PROMPT.format(request=request,
                                                 reference=task.reference[:4000],
                                                 answer=answer[:4000])),),
            SamplingParams(temperature=0.0, max_tokens=4))).text.strip().upper()
        passed = verdict.startswith("PASS")
        return passed, {"guard": "judge", "passed": passed,
                        "feedback": "" if passed else f"the judge said {verdict[:20]!r}",
                        "details": {"judge": self.config.judge, "verdict": verdict[:20]}}, answer

    def run(self, task: Task, model, sandbox: Sandbox, *, params: SamplingParams, seed: int,
            on_attempt: Callable[[Attempt], None] | None = None) -> EpisodeOutcome:
        t0 = time.perf_counter()
        messages = chat_messages(task)
        attempt_seed = derive_seed(seed, STEP, 1)
        c = model.generate(GenerationRequest(messages, params, attempt_seed))
        raw = c.text.encode("utf-8", "replace").decode("utf-8")
        t_check = time.perf_counter()
        passed, guard, code = self.grade(task, raw, sandbox)
        record = Attempt(STEP, 1, attempt_seed, [m.to_dict() for m in messages], raw, code,
                         passed, [guard], guard["feedback"], c.usage.prompt_tokens,
                         c.usage.completion_tokens, c.latency_s,
                         time.perf_counter() - t_check, finish_reason=c.finish_reason)
        if on_attempt is not None:
            on_attempt(record)
        return EpisodeOutcome(passed, None if passed else STEP, None, [record],
                              time.perf_counter() - t0,
                              guard["details"] if task.tests else None)


def replay(config: ReplayWorkflowConfig) -> ReplayWorkflow:
    return ReplayWorkflow(config)



