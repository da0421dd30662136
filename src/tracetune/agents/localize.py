"""Spectrum-based fault localisation (SBFL) of a module under its tests, for the repair agent.

The task's tests run once in the sandbox under coverage.py, each test in its own dynamic context
(`Coverage.switch_context(nodeid)`), so every line of the module is known with the tests that
executed it and whether each passed. A line's suspiciousness is the Ochiai coefficient

    ochiai(s) = ef(s) / sqrt(F * (ef(s) + ep(s)))

where ef / ep are the failing / passing tests that executed line s and F all failing tests
(Abreu, Zoeteweij and van Gemund, "On the Accuracy of Spectrum-based Fault Localization",
TAICPART-MUTATION 2007; the formula AutoCodeRover hands its agent as well). Lines no failing test
executed score 0 and are not suspects; lines that only run at import (a `def`, a module
docstring) run under no test's context and score 0 too.

Why not a fault-localisation package: FauxPy, the maintained one for pytest, pins
cosmic-ray==8.3.5 (the project needs >= 8.7 for mutation scores) and pytest-timeout==2.1.0 and
runs as a pytest session writing its own database. The spectrum is coverage.py's (the library);
what is written here is the per-test context switch and the one-line formula over its result.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass

from tracetune.sandbox import Job, Sandbox

_MARK = "@@tracetune-spectrum@@"
# The spectrum job's program (ours, trusted; the tests it runs are not, hence the sandbox).
_PROGRAM = """\
import json, os, sys
import coverage, pytest
path = os.path.abspath({module!r} + ".py")
cov = coverage.Coverage(data_file=None, include=[path])
outcomes = {{}}


class Spectrum:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        cov.switch_context(item.nodeid)
        yield
        cov.switch_context("")

    def pytest_runtest_logreport(self, report):
        if report.failed:
            outcomes[report.nodeid] = "failed"
        elif report.when == "call":
            outcomes.setdefault(report.nodeid, report.outcome)


cov.start()
try:
    pytest.main(["test_submission.py", "-q", "--tb=no", "-p", "no:cacheprovider", "-c",
                 os.devnull, "-o", "addopts=", "--rootdir", os.getcwd()], plugins=[Spectrum()])
finally:
    cov.stop()
data = cov.get_data()
lines = {{}}
if os.path.abspath(path) in {{os.path.abspath(f) for f in data.measured_files()}}:
    lines = {{str(n): sorted(c for c in ctx if c) for n, ctx in data.contexts_by_lineno(path).items()}}
sys.stdout.write("\\n" + {mark!r} + json.dumps({{"outcomes": outcomes, "lines": lines}}) + "\\n")
"""


@dataclass(frozen=True)
class Suspect:
    """One line of the module and its suspiciousness."""

    line: int
    """1-based line number in the module's text."""
    text: str
    """The line without its indentation."""
    score: float
    """Ochiai coefficient in (0, 1]."""
    failing: int
    """Failing tests that executed the line (ef)."""
    passing: int
    """Passing tests that executed the line (ep)."""


def spectrum(tests: str, module_source: str, sandbox: Sandbox, *, module: str = "solution"
             ) -> tuple[dict[str, str], dict[int, list[str]]] | None:
    """Run `tests` against `module_source` (written as `module`.py) in the sandbox with per-test
    line coverage. Returns (test node id -> "passed" / "failed" / "skipped", 1-based line of the
    module -> node ids of the tests that executed it), or None when the run reported nothing
    (it crashed or timed out before the report)."""
    program = _PROGRAM.format(module=module, mark=_MARK)
    result = sandbox.run(Job.program(program, files={f"{module}.py": module_source,
                                                     "test_submission.py": tests}))
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith(_MARK)), None)
    if line is None:
        return None
    data = json.loads(line[len(_MARK):])
    return data["outcomes"], {int(n): list(ids) for n, ids in data["lines"].items()}


def _counts(outcomes: dict[str, str], ids: list[str]) -> tuple[int, int]:
    """(ef, ep) of a line executed by the tests `ids`: how many of them failed and passed."""
    return (sum(outcomes.get(t) == "failed" for t in ids),
            sum(outcomes.get(t) == "passed" for t in ids))


def _scored(outcomes: dict[str, str], lines: dict[int, list[str]]
            ) -> dict[int, tuple[float, int, int]]:
    """Line -> (Ochiai score, ef, ep) for the lines some failing test executed."""
    failed = sum(o == "failed" for o in outcomes.values())
    out: dict[int, tuple[float, int, int]] = {}
    for n, ids in lines.items():
        ef, ep = _counts(outcomes, ids)
        if ef:
            out[n] = (ef / math.sqrt(failed * (ef + ep)), ef, ep)
    return out


def ochiai(outcomes: dict[str, str], lines: dict[int, list[str]]) -> dict[int, float]:
    """Line -> Ochiai suspiciousness (formula in the module docstring) from a spectrum; lines no
    failing test executed, and every line when no test failed, are left out."""
    return {n: score for n, (score, _, _) in _scored(outcomes, lines).items()}


def rank_suspects(outcomes: dict[str, str], lines: dict[int, list[str]], module_source: str,
                  *, top: int) -> list[Suspect]:
    """The `top` most suspicious non-blank lines of `module_source` under a spectrum
    (`spectrum`'s result), most suspicious first (ties in line order), plus any line tied with
    the last one kept (a cut inside a tie would be arbitrary). Empty when no test fails or no
    failing test executes a line of the module (e.g. it fails at import)."""
    scored = _scored(outcomes, lines)
    text = module_source.splitlines()
    ranked = sorted(((v[0], n) for n, v in scored.items()
                     if 0 < n <= len(text) and text[n - 1].strip()), key=lambda p: (-p[0], p[1]))
    if not ranked or top < 1:
        return []
    cut = ranked[min(top, len(ranked)) - 1][0]
    return [Suspect(n, text[n - 1].strip(), round(s, 4), *scored[n][1:])
            for i, (s, n) in enumerate(ranked) if i < top or s == cut]


def suspicious_lines(tests: str, module_source: str, sandbox: Sandbox, *, top: int,
                     module: str = "solution") -> list[Suspect]:
    """`rank_suspects` over the spectrum of `tests` against `module_source` (one sandboxed run);
    empty when the run reports nothing."""
    run = spectrum(tests, module_source, sandbox, module=module)
    return [] if run is None else rank_suspects(*run, module_source, top=top)


def suspects_text(suspects: list[Suspect]) -> str:
    """The suspects as the agent reads them: `  12| text` lines, most suspicious first."""
    return "\n".join(f"{s.line:4d}| {s.text}" for s in suspects)


def fault_lines(buggy: str, reference: str) -> frozenset[str]:
    """The lines of `buggy` (without indentation) that the fix `reference` replaces or deletes:
    the faulty lines a localisation is scored against (difflib's opcodes over lines). Empty for a
    fix that only inserts lines."""
    return frozenset(line for line in removed_lines(buggy, reference) if line)


def removed_lines(before: str, after: str) -> set[str]:
    """The lines of `before` (without indentation) that `after` replaces or deletes."""
    a, b = before.splitlines(), after.splitlines()
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return {a[i].strip() for tag, i1, i2, _, _ in ops if tag in ("replace", "delete")
            for i in range(i1, i2)}


__all__ = ["Suspect", "fault_lines", "ochiai", "removed_lines", "spectrum", "suspects_text",
           "suspicious_lines"]
