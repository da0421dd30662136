"""The repair workflow: episodes driven by scripted models (counts, loop detection, test policies),
the oracle on every bug of the bugs suite, step-level mining, and the suite's split."""

import json
import sqlite3
from pathlib import Path

import pytest

from scripted import FINAL, TINY, call, episode

from tracetune.agents.teachers import oracle_edit
from tracetune.agents.tools import fuzzy_replace
from tracetune.datasets.build import MineConfig, mine
from tracetune.errors import TracetuneError
from tracetune.eval.compare import compare
from tracetune.eval.runner import EvalConfig, run_eval
from tracetune.tasks import load_suite, parse_suite
from tracetune.traces.store import Store


FIX = call("edit", rel_path="maximum.py", search="if x < best:", replace="if x > best:")


def test_a_scripted_fix_with_errors_along_the_way(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, [
        "Let me look at the files.",                                 # parse error
        call("list_files"),
        call("read_file", rel_path="../outside.txt"),                # tool error (refused)
        call("frobnicate", x=1),                                     # unknown tool: parse error
        call("write_file", rel_path="/tmp/pwned.py", content="x"),   # tool error (absolute)
        FIX,
        FINAL,
    ], max_iters=10)
    assert out.success and out.failed_step is None
    m = out.metrics
    assert (m["parse_errors"], m["tool_errors"], m["writes"], m["wrote"], m["steps"],
            m["end"]) == (2, 2, 1, True, 7, "final")
    assert not Path("/tmp/pwned.py").exists()
    kinds = [a.facts["kind"] for a in out.attempts]
    assert kinds == ["parse_error", "tool_call", "tool_call", "parse_error", "tool_call",
                     "tool_call", "final"]
    first = out.attempts[0]
    assert first.feedback.startswith("[tool_result]\nerror: invalid message: not valid JSON")
    assert first.passed is False and out.attempts[1].passed is True
    assert out.attempts[2].passed is False  # valid call, but the tool refused
    edit = out.attempts[5]
    assert edit.feedback.endswith("[TESTS PASS]") and edit.facts["tests"] == "pass"
    # every step saw the conversation so far: system, goal, then (assistant, tool result) pairs
    assert [m["role"] for m in edit.messages] == ["system", "user"] + ["assistant", "user"] * 5
    assert edit.messages[3]["content"] == out.attempts[0].feedback


def test_repeated_identical_calls_are_loops_and_end_the_episode(tmp_path, task, sandbox):
    read = call("read_file", rel_path="maximum.py")
    out = episode(tmp_path, task, sandbox, [read, read, read, read], max_iters=10, max_loops=3)
    m = out.metrics
    assert (m["loop_detections"], m["steps"], m["end"]) == (3, 4, "loop")
    assert not out.success and out.failed_step == "loop"
    assert "loop detected" in out.attempts[1].feedback
    assert [a.facts["kind"] for a in out.attempts] == ["tool_call"] + ["loop"] * 3


def test_a_write_resets_loop_detection(tmp_path, task, sandbox):
    read = call("read_file", rel_path="maximum.py")
    out = episode(tmp_path, task, sandbox, [read, FIX, read, FINAL], max_iters=10)
    assert out.metrics["loop_detections"] == 0 and out.success


def test_max_iters_ends_the_episode(tmp_path, task, sandbox):
    out = episode(tmp_path, task, sandbox, ["nope"] * 3, max_iters=3)
    assert (out.metrics["parse_errors"], out.metrics["end"], out.success) == (3, "max_iters", False)


def test_test_policies(tmp_path, task, sandbox):
    never = episode(tmp_path, task, sandbox, [FIX, FINAL], test_policy="never")
    assert "[TESTS" not in never.attempts[0].feedback and never.success
    assert never.metrics["test_runs"] == 0
    # end: a final answer with failing tests sends the model back to work
    end = episode(tmp_path, task, sandbox, [FINAL, FIX, FINAL], test_policy="end")
    assert end.attempts[0].feedback.startswith("[TESTS FAIL]")
    assert "The tests still fail" in end.attempts[0].feedback
    assert "[TESTS" not in end.attempts[1].feedback
    assert end.success and end.metrics["steps"] == 3 and end.metrics["end"] == "final"


def test_the_model_editing_the_tests_does_not_count(tmp_path, task, sandbox):
    cheat = call("write_file", rel_path="test_maximum.py", content="def test_ok():\n    pass\n")
    out = episode(tmp_path, task, sandbox, [cheat, FINAL], test_policy="never")
    assert not out.success and out.metrics["wrote"]


def test_failing_edit_reports_tests_fail(tmp_path, task, sandbox):
    wrong = call("edit", rel_path="maximum.py", search="best = xs[0]", replace="best = 0")
    out = episode(tmp_path, task, sandbox, [wrong, FINAL])
    assert "[TESTS FAIL] failed:" in out.attempts[0].feedback
    assert not out.success and out.failed_step == "final"


def test_repair_suites_are_validated():
    with pytest.raises(TracetuneError, match="a repair task needs buggy"):
        parse_suite('[suite]\nname="x"\nkind="repair"\n[[task]]\nid="a"\nspec="s"\n'
                    'names=["f"]\nreference="r"\ntests="t"\nfile="f.py"\n', "x.toml")
    with pytest.raises(TracetuneError, match="belong to repair suites"):
        parse_suite('[suite]\nname="x"\n[[task]]\nid="a"\nspec="s"\nnames=["f"]\n'
                    'reference="r"\ntests="t"\nfile="f.py"\nbuggy="b"\n', "x.toml")
    with pytest.raises(TracetuneError, match="kind must be one of"):
        parse_suite('[suite]\nname="x"\nkind="other"\n', "x.toml")


def test_bugs_suite_and_its_deterministic_split():
    bugs = load_suite("bugs")
    assert bugs.kind == "repair" and len(bugs.tasks) >= 40 and bugs.train_pct == 70
    train, test = load_suite("bugs:train"), load_suite("bugs:test")
    ids = lambda s: {t.id for t in s.tasks}  # noqa: E731
    assert ids(train) | ids(test) == ids(bugs) and not ids(train) & ids(test)
    assert 0.6 < len(train.tasks) / len(bugs.tasks) < 0.8
    assert ids(load_suite("bugs:train")) == ids(train)  # by hash: the same every time
    for t in bugs.tasks:
        assert t.buggy != t.reference and t.file == t.module + ".py"
        edit = oracle_edit(t)  # a unique search text that turns the bug into the fix
        assert t.buggy.count(edit["search"]) == 1
        assert fuzzy_replace(t.buggy, edit["search"], edit["replace"])[0] == t.reference


def test_workflow_and_suite_must_match(tmp_path):
    with pytest.raises(TracetuneError, match="bugs is a repair suite .use workflow repair"):
        run_eval(EvalConfig(suite="bugs", model="oracle"), tmp_path / "a")
    with pytest.raises(TracetuneError, match="workflow repair runs on repair suites, and demo"):
        run_eval(EvalConfig(suite="demo", workflow="repair", model="oracle"), tmp_path / "b")


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "run"
    run_eval(EvalConfig(suite="bugs", workflow="repair", model="oracle", temperature=0.0,
                        concurrency=4), out)
    return out


def test_the_oracle_solves_every_bug(oracle_run):
    store = Store(oracle_run)
    episodes = store.episodes()
    assert len(episodes) == len(load_suite("bugs").tasks)
    failed = [e["task_id"] for e in episodes if not e["success"]]
    assert failed == []
    for e in episodes:
        m = e["metrics"]
        assert (m["parse_errors"], m["loop_detections"], m["tool_errors"], m["steps"],
                m["wrote"]) == (0, 0, 0, 4, True)
        names = [json.loads(a.code).get("name") for a in store.attempts(e["id"])]
        assert names == ["list_files", "read_file", "edit", None]


def test_step_level_sft_rows_from_the_oracle(oracle_run, tmp_path):
    report = mine([oracle_run], tmp_path / "data",
                  MineConfig(kinds=("sft",), tokenizer=None, leakage_suites=()))
    rows = report.rows["sft"]
    train = {t.id for t in load_suite("bugs:train").tasks}
    assert {r.task for r in rows} == train  # held-out bugs never reach the data
    assert report.dropped["held_out_task"] == 4 * (len(load_suite("bugs").tasks) - len(train))
    assert len(rows) == 4 * len(train)
    for r in rows:
        assert r.prompt[0]["role"] == "system" and r.prompt[-1]["role"] == "user"
        assert json.loads(r.completion["content"])["type"] in ("tool_call", "final")
        assert set(r.tiers) == {"tool_ok", "workflow"}
    # chat format (seed 002): conversation so far + the next message
    line = json.loads((tmp_path / "data" / "formats" / "sft.messages.jsonl").open().readline())
    assert line["messages"][-1]["role"] == "assistant"


def test_step_level_dpo_prefers_the_oracle_over_parse_errors_and_loops(tmp_path):
    script = tmp_path / "s.jsonl"
    read = call("read_file", rel_path="maximum.py")
    script.write_text("".join(json.dumps({"text": t}) + "\n"
                              for t in ["hello", read, read, "bye"] * 2))
    run = tmp_path / "run"
    run_eval(EvalConfig(suite=str(TINY), workflow="repair,max_iters=4",
                        model=f"replay:{script}", tasks=("tiny/maximum",), trials=2,
                        concurrency=1), run)
    report = mine([run], tmp_path / "data",
                  MineConfig(kinds=("dpo", "sft"), tiers={"repair": ()}, tokenizer=None,
                             leakage_suites=(), allow_heldout=True, dpo_teacher="oracle"))
    pairs = report.rows["dpo"]
    kinds = sorted(p.provenance["rejected_kind"] for p in pairs)
    assert kinds == ["loop", "parse_error", "parse_error"]  # "hello" twice -> one pair (dedup)
    first = next(p for p in pairs if p.rejected["content"] == "hello")
    assert json.loads(first.chosen["content"])["name"] == "list_files"
    loop = next(p for p in pairs if p.provenance["rejected_kind"] == "loop")
    assert loop.rejected["content"] == read
    assert json.loads(loop.chosen["content"])["name"] == "list_files"  # never listed yet
    # with no tier, every valid message is an SFT row (the seed's --no-require-success)
    assert {r.completion["content"] for r in report.rows["sft"]} == {read}
    together = [json.loads(x) for x in
                (tmp_path / "data" / "formats" / "dpo.together.jsonl").read_text().splitlines()]
    assert set(together[0]) == {"input", "preferred_output", "non_preferred_output"}


def test_compare_reports_tool_metrics(oracle_run, tmp_path):
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps({"text": "not json"}) + "\n")  # then empty messages
    weak = tmp_path / "weak"
    run_eval(EvalConfig(suite="bugs", workflow="repair,max_iters=2",
                        model=f"replay:{script},strict=false", concurrency=2), weak)
    runs = {}
    for label, path in (("oracle", oracle_run), ("weak", weak)):
        store = Store(path)
        runs[label] = store.episodes()
        store.close()
    comp = compare(runs, "oracle")
    by = {m.metric: m for m in comp.metrics}
    assert {"parse_errors", "wrote", "loop_detections", "steps", "tool_errors"} <= set(by)
    assert (by["parse_errors"].baseline, by["parse_errors"].value) == (0.0, 2.0)
    assert (by["wrote"].baseline, by["wrote"].value) == (1.0, 0.0)
    # the oracle's edit is the fix: a valid edit of the bug's own line in every episode
    assert (by["fault_edit"].baseline, by["fault_edit"].value) == (1.0, 0.0)
    assert (by["valid_edit"].baseline, by["valid_edit"].value) == (1.0, 0.0)
    assert by["parse_errors"].p_wilcoxon < 1e-6
    assert comp.overall("weak").success_rate == 0.0


def test_version_1_stores_are_upgraded(tmp_path):
    run = tmp_path / "run"
    script = tmp_path / "s.jsonl"
    script.write_text(json.dumps({"text": "```python\ndef f():\n    pass\n```"}) + "\n")
    run_eval(EvalConfig(suite="demo", model=f"replay:{script},strict=false", limit=1), run)
    db = sqlite3.connect(run / "trajectories.sqlite")
    db.execute("ALTER TABLE episode DROP COLUMN metrics_json")  # as version 1 had it
    db.execute("ALTER TABLE attempt DROP COLUMN facts_json")
    db.execute("ALTER TABLE attempt DROP COLUMN finish_reason")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    store = Store(run)
    assert [e["metrics"] for e in store.episodes()] == [None]
    store.close()
    db = sqlite3.connect(run / "trajectories.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("4",)
