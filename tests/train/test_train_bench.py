"""A smoke run of benchmarks/train_bench.py on the CPU: both sides (the plain PEFT loop and
`tracetune train`'s code path) really train a tiny random-weight model on the same rows, and
--profile splits three steps' time by operator group. Nothing here is timed; the GPU figures
are in the README."""

import json
import math
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_bench.py"


def test_train_bench_runs_both_sides_on_the_cpu(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--shape", "tiny", "--device", "cpu",
                           "--rows", "24", "--max-tokens", "60", "--batch", "4",
                           "--max-seq-len", "64", "--json", str(out), "--profile"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results) == {"plain", "tt-default"}
    for side in results.values():
        assert "error" not in side, side
        assert side["steps"] == 6 and side["tokens"] > 24 * 10
        assert side["tokens_per_s"] > 0 and math.isfinite(side["final_loss"])
    plain, ours = results["plain"]["final_loss"], results["tt-default"]["final_loss"]
    assert abs(ours - plain) / plain < 0.02  # same data, same recipe: the same loss
    assert "tt-default" in proc.stdout and "vs plain" in proc.stdout
    # --profile: three steps of the tracetune side, their time split by operator group
    prof = results["tt-default"]["profile"]
    assert prof["steps"] == 3 and prof["first_step"] == 2 and prof["busy_s"] > 0
    assert math.isclose(sum(prof["shares"].values()), 1.0, rel_tol=1e-6)
    assert prof["shares"]["matmul"] > 0.05  # a training step is mostly matmuls, even this one
    assert results["plain"]["profile"] is None
    assert "tt-default profile, 3 steps from step 2: wall" in proc.stdout
