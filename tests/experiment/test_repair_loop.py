"""experiments/repair_sft.toml in miniature, for real on the embedded model: baseline on held-out
bugs -> oracle trajectories of train bugs -> step-level SFT -> GGUF LoRA -> adapted eval ->
comparison with tool metrics -> report."""

import json
from pathlib import Path

import pytest

from tracetune.experiment.loop import run_loop
from tracetune.tasks import load_suite

TINY_REPAIR = Path(__file__).with_name("tiny_repair.toml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repair") / "run"
    results = run_loop(TINY_REPAIR, out, log=lambda m: None)
    return out, results


def test_stages_and_data(run):
    out, _ = run
    stages = {p.stem: json.loads(p.read_text()) for p in (out / "stages").glob("*.json")}
    assert set(stages) == {"baseline", "teacher", "mine", "train", "export", "adapted", "compare",
                           "report"}
    listed = {"bugs/gcd", "bugs/fibonacci", "bugs/pascal_row", "bugs/dedupe"}
    train = listed & {t.id for t in load_suite("bugs:train").tasks}
    held = listed - train
    assert train and held
    assert stages["teacher"]["summary"]["successes"] == len(train)  # the oracle fixes them all
    assert stages["mine"]["summary"]["counts"] == {"sft": 4 * len(train)}  # 4 steps each
    for arm in ("baseline", "adapted"):  # eval_on = heldout: base and adapted see held-out only
        assert stages[arm]["summary"]["n"] == len(held)
    rows = [json.loads(x) for x in (out / "data" / "rows" / "sft.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == train


def test_results_carry_tool_metrics_and_verdicts(run):
    out, results = run
    assert set(results["comparisons"]) == {"heldout"}
    metrics = {m["metric"] for m in results["comparisons"]["heldout"]["metrics"]}
    assert {"parse_errors", "wrote", "loop_detections", "steps"} <= metrics
    assert {"base.heldout.avg_parse_errors", "delta.heldout.avg_parse_errors",
            "adapted.heldout.write_rate"} <= set(results["metrics"])
    h1 = next(h for h in results["hypotheses"] if h["id"] == "H1")
    assert h1["metric"] == "heldout.avg_parse_errors" and "needs Δ ≤ -1" in h1["detail"]
    assert h1["verdict"] in ("SUPPORTED", "NOT SUPPORTED")
    report = (out / "report.md").read_text()
    assert "Tool use (per episode" in report and "parse_errors" in report
    assert (out / "report.html").is_file()
