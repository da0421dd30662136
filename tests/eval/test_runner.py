"""tracetune eval end to end on a replay model: tables, export, and kill -9 then --resume."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tracetune.errors import TracetuneError
from tracetune.eval.runner import EvalConfig, run_eval
from tracetune.traces.store import Store

CLI = [sys.executable, "-m", "tracetune.cli"]
SLOW_GOOD = ("```python\nimport time\ntime.sleep(0.25)\n\ndef double(x):\n    return 2 * x\n```")
BAD = "```python\ndef double(x):\n    return x\n```"


def write_suite(path, n_tasks):
    tasks = []
    for i in range(n_tasks):
        tasks.append(f'''
[[task]]
id = "t/double{i}"
names = ["double"]
spec = "Write `double(x)` returning 2 * x."
reference = \'\'\'
def double(x):
    return 2 * x
\'\'\'
tests = \'\'\'
from solution import double

def test_a():
    assert double(2) == 4

def test_b():
    assert double(0) == 0
\'\'\'
''')
    path.write_text('[suite]\nname = "doubles"\n' + "".join(tasks))
    return path


def write_script(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_eval_records_everything_and_tables_agree(tmp_path):
    suite = write_suite(tmp_path / "s.toml", 3)
    script = write_script(tmp_path / "r.jsonl", [SLOW_GOOD, BAD, BAD, SLOW_GOOD, BAD, BAD] * 3)
    cfg = EvalConfig(suite=str(suite), model=f"replay:{script}", trials=2,
                     workflow="direct,max_attempts=2", concurrency=1)
    run_eval(cfg, tmp_path / "run")
    store = Store(tmp_path / "run")
    eps = store.episodes()
    assert len(eps) == 6 and len({(e["task_id"], e["trial"]) for e in eps}) == 6
    for e in eps:
        atts = store.attempts(e["id"])
        assert len(atts) == e["n_attempts"]
        assert bool(e["success"]) == atts[-1].passed
    run = store.run()
    assert run.config["trials"] == 2 and "pytest" in run.packages

    shown = subprocess.run(CLI + ["show", str(tmp_path / "run")], capture_output=True, text=True)
    n_success = sum(e["success"] for e in eps)
    assert shown.returncode == 0 and f"{n_success}/6" in shown.stdout
    exported = subprocess.run(CLI + ["export", str(tmp_path / "run"), "--jsonl"],
                              capture_output=True, text=True)
    lines = [json.loads(x) for x in exported.stdout.splitlines()]
    assert len(lines) == 6 and sum(len(x["attempts"]) for x in lines) == \
        sum(e["n_attempts"] for e in eps)


def test_rerun_into_the_same_directory_is_refused(tmp_path):
    suite = write_suite(tmp_path / "s.toml", 1)
    script = write_script(tmp_path / "r.jsonl", [SLOW_GOOD] * 4)
    cfg = EvalConfig(suite=str(suite), model=f"replay:{script}")
    run_eval(cfg, tmp_path / "run")
    with pytest.raises(TracetuneError, match="already holds a run"):
        run_eval(cfg, tmp_path / "run")
    with pytest.raises(TracetuneError, match="nothing to resume"):
        run_eval(cfg, tmp_path / "other", resume=True)


@pytest.mark.parametrize("change, message", [
    ({"workflow": "nope"}, "unknown workflow"),
    ({"model": "bogus:x"}, "unknown model spec"),
    ({"trials": 0}, "trials must be at least 1"),
    ({"split": "validation"}, "unknown split"),
    ({"tasks": ("t/missing",)}, "not in suite"),
    ({"suite": "no-such-suite"}, "unknown suite"),
])
def test_bad_configs_fail_before_any_work(tmp_path, change, message):
    suite = write_suite(tmp_path / "s.toml", 1)
    cfg = EvalConfig(**{"suite": str(suite), "model": "replay:x.jsonl", **change})
    with pytest.raises(TracetuneError, match=message):
        run_eval(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "trajectories.sqlite").exists()


def test_kill_9_then_resume_gives_each_episode_exactly_once(tmp_path):
    """Killed three times at different points (the first run, then two resumes), then resumed
    to the end: exactly one finished episode per (task, trial), none lost or repeated."""
    n_tasks, trials = 4, 5
    suite = write_suite(tmp_path / "s.toml", n_tasks)
    script = write_script(tmp_path / "r.jsonl", [SLOW_GOOD] * 200)
    out = tmp_path / "run"
    args = ["eval", "--suite", str(suite), "--model", f"replay:{script}", "--trials", str(trials),
            "--concurrency", "2", "--out", str(out)]
    db = out / "trajectories.sqlite"

    def done_count() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db) as con:
            try:
                return con.execute("SELECT COUNT(*) FROM episode WHERE status='done'"
                                   ).fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    done_before = 0
    for kill in range(3):
        argv = args if kill == 0 else ["eval", "--resume", "--out", str(out)]
        proc = subprocess.Popen(CLI + argv, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and done_count() < done_before + 3:
            time.sleep(0.05)  # wait until a few more, but not all, episodes are done
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        now = done_count()
        assert done_before + 3 <= now < n_tasks * trials, (kill, done_before, now)
        done_before = now

    r = subprocess.run(CLI + ["eval", "--resume", "--out", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    store = Store(out)
    eps = store.episodes(done_only=False)
    keys = [(e["task_id"], e["trial"]) for e in eps]
    assert len(keys) == n_tasks * trials == len(set(keys))
    assert all(e["status"] == "done" for e in eps)
    n_attempt_rows = store._db.execute("SELECT COUNT(*) FROM attempt").fetchone()[0]
    assert n_attempt_rows == sum(e["n_attempts"] for e in eps)


def test_a_user_suite_whose_reference_fails_is_rejected_by_name(tmp_path):
    suite = write_suite(tmp_path / "s.toml", 2)
    suite.write_text(suite.read_text().replace("return 2 * x", "return 3 * x", 1))
    cfg = EvalConfig(suite=str(suite), model="replay:x.jsonl")
    with pytest.raises(TracetuneError, match=r"t/double0: reference fails its tests \(fail"):
        run_eval(cfg, tmp_path / "run")


def test_same_seed_reproduces_outputs_whatever_the_concurrency(tmp_path):
    outputs = []
    for i, concurrency in enumerate((1, 3)):
        cfg = EvalConfig(suite="demo", model="embedded", trials=2, temperature=0.8,
                         max_tokens=96, workflow="direct,max_attempts=1", limit=3,
                         concurrency=concurrency, seed=7)
        run_eval(cfg, tmp_path / f"run{i}")
        store = Store(tmp_path / f"run{i}")
        outputs.append({(e["task_id"], e["trial"]): store.attempts(e["id"])[0].raw_output
                        for e in store.episodes()})
        store.close()
    assert len(outputs[0]) == 6 and outputs[0] == outputs[1]
    assert len(set(outputs[0].values())) > 1


def test_a_failed_start_creates_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TracetuneError, match="replay file not found"):
        run_eval(EvalConfig(suite="demo", model=f"replay:{tmp_path / 'nosuch.jsonl'}"), out)
    assert not out.exists()  # fixed input: the same command now starts a run
    script = write_script(tmp_path / "r.jsonl", [SLOW_GOOD] * 2)
    run_eval(EvalConfig(suite="demo", model=f"replay:{script},strict=false", limit=1), out)
    assert (out / "trajectories.sqlite").is_file()


def test_out_must_be_a_directory_and_errors_are_one_line(tmp_path):
    out = tmp_path / "some_file.txt"
    out.write_text("keep me")
    r = subprocess.run(CLI + ["eval", "--suite", "demo", "--model", "oracle", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "--out must be a directory" in r.stderr
    assert out.read_text() == "keep me"
    r = subprocess.run(CLI + ["eval", "--suite", "demo", "--model", "replay:nosuch.jsonl",
                              "--out", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: replay file not found: nosuch.jsonl"], r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["--top-p", "7"], "top_p must be within (0, 1], not 7.0"),
    (["--temperature", "nan"], "temperature must be a number >= 0"),
    (["--max-tokens", "0"], "max_tokens must be at least 1, not 0"),
])
def test_sampling_ranges_are_the_same_in_generate_and_eval(tmp_path, args, message):
    for command in (["generate", "hi"], ["eval", "--suite", "demo", "--out", str(tmp_path / "r")]):
        r = subprocess.run(CLI + command + args, capture_output=True, text=True)
        assert r.returncode == 1 and message in r.stderr, (command, r.stderr)
        assert not (tmp_path / "r").exists()
