"""The loop runs whatever its stage table says: a new stage is one row (this file adds two
trivial ones without touching the package), cached once done, redone when a setting it reads
changes, and listed without building a loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.experiment.loop import Loop
from tracetune.experiment.spec import load_experiment
from tracetune.experiment.stages import STAGES, Stage, active_stages

TINY = Path(__file__).with_name("tiny.toml")


def _hello(ctx) -> dict:
    """A trivial stage: writes one file under the run and reports the [eval] suite it read."""
    path = ctx.layout.root / "hello.txt"
    path.write_text(f"suite {ctx.exp.eval.suite}\n")
    ctx.log("[hello] wrote hello.txt")
    return {"suite": ctx.exp.eval.suite}


def _echo(ctx) -> dict:
    """A second stage that reads the first's record."""
    return {"saw": ctx.record("hello")["summary"]["suite"]}


def _fails(ctx) -> dict:
    raise TracetuneError("this stage refuses")


TABLE = (
    Stage("hello", _hello, reads=("eval",), outputs=lambda lay: (lay.root / "hello.txt",)),
    Stage("echo", _echo, needs=("hello",)),
)


def test_a_new_stage_is_one_row(tmp_path):
    exp = load_experiment(TINY)
    out = tmp_path / "run"
    logs: list[str] = []
    Loop(exp, out, log=logs.append, table=TABLE).run()
    assert (out / "hello.txt").read_text() == "suite demo\n"
    assert json.loads((out / "stages" / "echo.json").read_text())["summary"] == {"saw": "demo"}
    assert "[hello] wrote hello.txt" in logs
    logs.clear()
    Loop(exp, out, log=logs.append, table=TABLE).run()  # done: both cached
    assert [m for m in logs if m.endswith("cached")] == ["[hello] cached", "[echo] cached"]
    # a setting the stage reads changed: stale, and --from redoes it and what follows
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.read_text().replace("trials = 2", "trials = 3"))
    with pytest.raises(TracetuneError, match="changed since stage hello"):
        Loop(load_experiment(changed), out, log=logs.append, table=TABLE).run()
    Loop(load_experiment(changed), out, log=logs.append, table=TABLE).run(from_stage="hello")
    assert (out / "hello.txt").is_file()


def _aside(ctx) -> dict:
    """A stage that needs nothing: its output must survive a redo of another stage."""
    (ctx.layout.root / "aside.txt").write_text("kept\n")
    return {}


def test_from_redoes_the_stage_and_what_needs_it_and_keeps_the_rest(tmp_path):
    """`--from hello --until hello` redoes hello, clears echo (it read hello's old output) and
    keeps aside, which does not depend on hello, however late in the table it comes."""
    table = (TABLE[0], Stage("aside", _aside, outputs=lambda lay: (lay.root / "aside.txt",)),
             TABLE[1])
    exp, out = load_experiment(TINY), tmp_path / "run"
    Loop(exp, out, log=lambda m: None, table=table).run()
    Loop(exp, out, log=lambda m: None, table=table).run(from_stage="hello", until="hello")
    assert (out / "stages" / "hello.json").is_file() and (out / "aside.txt").is_file()
    assert (out / "stages" / "aside.json").is_file()
    assert not (out / "stages" / "echo.json").exists()  # stale: cleared, rerun next time
    logs: list[str] = []
    Loop(exp, out, log=logs.append, table=table).run()
    assert "[aside] cached" in logs and "[echo] cached" not in logs
    assert Loop(exp, out, log=lambda m: None, table=table).downstream("hello") == ["echo"]


def test_a_stage_error_is_one_message_and_leaves_no_marker(tmp_path):
    table = TABLE + (Stage("fails", _fails, needs=("echo",)),)
    out = tmp_path / "run"
    with pytest.raises(TracetuneError, match="this stage refuses"):
        Loop(load_experiment(TINY), out, log=lambda m: None, table=table).run()
    assert (out / "stages" / "echo.json").is_file()
    assert not (out / "stages" / "fails.json").exists()
    assert (out / "stages" / "fails.started").is_file()  # rerun: it starts over


def test_stages_are_listed_without_a_loop():
    exp = load_experiment(TINY)
    names = [s.name for s in active_stages(exp)]
    assert names == ["baseline", "mine", "train", "export", "adapted", "capability", "control",
                     "control_eval", "compare", "report"]
    assert {s.name for s in STAGES} - set(names) == {"teacher", "reference"}
