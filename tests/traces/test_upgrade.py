"""Stores written by older releases (schema v1, v2) open, upgrade in place to the current schema
and read exactly like stores written today."""

import dataclasses
import json
import sqlite3
from collections import Counter

import pytest

import legacy_stores as legacy
from tracetune.errors import TracetuneError
from tracetune.eval.metrics import failure_kinds
from tracetune.traces import store as store_mod
from tracetune.traces.export import export_jsonl
from tracetune.traces.store import SCHEMA_VERSION, Store


def _episodes():
    return legacy.episodes("fx/direct", "fx/tdd", "fx/repair")


def _meta_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
    finally:
        db.close()


def _columns(path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


def _read(path) -> list[tuple[dict, list]]:
    s = Store(path)
    try:
        return [({k: v for k, v in ep.items() if k not in ("id", "started_at", "finished_at")},
                 s.attempts(ep["id"])) for ep in s.episodes()]
    finally:
        s.close()


def test_schema_version_is_4():
    assert SCHEMA_VERSION == 4


def test_v3_store_gains_finish_reasons_unknown_for_old_attempts(tmp_path):
    eps = _episodes()
    path = legacy.write_legacy_store(tmp_path / "old", 3, eps)
    assert "finish_reason" not in _columns(path, "attempt")
    got = _read(path)
    assert _meta_version(path) == SCHEMA_VERSION and "finish_reason" in _columns(path, "attempt")
    by_episode = {(ep["task_id"], ep["trial"]): atts for ep, atts in got}
    assert by_episode == {(ep.task, ep.trial): [dataclasses.replace(
        a, created_at=legacy.CREATED_AT) for a in ep.attempts] for ep in eps}
    assert all(a.finish_reason is None for _, atts in got for a in atts)


@pytest.mark.parametrize("version", [1, 2])
def test_old_store_upgrades_and_reads_back_identical_facts(tmp_path, version):
    eps = _episodes()
    path = legacy.write_legacy_store(tmp_path / "old", version, eps)
    # The fixture really is the old form: facts inside the protocol guard, no facts column.
    db = sqlite3.connect(path)
    guards = [json.loads(g) for (g,) in db.execute(
        "SELECT guards_json FROM attempt WHERE step='repair' ORDER BY id")]
    db.close()
    assert guards and all(g[0]["guard"] == "protocol" and "kind" in g[0]["details"]
                          for g in guards)
    assert "facts_json" not in _columns(path, "attempt")

    s = Store(path)
    got = {(ep["task_id"], ep["trial"]): s.attempts(ep["id"]) for ep in s.episodes()}
    s.close()
    assert _meta_version(path) == SCHEMA_VERSION
    assert {"facts_json"} <= _columns(path, "attempt")
    assert {"metrics_json"} <= _columns(path, "episode")
    for ep in eps:
        stored = got[(ep.task, ep.trial)]
        # Every field as the agent built it today: facts out of the guard, the guard without
        # details, guarded attempts (sandbox details kept) with facts None.
        assert stored == [dataclasses.replace(a, created_at=legacy.CREATED_AT)
                          for a in ep.attempts]
    repair = got[("fx/repair", 0)]
    assert [a.facts["kind"] for a in repair] == ["tool_call", "parse_error", "tool_call",
                                                 "tool_call", "final"]
    assert all(a.guards == [{"guard": "protocol", "passed": a.facts["kind"] in
                             ("tool_call", "final"), "feedback": a.guards[0]["feedback"]}]
               for a in repair)
    direct = got[("fx/direct", 0)][0]
    assert direct.facts is None and direct.guards[1]["details"]["status"] == "pass"


@pytest.mark.parametrize("version", [1, 2])
def test_upgraded_store_reads_like_one_written_today(tmp_path, version):
    eps = _episodes()
    old = legacy.write_legacy_store(tmp_path / "old", version, eps)
    new = legacy.write_fresh_store(tmp_path / "new", eps)
    old_eps, new_eps = _read(old), _read(new)
    if version == 1:  # v1 never recorded metrics; everything else must match
        new_eps = [({**e, "metrics": None}, atts) for e, atts in new_eps]
    assert old_eps == new_eps
    # The raw columns agree too (same JSON text), not only the decoded values.
    q = "SELECT guards_json, facts_json FROM attempt ORDER BY id"
    assert sqlite3.connect(old).execute(q).fetchall() == sqlite3.connect(new).execute(q).fetchall()


def test_upgrade_runs_once_and_leaves_other_guards_alone(tmp_path):
    # Only a first guard named "protocol" marks an agent step: a later guard of that name keeps
    # its details. A protocol guard without details (never written by a release, but possible)
    # still marks one, with empty facts (as v2 miners read it).
    odd = legacy.guarded("impl", 1, False, legacy.BAD, guards=[
        {"guard": "syntax", "passed": True, "feedback": "", "details": {}},
        {"guard": "protocol", "passed": False, "feedback": "x", "details": {"status": "fail"}}])
    bare = dataclasses.replace(odd, step="repair", attempt=1,
                               guards=[{"guard": "protocol", "passed": False, "feedback": "x"}])
    path = legacy.write_legacy_store(tmp_path / "old", 2, [
        legacy.Ep("fx/a", 0, "direct", False, [odd]),
        legacy.Ep("fx/b", 0, "repair", False, [bare])])
    [(_, [a]), (_, [b])] = _read(path)
    assert a.facts is None and a.guards == odd.guards
    assert b.facts == {} and b.guards == bare.guards
    q = "SELECT guards_json, facts_json FROM attempt ORDER BY id"
    before = sqlite3.connect(path).execute(q).fetchall()
    Store(path).close()  # opening again changes nothing
    assert sqlite3.connect(path).execute(q).fetchall() == before
    assert _meta_version(path) == SCHEMA_VERSION


def test_each_upgrade_step_commits_on_its_own(tmp_path, monkeypatch):
    path = legacy.write_legacy_store(tmp_path / "old", 1, _episodes())

    def broken(db):
        db.execute("ALTER TABLE attempt ADD COLUMN facts_json TEXT")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(store_mod._UPGRADES, 2, broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        Store(path)
    # v1 -> v2 is committed; the failed v2 -> v3 step left nothing behind.
    assert _meta_version(path) == 2
    assert "metrics_json" in _columns(path, "episode")
    assert "facts_json" not in _columns(path, "attempt")
    monkeypatch.undo()
    Store(path).close()
    assert _meta_version(path) == SCHEMA_VERSION


def test_export_of_an_upgraded_store_keeps_every_key_and_adds_facts_and_finish_reasons(tmp_path):
    path = legacy.write_legacy_store(tmp_path / "old", 2, _episodes())
    out = tmp_path / "run.jsonl"
    assert export_jsonl(path.parent, out) == len(_episodes())
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    old_keys = {"id", "episode_id", "step", "attempt", "seed", "raw_output", "code", "passed",
                "feedback", "prompt_tokens", "completion_tokens", "latency_s", "check_s",
                "created_at", "messages", "guards"}
    for line in lines:
        assert {"run_id", "model", "suite", "task_id", "trial", "success", "metrics",
                "attempts"} <= set(line)
        for a in line["attempts"]:
            assert set(a) == old_keys | {"facts", "finish_reason"}
            assert a["episode_id"] == line["id"]
    repair = next(x for x in lines if x["task_id"] == "fx/repair" and x["trial"] == 1)
    assert [a["facts"]["kind"] for a in repair["attempts"]] == ["parse_error", "tool_call", "loop"]
    assert all("details" not in a["guards"][0] for a in repair["attempts"])
    direct = next(x for x in lines if x["task_id"] == "fx/direct")
    assert all(a["facts"] is None for a in direct["attempts"])


def test_an_old_store_that_cannot_be_written_is_refused_with_the_reason(tmp_path, monkeypatch):
    path = legacy.write_legacy_store(tmp_path / "old", 2, _episodes())

    def read_only(db):  # what SQLite raises for a read-only file (tests may run as root)
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setitem(store_mod._UPGRADES, 2, read_only)
    with pytest.raises(TracetuneError, match="has schema version 2 and must be upgraded in "
                       "place to 4, which failed: attempt to write a readonly database"):
        Store(path)
    assert _meta_version(path) == 2


def test_failure_kinds_read_upgraded_and_fresh_stores_alike(tmp_path):
    eps = _episodes()
    old = Store(legacy.write_legacy_store(tmp_path / "old", 2, eps))
    new = Store(legacy.write_fresh_store(tmp_path / "new", eps))
    # tdd trial 1 fails its generated tests; repair trial 1 ends on a loop (a failed protocol
    # guard, whose facts no longer sit in the guard's details).
    assert failure_kinds(old) == failure_kinds(new) == Counter({"wrong answer": 1, "protocol": 1})
    assert failure_kinds(old, {"fx/repair"}) == Counter({"protocol": 1})
    old.close()
    new.close()
