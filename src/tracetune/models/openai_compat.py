"""Any OpenAI-compatible chat completions endpoint, through the official `openai` client.

Retries with exponential backoff (connection errors, 408/409/429/5xx) and timeouts are the client's
own; this backend adds a concurrency limit for batches and turns failures into one clear error.

A request's JSON schema (`GenerationRequest.json_schema`) is sent as OpenAI's structured-output
`response_format` ({"type": "json_schema", "json_schema": {"name", "schema", "strict": true}}),
which vLLM and llama.cpp's server turn into constrained decoding; a server that refuses it (400
or 422, as llama-cpp-python's own server does) is reported in one line naming the schema.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from tracetune.errors import ModelError
from tracetune.models.configs import OpenAIConfig
from tracetune.types import Completion, GenerationRequest, Usage, finish_reason_of


def response_format(schema: dict) -> dict:
    """OpenAI's structured-output `response_format` for a JSON schema; its name is the schema's
    title when that is a valid name (letters, digits, _ and -), else "response"."""
    title = schema.get("title")
    name = title if isinstance(title, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", title) \
        else "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


class OpenAIModel:
    def __init__(self, config: OpenAIConfig, spec: str = "") -> None:
        import openai

        self.spec = spec or f"openai:{config.model}@{config.base_url}"
        self.config = config
        self._openai = openai
        # Local servers ignore the key; hosted APIs read it from the named variable.
        api_key = os.environ.get(config.api_key_env) or "sk-no-key"
        self._client = openai.OpenAI(base_url=config.base_url, api_key=api_key,
                                     timeout=config.timeout_s, max_retries=config.max_retries)

    def generate(self, request: GenerationRequest) -> Completion:
        p = request.params
        extra = {"seed": request.seed} if self.config.send_seed else {}
        if request.json_schema is not None:
            extra["response_format"] = response_format(request.json_schema)
        t0 = time.perf_counter()
        try:
            resp = self._client.chat.completions.create(
                model=self.config.model,
                messages=[m.to_dict() for m in request.messages],
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                stop=list(p.stop) or None,
                **extra,
            )
        except self._openai.APIConnectionError as exc:
            raise ModelError(f"cannot reach the OpenAI-compatible server at {self.config.base_url} "
                             f"({type(exc).__name__}: {exc})") from exc
        except self._openai.APIStatusError as exc:
            if request.json_schema is not None and exc.status_code in (400, 422):
                raise ModelError(f"{self.config.base_url} answered HTTP {exc.status_code} to a "
                                 "request constrained to a JSON schema (response_format "
                                 "json_schema); the server may not support structured outputs: "
                                 f"{exc.message}") from exc
            raise ModelError(f"{self.config.base_url} answered HTTP {exc.status_code}: "
                             f"{exc.message}") from exc
        latency_s = time.perf_counter() - t0
        choice = resp.choices[0]
        usage = resp.usage
        return Completion(
            text=choice.message.content or "",
            usage=Usage(usage.prompt_tokens if usage else 0,
                        usage.completion_tokens if usage else 0),
            latency_s=latency_s,
            finish_reason=finish_reason_of(choice.finish_reason, choice.message.content),
        )

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        if len(requests) <= 1:
            return [self.generate(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(requests))) as pool:
            return list(pool.map(self.generate, requests))

    def close(self) -> None:
        self._client.close()
