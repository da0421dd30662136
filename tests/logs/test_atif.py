"""ATIF out and back: `export --atif` of guarded and repair-agent runs, read back exactly, validated
against the published ATIF models, and imported as interactions."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.eval.runner import EvalConfig, run_eval
from tracetune.logs.atif import (atif_to_episodes, episode_to_atif, export_atif, prompts,
                                 validate)
from tracetune.logs.importers import import_logs
from tracetune.logs.store import LogStore
from tracetune.traces.export import iter_episodes
from tracetune.traces.store import Store

FIXTURES = Path(__file__).parent / "fixtures"
TINY = Path(__file__).parents[1] / "data" / "repair_suite.toml"
SUITE = '''[suite]
name = "d"

[[task]]
id = "d/double"
names = ["double"]
spec = "Write `double(x)` returning 2 * x."
reference = "def double(x):\\n    return 2 * x\\n"
tests = "from solution import double\\n\\ndef test_a():\\n    assert double(2) == 4\\n"
'''
GOOD = "```python\ndef double(x):\n    return 2 * x\n```"
BAD = "```python\ndef double(x):\n    return x + 1\n```"
WORSE = "```python\ndef double(x):\n    return x\n```"
TESTS = ("```python\nfrom solution import double\n\ndef test_a():\n    assert double(1) == 2\n\n"
         "def test_b():\n    assert double(3) == 6\n\ndef test_c():\n    assert double(0) == 0\n```")
FINAL = json.dumps({"type": "final", "message": "done"})


def call(name, **args):
    return json.dumps({"type": "tool_call", "name": name, "args": args})


READ = call("read_file", rel_path="maximum.py")
FIX = call("edit", rel_path="maximum.py", search="if x < best:", replace="if x > best:")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four small runs on scripted models: direct with retries (a third attempt whose prompt
    keeps only the latest failure), tdd (two steps, two conversations), the repair agent (parse
    error, tool calls, a loop, a final answer) and the repair agent with its history elided."""
    root = tmp_path_factory.mktemp("atif")
    (root / "s.toml").write_text(SUITE)

    def run(name, texts, **cfg):
        script = root / f"{name}.script.jsonl"
        script.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        run_eval(EvalConfig(model=f"replay:{script}", concurrency=1, **cfg), root / name)
        return root / name

    suite = str(root / "s.toml")
    return {
        "direct": run("direct", [BAD, WORSE, GOOD, GOOD], suite=suite, trials=2,
                      workflow="direct,max_attempts=3"),
        "tdd": run("tdd", ["no tests here", TESTS, BAD, WORSE, GOOD], suite=suite, trials=1,
                   workflow="tdd,max_attempts=3"),
        "repair": run("repair", ["Let me look.", call("list_files"), READ, READ, FIX, FINAL],
                      suite=str(TINY), tasks=("tiny/maximum",), trials=1,
                      workflow="repair,max_iters=8"),
        "elided": run("elided", [call("list_files"), READ, call("grep", pattern="best"), FIX,
                                 FINAL], suite=str(TINY), tasks=("tiny/maximum",), trials=1,
                      workflow="repair,max_iters=6,max_context_chars=600"),
    }


def episodes(run):
    store = Store(run)
    try:
        return list(iter_episodes(store))
    finally:
        store.close()


def trajectories(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", ["direct", "tdd", "repair", "elided"])
def test_export_and_back_gives_the_same_episodes(runs, tmp_path, name):
    out = tmp_path / "t.jsonl"
    eps = episodes(runs[name])
    assert export_atif(runs[name], out) == len(eps) > 0
    assert atif_to_episodes(out) == eps
    assert len(out.read_text().splitlines()) == len(eps)  # one trajectory per line


@pytest.mark.parametrize("name", ["direct", "tdd", "repair", "elided"])
def test_trajectories_conform_to_the_published_atif_models(runs, tmp_path, name):
    pytest.importorskip("nat.atif")
    export_atif(runs[name], tmp_path / "t.jsonl")
    for t in trajectories(tmp_path / "t.jsonl"):
        validate(t)
        assert t["schema_version"] == "ATIF-v1.4"
        assert [s["step_id"] for s in t["steps"]] == list(range(1, len(t["steps"]) + 1))


def test_validate_rejects_what_the_spec_forbids(runs):
    pytest.importorskip("nat.atif")
    [ep] = episodes(runs["repair"])
    good = episode_to_atif(ep)
    bad_source = json.loads(json.dumps(good))
    bad_source["steps"][0]["source"] = "robot"
    with pytest.raises(TracetuneError, match="source"):
        validate(bad_source)
    dangling = json.loads(json.dumps(good))
    step = next(s for s in dangling["steps"] if s.get("tool_calls"))
    step["observation"]["results"][0]["source_call_id"] = "call_nowhere"
    with pytest.raises(TracetuneError, match="call_nowhere"):
        validate(dangling)


def test_a_missing_validator_says_how_to_install_it(monkeypatch, runs):
    monkeypatch.setitem(sys.modules, "nat.atif", None)  # import fails as if not installed
    [ep] = episodes(runs["repair"])
    with pytest.raises(TracetuneError, match=r"pip install 'tracetune\[atif\]'"):
        validate(episode_to_atif(ep))


def test_repair_tool_calls_are_linked_to_their_results(runs):
    [ep] = episodes(runs["repair"])
    t = episode_to_atif(ep)
    agent = [s for s in t["steps"] if s["source"] == "agent"]
    assert [s["message"] for s in agent] == [a["raw_output"] for a in ep["attempts"]]
    calls = [s["tool_calls"][0]["function_name"] for s in agent if s.get("tool_calls")]
    assert calls == ["list_files", "read_file", "read_file", "edit"]  # the loop is a call too
    for s, a in zip(agent, ep["attempts"]):
        [result] = s["observation"]["results"]
        assert result["content"] == a["feedback"]
        if s.get("tool_calls"):
            assert result["source_call_id"] == s["tool_calls"][0]["tool_call_id"]
        else:  # the parse error and the final answer answer no tool call
            assert "source_call_id" not in result and a["facts"]["kind"] in ("parse_error",
                                                                             "final")
    edit = next(s for s in agent if s.get("tool_calls", [{}])[0].get("function_name") == "edit")
    assert edit["tool_calls"][0]["arguments"] == {"rel_path": "maximum.py",
                                                  "search": "if x < best:",
                                                  "replace": "if x > best:"}
    assert t["final_metrics"]["total_prompt_tokens"] == ep["prompt_tokens"]


def test_a_guarded_retry_names_the_context_it_kept(runs):
    eps = episodes(runs["direct"])
    three = next(e for e in eps if len(e["attempts"]) == 3)
    t = episode_to_atif(three)
    last = t["steps"][-1]["extra"]["tracetune"]
    # attempt 3 saw the task, the second answer and its retry prompt, not the first answer
    assert [t["steps"][sid - 1]["message"] for sid, _ in last["context"]] == \
        [m["content"] for m in three["attempts"][2]["messages"]]
    assert WORSE in [t["steps"][sid - 1]["message"] for sid, _ in last["context"]]
    assert BAD not in [t["steps"][sid - 1]["message"] for sid, _ in last["context"]]


def test_other_tools_read_the_conversation_as_openai_chat(runs):
    """Without tracetune's extras, a trajectory reads as ATIF defines it: tool calls answered by
    tool messages."""
    [ep] = episodes(runs["repair"])
    t = episode_to_atif(ep)
    del t["extra"]
    *_, (step, prompt) = prompts(t)
    assert [m["role"] for m in prompt[:4]] == ["system", "user", "assistant", "user"]  # parse error
    tool = next(m for m in prompt if m["role"] == "tool")
    asked = next(m for m in prompt if m.get("tool_calls"))
    assert tool["tool_call_id"] == asked["tool_calls"][0]["id"]
    assert json.loads(asked["tool_calls"][0]["function"]["arguments"]) == {}  # list_files


def test_cli_export_atif(runs, tmp_path):
    out = tmp_path / "run.atif.jsonl"
    cli = [sys.executable, "-m", "tracetune.cli", "export", str(runs["direct"]), "--atif"]
    r = subprocess.run(cli + ["--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote 2 episodes" in r.stderr and len(trajectories(out)) == 2
    again = subprocess.run(cli + ["--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr
    both = subprocess.run(cli + ["--jsonl"], capture_output=True, text=True)
    assert both.returncode == 1 and "choose one" in both.stderr
    stdout = subprocess.run(cli, capture_output=True, text=True)
    assert [json.loads(x) for x in stdout.stdout.splitlines()] == trajectories(out)


def test_an_exported_run_imports_as_its_model_calls(runs, tmp_path):
    out = tmp_path / "t.jsonl"
    export_atif(runs["tdd"], out)
    [ep] = episodes(runs["tdd"])
    report = import_logs(out, "atif", tmp_path / "logs")
    assert (report.read, report.imported, report.malformed) == (len(ep["attempts"]),
                                                               len(ep["attempts"]), [])
    with LogStore(tmp_path / "logs") as store:
        recs = sorted(store, key=lambda r: r.meta["step_id"])
    assert [list(r.messages) for r in recs] == [a["messages"] for a in ep["attempts"]]
    assert [r.response for r in recs] == [a["raw_output"] for a in ep["attempts"]]
    assert {r.agent for r in recs} == {"tracetune"} and {r.source for r in recs} == {"atif"}
    assert [r.latency_s for r in recs] == [a["latency_s"] for a in ep["attempts"]]


def test_trajectories_tracetune_did_not_write_are_refused():
    with pytest.raises(TracetuneError, match="line 1: .*not written by tracetune"):
        atif_to_episodes(FIXTURES / "atif.jsonl")
