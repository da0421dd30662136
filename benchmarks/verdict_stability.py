"""How often would a loop's held-out verdict hold if the experiment were run again?

Reads a finished loop run (default runs/quickstart: `make demo`), takes the per-(task, trial)
outcomes of the base and adapted models on the held-out tasks, and draws B paired resamples:
tasks with replacement, and within each drawn task its trials with replacement (the same trial
indices for both models, which share per-trial seeds). For each resample it re-judges the
hypothesis "adapted raises held-out success by at least MIN_DELTA at p < ALPHA" with each test
tracetune offers for success rates, and prints how often each one says SUPPORTED next to the
verdict on the run itself. A test whose verdict holds in only about half of the resamples is one
whose verdict can flip between two runs of the same experiment; the bootstrap share estimates
the test's power at the effect the run observed (Efron & Tibshirani 1993, ch. 16; a resample is
a rerun whose tasks and sampling noise differ, not a rerun of the model on the same tasks).

    python benchmarks/verdict_stability.py [RUN] [--resamples 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tracetune.experiment.layout import RunLayout  # noqa: E402
from tracetune.stats import fisher_exact, mcnemar, paired_permutation  # noqa: E402
from tracetune.traces.store import Store  # noqa: E402


def outcomes(run: Path, tasks: list[str]) -> np.ndarray:
    """[task, trial] success (0/1) of a run's finished episodes on `tasks`."""
    store = Store(run)
    try:
        eps = store.episodes()
    finally:
        store.close()
    trials = 1 + max(e["trial"] for e in eps)
    out = np.full((len(tasks), trials), -1)
    index = {t: i for i, t in enumerate(tasks)}
    for e in eps:
        if e["task_id"] in index:
            out[index[e["task_id"]], e["trial"]] = int(e["success"])
    if (out < 0).any():
        raise SystemExit(f"{run}: not every held-out (task, trial) has a finished episode")
    return out


def verdicts(base: np.ndarray, adapted: np.ndarray, min_delta: float,
             alpha: float) -> dict[str, bool]:
    n = base.size
    delta = adapted.mean() - base.mean()
    a_only = int(((adapted == 1) & (base == 0)).sum())
    b_only = int(((adapted == 0) & (base == 1)).sum())
    p = {"fisher": fisher_exact(int(adapted.sum()), n, int(base.sum()), n),
         "mcnemar": mcnemar(b_only, a_only),
         "paired_permutation": paired_permutation(list(adapted.mean(axis=1)),
                                                  list(base.mean(axis=1)))}
    return {test: bool(delta >= min_delta - 1e-12 and pv < alpha) for test, pv in p.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "runs" / "quickstart"))
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-delta", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    layout = RunLayout(Path(args.run))
    results = json.loads(layout.results.read_text())
    tasks = results["split"]["heldout"]
    base, adapted = outcomes(layout.baseline, tasks), outcomes(layout.adapted, tasks)
    observed = verdicts(base, adapted, args.min_delta, args.alpha)
    rng = np.random.default_rng(args.seed)
    held = {test: 0 for test in observed}
    n_tasks, n_trials = base.shape
    for _ in range(args.resamples):
        rows = rng.integers(0, n_tasks, n_tasks)
        cols = rng.integers(0, n_trials, (n_tasks, n_trials))
        b = np.take_along_axis(base[rows], cols, axis=1)
        a = np.take_along_axis(adapted[rows], cols, axis=1)
        for test, ok in verdicts(b, a, args.min_delta, args.alpha).items():
            held[test] += ok
    print(f"{args.run}: {n_tasks} held-out tasks x {n_trials} trials; base "
          f"{100 * base.mean():.1f}%, adapted {100 * adapted.mean():.1f}%")
    print(f"H: adapted - base >= {100 * args.min_delta:.0f}pp at p < {args.alpha}; "
          f"{args.resamples} paired resamples of tasks and trials (seed {args.seed})")
    print(f"{'test':<20} {'on the run':>12} {'SUPPORTED in resamples':>24}")
    for test, ok in observed.items():
        print(f"{test:<20} {'SUPPORTED' if ok else 'NOT SUPP.':>12} "
              f"{100 * held[test] / args.resamples:>23.1f}%")


if __name__ == "__main__":
    main()
