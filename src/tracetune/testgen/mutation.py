"""Mutation score of a generated pytest file: how many small faults planted in the code under test
the tests notice.

Definition (Jia & Harman, "An Analysis and Survey of the Development of Mutation Testing", IEEE
TSE 37(5), 2011, section 2): a *mutant* is the program with one small syntactic change made by a
*mutation operator*; a test suite *kills* a mutant when some test that passes on the original
program fails on the mutant; the *mutation score* is killed mutants / total mutants, in [0, 1].
Equivalent mutants (a change that does not change behaviour) are not detected: they count as
survivors, so a perfect suite may score below 1.

The operators and the mutants are cosmic-ray's (https://cosmic-ray.readthedocs.io, "Mutation
operators"; the `core` operator provider: binary / comparison / unary operator replacement, boolean
and `and`/`or` replacement, `not` insertion, break/continue swap, exception replacement, number
replacement, decorator removal, zero-iteration for loops), used as a library: its plugins enumerate
`mutation_positions(node)` over a parso tree and `cosmic_ray.mutating.mutate_code` applies one
occurrence, exactly as `cosmic-ray init` / `cosmic-ray exec` do. Operators that need arguments
(VariableReplacer, VariableInserter) are left out, as `cosmic-ray init` leaves them out of a
session whose configuration gives them none. What cosmic-ray does not do is run the tests: it
writes each mutant over the module file on disk and runs a test command as a host subprocess. Here
every test run is one job of tracetune's `Sandbox` instead (the tests and often the code under test
are model-written): the mutant is the job's module, written into the job's own fresh directory,
so the reference text is never modified and one run cannot change what the next one sees.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from tracetune.errors import SandboxError, TracetuneError
from tracetune.sandbox import Job, Sandbox, SandboxResult

Verdict = Literal["killed", "survived", "timeout"]
Status = Literal["ok", "invalid", "no_mutants"]


@dataclass(frozen=True)
class Mutant:
    """One first-order mutant of a module, named as cosmic-ray names it."""

    id: str
    """`"{operator}:{occurrence}"`, e.g. "core/NumberReplacer:3": the same pair a cosmic-ray
    session stores for the mutant (MutationSpec.operator_name, .occurrence), so verdicts match."""
    operator: str
    """cosmic-ray's operator name, "provider/Name", e.g. "core/ReplaceBinaryOperator_Add_Sub"."""
    occurrence: int
    """Index of the mutation among all of this operator's positions in the module (0-based,
    counted in parse-tree pre-order, as cosmic-ray counts them)."""
    line: int
    """1-based line of the mutated code in the original module."""
    source: str
    """The whole mutated module text."""


@dataclass(frozen=True)
class MutationResult:
    """The outcome of `score`.

    `killed` includes the `timed_out` mutants; `survived` = total - killed; `score` = killed /
    total, or None when no mutant ran (status "invalid" or "no_mutants").
    """

    status: Status
    """"ok": mutants ran; "invalid": the tests do not pass on the reference (no test passed,
    none was collected, or the clean run errored or timed out), so no score is defined;
    "no_mutants": the tests are valid but there is no mutant to run (the reference has no
    mutation position, or `mutants=[]` / max_mutants=0 was given)."""
    reason: str
    """Why, in a few words."""
    total: int
    killed: int
    survived: int
    timed_out: int
    score: float | None
    timeout_s: float | None
    """The per-mutant wall-clock limit, seconds: max(min_timeout_s, timeout_factor x the clean
    run's duration). None when the clean run did not make the tests valid."""
    clean_duration_s: float
    """Wall-clock seconds of the clean run (the tests against the unmodified reference)."""
    baseline: tuple[str, ...] = ()
    """pytest node ids of the tests that passed on the clean run: the only tests that can kill."""
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    """Mutant id -> "killed" | "survived" | "timeout", in the order the mutants were given."""

    def to_dict(self) -> dict:
        """JSON-ready dict of every field (verdicts as a dict, baseline as a list)."""
        out = asdict(self)
        out["baseline"] = list(self.baseline)
        return out


# -- mutant generation ----------------------------------------------------------------------------

def _check_source(source: str) -> None:
    """Raise TracetuneError unless `source` is Python that compiles (parso, cosmic-ray's parser,
    is error-tolerant and would silently mutate a broken module)."""
    if not isinstance(source, str):
        raise TracetuneError(f"module source must be a str, not {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            compile(source, "<module under test>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise TracetuneError(f"cannot mutate the module: it does not parse as Python "
                             f"(line {exc.lineno}: {exc.msg})") from exc
    except ValueError as exc:  # e.g. a NUL byte
        raise TracetuneError(f"cannot mutate the module: {exc}") from exc


def _compiles(text: str) -> bool:
    """Whether a mutant compiles (compiled only, never executed). The compiler's SyntaxWarnings
    ("is" with a literal, which comparison mutants often make) are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        try:
            compile(text, "<mutant>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return False
    return True


def _positions(source: str) -> list[tuple[str, int, int]]:
    """(operator name, occurrence, 1-based line) for every mutation cosmic-ray's operators can
    make in `source`, in `cosmic-ray init`'s order: operators in `operator_names()` order, then
    parse-tree pre-order (`cosmic_ray.ast.ast_nodes`)."""
    import cosmic_ray.plugins
    from cosmic_ray.ast import ast_nodes, get_ast

    nodes = list(ast_nodes(get_ast(source)))
    out = []
    for name in cosmic_ray.plugins.operator_names():
        cls = cosmic_ray.plugins.get_operator(name)
        if cls.arguments():  # needs a configuration (cause/effect variables): init skips it too
            continue
        operator = cls()
        occurrence = 0
        for node in nodes:
            for (line, _col), _end in operator.mutation_positions(node):
                out.append((name, occurrence, line))
                occurrence += 1
    return out


def mutant_at(source: str, operator: str, occurrence: int, *, line: int = 0) -> Mutant | None:
    """The mutant cosmic-ray's `operator` makes at `occurrence` in `source` (what its worker writes
    to disk for that MutationSpec), or None when there is no such occurrence. Not filtered: the
    text may equal the source or fail to compile. `line` is recorded as given when known;
    0 looks it up. Raises TracetuneError for source that does not parse or an unknown operator."""
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    _check_source(source)
    try:
        cls = cosmic_ray.plugins.get_operator(operator)
    except (KeyError, ValueError) as exc:
        raise TracetuneError(f"unknown cosmic-ray operator {operator!r}") from exc
    text = mutate_code(source, cls(), occurrence)
    if text is None:
        return None
    if not line:
        line = next((ln for name, occ, ln in _positions(source)
                     if name == operator and occ == occurrence), 0)
    return Mutant(id=f"{operator}:{occurrence}", operator=operator, occurrence=occurrence,
                  line=line, source=text)


def mutants(source: str, *, max_mutants: int | None = None, seed: int = 0) -> list[Mutant]:
    """Every first-order mutant cosmic-ray's core operators make of `source`, in cosmic-ray's
    order (operator, then occurrence), deterministic: the same source gives the same list.

    Mutants whose text equals `source` or that do not compile are dropped (the mutant is compiled
    here, never run). When more than `max_mutants` remain, a uniform random sample of that many
    is kept, drawn with `random.Random(seed)` (a seeded shuffle, then the first max_mutants
    valid ones) and returned in the original order: the same source and seed give the same
    sample. Raises TracetuneError when `source` does not parse as Python or max_mutants is not
    None or a whole number >= 0.
    """
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code

    _check_source(source)
    if max_mutants is not None and (isinstance(max_mutants, bool)
                                    or not isinstance(max_mutants, int) or max_mutants < 0):
        raise TracetuneError(f"max_mutants must be None or a whole number >= 0, "
                             f"not {max_mutants!r}")
    positions = _positions(source)
    order = list(range(len(positions)))
    if max_mutants is not None and len(positions) > max_mutants:
        # A seeded permutation, cut after max_mutants valid mutants: a uniform sample of the valid
        # ones, without building (parsing, compiling) the mutants that are not drawn.
        random.Random(seed).shuffle(order)
    operators: dict[str, object] = {}
    kept: list[tuple[int, Mutant]] = []
    for i in order:
        if max_mutants is not None and len(kept) == max_mutants:
            break
        name, occurrence, line = positions[i]
        if name not in operators:
            operators[name] = cosmic_ray.plugins.get_operator(name)()
        text = mutate_code(source, operators[name], occurrence)
        if text is None or text == source or not _compiles(text):
            continue
        kept.append((i, Mutant(id=f"{name}:{occurrence}", operator=name, occurrence=occurrence,
                               line=line, source=text)))
    return [m for _, m in sorted(kept, key=lambda pair: pair[0])]


_make_mutants = mutants  # `score` has a parameter of that name


# -- scoring --------------------------------------------------------------------------------------

def _lost(result: SandboxResult) -> bool:
    """The sandbox itself failed (no verdict about the code): core.py's "sandbox lost the check"
    and "sandbox error: ..." results, which carry no exit code."""
    return result.status == "error" and result.exit_code is None and \
        result.reason.startswith("sandbox ")


def _verdict(result: SandboxResult, baseline: frozenset[str]) -> Verdict:
    """killed: a baseline test failed (pytest outcome "failed": an assertion, an exception, a
    setup or teardown error), or the job ended in error (collection error, crash, memory limit);
    timeout: the job ran past its limit; survived otherwise. A test skipped on the mutant, or one
    that was not in the baseline, never kills."""
    if result.status == "timeout":
        return "timeout"
    if result.status == "error":
        return "killed"
    if any(t.outcome == "failed" and t.nodeid in baseline for t in result.tests):
        return "killed"
    return "survived"


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value == float("inf"):
        raise TracetuneError(f"{name} must be a finite number > 0, not {value!r}")


def score(tests: str, reference: str, sandbox: Sandbox, *, module_name: str = "solution",
          mutants: Sequence[Mutant] | None = None, max_mutants: int | None = 40,
          timeout_factor: float = 5.0, min_timeout_s: float = 1.0,
          clean: SandboxResult | None = None) -> MutationResult:
    """Mutation score of the pytest file `tests` on the module `reference` (written as
    `{module_name}.py` next to the tests, which import from it).

    1. Clean run: the tests against the unmodified reference, under the sandbox's own timeout
       (or `clean`, that run already made by the caller).
       When no test passes there (none collected, all fail or skip, a collection error or a
       timeout) the result has status "invalid", no mutant runs and score is None.
    2. Per-mutant wall-clock limit, seconds: max(min_timeout_s, timeout_factor x the clean run's
       duration), stated as `timeout_s`.
    3. Each mutant is one sandbox job whose module is the mutant (a fresh directory per job; the
       reference string is only read). It is *killed* when a test that passed on the clean run
       fails on it, or the job errors (e.g. the mutant breaks the import); it *times out* when the
       job runs past `timeout_s`, and a timeout counts as killed, as in cosmic-ray, whose
       `cosmic_ray.testing.run_tests` reports a test command that outlives its timeout as
       TestOutcome.KILLED (output "timeout"). Skipped tests never kill; a test that failed or was
       skipped on the clean run cannot kill. Tests are matched by pytest node id. When every
       test passed on the clean run, a mutant's run stops at its first failed test (pytest -x).
    4. Jobs go through `sandbox.submit`, so up to the sandbox's `workers` mutants run at once
       (`Sandbox` is thread-safe: a slot queue, one lock on the zygote's pipe).

    `mutants`: the mutants to run, as given (e.g. a cosmic-ray session's set); default
    `mutants(reference, max_mutants=max_mutants)`. Returns a `MutationResult`. Raises
    TracetuneError when `reference` does not parse, a setting is out of range or mutant ids repeat;
    SandboxError when the sandbox loses a job twice (a failure of the sandbox, not a verdict).
    """
    _positive("timeout_factor", timeout_factor)
    _positive("min_timeout_s", min_timeout_s)
    if mutants is None:
        todo = _make_mutants(reference, max_mutants=max_mutants)
    else:
        _check_source(reference)
        todo = list(mutants)
        ids = [m.id for m in todo]
        if len(set(ids)) != len(ids):
            raise TracetuneError("mutant ids must be unique: "
                                 f"{sorted({i for i in ids if ids.count(i) > 1})}")

    if clean is None:  # a caller that already ran the tests on the reference passes that run
        clean_job = Job.tests(tests, module=reference, module_name=module_name)
        clean = _settle(sandbox, clean_job, sandbox.run(clean_job))
    baseline = tuple(t.nodeid for t in clean.tests if t.outcome == "passed")

    def result(status: Status, reason: str, **kw) -> MutationResult:
        return MutationResult(status=status, reason=reason, clean_duration_s=clean.duration_s,
                              baseline=baseline, **{"total": 0, "killed": 0, "survived": 0,
                                                    "timed_out": 0, "score": None,
                                                    "timeout_s": None, **kw})

    if clean.status in ("error", "timeout") or not baseline:
        why = clean.reason if clean.status in ("error", "timeout") else \
            f"no test passed on the reference ({clean.reason})"
        return result("invalid", f"the tests are not valid on the reference: {why}")
    timeout_s = max(float(min_timeout_s), float(timeout_factor) * clean.duration_s)
    if not todo:
        return result("no_mutants", "no mutant to run (the reference has no mutation position, "
                      "or none was given)", timeout_s=timeout_s)

    passing = frozenset(baseline)
    # When every test passed on the clean run, the first failure decides the verdict: stop there
    # (pytest -x, as cosmic-ray's documented test command does). Otherwise a test that already
    # failed on the reference could stop the run before a baseline test fails, so all tests run.
    all_passed = all(t.outcome == "passed" for t in clean.tests) and \
        set(clean.collected) <= passing
    jobs = [Job.tests(tests, module=m.source, module_name=module_name, timeout_s=timeout_s,
                      exitfirst=all_passed) for m in todo]
    futures = [sandbox.submit(job) for job in jobs]
    verdicts: dict[str, Verdict] = {}
    for mutant, job, future in zip(todo, jobs, futures):
        verdicts[mutant.id] = _verdict(_settle(sandbox, job, future.result()), passing)
    timed_out = sum(v == "timeout" for v in verdicts.values())
    killed = timed_out + sum(v == "killed" for v in verdicts.values())
    return result("ok", f"{killed} of {len(todo)} mutants killed ({timed_out} by timeout)",
                  total=len(todo), killed=killed, survived=len(todo) - killed,
                  timed_out=timed_out, score=killed / len(todo), timeout_s=timeout_s,
                  verdicts=verdicts)


def _settle(sandbox: Sandbox, job: Job, r: SandboxResult) -> SandboxResult:
    """`r`, the result of `job`, or the job run once more when the sandbox lost it; raises
    SandboxError when the sandbox loses it again."""
    if _lost(r):
        r = sandbox.run(job)
        if _lost(r):
            raise SandboxError(f"mutation scoring: {r.reason}")
    return r
