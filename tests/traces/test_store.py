import dataclasses
import json
import sqlite3

import pytest

import legacy_stores as legacy
from tracetune.errors import TracetuneError
from tracetune.traces.store import SCHEMA_VERSION, RunInfo, Store
from tracetune.types import Attempt

INFO = RunInfo("r1", 0.0, "funcs", "direct", "embedded", 0, 2, {"a": 1}, {"python": "3"})
ROW = Attempt(step="impl", attempt=1, seed=5, messages=[{"role": "user", "content": "hi"}],
              raw_output="out", code="x = 1\n", passed=False,
              guards=[{"guard": "syntax", "passed": False, "feedback": "no", "details": {}}],
              feedback="no", prompt_tokens=3, completion_tokens=4, latency_s=0.1, check_s=0.2)
STEP = Attempt(step="repair", attempt=1, seed=6, messages=[{"role": "system", "content": "s"}],
               raw_output='{"type": "final", "message": "m"}',
               code='{"type": "final", "message": "m"}', passed=True,
               guards=[{"guard": "protocol", "passed": True, "feedback": ""}], feedback="",
               prompt_tokens=3, completion_tokens=4, latency_s=0.1, check_s=0.2,
               facts={"kind": "final", "name": None, "tool_ok": None, "tests": "pass"})


def test_round_trip(tmp_path):
    s = Store(tmp_path, create=True)
    s.create_run(INFO)
    eid = s.start_episode("r1", "funcs/a", 0, "direct", 9)
    s.add_attempt(eid, ROW)
    s.add_attempt(eid, STEP)
    s.finish_episode(eid, success=True, wrong_tests=None, failed_step=None, n_attempts=2,
                     duration_s=1.5, prompt_tokens=3, completion_tokens=4, error=None)
    s.close()
    s = Store(tmp_path)
    assert s.run() == INFO
    [ep] = s.episodes()
    assert (ep["task_id"], ep["trial"], ep["success"], ep["status"]) == ("funcs/a", 0, 1, "done")
    got = s.attempts(ep["id"])
    assert all(isinstance(a, Attempt) and a.created_at > 0 for a in got)
    # Everything but created_at (the store's clock) comes back as written, facts included.
    assert [dataclasses.replace(a, created_at=0.0) for a in got] == [ROW, STEP]
    assert got[0].facts is None and got[1].facts == STEP.facts
    assert got[0].passed is False and got[1].passed is True
    raw = sqlite3.connect(s.path).execute("SELECT facts_json FROM attempt ORDER BY id").fetchall()
    assert raw[0][0] is None and json.loads(raw[1][0]) == STEP.facts  # facts None -> NULL


def test_add_attempt_takes_only_the_attempt_dataclass(tmp_path):
    s = Store(tmp_path, create=True)
    s.create_run(INFO)
    eid = s.start_episode("r1", "funcs/a", 0, "direct", 9)
    with pytest.raises(TypeError, match="tracetune.types.Attempt, not dict"):
        s.add_attempt(eid, legacy.legacy_row(ROW))
    assert s.attempts(eid) == []


def test_unfinished_episodes_are_dropped_with_their_attempts(tmp_path):
    s = Store(tmp_path, create=True)
    s.create_run(INFO)
    done = s.start_episode("r1", "funcs/a", 0, "direct", 1)
    s.finish_episode(done, success=False, wrong_tests=None, failed_step="impl", n_attempts=0,
                     duration_s=0, prompt_tokens=0, completion_tokens=0, error=None)
    partial = s.start_episode("r1", "funcs/b", 0, "direct", 2)
    s.add_attempt(partial, ROW)
    assert s.drop_unfinished() == 1
    assert s.done_keys() == {("funcs/a", 0)}
    assert s.attempts(partial) == []
    assert len(s.episodes(done_only=False)) == 1


def test_a_finished_episode_cannot_be_recorded_twice(tmp_path):
    s = Store(tmp_path, create=True)
    s.create_run(INFO)
    eid = s.start_episode("r1", "funcs/a", 0, "direct", 1)
    s.finish_episode(eid, success=True, wrong_tests=None, failed_step=None, n_attempts=1,
                     duration_s=0, prompt_tokens=0, completion_tokens=0, error=None)
    with pytest.raises(sqlite3.IntegrityError):
        s.start_episode("r1", "funcs/a", 0, "direct", 1)


def test_second_run_in_one_directory_is_refused(tmp_path):
    s = Store(tmp_path, create=True)
    s.create_run(INFO)
    with pytest.raises(TracetuneError, match="already holds a run"):
        s.create_run(INFO)


def test_bad_files(tmp_path):
    with pytest.raises(TracetuneError, match="no trajectory store"):
        Store(tmp_path / "missing")
    junk = tmp_path / "junk" / "trajectories.sqlite"
    junk.parent.mkdir()
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(TracetuneError, match="not a readable SQLite"):
        Store(junk.parent)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)")
    with pytest.raises(TracetuneError, match="not a tracetune trajectory store"):
        Store(other)
    s = Store(tmp_path / "v", create=True)
    s._db.execute("UPDATE meta SET value='99'")
    s.close()
    with pytest.raises(TracetuneError, match=f"schema version 99, newer than this tracetune "
                       f"\\(it reads version {SCHEMA_VERSION} and older\\)") as err:
        Store(tmp_path / "v")
    assert "\n" not in str(err.value)
    s = Store(tmp_path / "v2", create=True)
    s._db.execute("UPDATE meta SET value='abc'")
    s.close()
    with pytest.raises(TracetuneError, match="unknown schema version 'abc'"):
        Store(tmp_path / "v2")
