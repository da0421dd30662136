"""`tracetune loop EXPERIMENT.toml --out RUN`: the whole loop, as cached, resumable stages.

The stages are the rows of `stages.STAGES` (what each reads, needs and writes); the paths are
`layout.RunLayout`'s. A stage is done when RUN/stages/STAGE.json exists with the stage's key: a
hash of the experiment settings it reads and of the keys of the stages it depends on. Done stages
are skipped; a killed stage leaves no marker, so the next loop reruns it, continuing from what it
saved (evaluations keep their finished episodes, training its last checkpoint; the other stages
are short and restart). A changed setting makes the stages that read it stale: the loop then stops
and asks for `--from STAGE` (which redoes that stage and every later one) or a new run directory.
Hypotheses and decision criteria are frozen before the first stage (see prereg).

Records keep the settings they were made with, so a record written by an earlier tracetune
still matches when the only differences are settings added since (which must then hold their
defaults) or settings earlier releases kept elsewhere (see `upgrade_settings`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from tracetune.errors import TracetuneError
from tracetune.experiment import prereg
from tracetune.experiment.child import run_in_child
from tracetune.experiment.layout import RunLayout
from tracetune.experiment.progress import ProgressLines
from tracetune.experiment.spec import (Experiment, as_json, experiment_hash,
                                      same_settings)
from tracetune.experiment.rounds import stage_table
from tracetune.experiment.stages import Context, Stage, active_stages

Log = Callable[[str], None]


class Loop:
    """Plans and runs one experiment's stages in one run directory."""

    def __init__(self, exp: Experiment, out: Path, *, log: Log = print,
                 progress: Callable[..., None] | None = None,
                 table: tuple[Stage, ...] | None = None) -> None:
        self.exp, self.layout, self.log = exp, RunLayout(out), log
        # progress(stage, done, total, note=""): episodes or training steps of a running stage
        self.progress = progress or (lambda stage, done, total, note="": None)
        table = stage_table(exp) if table is None else table  # loop experiments' by default
        self.table = {s.name: s for s in table}
        self.stages = [s.name for s in active_stages(exp, table)]

    @property
    def out(self) -> Path:
        return self.layout.root

    # --- planning --------------------------------------------------------------------------------
    def _section(self, name: str):
        head, _, attr = name.partition(".")
        value = self.exp.section(head) if head != "experiment" else \
            as_json(self.exp.info.__dict__)
        return value[attr] if attr else value

    def _section_defaults(self, name: str):
        head, _, attr = name.partition(".")
        values = self.exp.section_defaults("info" if head == "experiment" else head)
        return values.get(attr) if attr else values

    def settings(self, stage: str) -> dict:
        """What a stage reads from the experiment (its sections, as JSON would hold them)."""
        row = self.table[stage]
        return as_json({"sections": {s: self._section(s) for s in row.reads},
                        **row.resolved(self.exp)})

    def defaults(self, stage: str) -> dict:
        """The defaults of the settings `settings(stage)` holds, nested the same way."""
        return {"sections": {s: self._section_defaults(s) for s in self.table[stage].reads}}

    def needs(self, stage: str) -> list[str]:
        return [d for d in self.table[stage].needs if d in self.stages]

    def key(self, stage: str) -> str:
        data = {"stage": stage, **self.settings(stage),
                "deps": {d: self.key(d) for d in self.needs(stage)}}
        return experiment_hash(data)[:16]

    def matches(self, stage: str, record: dict) -> bool:
        """A stage's record (finished or started) still holds for this experiment: the same
        key; or the record comes from an earlier tracetune (see `upgrade_settings`) and states
        the same value for every setting, and so do the records of the stages it reads."""
        if record.get("key") == self.key(stage):
            return True
        if "settings" not in record or not same_settings(
                upgrade_settings(record["settings"]), self.settings(stage),
                self.defaults(stage)):
            return False
        for dep in self.needs(stage):
            path = self.layout.marker(dep)
            if not (path.is_file() and self.matches(dep, json.loads(path.read_text()))):
                return False
        return True

    def done(self, stage: str) -> dict | None:
        path = self.layout.marker(stage)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if not self.matches(stage, record):
            reads = ", ".join(self.table[stage].reads) or "only earlier stages"
            raise TracetuneError(
                f"the experiment changed since stage {stage} ran in {self.out} (it reads "
                f"{reads}); rerun with --from {stage} to redo it and every later stage, or use "
                "a new --out")
        return record

    # --- running ---------------------------------------------------------------------------------
    def run(self, *, from_stage: str | None = None, until: str | None = None) -> dict | None:
        for name, value in (("--from", from_stage), ("--until", until)):
            if value is not None and value not in self.stages:
                raise TracetuneError(f"{name} {value!r}: not a stage of this experiment "
                                     f"({', '.join(self.stages)})")
        from tracetune.staging import check_output_dir

        check_output_dir(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        record = prereg.load(self.out)
        if record is None:
            if any(self.layout.stages.glob("*.json")):
                raise TracetuneError(f"{self.out} holds stage results but no pre-registration; "
                                     "use a new --out")
            record = prereg.freeze(self.exp, self.out)
            self.log(f"pre-registered {len(self.exp.hypotheses)} hypothesis(es) and the "
                     f"decision criteria (sha256 {record['sha256'][:12]})")
        prereg.verify(self.exp, self.out)
        if not self.layout.experiment.exists() or \
                not self.layout.experiment.samefile(self.exp.path):  # a rerun of RUN's own copy
            shutil.copyfile(self.exp.path, self.layout.experiment)

        first = self.stages.index(from_stage) if from_stage else 0
        last = self.stages.index(until) if until else len(self.stages) - 1
        if from_stage:
            missing = [d for d in self._upstream(from_stage)
                       if not self.layout.marker(d).is_file()]
            if missing:
                raise TracetuneError(f"--from {from_stage}: it needs the output of "
                                     f"{', '.join(missing)}, which has not run in {self.out}")
            # Only what the redone stage's output feeds is out of date; a later stage that does
            # not read it (the teacher's rollouts after the baseline) keeps its results.
            for stage in [from_stage, *self.downstream(from_stage)]:
                self._clear(stage)
        for stage in self.stages[:first]:
            self.done(stage)  # stale upstream stages fail here, before any work
        for stage in self.stages[first:last + 1]:
            if self.done(stage):
                self.log(f"[{stage}] cached")
                continue
            self._run_stage(stage)
        results = self.layout.results
        return json.loads(results.read_text()) if results.is_file() else None

    def _upstream(self, stage: str) -> list[str]:
        seen: list[str] = []
        for d in self.needs(stage):
            for u in self._upstream(d) + [d]:
                if u not in seen:
                    seen.append(u)
        return seen

    def downstream(self, stage: str) -> list[str]:
        """The stages that need `stage`'s output, directly or through others, in table order."""
        return [s for s in self.stages if stage in self._upstream(s)]

    def _clear(self, stage: str) -> None:
        self.layout.marker(stage).unlink(missing_ok=True)
        for path in self.table[stage].outputs(self.layout):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _run_stage(self, stage: str) -> None:
        started = self.layout.started(stage)
        started.parent.mkdir(parents=True, exist_ok=True)
        key, settings = self.key(stage), self.settings(stage)
        if started.is_file() and not self.matches(stage, _started_record(started)):
            self._clear(stage)  # partial output of another configuration: start over
        started.write_text(json.dumps({"key": key, "settings": settings}))
        self.log(f"[{stage}] running (log: {self.layout.log(stage)})")
        t0 = time.time()
        summary, peak = run_in_child(
            _run_in_child, (str(self.exp.path), str(self.out), stage, self.table[stage].run),
            name=stage, log_file=self.layout.log(stage), on_log=self.log,
            on_progress=self.progress)
        record = {"stage": stage, "key": key, "settings": settings, "started_at": t0,
                  "finished_at": time.time(), "seconds": round(time.time() - t0, 2),
                  "peak_ram_gb": peak, "summary": summary or {}}
        tmp = self.layout.marker(stage).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.layout.marker(stage))
        started.unlink(missing_ok=True)
        self.log(f"[{stage}] done in {record['seconds']:.0f} s")


def upgrade_settings(settings: dict) -> dict:
    """A stage record's settings as this release states them. Earlier releases kept the
    workflows' options as flat [eval] keys, each workflow ignoring the others' (max_iters on
    direct); those are dropped where the recorded workflow has no such option."""
    from tracetune.agents.spec import WORKFLOWS
    from tracetune.eval.config import LEGACY_WORKFLOW_KEYS

    sections = settings.get("sections", {})
    ev = sections.get("eval")
    if not isinstance(ev, dict) or ev.get("workflow") not in WORKFLOWS:
        return settings
    own = {f for f in WORKFLOWS[ev["workflow"]].config_cls.__dataclass_fields__}
    ev = {k: v for k, v in ev.items() if k not in LEGACY_WORKFLOW_KEYS or k in own}
    return {**settings, "sections": {**sections, "eval": ev}}


def _started_record(path: Path) -> dict:
    text = path.read_text()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"key": text.strip()}  # older: the bare key


def _run_in_child(exp_path: str, out: str, stage: str, run: Callable[[Context], dict],
                  channel) -> dict:
    """In the stage's child process: load the experiment and run the stage's function."""
    def say(msg: str) -> None:
        print(msg, flush=True)
        channel.put(("log", msg))

    lines = ProgressLines()

    def progress(stage_name: str, done: int, total: int, note: str = "") -> None:
        channel.put(("progress", stage_name, done, total, note))
        line = lines.line(stage_name, done, total, note)
        if line:  # the stage log gets throttled progress lines (the terminal draws its own)
            print(line, flush=True)

    from tracetune.experiment.distill import load_any

    ctx = Context(load_any(Path(exp_path))[0], RunLayout(Path(out)), log=say,
                  progress=progress)
    return run(ctx)


def run_loop(path: Path, out: Path, *, from_stage: str | None = None, until: str | None = None,
             log: Log = print, progress=None) -> dict | None:
    """Load and validate the experiment (a loop experiment, or a distillation experiment:
    `experiment.distill`), then run (or continue) its stages in `out`."""
    from tracetune.experiment.distill import load_any

    exp, table = load_any(path)
    return Loop(exp, out, log=log, progress=progress, table=table).run(from_stage=from_stage,
                                                                       until=until)
