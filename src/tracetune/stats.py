"""Small pure statistical functions. Each docstring gives its formula."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    With p = k/n and z the two-sided normal quantile for `confidence`:
        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z * sqrt(p(1-p)/n + z^2 / (4n^2)) / (1 + z^2 / n)
        interval = [centre - half, centre + half]
    Well behaved at k = 0 and k = n, unlike the normal (Wald) interval. n = 0 gives (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the difference of two independent proportions d = k1/n1 - k2/n2 (Newcombe
    1998, method 10, built from the two Wilson intervals [l1, u1] and [l2, u2]):
        lower = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
        upper = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)
    Stays within [-1, 1] and behaves at 0/n and n/n. An empty side gives (-1, 1).
    """
    _check(k1, n1)
    _check(k2, n2)
    if n1 == 0 or n2 == 0:
        return -1.0, 1.0
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    return (max(-1.0, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)),
            min(1.0, d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed (Chen et al., 2021):
        pass@k = 1 - C(n - c, k) / C(n, k)
    computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i) for numerical stability.
    """
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _normal_quantile(q: float) -> float:
    """Inverse standard normal CDF (scipy-free; statistics.NormalDist is exact to double)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(q)


def fisher_exact(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided Fisher's exact test p-value for successes k1/n1 vs k2/n2.

    The 2x2 table [[k1, n1-k1], [k2, n2-k2]] with fixed margins is hypergeometric:
        P(a) = C(K, a) C(N-K, n1-a) / C(N, n1),   K = k1 + k2, N = n1 + n2
    p = sum of P(a) over every a with P(a) <= P(k1) (scipy's two-sided definition).
    """
    from scipy.stats import fisher_exact as _fisher

    _check(k1, n1)
    _check(k2, n2)
    return float(_fisher([[k1, n1 - k1], [k2, n2 - k2]], alternative="two-sided").pvalue)


def cohens_h(p1: float, p2: float) -> float:
    """Cohen's h effect size between two proportions: h = 2 asin(sqrt(p1)) - 2 asin(sqrt(p2)).
    |h| ~ 0.2 small, 0.5 medium, 0.8 large."""
    for p in (p1, p2):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"proportions must be within [0, 1], got {p}")
    return 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2))


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact McNemar test for paired outcomes (same task and trial under A and B).

    Only discordant pairs count: b = A passed and B failed, c = B passed and A failed. Under H0
    each discordant pair goes either way with probability 1/2, so
        p = min(1, 2 * P(X <= min(b, c))),  X ~ Binomial(b + c, 1/2);  p = 1 when b + c = 0.
    """
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be >= 0")
    n = a_only + b_only
    if n == 0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, 2 * binom.cdf(min(a_only, b_only), n, 0.5)))


def wilcoxon_signed_rank(x: list[float], y: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value for paired per-task metrics x_i vs y_i.

    d_i = x_i - y_i, zero differences dropped (Wilcoxon's method); W = sum of the ranks of |d_i|
    with positive sign; exact null distribution for small samples without ties, normal
    approximation otherwise (scipy's defaults). All differences zero gives p = 1.
    """
    from scipy.stats import wilcoxon

    _paired(x, y)
    if all(a == b for a, b in zip(x, y)):
        return 1.0
    return float(wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_t(x: list[float], y: list[float]) -> float:
    """Two-sided paired t-test p-value: t = mean(d) / (sd(d) / sqrt(n)), d = x - y, n - 1
    degrees of freedom. Identical samples give p = 1; constant non-zero differences give p = 0."""
    from scipy.stats import ttest_rel

    _paired(x, y)
    d = [a - b for a, b in zip(x, y)]
    if all(v == d[0] for v in d):
        return 1.0 if d[0] == 0 else 0.0
    return float(ttest_rel(x, y).pvalue)


def paired_bootstrap_ci(x: list[float], y: list[float], *, n_boot: int = 10_000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of d = x - y with a percentile bootstrap interval: resample the pairs (not x and y
    separately) n_boot times with replacement, take the mean of d each time, and report the
    (1-c)/2 and (1+c)/2 quantiles. Returns (mean, low, high); seeded, so reproducible."""
    import numpy as np

    _paired(x, y)
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(d.mean()), float(lo), float(hi)


def stars(p: float) -> str:
    """Significance stars: *** p < 0.001, ** p < 0.01, * p < 0.05, else ''."""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _check(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= successes <= n, got {k}/{n}")


def _paired(x, y) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"paired samples need equal, non-zero lengths ({len(x)} vs {len(y)})")
