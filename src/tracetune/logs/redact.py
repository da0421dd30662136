"""Secrets out of interaction records before they reach a store.

Default patterns (each match becomes "[REDACTED]"):
    OpenAI-style keys        sk-..., sk-proj-... (20+ key characters)
    Anthropic keys           sk-ant-...
    bearer tokens            "Bearer <token>" (the token)
    AWS access key ids       AKIA + 16 upper-case letters or digits
    GitHub tokens            ghp_/gho_/ghu_/ghs_/ghr_ + 36 characters, github_pat_...
    Google API keys          AIza + 35 characters
    Slack tokens             xox[abprs]-...
    key=value secrets        api_key / apikey / secret / password / token = value (the value)
    private key blocks       -----BEGIN ... PRIVATE KEY----- ... -----END ... PRIVATE KEY-----
A pattern with a group named `s` masks only that group (the secret after its label); any other
pattern masks its whole match. Users add their own regular expressions (`Redactor(extra=[...])`, `--redact REGEX`), and any
literal secret known to the caller (the upstream's API key) is removed wherever it appears.
Redaction walks every string inside messages, params, response, tool calls, error and meta.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from tracetune.errors import TracetuneError
from tracetune.logs.record import Interaction

MASK = "[REDACTED]"

DEFAULT_PATTERNS: tuple[str, ...] = (
    r"sk-ant-[A-Za-z0-9_\-]{20,}",
    r"sk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{20,}",
    r"Bearer\s+(?P<s>[A-Za-z0-9_\-\.=:+/]{8,})",
    r"AKIA[0-9A-Z]{16}",
    r"gh[pousr]_[A-Za-z0-9]{36,}",
    r"github_pat_[A-Za-z0-9_]{22,}",
    r"AIza[0-9A-Za-z_\-]{35}",
    r"xox[abprs]-[A-Za-z0-9\-]{10,}",
    r"(?i)(?:api[_-]?key|apikey|secret|password|passwd|token)[\"']?\s*[:=]\s*[\"']?"
    r"(?P<s>[^\s\"',;]{6,})",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)


class Redactor:
    """Replaces secrets with MASK. `extra`: more regular expressions; `literals`: exact strings
    (e.g. an API key) removed wherever they occur; `defaults=False` drops DEFAULT_PATTERNS.

    Raises TracetuneError naming a pattern that is not a valid regular expression."""

    def __init__(self, extra: Iterable[str] = (), literals: Iterable[str] = (), *,
                 defaults: bool = True) -> None:
        patterns = [*(DEFAULT_PATTERNS if defaults else ()), *extra]
        self._extra, self._literals, self._defaults = tuple(extra), tuple(literals), defaults
        literal = [re.escape(s) for s in literals if s]
        # longest literals first, so a key is never half-masked by a shorter one inside it
        literal.sort(key=len, reverse=True)
        try:
            self._patterns = [re.compile(p) for p in [*literal, *patterns]]
        except re.error as exc:
            raise TracetuneError(f"redaction pattern {exc.pattern!r} is not a valid regular "
                                 f"expression ({exc})") from None

    def with_literals(self, literals: Iterable[str]) -> "Redactor":
        """This redactor plus more exact strings to remove."""
        return Redactor(self._extra, (*self._literals, *literals), defaults=self._defaults)

    def text(self, s: str) -> str:
        for p in self._patterns:
            s = p.sub(_mask, s)
        return s

    def value(self, v):
        """Any JSON value with every string in it redacted (keys kept)."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(self.value(x) for x in v)
        return v

    def record(self, rec: Interaction) -> Interaction:
        return dataclasses.replace(
            rec, messages=self.value(tuple(rec.messages)), response=self.text(rec.response),
            params=self.value(rec.params), tool_calls=self.value(tuple(rec.tool_calls)),
            error=None if rec.error is None else self.text(rec.error), meta=self.value(rec.meta))


def _mask(m: re.Match) -> str:
    if "s" not in m.re.groupindex or m.group("s") is None:
        return MASK
    start, end = m.span("s")
    whole = m.group(0)
    return whole[:start - m.start()] + MASK + whole[end - m.start():]


NO_REDACTION = Redactor(defaults=False)
