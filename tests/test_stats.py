import math

import pytest

from tracetune import stats
from tracetune.stats import pass_at_k, wilson_interval


@pytest.mark.parametrize("k, n, lo, hi", [
    # Reference values: Wilson score interval, 95% (e.g. statsmodels proportion_confint).
    (5, 10, 0.236593, 0.763407),
    (0, 10, 0.0, 0.277530),
    (10, 10, 0.722470, 1.0),
    (1, 164, 0.001077, 0.033726),  # worked by hand from the formula
])
def test_wilson_matches_reference_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-5)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_pass_at_k():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)


import random

from tracetune.stats import (cohens_h, fisher_exact, mcnemar, paired_bootstrap_ci, paired_t,
                             stars, wilcoxon_signed_rank)


def test_fisher_worked_example_and_edges():
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 0.4857 (published value).
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(0.485714, abs=1e-6)
    assert fisher_exact(0, 10, 0, 10) == 1.0 and fisher_exact(10, 10, 10, 10) == 1.0
    assert fisher_exact(10, 10, 0, 10) == pytest.approx(1.0825e-05, rel=1e-3)
    with pytest.raises(ValueError):
        fisher_exact(5, 4, 1, 4)


def test_cohens_h():
    assert cohens_h(0.5, 0.5) == 0.0
    assert cohens_h(1.0, 0.0) == pytest.approx(math.pi)
    assert cohens_h(0.7, 0.5) == pytest.approx(0.4115, abs=1e-4)  # Cohen (1988): 0.41


def test_mcnemar_matches_binomial_test():
    from scipy.stats import binomtest

    for b, c in [(0, 0), (5, 0), (3, 7), (10, 10), (1, 12)]:
        expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
        assert mcnemar(b, c) == pytest.approx(expected, rel=1e-9)


def test_paired_tests_agree_with_scipy_on_random_data():
    from scipy.stats import ttest_rel, wilcoxon

    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(5, 30)
        x = [rng.random() for _ in range(n)]
        y = [v + rng.gauss(0.05, 0.2) for v in x]
        assert paired_t(x, y) == pytest.approx(ttest_rel(x, y).pvalue, rel=1e-9)
        assert wilcoxon_signed_rank(x, y) == pytest.approx(wilcoxon(x, y).pvalue, rel=1e-9)


def test_paired_edges_and_ties():
    assert paired_t([1, 2, 3], [1, 2, 3]) == 1.0 and paired_t([2, 3, 4], [1, 2, 3]) == 0.0
    assert wilcoxon_signed_rank([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert 0 < wilcoxon_signed_rank([1, 2, 2, 3, 3, 3], [0, 1, 1, 2, 2, 4]) < 1  # ties
    with pytest.raises(ValueError):
        paired_t([1, 2], [1])


def test_paired_bootstrap_ci():
    x = [0.6, 0.7, 0.8, 0.5, 0.9, 0.6, 0.7, 0.8]
    y = [0.5, 0.6, 0.6, 0.5, 0.7, 0.6, 0.5, 0.7]
    mean, lo, hi = paired_bootstrap_ci(x, y, seed=1)
    assert mean == pytest.approx(0.1125) and lo < mean < hi and lo > 0
    assert paired_bootstrap_ci(x, y, seed=1) == (mean, lo, hi)


def test_stars():
    assert [stars(p) for p in (0.0005, 0.005, 0.04, 0.2)] == ["***", "**", "*", ""]


@pytest.mark.parametrize("k1, n1, k2, n2, lo, hi", [
    # Newcombe (1998), Table II, method 10, examples (a)-(h).
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090),
    (6, 7, 2, 7, 0.0582, 0.8062), (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775), (0, 10, 0, 10, -0.2775, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0), (10, 10, 0, 10, 0.6075, 1.0),
])
def test_newcombe_matches_published_examples(k1, n1, k2, n2, lo, hi):
    got = stats.newcombe_interval(k1, n1, k2, n2)
    assert got == (pytest.approx(lo, abs=1e-4), pytest.approx(hi, abs=1e-4))


def test_newcombe_edges():
    assert stats.newcombe_interval(3, 5, 0, 0) == (-1.0, 1.0)
    with pytest.raises(ValueError):
        stats.newcombe_interval(6, 5, 1, 5)


# --- intervals over tasks (tests/eval/test_interval_coverage.py simulates their coverage) -------

import numpy as np


def _cluster_robust_statsmodels(a, b):
    """Reference: OLS of the outcome on the run, cluster-robust covariance with tasks as clusters
    (statsmodels, CR1 with its small-sample factors G/(G-1) (N-1)/(N-K)): (difference, se)."""
    import statsmodels.api as sm

    tasks = np.broadcast_to(np.arange(a.shape[0])[:, None], a.shape)
    y = np.r_[a[~np.isnan(a)], b[~np.isnan(b)]]
    run = np.r_[np.ones(int((~np.isnan(a)).sum())), np.zeros(int((~np.isnan(b)).sum()))]
    groups = np.r_[tasks[~np.isnan(a)], tasks[~np.isnan(b)]]
    fit = sm.OLS(y, sm.add_constant(run)).fit(cov_type="cluster", cov_kwds={"groups": groups})
    n = len(y)
    return fit.params[1], fit.bse[1] * math.sqrt((n - 2) / (n - 1))  # G/(G-1) only, as ours


def test_clustered_difference_matches_statsmodels_cluster_robust():
    from scipy.stats import t as student_t

    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(30):
        tasks, trials = rng.integers(3, 12), rng.integers(2, 9)
        p = rng.uniform(0.05, 0.95, size=(tasks, 1))
        a = (rng.random((tasks, trials)) < p) * 1.0
        b = (rng.random((tasks, trials)) < np.clip(p + rng.normal(0, 0.3, p.shape), 0, 1)) * 1.0
        a[rng.random(a.shape) < 0.1] = np.nan  # unequal trial counts
        a[0, 0], b[0, 0], b[1, 0] = 1.0, 1.0, 0.0  # statsmodels needs some variance
        est, lo, hi = stats.clustered_difference_interval(a, b)
        ref, se = _cluster_robust_statsmodels(a, b)
        assert est == pytest.approx(ref, abs=1e-12)
        half = student_t.ppf(0.975, tasks - 1) * se
        assert hi - lo >= min(1, est + half) - max(-1, est - half) - 1e-9  # never narrower
        if hi - lo > 2 * half + 1e-9 or not -1 < est - half < est + half < 1:
            continue  # truncated at the trial-level variance, or clipped to [-1, 1]
        assert (lo, hi) == (pytest.approx(est - half, abs=1e-9),
                            pytest.approx(est + half, abs=1e-9))
        checked += 1
    assert checked >= 10


def test_clustered_difference_by_tasks_is_the_paired_t_interval():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(5)
    a = (rng.random((8, 4)) < rng.uniform(0.2, 0.9, (8, 1))) * 1.0
    b = (rng.random((8, 4)) < 0.3) * 1.0
    est, lo, hi = stats.clustered_difference_interval(a, b, weights="tasks")
    ci = ttest_rel(a.mean(1), b.mean(1)).confidence_interval()
    assert est == pytest.approx(a.mean() - b.mean())
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))


@pytest.mark.parametrize("a_rows, b_rows", [
    ([[0, 0]] * 3, [[0, 0]] * 3),  # 0 vs 0 everywhere
    ([[1, 1]] * 3, [[1, 0]] * 3),  # +50 on each task
    ([[1, 1]] * 3, [[1, 1]] * 3),  # n/n vs n/n
    ([[1, 1], [0, 0], [1, 1]], [[1, 1], [0, 0], [1, 1]]),  # greedy: constant within tasks
    ([[1, 1, 1]] * 4, [[0, 0, 0]] * 4),  # +100 on each task
])
def test_clustered_difference_never_collapses(a_rows, b_rows):
    a, b = np.array(a_rows, dtype=float), np.array(b_rows, dtype=float)
    est, lo, hi = stats.clustered_difference_interval(a, b)
    assert lo <= est <= hi and hi - lo > 0.1
    assert -1.0 <= lo and hi <= 1.0


def test_clustered_difference_zero_vs_zero_is_centred_on_zero():
    zeros = np.zeros((3, 2))
    est, lo, hi = stats.clustered_difference_interval(zeros, zeros)
    assert est == 0.0 and lo == pytest.approx(-hi) and hi > 0.1


def test_clustered_difference_errors():
    one = np.ones((1, 4))
    with pytest.raises(ValueError, match="two tasks"):
        stats.clustered_difference_interval(one, one)
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        stats.clustered_difference_interval(np.full((2, 2), 0.5), np.ones((2, 2)))
    with pytest.raises(ValueError, match="weights"):
        stats.clustered_difference_interval(np.ones((2, 2)), np.ones((2, 2)), weights="x")
    with pytest.raises(ValueError, match="at least one episode"):
        stats.clustered_difference_interval(np.full((2, 2), np.nan), np.ones((2, 2)))
    with pytest.raises(ValueError, match="one shape"):
        stats.clustered_difference_interval(np.ones((2, 2)), np.ones((2, 3)))


def test_clustered_wilson():
    from scipy.stats import norm
    from scipy.stats import t as student_t
    from statsmodels.stats.proportion import proportion_confint

    # one task: the trials are the sample, plain Wilson
    assert stats.clustered_wilson_interval([3], [10]) == pytest.approx(wilson_interval(3, 10))
    # worked by hand: tasks 0/4, 2/4, 4/4 -> p = 1/2, v = 3/2 * 2 * (2/12)^2 = 1/12,
    # deff = (1/12) / (1/48) = 4, n_eff = 12 / 4 * (z / t_2)^2
    n_eff = 3 * (norm.ppf(0.975) / student_t.ppf(0.975, 2)) ** 2
    expected = proportion_confint(0.5 * n_eff, n_eff, method="wilson")
    assert stats.clustered_wilson_interval([0, 2, 4], [4, 4, 4]) == pytest.approx(expected)
    # never of zero width at 0/N and N/N; never narrower than Wilson on the pooled trials
    lo, hi = stats.clustered_wilson_interval([0, 0, 0], [2, 2, 2])
    assert lo == 0.0 and hi > 0.2
    lo, hi = stats.clustered_wilson_interval([2, 2, 2], [2, 2, 2])
    assert hi == 1.0 and lo < 0.8
    pooled = wilson_interval(5, 30)
    lo, hi = stats.clustered_wilson_interval([1, 2, 1, 0, 1, 0], [5] * 6)
    assert lo <= pooled[0] and hi >= pooled[1]
    assert stats.clustered_wilson_interval([0, 0], [0, 0]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.clustered_wilson_interval([3, 1], [2, 2])


def test_paired_t_interval():
    from scipy.stats import ttest_rel

    x, y = [0.6, 0.7, 0.8, 0.5, 0.9], [0.5, 0.6, 0.6, 0.5, 0.7]
    mean, lo, hi = stats.paired_t_interval(x, y)
    ci = ttest_rel(x, y).confidence_interval()
    assert mean == pytest.approx(0.12)
    assert (lo, hi) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert stats.paired_t_interval([2, 3, 4], [1, 2, 3]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        stats.paired_t_interval([1.0], [2.0])


def test_paired_permutation_is_exact_sign_flip_enumeration():
    import itertools

    import numpy as np

    from tracetune.stats import paired_permutation

    rng = np.random.default_rng(3)
    for _ in range(5):
        x, y = list(rng.integers(0, 9, 8) / 8), list(rng.integers(0, 9, 8) / 8)
        d = np.subtract(x, y)
        observed = abs(d.mean())
        flips = [abs((d * np.array(s)).mean()) for s in itertools.product((1, -1), repeat=8)]
        brute = np.mean([f >= observed - 1e-12 for f in flips])
        assert paired_permutation(x, y) == pytest.approx(brute)
    assert paired_permutation([0.5] * 4, [0.5] * 4) == 1.0
    assert paired_permutation([1.0] * 5, [0.0] * 5) == pytest.approx(2 / 32)  # floor at n = 5


def test_paired_permutation_holds_its_size_when_trials_cluster_in_tasks():
    """Null runs: per-task rates vary a lot, trials of a task share them, no arm effect. The
    sign-flip test over tasks rejects about 5%; Fisher on pooled trials rejects far more."""
    import numpy as np

    from tracetune.stats import fisher_exact, paired_permutation

    rng = np.random.default_rng(7)
    n_sims, tasks, trials = 1000, 8, 8
    perm_rejects = fisher_rejects = 0
    for _ in range(n_sims):
        rates = rng.beta(0.5, 0.5, tasks)
        a = rng.binomial(trials, rates) / trials
        # the adapted arm: the same tasks, a task-level shock with mean 0 (no true difference)
        shock = np.clip(rates + rng.normal(0, 0.25, tasks), 0, 1)
        b = rng.binomial(trials, shock) / trials
        perm_rejects += paired_permutation(list(b), list(a), max_exact=tasks) < 0.05
        k1, k2 = int(round(b.sum() * trials)), int(round(a.sum() * trials))
        fisher_rejects += fisher_exact(k1, tasks * trials, k2, tasks * trials) < 0.05
    assert perm_rejects / n_sims <= 0.075
    assert fisher_rejects / n_sims > perm_rejects / n_sims
