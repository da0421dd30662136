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
