"""How often does each 95% interval tracetune prints miss the truth when there is no difference?

Simulates null data sets (fixed seed) and prints, side by side, the non-coverage (nominal 5%), the
median width and the share of zero-width intervals of the interval this release prints and of the
one the previous release printed, measured in the same run:

    overall delta   cluster-robust over tasks (stats.clustered_difference_interval)
                    vs a percentile bootstrap of per-task deltas over tasks (the old compare)
                    and Newcombe on pooled counts (for reference: it ignores the clustering)
    overall rate    Wilson with the clustered trials' effective size (clustered_wilson_interval)
                    vs Wilson on the pooled trials (the old eval table's overall row)
    per-task means  paired t over tasks (paired_t_interval) vs the percentile bootstrap
    per task        Wilson (one run) and Newcombe (two runs): unchanged methods, now statsmodels'

Designs for the overall delta: "shared rates" (both runs draw from the same per-task rates, as
../shared/cases/07_bootstrap_ci_zero_width/coverage_sim.py), "same seeds" (a (task, trial) pair
shares its sampling seed), "task effects" (the runs differ task by task, by zero on average over
tasks: the tasks are the sample), "constant in tasks" (greedy decoding). tests/eval/
test_interval_coverage.py asserts the bounds; this prints the figures. Takes about a minute:

    python benchmarks/interval_coverage.py [--sims 2000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tracetune import stats

RATES = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
SIZES = [(3, 2), (5, 4), (10, 2), (10, 8), (15, 8), (20, 8)]


def two_runs(rng, sims: int, tasks: int, trials: int, design: str):
    shape = (sims, tasks, trials)
    p = rng.choice(RATES, size=(sims, tasks, 1))
    if design == "shared rates":
        return (rng.random(shape) < p) * 1.0, (rng.random(shape) < p) * 1.0
    if design == "same seeds":
        u = rng.random(shape)
        v = np.where(rng.random(shape) < 0.6, u, rng.random(shape))
        return (u < p) * 1.0, (v < p) * 1.0
    if design == "task effects":
        p = rng.uniform(0.3, 0.7, size=(sims, tasks, 1))
        e = rng.choice([-0.2, 0.2], size=p.shape) * rng.random(p.shape)
        return (rng.random(shape) < p + e) * 1.0, (rng.random(shape) < p - e) * 1.0
    q = rng.uniform(0.2, 0.8, size=(sims, tasks, 1))  # constant in tasks
    return ((rng.random(q.shape) < q) * np.ones(shape), (rng.random(q.shape) < q) * np.ones(shape))


def cell(lo, hi, truth, unit: str = "pp") -> str:
    """non-coverage, median width (pp of a rate, or the metric's unit), share of zero width."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    miss = np.mean((lo > truth) | (hi < truth))
    zero = np.mean(hi - lo <= 1e-12)
    width = np.median(hi - lo) * (100 if unit == "pp" else 1)
    return f"{100 * miss:5.1f}% {width:5.{0 if unit == 'pp' else 2}f}{unit:<2} {100 * zero:3.0f}%"


def row(*cells: str) -> str:
    return "".join(f"{c:<22}" for c in cells)


def old_bootstrap(x, y) -> tuple[list[float], list[float]]:
    """The previous release's interval, through the function it called."""
    out = [stats.paired_bootstrap_ci(list(a), list(b), n_boot=2_000, seed=0)
           for a, b in zip(x, y)]
    return [o[1] for o in out], [o[2] for o in out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2_000)
    sims = parser.parse_args().sims
    rng = np.random.default_rng(2024)
    head = "miss  width zero"
    print(f"{sims} simulated null data sets per row; cells: non-coverage (nominal 5%), median "
          "width, share of zero-width intervals\n")

    print("overall success delta (`tracetune compare`); new | old bootstrap over tasks | "
          "Newcombe on pooled counts")
    print(row("design", "tasks x trials", head, head, head))
    for design in ("shared rates", "same seeds", "task effects", "constant in tasks"):
        for tasks, trials in SIZES:
            a, b = two_runs(rng, sims, tasks, trials, design)
            _, lo, hi = stats.clustered_difference_interval(a, b)
            blo, bhi = old_bootstrap(a.mean(-1), b.mean(-1))
            from statsmodels.stats.proportion import confint_proportions_2indep

            n = tasks * trials
            nlo, nhi = confint_proportions_2indep(a.sum((1, 2)), n, b.sum((1, 2)), n,
                                                  method="newcomb")
            print(row(design, f"{tasks} x {trials}", cell(lo, hi, 0), cell(blo, bhi, 0),
                      cell(nlo, nhi, 0)))

    print("\noverall success rate (eval tables; tasks drawn at random, truth = the population's "
          "mean rate); new | old Wilson on pooled trials")
    print(row("rates", "tasks x trials", head, head))
    from statsmodels.stats.proportion import proportion_confint

    for name, truth in (("uniform 0.1..0.9", 0.5), ("beta(1, 4)", 0.2)):
        for tasks, trials in SIZES + [(20, 1)]:
            p = rng.choice(RATES, size=(sims, tasks)) if truth == 0.5 else \
                rng.beta(1, 4, size=(sims, tasks))
            k = rng.binomial(trials, p)
            lo, hi = stats.clustered_wilson_interval(k, np.full_like(k, trials))
            plo, phi = proportion_confint(k.sum(-1), tasks * trials, method="wilson")
            print(row(name, f"{tasks} x {trials}", cell(lo, hi, truth), cell(plo, phi, truth)))

    print("\nper-task means of a skewed metric (log-normal durations, s), 4 trials per task; "
          "new paired t | old bootstrap over tasks")
    print(row("", "tasks", head, head))
    for tasks in (3, 5, 10, 20):
        mu = rng.normal(0, 1, size=(sims // 2, tasks, 1))
        x = rng.lognormal(mu, 0.8, size=(sims // 2, tasks, 4)).mean(-1)
        y = rng.lognormal(mu, 0.8, size=(sims // 2, tasks, 4)).mean(-1)
        t = np.array([stats.paired_t_interval(list(a), list(b))[1:] for a, b in zip(x, y)])
        blo, bhi = old_bootstrap(x, y)
        print(row("", str(tasks), cell(t[:, 0], t[:, 1], 0, "s"), cell(blo, bhi, 0, "s")))

    print("\none task (independent trials, rates uniform); Wilson (one run) | Newcombe (two runs "
          "with one rate)")
    print(row("", "trials", head, head))
    for trials in (2, 4, 8, 20):
        p = rng.uniform(0, 1, sims)
        k1, k2 = rng.binomial(trials, p), rng.binomial(trials, p)
        w = np.array([stats.wilson_interval(x, trials) for x in range(trials + 1)])[k1]
        nc = np.array([[stats.newcombe_interval(x, trials, y, trials) for y in range(trials + 1)]
                       for x in range(trials + 1)])[k1, k2]
        # Wilson's truth differs per data set: shift each interval by its own rate
        print(row("", str(trials), cell(w[:, 0] - p, w[:, 1] - p, 0), cell(nc[:, 0], nc[:, 1], 0)))


if __name__ == "__main__":
    main()
