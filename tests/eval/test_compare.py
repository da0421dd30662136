"""`tracetune compare` on stores with known outcomes: every number checked against scipy."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as sps

from tracetune.errors import TracetuneError
from tracetune.eval.compare import compare, compare_dirs
from tracetune.traces.store import DB_NAME, RunInfo, Store


def _run(path: Path, outcomes: dict[str, list[int]], duration: float = 1.0) -> Path:
    path.mkdir(parents=True)
    store = Store(path / DB_NAME, create=True)
    store.create_run(RunInfo(path.name, 0.0, "funcs", "direct", "m", 0, 4, {}, {}))
    for task, results in outcomes.items():
        for trial, ok in enumerate(results):
            eid = store.start_episode(path.name, task, trial, "direct", trial)
            store.finish_episode(eid, success=bool(ok), wrong_tests=None, failed_step=None,
                                 n_attempts=1 if ok else 3, duration_s=duration + trial,
                                 prompt_tokens=10, completion_tokens=20 + 5 * ok, error=None)
    store.close()
    return path


BASE = {"t1": [1, 0, 0, 0, 0, 0], "t2": [0, 0, 0, 0, 0, 0], "t3": [1, 1, 0, 0, 1, 0]}
NEW = {"t1": [1, 1, 1, 0, 1, 1], "t2": [1, 0, 1, 0, 0, 0], "t3": [1, 1, 1, 1, 1, 0],
       "t4": [1, 1, 1, 1, 1, 1]}  # t4: only in the new run


def test_compare_matches_scipy(tmp_path):
    base, new = _run(tmp_path / "base", BASE), _run(tmp_path / "new", NEW, duration=2.0)
    comp = compare_dirs([base, new])
    assert comp.baseline == "base" and comp.models == ["new"]
    assert comp.excluded["new"] == ["t4"]
    overall = comp.overall("new")
    kb, ka, n = 4, 12, 18
    assert (overall.successes, overall.n) == (ka, n)
    assert overall.delta_success == pytest.approx((ka - kb) / n)
    assert overall.p_value == pytest.approx(sps.fisher_exact([[ka, n - ka], [kb, n - kb]])[1])
    # paired by (task, trial): new-only successes 8, base-only 0 -> exact binomial test
    assert overall.paired == 18
    assert overall.mcnemar_p == pytest.approx(sps.binomtest(0, 8, 0.5).pvalue)
    assert overall.delta_ci_low <= overall.delta_success <= overall.delta_ci_high
    t1 = next(r for r in comp.per_task("new") if r.task == "t1")
    assert (t1.success_rate, t1.baseline_rate) == (pytest.approx(5 / 6), pytest.approx(1 / 6))
    assert t1.p_value == pytest.approx(sps.fisher_exact([[5, 1], [1, 5]])[1])
    assert t1.delta_attempts == pytest.approx((1 * 5 + 3) / 6 - (1 + 3 * 5) / 6)
    duration = next(m for m in comp.metrics if m.metric == "duration_s")
    assert duration.delta == pytest.approx(1.0)  # every episode took 1 s longer
    assert duration.n_tasks == 3


def test_compare_errors(tmp_path):
    base = _run(tmp_path / "base", BASE)
    with pytest.raises(TracetuneError, match="not a run directory"):
        compare_dirs([base, tmp_path / "nope"])
    with pytest.raises(TracetuneError, match="baseline 'x' is not one of the runs"):
        compare({"a": [], "b": []}, "x")
    other = _run(tmp_path / "other", {"z": [1, 0]})
    with pytest.raises(TracetuneError, match="shares no task"):
        compare_dirs([base, other])


def test_compare_cli_json(tmp_path):
    base, new = _run(tmp_path / "base", BASE), _run(tmp_path / "new", NEW)
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, "-m", "tracetune.cli", "compare", str(base), str(new),
                        "--label", "A", "--label", "B", "--baseline", "A", "--json", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "B vs A" in r.stdout and "McNemar" in r.stdout
    data = json.loads(out.read_text())
    assert data["baseline"] == "A"
    row = next(x for x in data["results"] if x["model"] == "B" and x["task"] == "overall")
    for field in ("model", "task", "success_rate", "avg_attempts", "avg_duration",
                  "delta_success", "p_value", "cohens_h"):  # seed 000's ComparisonResult
        assert field in row
    r = subprocess.run([sys.executable, "-m", "tracetune.cli", "compare", str(base)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "at least two" in r.stderr


# --- intervals that must never collapse (tests/eval/test_interval_coverage.py: their coverage) ---

THREE = ("t1", "t2", "t3")


def test_overall_interval_when_every_task_shows_the_same_delta(tmp_path):
    """Three tasks, two trials: the base right once per task, the new run twice. Every task shows
    +50pp; a bootstrap over tasks printed +50.0 [+50.0, +50.0] next to Fisher p = 0.18."""
    base = _run(tmp_path / "base", {t: [1, 0] for t in THREE})
    new = _run(tmp_path / "new", {t: [1, 1] for t in THREE})
    comp = compare_dirs([base, new])
    overall = comp.overall("new")
    assert overall.delta_success == pytest.approx(0.5)
    assert overall.p_value == pytest.approx(sps.fisher_exact([[6, 0], [3, 3]])[1])
    assert overall.mcnemar_p == pytest.approx(0.25)
    # neither test shows a difference with three tasks, and neither does the interval
    assert overall.delta_ci_low < 0 < overall.delta_success < overall.delta_ci_high
    # it is the clustered interval of the outcomes paired by (task, trial)
    from tracetune import stats

    a, b = [[1.0, 1.0]] * 3, [[1.0, 0.0]] * 3
    _, lo, hi = stats.clustered_difference_interval(a, b)
    assert (overall.delta_ci_low, overall.delta_ci_high) == (pytest.approx(lo), pytest.approx(hi))
    for r in comp.per_task("new"):  # 2/2 vs 1/2: Newcombe
        assert r.delta_ci_low < 0 < r.delta_success < r.delta_ci_high
    r = subprocess.run([sys.executable, "-m", "tracetune.cli", "compare", str(base), str(new)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert "+50.0 [" in r.stdout and "[+50.0, +50.0]" not in r.stdout


def test_zero_against_zero_gives_intervals_around_zero(tmp_path):
    from tracetune.eval.metrics import summarize_run

    zeros = {t: [0, 0] for t in THREE}
    base, new = _run(tmp_path / "base", zeros), _run(tmp_path / "new", zeros)
    comp = compare_dirs([base, new])
    for r in comp.per_task("new") + [comp.overall("new")]:
        assert (r.success_rate, r.delta_success) == (0.0, 0.0)
        assert r.ci_low == 0.0 and r.ci_high > 0.1  # 0 of n: [0, u > 0]
        assert r.delta_ci_low < -0.1 and r.delta_ci_high > 0.1
    store = Store(new)
    try:
        rows, overall = summarize_run(store.episodes())  # `tracetune eval`'s table
    finally:
        store.close()
    assert all(s.ci_low == 0.0 and s.ci_high > 0.1 for s in rows + [overall])


def test_share_of_runs_that_write_has_an_interval_when_it_never_varies():
    def episodes(trials: int) -> list[dict]:
        return [{"task_id": t, "trial": k, "success": k == 0, "n_attempts": 1, "duration_s": 1.0,
                 "prompt_tokens": 10, "completion_tokens": 10, "workflow": "direct",
                 "wrong_tests": None, "metrics": {"parse_errors": 0, "wrote": True,
                                                  "loop_detections": 0, "steps": 3,
                                                  "tool_errors": 0}}
                for t in THREE for k in range(trials)]

    comp = compare({"base": episodes(2), "new": episodes(2)}, "base")
    wrote = next(m for m in comp.metrics if m.metric == "wrote")
    assert wrote.delta == 0.0 and wrote.ci_low < -0.1 and wrote.ci_high > 0.1
    steps = next(m for m in comp.metrics if m.metric == "steps")  # a count that did not vary
    assert (steps.delta, steps.ci_low, steps.ci_high) == (0.0, 0.0, 0.0)
