"""Experiment files: every bad input is one message naming the key, before any work starts."""

from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.experiment.spec import load_experiment, metric_names
from tracetune.experiment.stages import active_stages

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.toml")
TINY_REPAIR = Path(__file__).with_name("tiny_repair.toml")


def _variant(tmp_path, old: str, new: str, base: Path = TINY) -> Path:
    text = base.read_text()
    assert old in text, old
    path = tmp_path / "exp.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("name", ["quickstart.toml", "tdd_finetune.toml", "repair_sft.toml",
                                  "repair_sft_design.toml"])
def test_shipped_experiments_validate(name):
    exp = load_experiment(ROOT / "experiments" / name)
    assert exp.hypotheses and (exp.decision.go or exp.decision.abort)
    assert active_stages(exp)[0].name == "baseline"


def test_tdd_finetune_is_seed_000s_protocol():
    exp = load_experiment(ROOT / "experiments" / "tdd_finetune.toml")
    assert (exp.eval.suite, exp.eval.workflow, exp.eval.trials) == ("tdd6", "tdd", 50)
    assert exp.train["r"] == 16 and exp.train["alpha"] == 16 and exp.train["epochs"] == 3
    assert exp.mine.tiers["g_test"] == ("first_attempt", "validated")
    assert set(exp.models.reference) == {"reference"}
    assert {h.id for h in exp.hypotheses} >= {"H1", "H2"}
    assert "reference" in [s.name for s in active_stages(exp)]


@pytest.mark.parametrize("old, new, message", [
    ("[eval]\n", "[evaluation]\n", r"unknown section\(s\) evaluation"),
    ("trials = 2", "trails = 2", r"\[eval\]: unknown key\(s\) trails"),
    ("trials = 2", "trials = 'two'", r"\[eval\]: trials must be an integer, not str"),
    ("trials = 2", "trials = 0", r"\[eval\]: trials must be at least 1, not 0"),
    # whatever the baseline stage would refuse is refused before anything is frozen
    ("temperature = 0.8", "temperature = 0.8\ntop_p = 0.0", r"\[eval\]: top_p must be within"),
    ("temperature = 0.8", "temperature = -1.0", r"\[eval\]: temperature must be a number >= 0"),
    ("temperature = 0.8", "temperature = nan", r"\[eval\]: temperature must be a number >= 0"),
    ("max_attempts = 1", 'workflow = "direct,max_loops=2"',
     r"\[eval\]: workflow 'direct,max_loops=2': unknown option\(s\) max_loops"),
    ("max_attempts = 1", 'workflow = { name = "direct", max_attempts = 0 }',
     r"\[eval\]: workflow 'direct': max_attempts must be at least 1, not 0"),
    ("max_attempts = 1", "max_attempts = 1\ncheck_timeout_s = 0", r"\[eval\]: check_timeout_s"),
    ("limit = 2", "limit = 2\ntemperature = -0.5", r"\[capability\]: temperature must be"),
    ("max_attempts = 1", "max_attempts = 1\nmodel = 'embedded'",
     r"\[eval\]: unknown key\(s\) model"),
    ("max_attempts = 1", 'max_attempts = 1\ntasks = ["demo/nope"]',
     r"\[eval\]: task\(s\) not in suite demo: demo/nope"),
    ('kinds = ["sft"]', 'kinds = ["sft", "dpo"]\ndpo_teacher = "embedded"',
     r"\[mine\]: dpo_teacher 'embedded': only the oracle"),
    ('kinds = ["sft"]', 'kinds = ["dpo"]', r"method = sft trains on sft or fix rows"),
    ("max_seq_len = 512", 'max_seq_len = 512\ntokenizer = "openai:m@http://x/v1"',
     r"\[mine\]: tokenizer: model spec .* names no weights"),
    ('base = "embedded"', 'base = "hf:some/model"', r"\[export\] target: .*gguf-lora"),
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


def test_repair_sft_is_seed_002s_protocol():
    exp = load_experiment(ROOT / "experiments" / "repair_sft.toml")
    assert (exp.eval.suite, exp.eval.workflow, exp.eval.train_pct) == \
        ("bugs", "repair,max_iters=5", 70)
    assert exp.teacher.model == "oracle" and exp.eval_on == "heldout"
    assert exp.eval.split == "test"  # eval_on = heldout
    assert exp.mine.tiers["repair"] == ("tool_ok", "workflow")
    stages = [s.name for s in active_stages(exp)]
    assert stages[:3] == ["baseline", "teacher", "mine"] and "capability" not in stages
    names = metric_names(exp)
    assert {"delta.heldout.avg_parse_errors", "adapted.heldout.write_rate",
            "base.heldout.avg_loop_detections", "delta.heldout.avg_steps"} <= names
    assert not any(n.split(".")[1] in ("train", "all") for n in names if n.count(".") == 2)


@pytest.mark.parametrize("old, new, message", [
    ('workflow = "repair"', 'workflow = "direct"',
     r"\[eval\] workflow: workflow direct runs on functions suites, and bugs is a repair suite"),
    ('max_iters = 2', 'max_iters = 0',
     r"\[eval\]: workflow 'repair': max_iters must be at least 1, not 0"),
    ('eval_on = "heldout"', 'eval_on = "train"', r"\[eval\] eval_on: 'train' is not one of"),
    ('concurrency = 2', 'concurrency = 2\ntest_policy = "always"',
     r"\[eval\]: workflow 'repair': test_policy 'always' is not one of never, after_write, end"),
    ('model = "oracle"', 'model = "wizard"', r"\[teacher\] model: unknown model spec"),
    ('model = "oracle"', 'model = "oracle"\nrollouts = 0', r"\[teacher\] rollouts"),
    ('max_delta = -1.0', 'max_delta = -1.0\nmin_delta = 0.1', r"exactly one of min_delta"),
    ('metric = "heldout.avg_parse_errors"', 'metric = "all.avg_parse_errors"',
     r"eval_on = heldout evaluates held-out tasks only"),
    ('"delta.heldout.avg_parse_errors <= -1"', '"delta.train.avg_parse_errors <= -1"',
     r"no metric 'delta.train.avg_parse_errors'"),
])
def test_bad_repair_experiments(tmp_path, old, new, message):
    with pytest.raises(TracetuneError, match=message):
        load_experiment(_variant(tmp_path, old, new, TINY_REPAIR))


def test_tool_metrics_belong_to_the_repair_workflow(tmp_path):
    bad = _variant(tmp_path, 'metric = "heldout.success_rate"\nmin_delta',
                   'metric = "heldout.avg_parse_errors"\nmin_delta')
    with pytest.raises(TracetuneError, match="tool metric of agent workflows"):
        load_experiment(bad)


def test_metric_names_cover_arms_evals_and_training():
    exp = load_experiment(TINY)
    names = metric_names(exp)
    assert {"adapted.heldout.success_rate", "base.capability.success_rate",
            "delta.train.avg_tokens", "control.heldout.success_rate", "train.peak_ram_gb",
            "adapted.peak_ram_gb"} <= names
    assert "control.train.success_rate" not in names  # the control runs on held-out only


def test_an_experiment_keeps_its_own_eval_defaults(tmp_path):
    exp = load_experiment(_variant(tmp_path, "train_pct = 50\ntrials = 2\n", ""))
    assert (exp.eval.trials, exp.eval.train_pct) == (8, 50)  # not `tracetune eval`'s 1 and None


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(TracetuneError, match="not found"):
        load_experiment(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[eval\n")
    with pytest.raises(TracetuneError, match="not valid TOML"):
        load_experiment(bad)
