"""Coverage of every interval tracetune prints, simulated under no true difference.

Each test draws SIMS data sets with a fixed seed, computes the 95% interval the project prints for
each, and counts how often it misses the truth (non-coverage; nominal 5%). With 2,000 simulations
the standard error of a 5% rate is 0.49pp, so a correct interval stays below UPPER = 7.5% (5 SE
above nominal) while the fault this replaced (8-16%, and 15-30% for a pooled Wilson interval of
clustered trials) does not: `test_the_band_catches_the_old_intervals` checks that. Methods that are
conservative by design (few tasks: Student's t with G-1 df; Newcombe's interval with few trials)
only have an upper bound; a lower bound LOWER = 1.5% (catching an interval so wide it is useless)
is asserted where the method is close to nominal. `pytest -s` prints the rates.
"""

from __future__ import annotations

import numpy as np
import pytest

from tracetune import stats

SIMS = 2_000
UPPER, LOWER = 0.075, 0.015
RATES = np.array([0.1, 0.3, 0.5, 0.7, 0.9])


def _miss(lo, hi, truth) -> float:
    return float(np.mean((np.asarray(lo) > truth) | (np.asarray(hi) < truth)))


def _report(kind: str, config: str, miss: float, width) -> None:
    print(f"{kind:<34} {config:<22} non-coverage {100 * miss:4.1f}%   "
          f"median width {100 * float(np.median(width)):5.1f}pp")


def _two_runs(rng, tasks: int, trials: int, design: str):
    """(SIMS, tasks, trials) 0/1 outcomes of two runs with no true difference (on average over
    tasks: the tasks are the sample)."""
    shape = (SIMS, tasks, trials)
    if design == "shared rates":  # both runs draw from the same per-task rates (the case's sim)
        p = rng.choice(RATES, size=(SIMS, tasks, 1))
        return (rng.random(shape) < p) * 1.0, (rng.random(shape) < p) * 1.0
    if design == "same seeds":  # as shared, and a (task, trial) pair shares its sampling seed
        p = rng.choice(RATES, size=(SIMS, tasks, 1))
        u = rng.random(shape)
        v = np.where(rng.random(shape) < 0.6, u, rng.random(shape))
        return (u < p) * 1.0, (v < p) * 1.0
    if design == "task effects":  # the runs differ task by task, by zero on average
        p = rng.uniform(0.3, 0.7, size=(SIMS, tasks, 1))
        e = rng.choice([-0.2, 0.2], size=p.shape) * rng.random(p.shape)
        return (rng.random(shape) < p + e) * 1.0, (rng.random(shape) < p - e) * 1.0
    if design == "missing episodes":  # shared rates, a fifth of the episodes never finished
        p = rng.choice(RATES, size=(SIMS, tasks, 1))
        a, b = (rng.random(shape) < p) * 1.0, (rng.random(shape) < p) * 1.0
        a[rng.random(shape) < 0.2] = np.nan
        b[rng.random(shape) < 0.2] = np.nan
        a[:, 0, 0] = b[:, 0, 0] = 1.0  # every run keeps at least one episode
        return a, b
    if design == "constant in tasks":  # greedy decoding: every trial of a task alike
        q = rng.uniform(0.2, 0.8, size=(SIMS, tasks, 1))
        a = (rng.random((SIMS, tasks, 1)) < q) * np.ones(shape)
        b = (rng.random((SIMS, tasks, 1)) < q) * np.ones(shape)
        return a, b
    raise ValueError(design)


OVERALL = [(3, 2), (5, 4), (10, 2), (15, 8), (20, 8)]
DESIGNS = ["shared rates", "same seeds", "task effects", "missing episodes",
           "constant in tasks"]


@pytest.mark.parametrize("design", DESIGNS)
def test_overall_difference(design):
    """`tracetune compare`'s overall success delta: tasks x trials, both runs on the same tasks."""
    rng = np.random.default_rng(7)
    for tasks, trials in OVERALL:
        a, b = _two_runs(rng, tasks, trials, design)
        for weights in ("trials", "tasks"):  # pooled success delta; the share of runs that write
            est, lo, hi = stats.clustered_difference_interval(a, b, weights=weights)
            miss = _miss(lo, hi, 0.0)
            _report(f"overall Δ ({design}, {weights})", f"{tasks} tasks x {trials}", miss,
                    hi - lo)
            assert np.all(hi - lo > 0.05), "an interval collapsed"
            assert np.all((lo <= est) & (est <= hi))
            assert miss <= UPPER, (tasks, trials, miss)
            if tasks >= 15 and design in ("shared rates", "task effects"):
                assert miss >= LOWER, (tasks, trials, miss)


@pytest.mark.parametrize("rates, truth", [("uniform 0.1..0.9", 0.5), ("beta(1, 4)", 0.2)])
def test_overall_rate(rates, truth):
    """A run's overall success rate over tasks (`tracetune eval` tables, compare's overall row):
    tasks drawn at random, so the truth is the mean rate of the task population."""
    rng = np.random.default_rng(11)
    for tasks, trials in OVERALL + [(20, 1)]:
        if rates == "beta(1, 4)":
            p = rng.beta(1, 4, size=(SIMS, tasks))
        else:
            p = rng.choice(RATES, size=(SIMS, tasks))
        k = rng.binomial(trials, p)
        lo, hi = stats.clustered_wilson_interval(k, np.full_like(k, trials))
        miss = _miss(lo, hi, truth)
        _report(f"overall rate ({rates})", f"{tasks} tasks x {trials}", miss, hi - lo)
        assert np.all(hi - lo > 0.01)
        assert miss <= UPPER, (tasks, trials, miss)


@pytest.mark.parametrize("trials", [2, 4, 8, 20])
def test_per_task_rate(trials):
    """One task's success rate (independent trials): Wilson's interval, rates uniform."""
    rng = np.random.default_rng(13)
    p = rng.uniform(0, 1, SIMS)
    k = rng.binomial(trials, p)
    table = np.array([stats.wilson_interval(x, trials) for x in range(trials + 1)])
    bounds = table[k]  # (SIMS, 2): the project's interval for each simulated count
    miss = float(np.mean((bounds[:, 0] > p) | (bounds[:, 1] < p)))
    _report("per-task rate (Wilson)", f"{trials} trials", miss, bounds[:, 1] - bounds[:, 0])
    assert np.all(bounds[:, 1] > bounds[:, 0])
    assert LOWER <= miss <= UPPER, miss


@pytest.mark.parametrize("trials", [2, 4, 8, 20])
def test_per_task_difference(trials):
    """One task, run A minus run B with the same rate: Newcombe's interval (with few trials its
    coverage swings with the handful of possible outcomes: a lower bound only at 20)."""
    rng = np.random.default_rng(17)
    p = rng.uniform(0, 1, SIMS)
    k1, k2 = rng.binomial(trials, p), rng.binomial(trials, p)
    table = np.array([[stats.newcombe_interval(x, trials, y, trials) for y in range(trials + 1)]
                      for x in range(trials + 1)])
    bounds = table[k1, k2]
    miss = _miss(bounds[:, 0], bounds[:, 1], 0.0)
    _report("per-task Δ (Newcombe)", f"{trials} trials", miss, bounds[:, 1] - bounds[:, 0])
    assert np.all(bounds[:, 1] > bounds[:, 0])
    assert miss <= UPPER, miss
    if trials >= 20:
        assert miss >= LOWER, miss


@pytest.mark.parametrize("tasks", [3, 5, 10, 20])
def test_per_task_mean_metric(tasks):
    """Attempts, duration, tokens...: per-task means of a skewed metric (log-normal durations,
    task-to-task differences shared by both runs), paired t interval over tasks (conservative
    with few tasks for such long-tailed differences: a lower bound only at 20 tasks)."""
    rng = np.random.default_rng(19)
    sims, trials = 1_000, 4  # scipy call per data set: 1,000 keep this fast
    mu = rng.normal(0, 1, size=(sims, tasks, 1))
    x = rng.lognormal(mu, 0.8, size=(sims, tasks, trials)).mean(-1)
    y = rng.lognormal(mu, 0.8, size=(sims, tasks, trials)).mean(-1)
    bounds = np.array([stats.paired_t_interval(list(xi), list(yi))[1:] for xi, yi in zip(x, y)])
    miss = _miss(bounds[:, 0], bounds[:, 1], 0.0)
    _report("per-task means Δ (paired t)", f"{tasks} tasks x {trials}", miss,
            bounds[:, 1] - bounds[:, 0])
    assert miss <= 0.085, miss  # 1,000 simulations: SE 0.7pp; t is conservative for few tasks
    if tasks >= 20:
        assert miss >= LOWER, miss


def _percentile_bootstrap_over_tasks(a, b, rng, boot: int = 1_000):
    """The interval this release replaced: per-task deltas, resampled tasks, percentile."""
    d = a.mean(-1) - b.mean(-1)  # (SIMS, T)
    idx = rng.integers(0, d.shape[1], size=(boot, d.shape[1]))
    means = d[:, idx].mean(-1)  # (SIMS, boot)
    return np.quantile(means, 0.025, axis=1), np.quantile(means, 0.975, axis=1)


def test_the_band_catches_the_old_intervals():
    """The bound above fails the intervals this release replaced: the percentile bootstrap over
    tasks for the overall delta, and Wilson's interval on pooled trials for the overall rate."""
    rng = np.random.default_rng(23)
    a, b = _two_runs(rng, 5, 4, "shared rates")
    lo, hi = _percentile_bootstrap_over_tasks(a, b, rng)
    old_delta = _miss(lo, hi, 0.0)
    _report("old overall Δ (bootstrap)", "5 tasks x 4", old_delta, hi - lo)
    assert old_delta > UPPER and np.mean(hi - lo == 0) > 0
    from statsmodels.stats.proportion import proportion_confint

    k = rng.binomial(8, rng.choice(RATES, size=(SIMS, 15))).sum(-1)
    lo, hi = proportion_confint(k, 15 * 8, method="wilson")
    old_rate = _miss(lo, hi, 0.5)
    _report("old overall rate (pooled Wilson)", "15 tasks x 8", old_rate, hi - lo)
    assert old_rate > UPPER
