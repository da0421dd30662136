"""Teachers: scripted policies that know each task's answer, so rollouts, step-level mining and
training run offline.

`oracle` (model spec `oracle`) is a model only once bound to a task (the runner binds any model
that has `bind`, per episode):
  repair  list_files -> read_file (the module) -> edit (the reference fix; write_file if the edit
          failed) -> final, deciding each step from the conversation so far;
  direct  the reference implementation in one python block.
Usage counts whitespace-separated words as tokens (an oracle has no tokenizer); a request's JSON
schema is ignored (its messages are valid protocol messages anyway). The miner also
asks `oracle_step` for the preferred message at a bad step (DPO relabelling).
"""

from __future__ import annotations

import difflib
import json
from typing import Sequence

from tracetune.agents.repair import RESULT_PREFIX
from tracetune.agents.tools import WRITE_TOOLS, anchor_lines, parse_message
from tracetune.errors import ModelError, TracetuneError
from tracetune.models import Model, load_model, parse_spec
from tracetune.models.common import Scripted
from tracetune.models.configs import OracleConfig
from tracetune.tasks import Task
from tracetune.testgen.prompt import TEMPLATE as _TESTGEN_TEMPLATE
from tracetune.types import Completion, GenerationRequest


def oracle_edit(task: Task) -> dict:
    """Args of one `edit` turning the buggy module into the reference. A fix of one line, that
    line occurring once, is searched as that line without its indentation and replaced by the
    fixed line less that indentation (the form an anchored edit must take:
    `tools.anchor_lines`);
    otherwise the search is the changed lines plus just enough context to occur once."""
    old, new = task.buggy.splitlines(keepends=True), task.reference.splitlines(keepends=True)
    ops = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
           if op[0] != "equal"]
    if not ops:
        raise TracetuneError(f"task {task.id}: the buggy file equals the reference")
    i1, i2, j1, j2 = ops[0][1], ops[-1][2], ops[0][3], ops[-1][4]
    if len(ops) == 1 and i2 - i1 == 1 and j2 - j1 == 1:
        line, fixed = old[i1], new[j1]
        indent = line[:len(line) - len(line.lstrip())]
        if line.strip() in anchor_lines(task.buggy) and fixed.strip() \
                and fixed.startswith(indent):  # the fixed line keeps (or deepens) the indentation
            return {"rel_path": task.file, "search": line.strip(),
                    "replace": fixed[len(indent):].rstrip()}
    for ctx in range(0, len(old) + 1):
        a, b = max(0, i1 - ctx), min(len(old), i2 + ctx)
        search = "".join(old[a:b])
        if search.strip() and task.buggy.count(search) == 1:
            replace = "".join(new[max(0, j1 - (i1 - a)):j2 + (b - i2)])
            return {"rel_path": task.file, "search": search, "replace": replace}
    raise TracetuneError(f"task {task.id}: no unique search text for the oracle's edit")


def oracle_step(task: Task, messages: list[dict]) -> dict:
    """The oracle's next message given the conversation so far: list the files, read the module,
    edit it (write the whole reference if an edit failed), then the final answer. When the first
    message already shows the module (the repair agent's show_file option), it edits at once:
    the tools for looking may not even be offered (edit_only)."""
    done: list[tuple[str, bool]] = []
    for m, reply in zip(messages, messages[1:]):
        if m["role"] != "assistant":
            continue
        parsed = parse_message(m["content"])
        ok = reply["content"].startswith(RESULT_PREFIX) and \
            not reply["content"][len(RESULT_PREFIX):].lstrip().startswith("error")
        if parsed.kind == "tool_call":
            done.append((parsed.name, ok))
    names_ok = {name for name, ok in done if ok}
    shown = len(messages) > 1 and f"\nFILE {task.file}:\n" in messages[1]["content"]
    if shown:
        names_ok |= {"list_files", "read_file"}
    if "list_files" not in names_ok:
        return {"type": "tool_call", "name": "list_files", "args": {"rel_dir": "."}}
    if "read_file" not in names_ok:
        return {"type": "tool_call", "name": "read_file", "args": {"rel_path": task.file}}
    if not names_ok & set(WRITE_TOOLS):
        if any(name == "edit" for name, _ in done):  # the edit failed: write the whole file
            return {"type": "tool_call", "name": "write_file",
                    "args": {"rel_path": task.file, "content": task.reference}}
        return {"type": "tool_call", "name": "edit", "args": oracle_edit(task)}
    return {"type": "final", "message": f"Fixed the bug in {task.file}."}


TESTGEN_HEAD = _TESTGEN_TEMPLATE.split("\n", 1)[0]
"""The first line of the testgen prompt: the oracle answers it with the task's tests."""


def canonical_json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


class OracleModel:
    def __init__(self, config: OracleConfig | None = None, spec: str = "oracle") -> None:
        self.spec = spec
        self.config = config or OracleConfig()

    def bind(self, task: Task) -> BoundOracle:
        return BoundOracle(task, self.spec)

    def generate(self, request: GenerationRequest) -> Completion:
        raise ModelError("the oracle answers only within an episode that knows the task "
                         "(tracetune eval / rollouts bind it to each task)")

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return [self.generate(r) for r in requests]

    def close(self) -> None:
        pass


class BoundOracle(Scripted):
    def __init__(self, task: Task, spec: str) -> None:
        self.task, self.spec = task, spec

    def _text(self, request: GenerationRequest) -> str:
        messages = [m.to_dict() for m in request.messages]
        if self.task.is_repair and not messages[0]["content"].startswith(TESTGEN_HEAD):
            return canonical_json(oracle_step(self.task, messages))
        if len(messages) == 1 and messages[0]["content"].startswith(TESTGEN_HEAD):
            return f"```python\n{self.task.tests.strip()}\n```"  # testgen: the reference tests
        if any(m["role"] == "assistant" for m in messages) or "pytest" in messages[-1]["content"]:
            raise ModelError("the oracle writes reference implementations (workflow direct), "
                             "repairs (workflow repair) and the reference tests (workflow "
                             "testgen); it does not write tdd tests or retries")
        return f"```python\n{self.task.reference.strip()}\n```"


TEACHERS = {"oracle": OracleModel}
"""Model-spec backends that are teachers: built here, bound to each task by the runner."""


def load_policy(spec: str) -> Model:
    """The model an episode talks to: a teacher (`oracle`) or any backend `models` loads."""
    parsed = parse_spec(spec)
    if parsed.backend in TEACHERS:
        return TEACHERS[parsed.backend](parsed.config, spec=parsed.text)
    return load_model(parsed)
