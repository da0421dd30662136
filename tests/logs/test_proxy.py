"""`tracetune proxy` for real: the CLI started as a subprocess on loopback, driven with the
official `openai` client. An embedded-model proxy (concurrency, streaming, kill -9), relays to a
second proxy and to llama.cpp's server, secrets, upstream errors and bad input. Proxies answering
from a replay script (no model) keep the tests that need no real model fast."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tracetune.logs.proxy import Upstream, create_app
from tracetune.logs.store import DB_NAME, LogStore
from tracetune.models.spec import embedded_gguf_path
from tracetune.types import Completion, Usage

CLI = [sys.executable, "-m", "tracetune.cli"]
READY_S = 90  # a proxy or server that is not up by then has failed
# a client's limit per request: generous, since a loaded 2-core machine can be 5x slower and the
# model answers one request at a time (the 50th waits for the 49 before it)
CLIENT_TIMEOUT_S = 600
UPSTREAM_KEY = "tt-upstream-Zq8vW3nR7kLp2Xy"  # no default pattern matches it: only the literal
CLIENT_KEY = "sk-client-9f8e7d6c5b4a3f2e1d0c9b8a"
MESSAGE_KEY = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, url: str, log_path) -> None:
    deadline = time.monotonic() + READY_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # it answers (e.g. 401 without a key): it is up
            return
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"{url} did not come up in {READY_S} s")
            time.sleep(0.2)


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Proxy:
    def __init__(self, proc, port: int, out) -> None:
        self.proc, self.port, self.out = proc, port, out
        self.url = f"http://127.0.0.1:{port}/v1"

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=kw.pop("api_key", CLIENT_KEY),
                             max_retries=0, timeout=CLIENT_TIMEOUT_S, **kw)

    def records(self) -> list:
        with LogStore(self.out) as store:
            return list(store)


def _start_proxy(upstream: str, out, log_dir, *, env=None, args=()) -> Proxy:
    port = _free_port()
    log_path = log_dir / f"proxy-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CLI, "proxy", "--upstream", upstream, "--port", str(port), "--out", str(out),
             *args], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    _wait_ready(proc, f"http://127.0.0.1:{port}/health", log_path)
    return Proxy(proc, port, out)


@pytest.fixture
def start_proxy(tmp_path):
    """Starts proxies (stopped at the end of the test): start_proxy(upstream, out=..., ...)."""
    started = []

    def start(upstream: str, out=None, **kw) -> Proxy:
        proxy = _start_proxy(upstream, out or tmp_path / f"run{len(started)}", tmp_path, **kw)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        _stop(proxy.proc)


@pytest.fixture(scope="module")
def replay_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "answers.jsonl"
    path.write_text("".join(json.dumps({"text": f"replayed answer {i}"}) + "\n"
                            for i in range(200)))
    return f"replay:{path}"


@pytest.fixture(scope="module")
def replay_proxy(replay_spec, tmp_path_factory):
    """A proxy answering from a replay script: no model, starts in about a second."""
    root = tmp_path_factory.mktemp("replay_proxy")
    proxy = _start_proxy(replay_spec, root / "run", root)
    yield proxy
    _stop(proxy.proc)


@pytest.fixture(scope="module")
def embedded_proxy(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded_proxy")
    proxy = _start_proxy("embedded", root / "run", root)
    yield proxy
    _stop(proxy.proc)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama.cpp's own OpenAI-compatible server on the embedded GGUF, with an API key."""
    root = tmp_path_factory.mktemp("llama_server")
    port = _free_port()
    log_path = root / "server.log"  # llama.cpp logs a lot
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
             "--api_key", UPSTREAM_KEY, "--model_alias", "smol"],
            stdout=log, stderr=subprocess.STDOUT)
    _wait_ready(proc, f"http://127.0.0.1:{port}/v1/models", log_path)
    yield f"http://127.0.0.1:{port}/v1"
    _stop(proc)


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _health(proxy: Proxy) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port}/health", timeout=10) as resp:
        return json.loads(resp.read())


def _ask(client, prompt: str, *, stream: bool, max_tokens: int = 12, usage: bool = False,
         headers=None, seed: int = 7):
    """(text, usage or None, chunks) of one chat completion, as the client received it."""
    kw = {"model": "any", "messages": [{"role": "user", "content": prompt}],
          "max_tokens": max_tokens, "temperature": 0, "seed": seed,
          "extra_headers": headers or {}}
    if not stream:
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.usage, [r]
    if usage:
        kw["stream_options"] = {"include_usage": True}
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, next((c.usage for c in chunks if c.usage), None), chunks


def _store_bytes(out) -> bytes:
    """Every byte of a store on disk (the database and its write-ahead log)."""
    return b"".join(p.read_bytes() for p in out.glob(DB_NAME + "*"))


# --- bad input (no model) ----------------------------------------------------------------------

def test_bad_requests_are_400_and_not_recorded(replay_proxy):
    url = f"{replay_proxy.url}/chat/completions"
    assert _post(url, b"not json{")[0] == 400
    for body in ([1, 2], {}, {"messages": []}, {"messages": "hi"}, {"messages": [1, 2]},
                 {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"},
                 {"messages": [{"role": "user", "content": "hi"}], "temperature": "hot",
                  "stream": True}):
        status, answer = _post(url, json.dumps(body).encode())
        assert status == 400, body
        assert answer["error"]["message"]
    assert _health(replay_proxy)["records"] == 0
    assert replay_proxy.records() == []


def _cli(*args, timeout=60):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_a_port_in_use_is_one_line_error(replay_spec, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli("proxy", "--upstream", replay_spec, "--port", str(port),
                 "--out", str(tmp_path / "run"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec, words", [
    ("nosuch:model", "unknown model spec"),
    ("gguf:/nonexistent/model.gguf", "model file not found"),
])
def test_an_unusable_upstream_is_one_line_error(spec, words, tmp_path):
    r = _cli("proxy", "--upstream", spec, "--port", str(_free_port()),
             "--out", str(tmp_path / "run"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()  # a failed command leaves no store behind


# --- secrets and upstream errors (relayed to a replay proxy) ------------------------------------

def _relay_spec(url: str) -> str:
    return f"openai:smol@{url},api_key_env=TT_TEST_UPSTREAM_KEY"


@pytest.mark.parametrize("no_redact", [False, True])
def test_secrets_never_reach_the_store(replay_proxy, start_proxy, no_redact):
    front = start_proxy(_relay_spec(replay_proxy.url), env={"TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY},
                        args=["--no-redact"] if no_redact else [])
    client = front.client(api_key=CLIENT_KEY)
    prompt = f"my key is {MESSAGE_KEY} and the server's is {UPSTREAM_KEY}; fix my code"
    for stream in (False, True):
        text, _, _ = _ask(client, prompt, stream=stream)
        assert text.startswith("replayed answer")
    recs = front.records()
    assert len(recs) == 2 and {r.status for r in recs} == {"ok"}
    raw = _store_bytes(front.out)
    # the upstream's key is removed even with --no-redact; the client's key is never stored
    assert UPSTREAM_KEY.encode() not in raw and CLIENT_KEY.encode() not in raw
    assert (MESSAGE_KEY.encode() in raw) == no_redact
    assert all("[REDACTED]" in r.messages[0]["content"] for r in recs)


def test_upstream_errors_are_recorded_and_reported(replay_proxy, start_proxy, tmp_path):
    wrong_path = start_proxy(_relay_spec(replay_proxy.url.replace("/v1", "/nope")))
    dead = start_proxy(_relay_spec(f"http://127.0.0.1:{_free_port()}/v1"))
    for proxy, status, words in ((wrong_path, 404, "HTTP 404"), (dead, 502, "failed")):
        client = proxy.client()
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as info:
                _ask(client, f"hello stream={stream}", stream=stream)
            assert info.value.status_code == status
        recs = proxy.records()
        assert len(recs) == 2 and {r.stream for r in recs} == {False, True}
        for rec in recs:
            assert rec.status == "error" and words in rec.error and rec.response == ""
            assert rec.latency_s > 0
    with pytest.raises(openai.APIStatusError) as info:
        dead.client().models.list()
    assert info.value.status_code == 502


# --- an abandoned local stream (in process, a scripted streaming model) ------------------------

class _SlowStreamer:
    """A local model that streams up to `limit` pieces, 5 ms apart, counting what it made."""

    def __init__(self, limit: int) -> None:
        self.limit, self.produced, self.stopped = limit, 0, threading.Event()

    def generate_stream(self, request, on_delta) -> Completion:
        try:
            for _ in range(self.limit):
                time.sleep(0.005)
                on_delta("x ")
                self.produced += 1
            return Completion("x " * self.produced, Usage(1, self.produced), 0.0, "length")
        finally:
            self.stopped.set()

    def close(self) -> None:
        pass


@pytest.fixture
def serve_app():
    """Serves ASGI apps on loopback from a thread of this process; stopped after the test."""
    import uvicorn

    servers = []

    def serve(app) -> str:
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + READY_S
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "the app did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}/v1"

    yield serve
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


def test_an_abandoned_local_stream_stops_the_model_and_is_recorded(serve_app, tmp_path):
    model = _SlowStreamer(limit=4000)  # 20 s of pieces when nobody stops it
    upstream = Upstream("slow", "slow", "test")
    upstream.model_obj = model
    with LogStore(tmp_path, create=True) as store:
        client = openai.OpenAI(base_url=serve_app(create_app(upstream, store)), api_key="x",
                               max_retries=0, timeout=CLIENT_TIMEOUT_S)
        stream = client.chat.completions.create(
            model="slow", messages=[{"role": "user", "content": "go"}], stream=True)
        for n, _ in enumerate(stream):
            if n == 3:
                break
        stream.close()
        assert model.stopped.wait(timeout=CLIENT_TIMEOUT_S)
        assert model.produced < model.limit  # stopped when the client left, not at the end
        recs = list(store)
    assert len(recs) == 1 and recs[0].status == "error"
    assert recs[0].error == "client disconnected" and recs[0].response.startswith("x x")


class _SchemaEcho:
    """A local model that answers with the JSON schema it was asked to decode to."""

    def generate(self, request) -> Completion:
        return Completion(json.dumps(request.json_schema), Usage(1, 1), 0.0)

    def close(self) -> None:
        pass


def test_a_local_model_gets_the_response_format_schema(serve_app, tmp_path):
    upstream = Upstream("echo", "echo", "test")
    upstream.model_obj = _SchemaEcho()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    with LogStore(tmp_path, create=True) as store:
        client = openai.OpenAI(base_url=serve_app(create_app(upstream, store)), api_key="x",
                               max_retries=0, timeout=CLIENT_TIMEOUT_S)
        ask = {"model": "echo", "messages": [{"role": "user", "content": "go"}]}
        answers = [json.loads(client.chat.completions.create(**ask, **extra).choices[0]
                              .message.content) for extra in (
            {}, {"response_format": {"type": "json_object"}},
            {"response_format": {"type": "json_schema",
                                 "json_schema": {"name": "a", "schema": schema}}})]
        assert answers == [None, {"type": "object"}, schema]
        with pytest.raises(openai.BadRequestError, match="response_format"):
            client.chat.completions.create(**ask, response_format={"type": "grammar"})


# --- the embedded model -------------------------------------------------------------------------

ROLES = ["coder", "tester", None, "wizard", None]  # "wizard" is no role: stored as other


@pytest.mark.slow
def test_fifty_concurrent_requests_make_fifty_whole_records(start_proxy):
    proxy = start_proxy("embedded")
    client = proxy.client()
    # 25 prompts, each asked once streamed and once not (all 50 in flight at once); each request
    # is told apart by its own session id
    jobs = []
    for i in range(50):
        prompt, stream = f"Say a word about the number {i % 25}.", i >= 25
        role = ROLES[i % len(ROLES)]
        headers = {"X-Session-Id": f"req-{i}"}
        if role:
            headers |= {"X-Agent-Role": role, "X-Agent-Name": f"agent-{i % 3}"}
        jobs.append({"prompt": prompt, "stream": stream, "headers": headers, "role": role,
                     "usage": stream and i % 2 == 0})
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda j: _ask(client, j["prompt"], stream=j["stream"],
                                               max_tokens=8, usage=j["usage"],
                                               headers=j["headers"]), jobs))
    recs = {r.session_id: r for r in proxy.records()}
    assert len(recs) == 50 and _health(proxy)["records"] == 50
    for i, (job, (text, usage, chunks)) in enumerate(zip(jobs, answers)):
        rec = recs[f"req-{i}"]
        assert rec.status == "ok" and rec.error is None
        assert rec.response == text and text
        assert rec.messages == ({"role": "user", "content": job["prompt"]},)
        assert rec.params["max_tokens"] == 8 and rec.params["temperature"] == 0
        assert rec.model == "embedded" and rec.provider == "llamacpp" and rec.source == "proxy"
        assert rec.stream == job["stream"]
        assert rec.role == {"wizard": "other"}.get(job["role"], job["role"])
        assert rec.agent == (job["headers"].get("X-Agent-Name"))
        assert rec.prompt_tokens > 5 and 0 < rec.completion_tokens <= 8
        assert rec.meta["finish_reason"] in ("stop", "length")
        assert rec.latency_s > 0
        if job["stream"]:
            assert 0 < rec.ttft_s <= rec.latency_s
            # the usage-only chunk comes only when asked for
            assert (usage is not None) == job["usage"]
            assert any(not c.choices for c in chunks) == job["usage"]
        else:
            assert rec.ttft_s is None
        if usage is not None:
            assert (usage.prompt_tokens, usage.completion_tokens) == \
                (rec.prompt_tokens, rec.completion_tokens)
    assert recs["req-3"].meta["role_header"] == "wizard"
    for i in range(25):  # streamed answers equal the non-streamed ones (greedy, same seed)
        assert answers[i][0] == answers[i + 25][0]


@pytest.mark.slow
def test_kill_9_mid_stream_leaves_whole_records_and_a_usable_store(start_proxy, tmp_path):
    out = tmp_path / "killed"
    proxy = start_proxy("embedded", out)
    client = proxy.client()
    done = {}  # session id -> the text the client received whole
    for i in range(3):
        sid = f"before-{i}"
        done[sid] = _ask(client, f"Say hello to person {i}.", stream=i == 2, max_tokens=8,
                         headers={"X-Session-Id": sid})[0]

    in_flight = threading.Event()
    outcome = {}  # session id -> ("done" | "failed", text received)

    def ask(sid: str, prompt: str, stream: bool) -> None:
        got = []
        try:
            if stream:
                for chunk in client.chat.completions.create(
                        model="any", messages=[{"role": "user", "content": prompt}],
                        max_tokens=200, temperature=0, seed=7, stream=True,
                        extra_headers={"X-Session-Id": sid}):
                    if chunk.choices and chunk.choices[0].delta.content:
                        got.append(chunk.choices[0].delta.content)
                        if len(got) == 5 and sid == "long":
                            in_flight.set()
            else:
                got.append(_ask(client, prompt, stream=False, max_tokens=200,
                                headers={"X-Session-Id": sid})[0])
            outcome[sid] = ("done", "".join(got))
        except openai.APIError:
            outcome[sid] = ("failed", "".join(got))

    prompts = {"long": "Write a long story about a dragon who learns to bake bread.",
               "queued-stream": "Write a long poem about the sea.",
               "queued": "Explain how a bicycle works, in detail."}
    threads = [threading.Thread(target=ask, args=(sid, prompts[sid], sid != "queued"))
               for sid in prompts]
    threads[0].start()
    assert in_flight.wait(timeout=CLIENT_TIMEOUT_S), "the long stream never started"
    for t in threads[1:]:
        t.start()
    time.sleep(0.2)  # let the queued requests reach the proxy
    os.kill(proxy.proc.pid, signal.SIGKILL)
    proxy.proc.wait()
    for t in threads:
        t.join(timeout=CLIENT_TIMEOUT_S)
    assert outcome["long"][0] == "failed" and outcome["long"][1]  # it was cut mid-stream
    done |= {sid: text for sid, (how, text) in outcome.items() if how == "done"}

    db = sqlite3.connect(out / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    recs = {r.session_id: r for r in LogStore(out)}
    for sid, text in done.items():  # every answer the client got whole has its record
        assert recs[sid].status == "ok" and recs[sid].response == text
    # a record is whole even when the client missed the end: it equals a fresh answer
    again = start_proxy("embedded", out)
    for sid, rec in recs.items():
        assert rec.status == "ok"
        if sid not in done:
            assert rec.response == _ask(again.client(), rec.prompt, stream=False,
                                        max_tokens=rec.params["max_tokens"])[0]
    assert len(again.records()) == len(recs) + len(set(recs) - set(done))
    _ask(again.client(), "One more.", stream=True, max_tokens=4,
         headers={"X-Session-Id": "after"})
    assert len(again.records()) == len(recs) + len(set(recs) - set(done)) + 1


@pytest.mark.slow
def test_a_stream_the_client_abandons_is_recorded_as_error(embedded_proxy):
    client = embedded_proxy.client()
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Write a long story about a cat."}],
        max_tokens=200, temperature=0, stream=True, extra_headers={"X-Session-Id": "abandoned"})
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while not (recs := [r for r in embedded_proxy.records() if r.session_id == "abandoned"]):
        assert time.monotonic() < deadline, "the abandoned stream was never recorded"
        time.sleep(0.2)
    assert recs[0].status == "error" and recs[0].error == "client disconnected"


# --- HTTP relay ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_relay_to_a_second_proxy(embedded_proxy, start_proxy):
    front = start_proxy(f"openai:smol@{embedded_proxy.url}")
    direct, relayed = embedded_proxy.client(), front.client()
    prompt = "Write a Python function add(a, b)."
    want = _ask(direct, prompt, stream=False, max_tokens=16)
    plain = _ask(relayed, prompt, stream=False, max_tokens=16)
    streamed = _ask(relayed, prompt, stream=True, max_tokens=16)
    with_usage = _ask(relayed, prompt, stream=True, max_tokens=16, usage=True)
    assert plain[0] == streamed[0] == with_usage[0] == want[0]
    assert plain[1].completion_tokens == want[1].completion_tokens
    # usage is asked upstream for every stream, forwarded only when the client asked for it
    assert streamed[1] is None and all(c.choices for c in streamed[2])
    assert with_usage[1] is not None
    recs = front.records()
    assert len(recs) == 3 and {r.status for r in recs} == {"ok"}
    for rec in recs:
        assert rec.response == want[0] and rec.provider == "local" and rec.model == "embedded"
        assert rec.prompt_tokens > 5 and 0 < rec.completion_tokens <= 16
        assert (rec.ttft_s is not None) == rec.stream
    assert {(r.prompt_tokens, r.completion_tokens) for r in recs if r.stream} == \
        {(with_usage[1].prompt_tokens, with_usage[1].completion_tokens)}
    assert [m.id for m in relayed.models.list().data] == ["embedded"]


@pytest.mark.slow
def test_relay_to_llama_cpp_server_sends_the_upstream_key_and_stores_no_key(llama_server,
                                                                             start_proxy):
    front = start_proxy(_relay_spec(llama_server), env={"TT_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    client = front.client(api_key=CLIENT_KEY)
    prompt = f"Name three colours. (key {UPSTREAM_KEY})"
    plain = _ask(client, prompt, stream=False, max_tokens=8)
    streamed = _ask(client, prompt, stream=True, max_tokens=8)
    assert plain[0] and streamed[0]
    recs = sorted(front.records(), key=lambda r: r.stream)
    assert [r.status for r in recs] == ["ok", "ok"]
    assert [r.response for r in recs] == [plain[0], streamed[0]]
    assert recs[0].completion_tokens == plain[1].completion_tokens
    assert recs[1].ttft_s is not None
    raw = _store_bytes(front.out)
    assert UPSTREAM_KEY.encode() not in raw and CLIENT_KEY.encode() not in raw
    # the client's own Authorization is neither forwarded nor stored: a proxy without the
    # upstream's key is refused even when its client sends that key (which no pattern masks)
    keyless = start_proxy(f"openai:smol@{llama_server}", env={"OPENAI_API_KEY": ""})
    with pytest.raises(openai.AuthenticationError):
        _ask(keyless.client(api_key=UPSTREAM_KEY), "Name a colour.", stream=False, max_tokens=4)
    assert [r.status for r in keyless.records()] == ["error"]
    assert UPSTREAM_KEY.encode() not in _store_bytes(keyless.out)
