"""Small pure statistical functions. Each docstring gives its formula and its source.

The intervals tracetune prints, by what they describe:
  one task's success rate (independent trials)          wilson_interval
  a success rate over several tasks (clustered trials)  clustered_wilson_interval
  one task, run A minus run B                           newcombe_interval
  several tasks, run A minus run B (paired by task)     clustered_difference_interval
  per-task means of a metric, run A minus run B         paired_t_interval
tests/eval/test_interval_coverage.py checks each by simulation under no true difference.
"""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n of n independent trials (Wilson 1927;
    recommended over the normal (Wald) interval by Brown, Cai & DasGupta 2001, Statist. Sci. 16).

    With p = k/n and z the two-sided normal quantile for `confidence`:
        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z * sqrt(p(1-p)/n + z^2 / (4n^2)) / (1 + z^2 / n)
        interval = [centre - half, centre + half]
    Computed by statsmodels' `proportion_confint(method="wilson")`. Never of zero width: 0/n
    gives [0, u] with u > 0, n/n gives [l < 1, 1]. n = 0 gives (0, 1). Returns (low, high) as
    fractions. Raises ValueError unless 0 <= successes <= n.
    """
    from statsmodels.stats.proportion import proportion_confint

    _check(successes, n)
    if n == 0:
        return 0.0, 1.0
    lo, hi = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    # exact ends at 0/n and n/n (statsmodels' arithmetic leaves 1e-16 off them)
    return (0.0 if successes == 0 else float(lo)), (1.0 if successes == n else float(hi))


def clustered_wilson_interval(successes, trials, confidence: float = 0.95):
    """Interval for an overall success rate p = K/N whose trials are clustered in tasks (several
    trials of one task are correlated; the tasks are the sample).

    successes, trials: per-task counts k_t and n_t, shape (..., T); leading axes are independent
    data sets (simulations), tasks with n_t = 0 are ignored. Returns (low, high) as fractions,
    each of shape (...), floats for one data set. With fewer than two tasks the trials are the
    only sample: the plain Wilson interval. N = 0 gives (0, 1). Raises ValueError for counts
    with k_t < 0 or k_t > n_t.

    Wilson's interval with the effective sample size of a clustered sample (Korn & Graubard 1998,
    Survey Methodology 24:193-201; with Wilson's interval as compared by Franco, Little, Louis &
    Slud 2019, J. Survey Statist. Methodol. 7:334-364), G tasks:
        v     = G/(G-1) * sum_t ((k_t - p n_t) / N)^2        cluster-robust (CR1) variance of p
        deff  = max(1, v / (p(1-p)/N))                       1 when p is 0 or 1
        n_eff = N / deff * (z / t_{G-1})^2                   t_{G-1}: Student quantile, G-1 df
        Wilson interval of p with n_eff trials (p n_eff successes).
    The design effect is truncated at 1 (never narrower than N independent trials) and the
    degrees of freedom are the tasks', so the interval is never of zero width and is
    conservative with few tasks (tests/eval/test_interval_coverage.py simulates it).
    """
    import numpy as np
    from scipy.stats import norm
    from scipy.stats import t as student_t
    from statsmodels.stats.proportion import proportion_confint

    k, n = np.asarray(successes, dtype=float), np.asarray(trials, dtype=float)
    if k.shape != n.shape or k.ndim == 0:
        raise ValueError(f"per-task successes and trials need one shape, got {k.shape}, {n.shape}")
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= successes <= trials for every task")
    big_n, big_k = n.sum(-1), k.sum(-1)
    g = (n > 0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(big_n > 0, big_k / big_n, 0.0)
        v = g / np.maximum(g - 1, 1) * (((k - p[..., None] * n) / big_n[..., None]) ** 2).sum(-1)
        v_binomial = p * (1 - p) / big_n
        deff = np.where(v_binomial > 0, v / v_binomial, 1.0)
    q = 0.5 + confidence / 2
    df_factor = np.where(g >= 2, (norm.ppf(q) / student_t.ppf(q, np.maximum(g - 1, 1))) ** 2, 1.0)
    n_eff = np.where(big_n > 0, big_n / np.maximum(deff, 1.0) * df_factor, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = proportion_confint(p * n_eff, n_eff, alpha=1 - confidence, method="wilson")
    # exact ends at 0/N and N/N (statsmodels' arithmetic leaves 1e-16 off them); N = 0: (0, 1)
    lo = np.where((big_n > 0) & (big_k > 0), np.clip(lo, 0.0, 1.0), 0.0)
    hi = np.where((big_n > 0) & (big_k < big_n), np.clip(hi, 0.0, 1.0), 1.0)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def newcombe_interval(k1: int, n1: int, k2: int, n2: int,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the difference of two independent proportions d = k1/n1 - k2/n2 (Newcombe
    1998, Statist. Med. 17:873-890, method 10, built from the two Wilson intervals [l1, u1] and
    [l2, u2]):
        lower = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
        upper = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)
    Computed by statsmodels' `confint_proportions_2indep(method="newcomb")`. Stays within
    [-1, 1], and is never of zero width (0/n vs 0/m gives [-l, u] with l, u > 0). An empty side
    gives (-1, 1). Returns (low, high) as fractions. Raises ValueError for counts outside
    0 <= k <= n.
    """
    from statsmodels.stats.proportion import confint_proportions_2indep

    _check(k1, n1)
    _check(k2, n2)
    if n1 == 0 or n2 == 0:
        return -1.0, 1.0
    lo, hi = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff",
                                        alpha=1 - confidence)
    return max(-1.0, float(lo)), min(1.0, float(hi))


def clustered_difference_interval(a, b, *, confidence: float = 0.95, weights: str = "trials"):
    """Difference of two success rates measured on the same tasks, several trials per task, with
    an interval that takes the tasks (and the trials within them) as the sample.

    a, b: outcomes of shape (..., T, M): T tasks, M trial slots, 1.0 success, 0.0 failure, NaN
    where there is no episode. a[..., t, i] and b[..., t, i] are a pair (the same task and trial,
    hence the same sampling seed) when both are present. Leading axes are independent data sets
    (simulations). weights: "trials" estimates sum(a)/count(a) - sum(b)/count(b), every trial
    counting once (the pooled difference `tracetune compare` prints); "tasks" estimates the mean
    over tasks of the per-task rates. Returns (estimate, low, high) as fractions, each of shape
    (...), floats for one data set. Raises ValueError for values other than 0, 1 and NaN, an
    arm with no episode, fewer than two tasks, or an unknown `weights`.

    With w the per-episode weights (summing to 1 in each arm), r_a = w_a (y_a - theta_a) and r_b
    likewise, G the number of tasks:
        theta   = sum(w_a y_a) - sum(w_b y_b)
        v_task  = G/(G-1) * sum_t (sum_i r_a[t,i] - r_b[t,i])^2
        v_trial = sum over pairs (t, i) of (r_a[t,i] - r_b[t,i])^2, after adding half a pseudo
                  pair of each kind (1,1), (1,0), (0,1), (0,0)
        interval = theta +- t_{G-1} * sqrt(max(v_task, v_trial)), clipped to [-1, 1]
    v_task is the cluster-robust (CR1) variance with tasks as clusters (Liang & Zeger 1986;
    Cameron & Miller 2015, J. Human Resources 50:317-372, with their recommended t_{G-1}
    critical value); with equal trial counts it is the paired t-test's variance of the per-task
    differences, so the same tasks in both runs cancel out. v_trial is the variance if the
    (task, trial) pairs were independent; the pseudo pairs are Agresti & Min's (2005, Statist.
    Med. 24:729-740) for matched pairs, and reduce to Agresti & Caffo's (2000) one success and
    one failure per arm for unpaired trials, so v_trial is never 0. Taking the larger never lets
    the design effect of the clustering fall below 1 (the truncation of Korn & Graubard 1998,
    and of the modified Hartung-Knapp interval, Roever, Knapp & Friede 2015, BMC Med. Res.
    Methodol. 15:99). Without it the interval collapses to a point whenever every task shows the
    same difference (0 vs 0 everywhere; +50 on each of three tasks), as the percentile bootstrap
    over tasks did. Coverage under no difference (tests/eval/test_interval_coverage.py,
    benchmarks/interval_coverage.py): with 10-20 tasks it misses 0 in 4-5% of data sets when the
    runs differ task by task, 2-3.5% when they differ in no task (the price of the truncation);
    with 3-5 tasks in under 2.5% (t_{G-1} is wide there).
    """
    # Written here: statsmodels' OLS cluster-robust covariance gives v_task (the tests check it
    # against statsmodels) but has no truncation at the trial-level variance, and fitting one
    # model per simulated data set would make the coverage tests slow.
    import numpy as np
    from scipy.stats import t as student_t

    if weights not in ("trials", "tasks"):
        raise ValueError(f"weights must be 'trials' or 'tasks', got {weights!r}")
    ya, yb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if ya.shape != yb.shape or ya.ndim < 2:
        raise ValueError(f"a and b need one shape (..., tasks, trials), got {ya.shape}, {yb.shape}")
    ma, mb = ~np.isnan(ya), ~np.isnan(yb)
    if np.any((ya[ma] != 0) & (ya[ma] != 1)) or np.any((yb[mb] != 0) & (yb[mb] != 1)):
        raise ValueError("outcomes must be 0, 1 or NaN")
    ya, yb = np.where(ma, ya, 0.0), np.where(mb, yb, 0.0)
    na, nb = ma.sum((-2, -1)), mb.sum((-2, -1))  # (...)
    g = (ma.any(-1) | mb.any(-1)).sum(-1)
    if np.any(na == 0) or np.any(nb == 0):
        raise ValueError("each arm needs at least one episode")
    if np.any(g < 2):
        raise ValueError("a clustered interval needs at least two tasks")

    def episode_weights(m):  # (..., T, M), summing to 1 over (T, M)
        if weights == "trials":
            return m / m.sum((-2, -1), keepdims=True)
        per_task = m.sum(-1, keepdims=True)
        tasks = (per_task > 0).sum(-2, keepdims=True)
        return np.where(m, 1.0 / np.maximum(per_task, 1) / tasks, 0.0)

    wa, wb = episode_weights(ma), episode_weights(mb)
    # clipped: rounding of the weights must not put a rate of 1 at 1 + 1e-16, outside its interval
    theta_a = np.clip((wa * ya).sum((-2, -1)), 0.0, 1.0)
    theta_b = np.clip((wb * yb).sum((-2, -1)), 0.0, 1.0)
    estimate = theta_a - theta_b
    r = wa * (ya - theta_a[..., None, None]) - wb * (yb - theta_b[..., None, None])
    v_task = g / (g - 1) * (r.sum(-1) ** 2).sum(-1)
    # trial level, on the data with the pseudo pairs added: real weights shrink by n/(n+2), each
    # of the four half pseudo pairs weighs 1/(n+2) in its arm
    sa, sb = na / (na + 2.0), nb / (nb + 2.0)
    pa, pb = 1.0 / (na + 2.0), 1.0 / (nb + 2.0)
    ta, tb = sa * theta_a + pa, sb * theta_b + pb  # one pseudo success per arm
    r = (sa[..., None, None] * wa * (ya - ta[..., None, None])
         - sb[..., None, None] * wb * (yb - tb[..., None, None]))
    v_trial = (r ** 2).sum((-2, -1))
    for xa, xb in ((1, 1), (1, 0), (0, 1), (0, 0)):
        v_trial = v_trial + 0.5 * (pa * (xa - ta) - pb * (xb - tb)) ** 2
    half = student_t.ppf(0.5 + confidence / 2, g - 1) * np.sqrt(np.maximum(v_task, v_trial))
    lo, hi = np.maximum(estimate - half, -1.0), np.minimum(estimate + half, 1.0)
    if estimate.ndim == 0:
        return float(estimate), float(lo), float(hi)
    return estimate, lo, hi


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


def paired_t_interval(x: list[float], y: list[float],
                      confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of the paired differences d = x - y with its Student t interval, the interval of the
    paired t-test (`paired_t`):
        mean(d) +- t_{n-1} * sd(d) / sqrt(n)
    Computed by scipy's `ttest_rel(x, y).confidence_interval()`. Exact for normal differences and
    close for per-task means of other metrics (tests/eval/test_interval_coverage.py simulates
    skewed ones). Equal differences give (d, d, d): a metric that did not vary (attempts of a
    single-attempt workflow); for shares of binary outcomes use `clustered_difference_interval`.
    Returns (mean, low, high) in the metric's unit. Raises ValueError for fewer than two pairs
    or unequal lengths.
    """
    from scipy.stats import ttest_rel

    _paired(x, y)
    if len(x) < 2:
        raise ValueError("a t interval needs at least two pairs")
    d = [a - b for a, b in zip(x, y)]
    mean = float(sum(d) / len(d))
    if all(v == d[0] for v in d):
        return float(d[0]), float(d[0]), float(d[0])
    ci = ttest_rel(x, y).confidence_interval(confidence_level=confidence)
    return mean, float(ci.low), float(ci.high)


def paired_bootstrap_ci(x: list[float], y: list[float], *, n_boot: int = 10_000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of d = x - y with a percentile bootstrap interval: resample the pairs (not x and y
    separately) n_boot times with replacement, take the mean of d each time, and report the
    (1-c)/2 and (1+c)/2 quantiles. Returns (mean, low, high); seeded, so reproducible.

    Not used for any interval tracetune prints: over few pairs it is too narrow (at 95% it
    excluded 0 in 6-14% of simulated null comparisons of 5-20 tasks, and in 9-30% for per-task
    means of 3-20 tasks) and it has zero width when every difference is equal.
    benchmarks/interval_coverage.py keeps it as the baseline it measures against."""
    import numpy as np

    _paired(x, y)
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(d.mean()), float(lo), float(hi)


def paired_permutation(x: list[float], y: list[float], *, max_exact: int = 16,
                       n_resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip randomization) test of mean(x - y) = 0, for
    per-task values of two arms measured on the same tasks (e.g. each task's success rate over
    its trials, with the same per-trial seeds under both arms).

    The unit is the task: trials of one task are correlated (same spec, same seeds), so a test
    that counts (task, trial) pairs as independent (Fisher, McNemar) overstates the evidence
    when a few tasks carry the difference. Under H0 each task's difference is as likely to have
    either sign, so the p-value is the share of the 2^n sign assignments whose |mean| reaches
    the observed one (Fisher 1935; Good, Permutation Tests, 2005, ch. 3). Computed by
    `scipy.stats.permutation_test(..., permutation_type="samples")`: exact for n <= max_exact
    tasks, else `n_resamples` random flips (seeded: reproducible; the p-value then includes the
    observed assignment, so it is never 0). All differences zero gives p = 1. With n tasks the
    smallest attainable p is 2 / 2^n (n = 5: 0.0625, so five tasks can never reach p < 0.05).
    Raises ValueError for unequal lengths or no pairs.
    """
    import numpy as np
    from scipy.stats import permutation_test

    _paired(x, y)
    if not x:
        raise ValueError("a permutation test needs at least one pair")
    d = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if not np.any(d):
        return 1.0
    exact = len(d) <= max_exact
    res = permutation_test((np.asarray(x, float), np.asarray(y, float)),
                           lambda a, b, axis: np.mean(a - b, axis=axis),
                           permutation_type="samples", vectorized=True,
                           n_resamples=np.inf if exact else n_resamples,
                           alternative="two-sided", random_state=seed)
    return float(min(1.0, res.pvalue))


def stars(p: float) -> str:
    """Significance stars: *** p < 0.001, ** p < 0.01, * p < 0.05, else ''."""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def _check(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= successes <= n, got {k}/{n}")


def _paired(x, y) -> None:
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"paired samples need equal, non-zero lengths ({len(x)} vs {len(y)})")
