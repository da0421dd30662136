"""`tracetune loop` for real on the embedded model (tiny.toml): killed in every stage and rerun,
it finishes without redoing finished stages or finished episodes; the report is written, renders
in a headless browser, and is refused once a frozen hypothesis is edited."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracetune.errors import TracetuneError
from tracetune.experiment.loop import Loop, run_loop
from tracetune.experiment.report import write_report
from tracetune.experiment.spec import experiment_hash, load_experiment

TINY = Path(__file__).with_name("tiny.toml")
CLI = [sys.executable, "-m", "tracetune.cli"]


def _start(exp: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["loop", str(exp), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _episodes(run: Path) -> dict:
    db = run / "trajectories.sqlite"
    if not db.is_file():
        return {}
    con = sqlite3.connect(db)
    try:
        return {(t, k): f for t, k, f in con.execute(
            "SELECT task_id, trial, finished_at FROM episode WHERE status = 'done'")}
    finally:
        con.close()


def _failed(run: Path) -> list[str]:
    con = sqlite3.connect(run / "trajectories.sqlite")
    try:
        return [t for (t,) in con.execute(
            "SELECT task_id FROM episode WHERE status = 'done' AND NOT success")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """Run tiny.toml, SIGKILL the whole loop soon after each stage starts, rerun, until done."""
    out = tmp_path_factory.mktemp("loop") / "run"
    stages = Loop(load_experiment(TINY), out).stages
    killed_in: list[str] = []
    markers: dict[str, str] = {}
    kept: dict[str, dict] = {}
    attempted: set[str] = set()
    for _ in range(len(stages) + 2):
        proc = _start(TINY, out)
        target = None
        while proc.poll() is None and target is None:  # the next stage not yet killed once
            target = next((s for s in stages if s not in attempted
                           and (out / "stages" / f"{s}.started").is_file()
                           and not (out / "stages" / f"{s}.json").is_file()), None)
            time.sleep(0.05)
        if proc.poll() is not None:  # finished (every stage done) or failed
            break
        attempted.add(target)
        time.sleep(1.0 if target in ("compare", "report") else 3.0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (out / "stages" / f"{target}.json").is_file():  # the kill landed mid-stage
            killed_in.append(target)
        for s in stages:  # finished stages must never be redone
            m = out / "stages" / f"{s}.json"
            if m.is_file():
                markers.setdefault(s, m.read_text())
        for run in ("baseline", "adapted"):
            kept[run] = {**kept.get(run, {}), **_episodes(out / run)}
    log = proc.communicate()[0] if proc.stdout else ""
    assert proc.returncode == 0, log
    return out, stages, killed_in, markers, kept, log


def test_killed_loop_resumes_every_stage(killed_run):
    out, stages, killed_in, markers, kept, log = killed_run
    assert {"baseline", "train", "export", "adapted", "capability"} <= set(killed_in), killed_in
    for s in stages:
        assert (out / "stages" / f"{s}.json").is_file(), s
        assert not (out / "stages" / f"{s}.started").exists()
    for s, text in markers.items():  # a finished stage's marker is never rewritten
        assert (out / "stages" / f"{s}.json").read_text() == text, s
    exp = load_experiment(TINY)
    for run in ("baseline", "adapted"):
        final = _episodes(out / run)
        assert len(final) == 8 * exp.eval.trials  # exactly one episode per (task, trial)
        for key, finished_at in kept[run].items():  # finished episodes were kept, not redone
            assert final[key] == finished_at
    assert "[baseline] cached" in log and "decision:" in log


def test_results_and_report(killed_run):
    out, *_ = killed_run
    results = json.loads((out / "results.json").read_text())
    assert {"heldout", "train", "all", "capability"} <= set(results["comparisons"])
    assert [h["id"] for h in results["hypotheses"]] == ["H1", "H2"]
    assert all(h["verdict"] in ("SUPPORTED", "NOT SUPPORTED") for h in results["hypotheses"])
    assert results["decision"]["outcome"] in ("GO", "ITERATE", "ABORT")
    m = results["metrics"]
    base = _episodes(out / "baseline")
    assert m["base.all.n"] == len(base)
    assert m["delta.heldout.success_rate"] == pytest.approx(
        m["adapted.heldout.success_rate"] - m["base.heldout.success_rate"])
    assert m["train.peak_ram_gb"] > 0.2 and m["train.rows"] >= 1
    held = set(results["split"]["heldout"])
    for arm, run in (("base", "baseline"), ("adapted", "adapted")):  # every failure, one kind
        failed = [t for t in _failed(out / run) if t in held]
        assert sum(results["failures"][arm].values()) == len(failed)
    md = (out / "report.md").read_text()
    assert ("## Held-out tasks: why failed episodes failed" in md) == \
        any(results["failures"].values())
    for heading in ("## Answer", "## Pre-registered hypotheses", "## Decision", "## Held-out",
                    "## Reproducibility"):
        assert heading in md
    assert results["decision"]["outcome"] in md
    for name in ("success_per_task", "attempts_duration", "loss", "capability"):
        assert (out / "report_files" / f"{name}.png").stat().st_size > 5000
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page and "<script" not in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")


def test_report_renders_in_headless_chromium(killed_run, tmp_path):
    out, *_ = killed_run
    browser = _chromium()
    if browser is None:
        if os.environ.get("TRACETUNE_REQUIRE_BROWSER"):
            pytest.fail("no chromium found, and TRACETUNE_REQUIRE_BROWSER is set")
        pytest.skip("chromium is not installed (apt install chromium)")
    # The report plus a probe that records, after load, whether every image decoded.
    page = (out / "report.html").read_text().replace("</body>", (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.title='images:'+i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+"
        "i.length+' tables:'+document.querySelectorAll('table').length;});</script></body>"))
    probe = tmp_path / "probe.html"
    probe.write_text(page)
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run(args + ["--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert "<title>images:4/4 tables:" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    subprocess.run(args + [f"--screenshot={shot}", "--window-size=1200,2400",
                           (out / "report.html").as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert len(img.getcolors(maxcolors=1 << 16) or []) > 20  # drawn, not a blank page


def test_report_refuses_edited_hypotheses(killed_run, tmp_path):
    out, *_ = killed_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    write_report(copy)  # unchanged: fine
    exp_file = copy / "experiment.toml"
    exp_file.write_text(exp_file.read_text().replace("min_delta = 0.05", "min_delta = -0.5"))
    with pytest.raises(TracetuneError, match=r"differ from those pre-registered.*"
                                             r"H1.min_delta 0.05 -> -0.5"):
        write_report(copy)
    exp_file.write_text((out / "experiment.toml").read_text())
    prereg = copy / "preregistration.json"  # editing the frozen record itself is caught too
    record = json.loads(prereg.read_text())
    record["content"]["hypotheses"][0]["min_delta"] = -0.5
    prereg.write_text(json.dumps(record))
    with pytest.raises(TracetuneError, match="edited after it was frozen"):
        write_report(copy)


def test_editing_a_frozen_hypothesis_after_baseline_is_refused(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(TINY.read_text().replace("trials = 2", "trials = 1").replace(
        "[eval]\n", "[eval]\nlimit = 3\n"))
    out = tmp_path / "run"
    run_loop(exp, out, until="baseline", log=lambda m: None)
    assert (out / "stages" / "baseline.json").is_file()
    assert not (out / "stages" / "mine.json").exists()
    exp.write_text(exp.read_text().replace("min_delta = 0.05", "min_delta = 0.01"))
    with pytest.raises(TracetuneError, match=r"H1.min_delta 0.05 -> 0.01"):
        run_loop(exp, out, log=lambda m: None)
    # the CLI says it in one line, before any work
    r = subprocess.run(CLI + ["loop", str(exp), "--out", str(out)], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "pre-registered" in r.stderr and "Traceback" not in r.stderr
    # a changed non-frozen section makes the baseline stale: one message, asks for --from
    exp.write_text(exp.read_text().replace("min_delta = 0.01", "min_delta = 0.05")
                   .replace("trials = 1", "trials = 3"))
    with pytest.raises(TracetuneError, match=r"changed since stage baseline.*--from baseline"):
        run_loop(exp, out, log=lambda m: None)


def test_from_a_stage_whose_input_is_missing(tmp_path):
    with pytest.raises(TracetuneError, match=r"--from adapted: it needs the output of "
                                             r"baseline, mine, train, export"):
        run_loop(TINY, tmp_path / "run", from_stage="adapted", log=lambda m: None)
    with pytest.raises(TracetuneError, match=r"--until .nosuch.: not a stage"):
        run_loop(TINY, tmp_path / "run2", until="nosuch", log=lambda m: None)


def test_a_record_frozen_before_a_new_hypothesis_field_still_verifies(killed_run, tmp_path):
    out, *_ = killed_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    prereg = copy / "preregistration.json"
    record = json.loads(prereg.read_text())
    for h in record["content"]["hypotheses"]:  # as an older tracetune froze it: no max_delta
        assert h.pop("max_delta") is None
    record["sha256"] = experiment_hash(record["content"])
    prereg.write_text(json.dumps(record))
    write_report(copy)  # the same claims: accepted
    exp_file = copy / "experiment.toml"
    exp_file.write_text(exp_file.read_text().replace("min_delta = 0.05", "max_delta = 0.05"))
    with pytest.raises(TracetuneError, match=r"H1.max_delta None -> 0.05"):
        write_report(copy)


def test_stages_recorded_before_a_new_setting_existed_stay_cached(killed_run, tmp_path):
    out, stages, *_ = killed_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for stage in stages:  # as an older tracetune recorded them: no check_timeout_s knob, the
        # workflow options of every workflow as flat keys, other keys
        marker = copy / "stages" / f"{stage}.json"
        record = json.loads(marker.read_text())
        record["key"] = "0" * 16
        eval_settings = record["settings"]["sections"].get("eval")
        if eval_settings is not None:
            assert eval_settings.pop("check_timeout_s") is not None
            eval_settings.update(min_tests=3, max_iters=7, test_policy="end")
        marker.write_text(json.dumps(record))
    logs: list[str] = []
    run_loop(TINY, copy, log=logs.append)
    assert [m for m in logs if m.startswith("[")] == [f"[{s}] cached" for s in stages]
    # a setting the record states with another value is still a change
    marker = copy / "stages" / "baseline.json"
    record = json.loads(marker.read_text())
    record["settings"]["sections"]["eval"]["temperature"] = 0.123
    marker.write_text(json.dumps(record))
    with pytest.raises(TracetuneError, match="changed since stage baseline"):
        run_loop(TINY, copy, log=logs.append)


def test_a_setting_missing_from_a_record_must_hold_its_default(killed_run, tmp_path):
    out, *_ = killed_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    marker = copy / "stages" / "baseline.json"
    record = json.loads(marker.read_text())
    record["key"] = "0" * 16
    record["settings"]["sections"]["eval"].pop("check_timeout_s")
    marker.write_text(json.dumps(record))
    exp = tmp_path / "exp.toml"  # the knob the record lacks, set away from its default (10)
    exp.write_text(TINY.read_text().replace("[eval]\n", "[eval]\ncheck_timeout_s = 3.0\n"))
    with pytest.raises(TracetuneError, match="changed since stage baseline"):
        run_loop(exp, copy, log=lambda m: None)


def test_stage_logs_show_progress(killed_run):
    out, *_ = killed_run
    from tracetune.experiment.layout import RunLayout

    layout = RunLayout(out)
    exp = load_experiment(TINY)
    for stage in ("baseline", "adapted"):
        text = layout.log(stage).read_text()
        n = 8 * exp.eval.trials
        assert f"[{stage}] {n}/{n} episodes (100%)" in text, text[-2000:]
    train_log = layout.log("train").read_text()
    assert re.search(r"\[train\] (\d+)/\1 steps \(100%\).*loss \d", train_log), train_log[-2000:]


def test_progress_lines_are_throttled_with_rate_and_eta():
    from tracetune.experiment.progress import ProgressLines

    now = [0.0]
    lines = ProgressLines(interval_s=10, clock=lambda: now[0])
    printed = []
    for i in range(41):
        now[0] = float(i)
        line = lines.line("baseline", i, 40)
        if line:
            printed.append(line)
    assert printed[0] == "[baseline] 0/40 episodes (0%)"
    assert printed[1] == "[baseline] 10/40 episodes (25%), 1.00 episodes/s, ETA 30s"
    assert printed[-1] == "[baseline] 40/40 episodes (100%), 1.00 episodes/s, took 40s"
    assert len(printed) == 5
