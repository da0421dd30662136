"""Scripted outputs from a JSONL file: deterministic model behaviour for tests and demos.

Each line is {"text": "...", "match": "optional substring", "finish_reason": "optional"}. A
request takes the first unused line whose `match` occurs in its last user message (a line without
`match` fits any request); `finish_reason` (stop, length or error; default stop) replays why a
recorded generation ended, e.g. a cut at max_tokens. A request's JSON schema is ignored (a script
is not decoded; see `common.Scripted`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from tracetune.errors import ModelError
from tracetune.models.common import Scripted
from tracetune.models.configs import ReplayConfig
from tracetune.types import FINISH_REASONS, GenerationRequest


class ReplayModel(Scripted):
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
            if entry.get("finish_reason", "stop") not in FINISH_REASONS:
                raise ModelError(f"{path}:{n}: finish_reason must be one of "
                                 f"{', '.join(FINISH_REASONS)}, not {entry['finish_reason']!r}")
            self._script.append(entry)
        self._used = [False] * len(self._script)
        self._lock = threading.Lock()

    def _text(self, request: GenerationRequest) -> str:
        return self._answer(request)[0]

    def _answer(self, request: GenerationRequest) -> tuple[str, str]:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        with self._lock:
            for i, entry in enumerate(self._script):
                if not self._used[i] and entry.get("match", "") in last_user:
                    self._used[i] = True
                    return entry["text"], entry.get("finish_reason", "stop")
            if self.config.strict:
                raise ModelError(f"replay script {self.config.path} has no unused output "
                                 f"for this request")
            return "", "stop"
