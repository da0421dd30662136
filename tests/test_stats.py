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
