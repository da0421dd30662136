"""`tracetune loop EXPERIMENT.toml --out RUN`: the whole loop, as cached, resumable stages.

    baseline    eval of the base model on the [eval] tasks (both splits, or   RUN/baseline/
                the held-out ones with eval_on = "heldout")
    teacher     [teacher] model's trajectories of the train tasks             RUN/teacher/
    mine        training rows from the train-split tasks of the teacher's     RUN/data/
                trajectories (with a [teacher]) or the baseline's
    train       LoRA adapter                                                  RUN/adapter/
    export      adapter -> GGUF LoRA / merged GGUF (parity-checked)           RUN/export/
    adapted     eval of the adapted model on the same tasks and seeds         RUN/adapted/
    capability  HumanEval (or a fixed subset), greedy, base and adapted       RUN/capability/
    control     adapter on as many unfiltered rows (data, adapter, export)    RUN/control/
    control_eval  the control adapter on the held-out tasks                   RUN/control/eval/
    reference   eval of each reference model                                  RUN/reference/NAME/
    compare     comparisons, hypothesis verdicts, decision                    RUN/results.json
    report      report.md and a self-contained report.html                    RUN/report.*

A stage is done when RUN/stages/STAGE.json exists with the stage's key: a hash of the experiment
sections it reads and of the keys of the stages it depends on. Done stages are skipped; a killed
stage leaves no marker, so the next loop reruns it, continuing from what it saved (evaluations
keep their finished episodes, training its last checkpoint; the other stages are short and
restart). A changed experiment section makes the stages that read it stale: the loop then stops
and asks for `--from STAGE` (which redoes that stage and every later one) or a new run directory.
Hypotheses and decision criteria are frozen before the first stage (see prereg).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from tracetune.errors import TracetuneError
from tracetune.experiment import prereg
from tracetune.experiment.spec import (Experiment, as_json, experiment_hash, field_defaults,
                                      load_experiment, same_settings)

STAGES = ("baseline", "teacher", "mine", "train", "export", "adapted", "capability", "control",
          "control_eval", "reference", "compare", "report")
# stage -> (experiment sections it reads, stages it depends on)
DEPENDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "baseline": (("experiment", "models.base", "eval"), ()),
    "teacher": (("experiment", "teacher", "eval"), ()),
    "mine": (("mine",), ("baseline", "teacher")),
    "train": (("train", "models.train_base"), ("mine",)),
    "export": (("export",), ("train",)),
    "adapted": (("models.adapted",), ("baseline", "export")),
    "capability": (("capability", "models.adapted"), ("export",)),
    "control": (("control",), ("mine", "train", "export")),
    "control_eval": ((), ("baseline", "control")),
    "reference": (("models.reference",), ("baseline",)),
    "compare": ((), ("baseline", "adapted", "capability", "control_eval", "reference")),
    "report": ((), ("compare",)),
}
Log = Callable[[str], None]


class Loop:
    def __init__(self, exp: Experiment, out: Path, *, log: Log = print,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.exp, self.out, self.log = exp, Path(out), log
        self.progress = progress or (lambda stage, done, total: None)
        self.stages = [s for s in STAGES if self._active(s)]

    # --- planning --------------------------------------------------------------------------------
    def _active(self, stage: str) -> bool:
        if stage == "export":
            return self.exp.export.target != "none"
        if stage == "capability":
            return self.exp.capability.enabled
        if stage in ("control", "control_eval"):
            return self.exp.control.enabled
        if stage == "reference":
            return bool(self.exp.models.reference)
        if stage == "teacher":
            return self.exp.teacher.model is not None
        return True

    def _section(self, name: str):
        head, _, attr = name.partition(".")
        value = self.exp.section(head) if head != "experiment" else asdict(self.exp.info)
        return value[attr] if attr else value

    def settings(self, stage: str) -> dict:
        """What a stage reads from the experiment (its sections, as JSON would hold them)."""
        data = {"sections": {s: self._section(s) for s in DEPENDS[stage][0]}}
        if stage in ("train", "control"):  # train_base defaults to base
            data["train_base"] = self.train_base
        return as_json(data)

    def defaults(self, stage: str) -> dict:
        """The defaults of the settings `settings(stage)` holds, nested the same way."""
        return {"sections": {s: self._section_defaults(s) for s in DEPENDS[stage][0]}}

    def _section_defaults(self, name: str):
        head, _, attr = name.partition(".")
        values = field_defaults(self.exp.info if head == "experiment" else getattr(self.exp, head))
        return values.get(attr) if attr else values

    def key(self, stage: str) -> str:
        data = {"stage": stage, **self.settings(stage),
                "deps": {d: self.key(d) for d in DEPENDS[stage][1] if d in self.stages}}
        return experiment_hash(data)[:16]

    def matches(self, stage: str, record: dict) -> bool:
        """A stage's record (finished or started) still holds for this experiment: the same
        key; or the record comes from an earlier tracetune that lacked some settings this one
        has (this experiment must hold each at its default) and states the same value for
        every other one, and so do the records of the stages it reads."""
        if record.get("key") == self.key(stage):
            return True
        if "settings" not in record or not same_settings(
                record["settings"], self.settings(stage), self.defaults(stage)):
            return False
        for dep in DEPENDS[stage][1]:
            path = self.marker(dep)
            if dep in self.stages and not (path.is_file()
                                           and self.matches(dep, json.loads(path.read_text()))):
                return False
        return True

    def marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def done(self, stage: str) -> dict | None:
        path = self.marker(stage)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if not self.matches(stage, record):
            raise TracetuneError(
                f"the experiment changed since stage {stage} ran in {self.out} (it reads "
                f"{', '.join(DEPENDS[stage][0]) or 'only earlier stages'}); rerun with "
                f"--from {stage} to redo it and every later stage, or use a new --out")
        return record

    @property
    def train_base(self) -> str:
        return self.exp.models.train_base or self.exp.models.base

    # --- running ---------------------------------------------------------------------------------
    def run(self, *, from_stage: str | None = None, until: str | None = None) -> dict | None:
        for name, value in (("--from", from_stage), ("--until", until)):
            if value is not None and value not in self.stages:
                raise TracetuneError(f"{name} {value!r}: not a stage of this experiment "
                                     f"({', '.join(self.stages)})")
        self.out.mkdir(parents=True, exist_ok=True)
        record = prereg.load(self.out)
        if record is None:
            if any((self.out / "stages").glob("*.json")):
                raise TracetuneError(f"{self.out} holds stage results but no pre-registration; "
                                     "use a new --out")
            record = prereg.freeze(self.exp, self.out)
            self.log(f"pre-registered {len(self.exp.hypotheses)} hypothesis(es) and the "
                     f"decision criteria (sha256 {record['sha256'][:12]})")
        prereg.verify(self.exp, self.out)
        shutil.copyfile(self.exp.path, self.out / "experiment.toml")

        first = self.stages.index(from_stage) if from_stage else 0
        last = self.stages.index(until) if until else len(self.stages) - 1
        if from_stage:
            missing = [d for d in self._upstream(from_stage) if not self.marker(d).is_file()]
            if missing:
                raise TracetuneError(f"--from {from_stage}: it needs the output of "
                                     f"{', '.join(missing)}, which has not run in {self.out}")
            for stage in self.stages[first:]:
                self._clear(stage)
        for stage in self.stages[:first]:
            self.done(stage)  # stale upstream stages fail here, before any work
        for stage in self.stages[first:last + 1]:
            if self.done(stage):
                self.log(f"[{stage}] cached")
                continue
            self._run_stage(stage)
        results = self.out / "results.json"
        return json.loads(results.read_text()) if results.is_file() else None

    def _upstream(self, stage: str) -> list[str]:
        seen: list[str] = []
        for d in DEPENDS[stage][1]:
            if d in self.stages:
                for u in self._upstream(d) + [d]:
                    if u not in seen:
                        seen.append(u)
        return seen

    def _clear(self, stage: str) -> None:
        self.marker(stage).unlink(missing_ok=True)
        for path in (self.out / name for name in OUTPUTS[stage]):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _run_stage(self, stage: str) -> None:
        started = self.out / "stages" / f"{stage}.started"
        started.parent.mkdir(parents=True, exist_ok=True)
        key, settings = self.key(stage), self.settings(stage)
        if started.is_file() and not self.matches(stage, _started_record(started)):
            self._clear(stage)  # partial output of another configuration: start over
        started.write_text(json.dumps({"key": key, "settings": settings}))
        self.log(f"[{stage}] running (log: {self.out / 'logs' / (stage + '.log')})")
        t0 = time.time()
        summary, peak = self._in_child(stage)
        record = {"stage": stage, "key": key, "settings": settings, "started_at": t0,
                  "finished_at": time.time(), "seconds": round(time.time() - t0, 2),
                  "peak_ram_gb": peak, "summary": summary or {}}
        tmp = self.marker(stage).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.marker(stage))
        started.unlink(missing_ok=True)
        self.log(f"[{stage}] done in {record['seconds']:.0f} s")

    def _in_child(self, stage: str) -> tuple[dict, float]:
        """Run one stage in a fresh process: libraries a stage leaves behind (torch's thread
        pools after training, loaded models) cannot slow the next one, the stage's peak memory
        is its own, and its output goes to RUN/logs/STAGE.log. The child dies with the loop."""
        import multiprocessing
        import queue as queue_mod

        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        (self.out / "logs").mkdir(exist_ok=True)
        child = ctx.Process(target=_child_main, name=f"tracetune-{stage}",
                            args=(str(self.exp.path), str(self.out), stage, q))
        child.start()
        peak, result = 0, None
        try:
            while result is None:
                peak = max(peak, _vm_hwm(child.pid))
                try:
                    msg = q.get(timeout=0.25)
                except queue_mod.Empty:
                    if not child.is_alive():
                        break
                    continue
                if msg[0] == "log":
                    self.log(msg[1])
                elif msg[0] == "progress":
                    self.progress(*msg[1:])
                else:
                    result = msg
            child.join()
        except BaseException:
            child.terminate()
            child.join()
            raise
        peak_gb = round(peak / 2**30, 3)
        if result is None:
            raise TracetuneError(f"stage {stage} died (exit code {child.exitcode}); see "
                                 f"{self.out / 'logs' / (stage + '.log')}; rerun to continue")
        if result[0] == "error":
            raise TracetuneError(result[1])
        if result[0] == "crash":
            raise TracetuneError(f"stage {stage} failed: {result[1]}")
        return result[1], peak_gb

    # --- helpers the stages share -----------------------------------------------------------------
    def eval_config(self, model: str, **changes):
        from tracetune.eval.runner import EvalConfig

        ev = self.exp.eval
        values = dict(suite=ev.suite, workflow=ev.workflow, model=model, trials=ev.trials,
                      seed=self.exp.info.seed, temperature=ev.temperature, top_p=ev.top_p,
                      max_tokens=ev.max_tokens, max_attempts=ev.max_attempts,
                      min_tests=ev.min_tests, split="test" if ev.eval_on == "heldout" else "all",
                      train_pct=ev.train_pct, tasks=ev.tasks, max_difficulty=ev.max_difficulty,
                      limit=ev.limit, concurrency=ev.concurrency,
                      check_timeout_s=ev.check_timeout_s, max_iters=ev.max_iters,
                      test_policy=ev.test_policy)
        values.update(changes)
        return EvalConfig(**values)

    def evaluate(self, stage: str, config, out: Path) -> dict:
        from tracetune.eval.metrics import summarize_run
        from tracetune.eval.runner import run_eval
        from tracetune.traces.store import DB_NAME, Store

        self.log(f"[{stage}] {config.model} on {config.suite} -> {out}")
        run_eval(config, out, resume=(out / DB_NAME).is_file(),
                 on_progress=lambda done, total: self.progress(stage, done, total))
        store = Store(out)
        try:
            _, overall = summarize_run(store.episodes())
        finally:
            store.close()
        self.log(f"[{stage}] {overall.successes}/{overall.n} passed")
        return {"run": str(out.relative_to(self.out)), "n": overall.n,
                "successes": overall.successes}

    def artifact(self, export_dir: Path) -> Path:
        """The exported file the adapted model loads."""
        gguf_lora = self.exp.export.target == "gguf-lora"
        return export_dir / ("adapter.gguf" if gguf_lora else "merged.gguf")

    @property
    def gguf_base(self) -> str | None:
        """The base model's GGUF spec without options (embedded or gguf:PATH), if it has one."""
        head = self.exp.models.base.split(",")[0]
        return head if head == "embedded" or head.startswith("gguf:") else None

    def adapted_spec(self, export_dir: Path, adapter_dir: Path) -> str:
        explicit = self.exp.models.adapted
        target = self.exp.export.target
        artifact = self.artifact(export_dir)
        if explicit:
            return explicit.format(export=artifact, adapter=adapter_dir)
        base = self.exp.models.base
        if target == "gguf-lora":
            if self.gguf_base:
                return f"{base},lora={artifact}"
            raise TracetuneError(f"[export] target gguf-lora needs a GGUF base model "
                                 f"(embedded or gguf:PATH), not {base!r}; set [models] adapted")
        if target == "merged-gguf":
            return f"gguf:{artifact}"
        source = self.train_base.removeprefix("hf:")
        return f"hf:{source},adapter={adapter_dir}"


def _vm_hwm(pid: int) -> int:
    """Peak resident memory of a live process, in bytes (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _child_main(exp_path: str, out: str, stage: str, q) -> None:
    import ctypes
    import os
    import signal
    import traceback
    import warnings

    try:  # die with the loop: a killed loop must not leave a stage writing behind it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    log = open(Path(out) / "logs" / f"{stage}.log", "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.simplefilter("ignore", FutureWarning)

    def say(msg: str) -> None:
        print(msg, flush=True)
        q.put(("log", msg))

    try:
        loop = Loop(load_experiment(Path(exp_path)), Path(out), log=say,
                    progress=lambda *a: q.put(("progress", *a)))
        q.put(("done", RUNNERS[stage](loop)))
    except TracetuneError as exc:
        traceback.print_exc()
        q.put(("error", str(exc)))
    except BaseException:
        trace = traceback.format_exc()
        print(trace, flush=True)
        q.put(("crash", trace.strip().splitlines()[-1]))


# --- the stages ----------------------------------------------------------------------------------

def _baseline(loop: Loop) -> dict:
    return loop.evaluate("baseline", loop.eval_config(loop.exp.models.base),
                         loop.out / "baseline")


def _teacher(loop: Loop) -> dict:
    t = loop.exp.teacher
    config = loop.eval_config(t.model, split="train", trials=t.rollouts,
                              temperature=t.temperature, max_tokens=t.max_tokens,
                              max_iters=t.max_iters)
    return loop.evaluate("teacher", config, loop.out / "teacher")


def _mine(loop: Loop, *, out: Path | None = None, unfiltered: int = 0) -> dict:
    from tracetune.datasets.build import MineConfig, mine

    m = loop.exp.mine
    out = out or loop.out / "data"
    if out.exists():
        shutil.rmtree(out)
    config = MineConfig(kinds=m.kinds, tiers=m.tiers or MineConfig().tiers,
                        train_pct=loop.exp.eval.train_pct, max_seq_len=m.max_seq_len,
                        tokenizer=m.tokenizer, leakage_suites=m.leakage_suites,
                        max_dpo_pairs_per_task=m.max_dpo_pairs_per_task, unfiltered=unfiltered,
                        seed=loop.exp.info.seed, dpo_teacher=m.dpo_teacher)
    source = "teacher" if loop.exp.teacher.model is not None else "baseline"
    report = mine([loop.out / source], out, config)
    counts = {k: len(v) for k, v in report.rows.items()}
    loop.log(f"[mine] rows: {counts}; dropped: {report.dropped}")
    total = sum(counts.values())
    if not unfiltered and total < m.min_rows:
        shutil.rmtree(out)
        raise TracetuneError(f"mining yielded {total} rows, fewer than [mine] min_rows = "
                             f"{m.min_rows}; run more trials or relax the tiers")
    return {"counts": counts, "dropped": report.dropped}


def _started_record(path: Path) -> dict:
    text = path.read_text()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"key": text.strip()}  # older: the bare key


def _train(loop: Loop, *, data: Path | None = None, out: Path | None = None) -> dict:
    from tracetune.train.recipe import META, train

    data, out = data or loop.out / "data", out or loop.out / "adapter"
    train(data, loop.train_base, out, loop.exp.train_config, resume=out.exists())
    meta = json.loads((out / META).read_text())
    loop.log(f"[train] {meta['rows']} rows, {meta['steps']} steps, loss "
             f"{meta['first_loss']:.3f} -> {meta['last_loss']:.3f}")
    return {"rows": meta["rows"], "steps": meta["steps"], "seconds": meta["train_seconds"],
            "final_loss": meta["last_loss"], "first_loss": meta["first_loss"]}


def _export(loop: Loop, *, adapter: Path | None = None, out: Path | None = None) -> dict:
    from tracetune.export.run import export

    adapter, out = adapter or loop.out / "adapter", out or loop.out / "export"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    artifact = loop.artifact(out)
    parity = export(adapter, loop.exp.export.target, artifact, base=loop.gguf_base)
    loop.log(f"[export] {artifact.name}: {parity}")
    return {"artifact": str(artifact.relative_to(loop.out)), "parity": parity}


def _adapted(loop: Loop) -> dict:
    spec = loop.adapted_spec(loop.out / "export", loop.out / "adapter")
    return {**loop.evaluate("adapted", loop.eval_config(spec), loop.out / "adapted"),
            "model": spec}


def _capability(loop: Loop) -> dict:
    cap = loop.exp.capability
    out = {}
    for arm, spec in (("base", loop.exp.models.base),
                      ("adapted", loop.adapted_spec(loop.out / "export", loop.out / "adapter"))):
        config = loop.eval_config(spec, suite=cap.suite, workflow="direct", trials=1,
                                  temperature=cap.temperature, max_tokens=cap.max_tokens,
                                  max_attempts=1, tasks=(), max_difficulty=0, limit=cap.limit,
                                  check_timeout_s=cap.check_timeout_s)
        out[arm] = loop.evaluate("capability", config, loop.out / "capability" / arm)
    return out


def _control(loop: Loop) -> dict:
    rows = sum(json.loads(loop.marker("mine").read_text())["summary"]["counts"].values())
    root = loop.out / "control"
    root.mkdir(exist_ok=True)
    summary: dict = {}
    if not (root / "data" / "manifest.json").is_file():
        _mine(loop, out=root / "data", unfiltered=rows)
    if not (root / "adapter" / "tracetune_adapter.json").is_file():
        summary["train"] = _train(loop, data=root / "data", out=root / "adapter")
    if loop.exp.export.target != "none" and not (root / "export" / "done").is_file():
        _export(loop, adapter=root / "adapter", out=root / "export")
        (root / "export" / "done").write_text("")
    summary["rows"] = rows
    return summary


def _control_eval(loop: Loop) -> dict:
    root = loop.out / "control"
    spec = loop.adapted_spec(root / "export", root / "adapter")
    split = "test" if loop.exp.eval.train_pct < 100 else "all"
    return loop.evaluate("control_eval", loop.eval_config(spec, split=split), root / "eval")


def _reference(loop: Loop) -> dict:
    return {name: loop.evaluate("reference", loop.eval_config(spec),
                                loop.out / "reference" / name)
            for name, spec in loop.exp.models.reference.items()}


def _compare(loop: Loop) -> dict:
    from tracetune.experiment.analysis import analyze

    results = analyze(loop.exp, loop.out)
    (loop.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    for v in results["hypotheses"]:
        loop.log(f"[compare] {v['id']}: {v['verdict']} ({v['detail']})")
    loop.log(f"[compare] decision: {results['decision']['outcome']}")
    return {"decision": results["decision"]["outcome"]}


def _report(loop: Loop) -> dict:
    from tracetune.experiment.report import write_report

    md, html = write_report(loop.out)
    loop.log(f"[report] {md}\n[report] {html}")
    return {"markdown": md.name, "html": html.name}


RUNNERS: dict[str, Callable[[Loop], dict]] = {
    "baseline": _baseline, "teacher": _teacher, "mine": _mine, "train": _train, "export": _export,
    "adapted": _adapted, "capability": _capability, "control": _control,
    "control_eval": _control_eval,
    "reference": _reference, "compare": _compare, "report": _report,
}
OUTPUTS: dict[str, tuple[str, ...]] = {  # what --from (or a changed stage) removes, under RUN/
    "baseline": ("baseline",), "teacher": ("teacher",), "mine": ("data",), "train": ("adapter",),
    "export": ("export",),
    "adapted": ("adapted",), "capability": ("capability",), "control": ("control",),
    "control_eval": ("control/eval",), "reference": ("reference",),
    "compare": ("results.json",), "report": ("report.md", "report.html", "report_files"),
}


def run_loop(path: Path, out: Path, *, from_stage: str | None = None, until: str | None = None,
             log: Log = print, progress=None) -> dict | None:
    """Load and validate the experiment, then run (or continue) its loop in `out`."""
    exp = load_experiment(path)
    return Loop(exp, out, log=log, progress=progress).run(from_stage=from_stage, until=until)
