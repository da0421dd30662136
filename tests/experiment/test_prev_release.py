"""A loop run written by the previous release (tests/data/prev_release_run: schema v2 stores,
the workflow's options as flat [eval] keys, stage records without this release's settings, a
results.json without the report's figures) still loads, resumes and reports here, and its
stores and data set read as they did."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.datasets.build import load_manifest, mine
from tracetune.datasets.mine import load_attempts
from tracetune.eval.config import eval_config_from
from tracetune.experiment.loop import run_loop
from tracetune.experiment.report import write_report
from tracetune.experiment.spec import load_experiment
from tracetune.experiment.stages import active_stages
from tracetune.traces.store import Store

FIXTURE = Path(__file__).parents[1] / "data" / "prev_release_run"
CLI = [sys.executable, "-m", "tracetune.cli"]


@pytest.fixture
def run(tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(FIXTURE, copy)
    return copy


def test_every_stage_is_still_cached(run):
    logs: list[str] = []
    results = run_loop(run / "experiment.toml", run, log=logs.append)
    stages = [s.name for s in active_stages(load_experiment(run / "experiment.toml"))]
    assert [m for m in logs if m.startswith("[")] == [f"[{s}] cached" for s in stages]
    old = json.loads((FIXTURE / "results.json").read_text())
    assert results["hypotheses"] == old["hypotheses"]
    assert results["decision"] == old["decision"]


def test_settings_left_at_their_defaults_still_match(run):
    exp = run / "experiment.toml"  # the old release's default split share, left unstated
    exp.write_text(exp.read_text().replace("train_pct = 50\n", ""))
    logs: list[str] = []
    run_loop(exp, run, log=logs.append)
    assert all(m.endswith("cached") for m in logs if m.startswith("["))


def test_the_report_is_written_from_the_old_results(run):
    for name in ("report.md", "report.html"):
        (run / name).unlink(missing_ok=True)
    md, _ = write_report(run)
    old = json.loads((FIXTURE / "results.json").read_text())
    text = md.read_text()
    assert old["decision"]["outcome"] in text
    assert old["hypotheses"][0]["detail"] in text


def test_a_changed_setting_still_makes_the_old_stages_stale(run):
    exp = run / "experiment.toml"
    exp.write_text(exp.read_text().replace("max_tokens = 160", "max_tokens = 161"))
    from tracetune.errors import TracetuneError

    with pytest.raises(TracetuneError, match="changed since stage baseline"):
        run_loop(exp, run, log=lambda m: None)


def test_old_stores_upgrade_and_read_the_same(run):
    store = Store(run / "baseline")
    try:
        config = eval_config_from(store.run().config, "stored")
        episodes = store.episodes()
        attempts = [a for e in episodes for a in store.attempts(e["id"])]
    finally:
        store.close()
    assert config.workflow == "direct,max_attempts=1"  # the flat keys folded into the spec
    assert episodes and len(attempts) == len(episodes)
    assert all(a.facts is None and a.guards for a in attempts)
    r = subprocess.run(CLI + ["show", str(run / "baseline")], capture_output=True, text=True)
    assert r.returncode == 0 and "overall" in r.stdout, r.stderr
    r = subprocess.run(CLI + ["eval", "--resume", "--out", str(run / "baseline")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # nothing left to do, and the old config is accepted


def test_old_data_sets_load_and_mining_the_old_store_gives_the_same_rows(run, tmp_path):
    manifest = load_manifest(run / "data")
    assert manifest["counts"]["sft"] >= 1
    assert load_attempts(run / "baseline")
    config = manifest["config"]
    from tracetune.datasets.build import MineConfig

    again = mine([run / "baseline"], tmp_path / "again", MineConfig(
        kinds=tuple(config["kinds"]), tiers={k: tuple(v) for k, v in config["tiers"].items()},
        train_pct=config["train_pct"], max_seq_len=config["max_seq_len"],
        tokenizer=config["tokenizer"], leakage_suites=tuple(config["leakage_suites"])))
    old_rows = (run / "data" / "rows" / "sft.jsonl").read_text()
    assert (tmp_path / "again" / "rows" / "sft.jsonl").read_text() == old_rows
    assert again.rows["sft"]
