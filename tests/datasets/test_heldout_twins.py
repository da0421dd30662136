"""Mining checks every row against its own run's held-out tasks by default: a task filed twice
under ids on both sides of the split never carries the held-out answer into training."""

import json

import pytest

from tracetune.datasets.build import MineConfig, mine
from tracetune.errors import TracetuneError
from tracetune.eval.runner import EvalConfig, run_eval
from tracetune.tasks.splits import in_train

SPEC = ("Write a Python function `sum_digits(n)` that returns the sum of the decimal digits of "
        "the non-negative integer n.")
REF = "def sum_digits(n):\n    return sum(int(c) for c in str(n))\n"
TESTS = ("from solution import sum_digits\n\ndef test_a():\n    assert sum_digits(1234) == 10\n")


def _ids():
    """Two ids on opposite sides of a 50% split, and one more train id."""
    train = [f"dup/t{i}" for i in range(200) if in_train(f"dup/t{i}", 50)]
    held = [f"dup/t{i}" for i in range(200) if not in_train(f"dup/t{i}", 50)]
    return train[0], held[0], train[1]


def _suite(path, twin_spec):
    a, b, c = _ids()
    tasks = [(a, SPEC, REF), (b, twin_spec, REF),
             (c, "Write a Python function `double(x)` that returns two times the number x.",
              "def double(x):\n    return 2 * x\n")]
    body = '[suite]\nname = "twins"\ntrain_pct = 50\n'
    for tid, spec, ref in tasks:
        name = "double" if "double" in ref else "sum_digits"
        tests = TESTS if name == "sum_digits" else \
            "from solution import double\n\ndef test_a():\n    assert double(2) == 4\n"
        body += (f'\n[[task]]\nid = "{tid}"\nnames = ["{name}"]\nspec = {json.dumps(spec)}\n'
                 f"reference = {json.dumps(ref)}\ntests = {json.dumps(tests)}\n")
    path.write_text(body)
    return path


@pytest.mark.parametrize("twin_spec", [SPEC, "  " + SPEC.replace(" ", "   ") + "\n"])
def test_held_out_twin_is_dropped_by_default_and_counted(tmp_path, twin_spec):
    suite = _suite(tmp_path / "s.toml", twin_spec)
    replay = tmp_path / "r.jsonl"
    replay.write_text("\n".join(json.dumps({"match": m, "text": f"```python\n{code}```"})
                                for m, code in (("sum_digits", REF), ("sum_digits", REF),
                                                ("double", "def double(x):\n    return 2 * x\n"))))
    run_eval(EvalConfig(suite=str(suite), model=f"replay:{replay}", trials=1,
                        workflow="direct,max_attempts=1", temperature=0.0), tmp_path / "run")
    report = mine([tmp_path / "run"], tmp_path / "data", MineConfig(tokenizer=None,
                                                                   leakage_suites=()))
    assert report.dropped.get("leakage_held_out_twin") == 1
    assert [r.task for r in report.rows["sft"]] == [_ids()[2]]
    # Asked for explicitly, held-out tasks (and so their twins) may be mined.
    again = mine([tmp_path / "run"], tmp_path / "all", MineConfig(
        tokenizer=None, leakage_suites=(), allow_heldout=True))
    assert "leakage_held_out_twin" not in again.dropped and len(again.rows["sft"]) == 3


def test_a_suite_that_no_longer_loads_is_named(tmp_path):
    suite = _suite(tmp_path / "s.toml", SPEC)
    replay = tmp_path / "r.jsonl"
    replay.write_text((json.dumps({"text": f"```python\n{REF}```"}) + "\n") * 3)
    run_eval(EvalConfig(suite=str(suite), model=f"replay:{replay}", trials=1,
                        workflow="direct,max_attempts=1", temperature=0.0), tmp_path / "run")
    suite.unlink()
    with pytest.raises(TracetuneError, match="held-out tasks of suite"):
        mine([tmp_path / "run"], tmp_path / "data", MineConfig(tokenizer=None, leakage_suites=()))
