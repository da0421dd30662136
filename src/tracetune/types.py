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


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[Message, ...]
    params: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    """Per-request seed: the same request and seed give the same text on the same backend."""


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Completion:
    text: str
    usage: Usage
    latency_s: float
    """Wall-clock seconds from request to full text (for batches: the batch's time / its size)."""
    finish_reason: str = "stop"
    """stop, length, or error."""


def chat(prompt: str, system: str | None = None) -> tuple[Message, ...]:
    """The messages of a one-turn chat."""
    msgs = [Message("system", system)] if system else []
    return tuple(msgs + [Message("user", prompt)])
