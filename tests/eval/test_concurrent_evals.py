"""Two evaluations at once on one machine give the verdicts they give one after the other:
as root every check runs under a uid leased host-wide, so neither run's cleanup can kill the
other's checks (with or without bubblewrap)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest


def write_suite(path, n_tasks):
    task = ('\n[[task]]\nid = "t/double{i}"\nnames = ["double"]\n'
            'spec = "Write `double(x)` returning 2 * x (task {i})."\n'
            'reference = "def double(x):\\n    return 2 * x\\n"\n'
            'tests = "from solution import double\\n\\ndef test_a():\\n'
            '    assert double(2) == 4\\n"\n')
    path.write_text('[suite]\nname = "doubles"\n' + "".join(task.format(i=i)
                                                             for i in range(n_tasks)))
    return path

SLOW_GOOD = "```python\nimport time\ntime.sleep(0.6)\n\ndef double(x):\n    return 2 * x\n```"
SLOW_BAD = "```python\nimport time\ntime.sleep(0.6)\n\ndef double(x):\n    return x\n```"

_EVAL = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import tracetune.sandbox.core as core
    if sys.argv[1] == "process":  # what a root user without bubblewrap gets
        core.detect_isolation = lambda requested="auto": "process"
    from tracetune.eval.runner import EvalConfig, run_eval
    from tracetune.traces.store import Store
    suite, script, out = sys.argv[2:5]
    run_eval(EvalConfig(suite=suite, model=f"replay:{script}", trials=2, concurrency=4,
                        workflow="direct,max_attempts=1", check_timeout_s=30), Path(out))
    store = Store(Path(out))
    print(json.dumps(sorted([e["task_id"], e["trial"], bool(e["success"])]
                            for e in store.episodes())))
""")


def _start(tmp_path, mode, suite, name, plan):
    # Each task's answers are matched by its own spec, so which answer a (task, trial) gets does
    # not depend on the order in which concurrent episodes ask the replay model.
    script = tmp_path / f"{name}.jsonl"
    script.write_text("".join(json.dumps({"match": f"(task {i})", "text": text}) + "\n"
                              for i, text in enumerate(plan) for _ in range(2)))
    runner = tmp_path / "eval_one.py"
    runner.write_text(_EVAL)
    return subprocess.Popen([sys.executable, str(runner), mode, str(suite), str(script),
                             str(tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__)))))


def _result(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason="per-check uids are used only as root")
@pytest.mark.parametrize("mode", ["process", "auto"])
def test_concurrent_evals_match_sequential_ones(tmp_path, mode):
    suite = write_suite(tmp_path / "s.toml", 4)
    runs = {"a": [SLOW_GOOD, SLOW_BAD, SLOW_GOOD, SLOW_BAD],  # per task, its answer
            "b": [SLOW_BAD, SLOW_GOOD, SLOW_GOOD, SLOW_BAD]}
    sequential = {name: _result(_start(tmp_path, mode, suite, name, texts))
                  for name, texts in runs.items()}
    procs = {name: _start(tmp_path, mode, suite, name, texts) for name, texts in runs.items()}
    concurrent = {name: _result(p) for name, p in procs.items()}
    assert concurrent == sequential
    for name, plan in runs.items():  # and both are the verdicts the answers deserve
        assert sequential[name] == [[f"t/double{i}", trial, plan[i] == SLOW_GOOD]
                                    for i in range(4) for trial in range(2)]
