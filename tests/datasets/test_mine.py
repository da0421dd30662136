"""Mining on a fixture store: tiers, kinds, formats, filters."""

import json

import pytest

from tracetune.datasets.build import MineConfig, mine
from tracetune.errors import TracetuneError
from tracetune.tasks.splits import in_train
from tracetune.traces.store import RunInfo, Store
from tracetune.types import Attempt

GOOD = "def double(x):\n    return 2 * x\n"
BAD = "def double(x):\n    return x\n"


def train_task(prefix: str, want: bool = True) -> str:
    for i in range(1000):
        tid = f"{prefix}{i}"
        if in_train(tid, 50) == want:
            return tid
    raise AssertionError


def attempt(step, n, passed, code, prompt="Write double(x).", feedback=""):
    msgs = [{"role": "user", "content": prompt}]
    if n > 1:
        msgs += [{"role": "assistant", "content": f"```python\n{BAD}```"},
                 {"role": "user", "content": f"That failed: {feedback}"}]
    return Attempt(step=step, attempt=n, seed=n, messages=msgs,
                   raw_output=f"```python\n{code}```", code=code, passed=passed, guards=[],
                   feedback="" if passed else "1 of 2 tests failed", prompt_tokens=10,
                   completion_tokens=10, latency_s=0.1, check_s=0.1)


def episode(store, task, trial, workflow, attempts, success, wrong_tests=None):
    eid = store.start_episode("r1", task, trial, workflow, trial)
    for a in attempts:
        store.add_attempt(eid, a)
    store.finish_episode(eid, success=success, wrong_tests=wrong_tests, failed_step=None,
                         n_attempts=len(attempts), duration_s=1, prompt_tokens=1,
                         completion_tokens=1, error=None)


@pytest.fixture
def run_dir(tmp_path):
    store = Store(tmp_path / "run", create=True)
    store.create_run(RunInfo("r1", 0, "funcs", "direct", "embedded", 0, 3, {}, {}))
    t = train_task("fx/double")
    # trial 0: first-attempt success; trial 1: fail then fix; trial 2: same code as trial 0
    episode(store, t, 0, "direct", [attempt("impl", 1, True, GOOD)], True)
    episode(store, t, 1, "direct", [attempt("impl", 1, False, BAD),
                                    attempt("impl", 2, True, GOOD + "\n# fixed\n")], True)
    episode(store, t, 2, "direct", [attempt("impl", 1, True, "def double(x):\n  return 2*x\n")],
            True)
    held = train_task("fx/held", want=False)
    episode(store, held, 0, "direct", [attempt("impl", 1, True, GOOD)], True)
    # tdd: right tests (validated) and wrong tests
    tt = train_task("fx/tdd")
    tests = "from solution import double\ndef test_a(): assert double(1) == 2\n"
    episode(store, tt, 0, "tdd", [attempt("g_test", 1, True, tests, "Write tests."),
                                  attempt("g_impl", 1, True, GOOD, "Implement.")], True, False)
    episode(store, tt, 1, "tdd", [attempt("g_test", 1, True, tests.replace("2", "3"),
                                          "Write tests."),
                                  attempt("g_impl", 1, False, BAD, "Implement.")], False, True)
    store.close()
    return tmp_path / "run", t, tt, held


def cfg(**kw):
    return MineConfig(**{"tokenizer": None, "leakage_suites": (), **kw})


def test_sft_tiers_dedup_and_split(run_dir, tmp_path):
    run, t, tt, held = run_dir
    rep = mine([run], tmp_path / "ds", cfg())
    sft = rep.rows["sft"]
    tasks = sorted(r.task for r in sft)
    # direct: trials 0 and 2 are the same program (normalized) -> one row; trial 1's fix (attempt
    # 2) is a workflow success -> its own row (a comment does not change the normalized code,
    # so it is a duplicate too); tdd: g_test validated + first attempt, g_impl workflow.
    assert tasks.count(t) == 1
    assert held not in tasks
    steps = sorted(r.step for r in sft if r.task == tt)
    assert steps == ["g_impl", "g_test"]
    assert rep.dropped == {"held_out_task": 1, "duplicate": 2}
    row = next(r for r in sft if r.step == "g_test")
    assert set(row.tiers) == {"first_attempt", "validated", "workflow"}
    prov = row.provenance
    assert {"run_id", "task", "trial", "attempt", "model", "timestamp", "guard_result"} <= set(prov)
    assert row.completion["content"].startswith("```python\n")


def test_first_attempt_tier_excludes_retries(run_dir, tmp_path):
    run, t, *_ = run_dir
    rep = mine([run], tmp_path / "ds", cfg(tiers={"impl": ("first_attempt",)}))
    assert all(r.provenance["attempt"] == 1 for r in rep.rows["sft"])


def test_fix_and_dpo_rows(run_dir, tmp_path):
    run, t, tt, _ = run_dir
    rep = mine([run], tmp_path / "ds", cfg(kinds=("fix", "dpo")))
    [fix] = rep.rows["fix"]
    assert fix.task == t and len(fix.prompt) == 3
    assert "That failed" in fix.prompt[2]["content"]
    dpo = rep.rows["dpo"]
    assert dpo and all(r.prompt[0]["content"] == "Write double(x)." for r in dpo
                       if r.task == t)
    pair = next(r for r in dpo if r.task == t)
    assert "2 * x" in pair.chosen["content"] and "return x" in pair.rejected["content"]


def test_formats_and_manifest(run_dir, tmp_path):
    run, *_ = run_dir
    mine([run], tmp_path / "ds", cfg(kinds=("sft", "dpo", "fix")))
    ds = tmp_path / "ds"
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["counts"]["sft"] >= 1
    chat = [json.loads(x) for x in (ds / "formats/sft.messages.jsonl").read_text().splitlines()]
    assert chat[0]["messages"][-1]["role"] == "assistant"
    pc = json.loads((ds / "formats/sft.prompt_completion.jsonl").read_text().splitlines()[0])
    assert pc["completion"][0]["role"] == "assistant" and pc["prompt"][-1]["role"] == "user"
    alpaca = json.loads((ds / "formats/sft.alpaca.jsonl").read_text().splitlines()[0])
    assert {"instruction", "input", "output", "metadata"} <= set(alpaca)
    together = json.loads((ds / "formats/dpo.together.jsonl").read_text().splitlines()[0])
    assert {"input", "preferred_output", "non_preferred_output"} <= set(together)
    import datasets

    assert len(datasets.load_from_disk(str(ds / "hf" / "sft"))) == manifest["counts"]["sft"]


def test_leakage_and_length_filters(run_dir, tmp_path):
    run, *_ = run_dir
    leak_suite = tmp_path / "evalsuite.toml"
    leak_suite.write_text('[suite]\nname = "ev"\n[[task]]\nid = "ev/d"\nnames = ["double"]\n'
                          'spec = "s"\nreference = "def double(x):\\n    return 2 * x\\n"\n'
                          'tests = "t"\n')
    rep = mine([run], tmp_path / "ds", cfg(leakage_suites=(str(leak_suite),)))
    assert rep.dropped.get("leakage", 0) >= 1
    assert all("2 * x" not in r.code and "2*x" not in r.code for r in rep.rows["sft"])
    rep = mine([run], tmp_path / "ds2", cfg(tokenizer="embedded", max_seq_len=4096))
    assert "too_long" not in rep.dropped
    with pytest.raises(TracetuneError, match="too_long: 3"):
        mine([run], tmp_path / "ds3", cfg(tokenizer="embedded", max_seq_len=40))


def test_nothing_left_writes_nothing(run_dir, tmp_path):
    run, *_ = run_dir
    with pytest.raises(TracetuneError, match="no rows left"):
        mine([run], tmp_path / "ds", cfg(train_pct=0))
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".mine-*"))


def test_empty_run_is_refused(tmp_path):
    store = Store(tmp_path / "empty", create=True)
    store.create_run(RunInfo("r", 0, "funcs", "direct", "embedded", 0, 1, {}, {}))
    store.close()
    with pytest.raises(TracetuneError, match="no finished episodes"):
        mine([tmp_path / "empty"], tmp_path / "ds", cfg())


def test_a_killed_miners_staging_directory_is_removed_by_the_next(tmp_path):
    import os
    import subprocess

    from tracetune.staging import staging_dir

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".mine-{dead.pid}-abcd1234"  # left by a process that is gone
    stale.mkdir()
    (stale / "rows").mkdir()
    live = tmp_path / f".mine-{os.getpid()}-efgh5678"  # a live miner's: untouched
    live.mkdir()
    fresh = staging_dir(tmp_path, "mine")
    assert not stale.exists() and live.is_dir() and fresh.is_dir()
    assert fresh.name.startswith(f".mine-{os.getpid()}-")
