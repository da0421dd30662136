"""Scripted outputs from a JSONL file: deterministic model behaviour for tests and demos.

Each line is {"text": "...", "match": "optional substring"}. A request takes the first unused line
whose `match` occurs in its last user message (a line without `match` fits any request).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Sequence

from tracetune.errors import ModelError
from tracetune.models.configs import ReplayConfig
from tracetune.types import Completion, GenerationRequest, Usage


class ReplayModel:
    def __init__(self, config: ReplayConfig, spec: str = "") -> None:
        self.spec = spec or f"replay:{config.path}"
        self.config = config
        path = Path(config.path)
        if not path.is_file():
            raise ModelError(f"replay file not found: {path}")
        self._script: list[dict] = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise ModelError(f"{path}:{n}: not valid JSON ({exc})") from None
            if isinstance(entry, str):
                entry = {"text": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
                raise ModelError(f'{path}:{n}: expected {{"text": "...", "match": "..."}}')
            self._script.append(entry)
        self._used = [False] * len(self._script)
        self._lock = threading.Lock()

    def generate(self, request: GenerationRequest) -> Completion:
        t0 = time.perf_counter()
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        with self._lock:
            for i, entry in enumerate(self._script):
                if not self._used[i] and entry.get("match", "") in last_user:
                    self._used[i] = True
                    text = entry["text"]
                    break
            else:
                if self.config.strict:
                    raise ModelError(f"replay script {self.config.path} has no unused output "
                                     f"for this request")
                text = ""
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        # Whitespace-separated words stand in for tokens: a replay has no tokenizer.
        return Completion(text=text, usage=Usage(prompt_words, len(text.split())),
                          latency_s=time.perf_counter() - t0)

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass
