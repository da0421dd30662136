"""Mutation scoring throughput: tracetune's `testgen.mutation.score` vs cosmic-ray's own command
line, on the same mutants of the same modules with the same tests, in one run.

    python benchmarks/mutation_bench.py [--tasks 6] [--max-mutants 40] [--seed 0]

For N tasks of the `funcs` suite (spread evenly over its three tiers), the task's reference is the
module under test and its reference tests are the tests. cosmic-ray 8 runs as its users run it:
a TOML config (module-path = solution.py, test-command = `python -m pytest -x -q ...`, the local
distributor), `cosmic-ray init`, `cosmic-ray exec`, then the verdicts read from the session with its
WorkDB API (what `cr-report` prints). tracetune gets exactly that session's mutants (`mutants=`,
each rebuilt with `mutation.mutant_at` from the session's operator + occurrence), so both sides run
the same mutant set; with --max-mutants, the same seeded sample of it (the rest marked SKIPPED in
the session, as cosmic-ray's own filters mark them).

Timed: `cosmic-ray exec` (one test subprocess per mutant, one after another: its local
distributor) against `score(...)` (one sandbox job per mutant, `workers` at once, including its
clean run); neither side's mutant generation is timed, and the sandbox's start is timed once in
the total. Both sides run pytest without plugin autoload (PYTEST_DISABLE_PLUGIN_AUTOLOAD=1, as the
sandbox does) and give a mutant the same timeout rule: max(1 s, 5 x the side's own clean run).

Prints per task and in total: mutants, seconds and mutants/s of each side, the speed ratio
(tracetune / cosmic-ray; the goal is >= 5x), and whether the kill verdicts are identical (a timeout
is a kill on both sides); every mismatch is listed.

cosmic-ray runs its test command as a plain subprocess on the host, unsandboxed: that is fine
here only because the code is the suite's trusted reference code and tests. Model-written code
must go through `score` (the sandbox).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracetune.sandbox import Sandbox, SandboxConfig
from tracetune.tasks import load_suite
from tracetune.testgen.mutation import mutant_at, mutants, score

TIMEOUT_FACTOR, MIN_TIMEOUT_S = 5.0, 1.0
ENV = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONDONTWRITEBYTECODE="1")
ENV.pop("PYTEST_ADDOPTS", None)
CR_BIN = Path(sys.executable).with_name("cosmic-ray")

CONFIG = """[cosmic-ray]
module-path = "solution.py"
timeout = {timeout}
excluded-modules = []
test-command = "{python} -m pytest -x -q -p no:cacheprovider test_solution.py"

[cosmic-ray.distributor]
name = "local"
"""


def pick_tasks(n: int):
    tasks = load_suite("funcs").tasks
    idx = sorted({round(i * (len(tasks) - 1) / max(n - 1, 1)) for i in range(n)})
    return [tasks[i] for i in idx]


def cr(*args: str, cwd: Path) -> None:
    proc = subprocess.run([str(CR_BIN), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"cosmic-ray {args[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def cosmic_ray_side(task, workdir: Path, max_mutants: int | None, seed: int):
    """Run cosmic-ray on the task; returns (the ids of every mutant `cosmic-ray init` made, the
    mutants run as (operator, occurrence, line), {mutant id: verdict}, exec seconds)."""
    from cosmic_ray.plugins import operator_names
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    (workdir / "solution.py").write_text(task.reference)
    (workdir / "test_solution.py").write_text(task.tests)
    t0 = time.perf_counter()  # the clean run, as cosmic-ray's worker runs the test command
    clean = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            "test_solution.py"], cwd=workdir, env=ENV, capture_output=True,
                           check=False)
    timeout = max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * (time.perf_counter() - t0))
    if clean.returncode != 0:
        raise SystemExit(f"{task.id}: the reference fails its own tests")
    config = CONFIG.format(timeout=round(timeout, 3), python=sys.executable)
    (workdir / "cr.toml").write_text(config)
    cr("init", "cr.toml", "session.sqlite", cwd=workdir)

    order = {name: i for i, name in enumerate(operator_names())}
    with use_db(str(workdir / "session.sqlite"), WorkDB.Mode.open) as db:
        items = sorted(db.work_items, key=lambda w: (order[w.mutations[0].operator_name],
                                                     w.mutations[0].occurrence))
        all_ids = [f"{w.mutations[0].operator_name}:{w.mutations[0].occurrence}" for w in items]
        if max_mutants is not None and len(items) > max_mutants:
            keep = set(random.Random(seed).sample(range(len(items)), max_mutants))
            db.set_multiple_results([w.job_id for i, w in enumerate(items) if i not in keep],
                                    WorkResult(worker_outcome=WorkerOutcome.SKIPPED))
            items = [w for i, w in enumerate(items) if i in keep]
    specs = [(w.mutations[0].operator_name, w.mutations[0].occurrence,
              w.mutations[0].start_pos[0]) for w in items]

    t0 = time.perf_counter()
    cr("exec", "cr.toml", "session.sqlite", cwd=workdir)
    seconds = time.perf_counter() - t0

    verdicts = {}
    with use_db(str(workdir / "session.sqlite"), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            m = item.mutations[0]
            if result.test_outcome == TestOutcome.KILLED and result.output == "timeout":
                verdict = "timeout"  # cosmic_ray.testing.run_tests: a timeout is KILLED
            else:
                verdict = "killed" if result.is_killed else "survived"
            verdicts[f"{m.operator_name}:{m.occurrence}"] = verdict
    return all_ids, specs, verdicts, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=6, help="funcs tasks, spread over the suite")
    ap.add_argument("--max-mutants", type=int, default=40,
                    help="a seeded sample of each task's mutants (0: all of them)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    max_mutants = args.max_mutants or None
    tasks = pick_tasks(args.tasks)

    config = SandboxConfig(timeout_s=30)
    t0 = time.perf_counter()
    sb = Sandbox(config)
    sb.start()
    t_start = time.perf_counter() - t0
    print(f"{len(tasks)} funcs tasks, up to {max_mutants or 'all'} mutants each "
          f"(seed {args.seed}); "
          f"{os.cpu_count()} CPU cores; sandbox isolation={sb.isolation}, "
          f"workers={config.n_workers()}; cosmic-ray: local distributor (serial)")
    head = (f"{'task':32}{'mutants':>8}{'cr s':>8}{'cr mut/s':>10}{'tt s':>8}{'tt mut/s':>10}"
            f"{'ratio':>8}  {'cr/tt killed':>13}  verdicts")
    print(head)
    rows, mismatches, naming_ok, dropped = [], [], True, 0
    try:
        for task in tasks:
            with tempfile.TemporaryDirectory(prefix="cr-bench-") as d:
                all_ids, specs, cr_verdicts, cr_s = cosmic_ray_side(task, Path(d), max_mutants,
                                                                    args.seed)
            # Same naming and order: mutants() is cosmic-ray's list less the mutants whose text
            # equals the source or does not compile.
            ours = [m.id for m in mutants(task.reference)]
            naming_ok &= ours == [i for i in all_ids if i in set(ours)]
            dropped += len(all_ids) - len(ours)
            todo = [mutant_at(task.reference, op, occ, line=line) for op, occ, line in specs]
            t0 = time.perf_counter()
            res = score(task.tests, task.reference, sb, mutants=todo,
                        timeout_factor=TIMEOUT_FACTOR, min_timeout_s=MIN_TIMEOUT_S)
            tt_s = time.perf_counter() - t0
            if res.status != "ok":
                raise SystemExit(f"{task.id}: tracetune status {res.status}: {res.reason}")
            bad = [(task.id, i, ours, cr_verdicts.get(i, "missing"))
                   for i, ours in res.verdicts.items()
                   if (ours == "survived") != (cr_verdicts.get(i, "missing") == "survived")
                   or i not in cr_verdicts]
            mismatches += bad
            n = len(todo)
            cr_killed = sum(v != "survived" for v in cr_verdicts.values())
            rows.append((n, cr_s, tt_s))
            print(f"{task.id:32}{n:8d}{cr_s:8.1f}{n / cr_s:10.2f}{tt_s:8.1f}{n / tt_s:10.2f}"
                  f"{cr_s / tt_s:7.1f}x  {f'{cr_killed}/{res.killed}':>13}  "
                  f"{'identical' if not bad else f'{len(bad)} DIFFER'}", flush=True)
    finally:
        sb.close()
    n = sum(r[0] for r in rows)
    cr_total, tt_total = sum(r[1] for r in rows), sum(r[2] for r in rows) + t_start
    print(f"{'total (tt incl. sandbox start)':32}{n:8d}{cr_total:8.1f}{n / cr_total:10.2f}"
          f"{tt_total:8.1f}{n / tt_total:10.2f}{cr_total / tt_total:7.1f}x")
    print(f"speed-up (tracetune / cosmic-ray mutants/s): {cr_total / tt_total:.1f}x (goal >= 5x)")
    print(f"mutant naming: tracetune's mutants() ids are cosmic-ray's session ids, same order: "
          f"{'yes' if naming_ok else 'NO'} ({dropped} session mutants are ones mutants() drops, "
          "text equal to the source or not compiling; both sides here run the session's set)")
    print(f"kill verdicts: {n - len(mismatches)}/{n} identical"
          + ("" if not mismatches else f"; {len(mismatches)} mismatches:"))
    for task_id, mutant_id, ours, theirs in mismatches:
        print(f"  {task_id} {mutant_id}: tracetune {ours}, cosmic-ray {theirs}")


if __name__ == "__main__":
    main()
