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

Every assistant message is one `types.Attempt` (step "repair", attempt = iteration): the messages
it saw, its raw text, its canonical JSON (`code`), whether it was a valid protocol message whose
tool did not fail (`passed`), the protocol guard's verdict, and in `facts` the kind (tool_call,
final, parse_error, loop), the tool, whether the tool succeeded and the test result.

With `constrained` on, every request carries the protocol's JSON schema (`tool_call_schema`) with
the workspace's files as the only paths a reading or editing tool may name, and the backend decodes
only valid protocol messages (a grammar, a structured-output request); the episode is driven and
counted exactly as without it, so the two compare metric for metric.

Besides `writes` (tool-accepted writes and edits, seed 002's measure of reaching an edit, any
path), `module_edits` counts the writes that changed the task's module and left it a candidate
fix: parseable Python (`ast.parse`) that still defines every name the tests import (a valid
edit); an episode's `valid_edit` metric says whether it made one. `fault_edits` counts the valid
edits that replaced or deleted one of the lines the task's reference fix changes
(`localize.fault_lines`), and `fault_edit` says whether the episode made one: whether the agent
found the bug's line, pass or not.

Tool and prompt design (each an option, off by default; issue 18's ablation measures each):
`numbered_reads` (read_file numbers its lines), `line_edit` (the replace_lines tool: an edit by
line range), `anchored_edits` (constrained, an edit's search text is one of the file's lines),
`observation_chars` (tool results cut to that length), `show_file` (the first
message holds the module's text and the tests' verdict on it), `task_example` (the system
prompt's example call names the task's module), `edit_only` (only the tools that change a
file), `lint_edits` (a write that would add a syntax error or an undefined name is refused,
SWE-agent's edit linter), `drop_failed_calls` (a failed message and its error are left out of
the conversation afterwards, so the model does not copy them) and `localize` (the module's most suspicious lines by spectrum-based fault localisation,
`agents.localize`, listed in the first message and, with anchored_edits, the only lines an edit
of the module may search for). Seed 004 found such framework
changes worth more than LoRA training (+12-19pp resolve rate on SWE-Bench-CL).

The driver is a short loop over `_Episode.step`: each message is handled by the function for its
kind, which returns the reply to the model; ending the episode is an exception (`_Stop`), raised
after the message is recorded like any other.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tracetune.agents.configs import TEST_POLICIES, RepairConfig
from tracetune.agents.guards import defined_names
from tracetune.agents.localize import (Suspect, fault_lines, removed_lines, suspects_text,
                                       suspicious_lines)
from tracetune.agents.tools import (WRITE_TOOLS, Parsed, ToolError, Workspace, anchor_lines,
                                    clip_observation, describe_tools, numbered_lines, parse_message,
                                    tool_call_schema, toolset)
from tracetune.errors import TracetuneError
from tracetune.models import Model
from tracetune.sandbox import Job, Sandbox, SandboxResult
from tracetune.tasks import Task
from tracetune.types import (Attempt, EpisodeOutcome, GenerationRequest, Message, SamplingParams,
                             derive_seed)

STEP = "repair"
"""The step name of every repair attempt."""
RESULT_PREFIX = "[tool_result]"
SYSTEM_PROMPT = """You are a repo-fixing agent. You work on a small repository through tools.
Reply with exactly one JSON object per message and nothing else. A tool call:
{example}
When you are done:
{{"type": "final", "message": "what you changed"}}
Tools (args with their defaults):
{tools}
Tool results come back as user messages starting with [tool_result]. You cannot run the tests: {tests}
Paths are relative to the repository root.{anchored}"""
ANCHORED_TEXT = ("\nAn edit's search is one whole line of the file without its indentation; its "
                 "replace is what that line becomes.")
"""With anchored_edits: what the grammar will hold the edit to."""
TESTS_TEXT = {
    "never": "they run after your final answer.",
    "after_write": "the driver runs them after each write or edit and appends [TESTS PASS] or "
                   "[TESTS FAIL].",
    "end": "the driver runs them after your final answer and tells you if they still fail.",
}
GOAL_PROMPT = "GOAL:\n{spec}"
FILE_PROMPT = "\n\nFILE {path}:\n{text}\n\nTESTS NOW: {tests}"
"""With show_file: the module's text and the tests' verdict on it, after the goal."""
SUSPECTS_PROMPT = ("\n\nMOST SUSPICIOUS LINES of {path} (fault localisation from the tests' "
                   "coverage; most likely first):\n{lines}")
"""With localize: the module's most suspicious lines, after the goal (and the file)."""
STOP = "\n\n"


@dataclass(frozen=True)
class RepairWorkflow:
    """The repair agent as a Workflow (protocol in tracetune.agents)."""

    config: RepairConfig = field(default_factory=RepairConfig)
    name: str = "repair"

    def run(self, task: Task, model: Model, sandbox: Sandbox, *, params: SamplingParams,
            seed: int, on_attempt: Callable[[Attempt], None] | None = None) -> EpisodeOutcome:
        return run_repair_episode(task, self.config, model, sandbox, params=params, seed=seed,
                                  on_attempt=on_attempt)


def repair(config: RepairConfig) -> RepairWorkflow:
    """The registry's constructor (agents.spec.WORKFLOWS)."""
    return RepairWorkflow(config)


def repo_files(task: Task) -> dict[str, str]:
    """The task's repository as the agent first sees it."""
    if not task.file or not task.buggy:
        raise TracetuneError(f"task {task.id} is not a repair task (it has no buggy file)")
    return {task.file: task.buggy, test_file(task): task.tests,
            "README.md": f"# {task.module}\n\n{task.spec}\n"}


def test_file(task: Task) -> str:
    return f"test_{task.module}.py"


def offered_tools(config: RepairConfig) -> dict:
    """The tools an episode under `config` offers (`tools.toolset` of its options)."""
    return toolset(line_edit=config.line_edit, edit_only=config.edit_only,
                   anchored=config.anchored_edits)


def system_prompt(policy: str, config: RepairConfig | None = None,
                  task: Task | None = None) -> str:
    """The system message for a test policy and the tools `config` offers (default options);
    with `config.task_example` and a task, the example call reads the task's own module."""
    tools = offered_tools(config) if config is not None else toolset()
    path = task.file if config is not None and config.task_example and task else "example.py"
    if config is not None and config.edit_only:  # read_file is not offered: the example edits
        call = {"type": "tool_call", "name": "edit",
                "args": {"rel_path": path, "search": "the wrong line", "replace": "the fixed line"}}
    else:
        call = {"type": "tool_call", "name": "read_file", "args": {"rel_path": path}}
    anchored = ANCHORED_TEXT if config is not None and config.anchored_edits else ""
    return SYSTEM_PROMPT.format(tools=describe_tools(tools), tests=TESTS_TEXT[policy],
                                example=json.dumps(call), anchored=anchored)


def goal_prompt(task: Task, config: RepairConfig, tests: SandboxResult | None = None,
                suspects: list[Suspect] | None = None) -> str:
    """The first user message: the goal, with show_file the module's text and `tests` (the
    tests' verdict on the unchanged module), and with localize the `suspects` (none found: not
    shown)."""
    goal = GOAL_PROMPT.format(spec=task.spec)
    if config.show_file:
        text = numbered_lines(task.buggy) if config.numbered_reads else task.buggy
        goal += FILE_PROMPT.format(path=task.file, text=text,
                                   tests=tests_text(tests) if tests is not None else "not run")
    if config.localize and suspects:
        goal += SUSPECTS_PROMPT.format(path=task.file, lines=suspects_text(suspects))
    return goal


def first_messages(task: Task, config: RepairConfig, tests: SandboxResult | None = None,
                   suspects: list[Suspect] | None = None) -> list[Message]:
    """An episode's first request: the system prompt and the goal (`goal_prompt`; `tests` is
    the tests' verdict on the buggy module, shown with show_file; `suspects` its most
    suspicious lines, shown with localize: `localize_module`)."""
    return [Message("system", system_prompt(config.test_policy, config, task)),
            Message("user", goal_prompt(task, config, tests, suspects))]


def localize_module(task: Task, source: str | None, config: RepairConfig,
                    sandbox: Sandbox) -> list[Suspect]:
    """The `config.localize` most suspicious lines of the module's `source` under the task's
    tests (`localize.suspicious_lines`); empty with localize off or the module gone."""
    if not config.localize or source is None:
        return []
    return suspicious_lines(task.tests, source, sandbox, top=config.localize,
                            module=task.module)


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


def run_repair_episode(task: Task, config: RepairConfig, model: Model, sandbox: Sandbox, *,
                       params: SamplingParams, seed: int,
                       on_attempt: Callable[[Attempt], None] | None = None) -> EpisodeOutcome:
    """One repair episode in a fresh copy of the task's repository (removed afterwards)."""
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="tracetune-repair-"))
    try:
        for rel, content in repo_files(task).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content, encoding="utf-8")
        episode = _Episode(task, config, sandbox, Workspace(root, numbered=config.numbered_reads,
                                                            lint=config.lint_edits))
        outcome = episode.drive(model, params, seed, on_attempt)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    outcome.duration_s = time.perf_counter() - t0
    return outcome


class _Stop(Exception):
    """Ends the episode after the current message (recorded first): final, loop."""

    def __init__(self, reason: str, reply: str = "") -> None:
        super().__init__(reason)
        self.reason, self.reply = reason, reply


@dataclass
class _Episode:
    """One episode's state: the workspace, the calls seen since the last change, the counts."""

    task: Task
    config: RepairConfig
    sandbox: Sandbox
    ws: Workspace
    counts: dict = field(default_factory=lambda: {
        "parse_errors": 0, "loop_detections": 0, "tool_errors": 0, "writes": 0, "module_edits": 0,
        "fault_edits": 0, "test_runs": 0})
    seen: set = field(default_factory=set)
    tested: dict = field(default_factory=dict)
    """module source -> verdict (each source is tested once)."""
    before: str | None = None
    """The module's text after the last write (the buggy text before any)."""
    localized: dict = field(default_factory=dict)
    """module source -> its suspects (localize)."""

    def __post_init__(self) -> None:
        self.before = self.task.buggy
        self.faults = (fault_lines(self.task.buggy, self.task.reference)
                       if self.task.reference else frozenset())

    def drive(self, model: Model, params: SamplingParams, seed: int,
              on_attempt: Callable[[Attempt], None] | None) -> EpisodeOutcome:
        tools = offered_tools(self.config)
        messages = first_messages(self.task, self.config,
                                  self.test_now() if self.config.show_file else None,
                                  self.suspects())
        schema = self.schema(tools)
        if schema is None:
            # A protocol message is one line of JSON; a blank line ends it (and the prose small
            # models append after it, which would otherwise cost tokens and make a valid call a
            # parse error). Constrained, the schema ends the message where the object closes,
            # and a stop string could only cut it (a server's JSON whitespace may hold a blank
            # line).
            params = dataclasses.replace(params, stop=tuple(params.stop) + (STOP,))
        records: list[Attempt] = []
        end = "max_iters"
        for it in range(1, self.config.max_iters + 1):
            sent = _elide(messages, self.config.max_context_chars)
            step_seed = derive_seed(seed, STEP, it)
            completion = model.generate(GenerationRequest(tuple(sent), params, step_seed,
                                                          json_schema=schema))
            raw = completion.text.encode("utf-8", "replace").decode("utf-8")
            t_check = time.perf_counter()
            parsed = parse_message(raw, tools)
            facts = {"kind": "parse_error" if parsed.kind == "error" else parsed.kind,
                     "name": parsed.name or None, "tool_ok": None, "tests": None}
            stop = None
            try:
                reply = self.step(parsed, facts, last=it == self.config.max_iters)
            except _Stop as exc:
                stop, reply = exc, exc.reply
            valid = facts["kind"] not in ("parse_error", "loop")
            record = Attempt(
                step=STEP, attempt=it, seed=step_seed, messages=[m.to_dict() for m in sent],
                raw_output=raw, code=parsed.canonical(),
                passed=valid and facts["tool_ok"] is not False,
                guards=[{"guard": "protocol", "passed": valid, "feedback": parsed.error}],
                feedback=reply, prompt_tokens=completion.usage.prompt_tokens,
                completion_tokens=completion.usage.completion_tokens,
                latency_s=completion.latency_s, check_s=time.perf_counter() - t_check,
                facts=facts, finish_reason=completion.finish_reason)
            records.append(record)
            if on_attempt is not None:
                on_attempt(record)
            if stop is not None:
                end = stop.reason
                break
            if record.passed or not self.config.drop_failed_calls:
                messages += [Message("assistant", raw), Message("user", reply)]
            if schema is not None and facts["tool_ok"] and parsed.name in WRITE_TOOLS:
                schema = self.schema(tools)  # a write may add a file or change its lines
        final = self.test_now(feedback=False)  # the driver's verdict, not feedback to the model
        metrics = {**self.counts, "steps": len(records), "wrote": self.counts["writes"] > 0,
                   "valid_edit": self.counts["module_edits"] > 0,
                   "fault_edit": self.counts["fault_edits"] > 0, "end": end}
        return EpisodeOutcome(success=final.passed,
                              failed_step=None if final.passed else end, wrong_tests=None,
                              attempts=records, final_check=final.verdict(), metrics=metrics)

    def schema(self, tools: dict) -> dict | None:
        """The JSON schema a constrained request carries (None unconstrained): the workspace's
        files as the paths, and with anchored_edits each file's anchor lines as its edit's
        search texts; with localize too, the module's are its suspects that are anchor lines
        (all its anchor lines when none is)."""
        if not self.config.constrained:
            return None
        paths = self.ws.paths()
        anchors = None
        if self.config.anchored_edits:
            anchors = {}
            for rel in paths:
                try:
                    anchors[rel] = anchor_lines((self.ws.root / rel).read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError):  # e.g. a binary file: not editable
                    continue
            if self.config.localize and anchors.get(self.task.file):
                likely = [s.text for s in self.suspects() if s.text in anchors[self.task.file]]
                anchors[self.task.file] = likely or anchors[self.task.file]
        return tool_call_schema(tools, paths, anchors)

    # --- one message ------------------------------------------------------------------------------
    def step(self, parsed: Parsed, facts: dict, *, last: bool) -> str:
        """The reply to one message; raises _Stop to end the episode after it."""
        handler = {"error": self._parse_error, "final": self._final,
                   "tool_call": self._tool_call}[parsed.kind]
        return handler(parsed, facts, last)

    def _parse_error(self, parsed: Parsed, facts: dict, last: bool) -> str:
        self.counts["parse_errors"] += 1
        return f"{RESULT_PREFIX}\nerror: invalid message: {parsed.error}"

    def _final(self, parsed: Parsed, facts: dict, last: bool) -> str:
        if self.config.test_policy == "end":
            result = self.test_now()
            facts["tests"] = "pass" if result.passed else "fail"
            if not result.passed and not last:  # back to work while iterations remain
                return (f"{tests_text(result)}\nThe tests still fail. Keep working, then give "
                        "your final answer.")
        raise _Stop("final")

    def _tool_call(self, parsed: Parsed, facts: dict, last: bool) -> str:
        if parsed.call_key() in self.seen:
            self.counts["loop_detections"] += 1
            facts["kind"] = "loop"
            reply = (f"{RESULT_PREFIX}\nerror: loop detected: you already made this exact call "
                     "and no file has changed since; do something else")
            if self.counts["loop_detections"] >= self.config.max_loops:
                raise _Stop("loop", reply)
            return reply
        self.seen.add(parsed.call_key())
        try:
            output, ok = self.ws.call(parsed), True
        except ToolError as exc:
            output, ok = f"error: {exc}", False
        except OSError as exc:  # e.g. a file name the filesystem refuses
            output, ok = f"error: {exc.strerror or exc}", False
        self.counts["tool_errors"] += not ok
        facts["tool_ok"] = ok
        reply = f"{RESULT_PREFIX}\n{clip_observation(output, self.config.observation_chars)}"
        if ok and parsed.name in WRITE_TOOLS:
            self.counts["writes"] += 1
            facts["module_edit"] = self.module_edited()
            self.counts["module_edits"] += facts["module_edit"]
            self.seen.clear()  # files changed: earlier calls may now give new results
            if self.config.test_policy == "after_write":
                result = self.test_now()
                facts["tests"] = "pass" if result.passed else "fail"
                reply += "\n" + tests_text(result)
        return reply

    # --- tests ------------------------------------------------------------------------------------
    def module_edited(self) -> bool:
        """Whether the last write was a valid edit: the module's text differs from what it was
        before and is still a candidate fix, parseable Python that defines at top level every
        name the tests import (`Task.names`). Remembers the text for the next write."""
        src, before = self.module_source(), self.before
        self.before = src
        if src is None or src == before:
            return False
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            return False
        valid = set(self.task.names) <= defined_names(tree)
        if valid and before is not None and removed_lines(before, src) & self.faults:
            self.counts["fault_edits"] += 1
        return valid

    def suspects(self) -> list[Suspect]:
        """The module's suspects as it is now (localize; each source is localised once)."""
        src = self.module_source()
        if src not in self.localized:
            self.localized[src] = localize_module(self.task, src, self.config, self.sandbox)
        return self.localized[src]

    def module_source(self) -> str | None:
        try:
            return (self.ws.root / self.task.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def test_now(self, *, feedback: bool = True) -> SandboxResult:
        """The tests on the module as it is now (each source is tested once); `feedback`: the
        result goes to the model (counted as a test run)."""
        src = self.module_source()
        key = src if src is not None else "\0missing"
        if key not in self.tested:
            self.tested[key] = run_tests(self.task, src, self.sandbox)
        self.counts["test_runs"] += feedback
        return self.tested[key]


__all__ = ["RepairWorkflow", "STEP", "TEST_POLICIES", "first_messages", "localize_module",
           "repair", "run_repair_episode"]
