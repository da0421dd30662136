"""The decision can never say GO above a pre-registered hypothesis that was not supported."""

from pathlib import Path

from tracetune.experiment.analysis import _decide
from tracetune.experiment.spec import load_experiment

TINY = Path(__file__).parent / "tiny.toml"


def _metrics():
    return {"delta.heldout.success_rate": 0.2, "train.peak_ram_gb": 1.0}


def test_go_needs_every_hypothesis_supported():
    exp = load_experiment(TINY)
    supported = _decide(exp, _metrics(), [{"id": "H1", "verdict": "SUPPORTED"}])
    assert supported["outcome"] == "GO"
    refuted = _decide(exp, _metrics(), [{"id": "H1", "verdict": "NOT SUPPORTED"}])
    assert refuted["outcome"] == "ITERATE"
    assert {"criterion": "H1 supported", "observed": "NOT SUPPORTED", "holds": False} \
        in refuted["go"]


def test_the_quickstart_tests_tasks_as_the_unit():
    exp = load_experiment(Path(__file__).parents[2] / "experiments" / "quickstart.toml")
    assert [h.test for h in exp.hypotheses if h.id == "H1"] == ["paired_permutation"]
