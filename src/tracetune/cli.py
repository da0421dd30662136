"""The `tracetune` command line: parses, calls one function per command, prints."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tracetune import __version__
from tracetune.cliopts import config_options
from tracetune.datasets.build import MineConfig
from tracetune.errors import TracetuneError
from tracetune.eval.config import (EvalConfig, eval_config_from, legacy_option_types,
                                   with_workflow_defaults)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn a coding agent's own runs into a better small model.")
sandbox_app = typer.Typer(no_args_is_help=True, help="Run code in tracetune's sandbox.")
app.add_typer(sandbox_app, name="sandbox")

# Piped output (files, CI logs, tests) gets wide tables instead of 80 columns of wrapped cells.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"tracetune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Turn a coding agent's own runs into a better small model."""


@app.command()
def models(
    spec: Optional[str] = typer.Argument(None, help="A model spec to resolve, e.g. embedded."),
    load: bool = typer.Option(False, "--load", help="Also load the model and report the time."),
) -> None:
    """List model backends, or resolve a model spec (and optionally load it)."""
    from tracetune.models import BACKENDS, load_model, parse_spec

    if spec is None:
        table = Table(title="Model backends")
        for col in ("backend", "what", "spec example", "options"):
            table.add_column(col)
        for b in BACKENDS.values():
            opts = ", ".join(f.name for f in fields(b.config_cls))
            table.add_row(b.name, b.summary, b.example, opts)
        out.print(table)
        out.print("Default model: [bold]embedded[/] (SmolLM2-135M-Instruct, Q4_1 GGUF, via llamacpp)")
        return
    parsed = parse_spec(spec)
    out.print(f"spec     {parsed.text}")
    out.print(f"backend  {parsed.backend}")
    for key, value in asdict(parsed.config).items():
        out.print(f"  {key} = {value!r}")
    if load:
        t0 = time.perf_counter()
        model = load_model(parsed)
        out.print(f"loaded in {time.perf_counter() - t0:.2f}s")
        model.close()


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="The user message."),
    model: str = typer.Option("embedded", "--model", "-m", help="Model spec."),
    system: Optional[str] = typer.Option(None, help="Optional system message."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    max_tokens: int = typer.Option(256, help="Most completion tokens."),
    seed: int = typer.Option(0, help="Sampling seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the completion as JSON."),
) -> None:
    """Generate one chat completion."""
    from tracetune.models import load_model
    from tracetune.types import GenerationRequest, SamplingParams, chat

    params = SamplingParams(temperature, top_p, max_tokens)
    params.validate()
    m = load_model(model)
    try:
        c = m.generate(GenerationRequest(chat(prompt, system), params, seed))
    finally:
        m.close()
    if as_json:
        out.print_json(json.dumps({**asdict(c), "model": model}))
        return
    out.print(c.text, markup=False, highlight=False)
    err.print(f"[dim]{c.usage.prompt_tokens} prompt + {c.usage.completion_tokens} completion "
              f"tokens, {c.latency_s:.2f}s ({c.usage.completion_tokens / max(c.latency_s, 1e-9):.1f}"
              f" tokens/s), finish={c.finish_reason}[/]")


@sandbox_app.command("run")
def sandbox_run(
    file: Path = typer.Argument(..., help="Python program; with --tests, the module under test."),
    tests: Optional[Path] = typer.Option(None, "--tests", help="pytest file to run against FILE."),
    timeout: float = typer.Option(10.0, help="Wall-clock limit in seconds."),
    memory_mb: int = typer.Option(1024, help="Address-space limit in MiB."),
    isolation: str = typer.Option("auto", help="auto, bwrap or process."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Run a program (or a pytest file against a module) in the sandbox; exit 0 only on pass."""
    from tracetune.sandbox import Job, Sandbox, SandboxConfig

    if isolation not in ("auto", "bwrap", "process"):
        raise TracetuneError(f"--isolation must be auto, bwrap or process, not {isolation!r}")
    if timeout <= 0:
        raise TracetuneError("--timeout must be positive")
    for p in (file, tests):
        if p is not None and not p.is_file():
            raise TracetuneError(f"no such file: {p}")
    if tests is not None:
        if file.name == tests.name:
            raise TracetuneError("the module and the test file must have different names")
        job = Job(files={file.name: file.read_bytes(), tests.name: tests.read_bytes()},
                  entry=tests.name, kind="pytest", timeout_s=timeout)
    else:
        job = Job(files={file.name: file.read_bytes()}, entry=file.name, timeout_s=timeout)
    config = SandboxConfig(timeout_s=timeout, memory_mb=memory_mb, isolation=isolation, workers=1)
    with Sandbox(config) as sb:
        result = sb.run(job)
        mode = sb.isolation
    if as_json:
        out.print_json(json.dumps({**result.to_dict(), "isolation": mode}))
    else:
        colour = {"pass": "green", "fail": "red", "error": "magenta", "timeout": "yellow"}
        out.print(f"[bold {colour[result.status]}]{result.status.upper()}[/] {result.reason} "
                  f"({result.duration_s:.2f}s, isolation={mode})")
        for t in result.tests:
            out.print(f"  {t.outcome:8} {t.nodeid}", markup=False)
        for label, text, cut in (("stdout", result.stdout, result.stdout_truncated),
                                 ("stderr", result.stderr, result.stderr_truncated)):
            if text.strip():
                out.rule(label + (" (truncated)" if cut else ""))
                out.print(text.rstrip()[-4000:], markup=False, highlight=False)
    raise typer.Exit(0 if result.passed else 1)


@app.command()
def demo(
    model: str = typer.Option("embedded", "--model", "-m", help="Model spec."),
    suite: str = typer.Option("demo", help="Built-in suite name or a suite .toml file."),
    max_tokens: int = typer.Option(384, help="Most completion tokens per task."),
    seed: int = typer.Option(0, help="Base seed (task i uses seed + i)."),
) -> None:
    """Evaluate a model on a handful of built-in function tasks: pass/fail per task."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from tracetune.eval.quick import evaluate
    from tracetune.models import load_model
    from tracetune.sandbox import Sandbox
    from tracetune.tasks import load_suite
    from tracetune.types import SamplingParams

    s = load_suite(suite)
    t0 = time.perf_counter()
    m = load_model(model)
    err.print(f"[dim]loaded {model} in {time.perf_counter() - t0:.1f}s; "
              f"{len(s.tasks)} tasks from suite {s.name!r}[/]")
    with Sandbox() as sb, Progress("[progress.description]{task.description}", BarColumn(),
                                   MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                                   transient=True) as progress:
        bar = progress.add_task("evaluating", total=len(s.tasks))
        results = evaluate(m, s, sb, params=SamplingParams(max_tokens=max_tokens), seed=seed,
                           on_done=lambda _t: progress.advance(bar))
    m.close()
    table = Table(title=f"{s.name}: {model} (greedy)")
    for col in ("task", "result", "reason", "tokens", "gen s", "check s"):
        table.add_column(col)
    for r in results:
        style = "green" if r.check.passed else "red"
        table.add_row(r.task.id, f"[{style}]{'PASS' if r.check.passed else 'FAIL'}[/]",
                      r.check.reason, str(r.completion.usage.completion_tokens),
                      f"{r.completion.latency_s:.2f}", f"{r.check.duration_s:.2f}")
    out.print(table)
    n_pass = sum(r.check.passed for r in results)
    out.print(f"passed {n_pass}/{len(results)} tasks in {time.perf_counter() - t0:.1f}s")


tasks_app = typer.Typer(no_args_is_help=True, help="Task suites: list, show, split, check.")
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("list")
def tasks_list(
    suite: Optional[str] = typer.Option(None, help="Suite name or .toml file (default: list suites)."),
    split: str = typer.Option("all", help="all, train or test."),
    train_pct: Optional[int] = typer.Option(None, help="Share of tasks (by hash) in train "
                                            "(default: the suite's, 50 or bugs' 70)."),
) -> None:
    """List the built-in suites, or the tasks of one suite."""
    from tracetune.tasks import builtin_suites, load_suite
    from tracetune.tasks.splits import in_train, select

    if suite is None:
        table = Table(title="Built-in suites")
        for col in ("suite", "tasks", "description"):
            table.add_column(col)
        for name in builtin_suites():
            s = load_suite(name)
            table.add_row(name, str(len(s.tasks)), s.description)
        out.print(table)
        return
    s = load_suite(suite)
    train_pct = s.train_pct if train_pct is None else train_pct
    tasks = select(s.tasks, split, train_pct)
    table = Table(title=f"{s.name} v{s.version}: {len(tasks)} tasks (split {split})")
    for col in ("id", "difficulty", "split", "names", "tags"):
        table.add_column(col)
    for t in tasks:
        table.add_row(t.id, str(t.difficulty), "train" if in_train(t.id, train_pct) else "test",
                      ", ".join(t.names), ", ".join(t.tags))
    out.print(table)


@tasks_app.command("show")
def tasks_show(
    task_id: str = typer.Argument(..., help="Task id, e.g. funcs/chunk_list."),
    suite: str = typer.Option(..., help="Suite name or .toml file."),
) -> None:
    """Print one task: spec, reference and acceptance tests."""
    from tracetune.tasks import load_suite

    s = load_suite(suite)
    task = next((t for t in s.tasks if t.id == task_id), None)
    if task is None:
        raise TracetuneError(f"no task {task_id!r} in suite {s.name}")
    out.rule(f"{task.id} (difficulty {task.difficulty}; {', '.join(task.tags)})")
    out.print(task.spec, markup=False, highlight=False)
    if task.is_repair:
        out.rule(f"{task.file} (buggy, as the agent first sees it)")
        out.print(task.buggy.strip(), markup=False, highlight=False)
    out.rule("reference")
    out.print(task.reference.strip(), markup=False, highlight=False)
    out.rule("acceptance tests (hidden from the model)")
    out.print(task.tests.strip(), markup=False, highlight=False)


@tasks_app.command("split")
def tasks_split(
    suite: str = typer.Option(..., help="Suite name or .toml file."),
    train_pct: Optional[int] = typer.Option(None, help="Share of tasks (by hash) in train "
                                            "(default: the suite's, 50 or bugs' 70)."),
    as_json: bool = typer.Option(False, "--json", help="Print {train: [...], test: [...]}."),
) -> None:
    """Show the deterministic task-level split: md5(task_id) % 100 < train_pct is train."""
    from tracetune.tasks import load_suite
    from tracetune.tasks.splits import select

    s = load_suite(suite)
    train_pct = s.train_pct if train_pct is None else train_pct
    train = [t.id for t in select(s.tasks, "train", train_pct)]
    test = [t.id for t in select(s.tasks, "test", train_pct)]
    if as_json:
        out.print_json(json.dumps({"suite": s.name, "train_pct": train_pct, "train": train,
                                   "test": test}))
        return
    out.print(f"{s.name}: {len(train)} train / {len(test)} test (train_pct={train_pct})")
    out.print("train: " + ", ".join(train), markup=False)
    out.print("test:  " + ", ".join(test), markup=False)


@tasks_app.command("check")
def tasks_check(
    suite: list[str] = typer.Option([], help="Suite(s) to check (default: every built-in)."),
) -> None:
    """Prove every reference solution passes its own acceptance tests, and every buggy module of a
    repair suite fails them (in the sandbox)."""
    from tracetune.sandbox import Sandbox
    from tracetune.tasks import builtin_suites, load_suite
    from tracetune.tasks.check import check_references

    names = suite or builtin_suites()
    failures = 0
    with Sandbox() as sb:
        for name in names:
            s = load_suite(name)
            bad = check_references(s, sb)
            failures += len(bad)
            mark = "[green]ok[/]" if not bad else "[red]FAILED[/]"
            n_bad = len({t.id for t, _, _ in bad})
            what = "references pass their tests" + \
                (" and buggy modules fail them" if s.is_repair else "")
            out.print(f"{mark} {s.name}: {len(s.tasks) - n_bad}/{len(s.tasks)} tasks: {what}")
            for t, problem, r in bad:
                out.print(f"   {t.id}: {problem}: {r.status}: {escape(r.reason)}")
    if failures:
        raise TracetuneError(f"{failures} task(s) failed the check")


TEACHER_WORKFLOW_DEFAULTS = {"test_policy": "never", "max_attempts": 1}
"""`tracetune rollouts`' workflow options where the user states none (earlier releases' too)."""
_EVAL_FLAGS = {"model": ("--model", "-m"), "tasks": ("--task",),
               "check_timeout_s": ("--check-timeout-s", "--check-timeout")}


@app.command("eval")
@config_options(EvalConfig, flags=_EVAL_FLAGS, hidden=legacy_option_types())
def eval_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Run directory (holds trajectories.sqlite)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (its stored "
                                "settings are used; the other options are ignored)."),
    settings: dict = None,
) -> None:
    """Run a workflow on a suite, record every attempt, print success tables.

    SUITE may name a split of a suite, e.g. bugs:test (the suite's own train share, by hash).
    A workflow's own options go in its spec: --workflow direct,max_attempts=1 or
    --workflow repair,max_iters=5,test_policy=end (`tracetune workflows` lists them); the flat
    --max-attempts, --min-tests, --max-iters and --test-policy of earlier releases still work."""
    config = eval_config_from(settings, "the command line")
    if not resume:
        config.validate()
    _run_with_progress(config, out_dir, resume)


@app.command("rollouts")
@config_options(EvalConfig, flags={**_EVAL_FLAGS, "trials": ("--rollouts",)},
                defaults={"workflow": "repair", "temperature": 0.2},
                required=("suite", "model"), hidden=legacy_option_types())
def rollouts_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Run directory (holds trajectories.sqlite)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    settings: dict = None,
) -> None:
    """Generate teacher trajectories (seed 002): every one is stored, ready for `tracetune mine`
    (step-level SFT and DPO rows). The same options as `eval`, with a teacher's defaults: the
    repair workflow without test feedback, temperature 0.2; --model oracle is the scripted
    reference fix (offline); a split like --suite bugs:train keeps held-out tasks out. Unless
    the workflow spec says otherwise, a teacher gets no test feedback (test_policy=never) and
    one attempt per step (max_attempts=1)."""
    settings = with_workflow_defaults(settings, TEACHER_WORKFLOW_DEFAULTS)
    config = eval_config_from(settings, "the command line")
    if not resume:
        config.validate()
    _run_with_progress(config, out_dir, resume)


@app.command("workflows")
def workflows_cmd() -> None:
    """List the workflows and the options each one's spec takes."""
    from tracetune.agents.spec import WORKFLOWS
    from tracetune.tomlconf import field_defaults, field_help

    table = Table(title="Workflows (--workflow NAME[,key=value...])")
    for col in ("workflow", "suites", "what", "options (default): meaning"):
        table.add_column(col)
    for w in WORKFLOWS.values():
        helps, defaults = field_help(w.config_cls), field_defaults(w.config_cls)
        opts = "\n".join(f"{k} ({defaults[k]}): {helps.get(k, '')}" for k in defaults)
        table.add_row(w.name, ", ".join(w.suite_kinds), w.summary, opts)
    out.print(table)


def _run_with_progress(config, out_dir: Path, resume: bool) -> None:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn,
                               TimeRemainingColumn)

    from tracetune.eval.runner import run_eval

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err) as progress:
        bar = progress.add_task("episodes", total=None)
        try:
            run_eval(config, out_dir, resume=resume, on_progress=lambda done, total:
                     progress.update(bar, completed=done, total=total))
        except BaseException:
            progress.live.transient = True  # an error is one line: no half-drawn bar above it
            raise
    _print_run(out_dir)


def _run_failures(runs: list[Path], labels: list[str]) -> dict[str, dict[str, int]]:
    """{label: {failure kind: failed episodes}} of each run (`eval.metrics.failure_kinds`)."""
    from tracetune.eval.metrics import failure_kinds
    from tracetune.traces.store import Store

    out_: dict[str, dict[str, int]] = {}
    for run, name in zip(runs, labels):
        store = Store(run)
        try:
            out_[name] = dict(failure_kinds(store))
        finally:
            store.close()
    return out_


def _print_run(run_dir: Path) -> None:
    from tracetune.eval.metrics import failure_kinds, summarize_run
    from tracetune.report.tables import run_table, testgen_table
    from tracetune.traces.store import Store

    store = Store(run_dir)
    store_path = store.path
    try:
        rows, overall = summarize_run(store.episodes())
        out.print(run_table(store.run(), rows, overall))
        if overall.testgen is not None:
            out.print(testgen_table(store.run(), rows, overall))
        kinds = failure_kinds(store)
        if kinds:
            out.print("failed episodes by last attempt: " + ", ".join(
                f"{kind} {n}" for kind, n in kinds.most_common()))
    finally:
        store.close()
    out.print(f"[dim]trajectories: {store_path}[/]")


@app.command()
def show(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Reprint a run's tables from its trajectory store."""
    _print_run(run_dir)


@app.command("mine")
@config_options(MineConfig, exclude=("tiers",), flags={
    "kinds": ("--kind",), "leakage_suites": ("--leakage-suite",),
    "allow_heldout": ("--allow-heldout",)})
def mine_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories to mine."),
    out_dir: Path = typer.Option(..., "--out", help="Dataset directory to create."),
    tier: list[str] = typer.Option([], help="STEP=TIER[+TIER] that SFT rows must satisfy, e.g. "
                                   "g_test=first_attempt+validated (repeatable; defaults: "
                                   "impl=workflow, g_test=first_attempt+validated, "
                                   "g_impl=workflow, repair=tool_ok+workflow). STEP= (no tier) "
                                   "mines every passing attempt (repair: every valid message)."),
    stats: bool = typer.Option(False, "--stats", help="Print rows per tier, task and kind, and "
                               "what each filter dropped."),
    settings: dict = None,
) -> None:
    """Mine trajectories into SFT rows, DPO pairs and failure->fix pairs, in every format.
    --tokenizer none skips the length filter; --leakage-suite none skips the leakage check."""
    from tracetune.datasets.build import mine
    from tracetune.datasets.mine import DEFAULT_TIERS

    tiers = dict(DEFAULT_TIERS)
    for item in tier:
        step, sep, value = item.partition("=")
        if not sep or not step:
            raise TracetuneError(f"--tier must look like STEP=TIER[+TIER], not {item!r}")
        tiers[step] = tuple(value.split("+")) if value else ()
    if settings["tokenizer"] == "none":
        settings["tokenizer"] = None
    settings["leakage_suites"] = tuple(s for s in settings["leakage_suites"] if s != "none")
    report = mine(runs, out_dir, MineConfig(tiers=tiers, **settings))
    counts = ", ".join(f"{k}: {len(v)}" for k, v in report.rows.items())
    out.print(f"wrote {out_dir}: {counts}")
    if stats:
        _print_mine_stats(report)


def _print_mine_stats(report) -> None:
    from collections import Counter

    rows = [r for items in report.rows.values() for r in items]
    for title, counter in (
            ("rows per kind", Counter(r.kind for r in rows)),
            ("rows per tier", Counter(t for r in rows for t in r.tiers)),
            ("rows per task", Counter(r.task for r in rows))):
        table = Table(title=title)
        table.add_column(title.split()[-1])
        table.add_column("rows", justify="right")
        for key, n in counter.most_common():
            table.add_row(key, str(n))
        out.print(table)
    table = Table(title="dropped by filters")
    for col in ("filter", "rows", "examples"):
        table.add_column(col)
    for name, n in sorted(report.dropped.items()):
        table.add_row(name, str(n), "; ".join(report.dropped_examples.get(name, [])))
    if not report.dropped:
        table.add_row("(none)", "0", "")
    out.print(table)


@app.command("train")
def train_cmd(
    dataset: Path = typer.Argument(..., help="Dataset directory written by `tracetune mine`."),
    base: str = typer.Option("embedded", help="Base model spec: embedded, gguf:PATH or "
                             "hf:NAME_OR_DIR[,device=cuda][,dtype=bfloat16] (the spec's device "
                             "and dtype apply to training)."),
    out_dir: Path = typer.Option(..., "--out", help="Adapter directory to create."),
    config: Optional[Path] = typer.Option(None, help="TOML file with training settings "
                                          "(keys of tracetune.train.config.TrainConfig)."),
    method: Optional[str] = typer.Option(None, help="sft or dpo (overrides the config)."),
    epochs: Optional[float] = typer.Option(None, help="Overrides the config's epochs."),
    learning_rate: Optional[float] = typer.Option(None, help="Overrides the learning rate."),
    init_adapter: Optional[str] = typer.Option(None, help="Start from this adapter (a later "
                                               "stage of multi-stage training)."),
    seed: Optional[int] = typer.Option(None, help="Overrides the config's seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
) -> None:
    """Train a LoRA adapter (TRL + PEFT) on a mined dataset; loss on completions only."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from tracetune.train.config import load_config
    from tracetune.train.recipe import META, train

    cfg = load_config(config, method=method, epochs=epochs, learning_rate=learning_rate,
                      init_adapter=init_adapter, seed=seed)
    progress = Progress("[progress.description]{task.description}", BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    bar = []  # drawn from the first step on: checks and loading print no empty bar

    def on_progress(step: int, total: int, loss: float | None) -> None:
        if not bar:
            progress.start()
            bar.append(progress.add_task("training steps", total=total, loss=""))
        progress.update(bar[0], completed=step, total=total,
                        loss=f"loss {loss:.3f}" if loss is not None else "")

    try:
        path = train(dataset, base, out_dir, cfg, resume=resume,
                     log=lambda line: err.print(line, highlight=False, markup=False),
                     on_progress=on_progress)
    except BaseException:
        if bar:  # an error is one line: the bar is cleared, not left half-drawn above it
            progress.live.transient = True
            progress.live.stop()  # (Progress.stop would add a blank line on a non-terminal)
        raise
    if bar:
        progress.stop()
    meta = json.loads((path / META).read_text())
    out.print(f"adapter: {path} ({meta['rows']} rows, {meta['steps']} steps, "
              f"{meta['train_seconds']:.0f}s; loss {meta['first_loss']:.3f} -> "
              f"{meta['last_loss']:.3f})")


@app.command("export")
def export_cmd(
    path: Path = typer.Argument(..., help="A run directory (--jsonl) or an adapter directory "
                                "(--to)."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Run: one episode (with its attempts) per "
                               "JSON line."),
    atif: bool = typer.Option(False, "--atif", help="Run: one ATIF trajectory (Agent Trajectory "
                              "Interchange Format) per episode, one per JSON line."),
    to: Optional[str] = typer.Option(None, "--to", help="Adapter: gguf-lora, merged-hf, "
                                     "merged-gguf or ollama."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Where to write (a run's JSONL "
                                            "goes to stdout without it)."),
    base: Optional[str] = typer.Option(None, help="Adapter: base model spec (default: the one "
                                       "it was trained on); GGUF targets need embedded or "
                                       "gguf:PATH."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out file (never "
                               "the command's own input)."),
) -> None:
    """Export a run's trajectories (--jsonl, --atif), or an adapter (--to; ends with a parity
    check and writes nothing if it fails)."""
    from tracetune.traces.store import DB_NAME

    if (path / DB_NAME).is_file():
        if to is not None:
            raise TracetuneError(f"{path} is a run; --to applies to adapters (use --jsonl)")
        if jsonl and atif:
            raise TracetuneError("--jsonl and --atif are two formats; choose one")
        if atif:
            from tracetune.logs.atif import export_atif as export_run
        else:
            from tracetune.traces.export import export_jsonl as export_run

        n = export_run(path, out_path, force=force)
        if out_path is not None:
            err.print(f"wrote {n} episodes to {out_path}")
        return
    if (path / "adapter_config.json").is_file():
        if to is None or out_path is None:
            raise TracetuneError("exporting an adapter needs --to TARGET and --out PATH")
        from tracetune.export.run import export

        summary = export(path, to, out_path, base=base)
        out.print(f"wrote {out_path} ({to}); parity: {summary}")
        return
    raise TracetuneError(f"{path} is neither a run directory (trajectories.sqlite) nor an "
                         "adapter directory (adapter_config.json)")


@app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="The log file."),
    fmt: str = typer.Option(..., "--format", help="openai-jsonl, litellm, langfuse, inspect or "
                            "atif."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory: its interaction store "
                                 "(interactions.sqlite) is created or appended to."),
    redact: list[str] = typer.Option([], "--redact", help="Also mask what this regular "
                                     "expression matches (repeatable)."),
    no_redact: bool = typer.Option(False, "--no-redact", help="Do not mask the default secret "
                                   "patterns (API keys, tokens, passwords)."),
    batch_input: Optional[Path] = typer.Option(None, "--batch-input", help="openai-jsonl: the "
                                               "Batch API input file the output lines answer."),
) -> None:
    """Import another tool's log of model calls into an interaction store; prints how many
    records were read, imported, already stored, and malformed (skipped, with their lines)."""
    from tracetune.logs.importers import import_logs
    from tracetune.logs.redact import Redactor

    report = import_logs(file, fmt, out_dir, batch_input=batch_input,
                         redactor=Redactor(extra=redact, defaults=not no_redact))
    out.print(escape(report.summary()), highlight=False, soft_wrap=True)


@app.command("compare")
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories (at least two)."),
    baseline: Optional[str] = typer.Option(None, help="The baseline run, by label or path "
                                           "(default: the first run)."),
    label: list[str] = typer.Option([], help="Labels for the runs, in order (default: their "
                                    "directory names)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every "
                                            "ComparisonResult and metric delta as JSON."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Compare runs with a baseline run: per-task and overall success with CIs, deltas, Fisher
    and McNemar p-values, Cohen's h; attempts, duration and tokens with paired tests."""
    import dataclasses
    import json

    from tracetune.eval.compare import compare_dirs
    from tracetune.report.tables import comparison_tables

    if len(runs) < 2:
        raise TracetuneError("compare needs at least two run directories")
    if label and len(label) != len(runs):
        raise TracetuneError(f"--label given {len(label)} time(s) for {len(runs)} runs")
    if json_out is not None:
        from tracetune.staging import check_output_file
        from tracetune.traces.store import DB_NAME

        check_output_file(json_out, force=force, option="--json",
                          inputs=tuple(r / DB_NAME for r in runs))
    comp = compare_dirs(runs, baseline=baseline, labels=label or None)
    for table in comparison_tables(comp):
        out.print(table)
    failures = _run_failures(runs, label or [r.name for r in runs])
    for name, kinds in failures.items():
        if kinds:
            out.print(f"{name}: failed episodes by last attempt: " + ", ".join(
                f"{kind} {n}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])))
    if json_out is not None:
        from tracetune.staging import atomic_file

        with atomic_file(json_out) as f:
            f.write(json.dumps({
                "baseline": comp.baseline,
                "results": [dataclasses.asdict(r) for r in comp.baseline_rows + comp.results],
                "metrics": [dataclasses.asdict(m) for m in comp.metrics],
                "failures": failures,
                "excluded": comp.excluded}, indent=2))
        err.print(f"wrote {json_out}")


@app.command("diff")
def diff_cmd(
    a: Path = typer.Argument(..., help="A run, a mined data set or a loop's run directory."),
    b: Path = typer.Argument(..., help="The same kind of thing, to compare with A."),
    show: int = typer.Option(5, help="Differing episodes (or rows) to list."),
) -> None:
    """Where two runs of the same experiment part ways (e.g. the same `make demo` on two
    machines): for runs, the first model call of each (task, trial) whose prompt, output or
    verdict differs; for data sets, the rows only one holds; for loops, each stage in order
    (baseline, data, adapter weights, adapted, capability), so the first stage that differs
    is the place to look."""
    from tracetune.experiment.layout import RunLayout
    from tracetune.traces.diff import (diff_datasets, diff_runs, require_comparable,
                                       weights_digest)

    if show < 0:
        raise TracetuneError(f"--show must be 0 or more, not {show}")
    kind = require_comparable(a, b)

    def runs(label: str, x: Path, y: Path) -> None:
        d = diff_runs(x, y)
        total = d.same + len(d.differs)
        out.print(f"{label}: {d.same}/{total} episodes identical, {len(d.differs)} differ "
                  f"({d.success_flips} change success)"
                  + (f"; only in A: {len(d.only_a)}, only in B: {len(d.only_b)}"
                     if d.only_a or d.only_b else ""))
        for x_ in d.differs[:show]:
            where = f"  {x_.task} trial {x_.trial}, {x_.step} attempt {x_.attempt}: {x_.what}"
            if x_.what == "output":
                where += f" from char {x_.at_char}: A {x_.a} | B {x_.b}"
            elif x_.what in ("verdict", "attempts"):
                where += f": A {x_.a}, B {x_.b}"
            out.print(escape(where))

    def data(label: str, x: Path, y: Path) -> None:
        for k, d in diff_datasets(x, y).items():
            n = len(d["only_a"]) + len(d["only_b"])
            out.print(f"{label} {k}: " + ("identical rows" if not n else
                      f"{len(d['only_a'])} rows only in A, {len(d['only_b'])} only in B"))
            for side in ("only_a", "only_b"):
                for row in d[side][:show]:
                    out.print(f"  {side.replace('_', ' ')}: {row}")

    if kind == "runs":
        runs("episodes", a, b)
    elif kind == "datasets":
        data("rows", a, b)
    else:
        la, lb = RunLayout(a), RunLayout(b)
        steps = [("baseline", la.baseline, lb.baseline, runs), ("data", la.data, lb.data, data)]
        for label, x, y, fn in steps:
            if x.exists() and y.exists():
                fn(label, x, y)
        wa, wb = weights_digest(la.adapter), weights_digest(lb.adapter)
        if wa and wb:
            out.print(f"adapter weights: {'identical' if wa == wb else 'differ'} "
                      f"(sha256 {wa[:12]} / {wb[:12]})")
        for label, x, y in [("adapted", la.adapted, lb.adapted)] + [
                (f"capability {arm}", la.capability(arm), lb.capability(arm))
                for arm in ("base", "adapted")]:
            if (x / "trajectories.sqlite").is_file() and (y / "trajectories.sqlite").is_file():
                runs(label, x, y)


@app.command("loop")
def loop_cmd(
    experiment: Path = typer.Argument(..., help="Experiment file (.toml)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory of the loop (created; an "
                                 "existing one is continued)."),
    from_stage: Optional[str] = typer.Option(None, "--from", help="Redo this stage and every "
                                             "stage that needs its output (the others keep "
                                             "theirs)."),
    until: Optional[str] = typer.Option(None, help="Stop after this stage."),
) -> None:
    """The whole loop: baseline eval -> mine -> train -> export -> adapted eval -> capability
    check -> (with [rounds]: round 2, 3, ... while the gate passes) -> compare -> report. Stages
    are cached; a killed loop continues where it stopped."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn,
                               TimeRemainingColumn)

    from tracetune.experiment.loop import run_loop
    from tracetune.experiment.progress import ProgressLines

    lines = ProgressLines()
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                  transient=True) as progress:
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int, note: str = "") -> None:
            if not err.is_terminal:  # CI, a pipe: no bar is drawn, so print throttled lines
                line = lines.line(stage, done, total, note)
                if line:
                    progress.console.print(escape(line))
                return
            label = f"{stage} {note}".strip()
            if stage not in bars:
                bars[stage] = progress.add_task(label, total=total)
            progress.update(bars[stage], completed=done, total=total, description=label)
            if done == total:
                progress.remove_task(bars.pop(stage))

        results = run_loop(experiment, out_dir, from_stage=from_stage, until=until,
                           log=lambda msg: progress.console.print(escape(msg)),
                           progress=on_progress)
    if results:
        _print_verdicts(results)
        from tracetune.experiment.layout import RunLayout

        layout = RunLayout(out_dir)
        if layout.report_md.is_file():
            html = f"  {layout.report_html}" if layout.report_html.is_file() else ""
            out.print(f"report: {layout.report_md}{html}")


def _print_verdicts(results: dict) -> None:
    for v in results["hypotheses"]:
        color = "green" if v["verdict"] == "SUPPORTED" else "red"
        out.print(f"[bold]{v['id']}[/] [{color}]{v['verdict']}[/]: {escape(v['claim'])}\n"
                  f"    {escape(v['detail'])}")
    out.print(f"[bold]decision: {results['decision']['outcome']}[/]")


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="A loop's run directory.")) -> None:
    """Rewrite a loop's report.md and report.html (refused if the pre-registered hypotheses
    were edited)."""
    import json

    from tracetune.experiment.layout import RunLayout
    from tracetune.experiment.report import write_report

    results = RunLayout(run_dir).results
    if results.is_file() and json.loads(results.read_text()).get("kind") == "distill":
        from tracetune.experiment.distill import write_distill_report

        md, page = write_distill_report(run_dir), None
    else:
        md, page = write_report(run_dir)
    _print_verdicts(json.loads(results.read_text()))
    out.print(f"report: {md}" + (f"  {page}" if page else ""))


@app.command("check-experiment")
def check_experiment_cmd(experiment: Path = typer.Argument(..., help="Experiment file.")) -> None:
    """Validate an experiment file and list its stages, models, hypotheses and criteria."""
    from tracetune.experiment.distill import load_any
    from tracetune.experiment.stages import active_stages

    exp, table = load_any(experiment)
    stages = [s.name for s in active_stages(exp, table)]
    out.print(f"[green]ok[/] {exp.info.name}: stages {' -> '.join(stages)}")
    if getattr(exp, "kind", "") == "distill":
        out.print(escape(f"logs: {exp.source} ({exp.logs.format}); candidate "
                         f"{exp.models.base}"))
        for h in exp.hypotheses:
            out.print(escape(f"  {h.id}: {h.claim} [{h.metric}, {h.test}]"))
    else:
        out.print(f"models: {', '.join(f'{a}' for a in exp.arms)} (base {exp.models.base})")
        for h in exp.hypotheses:
            out.print(escape(f"  {h.id}: {h.claim} [{h.metric}, {h.treatment} vs "
                             f"{h.control}]"))
    for c in exp.decision.go:
        out.print(f"  go if {c.text}")
    for c in exp.decision.abort:
        out.print(f"  abort if {c.text}")
    rounds = getattr(exp, "rounds", None)
    if rounds is not None and rounds.rounds > 1:
        out.print(escape(f"rounds: up to {rounds.rounds} ({rounds.mode}); gate: held-out gain "
                         f">= {rounds.min_gain:+.2f} with {rounds.test} p < {rounds.alpha}, "
                         f"capability drop <= {rounds.max_capability_drop:.2f}"))


@app.command("stages")
def stages_cmd(
    stage_file: Path = typer.Argument(..., help="Stage file (.toml): a stages table, a train "
                                      "table and one stage table per stage."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Directory of the stages "
                                           "(OUT/NAME/data, adapter, stage.json); a rerun "
                                           "skips finished stages."),
    check: bool = typer.Option(False, "--check", help="Validate the file and check its local "
                               "data sources exist; train nothing."),
) -> None:
    """Multi-stage training, seed 001's A -> B -> C: each stage builds its data (KodCode,
    TestGenEval, or failure -> fix rows mined from runs) and trains a LoRA adapter that starts
    from the previous stage's adapter. Finished, unchanged stages are skipped."""
    from tracetune.testgen.stages import check_sources, load_stages, plan, run_stages

    spec = load_stages(stage_file)
    if check:
        lines = check_sources(spec)
        status = plan(spec, out_dir) if out_dir is not None else {}
        out.print(escape(f"ok {spec.info.name}: stages "
                         f"{' -> '.join(s.name for s in spec.stages)} (base {spec.info.base})"),
                  highlight=False)
        for s, line in zip(spec.stages, lines):
            note = f" [{status[s.name]}]" if status else ""
            out.print(escape(f"  {line}{note}"), highlight=False)
        return
    if out_dir is None:
        raise TracetuneError("stages needs --out DIR (or --check to only validate the file)")
    results = run_stages(spec, out_dir,
                         log=lambda line: err.print(escape(line), highlight=False))
    for r in results:
        loss = r.marker.get("final_loss")
        out.print(escape(f"{r.name}: {r.adapter} ({r.marker.get('rows')} rows"
                         + (f", final loss {loss:.4f}" if loss is not None else "")
                         + (", skipped" if r.skipped else "") + ")"), highlight=False)


@app.command("continual")
def continual_cmd(
    experiment: Path = typer.Argument(..., help="Continual experiment file (.toml): a stream "
                                      "table (the sessions) and a continual table."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (created; an "
                                           "existing one is continued: finished units are "
                                           "reused)."),
    check: bool = typer.Option(False, "--check", help="Validate the file and print the "
                               "stream's sessions; run nothing."),
) -> None:
    """Continual learning on a task stream (seed 004): after every K sessions, mine the current
    model's trajectories of the new sessions, consolidate an adapter with each strategy
    (sequential, full_replay, partial_replay, ewc), export it and evaluate it on every
    session's tasks and the capability suite; then the accuracy matrix, CL metrics with
    intervals and report.md."""
    from tracetune.experiment.continual import load_continual, run_continual

    exp = load_continual(experiment)
    if check:
        for ordering, stream in exp.streams.items():
            out.print(escape(f"ok {exp.info.name}: ordering {ordering}, "
                             f"{len(stream.sessions)} sessions, "
                             f"{exp.rounds(len(stream.sessions))} rounds, strategies "
                             f"{', '.join(exp.continual.strategies)}"), highlight=False)
            for j, s in enumerate(stream.sessions):
                out.print(escape(f"  {j + 1}. {s.name}: {len(s.tasks)} tasks"),
                          highlight=False)
        return
    if out_dir is None:
        raise TracetuneError("continual needs --out DIR (or --check to only validate the file)")
    from tracetune.experiment.progress import ProgressLines

    lines = ProgressLines()

    def on_progress(stage: str, done: int, total: int, note: str = "") -> None:
        line = lines.line(stage, done, total, note)
        if line:
            err.print(escape(line), highlight=False)

    results = run_continual(experiment, out_dir,
                            log=lambda msg: err.print(escape(msg), highlight=False),
                            progress=on_progress)
    for run in results["runs"]:
        m = run["metrics"]
        out.print(escape(f"{run['ordering']} {run['strategy']}: ACC {m['acc']['value']}, "
                         f"FT {m['forward_transfer']['value']}, F {m['forgetting']['value']}, "
                         f"train {run['cost']['train_seconds']} s"), highlight=False)
    for v in results.get("hypotheses", []):
        color = "green" if v["verdict"] == "SUPPORTED" else "red"
        out.print(f"[bold]{escape(v['id'])}[/] [{color}]{v['verdict']}[/]: {escape(v['claim'])}"
                  f"\n    {escape(v['detail'])}")
    out.print(escape(f"report: {Path(out_dir) / 'report.md'}"), highlight=False)


# --- production logs -----------------------------------------------------------------------------

@app.command("proxy")
def proxy_cmd(
    upstream: str = typer.Option(..., "--upstream", help="Model spec to answer with: "
                                 "openai:MODEL@URL is relayed over HTTP, any other spec "
                                 "(embedded, gguf:..., hf:...) is loaded here."),
    port: int = typer.Option(8100, "--port", min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory of the interaction store "
                                 "(RUN/interactions.sqlite; appended to when it exists)."),
    redact: list[str] = typer.Option([], "--redact", help="Another regular expression whose "
                                     "matches are masked (repeatable)."),
    no_redact: bool = typer.Option(False, "--no-redact", help="Mask only the upstream's API "
                                   "key, not the default secret patterns."),
) -> None:
    """An OpenAI-compatible server (chat completions, streaming and not; model list) in front
    of a model spec, recording every interaction. Agents send their role and name in the
    X-Agent-Role and X-Agent-Name headers, and a run id in X-Session-Id."""
    from tracetune.logs.proxy import serve
    from tracetune.logs.redact import Redactor

    serve(upstream, out_dir, host=host, port=port,
          redactor=Redactor(redact, defaults=not no_redact), log=err.print)


logs_app = typer.Typer(no_args_is_help=True, help="Production logs: baseline profile and "
                       "per-role suites of an interaction store.")
app.add_typer(logs_app, name="logs")


@logs_app.command("baseline")
def logs_baseline_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory holding interactions.sqlite."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the profile as "
                                            "JSON here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Seed 003's baseline: success rate, latency (mean with interval, median, min, max, p95),
    time to first token, output length, tokens, provider and model mix; overall and per role."""
    from tracetune.logs.profile import format_profile, load_profile
    from tracetune.logs.store import store_path
    from tracetune.staging import atomic_file, check_output_file

    if json_out is not None:
        check_output_file(json_out, force=force, option="--json",
                          inputs=(store_path(run_dir),))
    profile = load_profile(run_dir)
    out.print(escape(format_profile(profile)), highlight=False)
    if json_out is not None:
        with atomic_file(json_out) as f:
            f.write(json.dumps(profile, indent=2))


@logs_app.command("suite")
def logs_suite_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory holding interactions.sqlite."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for the suites (ROLE.SPLIT.json, "
                                 "suite.SPLIT.json, suites.json)."),
    role: list[str] = typer.Option([], "--role", help="Build this role's suite (repeatable; "
                                   "default: every role present)."),
    split: str = typer.Option("80,10,10", "--split", help="Train, val and test shares in "
                              "percent, in time order."),
    dedup_threshold: float = typer.Option(0.8, "--dedup-threshold", help="Estimated Jaccard "
                                          "similarity at which a later request is a "
                                          "near-duplicate (1.0: exact copies only)."),
    classify_model: Optional[str] = typer.Option(None, "--classify-model", help="A model spec "
                                                 "that classifies what the rules leave at "
                                                 "'other'."),
) -> None:
    """Classify roles, drop near-duplicates, split each role by time and write logged suites
    (run them with `tracetune eval --suite DIR/suite.test.json --workflow replay`)."""
    from tracetune.logs.suites import SuiteConfig, build_suites

    try:
        shares = tuple(int(x) for x in split.split(","))
    except ValueError:
        raise TracetuneError(f"--split {split!r}: three integers like 80,10,10") from None
    build_suites(run_dir, out_dir, SuiteConfig(roles=tuple(role), split=shares,
                                               dedup_threshold=dedup_threshold,
                                               classify_model=classify_model),
                 log=lambda text: out.print(escape(text), highlight=False))
    out.print(f"suites written to {out_dir}")


try:  # typer may carry its own copy of click, whose errors are not click's
    from typer._click.exceptions import ClickException as _TyperClickException

    _CLICK_ERRORS: tuple[type[Exception], ...] = (click.ClickException, _TyperClickException)
except ImportError:
    _CLICK_ERRORS = (click.ClickException,)


def main() -> None:
    """Entry point: user errors become one line and exit code 1 (tracebacks with --debug)."""
    args = sys.argv[1:]
    debug = "--debug" in args
    if debug:  # accept --debug anywhere on the line, not only before the command
        args = ["--debug"] + [a for a in args if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=args, prog_name="tracetune", standalone_mode=False)
        if isinstance(rc, int):  # typer.Exit(code) comes back as a return value here
            sys.exit(rc)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except _CLICK_ERRORS as exc:  # a bad option or value: one line, like every other error
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err.print(f"[red]error:[/] {escape(exc.format_message())}{hint}", highlight=False)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except TracetuneError as exc:
        if debug:
            raise
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless --debug
        if debug:
            raise
        err.print(f"[red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))} "
                  "(rerun with --debug for the traceback)", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
