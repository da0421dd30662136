"""Plain dataclasses shared by every stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion."""

    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    max_tokens: int = 512
    """Upper bound on completion tokens."""
    stop: tuple[str, ...] = ()
    """Strings that end the completion (not included in the text)."""

    def validate(self) -> None:
        """The one definition of the sampling ranges (every command that samples uses it).
        Raises TracetuneError naming the setting: temperature a finite number >= 0, top_p
        within (0, 1], max_tokens at least 1."""
        import math

        from tracetune.errors import TracetuneError

        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise TracetuneError(f"temperature must be a number >= 0 (0 = greedy), not "
                                 f"{self.temperature}")
        if not (isinstance(self.top_p, (int, float)) and math.isfinite(self.top_p)
                and 0 < self.top_p <= 1):
            raise TracetuneError(f"top_p must be within (0, 1], not {self.top_p}")
        if self.max_tokens < 1:
            raise TracetuneError(f"max_tokens must be at least 1, not {self.max_tokens}")


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    """Per-request seed: the same request and seed give the same text on the same backend."""
    json_schema: dict | None = field(default=None, hash=False)
    """Decode only JSON valid under this schema (constrained decoding): llamacpp through a GBNF
    grammar, openai through `response_format`, hf through outlines. A backend that cannot honour
    it raises ModelError; the scripted ones (replay, oracle) ignore it. None: unconstrained.
    Left out of the hash (a dict has none), kept in equality."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


FINISH_REASONS = ("stop", "length", "error")


def finish_reason_of(raw: str | None, text: str | None) -> str:
    """A backend's own finish reason mapped onto `FINISH_REASONS`: "length" (also OpenAI's
    max_tokens cut) stays length; no text at all is an error; anything else a server may send
    (content_filter, tool_calls...) that is not a normal stop is an error."""
    if raw == "length":
        return "length"
    if text is None:
        return "error"
    return "stop" if raw in (None, "", "stop", "eos", "end_turn", "stop_sequence") else "error"


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    latency_s: float
    """Wall-clock seconds from request to full text (for batches: the batch's time / its size)."""
    finish_reason: str = "stop"
    """Why generation stopped (`FINISH_REASONS`): stop (end of turn or a stop string), length
    (cut at max_tokens: the text is truncated), or error (the backend returned no text)."""


def chat(prompt: str, system: str | None = None) -> tuple[Message, ...]:
    """The messages of a one-turn chat."""
    msgs = [Message("system", system)] if system else []
    return tuple(msgs + [Message("user", prompt)])


@dataclass
class Attempt:
    """One model call of an episode: what the model saw and said, and what was checked.

    The one row type from the agent (workflows build it) to the store (table `attempt`, one row
    each) to the miner (which reads it back with its episode). Guarded workflows make one per
    attempt of a step; the repair agent one per assistant message (step "repair", attempt =
    iteration)."""

    step: str
    """The workflow step (impl, g_test, g_impl, repair)."""
    attempt: int
    """1-based attempt of the step (repair: the iteration)."""
    seed: int
    """The request's sampling seed (derived from the episode seed, step and attempt)."""
    messages: list[dict]
    """The chat messages the model saw ([{"role", "content"}])."""
    raw_output: str
    """The completion text as generated."""
    code: str
    """What the checks ran: extracted code, or (agent steps) the message as canonical JSON."""
    passed: bool
    """Every check passed (agent steps: a valid protocol message whose tool did not fail)."""
    guards: list[dict]
    """Check verdicts in order: [{"guard", "passed", "feedback", "details"}]; a sandbox run's
    details are `SandboxResult.verdict()`."""
    feedback: str
    """What the model was told next (the failed check's feedback; agent steps: the tool result)."""
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    """Generation wall-clock seconds."""
    check_s: float
    """Seconds spent checking (guards, tools, tests)."""
    facts: dict | None = None
    """Agent steps (tool protocol): {"kind": tool_call | final | parse_error | loop, "name",
    "tool_ok", "tests": pass | fail | None}; None for guarded-workflow attempts."""
    finish_reason: str | None = None
    """Why generation stopped: stop, length (the output was cut at max_tokens) or error
    (`Completion.finish_reason`); None for attempts recorded before it was kept."""
    created_at: float = 0.0
    """When the store recorded it (unix seconds; 0 until stored)."""


@dataclass
class EpisodeOutcome:
    """What one episode of a workflow produced (the Workflow protocol's return value)."""

    success: bool
    """The task's own hidden tests pass on the final code."""
    failed_step: str | None
    """The step that gave up (guarded workflows), or why the agent stopped (max_iters, loop,
    final); None on success."""
    wrong_tests: bool | None
    """tdd: the accepted generated tests fail on the reference implementation (None: no tests)."""
    attempts: list[Attempt] = field(default_factory=list)
    duration_s: float = 0.0
    final_check: dict | None = None
    """The final sandbox verdict (`SandboxResult.verdict()`), None when no step was accepted."""
    metrics: dict | None = None
    """Agent workflows: per-episode counts (parse_errors, loop_detections, wrote, steps...)."""

    @property
    def prompt_tokens(self) -> int:
        return sum(a.prompt_tokens for a in self.attempts)

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.attempts)


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (same on every machine and Python version):
    the first 4 bytes of sha256(":".join(parts)), top bit cleared."""
    import hashlib

    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
