"""`tracetune import`: each format's fixture (written in its publisher's layout, with malformed
records) into an interaction store: counts, mapped fields, malformed records skipped by number,
duplicates skipped, secrets masked."""

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.logs.importers import import_logs
from tracetune.logs.redact import MASK, Redactor
from tracetune.logs.store import LogStore

FIXTURES = Path(__file__).parent / "fixtures"
BATCH_INPUT = FIXTURES / "openai_batch_input.jsonl"


def iso(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stored(run):
    with LogStore(run) as store:
        return {r.id: r for r in store}


def where(report):
    return [m.where for m in report.malformed]


def test_openai_jsonl_pairs_batch_lines_and_fine_tuning_examples(tmp_path):
    report = import_logs(FIXTURES / "openai.jsonl", "openai-jsonl", tmp_path,
                         batch_input=BATCH_INPUT)
    assert (report.read, report.imported, report.duplicates) == (10, 6, 1)
    assert where(report) == ["line 3", "line 8", "line 11"]
    assert report.malformed[0].why.startswith("not JSON")
    recs = stored(tmp_path)
    pair = recs["req-001"]
    assert pair.started_at == iso("2026-03-02T10:00:00Z") and pair.latency_s == 1.25
    assert [m["role"] for m in pair.messages] == ["system", "user"]
    assert pair.model == "gpt-4o-mini-2024-07-18"  # the response's model, not the request's
    assert pair.tool_calls[0]["function"] == {"name": "read_file",
                                              "arguments": '{"path": "setup.py"}'}
    assert pair.params["temperature"] == 0.2 and pair.params["tools"][0]["type"] == "function"
    assert (pair.prompt_tokens, pair.completion_tokens) == (52, 17)
    assert (pair.agent, pair.session_id, pair.source) == ("coder", "run-7", "openai-jsonl")
    assert pair.meta["metadata"] == {"team": "search"}
    failed = recs["req-002"]
    assert failed.status == "error" and failed.error == "Rate limit reached for requests"
    assert "sk-proj" not in failed.messages[1]["content"] and MASK in failed.messages[1]["content"]
    [example] = [r for r in recs.values() if r.id not in ("req-001", "req-002")
                 and not r.id.startswith("batch_")]
    assert example.response.startswith("def add(a, b):") and len(example.messages) == 2
    assert example.started_at == 0.0 and len(example.id) == 64  # no id or time in the format
    joined, looked_up = recs["batch_req_001"], recs["batch_req_002"]
    assert joined.response == "11" and joined.started_at == 1772446000
    assert looked_up.response == "Paris" and looked_up.messages[0]["content"] == "Answer in one word."
    assert looked_up.meta["custom_id"] == "task-2" and looked_up.provider == "openai"
    server_error = recs["batch_req_003"]
    assert server_error.status == "error" and "server had an error" in server_error.error


def test_batch_output_lines_need_their_requests(tmp_path):
    report = import_logs(FIXTURES / "openai.jsonl", "openai-jsonl", tmp_path)
    assert where(report) == ["line 3", "line 6", "line 7", "line 8", "line 11"]
    assert "--batch-input" in report.malformed[1].why
    assert report.imported == 4


def test_importing_again_skips_what_is_stored(tmp_path):
    first = import_logs(FIXTURES / "openai.jsonl", "openai-jsonl", tmp_path,
                        batch_input=BATCH_INPUT)
    again = import_logs(FIXTURES / "openai.jsonl", "openai-jsonl", tmp_path,
                        batch_input=BATCH_INPUT)
    assert (again.imported, again.duplicates) == (0, first.imported + first.duplicates)
    assert len(stored(tmp_path)) == first.imported


def test_litellm_standard_logging_payloads(tmp_path):
    report = import_logs(FIXTURES / "litellm.jsonl", "litellm", tmp_path)
    assert (report.read, report.imported, report.duplicates) == (6, 3, 0)
    assert where(report) == ["line 4", "line 5", "line 6"]
    assert "aembedding" in report.malformed[0].why and "pending" in report.malformed[2].why
    recs = stored(tmp_path)
    call = recs["chatcmpl-l001"]
    assert (call.started_at, call.latency_s, call.ttft_s) == (1772450000.0, 1.5, None)
    assert (call.provider, call.model, call.session_id) == ("openai", "gpt-4o-mini-2024-07-18",
                                                            "trace-42")
    assert call.response == "I will read the module first."
    assert call.tool_calls[0]["function"]["name"] == "read_file"
    assert call.params["max_tokens"] == 256 and call.meta["model_group"] == "coding-small"
    assert (call.prompt_tokens, call.completion_tokens, call.source) == (40, 12, "litellm")
    streamed = recs["chatcmpl-l002"]
    assert streamed.stream and streamed.ttft_s == pytest.approx(0.4)
    assert streamed.latency_s == pytest.approx(2.0)
    failed = recs["l003"]
    assert failed.status == "error" and "RateLimitError" in failed.error
    assert failed.provider == "anthropic" and failed.response == ""
    assert failed.messages[0]["content"] == f"Call the API with header Authorization: Bearer {MASK}"


def test_langfuse_trace_with_nested_observations(tmp_path):
    report = import_logs(FIXTURES / "langfuse_trace.json", "langfuse", tmp_path)
    assert (report.read, report.imported, report.ignored, report.malformed) == (4, 2, 2, [])
    assert "2 not model calls" in report.summary()
    recs = stored(tmp_path)
    gen = recs["obs-gen-1"]
    assert gen.started_at == pytest.approx(iso("2026-03-03T09:00:00.100Z"))
    assert gen.latency_s == pytest.approx(1.5) and gen.ttft_s == pytest.approx(0.25)
    assert (gen.agent, gen.session_id, gen.model) == ("researcher", "7f3c0e0a-trace", "gpt-4o")
    assert (gen.prompt_tokens, gen.completion_tokens) == (120, 22)
    assert gen.tool_calls[0]["function"]["name"] == "grep"
    assert gen.params == {"temperature": "0.1", "max_tokens": 512}
    assert gen.meta["sessionId"] == "sess-9" and gen.meta["name"] == "search-step"
    assert "ghp_" not in gen.messages[1]["content"]
    failed = recs["obs-gen-2"]
    assert failed.status == "error" and failed.error == "Upstream 503: service unavailable"
    assert (failed.prompt_tokens, failed.completion_tokens) == (30, 0)


def test_langfuse_flat_observations(tmp_path):
    report = import_logs(FIXTURES / "langfuse_observations.jsonl", "langfuse", tmp_path)
    assert (report.read, report.imported, report.ignored) == (6, 2, 1)
    assert [(m.where, m.why) for m in report.malformed][1:] == [
        ("line 5", "no startTime"), ("line 6", "not a Langfuse observation (no type)")]
    assert where(report)[0] == "line 4"
    recs = stored(tmp_path)
    plan = recs["obs-flat-1"]
    assert plan.response == "1. Read. 2. Edit. 3. Test."  # output as a chat.completion
    assert plan.params == {"temperature": 0.7, "tool_choice": "none"}
    assert (plan.prompt_tokens, plan.completion_tokens, plan.agent) == (11, 9, None)
    legacy = recs["obs-flat-2"]
    assert legacy.messages == ({"role": "user", "content": "Write a haiku about tests."},)
    assert legacy.response == "Green bars at midnight"
    assert (legacy.prompt_tokens, legacy.completion_tokens) == (7, 5)
    assert legacy.status == "ok" and legacy.meta["statusMessage"] == "slow response"


def test_a_malformed_first_line_does_not_stop_the_rest(tmp_path):
    lines = (FIXTURES / "langfuse_observations.jsonl").read_text().splitlines()
    f = tmp_path / "obs.jsonl"
    f.write_text("\n".join(["{broken", *lines[:2]]) + "\n")
    report = import_logs(f, "langfuse", tmp_path / "run")
    assert (report.imported, where(report)) == (2, ["line 1"])


def test_atif_agent_steps_with_the_conversation_so_far(tmp_path):
    report = import_logs(FIXTURES / "atif.jsonl", "atif", tmp_path)
    assert (report.read, report.imported) == (10, 5)
    assert where(report) == ["line 3", "line 4", "line 5", "line 6 step 2", "line 6"]
    assert "source" in report.malformed[-1].why
    recs = stored(tmp_path)
    edit = recs["sess-atif-1:4"]
    assert [m["role"] for m in edit.messages] == ["system", "user", "assistant", "tool"]
    assert edit.messages[2]["tool_calls"][0]["id"] == "tc-1"
    assert edit.messages[3] == {"role": "tool", "tool_call_id": "tc-1",
                                "content": "def slugify(s):\n    return s.lower()\n"}
    assert json.loads(edit.tool_calls[0]["function"]["arguments"])["path"] == "slug.py"
    assert (edit.model, edit.agent, edit.session_id) == ("qwen2.5-coder-7b", "mini-coder",
                                                         "sess-atif-1")
    assert (edit.prompt_tokens, edit.completion_tokens) == (380, 40)
    assert edit.started_at == iso("2026-03-05T08:00:05Z")
    assert recs["sess-atif-1:3"].meta["reasoning_content"].startswith("The failure")
    parts = recs["sess-atif-2:2"]
    assert parts.response == "Do not print secrets.\nRemove the print."  # v1.6 content parts
    assert parts.started_at == 0.0 and parts.model == "gpt-4.1-mini"


def test_redaction_defaults_off_switch_and_extra_patterns(tmp_path):
    import_logs(FIXTURES / "openai.jsonl", "openai-jsonl", tmp_path / "raw",
                batch_input=BATCH_INPUT, redactor=Redactor(defaults=False))
    assert "sk-proj-AbCd" in stored(tmp_path / "raw")["req-002"].messages[1]["content"]
    import_logs(FIXTURES / "openai.jsonl", "openai-jsonl", tmp_path / "extra",
                batch_input=BATCH_INPUT, redactor=Redactor(extra=[r"Paris"]))
    recs = stored(tmp_path / "extra")
    assert recs["batch_req_002"].response == MASK
    assert "sk-proj-AbCd" not in recs["req-002"].messages[1]["content"]


def test_inspect_without_inspect_ai_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "inspect_ai.log", None)  # import fails as if absent
    with pytest.raises(TracetuneError, match=r"pip install 'tracetune\[logs\]'"):
        import_logs(FIXTURES / "inspect.json", "inspect", tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


def test_inspect_eval_log_model_events(tmp_path):
    """Needs inspect_ai, which cannot share make setup's environment (its fsspec bound); the
    fixture was written by fixtures/make_inspect_log.py with inspect_ai's own API."""
    pytest.importorskip("inspect_ai")
    report = import_logs(FIXTURES / "inspect.json", "inspect", tmp_path)
    assert (report.read, report.imported, report.malformed) == (3, 3, [])
    recs = sorted(stored(tmp_path).values(), key=lambda r: r.started_at)
    call, answer, capital = recs
    assert [m["role"] for m in call.messages] == ["system", "user"]
    assert call.tool_calls[0]["function"]["name"] == "add"
    assert json.loads(call.tool_calls[0]["function"]["arguments"]) == {"x": 2, "y": 3}
    assert [m["role"] for m in answer.messages] == ["system", "user", "assistant", "tool"]
    assert answer.messages[3]["content"] == "5" and answer.response == "2 + 3 = 5"
    assert [(r.prompt_tokens, r.completion_tokens) for r in recs] == [(30, 5), (31, 6), (32, 7)]
    assert {(r.agent, r.model, r.provider, r.source) for r in recs} == {
        ("arithmetic", "mockllm/model", "mockllm", "inspect")}
    assert call.session_id == answer.session_id != capital.session_id
    assert call.params["tools"][0]["function"]["name"] == "add"
    assert capital.response == "Rome"


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(TracetuneError, match="unknown --format 'csv'"):
        import_logs(FIXTURES / "openai.jsonl", "csv", tmp_path)
    with pytest.raises(TracetuneError, match="no such file"):
        import_logs(tmp_path / "missing.jsonl", "litellm", tmp_path)
    with pytest.raises(TracetuneError, match="--batch-input applies to --format openai-jsonl"):
        import_logs(FIXTURES / "litellm.jsonl", "litellm", tmp_path, batch_input=BATCH_INPUT)
    with pytest.raises(TracetuneError, match="not a Batch API input line"):
        import_logs(FIXTURES / "openai.jsonl", "openai-jsonl", tmp_path / "r",
                    batch_input=FIXTURES / "litellm.jsonl")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"id": "x",\n')
    with pytest.raises(TracetuneError, match="neither JSON Lines nor one JSON document"):
        import_logs(broken, "langfuse", tmp_path / "r2")
    assert not (tmp_path / "r2").exists()


def test_cli_import(tmp_path):
    cmd = [sys.executable, "-m", "tracetune.cli", "import", str(FIXTURES / "litellm.jsonl"),
           "--format", "litellm", "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("read 6 records: 3 imported, 0 already stored, 3 malformed and "
                               "skipped (line 4: no chat messages")
    assert (tmp_path / "run" / "interactions.sqlite").is_file()
    (tmp_path / "file").write_text("x")
    bad = subprocess.run(cmd[:-1] + [str(tmp_path / "file")], capture_output=True, text=True)
    assert bad.returncode == 1 and "must be a directory" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    raw = subprocess.run(cmd + ["--no-redact"], capture_output=True, text=True)
    assert "0 imported, 3 already stored" in raw.stdout
