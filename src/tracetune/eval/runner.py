"""`tracetune eval`: run a workflow over a suite for N trials, recording every attempt.

Episodes run on a thread pool: while one episode waits for its sandbox checks, another generates,
so the model and the sandbox work at the same time. Every attempt is committed to the run's store
as it happens; a killed run continues with `resume=True` and ends with exactly one episode per
(task, trial).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracetune.agents.repair import run_repair_episode
from tracetune.agents.workflow import WORKFLOWS, build_workflow, derive_seed, run_episode
from tracetune.errors import TracetuneError
from tracetune.models import load_model, parse_spec
from tracetune.sandbox import Sandbox, SandboxConfig
from tracetune.tasks import Task, builtin_suites, load_suite
from tracetune.tasks.check import require_valid
from tracetune.tasks.splits import select
from tracetune.traces.store import DB_NAME, RunInfo, Store
from tracetune.types import SamplingParams

_PACKAGES = ("tracetune", "torch", "transformers", "peft", "trl", "llama-cpp-python", "openai",
             "pytest")


@dataclass(frozen=True)
class EvalConfig:
    """Everything that defines an evaluation run (stored with the run, reused on resume)."""

    suite: str
    """Built-in suite name or a suite .toml file."""
    workflow: str = "direct"
    """direct, tdd or repair (repair suites only, e.g. bugs)."""
    model: str = "embedded"
    """Model spec."""
    trials: int = 1
    """Episodes per task."""
    seed: int = 0
    """Base seed; each (task, trial, step, attempt) derives its own."""
    temperature: float = 0.8
    """Sampling temperature (0 = greedy)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_tokens: int = 512
    """Most completion tokens per attempt."""
    max_attempts: int = 3
    """Attempts per step before the step (and episode) fails."""
    min_tests: int = 3
    """tdd: tests g_test must write."""
    split: str = "all"
    """all, train or test (task-level, by hash)."""
    train_pct: int | None = None
    """Share of tasks (by hash) in the train split (None: the suite's own, 50 unless it says)."""
    tasks: tuple[str, ...] = ()
    """Only these task ids (empty: all of the split)."""
    max_difficulty: int = 0
    """Only tasks of at most this difficulty tier (0: every tier)."""
    limit: int = 0
    """At most this many tasks (0: no limit), after the split and the task filter."""
    concurrency: int = 4
    """Episodes in flight at once."""
    check_timeout_s: float = 10.0
    """Sandbox wall-clock limit per check."""
    max_iters: int = 10
    """repair: most assistant messages (tool calls) per episode."""
    test_policy: str = "after_write"
    """repair: when the driver runs the tests (never, after_write, end)."""

    def validate(self) -> None:
        if self.workflow not in WORKFLOWS:
            raise TracetuneError(f"unknown workflow {self.workflow!r} ({', '.join(WORKFLOWS)})")
        for name in ("trials", "max_tokens", "max_attempts", "concurrency", "max_iters"):
            if getattr(self, name) < 1:
                raise TracetuneError(f"{name} must be at least 1")
        self.workflow_settings()  # e.g. an unknown test policy fails here
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise TracetuneError("temperature must be >= 0 and top_p within (0, 1]")
        parse_spec(self.model)  # a bad spec fails here, before any work starts

    def workflow_settings(self):
        """The workflow this config runs (a guarded Workflow, or RepairWorkflow)."""
        return build_workflow(self.workflow, max_attempts=self.max_attempts,
                              min_tests=self.min_tests, max_iters=self.max_iters,
                              test_policy=self.test_policy)

    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.max_tokens)


def select_tasks(config: EvalConfig) -> list[Task]:
    suite = load_suite(config.suite)
    repair = config.workflow == "repair"
    if repair != (suite.kind == "repair"):
        raise TracetuneError(
            f"suite {config.suite} is a repair suite: use --workflow repair" if not repair else
            f"the repair workflow needs a repair suite (e.g. bugs), and {config.suite} is not one")
    if config.tasks:
        unknown = sorted(set(config.tasks) - {t.id for t in suite.tasks})
        if unknown:
            raise TracetuneError(f"task(s) not in suite {config.suite}: {', '.join(unknown)}")
    tasks = select(suite.tasks, config.split,
                   suite.train_pct if config.train_pct is None else config.train_pct)
    if config.tasks:  # the listed tasks that fall in the split
        tasks = [t for t in tasks if t.id in set(config.tasks)]
    if config.max_difficulty:
        tasks = [t for t in tasks if t.difficulty <= config.max_difficulty]
    if config.limit:
        tasks = tasks[:config.limit]
    if not tasks:
        raise TracetuneError(f"no tasks selected from suite {config.suite} (split {config.split})")
    return tasks


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def open_run(config: EvalConfig, out: Path, *, resume: bool) -> tuple[Store, EvalConfig]:
    """Create the run's store, or reopen it on resume (then the stored config wins)."""
    db = Path(out) / DB_NAME
    if resume:
        if not db.is_file():
            raise TracetuneError(f"nothing to resume: no run in {out}")
        store = Store(db)
        stored = EvalConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in store.run().config.items()})
        return store, stored
    if db.exists():
        raise TracetuneError(f"{out} already holds a run: pass --resume to continue it, or "
                             "choose another --out")
    config.validate()
    select_tasks(config)  # fail on a bad suite or split before creating anything
    if config.suite not in builtin_suites():  # a user's suite: prove its references first
        with Sandbox(SandboxConfig(timeout_s=config.check_timeout_s)) as sb:
            require_valid(load_suite(config.suite), sb)
    store = Store(db, create=True)
    store.create_run(RunInfo(uuid.uuid4().hex, time.time(), config.suite, config.workflow,
                             config.model, config.seed, config.trials,
                             dataclasses.asdict(config), package_versions()))
    return store, config


def run_eval(config: EvalConfig, out: Path, *, resume: bool = False,
             on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Run (or continue) an evaluation; returns the store's path. `on_progress(done, total)`."""
    store, config = open_run(config, out, resume=resume)
    try:
        _run(store, config, on_progress)
    finally:
        store.close()
    return Path(out) / DB_NAME


def _run(store: Store, config: EvalConfig, on_progress) -> None:
    run = store.run()
    tasks = select_tasks(config)
    store.drop_unfinished()  # a killed run's partial episodes are redone from their start
    done = store.done_keys()
    todo = [(task, trial) for trial in range(config.trials) for task in tasks
            if (task.id, trial) not in done]
    total = len(tasks) * config.trials
    finished = total - len(todo)
    if on_progress:
        on_progress(finished, total)
    if not todo:
        return
    workflow = config.workflow_settings()
    params = config.params()
    model = load_model(config.model)
    sandbox = Sandbox(SandboxConfig(timeout_s=config.check_timeout_s))
    stop = threading.Event()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def one(task: Task, trial: int) -> None:
        nonlocal finished
        if stop.is_set():
            return
        seed = derive_seed(config.seed, task.id, trial)
        eid = store.start_episode(run.id, task.id, trial, workflow.name, seed)
        episode = run_repair_episode if workflow.name == "repair" else run_episode
        policy = model.bind(task) if hasattr(model, "bind") else model  # the oracle
        try:
            outcome = episode(task, workflow, policy, sandbox, params=params, seed=seed,
                              on_attempt=lambda rec: store.add_attempt(eid, rec.to_row()))
        except BaseException as exc:  # a model error: stop, leave this episode unfinished
            stop.set()
            errors.append(exc)
            return
        store.finish_episode(eid, success=outcome.success, wrong_tests=outcome.wrong_tests,
                             failed_step=outcome.failed_step, n_attempts=len(outcome.attempts),
                             duration_s=outcome.duration_s,
                             prompt_tokens=outcome.prompt_tokens,
                             completion_tokens=outcome.completion_tokens, error=None,
                             metrics=outcome.metrics)
        with lock:
            finished += 1
            if on_progress:
                on_progress(finished, total)

    try:
        with sandbox, ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            futures = [pool.submit(one, task, trial) for task, trial in todo]
            try:
                for f in futures:
                    f.result()
            except KeyboardInterrupt:
                stop.set()
                raise
    finally:
        model.close()
    if errors:
        exc = errors[0]
        if isinstance(exc, TracetuneError):
            raise TracetuneError(f"{exc} (finished episodes are saved; rerun with --resume)") \
                from exc
        raise exc
