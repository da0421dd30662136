"""kill -9 at random points of `tracetune mine`, `train` and `export` leaves either the complete
result or nothing, and the next command in the same place removes what the killed ones left
(eval: tests/eval/test_runner.py). Real training on the embedded model (CPU), so the train and
export test takes a few minutes."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracetune.eval.runner import EvalConfig, run_eval

CLI = [sys.executable, "-m", "tracetune.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _dataset(path: Path, n: int = 16) -> Path:
    (path / "formats").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    rows = [{"prompt": [{"role": "user", "content": f"Say the secret word number {i}."}],
             "completion": [{"role": "assistant", "content": f"zebra-{i} quartz"}]}
            for i in range(n)]
    (path / "formats" / "sft.prompt_completion.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(argv, **kw):
    return subprocess.run(CLI + argv, capture_output=True, text=True, env=ENV, **kw)


def _kill_at_random(argv, out: Path, whole: float, rng: random.Random, times: int,
                    complete) -> list[str]:
    """Start the command `times` times, SIGKILL its process group at a random point of its
    expected duration; after each kill `out` must be absent or complete."""
    seen = []
    for _ in range(times):
        proc = subprocess.Popen(CLI + argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=ENV, start_new_session=True)
        time.sleep(rng.uniform(0.2, 0.95) * whole)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():
            assert complete(out), f"{out} exists after a kill but is not complete"
            seen.append("complete")
        else:
            seen.append("nothing")
    return seen


def _adapter_complete(out: Path) -> bool:
    meta = json.loads((out / "tracetune_adapter.json").read_text())
    return (out / "adapter_model.safetensors").is_file() and meta["steps"] > 0


def _dataset_complete(data: Path) -> bool:
    manifest = json.loads((data / "manifest.json").read_text())
    rows = data / "rows" / "sft.jsonl"
    return manifest["counts"]["sft"] == len(rows.read_text().splitlines()) > 0


def test_kill9_during_mine_leaves_all_or_nothing(tmp_path):
    run_eval(EvalConfig(suite="funcs", model="oracle", max_difficulty=1, trials=2),
             tmp_path / "run")
    mine = ["mine", str(tmp_path / "run"), "--tokenizer", "none", "--out"]
    t0 = time.monotonic()
    assert _run(mine + [str(tmp_path / "timing")], timeout=300).returncode == 0
    whole = time.monotonic() - t0
    for i in range(6):  # kills anywhere from the start to the end of a whole mine
        out = tmp_path / f"data{i}"
        _kill_at_random(mine + [str(out)], out, whole, random.Random(i), 1, _dataset_complete)
    # The next mine beside them removes what the killed ones left, and completes.
    assert _run(mine + [str(tmp_path / "final")], timeout=300).returncode == 0
    assert _dataset_complete(tmp_path / "final")
    assert not list(tmp_path.glob(".mine-*"))


@pytest.mark.slow
def test_kill9_during_train_and_export(tmp_path):
    rng = random.Random(1)
    data = _dataset(tmp_path / "ds", n=8)
    config = tmp_path / "train.toml"
    config.write_text('[train]\nr = 2\nalpha = 4\nepochs = 2.0\nbatch_size = 2\n'
                      'warmup_steps = 0\ntarget_modules = ["q_proj"]\nsave_steps = 2\n')
    train = ["train", str(data), "--base", "embedded", "--config", str(config)]
    t0 = time.monotonic()
    r = _run(train + ["--out", str(tmp_path / "timing")], timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    whole = time.monotonic() - t0

    adapter = tmp_path / "adapter"
    seen = _kill_at_random(train + ["--out", str(adapter)], adapter, whole, rng, 3,
                           _adapter_complete)
    r = _run(train + ["--out", str(adapter), "--resume"], timeout=900)
    if "complete" not in seen:
        assert r.returncode == 0, r.stderr[-2000:]
    assert _adapter_complete(adapter)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], \
        "staging left beside the adapter"

    gguf = tmp_path / "out" / "adapter.gguf"
    export = ["export", str(adapter), "--to", "gguf-lora", "--out", str(gguf)]
    t0 = time.monotonic()
    r = _run(export[:-1] + [str(tmp_path / "timing.gguf")], timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    whole = time.monotonic() - t0
    _kill_at_random(export, gguf, whole, rng, 2, lambda p: p.stat().st_size > 0)
    if not gguf.exists():
        r = _run(export, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    assert gguf.stat().st_size > 0
    # Whatever a killed export left beside its output is gone once an export ran there again.
    r = _run(export[:-1] + [str(gguf.with_name("again.gguf"))], timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in gguf.parent.iterdir()) == ["adapter.gguf", "again.gguf"]
