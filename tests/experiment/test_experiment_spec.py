"""Experiment files: every bad input is one message naming the key, before any work starts."""

from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.experiment.loop import Loop
from tracetune.experiment.spec import load_experiment, metric_names

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.toml")


def _variant(tmp_path, old: str, new: str, base: Path = TINY) -> Path:
    text = base.read_text()
    assert old in text, old
    path = tmp_path / "exp.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("name", ["quickstart.toml", "tdd_finetune.toml"])
def test_shipped_experiments_validate(name):
    exp = load_experiment(ROOT / "experiments" / name)
    assert exp.hypotheses and (exp.decision.go or exp.decision.abort)
    assert Loop(exp, Path("unused")).stages[0] == "baseline"


def test_tdd_finetune_is_seed_000s_protocol():
    exp = load_experiment(ROOT / "experiments" / "tdd_finetune.toml")
    assert (exp.eval.suite, exp.eval.workflow, exp.eval.trials) == ("tdd6", "tdd", 50)
    assert exp.train["r"] == 16 and exp.train["alpha"] == 16 and exp.train["epochs"] == 3
    assert exp.mine.tiers["g_test"] == ("first_attempt", "validated")
    assert set(exp.models.reference) == {"reference"}
    assert {h.id for h in exp.hypotheses} >= {"H1", "H2"}
    assert "reference" in Loop(exp, Path("unused")).stages


@pytest.mark.parametrize("old, new, message", [
    ("[eval]\n", "[evaluation]\n", r"unknown section\(s\) evaluation"),
    ("trials = 2", "trails = 2", r"\[eval\]: unknown key\(s\) trails"),
    ("trials = 2", "trials = 'two'", r"\[eval\]: trials must be an integer, not str"),
    ("trials = 2", "trials = 0", r"\[eval\] trials: must be at least 1"),
    ("r = 4", "r = 4.5", r"\[train\]: r must be an integer"),
    ("epochs = 1", "epoch = 1", r"\[train\]: unknown key\(s\) epoch"),
    ('base = "embedded"', 'base = "nosuch:model"', r"\[models\] base"),
    ('suite = "demo"', 'suite = "nosuch"', r"\[eval\] suite"),
    ('metric = "heldout.success_rate"', 'metric = "heldout.sucess_rate"',
     r"H1 metric: 'heldout.sucess_rate' does not exist"),
    ('metric = "heldout.success_rate"', 'metric = "holdout.success_rate"',
     r"H1 metric: 'holdout.success_rate' does not exist"),
    ('min_delta = 0.05', 'min_delta = 0.05\ntreatment = "reference"',
     r"H1 treatment: 'reference' is not a model of this experiment"),
    ('min_delta = 0.05', 'min_delta = 0.05\nwithin = 0.1', r"exactly one of min_delta"),
    ('test = "fisher"', 'test = "chi2"', r"test: 'chi2' is not one of"),
    ('metric = "heldout.success_rate"\nmin_delta',
     'metric = "heldout.avg_tokens"\nmin_delta', r"fisher applies to success_rate"),
    ('"train.peak_ram_gb <= 16"', '"train.peak_ram <= 16"',
     r"no metric 'train.peak_ram' \(did you mean train.peak_ram_gb"),
    ('"train.peak_ram_gb <= 16"', '"train.peak_ram_gb is small"', r"is not 'METRIC OP NUMBER'"),
    ('target = "gguf-lora"', 'target = "onnx"', r"\[export\] target: 'onnx'"),
    ('enabled = true', 'enabled = "yes"', r"\[control\]: enabled must be true or false"),
])
def test_bad_experiments_fail_with_the_key_named(tmp_path, old, new, message):
    with pytest.raises(TracetuneError, match=message):
        load_experiment(_variant(tmp_path, old, new))


def test_metric_names_cover_arms_evals_and_training():
    exp = load_experiment(TINY)
    names = metric_names(exp)
    assert {"adapted.heldout.success_rate", "base.capability.success_rate",
            "delta.train.avg_tokens", "control.heldout.success_rate", "train.peak_ram_gb",
            "adapted.peak_ram_gb"} <= names
    assert "control.train.success_rate" not in names  # the control runs on held-out only


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(TracetuneError, match="not found"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[eval\n")
    with pytest.raises(TracetuneError, match="not valid TOML"):
        load_experiment(bad)
