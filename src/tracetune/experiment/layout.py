"""Every path under a loop's run directory, named once.

    RUN/experiment.toml          the experiment as run (copied at every start)
    RUN/preregistration.json     hypotheses and criteria frozen before the first stage (prereg)
    RUN/stages/STAGE.json        a finished stage's record; STAGE.started while it runs
    RUN/logs/STAGE.log           a stage's output (it runs in a child process)
    RUN/baseline/  RUN/teacher/  RUN/adapted/  RUN/reference/NAME/  RUN/capability/ARM/
                                 evaluation runs (each holds a trajectory store)
    RUN/data/                    mined training data (a dataset directory)
    RUN/adapter/                 the trained LoRA adapter
    RUN/export/                  the exported adapter (adapter.gguf or merged.gguf)
    RUN/control/{data,adapter,export,eval}/   the unfiltered control arm
    RUN/results.json             the compare stage's figures, verdicts and decision
    RUN/report.md  RUN/report.html  RUN/report_files/NAME.png   the report
    RUN/NAME.json                a benchmark's own summary (benchmarks/NAME.py)

Inside those directories, files named by the module that writes them (asked for through the
static methods below, so a reader never spells them either):

    DATA/manifest.json           a dataset's row counts and what each filter dropped
    ADAPTER/tracetune_adapter.json  ADAPTER/loss.jsonl   training metadata, loss per step
    EVAL/trajectories.sqlite     an evaluation run's trajectory store

No other module spells these names: stages, the analysis, the report and the benchmarks ask a
RunLayout for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXPORT_FILES = {"gguf-lora": "adapter.gguf", "merged-gguf": "merged.gguf"}
"""[export] target -> the file the export stage writes in its directory."""


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # --- bookkeeping ---------------------------------------------------------------------------
    @property
    def experiment(self) -> Path:
        return self.root / "experiment.toml"

    @property
    def prereg(self) -> Path:
        # the file name stays beside its only writer (prereg.PREREG); imported here rather than
        # at module level so that importing the layout does not load the experiment spec
        from tracetune.experiment.prereg import PREREG

        return self.root / PREREG

    @property
    def stages(self) -> Path:
        return self.root / "stages"

    def marker(self, stage: str) -> Path:
        """A finished stage's record."""
        return self.stages / f"{stage}.json"

    def started(self, stage: str) -> Path:
        """Written when a stage starts, removed when its marker is written."""
        return self.stages / f"{stage}.started"

    def markers(self) -> dict[str, Path]:
        """Every finished stage's record, by stage name (sorted by name)."""
        return {p.stem: p for p in sorted(self.stages.glob("*.json"))}

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    # --- stage outputs -------------------------------------------------------------------------
    @property
    def baseline(self) -> Path:
        return self.root / "baseline"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def adapted(self) -> Path:
        return self.root / "adapted"

    @property
    def capability_root(self) -> Path:
        return self.root / "capability"

    def capability(self, arm: str) -> Path:
        return self.capability_root / arm

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def control_data(self) -> Path:
        return self.control / "data"

    @property
    def control_adapter(self) -> Path:
        return self.control / "adapter"

    @property
    def control_export(self) -> Path:
        return self.control / "export"

    @property
    def control_export_done(self) -> Path:
        """Written once the control's export is complete (the control stage has three parts,
        each kept once done, so a killed stage continues where it stopped)."""
        return self.control_export / "done"

    @property
    def control_eval(self) -> Path:
        return self.control / "eval"

    @property
    def rounds_root(self) -> Path:
        return self.root / "rounds"

    def round_dir(self, r: int) -> Path:
        """Round r's (r >= 2) data/, adapter/, export/, eval/, capability/ (round 1 is the
        loop's own data/, adapter/, export/, adapted/, capability/adapted/)."""
        return self.rounds_root / f"r{r}"

    def round_parts(self, r: int) -> dict[str, Path]:
        """Round r's outputs by part: data, adapter, export, eval (the [eval] tasks), capability;
        round 0 (the base model) has eval and capability only."""
        if r == 0:
            return {"eval": self.baseline, "capability": self.capability("base")}
        if r == 1:
            return {"data": self.data, "adapter": self.adapter, "export": self.export,
                    "eval": self.adapted, "capability": self.capability("adapted")}
        d = self.round_dir(r)
        return {part: d / part for part in ("data", "adapter", "export", "eval", "capability")}

    @property
    def grpo(self) -> Path:
        return self.root / "grpo"

    def grpo_parts(self) -> dict[str, Path]:
        """The GRPO stage's adapter, export, eval (the [eval] tasks) and capability."""
        return {part: self.grpo / part for part in ("adapter", "export", "eval", "capability")}

    @property
    def reference_root(self) -> Path:
        return self.root / "reference"

    def reference(self, name: str) -> Path:
        return self.reference_root / name

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_files(self) -> Path:
        return self.root / "report_files"

    def report_plot(self, name: str) -> Path:
        """One of the report's plots, as PNG."""
        return self.report_files / f"{name}.png"

    def benchmark(self, name: str) -> Path:
        """The summary benchmarks/NAME.py writes into the run directory it ran."""
        return self.root / f"{name}.json"

    # --- derived -------------------------------------------------------------------------------
    def arm_run(self, arm: str) -> Path:
        """The evaluation run of an arm on the [eval] tasks: base, adapted, control, or a
        reference model's name."""
        fixed = {"base": self.baseline, "adapted": self.adapted, "control": self.control_eval}
        return fixed.get(arm) or self.reference(arm)

    @staticmethod
    def export_file(export_dir: Path, target: str) -> Path:
        """The artifact an export of `target` writes in `export_dir`."""
        return Path(export_dir) / EXPORT_FILES[target]

    @staticmethod
    def manifest(data_dir: Path) -> Path:
        """A dataset directory's manifest (row counts, dropped rows)."""
        from tracetune.datasets.build import MANIFEST

        return Path(data_dir) / MANIFEST

    @staticmethod
    def adapter_meta(adapter_dir: Path) -> Path:
        """A trained adapter's metadata (rows, steps, seconds, first/last loss, versions)."""
        # the writers' names are imported when asked for: importing the layout loads none of them
        from tracetune.train.recipe import META

        return Path(adapter_dir) / META

    @staticmethod
    def loss_log(adapter_dir: Path) -> Path:
        """A trained adapter's loss per logging step, one JSON object a line."""
        from tracetune.train.recipe import LOSS_LOG

        return Path(adapter_dir) / LOSS_LOG

    @staticmethod
    def store(run_dir: Path) -> Path:
        """An evaluation run's trajectory store."""
        from tracetune.traces.store import DB_NAME

        return Path(run_dir) / DB_NAME

    def relative(self, path: Path) -> str:
        """`path` as recorded in stage summaries and results.json (relative to the run)."""
        return str(Path(path).relative_to(self.root))
