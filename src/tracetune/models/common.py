"""Small helpers shared by backends."""

from __future__ import annotations

import time
from typing import Sequence

from tracetune.types import Completion, GenerationRequest, Usage


class Scripted:
    """Base of the scripted backends (replay, oracle): `_text(request)` gives the answer; usage
    counts whitespace-separated words as tokens (a script has no tokenizer). A request's JSON
    schema is ignored: a script says what it says, and the caller's parser judges it as it would
    a model's constrained output."""

    def _text(self, request: GenerationRequest) -> str:
        raise NotImplementedError

    def _answer(self, request: GenerationRequest) -> tuple[str, str]:
        """(text, finish reason); scripted text ends normally unless a backend says otherwise."""
        return self._text(request), "stop"

    def generate(self, request: GenerationRequest) -> Completion:
        t0 = time.perf_counter()
        text, finish = self._answer(request)
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        return Completion(text=text, usage=Usage(prompt_words, len(text.split())),
                          latency_s=time.perf_counter() - t0, finish_reason=finish)

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass


def apply_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Cut `text` at the first stop string; returns (text, whether a stop string was found)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
