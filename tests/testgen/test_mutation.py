"""Mutation scoring: cosmic-ray's mutants of a module, each run through the sandbox against a
pytest file; killed / survived / timeout verdicts and the score."""

from __future__ import annotations

import os
import time

import pytest

from tracetune.errors import TracetuneError
from tracetune.sandbox import Job, Sandbox, SandboxConfig
from tracetune.testgen.mutation import Mutant, mutant_at, mutants, score

CLAMP = '''def clamp(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
'''

GOOD_TESTS = '''from solution import clamp

def test_inside():
    assert clamp(5, 0, 10) == 5

def test_below():
    assert clamp(-1, 0, 10) == 0

def test_above():
    assert clamp(11, 0, 10) == 10

def test_edges():
    assert clamp(0, 0, 10) == 0
    assert clamp(10, 0, 10) == 10
'''

# `x < lo` -> `x <= lo` and `x > hi` -> `x >= hi` return the same value: equivalent mutants.
EQUIVALENT = ("core/ReplaceComparisonOperator_Lt_LtE:0", "core/ReplaceComparisonOperator_Gt_GtE:0")
# `x < lo` -> `x > lo`: clamp(-1, 0, 10) returns -1.
BREAKS_BELOW = "core/ReplaceComparisonOperator_Lt_Gt:0"


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(timeout_s=20, workers=2)) as s:
        yield s


def _pick(source: str, ids) -> list[Mutant]:
    by_id = {m.id: m for m in mutants(source)}
    return [by_id[i] for i in ids]


# -- mutant generation ----------------------------------------------------------------------------

def test_mutants_are_deterministic_and_named_by_cosmic_ray_operator_and_occurrence():
    first, second = mutants(CLAMP), mutants(CLAMP)
    assert first == second and len(first) == 16
    assert len({m.id for m in first}) == len(first)
    for m in first:
        assert m.id == f"{m.operator}:{m.occurrence}" and m.operator.startswith("core/")
        assert m.source != CLAMP and m.line in (2, 4)  # the two comparisons
        compile(m.source, "m", "exec")
    lt_gt = next(m for m in first if m.id == BREAKS_BELOW)
    assert "if x > lo:" in lt_gt.source and lt_gt.line == 2
    assert lt_gt == mutant_at(CLAMP, lt_gt.operator, lt_gt.occurrence)


def test_sample_is_deterministic_by_seed_and_keeps_order():
    full = [m.id for m in mutants(CLAMP)]
    a = [m.id for m in mutants(CLAMP, max_mutants=5, seed=1)]
    assert a == [m.id for m in mutants(CLAMP, max_mutants=5, seed=1)]
    assert len(a) == 5 and a == [i for i in full if i in a]  # a subset, in the full list's order
    assert any([m.id for m in mutants(CLAMP, max_mutants=5, seed=s)] != a for s in range(2, 6))
    assert [m.id for m in mutants(CLAMP, max_mutants=100)] == full
    assert mutants(CLAMP, max_mutants=0) == []


def test_mutants_equal_to_the_source_or_not_compiling_are_dropped():
    # NumberReplacer on 1e+17: 1e17 +/- 1 is 1e17 again in floating point, the same text.
    assert mutant_at("X = 1e+17\n", "core/NumberReplacer", 0).source == "X = 1e+17\n"
    assert mutants("X = 1e+17\n") == []
    # `-1` -> `not 1` inside `a * -1` is a syntax error.
    src = "def f(a):\n    return a * -1\n"
    assert "a * not 1" in mutant_at(src, "core/ReplaceUnaryOperator_USub_Not", 0).source
    ids = [m.id for m in mutants(src)]
    assert "core/ReplaceUnaryOperator_USub_Not:0" not in ids
    assert "core/ReplaceUnaryOperator_USub_UAdd:0" in ids and len(ids) == 16  # of 17 positions


@pytest.mark.parametrize("bad", ["def f(:\n    pass\n", "x = (1,\n", "a\0b = 1\n"])
def test_unparsable_source_raises(bad):
    with pytest.raises(TracetuneError, match="cannot mutate"):
        mutants(bad)


def test_bad_settings_raise(sb):
    with pytest.raises(TracetuneError, match="max_mutants"):
        mutants(CLAMP, max_mutants=-1)
    with pytest.raises(TracetuneError, match="timeout_factor"):
        score(GOOD_TESTS, CLAMP, sb, timeout_factor=0)
    with pytest.raises(TracetuneError, match="does not parse"):
        score(GOOD_TESTS, "def clamp(:\n", sb)
    m = mutants(CLAMP)[0]
    with pytest.raises(TracetuneError, match="unique"):
        score(GOOD_TESTS, CLAMP, sb, mutants=[m, m])


# -- scoring --------------------------------------------------------------------------------------

def test_good_tests_kill_every_mutant_but_the_equivalent_ones(sb):
    r = score(GOOD_TESTS, CLAMP, sb, max_mutants=None)
    assert (r.status, r.total, r.timed_out) == ("ok", 16, 0)
    assert {i for i, v in r.verdicts.items() if v == "survived"} == set(EQUIVALENT)
    assert (r.killed, r.survived, r.score) == (14, 2, 14 / 16)
    assert len(r.baseline) == 4
    assert r.timeout_s == max(1.0, 5.0 * r.clean_duration_s)
    d = r.to_dict()
    assert d["score"] == r.score and d["verdicts"] == r.verdicts and isinstance(d["baseline"], list)


def test_tests_that_assert_nothing_kill_nothing(sb):
    r = score("import solution\n\ndef test_x():\n    pass\n", CLAMP, sb, max_mutants=6)
    assert (r.status, r.total, r.killed, r.score) == ("ok", 6, 0, 0.0)
    assert set(r.verdicts.values()) == {"survived"}


def test_tests_failing_on_the_reference_are_invalid(sb):
    r = score("from solution import clamp\n\ndef test_wrong():\n    assert clamp(5, 0, 10) == 6\n",
              CLAMP, sb)
    assert r.status == "invalid" and r.score is None and r.verdicts == {} and r.total == 0
    assert "no test passed" in r.reason
    broken = score("from solution import nope\n\ndef test_x():\n    pass\n", CLAMP, sb)
    assert broken.status == "invalid" and "collection error" in broken.reason


def test_all_skipped_tests_are_invalid(sb):
    tests = ("import pytest\nfrom solution import clamp\n\n"
             "@pytest.mark.skip(reason='later')\ndef test_a():\n    assert clamp(5, 0, 10) == 5\n")
    r = score(tests, CLAMP, sb)
    assert r.status == "invalid" and r.killed == 0 and r.score is None and r.baseline == ()


@pytest.mark.parametrize("on_wrong, verdict", [("pytest.skip('mutated?')", "survived"),
                                               ("assert False", "killed")])
def test_a_test_skipped_on_the_mutant_does_not_kill_it(sb, on_wrong, verdict):
    tests = ("import pytest\nfrom solution import clamp\n\n"
             "def test_below():\n"
             "    if clamp(-1, 0, 10) != 0:\n"
             f"        {on_wrong}\n")
    r = score(tests, CLAMP, sb, mutants=_pick(CLAMP, [BREAKS_BELOW]))
    assert r.status == "ok" and r.verdicts == {BREAKS_BELOW: verdict}


def test_a_test_failing_on_the_reference_cannot_kill(sb):
    tests = ("from solution import clamp\n\n"
             "def test_always_wrong():\n    assert clamp(-1, 0, 10) == 99\n\n"
             "def test_trivial():\n    assert True\n")
    r = score(tests, CLAMP, sb, mutants=_pick(CLAMP, [BREAKS_BELOW]))
    assert r.status == "ok" and r.baseline == ("test_submission.py::test_trivial",)
    assert r.verdicts == {BREAKS_BELOW: "survived"} and r.score == 0.0


def test_no_mutation_position_is_no_mutants(sb):
    r = score("from solution import name\n\ndef test_n():\n    assert name() == 'x'\n",
              "def name():\n    return 'x'\n", sb)
    assert (r.status, r.total, r.score) == ("no_mutants", 0, None)


COUNT_DOWN = '''def count_down(n):
    steps = 0
    while n > 0:
        n = n - 1
        steps = steps + 1
    return steps
'''


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "(gone)"


def _descendants(pid: int) -> set[int]:
    """Live (non-zombie) descendants of `pid`, from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != b"Z":
                parent[int(entry)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - out
        out |= frontier
    return out


def test_a_hanging_mutant_times_out_counts_as_killed_and_leaves_no_process(sb):
    tests = ("from solution import count_down\n\n"
             "def test_three():\n    assert count_down(3) == 3\n\n"
             "def test_zero():\n    assert count_down(0) == 0\n")
    todo = mutants(COUNT_DOWN)
    hang = next(m for m in todo if "n = n - 0" in m.source)  # NumberReplacer: 1 -> 0, never ends
    wrong = next(m for m in todo if "steps = steps + 2" in m.source)
    survivor = next(m for m in todo if "while n != 0:" in m.source)  # the same for n >= 0
    reference_before = COUNT_DOWN
    sb.run(Job.program("pass"))  # the zygote is up before the process count
    before = _descendants(sb._proc.pid)
    t0 = time.monotonic()
    r = score(tests, COUNT_DOWN, sb, mutants=[hang, wrong, survivor], min_timeout_s=1.0)
    elapsed = time.monotonic() - t0
    assert r.verdicts == {hang.id: "timeout", wrong.id: "killed", survivor.id: "survived"}
    assert (r.killed, r.timed_out, r.survived, r.score) == (2, 1, 1, 2 / 3)
    assert r.timeout_s >= 1.0 and elapsed < r.timeout_s + 15
    # The hung worker is killed and reaped before its monitor answers; the monitor itself exits
    # just after writing its answer, so it may still be alive for a moment: wait for it.
    # On a loaded machine (the full suite on 2 cores) that moment was once over 5 s; a leaked hung
    # worker spins forever, so it is still there after any wait.
    deadline = time.monotonic() + 30
    while _descendants(sb._proc.pid) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    extra = _descendants(sb._proc.pid) - before
    assert not extra, {p: _cmdline(p) for p in extra}  # the hung worker and its monitor are gone
    assert COUNT_DOWN == reference_before
    assert not list(sb._root.glob("job-*"))  # every job directory was removed


def test_a_test_that_rewrites_the_module_does_not_change_the_next_run():
    # One worker: the mutants run one after the other, so a directory shared between runs would
    # hand the next mutant the tampered module, and test_module_is_fresh would fail there.
    tamper = ('import pathlib\nfrom solution import clamp\n\n'
              'def test_module_is_fresh():\n'
              '    p = pathlib.Path(__file__).with_name("solution.py")\n'
              '    assert "TAMPERED" not in p.read_text()\n'
              '    p.write_text("def clamp(x, lo, hi):\\n    return \'TAMPERED\'\\n")\n\n'
              'def test_inside():\n    assert clamp(5, 0, 10) == 5\n')
    plain = "from solution import clamp\n\ndef test_inside():\n    assert clamp(5, 0, 10) == 5\n"
    # clamp(5, 0, 10) is still 5 with `x == lo` or `x == hi`; `x > lo` makes it 0.
    todo = _pick(CLAMP, [*EQUIVALENT, "core/ReplaceComparisonOperator_Lt_Eq:0",
                         "core/ReplaceComparisonOperator_Gt_Eq:0", BREAKS_BELOW])
    with Sandbox(SandboxConfig(timeout_s=20, workers=1)) as one:
        tampered = score(tamper, CLAMP, one, mutants=todo)
        clean = score(plain, CLAMP, one, mutants=todo)
    assert tampered.status == "ok" and tampered.baseline == (
        "test_submission.py::test_module_is_fresh", "test_submission.py::test_inside")
    assert tampered.verdicts == clean.verdicts
    assert list(tampered.verdicts.values()) == ["survived"] * 4 + ["killed"]
