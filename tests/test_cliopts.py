"""CLI options come from the config dataclasses: every field is an option with the field's
default and one-line doc, and a new field is a new option with no other edit."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import typer
from typer.testing import CliRunner

from tracetune.cliopts import config_options
from tracetune.datasets.build import MineConfig
from tracetune.eval.config import EvalConfig
from tracetune.tomlconf import field_help

CLI = [sys.executable, "-m", "tracetune.cli"]


def _help(*command: str) -> str:
    r = subprocess.run(CLI + list(command) + ["--help"], capture_output=True, text=True,
                       env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())


def test_every_eval_setting_is_an_option_with_its_doc():
    text = _help("eval")
    docs = field_help(EvalConfig)
    for f in dataclasses.fields(EvalConfig):
        flag = {"tasks": "--task"}.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in text, f.name
        assert docs[f.name].split(".")[0][:40] in text, f.name  # the field's own help line


def test_mine_options_come_from_mine_config():
    text = _help("mine")
    for name in ("--max-seq-len", "--tokenizer", "--leakage-suite", "--max-dpo-pairs-per-task",
                 "--dpo-teacher", "--kind", "--allow-heldout"):
        assert name in text
    assert field_help(MineConfig)["max_seq_len"].split(".")[0][:30] in text


def test_a_new_field_is_a_new_option():
    @dataclass(frozen=True)
    class Knobs:
        depth: int = 3
        """How deep to look."""
        label: str | None = None
        """An optional label."""

    app = typer.Typer()
    seen = {}

    @app.command()
    @config_options(Knobs)
    def run(name: str = typer.Option("x"), settings: dict = None) -> None:
        seen.update(settings, name=name)

    result = CliRunner().invoke(app, ["--depth", "5", "--name", "y"])
    assert result.exit_code == 0, result.output
    assert seen == {"depth": 5, "label": None, "name": "y"}
    assert "How deep to look." in CliRunner().invoke(app, ["--help"]).output


def test_rollouts_keep_a_teachers_defaults():
    text = _help("rollouts")
    assert "[default: repair]" in text and "--rollouts" in text
    assert "test_policy=never" in text  # said in the command's help


def test_a_bad_workflow_option_is_one_line(tmp_path):
    r = subprocess.run(CLI + ["eval", "--suite", "demo", "--workflow", "direct,max_iters=3",
                              "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "unknown option(s) max_iters" in r.stderr and "valid: max_attempts" in r.stderr
    assert not (tmp_path / "run").exists()
    r = subprocess.run(CLI + ["eval", "--suite", "demo", "--top-p", "0", "--out",
                              str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 1 and "top_p must be within (0, 1]" in r.stderr


def test_the_flat_workflow_flags_of_earlier_releases_still_work(tmp_path):
    script = tmp_path / "r.jsonl"
    script.write_text('{"text": "```python\\ndef f(:\\n```"}\n' * 4)
    r = subprocess.run(CLI + ["eval", "--suite", "demo", "--limit", "1", "--trials", "1",
                              "--model", f"replay:{script}", "--max-attempts", "2",
                              "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from tracetune.traces.store import Store

    store = Store(tmp_path / "run")
    try:
        assert store.run().config["workflow"] == "direct,max_attempts=2"
        (episode,) = store.episodes()
        assert episode["n_attempts"] == 2
    finally:
        store.close()
    assert "--max-attempts <int>" not in _help("eval")  # kept, but not listed as an option


def test_check_experiment_refuses_what_a_stage_would_refuse(tmp_path):
    tiny = Path(__file__).parent / "experiment" / "tiny.toml"
    for old, new, message in [
            ("temperature = 0.8", "temperature = 0.8\ntop_p = 0.0", "top_p must be within"),
            ("temperature = 0.8", "temperature = -1.0", "temperature must be a number >= 0"),
            ("max_attempts = 1", 'workflow = "direct,max_iters=3"',
             "unknown option(s) max_iters")]:
        exp = tmp_path / "exp.toml"
        exp.write_text(tiny.read_text().replace(old, new, 1))
        r = subprocess.run(CLI + ["check-experiment", str(exp)], capture_output=True, text=True)
        assert r.returncode == 1 and message in r.stderr and str(exp) in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = subprocess.run(CLI + ["check-experiment", str(tiny)], capture_output=True, text=True)
    assert r.returncode == 0 and "baseline -> mine -> train" in r.stdout


def test_rollouts_apply_a_teachers_workflow_defaults_only_where_unstated():
    from tracetune.cli import TEACHER_WORKFLOW_DEFAULTS
    from tracetune.eval.config import eval_config_from, with_workflow_defaults

    def rollouts(**values):
        values = with_workflow_defaults({"suite": "bugs", **values}, TEACHER_WORKFLOW_DEFAULTS)
        return eval_config_from(values, "cli").workflow

    assert rollouts(workflow="repair") == "repair,test_policy=never"
    assert rollouts(workflow="repair", test_policy="end") == "repair,test_policy=end"
    assert rollouts(workflow="repair,test_policy=after_write") == "repair"
    assert rollouts(workflow="direct") == "direct,max_attempts=1"
    assert rollouts(workflow="tdd,max_attempts=2") == "tdd,max_attempts=2"


def test_a_flat_key_may_not_contradict_the_spec():
    import pytest

    from tracetune.errors import TracetuneError
    from tracetune.eval.config import eval_config_from

    with pytest.raises(TracetuneError, match="max_attempts = 1 conflicts with the workflow's "
                                             "max_attempts=3"):
        eval_config_from({"workflow": "tdd,max_attempts=3", "max_attempts": 1}, "x")
    assert eval_config_from({"workflow": "tdd", "max_attempts": 1}, "x").workflow == \
        "tdd,max_attempts=1"
