import sqlite3

import pytest

from tracetune.errors import TracetuneError
from tracetune.traces.store import SCHEMA_VERSION, RunInfo, Store

INFO = RunInfo("r1", 0.0, "funcs", "direct", "embedded", 0, 2, {"a": 1}, {"python": "3"})
ROW = {"step": "impl", "attempt": 1, "seed": 5, "messages": [{"role": "user", "content": "hi"}],
       "raw_output": "out", "code": "x = 1\n", "passed": False,
       "guards": [{"guard": "syntax", "passed": False, "feedback": "no", "details": {}}],
       "feedback": "no", "prompt_tokens": 3, "completion_tokens": 4, "latency_s": 0.1,
       "check_s": 0.2}


def test_round_trip(tmp_path):
    s = Store(tmp_path, create=True)
    s.create_run(INFO)
    eid = s.start_episode("r1", "funcs/a", 0, "direct", 9)
    s.add_attempt(eid, ROW)
    s.finish_episode(eid, success=True, wrong_tests=None, failed_step=None, n_attempts=1,
                     duration_s=1.5, prompt_tokens=3, completion_tokens=4, error=None)
    s.close()
    s = Store(tmp_path)
    assert s.run() == INFO
    [ep] = s.episodes()
    assert (ep["task_id"], ep["trial"], ep["success"], ep["status"]) == ("funcs/a", 0, 1, "done")
    [att] = s.attempts(ep["id"])
    assert att["messages"] == ROW["messages"] and att["guards"] == ROW["guards"]
    assert att["passed"] is False


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
    with pytest.raises(TracetuneError, match=f"reads version {SCHEMA_VERSION}"):
        Store(tmp_path / "v")
