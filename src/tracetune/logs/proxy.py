"""`tracetune proxy`: an OpenAI-compatible server in front of any model spec that records every
interaction in an interaction store.

Endpoints (OpenAI's REST API shapes, https://platform.openai.com/docs/api-reference/chat):
    POST /v1/chat/completions   chat completions, streaming (server-sent events) and not
    GET  /v1/models             the model list (the upstream's, or the one spec served)
    GET  /health                {"ok": true, "records": N}

Upstreams:
    openai:MODEL@URL   relayed over HTTP (keep-alive pool): the request body goes upstream with
                       `model` set to MODEL and the upstream's key (from the spec's api_key_env)
                       in the Authorization header; the client's own Authorization header is
                       never forwarded nor stored. Streams are relayed event by event. An
                       upstream's HTTP error reaches the client with its status (streamed or
                       not), an upstream that cannot be reached is a 502; both are recorded.
    any other spec     (embedded, gguf:, hf:, replay:) loaded in this process; a llama.cpp model
                       streams token by token, the others answer whole (one content event).

Recording. Each answered request becomes one `Interaction` (request messages and parameters,
response text and tool calls, model, provider, agent role and name from the X-Agent-Role /
X-Agent-Name headers, X-Session-Id, status, error, latency, time to first token, tokens), with
secrets redacted (`logs.redact`; the upstream's key is always removed). The record is committed
*before* the answer's last bytes are sent (the JSON body, or the stream's `data: [DONE]`), so a
client that got a whole answer has its record, whatever happens to the proxy afterwards
(`kill -9` included); a stream the proxy dies in leaves no record, or (if it died between the
commit and the last event) a whole one, never half of one. A
stream the client abandons is recorded with status error ("client disconnected"). Requests the
proxy refuses (not JSON, no messages, sampling parameters a local model cannot take) are
answered 400 and not recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request  # module level: FastAPI resolves the handler's annotation here

from tracetune.errors import TracetuneError
from tracetune.logs.record import ROLES, Interaction
from tracetune.logs.redact import Redactor
from tracetune.logs.store import LogStore

ROLE_HEADER, AGENT_HEADER, SESSION_HEADER = "x-agent-role", "x-agent-name", "x-session-id"
_PARAM_SKIP = ("messages", "model")


@dataclass
class Upstream:
    """What the proxy answers with: `spec` (the model spec), `model` (the name reported),
    `provider`."""

    spec: str
    model: str
    provider: str
    secrets: tuple[str, ...] = field(default=())

    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model",
                                            "created": 0, "owned_by": self.provider}]}

    async def close(self) -> None:
        pass


class HttpUpstream(Upstream):
    """An OpenAI-compatible server, relayed over HTTP with httpx (the `openai` client's own
    HTTP library)."""

    def __init__(self, spec: str, config) -> None:
        import httpx2 as httpx

        key = os.environ.get(config.api_key_env, "")
        super().__init__(spec, config.model, _provider_of(config.base_url),
                         (key,) if key else ())
        self.url = config.base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {key or 'sk-no-key'}"}
        self.client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(config.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256))
        self.httpx = httpx

    async def models(self) -> dict:
        resp = await self.client.get(f"{self.url}/models")
        return resp.json()

    async def close(self) -> None:
        await self.client.aclose()


class ModelUpstream(Upstream):
    """A model spec loaded in this process (`tracetune.models.load_model`)."""

    def __init__(self, spec: str) -> None:
        from tracetune.models import load_model, parse_spec

        parsed = parse_spec(spec)
        super().__init__(spec, spec, parsed.backend)
        self.model_obj = load_model(parsed)

    async def close(self) -> None:
        await asyncio.to_thread(self.model_obj.close)


def _provider_of(url: str) -> str:
    from urllib.parse import urlparse

    host = urlparse(url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return "local"
    parts = host.split(".")
    return parts[-2] if len(parts) >= 2 else host


def make_upstream(spec: str) -> Upstream:
    """The upstream a model spec names (an openai: spec is relayed over HTTP; any other spec is
    loaded here). Raises ModelSpecError / ModelError for a spec that cannot be resolved."""
    from tracetune.models import parse_spec

    parsed = parse_spec(spec)
    if parsed.backend == "openai":
        return HttpUpstream(spec, parsed.config)
    return ModelUpstream(spec)


def create_app(upstream: Upstream, store: LogStore, *, redactor: Redactor | None = None):
    """The FastAPI application. `redactor` (default: the default patterns) is extended with the
    upstream's key."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    redact = Redactor(literals=upstream.secrets) if redactor is None else \
        redactor.with_literals(upstream.secrets)
    app = FastAPI(title="tracetune proxy", docs_url=None, redoc_url=None)

    def save(rec: Interaction) -> None:
        store.add(redact.record(rec))

    @app.get("/health")
    async def health():
        return {"ok": True, "records": store.count()}

    @app.get("/v1/models")
    async def models():
        try:
            return await upstream.models()
        except Exception as exc:  # noqa: BLE001 - the upstream's failure, reported to the client
            return _error(502, f"upstream model list failed: {type(exc).__name__}: {exc}")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.time()
        clock0 = time.perf_counter()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the request body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) \
                or not body["messages"] \
                or not all(isinstance(m, dict) for m in body["messages"]):
            return _error(400, "a chat completion request needs a non-empty `messages` list "
                               "of message objects")
        base = _base_record(body, request.headers, t0, upstream)
        if isinstance(upstream, HttpUpstream):
            if body.get("stream"):
                return await _relay_stream(upstream, body, base, clock0, save)
            return await _relay(upstream, body, base, clock0, save)
        try:  # before a stream starts, so that a bad request is a 400 either way
            req = _request(body)
        except (TracetuneError, ValueError, TypeError) as exc:
            return _error(400, f"bad sampling parameters: {exc}")
        if body.get("stream"):
            return StreamingResponse(_local_stream(upstream, req, body, base, clock0, save),
                                     media_type="text/event-stream")
        return await _local(upstream, req, base, clock0, save)

    return app


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def _base_record(body: dict, headers, t0: float, upstream: Upstream) -> dict:
    role = headers.get(ROLE_HEADER)
    meta = {}
    if role is not None and role not in ROLES:
        meta["role_header"] = role
        role = "other"
    return dict(id=uuid.uuid4().hex, started_at=t0, messages=tuple(body["messages"]),
                params={k: v for k, v in body.items() if k not in _PARAM_SKIP},
                model=upstream.model, provider=upstream.provider, role=role,
                agent=headers.get(AGENT_HEADER), session_id=headers.get(SESSION_HEADER),
                stream=bool(body.get("stream")), source="proxy", meta=meta)


# --- HTTP relay ----------------------------------------------------------------------------------

async def _relay(up: HttpUpstream, body: dict, base: dict, clock0: float, save):
    from fastapi.responses import Response

    try:
        resp = await up.client.post(f"{up.url}/chat/completions", json={**body, "model": up.model})
    except up.httpx.HTTPError as exc:
        msg = f"upstream {up.url} failed: {type(exc).__name__}: {exc}"
        save(_rec(base, status="error", error=msg,
                         latency_s=time.perf_counter() - clock0))
        return _error(502, msg, "upstream_error")
    latency = time.perf_counter() - clock0
    raw = resp.content
    if resp.status_code >= 400:
        save(_rec(base, status="error", latency_s=latency,
                         error=f"HTTP {resp.status_code}: {raw[:2000].decode(errors='replace')}"))
    else:
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            usage = data.get("usage") or {}
            save(_rec(base, model=data.get("model") or up.model,
                             response=message.get("content") or "",
                             tool_calls=tuple(message.get("tool_calls") or ()),
                             latency_s=latency, prompt_tokens=usage.get("prompt_tokens"),
                             completion_tokens=usage.get("completion_tokens"),
                             meta={**base["meta"],
                                   "finish_reason": choice.get("finish_reason")}))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            save(_rec(base, status="error", latency_s=latency,
                             error=f"unreadable upstream answer ({exc})"))
    return Response(raw, status_code=resp.status_code,
                    media_type=resp.headers.get("content-type", "application/json"))


class _Collect:
    """Accumulates a chat.completion.chunk stream into the record's fields."""

    def __init__(self, clock0: float) -> None:
        self.clock0, self.text, self.ttft = clock0, [], None
        self.tool_calls: dict[int, dict] = {}
        self.usage: dict = {}
        self.model = None
        self.finish = None

    def add(self, chunk: dict) -> None:
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.ttft is None:
                    self.ttft = time.perf_counter() - self.clock0
                self.text.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                if self.ttft is None:
                    self.ttft = time.perf_counter() - self.clock0
                slot = self.tool_calls.setdefault(call.get("index", 0), {
                    "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            self.finish = choice.get("finish_reason") or self.finish

    def record(self, base: dict, **kw) -> Interaction:
        return _rec(base, **{
            "model": self.model or base["model"], "response": "".join(self.text),
            "tool_calls": tuple(self.tool_calls[i] for i in sorted(self.tool_calls)),
            "latency_s": time.perf_counter() - self.clock0, "ttft_s": self.ttft,
            "prompt_tokens": self.usage.get("prompt_tokens"),
            "completion_tokens": self.usage.get("completion_tokens"),
            "meta": {**base["meta"], "finish_reason": self.finish}, **kw})


async def _relay_stream(up: HttpUpstream, body: dict, base: dict, clock0: float, save):
    """Opens the upstream's stream, asking for usage (stream_options.include_usage). An
    upstream that fails before its first event is answered as the upstream answered (its HTTP
    status and body, or 502 when it cannot be reached), so the client sees the status, as it
    would without the proxy; else its events are relayed (`_relay_events`)."""
    from fastapi.responses import Response, StreamingResponse

    wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    payload = {**body, "model": up.model,
               "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
    try:
        resp = await up.client.send(
            up.client.build_request("POST", f"{up.url}/chat/completions", json=payload),
            stream=True)
        if resp.status_code >= 400:
            try:
                raw = await resp.aread()
            finally:
                await resp.aclose()
    except up.httpx.HTTPError as exc:
        msg = f"upstream {up.url} failed: {type(exc).__name__}: {exc}"
        save(_rec(base, status="error", error=msg, latency_s=time.perf_counter() - clock0))
        return _error(502, msg, "upstream_error")
    if resp.status_code >= 400:
        save(_rec(base, status="error", latency_s=time.perf_counter() - clock0,
                  error=f"HTTP {resp.status_code}: {raw[:2000].decode(errors='replace')}"))
        return Response(raw, status_code=resp.status_code,
                        media_type=resp.headers.get("content-type", "application/json"))
    return StreamingResponse(_relay_events(up, resp, wants_usage, base, clock0, save),
                             media_type="text/event-stream")


async def _relay_events(up: HttpUpstream, resp, wants_usage: bool, base: dict, clock0: float,
                        save):
    """Relays an open upstream stream event by event, dropping the usage-only event when the
    client did not ask for it. The record is saved before `data: [DONE]` is sent."""
    col, finished = _Collect(clock0), False
    try:
        buf = b""
        async for piece in resp.aiter_bytes():
            # SSE lines may end in CRLF (a CR left at a piece's end joins the next piece's LF)
            buf = (buf + piece).replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = event.strip()
                if not data.startswith(b"data:"):
                    continue
                data = data[5:].strip()
                if data == b"[DONE]":
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                col.add(chunk)
                if not chunk.get("choices") and chunk.get("usage") and not wants_usage:
                    continue
                yield b"data: " + data + b"\n\n"
        save(col.record(base))
        finished = True
        yield b"data: [DONE]\n\n"
    except up.httpx.HTTPError as exc:
        msg = f"upstream {up.url} failed mid-stream: {type(exc).__name__}: {exc}"
        save(col.record(base, status="error", error=msg))
        finished = True
        yield _sse({"error": {"message": msg, "type": "upstream_error"}})
    finally:
        if not finished:  # the client went away (the generator was closed or cancelled)
            save(col.record(base, status="error", error="client disconnected"))
        await resp.aclose()


def _rec(base: dict, **fields) -> Interaction:
    """The record of one request: its base fields (`_base_record`) updated with `fields`."""
    return Interaction(**{**base, **fields})


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


# --- a model in this process ---------------------------------------------------------------------

def _request(body: dict):
    """The request body -> tracetune GenerationRequest (OpenAI's defaults: temperature 1,
    top_p 1; max_tokens / max_completion_tokens, else 512; seed, else 0). A `response_format`
    of type json_schema (or json_object: any object) constrains the local model's decoding;
    a backend that cannot do that refuses it."""
    from tracetune.logs.record import content_text
    from tracetune.types import GenerationRequest, Message, SamplingParams

    stop = body.get("stop") or ()
    params = SamplingParams(
        temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
        max_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 512),
        stop=(stop,) if isinstance(stop, str) else tuple(stop))
    params.validate()
    messages = tuple(Message(m.get("role", "user") if m.get("role") in (
        "system", "user", "assistant") else "user", content_text(m.get("content")))
        for m in body["messages"])
    return GenerationRequest(messages, params, seed=int(body.get("seed") or 0),
                             json_schema=_response_schema(body.get("response_format")))


def _response_schema(fmt) -> dict | None:
    """OpenAI's `response_format` -> the JSON schema it asks for (None: free text). Raises
    ValueError for a format this proxy does not know."""
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
    if kind == "json_schema" and isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        return spec["schema"]
    raise ValueError('response_format must be {"type": "text"}, {"type": "json_object"} or '
                     '{"type": "json_schema", "json_schema": {"schema": {...}}}')


def _completion_json(rec_id: str, model: str, text: str, finish: str, usage) -> dict:
    return {"id": f"chatcmpl-{rec_id}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": {"role": "assistant",
                                                                 "content": text},
                                         "finish_reason": finish}],
            "usage": {"prompt_tokens": usage.prompt_tokens,
                      "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.total_tokens}}


def _finish(c) -> str:
    return {"length": "length"}.get(c.finish_reason, "stop")


async def _local(up: ModelUpstream, req, base: dict, clock0: float, save):
    from fastapi.responses import JSONResponse

    try:
        c = await asyncio.to_thread(up.model_obj.generate, req)
    except Exception as exc:  # noqa: BLE001 - the model's failure, recorded and reported
        msg = f"{type(exc).__name__}: {exc}"
        save(_rec(base, status="error", error=msg,
                         latency_s=time.perf_counter() - clock0))
        return _error(500, msg, "upstream_error")
    save(_rec(base, response=c.text, latency_s=time.perf_counter() - clock0,
                     prompt_tokens=c.usage.prompt_tokens,
                     completion_tokens=c.usage.completion_tokens,
                     meta={**base["meta"], "finish_reason": _finish(c)}))
    return JSONResponse(_completion_json(base["id"], up.model, c.text, _finish(c), c.usage))


async def _local_stream(up: ModelUpstream, req, body: dict, base: dict, clock0: float,
                        save):
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    chunk_id, created = f"chatcmpl-{base['id']}", int(time.time())

    def chunk(delta: dict, finish=None, usage=None) -> bytes:
        obj = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
               "model": up.model, "choices": [{"index": 0, "delta": delta,
                                               "finish_reason": finish}]}
        if usage is not None:
            obj = {**obj, "choices": [], "usage": usage}
        return _sse(obj)

    abandoned = threading.Event()

    def on_delta(piece: str) -> None:
        if abandoned.is_set():  # the client went away: stop generating for nobody, which
            raise _Abandoned    # frees the model (calls to it are serialised) for the others
        loop.call_soon_threadsafe(queue.put_nowait, piece)

    def run():
        model = up.model_obj
        if hasattr(model, "generate_stream"):
            return model.generate_stream(req, on_delta)
        c = model.generate(req)
        on_delta(c.text)
        return c

    def done(t: asyncio.Future) -> None:
        if not t.cancelled():
            t.exception()  # retrieved (an abandoned stream's result has nobody to read it)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    task = asyncio.ensure_future(asyncio.to_thread(run))
    task.add_done_callback(done)
    text, ttft, finished = [], None, False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            piece = await queue.get()
            if piece is None:
                break
            if ttft is None:
                ttft = time.perf_counter() - clock0
            text.append(piece)
            yield chunk({"content": piece})
        try:
            c = task.result()
        except Exception as exc:  # noqa: BLE001 - the model's failure, recorded and reported
            msg = f"{type(exc).__name__}: {exc}"
            save(_rec(base, response="".join(text), status="error", error=msg,
                             latency_s=time.perf_counter() - clock0, ttft_s=ttft))
            finished = True
            yield _sse({"error": {"message": msg, "type": "upstream_error"}})
            return
        yield chunk({}, _finish(c))
        if (body.get("stream_options") or {}).get("include_usage"):
            yield chunk({}, usage={"prompt_tokens": c.usage.prompt_tokens,
                                   "completion_tokens": c.usage.completion_tokens,
                                   "total_tokens": c.usage.total_tokens})
        save(_rec(base, response=c.text, latency_s=time.perf_counter() - clock0,
                         ttft_s=ttft, prompt_tokens=c.usage.prompt_tokens,
                         completion_tokens=c.usage.completion_tokens,
                         meta={**base["meta"], "finish_reason": _finish(c)}))
        finished = True
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:
            abandoned.set()
            save(_rec(base, response="".join(text), status="error",
                             error="client disconnected", ttft_s=ttft,
                             latency_s=time.perf_counter() - clock0))


class _Abandoned(Exception):
    """Raised in a local model's stream callback once its client has gone."""


def serve(upstream_spec: str, out: Path, *, host: str = "127.0.0.1", port: int = 8100,
          redactor: Redactor | None = None, log=print) -> None:
    """Run the proxy until interrupted. Raises TracetuneError for a spec that cannot be loaded
    or a port that cannot be bound."""
    import socket

    import uvicorn

    with socket.socket() as probe:  # a clear error before the model loads
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise TracetuneError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    upstream = make_upstream(upstream_spec)  # first: a bad spec leaves no store behind
    store = LogStore(out, create=True)
    app = create_app(upstream, store, redactor=redactor)

    @app.on_event("shutdown")
    async def _close() -> None:
        await upstream.close()
        store.close()

    log(f"tracetune proxy: {upstream.spec} at http://{host}:{port}/v1, recording to "
        f"{store.path}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
