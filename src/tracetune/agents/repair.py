"""The repair workflow: a tool-calling agent fixes a bug in a task's small repository (seed 002).

An episode copies the task's repository (the buggy module, its test file, a README) into a fresh
directory and talks to the model in the JSON tool protocol (`tracetune.agents.tools`): one JSON
object per assistant message, tool results back as `[tool_result]` user messages. The model never
runs the tests; the driver does, through the sandbox, as the test policy says:
  never        only the final check;
  after_write  after each successful write or edit, `[TESTS PASS]` / `[TESTS FAIL] ...` is appended
               to the tool result;
  end          when the model gives its final answer; failing tests send it back to work while
               iterations remain.
The episode ends at a final answer, after `max_iters` assistant messages, or after `max_loops`
loop detections (a call identical to one made since the last file change is not run again: it is
answered with an error and counted). It succeeds when the task's own tests pass on the module as
the model left it (the model's edits to the test file do not count).

Every assistant message is one AttemptRecord (step "repair", attempt = iteration): the messages it
saw, its raw text, its canonical JSON (`code`), whether it was a valid protocol message (`passed`),
and in guards[0].details the kind (tool_call, final, parse_error, loop), the tool, whether the tool
succeeded and the test result.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracetune.agents.tools import (WRITE_TOOLS, Parsed, ToolError, Workspace, describe_tools,
                                    parse_message)
from tracetune.agents.workflow import AttemptRecord, EpisodeOutcome, derive_seed
from tracetune.errors import TracetuneError
from tracetune.models import Model
from tracetune.sandbox import Job, Sandbox, SandboxResult
from tracetune.tasks import Task
from tracetune.types import GenerationRequest, Message, SamplingParams

TEST_POLICIES = ("never", "after_write", "end")
RESULT_PREFIX = "[tool_result]"
SYSTEM_PROMPT = """You are a repo-fixing agent. You work on a small repository through tools.
Reply with exactly one JSON object per message and nothing else. A tool call:
{{"type": "tool_call", "name": "read_file", "args": {{"rel_path": "example.py"}}}}
When you are done:
{{"type": "final", "message": "what you changed"}}
Tools (args with their defaults):
{tools}
Tool results come back as user messages starting with [tool_result]. You cannot run the tests: {tests}
Paths are relative to the repository root."""
TESTS_TEXT = {
    "never": "they run after your final answer.",
    "after_write": "the driver runs them after each write or edit and appends [TESTS PASS] or "
                   "[TESTS FAIL].",
    "end": "the driver runs them after your final answer and tells you if they still fail.",
}
GOAL_PROMPT = "GOAL:\n{spec}"
STOP = "\n\n"


@dataclass(frozen=True)
class RepairWorkflow:
    """Settings of the repair workflow (the counterpart of a guarded Workflow)."""

    name: str = "repair"
    max_iters: int = 10
    """Most assistant messages per episode."""
    test_policy: str = "after_write"
    max_loops: int = 3
    """Loop detections that end the episode."""
    max_context_chars: int = 9000
    """Above this, the oldest tool results are elided from the conversation (small contexts)."""

    def __post_init__(self) -> None:
        if self.test_policy not in TEST_POLICIES:
            raise TracetuneError(f"unknown test policy {self.test_policy!r} "
                                 f"({', '.join(TEST_POLICIES)})")
        if self.max_iters < 1 or self.max_loops < 1:
            raise TracetuneError("max_iters and max_loops must be at least 1")


def repo_files(task: Task) -> dict[str, str]:
    """The task's repository as the agent first sees it."""
    if not task.file or not task.buggy:
        raise TracetuneError(f"task {task.id} is not a repair task (it has no buggy file)")
    return {task.file: task.buggy, test_file(task): task.tests,
            "README.md": f"# {task.module}\n\n{task.spec}\n"}


def test_file(task: Task) -> str:
    return f"test_{task.module}.py"


def system_prompt(policy: str) -> str:
    return SYSTEM_PROMPT.format(tools=describe_tools(), tests=TESTS_TEXT[policy])


def run_tests(task: Task, module_source: str | None, sandbox: Sandbox) -> SandboxResult:
    """The task's own tests against the module's current source (None: the file is gone)."""
    return sandbox.run(Job.tests(task.tests, module=module_source or "", module_name=task.module))


def tests_text(result: SandboxResult) -> str:
    if result.passed:
        return "[TESTS PASS]"
    failed = [t.nodeid.split("::")[-1] for t in result.tests if t.outcome == "failed"]
    detail = f"failed: {', '.join(failed[:8])}" if failed else result.reason
    first = next((t.message for t in result.tests if t.outcome == "failed" and t.message), "")
    return f"[TESTS FAIL] {detail}" + (f"\n{first[:400]}" if first else "")


def _elide(messages: list[Message], budget: int) -> list[Message]:
    """Drop the text of the oldest tool results until the conversation fits `budget` chars."""
    size = sum(len(m.content) for m in messages)
    out = list(messages)
    for i, m in enumerate(out[:-2]):
        if size <= budget:
            break
        if m.role == "user" and m.content.startswith(RESULT_PREFIX) and len(m.content) > 60:
            short = f"{RESULT_PREFIX}\n(earlier output elided)"
            size -= len(m.content) - len(short)
            out[i] = Message("user", short)
    return out


def run_repair_episode(task: Task, workflow: RepairWorkflow, model: Model, sandbox: Sandbox, *,
                       params: SamplingParams, seed: int,
                       on_attempt: Callable[[AttemptRecord], None] | None = None
                       ) -> EpisodeOutcome:
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="tracetune-repair-"))
    try:
        for rel, content in repo_files(task).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content, encoding="utf-8")
        outcome = _drive(task, workflow, model, sandbox, Workspace(root), params, seed,
                         on_attempt)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    outcome.duration_s = time.perf_counter() - t0
    return outcome


def _drive(task: Task, wf: RepairWorkflow, model: Model, sandbox: Sandbox, ws: Workspace,
           params: SamplingParams, seed: int,
           on_attempt: Callable[[AttemptRecord], None] | None) -> EpisodeOutcome:
    messages = [Message("system", system_prompt(wf.test_policy)),
                Message("user", GOAL_PROMPT.format(spec=task.spec))]
    records: list[AttemptRecord] = []
    counts = {"parse_errors": 0, "loop_detections": 0, "tool_errors": 0, "writes": 0,
              "test_runs": 0}
    seen: set[str] = set()
    tested: dict[str, SandboxResult] = {}  # module source -> verdict

    def module_source() -> str | None:
        try:
            return (ws.root / task.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def test_now(*, feedback: bool = True) -> SandboxResult:
        """The tests on the module as it is now (each source is tested once); `feedback`: the
        result goes to the model (counted as a test run)."""
        src = module_source()
        key = src if src is not None else "\0missing"
        if key not in tested:
            tested[key] = run_tests(task, src, sandbox)
        counts["test_runs"] += feedback
        return tested[key]

    # A protocol message is one line of JSON; a blank line ends it (and the prose small models
    # append after it, which would otherwise cost tokens and make a valid call a parse error).
    params = dataclasses.replace(params, stop=tuple(params.stop) + (STOP,))
    end_reason = "max_iters"
    for it in range(1, wf.max_iters + 1):
        sent = _elide(messages, wf.max_context_chars)
        step_seed = derive_seed(seed, "repair", it)
        completion = model.generate(GenerationRequest(tuple(sent), params, step_seed))
        raw = completion.text.encode("utf-8", "replace").decode("utf-8")
        t_check = time.perf_counter()
        parsed = parse_message(raw)
        details: dict = {"kind": parsed.kind if parsed.kind != "error" else "parse_error",
                         "name": parsed.name or None, "tool_ok": None, "tests": None}
        valid = parsed.kind != "error"
        stop = False
        if parsed.kind == "error":
            counts["parse_errors"] += 1
            reply = f"{RESULT_PREFIX}\nerror: invalid message: {parsed.error}"
        elif parsed.kind == "final":
            reply = ""
            if wf.test_policy == "end":
                result = test_now()
                details["tests"] = "pass" if result.passed else "fail"
                if not result.passed and it < wf.max_iters:
                    reply = (f"{tests_text(result)}\nThe tests still fail. Keep working, then "
                             "give your final answer.")
            if not reply:
                stop, end_reason = True, "final"
        elif parsed.call_key() in seen:
            counts["loop_detections"] += 1
            valid = False
            details["kind"] = "loop"
            reply = (f"{RESULT_PREFIX}\nerror: loop detected: you already made this exact call "
                     "and no file has changed since; do something else")
            if counts["loop_detections"] >= wf.max_loops:
                stop, end_reason = True, "loop"
        else:
            seen.add(parsed.call_key())
            try:
                output, ok = ws.call(parsed), True
            except ToolError as exc:
                output, ok = f"error: {exc}", False
                counts["tool_errors"] += 1
            except OSError as exc:  # e.g. a file name the filesystem refuses
                output, ok = f"error: {exc.strerror or exc}", False
                counts["tool_errors"] += 1
            details["tool_ok"] = ok
            reply = f"{RESULT_PREFIX}\n{output}"
            if ok and parsed.name in WRITE_TOOLS:
                counts["writes"] += 1
                seen.clear()  # files changed: earlier calls may now give new results
                if wf.test_policy == "after_write":
                    result = test_now()
                    details["tests"] = "pass" if result.passed else "fail"
                    reply += "\n" + tests_text(result)
        record = AttemptRecord(
            step="repair", attempt=it, seed=step_seed, messages=[m.to_dict() for m in sent],
            raw_output=raw, code=parsed.canonical(),
            passed=valid and details["tool_ok"] is not False,
            guards=[{"guard": "protocol", "passed": valid, "feedback": parsed.error,
                     "details": details}],
            feedback=reply, prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            latency_s=completion.latency_s, check_s=time.perf_counter() - t_check)
        records.append(record)
        if on_attempt is not None:
            on_attempt(record)
        if stop:
            break
        messages += [Message("assistant", raw), Message("user", reply)]
    final = test_now(feedback=False)  # the driver's verdict, not feedback to the model
    metrics = {**counts, "steps": len(records), "wrote": counts["writes"] > 0,
               "end": end_reason}
    return EpisodeOutcome(
        success=final.passed, failed_step=None if final.passed else end_reason,
        wrong_tests=None, attempts=records, final_check={
            "status": final.status, "reason": final.reason,
            "tests": [[t.nodeid.split("::")[-1], t.outcome] for t in final.tests]},
        metrics=metrics)


# --- the oracle: a scripted teacher that knows the reference fix ---------------------------------

def oracle_edit(task: Task) -> dict:
    """Args of one `edit` turning the buggy module into the reference: the changed lines plus
    just enough context for the search text to occur once."""
    import difflib

    old, new = task.buggy.splitlines(keepends=True), task.reference.splitlines(keepends=True)
    ops = [op for op in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
           if op[0] != "equal"]
    if not ops:
        raise TracetuneError(f"task {task.id}: the buggy file equals the reference")
    i1, i2, j1, j2 = ops[0][1], ops[-1][2], ops[0][3], ops[-1][4]
    for ctx in range(0, len(old) + 1):
        a, b = max(0, i1 - ctx), min(len(old), i2 + ctx)
        search = "".join(old[a:b])
        if search.strip() and task.buggy.count(search) == 1:
            replace = "".join(new[max(0, j1 - (i1 - a)):j2 + (b - i2)])
            return {"rel_path": task.file, "search": search, "replace": replace}
    raise TracetuneError(f"task {task.id}: no unique search text for the oracle's edit")


def oracle_step(task: Task, messages: list[dict]) -> dict:
    """The oracle's next message given the conversation so far: list the files, read the module,
    edit it (write the whole reference if an edit failed), then the final answer."""
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


def canonical_json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False)


__all__ = ["Parsed", "RepairWorkflow", "TEST_POLICIES", "oracle_edit", "oracle_step",
           "run_repair_episode"]
