"""Trajectory stores as older releases wrote them (raw SQL, independent of today's Store), and a
small set of episodes (guarded workflows and repair agent steps) to write into them.

Schema texts are copies of the released ones; do not derive them from tracetune.traces.store.
A v1/v2 release kept an agent step's facts in its first guard: guards[0] = {"guard": "protocol",
"passed", "feedback", "details": facts}; `legacy_row` turns a `types.Attempt` into that form.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tracetune.types import Attempt

V2_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, suite TEXT NOT NULL, workflow TEXT NOT NULL,
    model_spec TEXT NOT NULL, seed INTEGER NOT NULL, trials INTEGER NOT NULL,
    config_json TEXT NOT NULL, packages_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS episode (
    id INTEGER PRIMARY KEY, run_id TEXT NOT NULL REFERENCES run(id), task_id TEXT NOT NULL,
    trial INTEGER NOT NULL, workflow TEXT NOT NULL, seed INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    success INTEGER, wrong_tests INTEGER, failed_step TEXT, n_attempts INTEGER,
    duration_s REAL, prompt_tokens INTEGER, completion_tokens INTEGER, error TEXT,
    started_at REAL NOT NULL, finished_at REAL, metrics_json TEXT,
    UNIQUE (run_id, task_id, trial)
);
CREATE TABLE IF NOT EXISTS attempt (
    id INTEGER PRIMARY KEY, episode_id INTEGER NOT NULL REFERENCES episode(id) ON DELETE CASCADE,
    step TEXT NOT NULL, attempt INTEGER NOT NULL, seed INTEGER NOT NULL,
    messages_json TEXT NOT NULL, raw_output TEXT NOT NULL, code TEXT NOT NULL,
    passed INTEGER NOT NULL, guards_json TEXT NOT NULL, feedback TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL, check_s REAL NOT NULL, created_at REAL NOT NULL,
    UNIQUE (episode_id, step, attempt)
);
CREATE INDEX IF NOT EXISTS attempt_episode ON attempt(episode_id);
"""
V1_SCHEMA = V2_SCHEMA.replace(", metrics_json TEXT", "")
assert V1_SCHEMA != V2_SCHEMA
V3_SCHEMA = V2_SCHEMA.replace("created_at REAL NOT NULL,\n    UNIQUE (episode_id",
                              "created_at REAL NOT NULL, facts_json TEXT,\n    UNIQUE (episode_id")
assert V3_SCHEMA != V2_SCHEMA

CREATED_AT = 1_700_000_000.0
"""Every fixture attempt's created_at (so stores written at different times mine alike)."""


@dataclass
class Ep:
    task: str
    trial: int
    workflow: str
    success: bool
    attempts: list[Attempt]
    wrong_tests: bool | None = None
    failed_step: str | None = None
    metrics: dict | None = None
    seed: int = 0


def legacy_row(a: Attempt) -> dict:
    """The attempt as a v1/v2 agent wrote it (facts inside the protocol guard)."""
    guards = [dict(g) for g in a.guards]
    if a.facts is not None:
        guards[0]["details"] = dict(a.facts)
    return {"step": a.step, "attempt": a.attempt, "seed": a.seed, "messages": a.messages,
            "raw_output": a.raw_output, "code": a.code, "passed": a.passed, "guards": guards,
            "feedback": a.feedback, "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens, "latency_s": a.latency_s,
            "check_s": a.check_s}


def write_legacy_store(run_dir: Path, version: int, episodes: list[Ep], *, run_id: str = "r1",
                       suite: str = "funcs", workflow: str = "direct") -> Path:
    """A finished run in a schema-`version` (1, 2 or 3) store at run_dir/trajectories.sqlite
    (v3 keeps an agent step's facts in facts_json, as that release did)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "trajectories.sqlite"
    db = sqlite3.connect(path)
    db.executescript({1: V1_SCHEMA, 2: V2_SCHEMA, 3: V3_SCHEMA}[version])
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    db.execute("INSERT INTO run VALUES (?,?,?,?,?,?,?,?,?)",
               (run_id, 0.0, suite, workflow, "embedded", 0, 2, "{}", "{}"))
    for ep in episodes:
        cols = ("run_id, task_id, trial, workflow, seed, status, success, wrong_tests, "
                "failed_step, n_attempts, duration_s, prompt_tokens, completion_tokens, error, "
                "started_at, finished_at")
        vals = [run_id, ep.task, ep.trial, ep.workflow, ep.seed, "done", int(ep.success),
                None if ep.wrong_tests is None else int(ep.wrong_tests), ep.failed_step,
                len(ep.attempts), 1.0, 1, 1, None, 0.0, 1.0]
        if version >= 2:
            cols += ", metrics_json"
            vals.append(None if ep.metrics is None else json.dumps(ep.metrics, sort_keys=True))
        eid = db.execute(f"INSERT INTO episode ({cols}) VALUES ({','.join('?' * len(vals))})",
                         vals).lastrowid
        for a in ep.attempts:
            r = legacy_row(a) if version < 3 else {**legacy_row(a), "guards": a.guards}
            facts = [] if version < 3 else [None if a.facts is None else json.dumps(a.facts)]
            db.execute(
                "INSERT INTO attempt (episode_id, step, attempt, seed, messages_json, raw_output,"
                " code, passed, guards_json, feedback, prompt_tokens, completion_tokens,"
                " latency_s, check_s, created_at" + (", facts_json" if facts else "") + ") VALUES"
                f" ({','.join('?' * (15 + len(facts)))})",
                (eid, r["step"], r["attempt"], r["seed"], json.dumps(r["messages"]),
                 r["raw_output"], r["code"], int(r["passed"]), json.dumps(r["guards"]),
                 r["feedback"], r["prompt_tokens"], r["completion_tokens"], r["latency_s"],
                 r["check_s"], CREATED_AT, *facts))
    db.commit()
    db.close()
    return path


def write_fresh_store(run_dir: Path, episodes: list[Ep], *, run_id: str = "r1",
                      suite: str = "funcs", workflow: str = "direct") -> Path:
    """The same run written through today's Store (created_at then set to CREATED_AT)."""
    from tracetune.traces.store import RunInfo, Store

    store = Store(run_dir, create=True)
    store.create_run(RunInfo(run_id, 0.0, suite, workflow, "embedded", 0, 2, {}, {}))
    for ep in episodes:
        eid = store.start_episode(run_id, ep.task, ep.trial, ep.workflow, ep.seed)
        for a in ep.attempts:
            store.add_attempt(eid, a)
        store.finish_episode(eid, success=ep.success, wrong_tests=ep.wrong_tests,
                             failed_step=ep.failed_step, n_attempts=len(ep.attempts),
                             duration_s=1.0, prompt_tokens=1, completion_tokens=1, error=None,
                             metrics=ep.metrics)
    store.close()
    db = sqlite3.connect(store.path)
    db.execute("UPDATE attempt SET created_at=?", (CREATED_AT,))
    db.commit()
    db.close()
    return store.path


# -- the episodes ---------------------------------------------------------------------------------
GOOD = "def double(x):\n    return 2 * x\n"
BAD = "def double(x):\n    return x\n"
SYSTEM = "You fix bugs with tools. Reply with one JSON object per message."


def guarded(step: str, n: int, passed: bool, code: str, prompt: str = "Write double(x).",
            guards: list[dict] | None = None) -> Attempt:
    msgs = [{"role": "user", "content": prompt}]
    if n > 1:
        msgs += [{"role": "assistant", "content": f"```python\n{BAD}```"},
                 {"role": "user", "content": "That answer failed a check:\n1 of 2 failed"}]
    if guards is None:
        guards = [{"guard": "syntax", "passed": True, "feedback": "", "details": {}},
                  {"guard": "tests", "passed": passed,
                   "feedback": "" if passed else "E   assert 1 == 2",
                   "details": {"status": "pass" if passed else "fail", "reason": "",
                               "tests": [["test_a", "passed" if passed else "failed"]]}}]
    return Attempt(step=step, attempt=n, seed=100 + n, messages=msgs,
                   raw_output=f"```python\n{code}```", code=code, passed=passed, guards=guards,
                   feedback="" if passed else "1 of 2 failed", prompt_tokens=10,
                   completion_tokens=12, latency_s=0.25, check_s=0.5)


def call(name: str, **args) -> str:
    return json.dumps({"type": "tool_call", "name": name, "args": args})


FINAL = json.dumps({"type": "final", "message": "fixed"})


def repair_episode(task: str, trial: int, success: bool,
                   steps: list[tuple[str, str, str | None, bool | None, str | None]]) -> Ep:
    """Agent steps as the repair agent records them: (raw, kind, name, tool_ok, tests) each;
    the conversation grows by (assistant raw, user tool result) after every step."""
    msgs = [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Fix the bug in {task}."}]
    attempts = []
    for it, (raw, kind, name, tool_ok, tests) in enumerate(steps, 1):
        valid = kind in ("tool_call", "final")
        error = "" if valid else ("not JSON" if kind == "parse_error" else "")
        reply = f"[tool_result]\nresult of step {it}"
        attempts.append(Attempt(
            step="repair", attempt=it, seed=200 + it, messages=[dict(m) for m in msgs],
            raw_output=raw, code=raw if valid or kind == "loop" else "",
            passed=valid and tool_ok is not False,
            guards=[{"guard": "protocol", "passed": valid, "feedback": error}],
            feedback=reply, prompt_tokens=30, completion_tokens=8, latency_s=0.1, check_s=0.2,
            facts={"kind": kind, "name": name, "tool_ok": tool_ok, "tests": tests}))
        msgs += [{"role": "assistant", "content": raw}, {"role": "user", "content": reply}]
    return Ep(task, trial, "repair", success, attempts, failed_step=None if success else "loop",
              metrics={"parse_errors": 1, "loop_detections": 0, "tool_errors": 0, "writes": 1,
                       "wrote": True, "steps": len(steps), "end": "final"})


def episodes(direct_task: str, tdd_task: str, repair_task: str) -> list[Ep]:
    """Direct (first-attempt pass; fail then fix), tdd (right and wrong tests) and repair
    episodes (valid calls, parse errors, a loop, a failed tool, a final answer) that between them
    give every row kind: sft, fix, dpo and step-level dpo."""
    tests = "from solution import double\ndef test_a(): assert double(1) == 2\n"
    read = call("read_file", rel_path="m.py")
    return [
        Ep(direct_task, 0, "direct", True, [guarded("impl", 1, True, GOOD)]),
        Ep(direct_task, 1, "direct", True, [guarded("impl", 1, False, BAD),
                                            guarded("impl", 2, True, GOOD + "# fixed\n")]),
        Ep(tdd_task, 0, "tdd", True, [guarded("g_test", 1, True, tests, "Write tests."),
                                      guarded("g_impl", 1, True, GOOD, "Implement.")],
           wrong_tests=False),
        Ep(tdd_task, 1, "tdd", False, [guarded("g_test", 1, True, tests.replace("2", "3"),
                                               "Write tests."),
                                       guarded("g_impl", 1, False, BAD, "Implement.")],
           wrong_tests=True, failed_step="g_impl"),
        repair_episode(repair_task, 0, True, [
            (call("list_files"), "tool_call", "list_files", True, None),
            ("hello", "parse_error", None, None, None),
            (read, "tool_call", "read_file", True, None),
            (call("edit", rel_path="m.py", old="x", new="2 * x"), "tool_call", "edit", True,
             "pass"),
            (FINAL, "final", None, None, None)]),
        repair_episode(repair_task, 1, False, [
            ("hello", "parse_error", None, None, None),
            (call("read_file", rel_path="nope.py"), "tool_call", "read_file", False, None),
            (call("read_file", rel_path="nope.py"), "loop", "read_file", None, None)]),
    ]
