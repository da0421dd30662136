"""kill -9 at random points of `tracetune mine` leaves either the complete dataset or nothing,
and the staging folder a killed run leaves is removed by the next run (eval: tests/eval/
test_runner.py; train: tests/train/test_lengths_and_staging.py; export: tests/export)."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tracetune.eval.runner import EvalConfig, run_eval

CLI = [sys.executable, "-m", "tracetune.cli"]


def _complete(data: Path) -> bool:
    manifest = json.loads((data / "manifest.json").read_text())
    rows = data / "rows" / "sft.jsonl"
    return manifest["counts"]["sft"] == len(rows.read_text().splitlines()) > 0


def test_kill9_during_mine_leaves_all_or_nothing(tmp_path):
    run_eval(EvalConfig(suite="funcs", model="oracle", max_difficulty=1, trials=2),
             tmp_path / "run")
    rng = random.Random(0)
    # How long one whole mine takes here: the kills land anywhere from its start to its end.
    t0 = time.monotonic()
    subprocess.run(CLI + ["mine", str(tmp_path / "run"), "--out", str(tmp_path / "timing"),
                          "--tokenizer", "none"], check=True, capture_output=True)
    whole = time.monotonic() - t0
    outcomes = []
    for i in range(6):
        out = tmp_path / f"data{i}"
        proc = subprocess.Popen(CLI + ["mine", str(tmp_path / "run"), "--out", str(out),
                                       "--tokenizer", "none"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.3, 1.0) * whole)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            assert _complete(out), f"kill {i}: {out} exists but is not a complete dataset"
            outcomes.append("complete")
        else:
            outcomes.append("nothing")
    litter = list(tmp_path.glob(".mine-*"))
    # The next mine beside them removes what the killed ones left, and completes.
    final = tmp_path / "final"
    subprocess.run(CLI + ["mine", str(tmp_path / "run"), "--out", str(final), "--tokenizer",
                          "none"], check=True, capture_output=True)
    assert _complete(final)
    assert not list(tmp_path.glob(".mine-*")), (litter, outcomes)
