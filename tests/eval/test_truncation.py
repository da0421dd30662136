"""Why generation stopped is recorded for every attempt; an answer cut at max_tokens is its own
failure kind and is never mined as a good row."""

import json

import pytest

from tracetune.datasets.build import MineConfig, mine
from tracetune.eval.metrics import failure_kinds
from tracetune.eval.runner import EvalConfig, run_eval
from tracetune.traces.store import Store
from tracetune.types import finish_reason_of

SUITE = '''[suite]
name = "cut"
train_pct = 100

[[task]]
id = "cut/double"
names = ["double"]
spec = "Write `double(x)` returning 2 * x."
reference = "def double(x):\\n    return 2 * x\\n"
tests = "from solution import double\\n\\ndef test_a():\\n    assert double(2) == 4\\n"
'''


@pytest.mark.parametrize("raw,text,want", [
    ("length", "def f(", "length"), ("length", None, "length"), ("stop", "x", "stop"),
    (None, "x", "stop"), ("stop", None, "error"), ("content_filter", "", "error"),
])
def test_finish_reasons_map_onto_stop_length_error(raw, text, want):
    assert finish_reason_of(raw, text) == want


def test_truncated_answers_are_their_own_failure_and_never_mined(tmp_path):
    (tmp_path / "s.toml").write_text(SUITE)
    cut = "```python\ndef double(x):\n    return 2 *"
    whole_but_cut = "```python\ndef double(x):\n    return 2 * x\n```\nThis function"
    script = tmp_path / "r.jsonl"
    script.write_text("\n".join(json.dumps(e) for e in [
        {"text": cut, "finish_reason": "length"},            # trial 0: cut, fails
        {"text": whole_but_cut, "finish_reason": "length"},  # trial 1: passes, but was cut
        {"text": "```python\ndef double(x):\n    return 2 * x\n```"},  # trial 2: whole
    ]) + "\n")
    run_eval(EvalConfig(suite=str(tmp_path / "s.toml"), model=f"replay:{script}", trials=3,
                        workflow="direct,max_attempts=1", concurrency=1), tmp_path / "run")
    store = Store(tmp_path / "run")
    try:
        eps = store.episodes()
        reasons = [store.attempts(e["id"])[0].finish_reason for e in eps]
        assert reasons == ["length", "length", "stop"]
        assert [bool(e["success"]) for e in eps] == [False, True, True]
        assert dict(failure_kinds(store)) == {"truncated": 1}
    finally:
        store.close()
    report = mine([tmp_path / "run"], tmp_path / "data", MineConfig(tokenizer=None,
                                                                   leakage_suites=()))
    assert report.dropped["truncated"] == 1
    assert [r.provenance["trial"] for r in report.rows["sft"]] == [2]
