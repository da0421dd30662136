"""The interaction record: one call an agent made to a model, as a proxy saw it or a log held it.

Field meanings follow the OpenAI chat-completions API (messages, tools, tool_calls, usage), the
de-facto wire format of agent systems; importers map every other format onto these fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

ROLES = ("coder", "tester", "researcher", "coordinator", "reviewer", "other")
"""Agent roles (seed 003's agent types, plus other)."""
STATUSES = ("ok", "error")


@dataclass(frozen=True)
class Interaction:
    id: str
    """Unique within a store: the source's own id where it has one; else the proxy's random UUID hex,
    or an importer's SHA-256 of the record (so a re-import skips it)."""
    started_at: float
    """When the request arrived (Unix seconds, UTC)."""
    messages: tuple[dict, ...]
    """The request's chat messages as sent ({"role", "content", ...}, OpenAI shape)."""
    response: str = ""
    """The assistant's text ("" when it answered only with tool calls, or failed)."""
    params: dict = field(default_factory=dict)
    """Request parameters other than messages and model (temperature, max_tokens, top_p, stop,
    tools, stream...)."""
    tool_calls: tuple[dict, ...] = ()
    """The assistant's tool calls ({"id", "type": "function", "function": {"name",
    "arguments"}}, OpenAI shape)."""
    model: str = ""
    """The model that answered (the response's `model`, else the request's)."""
    provider: str = ""
    """Who served it: the upstream's provider name (openai, replicate, llamacpp, ...)."""
    role: str | None = None
    """Agent role (one of ROLES), None until classified."""
    agent: str | None = None
    """The calling agent's name, when the caller or the log states it."""
    status: str = "ok"
    """ok or error (the upstream failed, timed out, or the client went away mid-stream)."""
    error: str | None = None
    latency_s: float | None = None
    """Request arrival to last byte of the response (seconds)."""
    ttft_s: float | None = None
    """Request arrival to the first content token (seconds; streaming only, else None)."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool = False
    source: str = "proxy"
    """proxy, or the import format (openai-jsonl, litellm, langfuse, inspect, atif)."""
    session_id: str | None = None
    """Groups the interactions of one agent run (a trace, a trajectory), when known."""
    meta: dict = field(default_factory=dict)
    """Anything else the source states (JSON data)."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES} or None, not {self.role!r}")

    @property
    def prompt(self) -> str:
        """The last user message's text ("" when there is none)."""
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return ""

    @property
    def system(self) -> str:
        """The system messages' text, joined."""
        return "\n".join(content_text(m.get("content")) for m in self.messages
                         if m.get("role") in ("system", "developer"))

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"messages": list(self.messages),
                                           "tool_calls": list(self.tool_calls)}

    @classmethod
    def from_json(cls, data: dict) -> "Interaction":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["messages"] = tuple(kw.get("messages") or ())
        kw["tool_calls"] = tuple(kw.get("tool_calls") or ())
        return cls(**kw)


def content_text(content) -> str:
    """A message's content as text: a string as is; OpenAI content parts ([{"type": "text",
    "text": ...}, ...]) joined by newlines, other parts (images, audio) dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") in ("text", "input_text",
                                                                       "output_text"))
    return json.dumps(content, ensure_ascii=False)
