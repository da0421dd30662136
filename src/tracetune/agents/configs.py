"""One typed config per workflow. Fields are the options a workflow spec may set
(`--workflow repair,max_iters=5`, or an `[eval.workflow]` table with `name = "repair"`)."""

from __future__ import annotations

from dataclasses import dataclass

from tracetune.errors import TracetuneError

TEST_POLICIES = ("never", "after_write", "end")


def _at_least_1(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise TracetuneError(f"{name} must be at least 1, not {getattr(config, name)}")


@dataclass(frozen=True)
class DirectConfig:
    max_attempts: int = 3
    """Attempts per step; a failed check's feedback goes into the next attempt's prompt."""

    def validate(self) -> None:
        _at_least_1(self, "max_attempts")


@dataclass(frozen=True)
class TDDConfig:
    max_attempts: int = 3
    """Attempts per step; a failed check's feedback goes into the next attempt's prompt."""
    min_tests: int = 3
    """Test functions the g_test step must write."""

    def validate(self) -> None:
        _at_least_1(self, "max_attempts", "min_tests")


@dataclass(frozen=True)
class RepairConfig:
    max_iters: int = 10
    """Most assistant messages (tool calls and the final answer) per episode."""
    test_policy: str = "after_write"
    """When the driver runs the task's tests: never, after_write (after each write or edit) or
    end (at the final answer, sending the agent back to work while they fail)."""
    max_loops: int = 3
    """Loop detections (an exact repeat of a call since the last file change) that end the
    episode."""
    max_context_chars: int = 9000
    """Above this many characters, the oldest tool results are elided from the conversation."""
    constrained: bool = False
    """Decode only valid tool calls (the protocol's JSON schema -> the backend's grammar)."""
    numbered_reads: bool = False
    """read_file shows each line after its number (`  12| text`)."""
    line_edit: bool = False
    """Offer replace_lines (rel_path, start, end, content): an edit by line range."""
    observation_chars: int = 0
    """Cut each tool result to this many characters (0: not cut); the test verdict is kept."""
    show_file: bool = False
    """The first message also holds the buggy module's text (numbered with numbered_reads) and
    the failing tests' output, so no step is spent finding them."""
    edit_only: bool = False
    """Offer only the tools that change a file (write_file, edit, and replace_lines with
    line_edit): nothing to list, read or grep. Needs show_file, which puts the module in view."""
    anchored_edits: bool = False
    """Files change only by edits anchored to one of their lines: an `edit`'s `search` is decoded
    as one whole line of the file as it is (indentation left out, a line that occurs once:
    `tools.anchor_lines`), so every edit matches, and write_file (a whole-file rewrite) is not
    offered. Needs constrained."""
    task_example: bool = False
    """The system prompt's example tool call reads the task's own module, not `example.py`
    (which small models copy verbatim, then read a file that does not exist)."""
    lint_edits: bool = False
    """A write or edit that would add a syntax error or an undefined name to a `.py` file is
    refused with the problems named, the file left as it was (SWE-agent's edit linter;
    `tools.lint_problems`)."""
    drop_failed_calls: bool = False
    """A message that was a parse error, a loop or a failed tool call is left out of the
    conversation afterwards, with the driver's reply to it (still recorded and counted), so the
    model does not copy it into its next message: the 135M model repeats a refused call verbatim
    until loop detection ends the episode. SWE-agent likewise re-queries a malformed or blocked
    action and keeps the failed output out of the history."""
    localize: int = 0
    """Spectrum-based fault localisation (`agents.localize`: Ochiai over each test's line
    coverage): the first message lists the module's `localize` most suspicious lines, and with
    anchored_edits an edit of the module may search only for those (renewed after each write).
    0: off."""

    def validate(self) -> None:
        _at_least_1(self, "max_iters", "max_loops")
        for name in ("constrained", "numbered_reads", "line_edit", "show_file", "task_example",
                     "edit_only", "anchored_edits", "lint_edits", "drop_failed_calls"):
            if not isinstance(getattr(self, name), bool):
                raise TracetuneError(f"{name} must be true or false, not "
                                     f"{getattr(self, name)!r}")
        if not isinstance(self.localize, int) or isinstance(self.localize, bool) \
                or self.localize < 0:
            raise TracetuneError(f"localize must be 0 (off) or a number of lines, not "
                                 f"{self.localize!r}")
        if self.observation_chars < 0 or 0 < self.observation_chars < 40:
            raise TracetuneError(f"observation_chars must be 0 (not cut) or at least 40, not "
                                 f"{self.observation_chars}")
        if self.edit_only and not self.show_file:
            raise TracetuneError("edit_only needs show_file=true: without a tool to read it, the "
                                 "agent must be shown the module")
        if self.anchored_edits and not self.constrained:
            raise TracetuneError("anchored_edits needs constrained=true: the edit's search text "
                                 "is held to the file's lines by the decoding grammar")
        if self.test_policy not in TEST_POLICIES:
            raise TracetuneError(f"test_policy {self.test_policy!r} is not one of "
                                 f"{', '.join(TEST_POLICIES)}")
        if self.max_context_chars < 100:
            raise TracetuneError(f"max_context_chars must be at least 100, not "
                                 f"{self.max_context_chars}")


@dataclass(frozen=True)
class ReplayWorkflowConfig:
    judge: str = "similarity"
    """How an answer without runnable tests is graded against the logged answer: similarity
    (RapidFuzz normalized Indel similarity >= threshold), or a model spec whose PASS/FAIL is
    taken (model as judge)."""
    threshold: float = 0.6
    """similarity: the least similarity to the logged answer that passes, within [0, 1]."""

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise TracetuneError(f"threshold must be within 0..1, not {self.threshold}")
        if self.judge != "similarity":
            from tracetune.models import parse_spec

            parse_spec(self.judge)


@dataclass(frozen=True)
class TestgenConfig:
    __test__ = False  # not a pytest test class, despite its name
    max_attempts: int = 3
    """Attempts per episode; a file that fails on the reference goes back with its pytest log
    (seed 001's stage C loop)."""
    min_tests: int = 1
    """Test functions the file must define to be run at all."""
    max_mutants: int = 20
    """Mutants of the reference the accepted file is scored against (a deterministic sample;
    0: every mutant)."""
    mutation: bool = True
    """Score the accepted file's mutation score."""
    coverage: bool = True
    """Measure the accepted file's line and branch coverage of the reference."""

    def validate(self) -> None:
        _at_least_1(self, "max_attempts", "min_tests")
        if self.max_mutants < 0:
            raise TracetuneError(f"max_mutants must be 0 (all) or more, not {self.max_mutants}")
