"""Interaction store, redaction, roles, per-role suites, the baseline profile, the replay
workflow and the distillation experiment (a miniature on scripted models)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.logs.record import Interaction
from tracetune.logs.redact import MASK, Redactor
from tracetune.logs.store import LogStore

SYSTEM = {"coder": "You are the coder agent. Implement what is asked in Python.",
          "researcher": "You are the research agent. Explain options precisely."}


def rec(i: int, prompt: str, answer: str, *, role_agent: str = "coder-agent",
        status: str = "ok", latency: float = 1.0, system: str | None = None) -> Interaction:
    sys_text = system or SYSTEM["coder" if "coder" in role_agent else "researcher"]
    return Interaction(id=f"r{i:03d}", started_at=1000.0 + i,
                       messages=({"role": "system", "content": sys_text},
                                 {"role": "user", "content": prompt}),
                       response=answer if status == "ok" else "", agent=role_agent,
                       status=status, error=None if status == "ok" else "HTTP 503",
                       latency_s=latency, model="big", provider="acme")


VOCAB = ("amber bison cedar delta ember fjord glade harbor iris jade kelp lumen maple nectar "
         "onyx pearl quartz raven sage tundra umber velvet willow xenon yarrow zephyr").split()


def coder_item(i: int, name: str, good: bool = True) -> Interaction:
    import random

    story = " ".join(random.Random(i).sample(VOCAB, 14))  # distinct words: no near-duplicates
    prompt = (f"Write a function {name}(x) returning x plus {i}; context: {story}."
              f"\n\nIt must pass:\n```python\n"
              f"assert {name}(1) == {1 + i}\nassert {name}(0) == {i}\n```")
    body = f"x + {i}" if good else f"x - {i}"
    return rec(i, prompt, f"Here:\n```python\ndef {name}(x):\n    return {body}\n```")


# --- store and redaction ---------------------------------------------------------------------

def test_store_adds_whole_records_once(tmp_path):
    with LogStore(tmp_path, create=True) as store:
        assert store.add(coder_item(1, "f1"))
        assert not store.add(coder_item(1, "f1"))  # same id: skipped
        assert store.add_many([coder_item(2, "f2"), coder_item(1, "f1"), coder_item(3, "f3")]) \
            == 2
        back = list(store.interactions())
    assert [r.id for r in back] == ["r001", "r002", "r003"]
    assert back[0] == coder_item(1, "f1")
    db = sqlite3.connect(tmp_path / "interactions.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_store_refuses_a_missing_store_and_a_foreign_file(tmp_path):
    with pytest.raises(TracetuneError, match="no interaction store"):
        LogStore(tmp_path / "nothing")
    bad = tmp_path / "x.sqlite"
    bad.write_text("not a database at all" * 100)
    with pytest.raises(TracetuneError, match="not an interaction store"):
        LogStore(bad)


def test_redaction_masks_default_secrets_extra_patterns_and_literals():
    r = Redactor(extra=[r"ACME-\d{4}"], literals=["hunter2hunter2"])
    text = ("key sk-proj-abcdefghijklmnopqrstuvwx, Authorization: Bearer abc.def-12345678, "
            'password: "s3cretpass", id ACME-1234, hunter2hunter2, AKIAABCDEFGHIJKLMNOP')
    out = r.text(text)
    for secret in ("sk-proj-abcdefghijklmnopqrstuvwx", "abc.def-12345678", "s3cretpass",
                   "ACME-1234", "hunter2hunter2", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in out
    assert "Authorization: Bearer " + MASK in out and 'password: "' + MASK in out
    red = r.record(rec(1, "my key is sk-abcdefghijklmnopqrstuvwxyz", "ok ACME-9999"))
    assert "sk-abc" not in json.dumps(red.to_json()) and "ACME-9999" not in red.response
    with pytest.raises(TracetuneError, match="not a valid regular expression"):
        Redactor(extra=["(unclosed"])
    assert Redactor(defaults=False).text("sk-abcdefghijklmnopqrstuvwxyz") == \
        "sk-abcdefghijklmnopqrstuvwxyz"


# --- roles -------------------------------------------------------------------------------------

def test_roles_follow_the_strongest_evidence():
    from tracetune.logs.roles import classify_one

    assert classify_one(Interaction("a", 0, ({"role": "user", "content": "hi"},),
                                    role="reviewer")).evidence == "stated"
    by_name = classify_one(rec(1, "do it", "ok", role_agent="test_writer"))
    assert (by_name.role, by_name.evidence) == ("tester", "agent name")
    tools = Interaction("b", 0, ({"role": "user", "content": "go"},),
                        params={"tools": [{"type": "function",
                                           "function": {"name": "web_search"}}]})
    assert classify_one(tools).role == "researcher"
    sysp = Interaction("c", 0, ({"role": "system", "content": "Break the work down into a "
                                 "plan and assign each subtask."},
                                {"role": "user", "content": "feature X"}))
    assert (classify_one(sysp).role, classify_one(sysp).evidence) == ("coordinator",
                                                                      "system prompt")
    none = Interaction("d", 0, ({"role": "user", "content": "hello there"},))
    assert classify_one(none).role == "other"


# --- suites ----------------------------------------------------------------------------------------

@pytest.fixture
def store_dir(tmp_path):
    """20 coder items (runnable, one whose logged code fails its own tests), 2 near-duplicate
    re-asks, 10 researcher items, 2 failed calls."""
    records = [coder_item(i, f"f{i}", good=i != 7) for i in range(20)]
    records.append(rec(20, records[3].prompt + " Thanks.", records[3].response))  # near copy
    records.append(rec(21, records[5].prompt, records[5].response))  # exact copy
    topics = ["threads", "asyncio", "generators", "dataclasses", "fixtures", "wal mode",
              "lru caches", "semantic versions", "type hints", "exceptions"]
    import random

    records += [rec(30 + i, f"Explain {t}: " + " ".join(random.Random(100 + i).sample(VOCAB, 12)),
                    f"{t} are explained here.", role_agent="research-agent")
                for i, t in enumerate(topics)]
    records += [rec(50, "Write a function g(x).", "", status="error"),
                rec(51, "Explain nothing.", "", status="error", role_agent="research-agent")]
    with LogStore(tmp_path / "run", create=True) as store:
        store.add_many(records)
    return tmp_path / "run"


def test_build_suites_dedups_splits_by_time_and_finds_runnable_items(store_dir, tmp_path):
    from tracetune.logs.suites import SuiteConfig, build_suites
    from tracetune.tasks import load_suite

    report = build_suites(store_dir, tmp_path / "s", SuiteConfig(split=(80, 10, 10)))
    assert report.dropped["error status"] == 2
    assert report.dropped["near-duplicate"] == 2
    assert report.dropped["tests fail on the logged answer (judged instead)"] == 1
    assert report.counts["coder"] == {"train": 16, "val": 2, "test": 2}
    assert report.counts["researcher"] == {"train": 8, "val": 1, "test": 1}
    assert report.runnable["coder"] == 19
    train = load_suite(str(tmp_path / "s" / "coder.train.json"))
    test = load_suite(str(tmp_path / "s" / "coder.test.json"))
    assert train.kind == "logged"
    newest_train = max(float(t.tags[-1][2:]) for t in train.tasks)
    assert all(float(t.tags[-1][2:]) > newest_train for t in test.tasks)  # time order
    assert all(t.tests and t.names for t in test.tasks)
    combined = load_suite(str(tmp_path / "s" / "suite.test.json"))
    assert {t.id.split("/")[0] for t in combined.tasks} == {"coder", "researcher"}
    with pytest.raises(TracetuneError, match="already holds suites"):
        build_suites(store_dir, tmp_path / "s")


def test_suite_config_and_empty_roles_are_refused(store_dir, tmp_path):
    from tracetune.logs.suites import SuiteConfig, build_suites

    for bad, match in [(SuiteConfig(roles=("wizard",)), "unknown role"),
                       (SuiteConfig(split=(90, 10, 0)), "summing to 100"),
                       (SuiteConfig(dedup_threshold=0), "dedup_threshold")]:
        with pytest.raises(TracetuneError, match=match):
            build_suites(store_dir, tmp_path / "x", bad)
    with pytest.raises(TracetuneError, match="no role has enough items"):
        build_suites(store_dir, tmp_path / "y", SuiteConfig(roles=("reviewer",)))


def test_mined_rows_are_the_logged_answers_and_never_a_test_request(store_dir, tmp_path):
    from tracetune.datasets.build import read_rows, rows_path
    from tracetune.logs.suites import SuiteConfig, build_suites, check_leakage, mine_logged
    from tracetune.tasks import load_suite

    build_suites(store_dir, tmp_path / "s", SuiteConfig(roles=("coder",)))
    summary = mine_logged(tmp_path / "s", tmp_path / "data")
    rows = read_rows(rows_path(tmp_path / "data", "sft"))
    assert summary["counts"]["sft"] == len(rows) == 16
    train = {t.id: t for t in load_suite(str(tmp_path / "s" / "suite.train.json")).tasks}
    for row in rows:
        assert row["completion"]["content"] == train[row["task"]].reference
    test = load_suite(str(tmp_path / "s" / "suite.test.json")).tasks
    leaked = [r["prompt"] for r in rows] + [test[0].messages]
    assert check_leakage(tmp_path / "s" / "suite.test.json", leaked, 0.8) == [len(rows)]


# --- profile ---------------------------------------------------------------------------------------

def test_profile_matches_hand_computed_figures():
    from tracetune.logs.profile import baseline_profile

    records = [rec(i, f"p{i}", "a" * 10, latency=float(i + 1)) for i in range(9)]
    records.append(rec(9, "p9", "", status="error", latency=10.0))
    p = baseline_profile(records)["all"]
    assert p["n"] == 10 and p["successes"] == 9 and p["success_rate"] == 0.9
    lat = p["latency_s"]
    assert lat["mean"] == 5.5 and lat["median"] == 5.5 and lat["min"] == 1 and lat["max"] == 10
    assert lat["p95"] == pytest.approx(9.55)  # numpy linear interpolation
    assert lat["mean_ci"][0] < 5.5 < lat["mean_ci"][1]
    assert p["providers"] == {"acme": {"n": 10, "share": 1.0}}
    assert p["output_chars"]["mean"] == 10


# --- the replay workflow through tracetune eval ----------------------------------------------------

def test_replay_workflow_grades_by_tests_and_by_similarity(store_dir, tmp_path):
    from tracetune.eval.config import EvalConfig
    from tracetune.eval.runner import run_eval
    from tracetune.logs.suites import SuiteConfig, build_suites
    from tracetune.tasks import load_suite
    from tracetune.traces.store import Store

    build_suites(store_dir, tmp_path / "s", SuiteConfig(split=(50, 10, 40)))
    suite = tmp_path / "s" / "suite.test.json"
    tasks = load_suite(str(suite)).tasks
    script = []
    for t in tasks:
        if t.tests:  # a wrong answer for the first runnable item, the logged one for the rest
            wrong = not any(s.get("wrong") for s in script)
            text = t.reference.replace("return x + ", "return x * ") if wrong else t.reference
            script.append({"text": text, "match": t.spec[:40], "wrong": wrong})
        else:
            script.append({"text": t.reference, "match": t.spec[:40]})
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"text": s["text"], "match": s["match"]}) + "\n"
                               for s in script))
    config = EvalConfig(suite=str(suite), workflow="replay", model=f"replay:{answers}",
                        trials=1, temperature=0.0, split="all", train_pct=100)
    overall = run_eval(config, tmp_path / "run")
    assert overall.n == len(tasks) and overall.successes == len(tasks) - 1
    store = Store(tmp_path / "run")
    guards = {}
    for ep in store.episodes():
        (_, attempt), = store.attempt_records(ep["id"])
        guards[ep["task_id"]] = (attempt.guards[0]["guard"], bool(ep["success"]))
    store.close()
    assert {g for g, _ in guards.values()} == {"tests", "similarity"}
    assert sum(not ok for _, ok in guards.values()) == 1


# --- the distillation experiment, miniature ---------------------------------------------------------

MINI = """
[experiment]
name = "mini_distill"
seed = 0

[logs]
source = "log.jsonl"
format = "openai-jsonl"
roles = ["coder"]
split = [60, 10, 30]
max_rows = 4

[models]
base = "replay:{base}"
train_base = "embedded"
adapted = "replay:{adapted}"

[replay]
max_tokens = 64

[train]
r = 4
alpha = 8
epochs = 1
batch_size = 2
warmup_steps = 0
max_seq_len = 256

[export]
target = "none"

[[hypothesis]]
id = "H1"
claim = "distillation raises replay quality"
metric = "delta.quality"
min_delta = 0.0
test = "none"

[decision]
go = ["adapted.quality_ratio >= 0.98", "adapted.speedup >= 1"]
abort = ["delta.quality <= 0"]
"""


@pytest.mark.slow
def test_distill_experiment_runs_end_to_end(tmp_path):
    from tracetune.tasks import load_suite

    lines = []
    for i in range(10):
        item = coder_item(i, f"h{i}")
        lines.append({"id": item.id, "started_at": item.started_at, "latency_s": 20.0 + i,
                      "agent": "coder-agent", "provider": "acme",
                      "request": {"model": "big", "messages": list(item.messages)},
                      "response": {"id": f"c{i}", "object": "chat.completion",
                                   "created": int(item.started_at), "model": "big",
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant",
                                                            "content": item.response}}]}})
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    base, adapted = tmp_path / "base.jsonl", tmp_path / "adapted.jsonl"
    base.write_text("".join(json.dumps({"text": "no idea"}) + "\n" for _ in range(10)))
    exp = tmp_path / "mini.toml"
    exp.write_text(MINI.format(base=base, adapted=adapted))
    out = tmp_path / "run"
    # the adapted model answers every test item with its logged answer: what distillation hopes
    check = subprocess.run([sys.executable, "-m", "tracetune.cli", "loop", str(exp), "--out",
                            str(out), "--until", "baseline"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    tests = load_suite(str(out / "interactions" / "suites" / "suite.test.json")).tasks
    assert len(tests) == 3
    adapted.write_text("".join(json.dumps({"text": t.reference, "match": t.spec[:40]}) + "\n"
                               for t in tests))
    done = subprocess.run([sys.executable, "-m", "tracetune.cli", "loop", str(exp), "--out",
                           str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert m["base.quality"] == 0 and m["adapted.quality"] == 1 and m["delta.quality"] == 1
    assert m["train.rows"] == 4 and m["logged.success_rate"] == 1
    assert m["logged.latency_mean_s"] == pytest.approx(24.5)
    assert results["decision"]["outcome"] == "GO"
    report = (out / "report.md").read_text()
    assert "Decision: **GO**" in report and "| coder | 6 | 1 | 3 | 10 |" in report
    assert "[baseline] cached" in done.stdout + done.stderr


def test_distill_experiment_refuses_bad_settings_before_work(tmp_path):
    from tracetune.experiment.distill import load_distill

    (tmp_path / "log.jsonl").write_text("")
    good = MINI.format(base="x.jsonl", adapted="y.jsonl")
    cases = [(good.replace('format = "openai-jsonl"', 'format = "csv"'), "format"),
             (good.replace('source = "log.jsonl"', 'source = "missing.jsonl"'), "no file"),
             (good.replace('roles = ["coder"]', 'roles = ["wizard"]'), "unknown role"),
             (good.replace("split = [60, 10, 30]", "split = [60, 10]"), "summing to 100"),
             (good.replace('metric = "delta.quality"', 'metric = "delta.speed"'), "no metric"),
             (good.replace('go = ["adapted.quality_ratio >= 0.98"',
                           'go = ["adapted.qualty >= 0.98"'), "no metric"),
             (good + "\n[eval]\nsuite = 'funcs'\n", "unknown section"),
             (good.replace("max_tokens = 64", "max_tokens = 0"), "max_tokens")]
    for text, match in cases:
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(TracetuneError, match=match):
            load_distill(path)
