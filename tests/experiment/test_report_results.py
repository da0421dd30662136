"""The compare stage writes every figure the report shows into results.json, and the report reads
only that (plus the loss logs it names, the experiment and the pre-registration). A run directory
is built by hand here (small trajectory stores, manifests, adapter files, stage markers): nothing
is trained or evaluated."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.experiment import prereg
from tracetune.experiment.analysis import REPORT_KEYS, analyze, box_stats
from tracetune.experiment.layout import RunLayout
from tracetune.experiment.report import write_report
from tracetune.experiment.spec import load_experiment
from tracetune.tasks.splits import in_train
from tracetune.traces.store import RunInfo, Store

TINY = Path(__file__).with_name("tiny.toml")
PLOTS = ("success_per_task", "attempts_duration", "loss", "capability")
OLD_KEYS = ("experiment", "comparisons", "split", "metrics", "hypotheses", "decision",
            "failures", "stages")

# Task ids on both sides of the 50% split (checked in the fixture).
TRAIN = [t for t in (f"demo/t{i}" for i in range(40)) if in_train(t, 50)][:3]
HELDOUT = [t for t in (f"demo/t{i}" for i in range(40)) if not in_train(t, 50)][:3]

# arm -> task -> per-trial (success, attempts, duration s); control is evaluated on held-out only
OUTCOMES = {
    "base": {t: [(i % 3 == 0, 1 + i % 3, 2.0 + i + 0.5 * j) for i in range(4)]
             for j, t in enumerate(TRAIN + HELDOUT)},
    "adapted": {t: [(i % 3 != 2, 1 + (i == 3), 1.5 + 0.7 * i + 0.25 * j) for i in range(4)]
                for j, t in enumerate(TRAIN + HELDOUT)},
    "control": {t: [(i % 2 == 0, 2, 3.0 + i * i) for i in range(4)] for t in HELDOUT},
    "ref": {t: [(True, 1, 10.0 + i + j) for i in range(4)]
            for j, t in enumerate(TRAIN + HELDOUT)},
}
CAPABILITY = {"base": [True, False, True, True], "adapted": [True, True, False, True]}
PACKAGES = {arm: {"python": "3.12.1", "tracetune": f"0.9.{i}"} for i, arm in
            enumerate(OUTCOMES)}


def _store(path: Path, name: str, episodes: dict[str, list[tuple]], packages: dict) -> None:
    store = Store(RunLayout.store(path), create=True)
    try:
        store.create_run(RunInfo(name, 0.0, "demo", "direct", name, 0, 4, {}, packages))
        for task, trials in episodes.items():
            for trial, (ok, attempts, duration) in enumerate(trials):
                eid = store.start_episode(name, task, trial, "direct", trial)
                store.finish_episode(eid, success=ok, wrong_tests=None, failed_step=None,
                                     n_attempts=attempts, duration_s=duration,
                                     prompt_tokens=10, completion_tokens=20 + attempts,
                                     error=None)
    finally:
        store.close()


def _marker(layout: RunLayout, stage: str, seconds: float, summary: dict) -> None:
    layout.stages.mkdir(exist_ok=True)
    layout.marker(stage).write_text(json.dumps(
        {"stage": stage, "key": "k", "seconds": seconds, "peak_ram_gb": 1.5,
         "summary": summary}))


def _build(root: Path) -> tuple[RunLayout, object]:
    """A finished loop's run directory up to (not including) the compare stage."""
    assert TRAIN and HELDOUT
    layout = RunLayout(root)
    root.mkdir(parents=True)
    text = TINY.read_text().replace('base = "embedded"',
                                    'base = "embedded"\nreference = { ref = "embedded" }')
    layout.experiment.write_text(text)
    exp = load_experiment(layout.experiment)
    prereg.freeze(exp, root)
    for arm, episodes in OUTCOMES.items():
        _store(layout.arm_run(arm), arm, episodes, PACKAGES[arm])
    for arm, results in CAPABILITY.items():
        _store(layout.capability(arm), f"cap-{arm}",
               {f"HumanEval/{i}": [(ok, 1, 0.5 + i)] for i, ok in enumerate(results)},
               PACKAGES[arm])
    for path, counts, dropped in ((layout.data, {"sft": 7}, {"tier": 3}),
                                  (layout.control_data, {"sft": 7}, {})):
        path.mkdir(parents=True)
        RunLayout.manifest(path).write_text(json.dumps(
            {"schema_version": 1, "counts": counts, "dropped": dropped}))
    for path, losses in ((layout.adapter, [2.5, 1.75, 1.25]),
                         (layout.control_adapter, [2.5, 2.25, 2.0])):
        path.mkdir(parents=True, exist_ok=True)
        RunLayout.loss_log(path).write_text("".join(
            json.dumps({"step": i + 1, "loss": x}) + "\n" for i, x in enumerate(losses)))
    RunLayout.adapter_meta(layout.adapter).write_text(json.dumps(
        {"base": "embedded", "rows": 7, "steps": 3, "train_seconds": 41.6, "first_loss": 2.5,
         "last_loss": 1.25, "train_loss": 1.8, "config": {},
         "versions": {"torch": "2.5.0", "peft": "0.13.0"}}))
    for stage, seconds in (("baseline", 12.5), ("mine", 1.25), ("adapted", 9.0),
                           ("capability", 3.0), ("control", 50.0), ("control_eval", 8.0),
                           ("reference", 7.0)):
        _marker(layout, stage, seconds, {})
    _marker(layout, "train", 42.0, {"rows": 7, "steps": 3, "seconds": 41.6,
                                    "final_loss": 1.25, "first_loss": 2.5})
    return layout, exp


def _compare(layout: RunLayout, exp) -> dict:
    """The compare stage as the loop runs it: analyze, then results.json."""
    results = analyze(exp, layout.root)
    layout.results.write_text(json.dumps(results, indent=2, default=str))
    return json.loads(layout.results.read_text())


def _written(layout: RunLayout) -> dict[str, bytes]:
    files = {"md": layout.report_md.read_bytes(), "html": layout.report_html.read_bytes()}
    return files | {name: layout.report_plot(name).read_bytes() for name in PLOTS}


@pytest.fixture
def run(tmp_path):
    layout, exp = _build(tmp_path / "run")
    results = _compare(layout, exp)
    write_report(layout.root)
    return layout, exp, results, _written(layout)


def _no_stores(monkeypatch):
    """Any attempt to open a trajectory store fails the test."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("the report opened a trajectory store")

    monkeypatch.setattr(Store, "__init__", refuse)


def _repro(md: str) -> dict[str, str]:
    """The reproducibility block's lines by their label (the first 16 characters)."""
    block = md.split("## Reproducibility", 1)[1].split("```")[1]
    return {line[:16].strip(): line[16:] for line in block.strip().splitlines()}


# --- what results.json gained --------------------------------------------------------------------

def test_results_hold_the_report_figures(run):
    layout, _, results, _ = run
    for key in OLD_KEYS + REPORT_KEYS:  # every earlier key kept, the report's added
        assert key in results
    assert list(results["arms"]) == ["base", "adapted", "control", "ref"]
    for arm, outcome in OUTCOMES.items():
        a = results["arms"][arm]
        eps = [e for trials in outcome.values() for e in trials]
        assert a["run"] == layout.relative(layout.arm_run(arm))
        assert a["episodes"] == len(eps)
        assert a["mean_attempts"] == pytest.approx(sum(e[1] for e in eps) / len(eps))
        assert a["packages"] == PACKAGES[arm]
        # the box the report draws is the one matplotlib computes from every duration
        from matplotlib.cbook import boxplot_stats

        ref = boxplot_stats([e[2] for e in eps])[0]
        for stat in ("q1", "med", "q3", "whislo", "whishi", "mean"):
            assert a["duration_s"][stat] == pytest.approx(float(ref[stat])), (arm, stat)
    assert results["datasets"] == {
        "data": {"path": "data", "counts": {"sft": 7}, "dropped": {"tier": 3}},
        "control_data": {"path": "control/data", "counts": {"sft": 7}, "dropped": {}}}
    assert results["adapter"] == {"rows": 7, "steps": 3, "train_seconds": 41.6,
                                  "first_loss": 2.5, "last_loss": 1.25,
                                  "versions": {"torch": "2.5.0", "peft": "0.13.0"}}
    assert results["loss_curves"] == {"adapter": "adapter/loss.jsonl",
                                      "control": "control/adapter/loss.jsonl"}
    assert set(results["failures"]) == set(OUTCOMES)
    held_fail = sum(not ok for t in HELDOUT for ok, *_ in OUTCOMES["base"][t])
    assert sum(results["failures"]["base"].values()) == held_fail


def test_box_stats_whiskers_stop_at_the_last_value_within_1_5_iqr():
    from matplotlib.cbook import boxplot_stats

    for values in ([1.0], [3.0, 3.0, 3.0], [1, 2, 3, 4, 100], [-50, 1, 2, 3, 4, 5, 6],
                   [0.1 * i * i for i in range(17)]):
        ref = boxplot_stats(values)[0]
        got = box_stats(values)
        for stat in ("q1", "med", "q3", "whislo", "whishi", "mean"):
            assert got[stat] == pytest.approx(float(ref[stat])), (values, stat)


# --- the report reads results.json -----------------------------------------------------------

def test_report_numbers_are_results_numbers(run):
    layout, exp, results, _ = run
    md = layout.report_md.read_text()
    repro = _repro(md)
    base_pk = results["arms"]["base"]["packages"]
    assert repro["packages"] == ", ".join(f"{k} {v}" for k, v in sorted(base_pk.items()))
    assert repro["data"] == f"rows {{'sft': 7}}, dropped {{'tier': 3}} ({layout.data})"
    assert repro["control data"] == f"rows {{'sft': 7}}, dropped {{}} ({layout.control_data})"
    assert repro["adapter"].startswith("7 rows, 3 steps, 42 s, loss 2.500 -> 1.250")
    for arm in OUTCOMES:
        assert repro[f"run {arm}"] == str(layout.arm_run(arm))
    lines = md.splitlines()
    for stage, info in results["stages"].items():
        assert f"stage {stage:<10}{info['seconds']} s" in lines
    # every table row of the held-out comparison, from its results row
    for r in results["comparisons"]["heldout"]["results"]:
        row = (f"| {r['model']} | {r['task']} | {r['n']} | {100 * r['success_rate']:.1f}% "
               f"[{100 * r['ci_low']:.1f}%, {100 * r['ci_high']:.1f}%] |")
        assert row in md
        assert f"| {r['avg_attempts']:.2f} | {r['avg_duration']:.2f} |" in md
    # and they are this run's: the base model's held-out rate is that of its episodes
    base = next(r for r in results["comparisons"]["heldout"]["results"]
                if r["model"] == "base" and r["task"] == "overall")
    eps = [e for t in HELDOUT for e in OUTCOMES["base"][t]]
    assert base["success_rate"] == pytest.approx(sum(e[0] for e in eps) / len(eps))
    for h in results["hypotheses"]:
        assert f"| {h['id']} | {h['claim']} | {h['verdict']} | {h['detail']} |" in md
    assert f"## Decision: {results['decision']['outcome']}" in md
    for name in PLOTS:
        assert f"(report_files/{name}.png)" in md
    assert layout.report_html.read_text().count("data:image/png;base64,") == len(PLOTS)


def test_report_follows_edited_results(run, monkeypatch):
    """What the report shows of the arms, datasets and adapter is what results.json says,
    not what the run directory holds."""
    layout, _, results, before = run
    results["arms"]["base"]["packages"] = {"edited": "1.0"}
    results["arms"]["adapted"]["duration_s"]["med"] += 5.0
    results["arms"]["control"]["mean_attempts"] = 9.0
    results["datasets"]["data"]["counts"] = {"sft": 99}
    results["adapter"]["steps"] = 12345
    del results["loss_curves"]["control"]
    layout.results.write_text(json.dumps(results))
    _no_stores(monkeypatch)
    write_report(layout.root)
    after = _written(layout)
    repro = _repro(after["md"].decode())
    assert repro["packages"] == "edited 1.0"
    assert repro["data"].startswith("rows {'sft': 99}")
    assert "12345 steps" in repro["adapter"]
    assert after["attempts_duration"] != before["attempts_duration"]
    assert after["loss"] != before["loss"]
    assert after["success_per_task"] == before["success_per_task"]


def test_report_opens_no_store_and_reads_no_run_output(run, monkeypatch):
    layout, _, _, before = run
    for path in [*(layout.arm_run(arm) for arm in OUTCOMES), layout.capability_root,
                 layout.reference_root, layout.data, layout.control_data]:
        shutil.rmtree(path, ignore_errors=True)
    RunLayout.adapter_meta(layout.adapter).unlink()
    for name in PLOTS:  # rewritten, not left over
        layout.report_plot(name).unlink()
    _no_stores(monkeypatch)
    write_report(layout.root)
    assert _written(layout) == before


def test_results_of_the_previous_release_still_report(run):
    layout, _, results, before = run
    old = {k: v for k, v in results.items() if k not in REPORT_KEYS}
    assert set(old) == set(OLD_KEYS)
    layout.results.write_text(json.dumps(old, indent=2))
    for name in PLOTS:
        layout.report_plot(name).unlink()
    layout.report_md.unlink()
    write_report(layout.root)  # figures read from the run directory, the same ones
    assert _written(layout) == before


def test_results_of_the_previous_release_need_the_run_directory(run):
    layout, _, results, _ = run
    layout.results.write_text(json.dumps({k: v for k, v in results.items()
                                          if k not in REPORT_KEYS}))
    shutil.rmtree(layout.baseline)
    with pytest.raises(TracetuneError, match="trajectory store"):
        write_report(layout.root)


# --- paths come from RunLayout -------------------------------------------------------------------

SOURCES = ["src/tracetune/experiment/analysis.py", "src/tracetune/experiment/report.py",
           "src/tracetune/experiment/prereg.py", "benchmarks/loop_gain.py"]
FILE_NAMES = ("experiment.toml", "preregistration.json", "results.json", "report.md",
              "report.html", "report_files", "manifest.json", "loss.jsonl",
              "tracetune_adapter.json", "trajectories.sqlite", "loop_gain.json")
"""File names under a run directory (directory names are caught as path joins instead: as
strings they are also arm and result keys)."""


def _literals(tree: ast.AST) -> tuple[list[str], list[ast.BinOp]]:
    """The module's string constants (docstrings left out: they may describe the files) and
    its `x / "literal"` path joins."""
    docs = {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    strings = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, str) and id(node) not in docs]
    joins = [node for node in ast.walk(tree) if isinstance(node, ast.BinOp)
             and isinstance(node.op, ast.Div)
             and (isinstance(node.right, ast.JoinedStr) or isinstance(node.right, ast.Constant)
                  and isinstance(node.right.value, str))]
    return strings, joins


def test_no_run_directory_path_is_spelled_outside_the_layout():
    root = Path(__file__).resolve().parents[2]
    for source in SOURCES:
        strings, joins = _literals(ast.parse((root / source).read_text()))
        for name in FILE_NAMES:  # never in a string
            if name == "preregistration.json" and source.endswith("prereg.py"):
                continue  # prereg.PREREG: the name stays beside its writer
            assert not any(name in s for s in strings), f"{source} spells {name}"
        for node in joins:  # no path built from a literal, except outside the run directory
            text = ast.unparse(node)
            outside = source.startswith("benchmarks/") and (
                text.startswith("ROOT /") or ".parent /" in text)  # the repo; beside the run
            assert outside, f"{source} builds a path from a literal: {text}"


def test_layout_names_match_the_writers(tmp_path):
    from tracetune.train.recipe import LOSS_LOG, META
    from tracetune.traces.store import DB_NAME

    layout = RunLayout(tmp_path)
    assert layout.prereg == tmp_path / prereg.PREREG
    assert RunLayout.adapter_meta(tmp_path) == tmp_path / META
    assert RunLayout.loss_log(tmp_path) == tmp_path / LOSS_LOG
    assert RunLayout.store(tmp_path) == tmp_path / DB_NAME
    assert layout.report_plot("loss") == tmp_path / "report_files" / "loss.png"
    assert layout.benchmark("loop_gain") == tmp_path / "loop_gain.json"
    # either module imported first: no import cycle between layout and prereg
    for first in ("layout", "prereg"):
        code = (f"import tracetune.experiment.{first}\n"
                "from tracetune.experiment.layout import RunLayout\n"
                "print(RunLayout('r').prereg)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.strip() == "r/preregistration.json", out.stderr
