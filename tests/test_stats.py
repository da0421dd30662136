import pytest

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
