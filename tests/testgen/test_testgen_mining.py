"""Mining testgen runs: SFT rows only from valid files that kill mutants, DPO pairs that prefer
the file killing more mutants at equal validity, stage-C rows from a fixed retry."""

from __future__ import annotations

from tracetune.datasets.build import MineConfig, mine
from tracetune.tasks.splits import in_train
from tracetune.traces.store import RunInfo, Store
from tracetune.types import Attempt

PROMPT = "### Task: Write pytest tests\n\nsign"


def _task() -> str:
    return next(f"fx/sign{i}" for i in range(1000) if in_train(f"fx/sign{i}", 50))


def _attempt(n: int, passed: bool, code: str, score: float | None) -> Attempt:
    msgs = [{"role": "user", "content": PROMPT}]
    if n > 1:
        msgs += [{"role": "assistant", "content": "```python\nwrong\n```"},
                 {"role": "user", "content": "1 of 1 tests fail on the correct code"}]
    guards = [{"guard": "test_suite", "passed": True, "feedback": "", "details": {}},
              {"guard": "reference", "passed": passed, "feedback": "", "details": {}}]
    if score is not None:
        guards.append({"guard": "grade", "passed": True, "feedback": "",
                       "details": {"mutation_score": score, "valid": True}})
    return Attempt(step="testgen", attempt=n, seed=n, messages=msgs,
                   raw_output=f"```python\n{code}```", code=code, passed=passed, guards=guards,
                   feedback="" if passed else "fails", prompt_tokens=1, completion_tokens=1,
                   latency_s=0.1, check_s=0.1)


def _run(tmp_path):
    store = Store(tmp_path / "run", create=True)
    store.create_run(RunInfo("r1", 0, "funcs", "testgen", "embedded", 0, 4, {}, {}))
    t = _task()
    files = {"strong": "from solution import sign\ndef test_a(): assert sign(1) == 1\n"
                       "def test_b(): assert sign(-1) == -1\n",
             "weak": "from solution import sign\ndef test_a(): assert sign(1) == 1\n",
             "blind": "def test_a(): assert True\n"}
    episodes = [[_attempt(1, True, files["strong"], 0.9)],
                [_attempt(1, True, files["weak"], 0.4)],
                [_attempt(1, True, files["blind"], 0.0)],
                [_attempt(1, False, "from solution import sign\ndef test_a(): assert 0\n", None),
                 _attempt(2, True, files["weak"] + "# fixed\n", 0.4)]]
    for trial, attempts in enumerate(episodes):
        eid = store.start_episode("r1", t, trial, "testgen", trial)
        for a in attempts:
            store.add_attempt(eid, a)
        store.finish_episode(eid, success=True, wrong_tests=False, failed_step=None,
                             n_attempts=len(attempts), duration_s=1, prompt_tokens=1,
                             completion_tokens=1, error=None)
    store.close()
    return tmp_path / "run", files


def test_sft_rows_are_valid_files_that_kill_mutants(tmp_path):
    run, files = _run(tmp_path)
    report = mine([run], tmp_path / "d", MineConfig(tokenizer=None, leakage_suites=(),
                                                      kinds=("sft",)))
    codes = {r.code for r in report.rows["sft"]}
    assert files["strong"] in codes and files["weak"] in codes
    assert files["blind"] not in codes  # valid, but kills no mutant
    assert all("kills_mutants" in r.tiers for r in report.rows["sft"])


def test_dpo_prefers_the_file_that_kills_more_mutants(tmp_path):
    run, files = _run(tmp_path)
    report = mine([run], tmp_path / "d", MineConfig(tokenizer=None, leakage_suites=(),
                                                      kinds=("dpo",)))
    pairs = [r for r in report.rows["dpo"] if r.provenance.get("preferred_for")]
    assert pairs
    for r in pairs:
        hi, lo = r.provenance["scores"]
        assert hi > lo
    first = pairs[0]
    assert files["strong"] in first.chosen["content"] and files["blind"] in first.rejected["content"]


def test_stage_c_rows_pair_the_failure_log_with_the_fixed_file(tmp_path):
    run, files = _run(tmp_path)
    report = mine([run], tmp_path / "d", MineConfig(tokenizer=None, leakage_suites=(),
                                                      kinds=("fix",)))
    (row,) = report.rows["fix"]
    assert "fail on the correct code" in row.prompt[-1]["content"]
    assert "# fixed" in row.completion["content"]

