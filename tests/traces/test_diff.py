"""`tracetune diff` finds where two runs of the same experiment part ways."""

import json
import subprocess
import sys

from tracetune.eval.runner import EvalConfig, run_eval
from tracetune.traces.diff import diff_runs

SUITE = '''[suite]
name = "d"

[[task]]
id = "d/double"
names = ["double"]
spec = "Write `double(x)` returning 2 * x."
reference = "def double(x):\\n    return 2 * x\\n"
tests = "from solution import double\\n\\ndef test_a():\\n    assert double(2) == 4\\n"
'''
GOOD = "```python\ndef double(x):\n    return 2 * x\n```"
BAD = "```python\ndef double(x):\n    return x + 1\n```"


def _run(tmp_path, name, texts):
    script = tmp_path / f"{name}.jsonl"
    script.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    run_eval(EvalConfig(suite=str(tmp_path / "s.toml"), model=f"replay:{script}", trials=3,
                        workflow="direct,max_attempts=2", concurrency=1), tmp_path / name)
    return tmp_path / name


def test_the_first_differing_attempt_and_character_are_named(tmp_path):
    (tmp_path / "s.toml").write_text(SUITE)
    a = _run(tmp_path, "a", [GOOD, BAD, GOOD, GOOD])
    b = _run(tmp_path, "b", [GOOD, BAD, BAD, GOOD, GOOD])
    d = diff_runs(a, b)
    assert d.same == 2 and d.success_flips == 1
    [first] = d.differs
    assert (first.task, first.trial, first.step, first.attempt, first.what) == \
        ("d/double", 1, "impl", 2, "output")
    assert first.at_char == GOOD.index("2 * x")
    out = subprocess.run([sys.executable, "-m", "tracetune.cli", "diff", str(a), str(b)],
                         capture_output=True, text=True, check=True).stdout
    assert "2/3 episodes identical, 1 differ (1 change success)" in out and "impl attempt 2: output" in out


def test_identical_runs_and_mismatched_kinds(tmp_path):
    (tmp_path / "s.toml").write_text(SUITE)
    a = _run(tmp_path, "a", [GOOD] * 3)
    b = _run(tmp_path, "b", [GOOD] * 3)
    assert diff_runs(a, b).same == 3
    r = subprocess.run([sys.executable, "-m", "tracetune.cli", "diff", str(a),
                        str(tmp_path / "s.toml")], capture_output=True, text=True)
    assert r.returncode == 1 and "neither a run" in r.stderr
