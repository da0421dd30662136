"""The loop's stages as a table: one row per stage (name, what it reads, what it needs, what it
writes, when it is active, how it runs).

    baseline      eval of the base model on the [eval] tasks (both splits, or the held-out ones
                  with eval_on = "heldout")                                    RUN/baseline/
    teacher       [teacher] model's trajectories of the train tasks            RUN/teacher/
    mine          training rows from the train-split tasks of the teacher's trajectories (with
                  a [teacher]) or the baseline's                               RUN/data/
    train         LoRA adapter                                                 RUN/adapter/
    export        adapter -> GGUF LoRA / merged GGUF (parity-checked)          RUN/export/
    adapted       eval of the adapted model on the same tasks and seeds        RUN/adapted/
    capability    HumanEval (or a fixed subset), greedy, base and adapted      RUN/capability/
    control       adapter on as many unfiltered rows (data, adapter, export)   RUN/control/
    control_eval  the control adapter on the held-out tasks                    RUN/control/eval/
    reference     eval of each reference model                                 RUN/reference/NAME/
    compare       comparisons, hypothesis verdicts, decision                   RUN/results.json
    report        report.md and a self-contained report.html                   RUN/report.*

A new stage is one `Stage` row in `STAGES` (and its run function): the loop (`loop.py`) plans,
caches, invalidates and runs whatever the table says. Run functions take a `Context` and return
a small JSON summary (kept in the stage's record); they run in a child process.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tracetune.errors import TracetuneError
from tracetune.experiment.layout import RunLayout
from tracetune.experiment.spec import Experiment

Log = Callable[[str], None]


def _always(exp: Experiment) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], dict]
    """Does the work; returns the stage's summary (JSON data). Module-level function: it is
    handed to a child process."""
    reads: tuple[str, ...] = ()
    """Experiment sections whose settings define it ("eval", "models.base", ...)."""
    needs: tuple[str, ...] = ()
    """Stages whose output it reads (inactive ones are skipped)."""
    outputs: Callable[[RunLayout], tuple[Path, ...]] = lambda layout: ()
    """What it writes under the run directory (removed when it is redone)."""
    active: Callable[[Experiment], bool] = _always
    """Whether this experiment runs it."""
    resolved: Callable[[Experiment], dict] = lambda exp: {}
    """Settings it reads that are resolved from several sections (recorded beside them)."""


@dataclass
class Context:
    """What a stage's run function gets: the experiment, the run's layout, where to report."""

    exp: Experiment
    layout: RunLayout
    log: Log = print
    progress: Callable[..., None] = field(default=lambda stage, done, total, note="": None)
    """progress(stage, done, total, note=""): episodes (or training steps, note: the loss)."""

    def record(self, stage: str) -> dict:
        """A finished stage's record (its summary under "summary")."""
        return json.loads(self.layout.marker(stage).read_text())

    def evaluate(self, stage: str, config, out: Path) -> dict:
        """Run (or continue) one evaluation into `out`; returns {run, n, successes}."""
        from tracetune.eval.runner import run_eval
        from tracetune.traces.store import DB_NAME

        self.log(f"[{stage}] {config.model} on {config.suite} -> {out}")
        overall = run_eval(config, out, resume=(out / DB_NAME).is_file(),
                           on_progress=lambda done, total: self.progress(stage, done, total))
        self.log(f"[{stage}] {overall.successes}/{overall.n} passed")
        return {"run": self.layout.relative(out), "n": overall.n,
                "successes": overall.successes}

    def adapted_spec(self, export_dir: Path, adapter_dir: Path) -> str:
        """The spec of the model adapted by the adapter in `adapter_dir` as exported to
        `export_dir` ([models] adapted, with {export} and {adapter} filled in, when given)."""
        from tracetune.models.resolve import adapted_spec

        exp = self.exp
        target = exp.export.target
        # target none exports nothing; {export} names what merged-gguf would write, as before
        artifact = RunLayout.export_file(export_dir, "merged-gguf" if target == "none" else target)
        if exp.models.adapted:
            return exp.models.adapted.format(export=artifact, adapter=adapter_dir)
        return adapted_spec(exp.models.base, target=target, artifact=artifact,
                            adapter_dir=adapter_dir, train_base=train_base(exp))


def train_base(exp: Experiment) -> str:
    """The weights LoRA trains on: [models] train_base, else base."""
    return exp.models.train_base or exp.models.base


# --- the stages ----------------------------------------------------------------------------------

def baseline(ctx: Context) -> dict:
    return ctx.evaluate("baseline", ctx.exp.eval, ctx.layout.baseline)


def teacher(ctx: Context) -> dict:
    return ctx.evaluate("teacher", ctx.exp.teacher_config(), ctx.layout.teacher)


def mine(ctx: Context, *, out: Path | None = None, unfiltered: int = 0,
         sources: list[Path] | None = None, label: str = "mine") -> dict:
    """Mine the train-split tasks of `sources` (default: the teacher's run with a [teacher],
    else the baseline) into `out` (default RUN/data). Raises TracetuneError when fewer than
    [mine] min_rows rows come out (nothing is left in `out` then)."""
    from tracetune.datasets.build import mine as mine_runs

    exp = ctx.exp
    out = out or ctx.layout.data
    if out.exists():
        shutil.rmtree(out)
    config = dataclasses.replace(exp.mine, train_pct=exp.eval.train_pct, unfiltered=unfiltered,
                                 seed=exp.info.seed)
    if sources is None:
        sources = [ctx.layout.teacher if exp.teacher.model is not None else ctx.layout.baseline]
    report = mine_runs(sources, out, config)
    counts = {k: len(v) for k, v in report.rows.items()}
    ctx.log(f"[{label}] rows: {counts}; dropped: {report.dropped}")
    total = sum(counts.values())
    if not unfiltered and total < exp.loop_mine.min_rows:
        shutil.rmtree(out)
        raise TracetuneError(f"mining yielded {total} rows, fewer than [mine] min_rows = "
                             f"{exp.loop_mine.min_rows}; run more trials or relax the tiers")
    return {"counts": counts, "dropped": report.dropped}


def train(ctx: Context, *, data: Path | None = None, out: Path | None = None,
          init_adapter: Path | None = None, label: str = "train") -> dict:
    """Train the [train] recipe on `data` (default RUN/data) into `out` (default RUN/adapter),
    starting from the LoRA adapter in `init_adapter` when given (else a fresh one)."""
    from tracetune.train.recipe import META
    from tracetune.train.recipe import train as train_adapter

    data, out = data or ctx.layout.data, out or ctx.layout.adapter
    config = ctx.exp.train_config if init_adapter is None else dataclasses.replace(
        ctx.exp.train_config, init_adapter=str(Path(init_adapter).resolve()))
    # resume: a train killed with the loop continues from its last checkpoint (only the same
    # data, base and config are resumed), and a finished adapter is replaced only when the
    # new one is complete.
    train_adapter(data, train_base(ctx.exp), out, config, resume=True,
                  log=lambda line: ctx.log(f"[{label}] {line}"),
                  on_progress=lambda step, total, loss: ctx.progress(
                      label, step, total, f"loss {loss:.3f}" if loss is not None else ""))
    meta = json.loads((out / META).read_text())
    ctx.log(f"[{label}] {meta['rows']} rows, {meta['steps']} steps, loss "
            f"{meta['first_loss']:.3f} -> {meta['last_loss']:.3f}")
    return {"rows": meta["rows"], "steps": meta["steps"], "seconds": meta["train_seconds"],
            "final_loss": meta["last_loss"], "first_loss": meta["first_loss"]}


def export(ctx: Context, *, adapter: Path | None = None, out: Path | None = None,
           label: str = "export") -> dict:
    from tracetune.export.run import export as export_adapter
    from tracetune.models.resolve import gguf_base

    adapter, out = adapter or ctx.layout.adapter, out or ctx.layout.export
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    artifact = RunLayout.export_file(out, ctx.exp.export.target)
    parity = export_adapter(adapter, ctx.exp.export.target, artifact,
                            base=gguf_base(ctx.exp.models.base))
    ctx.log(f"[{label}] {artifact.name}: {parity}")
    return {"artifact": ctx.layout.relative(artifact), "parity": parity}


def adapted(ctx: Context) -> dict:
    spec = ctx.adapted_spec(ctx.layout.export, ctx.layout.adapter)
    return {**ctx.evaluate("adapted", ctx.exp.eval_config(spec), ctx.layout.adapted),
            "model": spec}


def capability(ctx: Context) -> dict:
    arms = (("base", ctx.exp.models.base),
            ("adapted", ctx.adapted_spec(ctx.layout.export, ctx.layout.adapter)))
    return {arm: ctx.evaluate("capability", ctx.exp.capability_config(spec),
                              ctx.layout.capability(arm))
            for arm, spec in arms}


def control(ctx: Context) -> dict:
    """Data, adapter and export of the control arm; each part is kept once complete, so a
    killed control stage continues where it stopped."""
    from tracetune.datasets.build import MANIFEST
    from tracetune.train.recipe import META

    lay = ctx.layout
    rows = sum(ctx.record("mine")["summary"]["counts"].values())
    lay.control.mkdir(exist_ok=True)
    summary: dict = {}
    if not (lay.control_data / MANIFEST).is_file():
        mine(ctx, out=lay.control_data, unfiltered=rows)
    if not (lay.control_adapter / META).is_file():
        summary["train"] = train(ctx, data=lay.control_data, out=lay.control_adapter)
    done = lay.control_export_done
    if ctx.exp.export.target != "none" and not done.is_file():
        export(ctx, adapter=lay.control_adapter, out=lay.control_export)
        done.write_text("")
    summary["rows"] = rows
    return summary


def control_eval(ctx: Context) -> dict:
    spec = ctx.adapted_spec(ctx.layout.control_export, ctx.layout.control_adapter)
    config = ctx.exp.eval_config(spec, split=ctx.exp.heldout_split())
    return ctx.evaluate("control_eval", config, ctx.layout.control_eval)


def reference(ctx: Context) -> dict:
    return {name: ctx.evaluate("reference", ctx.exp.eval_config(spec),
                               ctx.layout.reference(name))
            for name, spec in ctx.exp.models.reference.items()}


def compare(ctx: Context) -> dict:
    from tracetune.experiment.analysis import analyze

    return write_results(ctx, analyze(ctx.exp, ctx.layout.root))


def write_results(ctx: Context, results: dict) -> dict:
    """Write RUN/results.json, log each hypothesis's verdict and the decision; the compare
    stage's summary."""
    ctx.layout.results.write_text(json.dumps(results, indent=2, default=str))
    for v in results["hypotheses"]:
        ctx.log(f"[compare] {v['id']}: {v['verdict']} ({v['detail']})")
    ctx.log(f"[compare] decision: {results['decision']['outcome']}")
    return {"decision": results["decision"]["outcome"]}


def report(ctx: Context) -> dict:
    from tracetune.experiment.report import write_report

    md, html = write_report(ctx.layout.root)
    ctx.log(f"[report] {md}\n[report] {html}")
    return {"markdown": md.name, "html": html.name}


def _train_base_setting(exp: Experiment) -> dict:
    return {"train_base": train_base(exp)}


STAGES: tuple[Stage, ...] = (
    Stage("baseline", baseline, reads=("experiment", "models.base", "eval"),
          outputs=lambda lay: (lay.baseline,)),
    Stage("teacher", teacher, reads=("experiment", "teacher", "eval"),
          outputs=lambda lay: (lay.teacher,), active=lambda exp: exp.teacher.model is not None),
    Stage("mine", mine, reads=("mine",), needs=("baseline", "teacher"),
          outputs=lambda lay: (lay.data,)),
    Stage("train", train, reads=("train", "models.train_base"), needs=("mine",),
          outputs=lambda lay: (lay.adapter,), resolved=_train_base_setting),
    Stage("export", export, reads=("export",), needs=("train",),
          outputs=lambda lay: (lay.export,), active=lambda exp: exp.export.target != "none"),
    Stage("adapted", adapted, reads=("models.adapted",), needs=("baseline", "export"),
          outputs=lambda lay: (lay.adapted,)),
    Stage("capability", capability, reads=("capability", "models.adapted"), needs=("export",),
          outputs=lambda lay: (lay.capability_root,),
          active=lambda exp: exp.capability.enabled),
    Stage("control", control, reads=("control",), needs=("mine", "train", "export"),
          outputs=lambda lay: (lay.control,), active=lambda exp: exp.control.enabled,
          resolved=_train_base_setting),
    Stage("control_eval", control_eval, needs=("baseline", "control"),
          outputs=lambda lay: (lay.control_eval,), active=lambda exp: exp.control.enabled),
    Stage("reference", reference, reads=("models.reference",), needs=("baseline",),
          outputs=lambda lay: (lay.reference_root,),
          active=lambda exp: bool(exp.models.reference)),
    Stage("compare", compare,
          needs=("baseline", "adapted", "capability", "control_eval", "reference"),
          outputs=lambda lay: (lay.results,)),
    Stage("report", report, needs=("compare",),
          outputs=lambda lay: (lay.report_md, lay.report_html, lay.report_files)),
)


def active_stages(exp: Experiment, table: tuple[Stage, ...] = STAGES) -> list[Stage]:
    """The stages this experiment runs, in order (no loop or run directory needed)."""
    return [s for s in table if s.active(exp)]
