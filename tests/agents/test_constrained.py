"""Constrained tool calls (issue 18, item 3): the protocol's JSON schema agrees with its parser;
with the schema, the embedded model's sampled messages are always valid protocol messages
(llama.cpp grammar, outlines on the hf backend); the openai backend sends it as response_format;
the repair workflow passes it on every request when `constrained` is on."""

import copy
import itertools
import json
import random
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import jsonschema
import pytest

from tracetune.agents.configs import RepairConfig
from tracetune.agents.repair import (GOAL_PROMPT, STOP, goal_prompt, offered_tools, repo_files,
                                     run_repair_episode, run_tests, system_prompt)
from tracetune.agents.spec import parse_workflow
from tracetune.agents.tools import (TOOLS, Workspace, anchor_lines, fuzzy_replace,
                                    parse_message, tool_call_schema)
from tracetune.errors import ModelError, TracetuneError
from tracetune.models import load_model
from tracetune.sandbox import Sandbox
from tracetune.tasks import load_suite
from tracetune.types import GenerationRequest, Message, SamplingParams

TINY = Path(__file__).parents[1] / "data" / "repair_suite.toml"
SAMPLES = 10


def valid_by_schema(obj) -> bool:
    return jsonschema.Draft202012Validator(tool_call_schema()).is_valid(obj)


def check_constrained(c, schema: dict, max_tokens: int) -> str:
    """A constrained completion is a protocol message valid under `schema`, or was cut by
    max_tokens (nothing else stops it early); returns its tool, "final" or "cut"."""
    if c.finish_reason == "length":
        assert c.usage.completion_tokens >= max_tokens, c
        return "cut"
    parsed = parse_message(c.text, TOOLS)
    assert c.finish_reason == "stop" and parsed.kind in ("tool_call", "final"), c.text
    assert jsonschema.Draft202012Validator(schema).is_valid(json.loads(c.text)), c.text
    return parsed.name or parsed.kind


def valid_by_parser(obj) -> bool:
    return parse_message(json.dumps(obj)).kind != "error"


def every_valid_message() -> list[dict]:
    """Each tool with its required args and every subset of its optional ones, and both finals."""
    out = []
    for name, (required, optional, _) in TOOLS.items():
        base = {k: "x.py" if t is str else 1 for k, t in required.items()}
        for n in range(len(optional) + 1):
            for keys in itertools.combinations(optional, n):
                out.append({"type": "tool_call", "name": name,
                            "args": {**base, **{k: optional[k] for k in keys}}})
    return out + [{"type": "final", "message": "fixed"}, {"type": "final"}]


@pytest.fixture(scope="module")
def task():
    return next(t for t in load_suite(str(TINY)).tasks if t.id == "tiny/maximum")


@pytest.fixture(scope="module")
def repair_prompt(task):
    """The first request of a repair episode: the system prompt and the goal."""
    return (Message("system", system_prompt("after_write")),
            Message("user", GOAL_PROMPT.format(spec=task.spec)))


# --- the schema --------------------------------------------------------------------------------

def test_the_schema_accepts_every_message_the_parser_accepts():
    messages = every_valid_message()
    assert {m.get("name") for m in messages} == {*TOOLS, None}
    for obj in messages:
        assert valid_by_parser(obj), obj
        assert valid_by_schema(obj), obj
        # the keys' order is free in both (a grammar picks one order)
        assert valid_by_schema(dict(reversed(list(obj.items()))))


@pytest.mark.parametrize("obj", [
    "read_file",
    [{"type": "final"}],
    {"type": "run", "name": "read_file", "args": {"rel_path": "a.py"}},
    {"type": "tool_call", "name": "pytest", "args": {}},
    {"type": "tool_call", "name": "read_file"},
    {"type": "tool_call", "name": "read_file", "args": []},
    {"type": "tool_call", "name": "read_file", "args": {}},
    {"type": "tool_call", "name": "read_file", "args": {"rel_path": "a.py", "path": "a.py"}},
    {"type": "tool_call", "name": "read_file", "args": {"rel_path": 3}},
    {"type": "tool_call", "name": "read_file", "args": {"rel_path": "a.py", "max_chars": "9"}},
    {"type": "tool_call", "name": "read_file", "args": {"rel_path": "a.py", "max_chars": True}},
    {"type": "tool_call", "name": "read_file", "args": {"rel_path": "a.py"}, "why": "look"},
    {"type": "tool_call", "name": "edit", "args": {"rel_path": "a.py", "search": "x"}},
    {"type": "final", "message": 1},
    {"type": "final", "message": "done", "name": "edit"},
    {"name": "list_files", "args": {}},
])
def test_the_schema_rejects_what_the_parser_rejects(obj):
    assert not valid_by_parser(obj)
    assert not valid_by_schema(obj)


def test_schema_and_parser_agree_on_mutated_messages():
    """Random edits of valid messages (a key dropped, a key added, a value retyped): the schema
    and the parser give the same verdict on every one."""
    rng = random.Random(0)
    values = ["a.py", 7, -1, True, None, [], {}, 2.5]
    bases = every_valid_message()
    checked = 0
    for _ in range(600):
        obj = copy.deepcopy(rng.choice(bases))
        target = obj["args"] if "args" in obj and rng.random() < 0.6 else obj
        edit = rng.choice(["drop", "add", "retype"])
        if edit == "drop" and target:
            target.pop(rng.choice(sorted(target)))
        elif edit == "add":
            target[rng.choice(["rel_path", "max_files", "content", "extra", "message"])] = \
                rng.choice(values)
        elif target:
            target[rng.choice(sorted(target))] = rng.choice(values)
        assert valid_by_schema(obj) == valid_by_parser(obj), obj
        checked += 1
    assert checked == 600


@pytest.fixture
def tools_kept():
    """TOOLS as it was, in its order, after the test (monkeypatch re-inserts a deleted key at
    the end, which reorders the system prompt's tool list for every later test)."""
    kept = dict(TOOLS)
    yield
    TOOLS.clear()
    TOOLS.update(kept)


def test_the_schema_follows_the_tool_definitions(monkeypatch, tools_kept):
    monkeypatch.setitem(TOOLS, "run", ({"cmd": str}, {"timeout_s": 10}, "run a command"))
    assert valid_by_schema({"type": "tool_call", "name": "run", "args": {"cmd": "ls"}})
    assert not valid_by_schema({"type": "tool_call", "name": "run", "args": {}})
    assert valid_by_parser({"type": "tool_call", "name": "run",
                            "args": {"cmd": "ls", "timeout_s": 3}})
    assert valid_by_schema({"type": "tool_call", "name": "run",
                            "args": {"cmd": "ls", "timeout_s": 3}})
    monkeypatch.delitem(TOOLS, "grep")
    assert not valid_by_schema({"type": "tool_call", "name": "grep", "args": {"pattern": "x"}})


# --- the workflow option -----------------------------------------------------------------------

class Recording:
    """A model that records each request before passing it on."""

    def __init__(self, model):
        self.model, self.spec, self.requests = model, model.spec, []

    def generate(self, request):
        self.requests.append(request)
        return self.model.generate(request)

    def generate_many(self, requests):
        return [self.generate(r) for r in requests]

    def close(self):
        pass


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as sb:
        yield sb


def test_the_option_is_validated():
    assert parse_workflow("repair,constrained=true").config.constrained is True
    assert parse_workflow("repair").config.constrained is False
    with pytest.raises(TracetuneError, match="constrained"):
        parse_workflow("repair,constrained=maybe")
    with pytest.raises(TracetuneError, match="constrained must be true or false"):
        RepairConfig(constrained="yes").validate()


def test_constrained_episodes_send_the_schema_and_count_as_before(tmp_path, task, sandbox):
    """A scripted model (it ignores the schema) gives the same episode both ways; only the
    constrained one sends the schema, and without the blank-line stop string."""
    fix = json.dumps({"type": "tool_call", "name": "edit", "args": {
        "rel_path": "maximum.py", "search": "if x < best:", "replace": "if x > best:"}})
    script = tmp_path / "script.jsonl"
    script.write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        "Let me look.", fix, '{"type": "final", "message": "done"}']))
    outcomes = {}
    for constrained in (False, True):
        model = Recording(load_model(f"replay:{script}"))
        out = run_repair_episode(task, RepairConfig(constrained=constrained), model, sandbox,
                                 params=SamplingParams(), seed=1)
        outcomes[constrained] = out
        schemas = {json.dumps(r.json_schema) for r in model.requests}
        stops = {r.params.stop for r in model.requests}
        assert len(model.requests) == 3
        if constrained:  # the fix changes no file list: one schema, the repository's paths
            files = ["README.md", "maximum.py", "test_maximum.py"]
            assert schemas == {json.dumps(tool_call_schema(files=files))} and stops == {()}
        else:
            assert schemas == {"null"} and stops == {(STOP,)}
    assert outcomes[True].success and outcomes[True].metrics == outcomes[False].metrics
    assert outcomes[True].metrics["parse_errors"] == 1


ANCHORED = RepairConfig(constrained=True, anchored_edits=True, show_file=True, edit_only=True,
                        numbered_reads=True, task_example=True, max_iters=3)


def edit_searches(schema: dict, path: str) -> list[str]:
    """The search texts an anchored schema allows in an edit of `path`."""
    return [s for c in schema["oneOf"] if c["properties"].get("name", {}).get("const") == "edit"
            and c["properties"]["args"]["properties"]["rel_path"] == {"const": path}
            for s in c["properties"]["args"]["properties"]["search"]["enum"]]


def test_anchored_episodes_send_the_files_lines_and_renew_them_after_an_edit(tmp_path, task,
                                                                            sandbox):
    script = tmp_path / "script.jsonl"
    fix = {"type": "tool_call", "name": "edit", "args": {
        "rel_path": "maximum.py", "search": "if x < best:", "replace": "if x > best:"}}
    script.write_text("".join(json.dumps({"text": json.dumps(m)}) + "\n"
                              for m in (fix, {"type": "final"})))
    model = Recording(load_model(f"replay:{script}"))
    out = run_repair_episode(task, ANCHORED, model, sandbox, params=SamplingParams(), seed=1)
    assert out.success and out.metrics["valid_edit"]
    first, second = (edit_searches(r.json_schema, "maximum.py") for r in model.requests)
    assert "if x < best:" in first and "if x > best:" not in first
    assert "if x > best:" in second and "if x < best:" not in second  # the edited file's lines
    assert "An edit's search is one whole line" in model.requests[0].messages[0].content


# --- llama.cpp: a grammar --------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedded():
    # prefix_cache: the samples share the long repair prompt, read once
    m = load_model("embedded,n_ctx=2048,prefix_cache=true")
    yield m
    m.close()


@pytest.mark.slow
def test_grammar_constrained_samples_are_always_valid_tool_calls(embedded, repair_prompt,
                                                                 record_property):
    """The issue's "a grammar-constrained call is always valid JSON of the tool schema": every
    sample at temperature 1.0 that ends is one protocol message valid under the schema (a
    grammar cannot bound a string's length: a sample may only be cut by max_tokens); the same
    prompts unconstrained (with the driver's blank-line stop) are reported, not asserted."""
    schema = tool_call_schema()
    params = SamplingParams(temperature=1.0, max_tokens=256)
    kinds = []
    for seed in range(SAMPLES):
        c = embedded.generate(GenerationRequest(repair_prompt, params, seed, json_schema=schema))
        kinds.append(check_constrained(c, schema, params.max_tokens))
    free = [parse_message(embedded.generate(GenerationRequest(
        repair_prompt, SamplingParams(temperature=1.0, max_tokens=256, stop=(STOP,)),
        seed)).text).kind != "error" for seed in range(SAMPLES)]
    ended = sum(k != "cut" for k in kinds)
    assert ended >= SAMPLES // 2, kinds  # most calls end well inside 256 tokens
    record_property("constrained_valid", f"{ended}/{SAMPLES}")
    record_property("unconstrained_valid", f"{sum(free)}/{SAMPLES}")
    print(f"\nvalid protocol messages at temperature 1.0: constrained {ended}/{SAMPLES} "
          f"({', '.join(kinds)}), unconstrained {sum(free)}/{SAMPLES}")


CODE_SCHEMA = {"type": "object", "properties": {"code": {"type": "string", "maxLength": 60}},
               "required": ["code"], "additionalProperties": False}
CODE_PROMPT = (Message("user", "Write a Python function add(a, b) that returns a + b."),)


ODD_TEXTS = ['"""The largest element."""', "a\\b", "it's \\\"quoted\\\"", "tab\there", "né"]


def test_grammar_literals_hold_quotes_and_backslashes():
    """An enum of lines of code (a docstring's quotes, a backslash) is a grammar llama.cpp
    parses (llama-cpp-python's converter alone writes `\\"` into the literal and fails)."""
    from llama_cpp import LlamaGrammar

    from tracetune.models.llamacpp import schema_grammar

    gbnf = schema_grammar({"type": "object", "properties": {"line": {"enum": ODD_TEXTS}},
                           "required": ["line"], "additionalProperties": False})
    LlamaGrammar.from_string(gbnf, verbose=False)


@pytest.mark.slow
def test_a_grammar_of_odd_literals_decodes_one_of_them(embedded):
    schema = {"enum": ODD_TEXTS}
    for seed in range(3):
        c = embedded.generate(GenerationRequest(CODE_PROMPT, SamplingParams(
            temperature=1.0, max_tokens=32), seed, json_schema=schema))
        assert json.loads(c.text) in ODD_TEXTS, c.text


@pytest.mark.slow
def test_constrained_strings_hold_no_raw_newlines_and_streams_agree(embedded):
    """Code in a JSON string: the model wants a newline after `def add(a, b):`, which JSON only
    allows escaped (llama-cpp-python's converter alone lets a raw one through)."""
    req = GenerationRequest(CODE_PROMPT, SamplingParams(max_tokens=96), json_schema=CODE_SCHEMA)
    c = embedded.generate(req)
    assert c.finish_reason == "stop" and "def add" in json.loads(c.text)["code"]
    pieces = []
    streamed = embedded.generate_stream(req, pieces.append)
    assert "".join(pieces) == streamed.text and json.loads(streamed.text)


@pytest.mark.slow
def test_a_constrained_repair_episode_runs_end_to_end(embedded, task, sandbox):
    model = Recording(embedded)
    out = run_repair_episode(task, RepairConfig(max_iters=3, constrained=True), model, sandbox,
                             params=SamplingParams(temperature=0.7, max_tokens=256), seed=3)
    assert out.metrics["parse_errors"] == 0 and out.metrics["steps"] == len(out.attempts) >= 1
    assert all(a.facts["kind"] != "parse_error" and a.code for a in out.attempts)
    files = ["README.md", "maximum.py", "test_maximum.py"]
    assert model.requests[0].json_schema == tool_call_schema(files=files)
    assert set(out.metrics) >= {"parse_errors", "tool_errors", "loop_detections", "writes",
                                "module_edits", "fault_edits", "steps", "wrote", "valid_edit",
                                "fault_edit", "end"}


@pytest.mark.slow
def test_anchored_samples_edit_a_line_of_the_module_that_the_edit_tool_takes(embedded, task,
                                                                              sandbox, tmp_path):
    """Under the anchored schema every sampled edit that ends searches for a line the module has
    once, so the edit tool takes it (an exact match): the model cannot miss the text it edits."""
    for rel, text in repo_files(task).items():
        (tmp_path / rel).write_text(text)
    ws = Workspace(tmp_path)
    anchors = {rel: anchor_lines((tmp_path / rel).read_text()) for rel in ws.paths()}
    schema = tool_call_schema(offered_tools(ANCHORED), ws.paths(), anchors)
    prompt = (Message("system", system_prompt("after_write", ANCHORED, task)),
              Message("user", goal_prompt(task, ANCHORED, run_tests(task, task.buggy, sandbox))))
    params = SamplingParams(temperature=1.0, max_tokens=192)
    kinds = []
    for seed in range(6):
        c = embedded.generate(GenerationRequest(prompt, params, seed, json_schema=schema))
        kinds.append(check_constrained(c, schema, params.max_tokens))
        if kinds[-1] == "edit":
            args = json.loads(c.text)["args"]
            assert args["search"] in anchors[args["rel_path"]]
            text = (tmp_path / args["rel_path"]).read_text()
            assert fuzzy_replace(text, args["search"], args["replace"])[1] == "exact match"
    print(f"\nanchored samples at temperature 1.0: {', '.join(kinds)}")
    assert "edit" in kinds  # what the test is about happened (write_file is not offered)


# --- openai: response_format ---------------------------------------------------------------------

class _Stub(BaseHTTPRequestHandler):
    """A chat completions endpoint that records each body; with `refuse`, it answers 400 to a
    request carrying response_format, as a server without structured outputs does."""

    bodies: list
    refuse: bool

    def do_POST(self):  # http.server calls it by this name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        if self.refuse and "response_format" in body:
            status, reply = 400, {"error": {"message": "response_format is not supported",
                                            "type": "invalid_request_error"}}
        else:
            status, reply = 200, {
                "id": "x", "object": "chat.completion", "created": 0, "model": "stub",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": '{"type": "final"}'}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(params=[False, True], ids=["accepts", "refuses"])
def stub(request):
    handler = type("Handler", (_Stub,), {"bodies": [], "refuse": request.param})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_sends_the_schema_as_response_format(stub):
    handler, url = stub
    model = load_model(f"openai:stub@{url},max_retries=0")
    schema = tool_call_schema()
    free = model.generate(GenerationRequest((Message("user", "hi"),)))
    assert free.text == '{"type": "final"}' and "response_format" not in handler.bodies[0]
    req = GenerationRequest((Message("user", "hi"),), json_schema=schema)
    if handler.refuse:
        with pytest.raises(ModelError) as err:
            model.generate(req)
        assert "HTTP 400" in str(err.value) and "JSON schema" in str(err.value)
        assert "\n" not in str(err.value)
    else:
        assert model.generate(req).text == '{"type": "final"}'
    assert handler.bodies[1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema,
                                               "strict": True}}
    model.close()


# --- hf: outlines --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_model():
    m = load_model("hf:embedded,device=cpu")
    yield m
    m.close()


@pytest.mark.slow
def test_hf_constrained_samples_are_valid_tool_calls(hf_model, repair_prompt):
    """Two sampled rows in one batch (each with its own parse state) and a greedy one."""
    schema = tool_call_schema()
    sampled = [GenerationRequest(repair_prompt, SamplingParams(temperature=1.0, max_tokens=96),
                                 seed, json_schema=schema) for seed in (1, 2)]
    greedy = GenerationRequest(repair_prompt, SamplingParams(max_tokens=96), json_schema=schema)
    kinds = [check_constrained(c, schema, 96)
             for c in hf_model.generate_many([*sampled, greedy])]
    assert kinds[2] != "cut", kinds  # the greedy call ends


@pytest.mark.slow
def test_hf_rows_of_different_schemas_share_a_batch(hf_model, repair_prompt):
    """Two repositories' schemas (each naming its own files) and a free row in one batch: each
    constrained row stays inside its own schema, and a row's text does not depend on what else
    is in the batch (the same request alone gives the same greedy text)."""
    schemas = [tool_call_schema(files=["a.py", "test_a.py"]),
               tool_call_schema(files=["b.py", "test_b.py"])]
    params = SamplingParams(max_tokens=96)
    reqs = [GenerationRequest(repair_prompt, params, 0, json_schema=s) for s in schemas]
    reqs.append(GenerationRequest(repair_prompt, SamplingParams(max_tokens=8), 0))
    out = hf_model.generate_many(reqs)
    for schema, c in zip(schemas, out):
        assert check_constrained(c, schema, 96) != "cut"
    assert out[0].text == hf_model.generate_many(reqs[:1])[0].text
    assert out[1].text == hf_model.generate_many(reqs[1:2])[0].text


@pytest.mark.slow
def test_hf_without_outlines_refuses_the_schema(hf_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "outlines_core", None)  # as if not installed
    req = GenerationRequest((Message("user", "hi"),), SamplingParams(max_tokens=4),
                            json_schema={"type": "object"})
    with pytest.raises(ModelError, match="needs outlines"):
        hf_model.generate(req)
