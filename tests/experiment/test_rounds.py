"""[rounds]: expert iteration behind a pre-registered gate. The loop runs for real (training on the
embedded model's weights); the evaluated models are scripted (replay) so that the gate's verdicts
are known in advance: the base model answers only the train tasks, every adapted model answers
every task. Round 1 then gains on every held-out task (the gate passes), round 2 gains nothing
(the gate stops), round 3 never runs, and round 1 is kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.experiment.gate import gate_p
from tracetune.experiment.loop import Loop, run_loop
from tracetune.experiment.spec import load_experiment
from tracetune.tasks import load_suite
from tracetune.tasks.splits import in_train

EXPERIMENT = """
[experiment]
name = "rounds-mini"
seed = 0

[models]
base = "replay:{base}"
train_base = "embedded"
adapted = "replay:{adapted}"

[eval]
suite = "demo"
train_pct = 50
trials = 4
max_tokens = 160
max_attempts = 1
concurrency = 2

[mine]
kinds = ["sft"]
tiers = {{ impl = ["workflow"] }}
max_seq_len = 512

[train]
r = 4
alpha = 8
epochs = 1
batch_size = 2
warmup_steps = 0

[export]
target = "none"

[capability]
suite = "humaneval"
limit = 2
max_tokens = 64

[rounds]
rounds = 3
mode = "continue"
test = "fisher"
alpha = 0.05
max_capability_drop = 0.02

[grpo]
enabled = true
num_generations = 4
prompts_per_step = 2
max_completion_length = 48
max_steps = 1
learning_rate = 1e-4
seed = 0
"""


def _script(path: Path, answer_heldout: bool) -> Path:
    """Replay lines: each demo task's reference (held-out ones: a wrong answer unless
    `answer_heldout`), enough for every request of one evaluation; then answers for anything
    else (the capability check)."""
    lines = []
    for task in load_suite("demo").tasks:
        right = answer_heldout or in_train(task.id, 50)
        name = task.names[0]
        code = task.reference if right else f"def {name}(*args):\n    return None\n"
        lines += [{"match": f"`{name}(", "text": f"```python\n{code}```"}] * 8
    lines += [{"text": "```python\ndef f():\n    return 0\n```"}] * 8
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _experiment(tmp_path: Path, text: str = EXPERIMENT) -> Path:
    base = _script(tmp_path / "base.jsonl", answer_heldout=False)
    adapted = _script(tmp_path / "adapted.jsonl", answer_heldout=True)
    path = tmp_path / "rounds.toml"
    path.write_text(text.format(base=base, adapted=adapted))
    return path


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rounds")
    exp = _experiment(tmp)
    out = tmp / "run"
    results = run_loop(exp, out, log=lambda m: None)
    return exp, out, results


def test_the_rounds_are_stages_of_the_loop(tmp_path):
    exp = load_experiment(_experiment(tmp_path))
    stages = Loop(exp, tmp_path / "run").stages
    assert stages[-5:] == ["round2", "round3", "grpo", "compare", "report"]
    assert exp.preregistered()["rounds_gate"]["test"] == "fisher"


def test_the_gate_passes_a_significant_round_and_stops_at_a_flat_one(rounds_run):
    exp, out, results = rounds_run
    curve = results["rounds"]
    rows = {r["round"]: r for r in curve["rounds"]}
    assert sorted(rows) == [0, 1, 2]
    assert rows[0]["heldout"] == 0.0 and rows[1]["heldout"] == rows[2]["heldout"] == 1.0
    assert rows[1]["gate"]["passed"] and rows[1]["gate"]["p"] < 0.05
    assert not rows[2]["gate"]["passed"] and rows[2]["gate"]["gain"] == 0.0
    assert "gain not significant" in rows[2]["gate"]["detail"]
    assert curve["kept"] == 1 and curve["stopped"].startswith("round 2 did not pass the gate")
    for r in (1, 2):
        lo, hi = rows[r]["delta_ci"]
        assert lo <= rows[r]["delta"] <= hi
        assert rows[r]["train"]["rows"] > 0
    round2 = json.loads((out / "stages" / "round2.json").read_text())["summary"]
    round3 = json.loads((out / "stages" / "round3.json").read_text())["summary"]
    assert round2["ran"] and round2["gate"]["round"] == 1
    assert not round3["ran"] and "round 2 did not pass the gate" in round3["reason"]
    assert not (out / "rounds" / "r3").exists()
    # round 2 trained round 1's adapter further (mode continue)
    config = json.loads((out / "rounds" / "r2" / "adapter" / "tracetune_adapter.json")
                        .read_text())["config"]
    assert Path(config["init_adapter"]) == (out / "adapter").resolve()


def test_grpo_starts_from_the_kept_round_and_is_judged_against_it(rounds_run):
    _, out, results = rounds_run
    g = results["grpo"]
    assert g["start_round"] == 1
    if not g["ran"]:  # every group's rewards equal: a reported result, not a fault
        assert "equal rewards" in g["reason"]
        return
    config = json.loads((out / "grpo" / "adapter" / "tracetune_adapter.json").read_text())
    assert config["method"] == "grpo" and config["init_adapter"] == str(out / "adapter")
    assert g["train"]["steps"] == 1
    # the evaluated model is the scripted one: no change against round 1
    assert g["heldout"] == 1.0 and g["delta"] == 0.0 and g["p"] == 1.0
    assert g["train"]["groups"] >= 2 and 0 <= g["train"]["zero_std_groups"] < g["train"]["groups"]


def test_the_report_shows_the_rounds(rounds_run):
    _, out, _ = rounds_run
    md = (out / "report.md").read_text()
    assert "## Rounds of expert iteration" in md and "Kept: round 1." in md
    assert "## GRPO from sandbox rewards" in md
    assert (out / "report_files" / "rounds.png").is_file()


def test_a_rerun_redoes_nothing_and_more_rounds_keep_the_done_ones(rounds_run, tmp_path):
    exp, out, _ = rounds_run
    before = {p.name: p.read_text() for p in (out / "stages").glob("round*.json")}
    logs: list[str] = []
    run_loop(exp, out, log=logs.append)
    assert all("cached" in m for m in logs if m.startswith("[round"))
    assert {p.name: p.read_text() for p in (out / "stages").glob("round*.json")} == before


@pytest.mark.parametrize("old, new, message", [
    ("rounds = 3", "rounds = 0", "must be at least 1"),
    ('mode = "continue"', 'mode = "restart"', "is not one of continue, retrain"),
    ('test = "fisher"', 'test = "chi2"', "is not one of paired_permutation"),
    ("train_pct = 50", "train_pct = 100", "leaves no held-out tasks for the gate"),
    ("concurrency = 2", 'concurrency = 2\neval_on = "heldout"', "mines its own answers"),
    ("max_capability_drop = 0.02", "max_capability_drop = 2", "are fractions"),
    ("alpha = 0.05\nmax", "alpha = 1.5\nmax", "alpha: must be within"),
])
def test_a_bad_rounds_section_is_one_message(tmp_path, old, new, message):
    assert old in EXPERIMENT
    with pytest.raises(TracetuneError, match=message) as err:
        load_experiment(_experiment(tmp_path, EXPERIMENT.replace(old, new)))
    assert "[rounds]" in str(err.value)


def test_gate_tests_take_the_stated_unit():
    def eps(rates, trials=4):  # task i passes round(rate * trials) of its trials
        return [{"task_id": f"t{i}", "trial": k, "success": k < round(r * trials)}
                for i, r in enumerate(rates) for k in range(trials)]

    after, before = eps([1, 1, 1, 1, 1, 1, 0.5, 0.75]), eps([0, 0, 0.25, 0, 0, 0.5, 0.5, 0.5])
    # 7 of 8 tasks improve, one ties: the exact sign-flip p is 2 / 2^7
    assert gate_p("paired_permutation", after, before) == pytest.approx(2 / 2 ** 7)
    assert gate_p("fisher", after, before) < gate_p("paired_permutation", after, before)
    assert gate_p("paired_permutation", before, before) == 1.0


def test_retrain_mode_trains_a_fresh_adapter_on_every_evaluation_so_far(tmp_path):
    text = EXPERIMENT.replace('mode = "continue"', 'mode = "retrain"').replace(
        "rounds = 3", "rounds = 2")
    text = text[:text.index("[grpo]")]
    out = tmp_path / "run"
    results = run_loop(_experiment(tmp_path, text), out, log=lambda m: None)
    r2 = out / "rounds" / "r2"
    assert json.loads((r2 / "adapter" / "tracetune_adapter.json").read_text())[
        "config"]["init_adapter"] is None
    sources = json.loads((r2 / "data" / "manifest.json").read_text())["sources"]
    assert [Path(s).name for s in sources] == ["baseline", "adapted"]
    # the same train-task answers in both evaluations: the second copy of each is dropped
    dropped = json.loads((r2 / "data" / "manifest.json").read_text())["dropped"]
    assert dropped.get("duplicate", 0) > 0
    assert [r["round"] for r in results["rounds"]["rounds"]] == [0, 1, 2]
