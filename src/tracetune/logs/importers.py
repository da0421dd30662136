"""`tracetune import`: other tools' logs of model calls into an interaction store.

Every format is read by its publisher's field names; each record that is a chat-model call becomes
one `tracetune.logs.record.Interaction` (source = the format's name). A record that cannot be read
is reported by its line (or record) number with the reason and skipped; the rest is imported.
Records whose id is already in the store are skipped and counted, so importing a file twice, or
again after a killed import, adds each record once. Records are committed in batches, each whole
or not at all. Secrets are masked before anything is stored (`tracetune.logs.redact`).

Ids: the source's own id where it has one; otherwise the SHA-256 of the record's canonical JSON,
so that a record without an id is still recognised when imported again.
Times: Unix seconds from the source's epoch numbers or ISO 8601 strings; 0.0 where a format keeps
no time (the fine-tuning format).

openai-jsonl  JSON Lines; each line one of:
    a request/response pair: {"request": a chat.completions request body (model, messages,
        tools, temperature, ... as in OpenAI's API reference), "response": the chat.completion
        object (id, created, model, choices[0].message {content, tool_calls}, usage
        {prompt_tokens, completion_tokens}) or null}, and optionally "id", "started_at" (Unix
        seconds or ISO 8601; default: the response's `created`), "latency_s", "ttft_s",
        "error" (a string or {"message"}: the call failed), "metadata" (kept in meta),
        "agent", "session_id", "provider". These envelope names are tracetune's: no published
        format pairs a request with its response.
    an OpenAI Batch API output line: {"id", "custom_id", "response": {"status_code",
        "request_id", "body": chat.completion}, "error": null or {"code", "message"}}. The
        output file holds no request: its messages come from the line's own "body" (an output
        line joined with its input line), else from the Batch API input file given as
        `batch_input` (lines {"custom_id", "method", "url": "/v1/chat/completions", "body"}),
        matched by custom_id; a line with neither is reported malformed.
    a chat fine-tuning example: {"messages": [..., the final assistant message], "tools"?}:
        the messages before the last are the prompt, the last is the response.
litellm  JSON Lines of LiteLLM's StandardLoggingPayload (what its logging callbacks receive as
    kwargs["standard_logging_object"]): id, trace_id (-> session_id), call_type, stream, status
    ("success" | "failure"), custom_llm_provider (-> provider), model, model_group, api_base,
    messages, response (a chat.completion-shaped ModelResponse), model_parameters (-> params),
    prompt_tokens, completion_tokens, startTime, endTime, completionStartTime (Unix seconds;
    latency = endTime - startTime, time to first token = completionStartTime - startTime for
    streamed calls), error_str / error_information, metadata. Payloads without chat messages
    (embeddings, images) are reported, not imported.
langfuse  Langfuse's public-API export: a trace with its observations nested
    (TraceWithFullDetails: id, name, sessionId, userId, observations [...]), an array or JSON
    Lines of traces, an array or JSON Lines of observations, or a page {"data": [...]}. Only
    observations of type GENERATION are model calls (others are counted as ignored): id, traceId
    (-> session_id), name, startTime, endTime, completionStartTime (ISO 8601), model,
    modelParameters (-> params), input (the messages, or {"messages": [...]}, or a prompt
    string), output (the assistant message, a chat.completion, or text), usageDetails {input,
    output} (else usage {input, output}, else promptTokens / completionTokens), level ("ERROR"
    -> status error with statusMessage), metadata. The trace's name becomes the agent.
inspect  an inspect_ai eval log (.eval or .json), read with inspect_ai's own
    `inspect_ai.log.read_eval_log` (optional extra: pip install 'tracetune[logs]'). Each
    sample's ModelEvents become interactions: input (-> messages, converted by inspect_ai's
    `messages_to_openai`), output (choices[0].message, usage, time -> latency_s), model (provider
    = its prefix before "/"), config (-> params), error, timestamp; session_id = the sample's
    uuid, agent = the task's name. A sample without model events gives one interaction from its
    messages and output.
atif  ATIF trajectories (`tracetune.logs.atif`): each agent step becomes an interaction whose
    messages are the conversation so far; its message and tool_calls are the response;
    metrics.prompt_tokens / completion_tokens; model = the step's model_name, else the agent's;
    agent = agent.name; session_id = the trajectory's; id = "{session_id}:{step_id}".

Why by hand: LiteLLM, Langfuse and ATIF records are plain JSON documented field by field, and the
packages that model them (litellm, the langfuse SDK, nvidia-nat-atif) are large or optional; reading
the fields keeps `import` working without them and lets a bad record be skipped alone, where a
model's validation would reject it whole for a field tracetune does not use. inspect_ai's logs are
its own serialisation, so they are read by inspect_ai.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Union

from tracetune.errors import TracetuneError
from tracetune.logs.record import Interaction, content_text
from tracetune.logs.redact import Redactor

FORMATS = ("openai-jsonl", "litellm", "langfuse", "inspect", "atif")
BATCH = 500
"""Records per transaction."""
SHOW_MALFORMED = 5
"""How many malformed records the summary names."""


@dataclass(frozen=True)
class Malformed:
    where: str
    """"line N", "record N", or deeper ("line 3 observation 2", "sample 4 event 7")."""
    why: str


@dataclass(frozen=True)
class Ignored:
    """A well-formed record that is not a model call (a Langfuse SPAN or EVENT)."""

    where: str


Item = Union[Interaction, Malformed, Ignored]


@dataclass
class ImportReport:
    read: int = 0
    """Records read (interactions, malformed and ignored ones)."""
    imported: int = 0
    duplicates: int = 0
    """Interactions whose id the store already held (or an earlier record of the file had)."""
    ignored: int = 0
    malformed: list[Malformed] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the counts, and the first malformed records with their reasons."""
        parts = [f"{self.imported} imported", f"{self.duplicates} already stored"]
        if self.ignored:
            parts.append(f"{self.ignored} not model calls")
        line = f"read {self.read} records: " + ", ".join(parts)
        if self.malformed:
            shown = "; ".join(f"{m.where}: {' '.join(m.why.split())}"
                              for m in self.malformed[:SHOW_MALFORMED])
            more = len(self.malformed) - SHOW_MALFORMED
            line += (f", {len(self.malformed)} malformed and skipped ({shown}"
                     f"{f'; {more} more' if more > 0 else ''})")
        return line


class _Bad(ValueError):
    """A record that breaks its format: the message says how."""


# --- the command ----------------------------------------------------------------------------------
def import_logs(path: Path, fmt: str, out: Path, *, redactor: Redactor | None = None,
                batch_input: Path | None = None) -> ImportReport:
    """Import the log file `path`, read as `fmt` (one of FORMATS), into the interaction store of
    the run directory `out` (created if needed, else appended to); returns the counts.

    `redactor`: applied to every record before it is stored (default: `Redactor()`, the default
    secret patterns). `batch_input`: openai-jsonl only, the Batch API input file.
    Raises TracetuneError for an unknown format, a missing or unreadable file, an `out` that is
    a file, a file that is not of its format as a whole (a broken JSON document, an inspect log
    inspect_ai cannot read), or a missing optional dependency."""
    from tracetune.logs.store import LogStore
    from tracetune.staging import check_output_dir

    items = read_file(path, fmt, batch_input=batch_input)  # checks the arguments first
    first = next(items, None)  # a file broken as a whole fails here, before the store exists
    check_output_dir(out)
    redactor = redactor if redactor is not None else Redactor()
    report = ImportReport()
    with LogStore(out, create=True) as store:
        pending: list[Interaction] = []

        def flush() -> None:
            added = store.add_many(pending)
            report.imported += added
            report.duplicates += len(pending) - added
            pending.clear()

        for item in itertools.chain([first] if first is not None else [], items):
            report.read += 1
            if isinstance(item, Malformed):
                report.malformed.append(item)
            elif isinstance(item, Ignored):
                report.ignored += 1
            else:
                pending.append(redactor.record(item))
                if len(pending) >= BATCH:
                    flush()
        flush()
    return report


def read_file(path: Path, fmt: str, *, batch_input: Path | None = None) -> Iterator[Item]:
    """The records of a log file as interactions (unredacted), malformed and ignored records in
    their place. The arguments are checked before this returns (TracetuneError, as
    `import_logs`); records are read as the iterator is consumed."""
    path = Path(path)
    if fmt not in FORMATS:
        raise TracetuneError(f"unknown --format {fmt!r} (one of {', '.join(FORMATS)})")
    if batch_input is not None and fmt != "openai-jsonl":
        raise TracetuneError("--batch-input applies to --format openai-jsonl only")
    for p in (path, batch_input):
        if p is not None and not Path(p).is_file():
            raise TracetuneError(f"{p}: no such file")
    if fmt == "openai-jsonl":
        bodies = _batch_bodies(Path(batch_input)) if batch_input is not None else {}
        return _per_record(json_lines(path), lambda obj: _openai(obj, bodies))
    if fmt == "litellm":
        return _per_record(json_lines(path), _litellm)
    if fmt == "langfuse":
        return _langfuse(path)
    if fmt == "inspect":
        return _inspect(path)
    return _atif(path)


def _per_record(records: Iterator[tuple[str, object]],
                convert: Callable[[object], Interaction]) -> Iterator[Item]:
    for where, obj in records:
        if isinstance(obj, Malformed):
            yield obj
            continue
        try:
            yield convert(obj)
        except (_Bad, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            yield Malformed(where, _reason(exc))


def _reason(exc: Exception) -> str:
    if isinstance(exc, _Bad):
        return str(exc)
    if isinstance(exc, KeyError):
        return f"no field {exc.args[0]!r}"
    return f"{type(exc).__name__}: {exc}"


# --- reading JSON ---------------------------------------------------------------------------------
def json_lines(path: Path) -> Iterator[tuple[str, object]]:
    """("line N", object) for each non-blank line of a JSON Lines file; a line that is not UTF-8
    or not JSON comes as ("line N", Malformed). Raises TracetuneError when the file cannot be
    opened."""
    # The standard json module per line: what a JSON Lines reader library would add is what the
    # report needs done differently (a bad line reported with its number, the rest read on).
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise TracetuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    with f:
        for n, raw in enumerate(f, 1):
            where = f"line {n}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield where, Malformed(where, "not UTF-8 text")
                continue
            if not text.strip():
                continue
            try:
                yield where, json.loads(text)
            except ValueError as exc:
                yield where, Malformed(where, f"not JSON ({exc})")


def json_records(path: Path) -> Iterator[tuple[str, object]]:
    """The records of a JSON or JSON Lines file: when the first line alone is a JSON value the
    file is read as JSON Lines (json_lines); otherwise as one JSON document, an array giving
    ("record N", item) for each item and anything else ("record 1", value), and when it is no
    JSON document either, as JSON Lines again (a malformed first line). A malformed record comes
    as a string saying why in place of the object.

    Raises TracetuneError when the file cannot be read, or is a broken JSON array (nothing of it
    can be read)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as exc:
        raise TracetuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        json.loads(first)
        one_line = True
    except ValueError:
        one_line = False
    if one_line:
        for where, obj in json_lines(path):
            yield where, (obj.why if isinstance(obj, Malformed) else obj)
        return
    data = Path(path).read_bytes()
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        if not data.lstrip().startswith(b"["):  # JSON Lines whose first line is malformed
            for where, obj in json_lines(path):
                yield where, (obj.why if isinstance(obj, Malformed) else obj)
            return
        raise TracetuneError(f"{path} is neither JSON Lines nor one JSON document "
                             f"({getattr(exc, 'msg', None) or exc})") from None
    if isinstance(doc, list):
        for i, item in enumerate(doc, 1):
            yield f"record {i}", item
    else:
        yield "record 1", doc


def _hash_id(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False,
                                     default=str).encode("utf-8")).hexdigest()


def _time(value) -> float | None:
    """Unix seconds from a number (seconds) or an ISO 8601 string (naive = UTC); None for None.
    Raises _Bad for anything else."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, bool):
        raise _Bad(f"time {value!r} is not a number or an ISO 8601 string")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise _Bad(f"time {value!r} is not finite")
        return float(value)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _Bad(f"time {value!r} is not ISO 8601") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return t.timestamp()
    raise _Bad(f"time {value!r} is not a number or an ISO 8601 string")


def _since(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _seconds(value) -> float | None:
    """A duration in seconds: None, or a finite number >= 0; raises _Bad for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise _Bad(f"duration {value!r} is not a number of seconds >= 0")
    return float(value)


def _name(value) -> str | None:
    """An optional name (agent, session): None or a string; raises _Bad for anything else."""
    if value is None or isinstance(value, str):
        return value or None
    raise _Bad(f"{value!r} is not a string")


def _int(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"token count {value!r} is not a number")
    return int(value)


def _messages(value, what: str = "messages") -> tuple[dict, ...]:
    """Chat messages as given (OpenAI shape); a bare string is one user message."""
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if not isinstance(value, list) or not value:
        raise _Bad(f"{what} is not a non-empty list of chat messages")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _Bad(f"{what} holds an entry that is not a chat message (no role)")
    return tuple(value)


def _assistant(message) -> tuple[str, tuple[dict, ...]]:
    """(text, tool calls) of an assistant message, a chat.completion, or plain text."""
    if message is None:
        return "", ()
    if isinstance(message, str):
        return message, ()
    if not isinstance(message, dict):
        raise _Bad("the response is not a message, a chat.completion or text")
    if "choices" in message:  # a chat.completion (or LiteLLM's ModelResponse)
        choices = message.get("choices") or []
        if not choices:
            return "", ()
        message = choices[0].get("message") or {}
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _Bad("tool_calls is not a list")
    return content_text(message.get("content")), tuple(calls)


def _usage(completion) -> tuple[int | None, int | None]:
    usage = (completion.get("usage") if isinstance(completion, dict) else None) or {}
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def _error_text(error) -> str | None:
    if error is None or error == "":
        return None
    if isinstance(error, dict):
        return str(error.get("message") or error.get("code") or json.dumps(error))
    return str(error)


# --- openai-jsonl ---------------------------------------------------------------------------------
def _batch_bodies(path: Path) -> dict[str, dict]:
    """custom_id -> request body of a Batch API input file (lines {"custom_id", "method", "url",
    "body"}). Raises TracetuneError naming a line that is not such a line."""
    bodies = {}
    for where, obj in json_lines(path):
        if (isinstance(obj, Malformed) or not isinstance(obj, dict)
                or not isinstance(obj.get("custom_id"), str) or not isinstance(obj.get("body"), dict)):
            raise TracetuneError(f"--batch-input {path} {where}: not a Batch API input line "
                                 '({"custom_id", "method", "url", "body"})')
        bodies[obj["custom_id"]] = obj
    return bodies


def _openai(obj, bodies: dict[str, dict]) -> Interaction:
    if not isinstance(obj, dict):
        raise _Bad("not a JSON object")
    if "custom_id" in obj and "response" in obj:
        return _openai_batch(obj, bodies)
    if "request" in obj:
        return _openai_pair(obj)
    if "messages" in obj:
        return _openai_finetune(obj)
    if "custom_id" in obj and "body" in obj:
        raise _Bad("a Batch API input line: give the input file with --batch-input and import "
                   "the output file")
    raise _Bad("neither a request/response pair, a Batch API output line nor a chat "
               "fine-tuning example")


def _request(body) -> tuple[tuple[dict, ...], dict, str]:
    """(messages, params, model) of a chat.completions request body."""
    if not isinstance(body, dict):
        raise _Bad("the request is not a JSON object")
    messages = _messages(body.get("messages"), "request messages")
    params = {k: v for k, v in body.items() if k not in ("messages", "model")}
    return messages, params, str(body.get("model") or "")


def _openai_pair(obj: dict) -> Interaction:
    messages, params, model = _request(obj["request"])
    response = obj.get("response")
    if response is not None and not isinstance(response, dict):
        raise _Bad("the response is not a chat.completion object")
    text, calls = _assistant(response)
    prompt_tokens, completion_tokens = _usage(response)
    error = _error_text(obj.get("error"))
    started = _time(obj.get("started_at"))
    if started is None:
        started = _time((response or {}).get("created")) or 0.0
    meta = {k: v for k, v in (("metadata", obj.get("metadata")),
                              ("finish_reason", _finish(response))) if v is not None}
    return Interaction(
        id=str(obj.get("id") or (response or {}).get("id") or _hash_id(obj)), started_at=started,
        messages=messages, response=text, params=params, tool_calls=calls,
        model=str((response or {}).get("model") or model), provider=str(obj.get("provider") or ""),
        agent=_name(obj.get("agent")), status="error" if error or response is None else "ok",
        error=error or (None if response is not None else "no response"),
        latency_s=_seconds(obj.get("latency_s")), ttft_s=_seconds(obj.get("ttft_s")),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        stream=bool(params.get("stream", False)), source="openai-jsonl",
        session_id=_name(obj.get("session_id")), meta=meta)


def _finish(completion) -> str | None:
    if isinstance(completion, dict) and completion.get("choices"):
        return completion["choices"][0].get("finish_reason")
    return None


def _openai_batch(obj: dict, bodies: dict[str, dict]) -> Interaction:
    custom_id = obj["custom_id"]
    request = obj.get("body")
    if request is None:
        line = bodies.get(custom_id)
        if line is None:
            raise _Bad(f"batch output line {custom_id!r} without its request (give the Batch "
                       "API input file with --batch-input)")
        if line.get("url") not in (None, "/v1/chat/completions"):
            raise _Bad(f"batch request {custom_id!r} is {line.get('url')}, not a chat completion")
        request = line["body"]
    messages, params, model = _request(request)
    response = obj.get("response") or {}
    status_code = response.get("status_code")
    body = response.get("body") or {}
    failed = obj.get("error") is not None or (isinstance(status_code, int) and status_code >= 400)
    error = _error_text(obj.get("error")) or (_error_text(body.get("error")) if failed else None)
    text, calls = ("", ()) if failed else _assistant(body)
    prompt_tokens, completion_tokens = _usage(body)
    meta = {k: v for k, v in (("custom_id", custom_id), ("request_id", response.get("request_id")),
                              ("status_code", status_code), ("finish_reason", _finish(body)))
            if v is not None}
    return Interaction(
        id=str(obj.get("id") or custom_id), started_at=_time(body.get("created")) or 0.0,
        messages=messages, response=text, params=params, tool_calls=calls,
        model=str(body.get("model") or model), provider="openai",
        status="error" if failed else "ok", error=(error or "failed") if failed else None,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        source="openai-jsonl", meta=meta)


def _openai_finetune(obj: dict) -> Interaction:
    messages = _messages(obj["messages"])
    last = messages[-1]
    if last.get("role") != "assistant" or len(messages) < 2:
        raise _Bad("a fine-tuning example must end with an assistant message after the prompt")
    text, calls = _assistant(last)
    params = {k: obj[k] for k in ("tools", "parallel_tool_calls") if k in obj}
    return Interaction(id=_hash_id(obj), started_at=0.0, messages=messages[:-1], response=text,
                       params=params, tool_calls=calls, source="openai-jsonl")


# --- litellm --------------------------------------------------------------------------------------
def _litellm(obj) -> Interaction:
    if not isinstance(obj, dict):
        raise _Bad("not a JSON object")
    if obj.get("messages") in (None, "", [], {}):
        raise _Bad(f"no chat messages (call_type {obj.get('call_type')!r})")
    raw = obj["messages"]
    messages = _messages([raw] if isinstance(raw, dict) else raw)
    status = obj.get("status")
    if status not in ("success", "failure"):
        raise _Bad(f"status {status!r} is neither success nor failure")
    response = obj.get("response")
    text, calls = _assistant(response) if status == "success" else ("", ())
    start, end = _time(obj.get("startTime")), _time(obj.get("endTime"))
    stream = bool(obj.get("stream"))
    info = obj.get("error_information") or {}
    error = (obj.get("error_str") or info.get("error_message")) if status == "failure" else None
    model = (response.get("model") if isinstance(response, dict) else None) or obj.get("model")
    meta = {k: obj[k] for k in ("call_type", "model_group", "model_id", "api_base", "metadata",
                                "request_tags", "end_user", "response_cost", "cache_hit",
                                "error_information") if obj.get(k) not in (None, "", [], {})}
    if start is None:
        raise _Bad("no startTime")
    return Interaction(
        id=str(obj.get("id") or _hash_id(obj)), started_at=start, messages=messages,
        response=text, params=dict(obj.get("model_parameters") or {}), tool_calls=calls,
        model=str(model or ""), provider=str(obj.get("custom_llm_provider") or ""),
        status="ok" if status == "success" else "error",
        error=(str(error) if error else "failure") if status == "failure" else None,
        latency_s=_since(start, end),
        ttft_s=_since(start, _time(obj.get("completionStartTime"))) if stream else None,
        prompt_tokens=_int(obj.get("prompt_tokens")),
        completion_tokens=_int(obj.get("completion_tokens")), stream=stream, source="litellm",
        session_id=_name(obj.get("trace_id")), meta=meta)


# --- langfuse -------------------------------------------------------------------------------------
def _langfuse(path: Path) -> Iterator[Item]:
    for where, obj in json_records(path):
        if isinstance(obj, str):
            yield Malformed(where, obj)
            continue
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):  # an API page
            records = [(f"{where} data {i}", o) for i, o in enumerate(obj["data"], 1)]
        elif isinstance(obj, list):  # a line holding an array
            records = [(f"{where} item {i}", o) for i, o in enumerate(obj, 1)]
        else:
            records = [(where, obj)]
        for w, record in records:
            if isinstance(record, dict) and isinstance(record.get("observations"), list):
                for i, o in enumerate(record["observations"], 1):
                    if isinstance(o, str):  # TraceWithDetails lists observation ids only
                        yield Malformed(f"{w} observation {i}", "an observation id, not the "
                                        "observation (export traces with their observations)")
                    else:
                        yield _langfuse_one(f"{w} observation {i}", o, record)
            else:
                yield _langfuse_one(w, record, None)


def _langfuse_one(where: str, obs, trace: dict | None) -> Item:
    try:
        if not isinstance(obs, dict) or not isinstance(obs.get("type"), str):
            raise _Bad("not a Langfuse observation (no type)")
        if obs["type"] != "GENERATION":
            return Ignored(where)
        return _generation(obs, trace)
    except (_Bad, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return Malformed(where, _reason(exc))


def _generation(obs: dict, trace: dict | None) -> Interaction:
    raw_input = obs.get("input")
    params = dict(obs.get("modelParameters") or {})
    if isinstance(raw_input, dict) and "messages" in raw_input:
        params.update({k: v for k, v in raw_input.items() if k not in ("messages", "model")})
        raw_input = raw_input["messages"]
    messages = _messages(raw_input, "input")
    text, calls = _assistant(obs.get("output"))
    start = _time(obs.get("startTime"))
    if start is None:
        raise _Bad("no startTime")
    end, first = _time(obs.get("endTime")), _time(obs.get("completionStartTime"))
    details = obs.get("usageDetails") or {}
    usage = obs.get("usage") or {}
    prompt = next((details[k] for k in ("input", "prompt_tokens", "input_tokens") if k in details),
                  usage.get("input", obs.get("promptTokens")))
    completion = next((details[k] for k in ("output", "completion_tokens", "output_tokens")
                       if k in details), usage.get("output", obs.get("completionTokens")))
    failed = obs.get("level") == "ERROR"
    meta = {k: v for k, v in (("name", obs.get("name")), ("level", obs.get("level")),
                              ("statusMessage", None if failed else obs.get("statusMessage")),
                              ("metadata", obs.get("metadata")),
                              ("parentObservationId", obs.get("parentObservationId")),
                              ("sessionId", (trace or {}).get("sessionId")),
                              ("userId", (trace or {}).get("userId")))
            if v not in (None, "", {}, "DEFAULT")}
    return Interaction(
        id=str(obs["id"]), started_at=start, messages=messages, response=text, params=params,
        tool_calls=calls, model=str(obs.get("model") or ""),
        agent=(trace or {}).get("name") or None, status="error" if failed else "ok",
        error=(obs.get("statusMessage") or "ERROR") if failed else None,
        latency_s=_since(start, end), ttft_s=_since(start, first),
        prompt_tokens=_int(prompt), completion_tokens=_int(completion),
        stream=bool(params.get("stream", False)), source="langfuse",
        session_id=obs.get("traceId") or (trace or {}).get("id"), meta=meta)


# --- inspect --------------------------------------------------------------------------------------
def _inspect(path: Path) -> Iterator[Item]:
    try:
        from inspect_ai.log import read_eval_log
        from inspect_ai.model import messages_to_openai
    except ImportError:
        raise TracetuneError("--format inspect reads logs with inspect_ai, which is not "
                             "installed: pip install 'tracetune[logs]'") from None
    try:
        log = read_eval_log(str(path), resolve_attachments=True)
    except Exception as exc:  # noqa: BLE001 - whatever inspect_ai raises for a file it cannot read
        raise TracetuneError(f"{path} is not an inspect_ai eval log inspect_ai can read "
                             f"({type(exc).__name__}: {exc})") from None
    return _inspect_items(log, messages_to_openai)


def _inspect_items(log, to_openai) -> Iterator[Item]:
    import asyncio

    def openai(messages) -> tuple[dict, ...]:
        # inspect_ai's own converter (async: it may fetch images; ours are already inline)
        return tuple(_plain(m) for m in asyncio.run(to_openai(list(messages))))

    task = getattr(log.eval, "task", None)
    for s, sample in enumerate(log.samples or [], 1):
        session = str(getattr(sample, "uuid", None) or f"{log.eval.eval_id}:{sample.id}:"
                                                       f"{sample.epoch}")
        events = [(e, ev) for e, ev in enumerate(sample.events or [], 1)
                  if getattr(ev, "event", None) == "model"]
        if not events:
            try:
                yield _inspect_sample(sample, session, task, openai)
            except Exception as exc:  # noqa: BLE001 - a sample inspect_ai read but we cannot map
                yield Malformed(f"sample {s}", f"{type(exc).__name__}: {exc}")
            continue
        for e, ev in events:
            try:
                yield _inspect_event(ev, session, task, openai, f"{session}:{e}")
            except Exception as exc:  # noqa: BLE001 - as above
                yield Malformed(f"sample {s} event {e}", f"{type(exc).__name__}: {exc}")


def _plain(obj):
    """An OpenAI client object (a TypedDict or pydantic model) as plain JSON data."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True)
    return json.loads(json.dumps(obj, default=lambda o: o.model_dump(mode="json")
                                 if hasattr(o, "model_dump") else str(o)))


def _inspect_event(ev, session: str, task, openai, fallback_id: str) -> Interaction:
    output = ev.output
    reply = openai([output.message])[0] if output.choices else {}
    usage = output.usage
    config = ev.config.model_dump(mode="json", exclude_none=True) if ev.config else {}
    if ev.tools:
        config["tools"] = [{"type": "function",  # OpenAI's shape of a tool (inspect's ToolInfo)
                            "function": t.model_dump(mode="json", exclude_none=True)}
                           for t in ev.tools]
    model = output.model or ev.model
    error = ev.error or output.error
    return Interaction(
        id=str(getattr(ev, "uuid", None) or fallback_id), started_at=ev.timestamp.timestamp(),
        messages=openai(ev.input), response=content_text(reply.get("content")), params=config,
        tool_calls=tuple(reply.get("tool_calls") or ()), model=str(model),
        provider=ev.model.split("/", 1)[0] if "/" in ev.model else "", agent=task,
        status="error" if error else "ok", error=str(error) if error else None,
        latency_s=output.time, prompt_tokens=usage.input_tokens if usage else None,
        completion_tokens=usage.output_tokens if usage else None, source="inspect",
        session_id=session, meta={"stop_reason": output.stop_reason} if output.choices else {})


def _inspect_sample(sample, session: str, task, openai) -> Interaction:
    messages = list(sample.messages or [])
    while messages and messages[-1].role == "assistant":
        messages.pop()  # the answer is the output
    if not messages:
        raise _Bad("no messages before the output")
    output = sample.output
    reply = openai([output.message])[0] if output and output.choices else {}
    usage = output.usage if output else None
    model = (output.model if output else None) or ""
    return Interaction(
        id=session, started_at=_time(getattr(sample, "started_at", None)) or 0.0,
        messages=openai(messages), response=content_text(reply.get("content")),
        tool_calls=tuple(reply.get("tool_calls") or ()), model=str(model), agent=task,
        status="error" if sample.error else "ok",
        error=str(sample.error.message) if sample.error else None,
        latency_s=output.time if output else None,
        prompt_tokens=usage.input_tokens if usage else None,
        completion_tokens=usage.output_tokens if usage else None, source="inspect",
        session_id=session)


# --- atif -----------------------------------------------------------------------------------------
def _atif(path: Path) -> Iterator[Item]:
    from tracetune.logs.atif import openai_tool_calls, problem, prompts

    for where, traj in json_records(path):
        why = traj if isinstance(traj, str) else problem(traj)
        if why:
            yield Malformed(where, why)
            continue
        agent = traj.get("agent") if isinstance(traj.get("agent"), dict) else {}
        session = traj.get("session_id") or _hash_id(traj)[:32]
        params = {"tools": agent["tool_definitions"]} if agent.get("tool_definitions") else {}
        last_time = None
        try:
            for step, prompt in prompts(traj):
                w = f"{where} step {step.get('step_id')}"
                try:
                    last_time = _time(step.get("timestamp")) or last_time
                    metrics = step.get("metrics") or {}
                    extra = step.get("extra") or {}
                    meta = {k: v for k, v in (("step_id", step["step_id"]),
                                              ("reasoning_content", step.get("reasoning_content")),
                                              ("observation", step.get("observation")),
                                              ("extra", extra)) if v not in (None, {})}
                    latency = (extra.get("tracetune") or {}).get("latency_s")
                    yield Interaction(
                        id=f"{session}:{step['step_id']}", started_at=last_time or 0.0,
                        messages=tuple(prompt),
                        response=content_text(step.get("message")) if step.get("message") else "",
                        params=params, tool_calls=tuple(openai_tool_calls(step)),
                        model=str(step.get("model_name") or agent.get("model_name") or ""),
                        agent=agent.get("name"),
                        latency_s=latency if isinstance(latency, (int, float)) else None,
                        prompt_tokens=_int(metrics.get("prompt_tokens")),
                        completion_tokens=_int(metrics.get("completion_tokens")), source="atif",
                        session_id=str(session), meta=meta)
                except (_Bad, KeyError, TypeError, ValueError, AttributeError) as exc:
                    yield Malformed(w, _reason(exc))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            yield Malformed(where, f"broken trajectory ({_reason(exc)})")

