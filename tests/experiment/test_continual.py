"""`tracetune continual`: the experiment file is checked before any work; a miniature stream
runs every strategy for real on the embedded model (two sessions of the demo suite), shares the
units two strategies have in common, resumes without redoing anything, and its matrix holds
every (strategy, round, session, task) cell the metrics are computed from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.experiment.continual import load_continual, run_continual

CLI = [sys.executable, "-m", "tracetune.cli"]

MINI = """
[experiment]
name = "mini"
description = "every strategy on two sessions of the demo suite"
seed = 0

[models]
base = "embedded"

[stream]
by = "explicit"
suite = "demo"
sessions = [{name = "strings", tasks = ["demo/reverse_string", "demo/count_vowels"]},
            {name = "math", tasks = ["demo/is_even", "demo/factorial"]}]

[eval]
workflow = "direct,max_attempts=1"
trials = 2
temperature = 0.8
max_tokens = 160
concurrency = 2

[mine]
kinds = ["sft"]
tiers = { impl = ["workflow"] }
max_seq_len = 512

[train]
r = 4
alpha = 8
epochs = 1
batch_size = 2
warmup_steps = 0
save_steps = 1

[export]
target = "gguf-lora"

[capability]
suite = "humaneval"
limit = 1
max_tokens = 160

[continual]
strategies = ["sequential", "full_replay", "partial_replay", "ewc"]
bootstrap = 200

[continual.partial_replay]
buffer_size = 2
priority = "recency"
ratio = "1:1"

[continual.ewc]
lambda = 10.0
fisher_samples = 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cl.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("change, message", [
    (('sessions = [{name = "strings", tasks = ["demo/reverse_string", "demo/count_vowels"]},',
      'sessions = [{name = "strings", tasks = []},'), "strings"),
    (('tasks = ["demo/is_even", "demo/factorial"]', 'tasks = ["demo/is_even", "demo/count_vowels"]'),
     "demo/count_vowels"),
    (("[continual.ewc]\nlambda = 10.0", "[continual.sequential]\nlambda = 10.0\n[continual.ewc]"),
     "sequential strategy takes no settings"),
    (("buffer_size = 2", "buffer_size = 2\nlambda = 3"), "lambda"),
    (('strategies = ["sequential", "full_replay", "partial_replay", "ewc"]',
      'strategies = ["sequential", "full_replay"]'), "which strategies does not list"),
    (('strategies = ["sequential"', 'strategies = ["naive"'), "naive"),
    (("bootstrap = 200", 'bootstrap = 200\norderings = ["Z"]'), "orderings"),
    (("save_steps = 1", 'save_steps = 1\ninit_adapter = "x"'), "set by the strategy"),
    (("priority = \"recency\"", "priority = \"loudest\""), "loudest"),
    (("[eval]\n", "[eval]\nsuite = \"funcs\"\n"), "suite"),
])
def test_a_bad_file_is_one_message_before_any_work(tmp_path, change, message):
    old, new = change
    assert old in MINI
    with pytest.raises(TracetuneError, match=message):
        load_continual(_write(tmp_path, MINI.replace(old, new)))


def test_check_prints_the_sessions(tmp_path):
    proc = subprocess.run(CLI + ["continual", str(_write(tmp_path, MINI)), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 sessions, 2 rounds" in proc.stdout and "1. strings: 2 tasks" in proc.stdout


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cl")
    path = _write(d, MINI)
    out = d / "run"
    lines: list[str] = []
    results = run_continual(path, out, log=lines.append)
    return path, out, results, lines


def test_every_strategy_runs_and_the_matrix_holds_every_cell(mini_run):
    path, out, results, _ = mini_run
    rows = [json.loads(x) for x in (out / "matrix.jsonl").read_text().splitlines()]
    strategies = ("sequential", "full_replay", "partial_replay", "ewc")
    cells = {(r["strategy"], r["round"], r["session"], r["task"]) for r in rows}
    tasks = {0: ("demo/reverse_string", "demo/count_vowels"), 1: ("demo/is_even", "demo/factorial")}
    assert cells == {(s, i, j, t) for s in strategies for i in (0, 1, 2) for j in (0, 1)
                     for t in tasks[j]}
    assert all(r["trials"] == 2 and 0 <= r["passes"] <= 2 for r in rows)
    assert {r["strategy"] for r in results["runs"]} == set(strategies)
    for run in results["runs"]:
        assert len(run["matrix"]) == 3 and len(run["matrix"][0]) == 2
        assert set(run["metrics"]) >= {"acc", "forward_transfer", "forgetting", "bwt"}
    for run in results["runs"]:  # direct workflow: one attempt per episode, no tool use
        eff = run["efficiency"]
        assert eff["steps"]["base"]["value"] == eff["steps"]["last"]["value"] == 1.0
        assert eff["tokens"]["last"]["value"] > 0 and "tool_efficiency" not in eff
    assert (out / "report.md").is_file()
    report = (out / "report.md").read_text()
    assert "sequential" in report and "![sequential accuracy matrix]" in report


def test_the_zero_shot_row_is_one_evaluation_shared_by_every_strategy(mini_run):
    _, out, _, _ = mini_run
    rows = [json.loads(x) for x in (out / "matrix.jsonl").read_text().splitlines()]
    zero = {}
    for r in rows:
        if r["round"] == 0:
            zero.setdefault((r["task"]), set()).add((r["trials"], r["passes"]))
    assert all(len(v) == 1 for v in zero.values())  # one run, the same numbers everywhere
    evals = [u for u in (out / "units").iterdir() if u.name.startswith("eval-")]
    base_evals = [u for u in evals
                  if json.loads((u / "identity.json").read_text())["model"] == {"base": "embedded"}]
    assert len(base_evals) == 2  # two sessions, evaluated once for all four strategies


def test_a_rerun_redoes_nothing(mini_run):
    path, out, results, _ = mini_run
    before = {u.name: (u / "unit.json").stat().st_mtime_ns for u in (out / "units").iterdir()}
    lines: list[str] = []
    again = run_continual(path, out, log=lines.append)
    after = {u.name: (u / "unit.json").stat().st_mtime_ns for u in (out / "units").iterdir()}
    assert before == after
    assert not [x for x in lines if "running" in x]
    assert again["runs"] == results["runs"]


def test_ewc_round_two_trains_with_the_penalty_and_logs_it(mini_run):
    _, out, results, _ = mini_run
    ewc = next(r for r in results["runs"] if r["strategy"] == "ewc")
    r2 = ewc["rounds"][2]
    if r2["skipped"]:
        pytest.skip(f"the model passed nothing to learn from in round 2: {r2['skipped']}")
    assert r2["ewc"]["lambda"] == 10.0


def test_mined_rows_of_an_unseen_session_are_refused(mini_run, tmp_path):
    from tracetune.experiment.continual import _mine_unit

    _, out, _, _ = mini_run
    exp = load_continual(mini_run[0])
    run = next(u for u in (out / "units").iterdir() if u.name.startswith("eval-")
               and json.loads((u / "unit.json").read_text())["summary"]["tasks"]
               and any(p for _, p in json.loads((u / "unit.json").read_text())
                       ["summary"]["tasks"].values()))

    class Channel:
        def put(self, msg):
            pass

    with pytest.raises(TracetuneError, match="leak"):
        _mine_unit([str(run / "run")], exp.mine, [], "test", str(tmp_path / "m"), Channel())


def _run(strategy, ordering="A", *, acc=(0.5, 0.4, 0.6), cost=10.0, caps=(0.1, 0.1)):
    value, low, high = acc
    metric = {"value": value, "low": low, "high": high}
    return {"ordering": ordering, "strategy": strategy,
            "metrics": {"acc": metric, "forward_transfer": metric},
            "cost": {"train_seconds": cost, "extra_seconds": 0.0, "tokens": 1, "rows": 1,
                     "peak_ram_gb": 1.0},
            "rounds": [{"capability": c} for c in caps]}


@pytest.mark.parametrize("acc, verdict", [
    ((0.5, 0.42, 0.58), "SUPPORTED"),       # the whole interval is above 0.4
    ((0.5, 0.30, 0.70), "INCONCLUSIVE"),    # the point is, the interval is not
    ((0.3, 0.20, 0.40), "NOT SUPPORTED"),
])
def test_a_one_ordering_claim_needs_its_whole_interval(acc, verdict):
    from tracetune.experiment.continual import ClHypothesis
    from tracetune.experiment.continual_report import judge

    h = ClHypothesis(id="H", claim="c", metric="sequential.acc", op=">=", value=0.4)
    assert judge(h, [_run("sequential", acc=acc)])["verdict"] == verdict


def test_ratio_difference_orderings_and_capability_claims():
    from tracetune.experiment.continual import ClHypothesis
    from tracetune.experiment.continual_report import judge

    runs = [_run("full_replay", o, acc=(0.6, 0.5, 0.7), cost=100.0, caps=(0.10, 0.05))
            for o in "AB"] + [_run("partial_replay", o, acc=(a, a - 0.1, a + 0.1), cost=20.0)
                              for o, a in (("A", 0.5), ("B", 0.4))]
    ratio = judge(ClHypothesis(id="R", claim="c", metric="partial_replay.acc",
                               versus="full_replay.acc", op=">=", value=0.8), runs)
    assert ratio["observed"] == pytest.approx(0.45 / 0.6, abs=1e-4)
    assert ratio["verdict"] == "NOT SUPPORTED"  # 0.75 < 0.8
    cost = judge(ClHypothesis(id="C", claim="c", metric="partial_replay.cost_seconds",
                              versus="full_replay.cost_seconds", op="<", value=0.3), runs)
    assert cost["observed"] == pytest.approx(0.2) and cost["verdict"] == "SUPPORTED"
    diff = judge(ClHypothesis(id="D", claim="c", metric="partial_replay.acc",
                              versus="full_replay.acc", compare="difference", op=">=",
                              value=-0.1), runs)
    assert diff["observed"] == pytest.approx(-0.15) and diff["verdict"] == "NOT SUPPORTED"
    count = judge(ClHypothesis(id="O", claim="c", metric="partial_replay.forward_transfer",
                               op=">", value=0.45, orderings_at_least=1), runs)
    assert count["observed"] == 1 and count["verdict"] == "SUPPORTED"
    drop = judge(ClHypothesis(id="K", claim="c", metric="full_replay.capability_drop",
                              op="<", value=0.02), runs)
    assert drop["observed"] == pytest.approx(0.05) and drop["verdict"] == "NOT SUPPORTED"


HYP = '\n[[hypothesis]]\nid = "H1"\nclaim = "c"\nmetric = "sequential.acc"\nvalue = 0.1\n'


@pytest.mark.parametrize("old, new, message", [
    ('metric = "sequential.acc"', 'metric = "naive.acc"', "naive"),
    ('metric = "sequential.acc"', 'metric = "sequential.accuracy"', "accuracy"),
    ("value = 0.1", 'value = 0.1\nop = "=>"', "=>"),
    ("value = 0.1", 'value = 0.1\nversus = "ewc.acc"\norderings_at_least = 1', "versus"),
    ("value = 0.1", "value = 0.1\norderings_at_least = 2", "orderings_at_least"),
])
def test_a_bad_hypothesis_is_one_message(tmp_path, old, new, message):
    with pytest.raises(TracetuneError, match=message):
        load_continual(_write(tmp_path, MINI + HYP.replace(old, new)))


def test_hypotheses_are_frozen_at_the_first_run(tmp_path):
    from tracetune.experiment.continual import _preregister

    out = tmp_path / "run"
    out.mkdir()
    _preregister(load_continual(_write(tmp_path, MINI + HYP)), out)
    assert (out / "preregistration.json").is_file()
    _preregister(load_continual(_write(tmp_path, MINI + HYP)), out)  # the same: fine
    with pytest.raises(TracetuneError, match="differ from those pre-registered"):
        _preregister(load_continual(_write(tmp_path, MINI + HYP.replace("0.1", "0.2"))), out)
    late = tmp_path / "late"
    late.mkdir()
    (late / "matrix.jsonl").write_text("")
    with pytest.raises(TracetuneError, match="not pre-registered"):
        _preregister(load_continual(_write(tmp_path, MINI + HYP)), late)


def test_repair_episodes_give_steps_tokens_and_tool_use_efficiency(tmp_path):
    from tracetune.eval.config import EvalConfig
    from tracetune.eval.runner import run_eval
    from tracetune.experiment.continual import _efficiency

    run_eval(EvalConfig(suite="bugs", workflow="repair", model="oracle", limit=2), tmp_path / "r")
    figures = dict(_efficiency(tmp_path / "r"))
    assert len(figures) == 2
    for values in figures.values():
        assert values["steps"] >= 2  # the oracle reads, edits and answers
        assert values["tool_efficiency"] == 1.0  # its calls are all well-formed and succeed
