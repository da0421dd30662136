"""Continual-learning metrics (eval.continual) against matrices worked out by hand, the accuracy
matrix from stored rows, and the task bootstrap."""

import json
import math

import numpy as np
import pytest

from tracetune.errors import TracetuneError
from tracetune.eval.continual import (
    MatrixRow,
    acc,
    accuracy_matrix,
    aulc,
    bootstrap_ci,
    bwt,
    cl_fbeta,
    cl_metrics,
    cl_plasticity,
    cl_stability,
    forgetting,
    forward_transfer,
)

NAMES = {"acc", "bwt", "forgetting", "forward_transfer", "aulc", "cl_plasticity",
         "cl_stability", "cl_f1"}


def _rows(passes: dict[tuple[int, str], list[int]], trials: int | dict[str, int] = 4,
          **ident) -> list[MatrixRow]:
    """Rows of one run: passes[(session, task)][round], `trials` per task (or per task id)."""
    base = {"stream": "s", "ordering": "A", "strategy": "sequential", "seed": 0} | ident
    out = []
    for (session, task), by_round in passes.items():
        n = trials if isinstance(trials, int) else trials[task]
        for rnd, p in enumerate(by_round):
            out.append(MatrixRow(round=rnd, session=session, task=task, trials=n, passes=p,
                                 **base))
    return out


# K = 1, three sessions: rows are rounds 0 (zero-shot) .. 3, L(j) = j + 1, R = 3.
A3 = [[0.2, 0.1, 0.0],
      [0.6, 0.3, 0.1],
      [0.8, 0.7, 0.3],
      [0.4, 0.6, 0.9]]


def test_three_sessions_k1_every_metric():
    # ACC = (0.4 + 0.6 + 0.9) / 3 = 1.9 / 3
    assert acc(A3) == pytest.approx(1.9 / 3)
    # BWT over j = 0, 1: (a[3][0] - a[1][0]) + (a[3][1] - a[2][1]) = (0.4 - 0.6) + (0.6 - 0.7)
    #   = -0.3, / 2 = -0.15
    assert bwt(A3) == pytest.approx(-0.15)
    # F: j=0: max(a[1][0], a[2][0]) - a[3][0] = max(0.6, 0.8) - 0.4 = 0.4
    #    j=1: max(a[2][1]) - a[3][1] = 0.7 - 0.6 = 0.1;  F = 0.5 / 2 = 0.25 (not -BWT = 0.15)
    assert forgetting(A3) == pytest.approx(0.25)
    # FT over j = 1, 2: (a[1][1] - a[0][1]) + (a[2][2] - a[0][2]) = (0.3 - 0.1) + (0.3 - 0.0)
    #   = 0.5, / 2 = 0.25. (The off-by-one a[j-1][j] - a[0][j] would give (0 + 0.1) / 2 = 0.05.)
    assert forward_transfer(A3) == pytest.approx(0.25)
    # just-learned d = (a[1][0], a[2][1], a[3][2]) = (0.6, 0.7, 0.9): CL-P = 2.2 / 3 = 11/15
    assert cl_plasticity(A3) == pytest.approx(11 / 15)
    # AULC: running means of d: 0.6, 1.3/2 = 0.65, 2.2/3; mean = (0.6 + 0.65 + 2.2/3) / 3
    assert aulc(A3) == pytest.approx((0.6 + 0.65 + 2.2 / 3) / 3)
    # CL-S = 1 - F = 0.75
    assert cl_stability(A3) == pytest.approx(0.75)
    # CL-F1 = 2 P S / (P + S) with P = 11/15, S = 3/4: (11/10) / (89/60) = 66/89
    assert cl_fbeta(A3) == pytest.approx(66 / 89)
    # beta = 2: 5 P S / (4 P + S) = (11/4) / (221/60) = 165/221
    assert cl_fbeta(A3, beta=2.0) == pytest.approx(165 / 221)
    m = cl_metrics(A3)
    assert set(m) == NAMES
    assert m["cl_f1"] == pytest.approx(66 / 89)
    assert m["forward_transfer"] == pytest.approx(0.25)


def test_one_session_defines_acc_and_plasticity_only():
    a = [[0.25], [0.75]]                         # zero-shot 0.25, after round 1: 0.75
    m = cl_metrics(a)
    # ACC = CL-P = AULC = a[1][0] = 0.75
    assert m["acc"] == m["cl_plasticity"] == m["aulc"] == 0.75
    # no session learned before the last round, none with L(j) >= 2: NaN, not 0
    for name in ("bwt", "forgetting", "forward_transfer", "cl_stability", "cl_f1"):
        assert math.isnan(m[name]), name


def test_forgetting_ties_and_zero_shot_peak():
    a = [[1.0, 0.0, 0.0],
         [0.5, 0.0, 0.0],
         [0.5, 0.5, 0.0],
         [0.25, 0.5, 0.5]]
    # j=0: best since learned (rounds 1, 2) is a tie 0.5 = 0.5 -> 0.5 - 0.25 = 0.25; the
    #      zero-shot 1.0 does not count (it would give 0.75)
    # j=1: 0.5 - 0.5 = 0;  F = 0.25 / 2 = 0.125
    assert forgetting(a) == pytest.approx(0.125)
    assert cl_stability(a) == pytest.approx(0.875)


def test_session_never_learned():
    a = [[0.5, 0.0, 0.0],
         [1.0, 0.0, 0.0],
         [1.0, 0.0, 0.5],
         [0.5, 0.0, 1.0]]                        # session 1 stays at 0 in every round
    m = cl_metrics(a)
    assert m["acc"] == pytest.approx(0.5)        # (0.5 + 0 + 1) / 3
    assert m["bwt"] == pytest.approx(-0.25)      # ((0.5 - 1.0) + (0 - 0)) / 2
    assert m["forgetting"] == pytest.approx(0.25)  # ((1.0 - 0.5) + (0 - 0)) / 2
    assert m["forward_transfer"] == pytest.approx(0.25)  # ((0 - 0) + (0.5 - 0)) / 2
    # d = (1, 0, 1): CL-P = 2/3; running means 1, 1/2, 2/3 -> AULC = (13/6) / 3 = 13/18
    assert m["cl_plasticity"] == pytest.approx(2 / 3)
    assert m["aulc"] == pytest.approx(13 / 18)
    # CL-S = 0.75, CL-F1 = 2 (2/3)(3/4) / (2/3 + 3/4) = 1 / (17/12) = 12/17
    assert m["cl_f1"] == pytest.approx(12 / 17)


def test_two_sessions_per_round():
    # K = 2, S = 4: R = 2, L = (1, 1, 2, 2)
    a = [[0.0, 0.2, 0.1, 0.3],
         [0.6, 0.8, 0.3, 0.4],
         [0.5, 1.0, 0.7, 1.0]]
    m = cl_metrics(a, k=2)
    assert m["acc"] == pytest.approx(0.8)        # (0.5 + 1.0 + 0.7 + 1.0) / 4
    # sessions learned before round 2: j = 0, 1: ((0.5 - 0.6) + (1.0 - 0.8)) / 2 = 0.05
    assert m["bwt"] == pytest.approx(0.05)
    # F: j=0: 0.6 - 0.5 = 0.1; j=1: 0.8 - 1.0 = -0.2 (kept, not clipped); mean -0.05
    assert m["forgetting"] == pytest.approx(-0.05)
    assert m["cl_stability"] == pytest.approx(1.05)
    # FT over L(j) = 2, i.e. j = 2, 3, from row L(j) - 1 = 1: ((0.3 - 0.1) + (0.4 - 0.3)) / 2
    assert m["forward_transfer"] == pytest.approx(0.15)
    # d = (a[1][0], a[1][1], a[2][2], a[2][3]) = (0.6, 0.8, 0.7, 1.0): CL-P = 3.1 / 4
    assert m["cl_plasticity"] == pytest.approx(0.775)
    # running means 0.6, 0.7, 0.7, 0.775 -> AULC = 2.775 / 4
    assert m["aulc"] == pytest.approx(0.69375)
    # CL-F1 = 2 * 0.775 * 1.05 / (0.775 + 1.05) = 1.6275 / 1.825
    assert m["cl_f1"] == pytest.approx(1.6275 / 1.825)
    with pytest.raises(TracetuneError, match="need 4 rounds"):
        cl_metrics(a, k=1)                       # 4 sessions at K = 1 need 5 rows


def test_partial_last_round():
    # K = 2, S = 3: R = 2, L = (1, 1, 2); FT uses only j = 2: a[1][2] - a[0][2] = 0.5 - 0.25
    a = [[0.0, 0.0, 0.25],
         [1.0, 0.5, 0.5],
         [1.0, 0.5, 1.0]]
    assert forward_transfer(a, 2) == pytest.approx(0.25)
    assert bwt(a, 2) == pytest.approx(0.0)       # ((1 - 1) + (0.5 - 0.5)) / 2


def test_matrix_checks():
    with pytest.raises(TracetuneError, match="in \\[0, 1\\]"):
        acc([[0.0], [1.5]])
    with pytest.raises(TracetuneError, match="shape"):
        acc([0.5, 0.5])
    with pytest.raises(ValueError, match="beta"):
        cl_fbeta(A3, beta=0.0)


# --- accuracy_matrix from rows ---

PASSES = {(0, "t1"): [1, 4, 3], (0, "t2"): [0, 1, 2], (1, "t3"): [0, 1, 3]}
TRIALS = {"t1": 4, "t2": 2, "t3": 3}


def test_accuracy_matrix_mean_of_task_means():
    rows = _rows(PASSES, TRIALS)
    # session 0, per task then over tasks: r0 (1/4 + 0/2)/2 = 0.125 (pooled 1/6 would differ),
    # r1 (4/4 + 1/2)/2 = 0.75, r2 (3/4 + 2/2)/2 = 0.875; session 1: 0, 1/3, 1
    expected = [[0.125, 0.0], [0.75, 1 / 3], [0.875, 1.0]]
    np.testing.assert_allclose(accuracy_matrix(rows), expected)
    stored = [json.loads(json.dumps(r.to_dict())) for r in rows]
    assert [MatrixRow.from_dict(d) for d in stored] == rows
    np.testing.assert_allclose(accuracy_matrix(reversed(rows)), expected)   # order-free


def _raises(rows, pattern):
    with pytest.raises(TracetuneError, match=pattern) as e:
        accuracy_matrix(rows)
    assert "\n" not in str(e.value)


def test_accuracy_matrix_rejects_bad_rows():
    rows = _rows(PASSES, TRIALS)
    _raises(rows + _rows({(0, "t1"): [1, 1, 1]}, strategy="ewc"), "mix 2 runs")
    _raises(rows + _rows({(0, "t1"): [1, 1, 1]}, seed=1), "mix 2 runs")
    _raises([r for r in rows if (r.round, r.session) != (1, 1)], "round 1, session 1")
    _raises([r for r in rows if r.session != 0], "round 0, session 0")
    _raises(rows + [rows[0]], "two matrix rows")
    _raises([r for r in rows if (r.round, r.task) != (2, "t2")], "session 0 has other tasks")
    good = rows[1:]
    bad = rows[0]
    for trials, passes in ((0, 0), (4, 5), (4, -1)):
        _raises(good + [MatrixRow(**(bad.to_dict() | {"trials": trials, "passes": passes}))],
                "trials > 0")
    _raises([], "no matrix rows")
    with pytest.raises(TracetuneError, match="lacks passes"):
        MatrixRow.from_dict({k: v for k, v in rows[0].to_dict().items() if k != "passes"})
    with pytest.raises(TracetuneError, match="malformed"):
        MatrixRow.from_dict(rows[0].to_dict() | {"trials": "four"})


# --- bootstrap over tasks ---

# K = 1, two sessions of three tasks, 4 trials each: varied enough for a non-degenerate interval
VARIED = {(0, "a"): [0, 4, 3], (0, "b"): [1, 2, 2], (0, "c"): [0, 3, 1],
          (1, "d"): [0, 1, 4], (1, "e"): [2, 2, 3], (1, "f"): [0, 0, 2]}


def test_bootstrap_deterministic_and_contains_point():
    rows = _rows(VARIED)
    first = bootstrap_ci(rows, acc, n_boot=500, seed=3)
    assert bootstrap_ci(rows, acc, n_boot=500, seed=3) == first
    assert bootstrap_ci(rows, acc, n_boot=500, seed=4) != first
    point, low, high = first
    # ACC = a[2] = ((3 + 2 + 1)/12, (4 + 3 + 2)/12) averaged = (0.5 + 0.75) / 2
    assert point == pytest.approx(0.625)
    assert low < point < high
    # the metric callable the report passes: one named metric of cl_metrics
    point, low, high = bootstrap_ci(rows, lambda m: cl_metrics(m, 1)["cl_f1"], n_boot=300)
    assert point == pytest.approx(cl_metrics(accuracy_matrix(rows))["cl_f1"])
    assert low <= point <= high and low < high


def test_bootstrap_degenerate_data_zero_width():
    # every task of a session has the same pass rates in every round: any resample is the matrix
    same = {(0, "a"): [1, 3, 2], (0, "b"): [1, 3, 2], (1, "c"): [0, 2, 4], (1, "d"): [0, 2, 4]}
    for metric in (acc, forward_transfer, lambda m: cl_metrics(m)["cl_f1"]):
        point, low, high = bootstrap_ci(_rows(same), metric, n_boot=200)
        assert low == pytest.approx(point) and high == pytest.approx(point)


def test_bootstrap_keeps_tasks_paired_across_rounds():
    # every task gains exactly 2/4 from round 0 to round 1, from different levels: a resample
    # that kept tasks paired always shows a gain of 0.5; unpaired draws would spread it
    rows = _rows({(0, "a"): [0, 2], (0, "b"): [1, 3], (0, "c"): [2, 4]})
    point, low, high = bootstrap_ci(rows, lambda m: m[1, 0] - m[0, 0], n_boot=300)
    assert (point, low, high) == pytest.approx((0.5, 0.5, 0.5))
    _, low, high = bootstrap_ci(rows, acc, n_boot=300)       # a[1][0] itself does vary
    assert low < high


def test_bootstrap_drops_nan_resamples():
    rows = _rows({(0, "a"): [0, 4], (0, "b"): [0, 2]})       # a[1][0] is 1.0, 0.5 or 0.75
    point, low, high = bootstrap_ci(rows, lambda m: math.nan if m[1, 0] == 1.0 else m[1, 0],
                                    n_boot=400)
    assert point == 0.75
    assert 0.5 <= low <= high <= 0.75                        # the 1.0 resamples were dropped
    # a metric undefined for the shape: NaN everywhere, no interval
    assert all(math.isnan(x) for x in bootstrap_ci(rows, forgetting, n_boot=50))


def test_bootstrap_checks_arguments():
    rows = _rows(VARIED)
    with pytest.raises(TracetuneError, match="rounds"):
        bootstrap_ci(rows, acc, k=2)                         # 2 sessions at K = 2: 1 round
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(rows, acc, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(rows, acc, level=1.0)
