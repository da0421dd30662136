"""Sandbox throughput: tracetune's sandbox vs a naive baseline, on the same checks, in one run.

    python benchmarks/sandbox_bench.py [--checks 200] [--timeout 1.0]

The baseline is what most harnesses do: one `subprocess.run([python, -m, pytest, ...])` per check,
serially, in a fresh temporary directory. Both sides see the same 200 mixed checks (passing,
failing, and timing-out solutions for small function tasks) and must give identical verdicts.
Prints checks/s for each, the ratio, and whether all verdicts agree.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracetune.sandbox import Job, Sandbox, SandboxConfig
from tracetune.tasks import load_suite


def make_jobs(n: int) -> list[tuple[Job, str]]:
    """(job, expected verdict): 70% correct references, 25% wrong solutions, 5% infinite loops."""
    tasks = load_suite("demo").tasks
    jobs = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        kind = i % 20
        if kind == 0:
            module, expected = f"def {task.names[0]}(*args):\n    while True:\n        pass\n", "timeout"
        elif kind < 6:
            module, expected = f"def {task.names[0]}(*args):\n    return None\n", "fail"
        else:
            module, expected = task.reference, "pass"
        jobs.append((Job.tests(task.tests, module=module), expected))
    return jobs


def naive_check(job: Job, timeout_s: float) -> str:
    with tempfile.TemporaryDirectory() as d:
        for name, content in job.files.items():
            Path(d, name).write_text(content)
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   job.entry], cwd=d, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return "timeout"
    return {0: "pass", 1: "fail"}.get(proc.returncode, "error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=1.0, help="per-check timeout, seconds")
    args = ap.parse_args()
    jobs = make_jobs(args.checks)
    print(f"{len(jobs)} checks: {sum(e == 'pass' for _, e in jobs)} pass, "
          f"{sum(e == 'fail' for _, e in jobs)} fail, {sum(e == 'timeout' for _, e in jobs)} "
          f"timeout; timeout {args.timeout}s; {os.cpu_count()} CPU cores")

    t0 = time.perf_counter()
    baseline = [naive_check(job, args.timeout) for job, _ in jobs]
    t_base = time.perf_counter() - t0

    config = SandboxConfig(timeout_s=args.timeout)
    t0 = time.perf_counter()
    with Sandbox(config) as sb:
        ours = [r.status for r in sb.map([job for job, _ in jobs])]
        mode = sb.isolation
    t_ours = time.perf_counter() - t0  # includes starting and stopping the zygote

    agree = sum(a == b for a, b in zip(baseline, ours))
    expected_ok = sum(o == e for o, (_, e) in zip(ours, jobs))
    print(f"{'':28}{'seconds':>10}{'checks/s':>12}")
    print(f"{'naive subprocess pytest':28}{t_base:10.1f}{len(jobs) / t_base:12.2f}")
    print(f"{'tracetune sandbox':28}{t_ours:10.1f}{len(jobs) / t_ours:12.2f}"
          f"   (isolation={mode}, workers={config.n_workers()})")
    print(f"speed-up: {t_base / t_ours:.1f}x")
    print(f"verdicts agree: {agree}/{len(jobs)}  ({'all identical' if agree == len(jobs) else 'DIFFER'})"
          f"; match the expected verdict: {expected_ok}/{len(jobs)}")


if __name__ == "__main__":
    main()
