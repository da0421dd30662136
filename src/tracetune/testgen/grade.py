"""Grading one generated pytest file in the sandbox: valid, wrong tests, bug-revealing, mutation
score and coverage of the reference.

Definitions (all counted over the tests pytest collects from the file):
  valid          at least one test is collected and every collected test passes on the reference,
                 run together and each one alone (a skipped test is not a pass: a file whose
                 tests skip proves nothing);
  wrong test     a test that fails (or errors, or never reports) on the reference, together or
                 alone: a test that rejects correct code, as the tdd workflow counts them;
  bug-revealing  (tasks with a buggy version, e.g. the `bugs` suite) at least one test that passes
                 on the reference fails on the buggy code, or the run on the buggy code times out:
                 SWT-bench's fail-to-pass criterion (Mündler et al., 2024);
  mutation score killed mutants / mutants of the reference (`tracetune.testgen.mutation`);
  coverage       line and branch coverage of the reference module while the tests run, measured
                 by coverage.py (`Coverage(branch=True)`), as fractions in [0, 1].

Every run is one sandbox job in a fresh directory: model-written tests that write to the module
on disk, spawn processes or never finish change nothing outside their own job.
"""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass, field

from tracetune.sandbox import Job, Sandbox, SandboxResult

ALONE_MAX = 25
"""At most this many tests are also run alone (the first ones collected); a larger file's
remaining tests are judged by the run together only."""

_COVERAGE_MARK = "@@tracetune-coverage@@"
# The coverage job's program (ours, trusted; the tests it runs are not, hence the sandbox).
_COVERAGE_PROGRAM = """\
import json, os, sys
import coverage, pytest
cov = coverage.Coverage(branch=True, data_file=None, include=[os.path.abspath({module!r} + ".py")])
cov.start()
try:
    pytest.main(["test_submission.py", "-q", "--tb=no", "-p", "no:cacheprovider", "-c", os.devnull,
                 "-o", "addopts=", "--rootdir", os.getcwd()])
finally:
    cov.stop()
cov.json_report(outfile="coverage.json", pretty_print=False)
totals = json.load(open("coverage.json"))["totals"]
sys.stdout.write("\\n" + {mark!r} + json.dumps(totals) + "\\n")
"""


@dataclass(frozen=True)
class Grade:
    """The grade of one test file. Counts are tests (pytest node ids); fractions are in [0, 1]."""

    status: str
    """valid, wrong_tests (some test fails on the reference), no_tests (none collected), skipped
    (tests skip on the reference), error (the file does not run: syntax, import, collection)."""
    collected: int
    passed: int
    """Tests that pass on the reference, together and alone."""
    wrong: list[str] = field(default_factory=list)
    """Node ids of the wrong tests."""
    skipped: int = 0
    bug_revealing: bool | None = None
    """None: the task has no buggy version, or the file is not valid."""
    mutation: dict | None = None
    """`MutationResult.to_dict()` (valid files only)."""
    line_coverage: float | None = None
    branch_coverage: float | None = None
    """None when the reference has no branches or no test ran."""
    log: str = ""
    """The pytest output of the run together on the reference (for the retry prompt)."""

    @property
    def valid(self) -> bool:
        return self.status == "valid"

    @property
    def mutation_score(self) -> float | None:
        return None if self.mutation is None else self.mutation.get("score")

    def success(self) -> bool:
        """What Pass@k counts: valid and, where defined, bug-revealing."""
        return self.valid and self.bug_revealing is not False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["valid"], d["mutation_score"] = self.valid, self.mutation_score
        return d


def _log(result: SandboxResult, chars: int = 1500) -> str:
    text = (result.stdout + "\n" + result.stderr).strip()
    if result.status == "timeout":
        text = f"(timed out: {result.reason})\n{text}"
    return text[-chars:]


def _outcomes(result: SandboxResult) -> dict[str, str]:
    return {t.nodeid: t.outcome for t in result.tests}


def coverage_of(tests: str, reference: str, sandbox: Sandbox, *, module: str = "solution"
                ) -> tuple[float | None, float | None]:
    """(line coverage, branch coverage) of `reference` under `tests`, each in [0, 1] or None
    (no statements / no branches, or the run produced no report)."""
    program = _COVERAGE_PROGRAM.format(module=module, mark=_COVERAGE_MARK)
    result = sandbox.run(Job.program(program, files={f"{module}.py": reference,
                                                     "test_submission.py": tests}))
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith(_COVERAGE_MARK)), None)
    if line is None:
        return None, None
    totals = json.loads(line[len(_COVERAGE_MARK):])
    statements, branches = totals.get("num_statements", 0), totals.get("num_branches", 0)
    return (totals["covered_lines"] / statements if statements else None,
            totals["covered_branches"] / branches if branches else None)


def run_on_reference(tests: str, reference: str, sandbox: Sandbox, *, module: str = "solution",
                     alone_max: int = ALONE_MAX) -> tuple[Grade, SandboxResult]:
    """The validity part of the grade: the file together, then each collected test alone.
    Returns (grade without bug/mutation/coverage, the run together), which `grade` takes back
    as `reference_run` instead of running them again."""
    together = sandbox.run(Job.tests(tests, module=reference, module_name=module))
    outcomes = _outcomes(together)
    log = _log(together)
    if not outcomes and not together.collected:
        try:
            ast.parse(tests)
        except (SyntaxError, ValueError):
            return Grade("error", 0, 0, log=log), together
        # pytest's exit code 5: the file ran and held no test; anything else did not run.
        status = "no_tests" if together.exit_code == 5 else "error"
        return Grade(status, 0, 0, log=log), together
    # The collected tests, in order: those the run together never reported (it died or timed
    # out before them) are run alone like the others.
    ids = list(dict.fromkeys([*together.collected, *outcomes]))
    alone = dict(zip(ids[:alone_max], sandbox.map(
        [Job.tests(tests, module=reference, module_name=module, select=(n,))
         for n in ids[:alone_max]])))
    wrong, skipped, passed = [], 0, 0
    for n in ids:
        seen = [outcomes.get(n, "missing")]
        if n in alone:
            seen.append(_outcomes(alone[n]).get(n, "missing"))
        if all(o == "skipped" for o in seen):
            skipped += 1
        elif all(o == "passed" for o in seen):
            passed += 1
        else:
            wrong.append(n)
    if together.status == "timeout":  # a test hangs on correct code: the run reported only part
        status = "wrong_tests"
    else:
        status = "wrong_tests" if wrong else "skipped" if skipped else "valid"
    return Grade(status, len(ids), passed, wrong, skipped, log=log), together


def reveals_bug(tests: str, buggy: str, passing: set[str], sandbox: Sandbox, *,
                module: str = "solution") -> bool:
    """At least one of the `passing` tests (node ids that pass on the reference) fails on the
    buggy module, or the run times out (fail-to-pass)."""
    result = sandbox.run(Job.tests(tests, module=buggy, module_name=module))
    if result.status == "timeout":
        return True
    after = _outcomes(result)
    return any(after.get(n, "failed") != "passed" for n in passing) if after else bool(passing)


def grade(tests: str, reference: str, sandbox: Sandbox, *, module: str = "solution",
          buggy: str | None = None, mutation: bool = True, max_mutants: int | None = 20,
          coverage: bool = True, alone_max: int = ALONE_MAX,
          reference_run: tuple[Grade, SandboxResult] | None = None) -> Grade:
    """Grade one test file against the reference module (and its buggy version, if any).

    Args:
        tests: the pytest file's text (imports the code under test from `module`).
        reference: the correct module's source, written as `{module}.py` next to the tests.
        buggy: the buggy module's source (bug-revealing is then decided).
        mutation: score the file against mutants of the reference (valid files only).
        max_mutants: a deterministic sample of at most this many mutants (None: all).
        coverage: measure line and branch coverage of the reference.
        reference_run: `run_on_reference`'s result for these tests, when the caller has it.
    Returns a `Grade`. Raises nothing for bad test files (they become the grade's status);
    sandbox errors propagate.
    """
    base, together = reference_run or run_on_reference(tests, reference, sandbox, module=module,
                                                       alone_max=alone_max)
    updates: dict = {}
    if base.valid and buggy is not None:
        passing = {n for n, o in _outcomes(together).items() if o == "passed"}
        updates["bug_revealing"] = reveals_bug(tests, buggy, passing, sandbox, module=module)
    if base.valid and mutation:
        from tracetune.testgen.mutation import score

        updates["mutation"] = score(tests, reference, sandbox, module_name=module,
                                    max_mutants=max_mutants, clean=together).to_dict()
    if coverage and base.collected:
        updates["line_coverage"], updates["branch_coverage"] = coverage_of(
            tests, reference, sandbox, module=module)
    return Grade(**{**asdict(base), **updates})
