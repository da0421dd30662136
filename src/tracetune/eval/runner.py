"""`tracetune eval`: run a workflow over a suite for N trials, recording every attempt.

Episodes run on a thread pool: while one episode waits for its sandbox checks, another generates,
so the model and the sandbox work at the same time. Every attempt is committed to the run's store
as it happens; a killed run continues with `resume=True` and ends with exactly one episode per
(task, trial).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from tracetune.agents import build_workflow
from tracetune.errors import TracetuneError
from tracetune.eval.config import EvalConfig, eval_config_from
from tracetune.eval.metrics import Summary, summarize_run
from tracetune.agents.teachers import load_policy
from tracetune.models import Model
from tracetune.sandbox import Sandbox, SandboxConfig
from tracetune.tasks import Task, builtin_suites, load_suite
from tracetune.tasks.check import require_valid
from tracetune.tasks.splits import select
from tracetune.traces.store import DB_NAME, RunInfo, Store
from tracetune.types import derive_seed

_PACKAGES = ("tracetune", "torch", "transformers", "peft", "trl", "llama-cpp-python", "openai",
             "pytest")


def select_tasks(config: EvalConfig) -> list[Task]:
    suite = load_suite(config.suite)
    check_suite_kind(config.workflow_spec().info, suite.kind, config.suite)
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


def check_suite_kind(info, kind: str, suite: str) -> None:
    """A workflow runs only on the kind of suite it is made for (agents.spec.WorkflowInfo)."""
    if kind not in info.suite_kinds:
        from tracetune.agents.spec import WORKFLOWS

        fits = [w.name for w in WORKFLOWS.values() if kind in w.suite_kinds]
        raise TracetuneError(f"workflow {info.name} runs on {' or '.join(info.suite_kinds)} "
                             f"suites, and "
                             f"{suite} is a {kind} suite (use workflow "
                             f"{' or '.join(fits) or 'none'})")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def open_run(config: EvalConfig, out: Path, *, resume: bool
             ) -> tuple[Store, EvalConfig, Model | None]:
    """Create the run's store, or reopen it on resume (then the stored config wins). A new run
    loads its model first: nothing is created until the suite, the settings and the model are
    known to be good. Returns (store, config, the loaded model or None on resume)."""
    from tracetune.staging import check_output_dir

    db = Path(out) / DB_NAME
    check_output_dir(Path(out))
    if resume:
        if not db.is_file():
            raise TracetuneError(f"nothing to resume: no run in {out}")
        store = Store(db)
        try:
            stored = eval_config_from(store.run().config, f"{db} (stored run config)")
            check_tasks_unchanged(store, select_tasks(stored), out)
        except BaseException:
            store.close()
            raise
        return store, stored, None
    if db.exists():
        raise TracetuneError(f"{out} already holds a run: pass --resume to continue it, or "
                             "choose another --out")
    config.validate()
    select_tasks(config)  # fail on a bad suite or split before creating anything
    if config.suite not in builtin_suites():  # a user's suite: prove its references first
        with Sandbox(SandboxConfig(timeout_s=config.check_timeout_s)) as sb:
            require_valid(load_suite(config.suite), sb)
    model = load_policy(config.model)
    try:
        store = Store(db, create=True)
    except BaseException:
        model.close()
        raise
    store.create_run(RunInfo(uuid.uuid4().hex, time.time(), config.suite,
                             config.workflow_spec().name, config.model, config.seed, config.trials,
                             dataclasses.asdict(config), package_versions()))
    store.set_meta(TASKS_META, json.dumps(task_fingerprints(select_tasks(config)),
                                          sort_keys=True))
    return store, config, model


TASKS_META = "tasks"
"""The store's meta key holding {task id: sha256 of the task as run} (see task_fingerprints)."""


def task_fingerprints(tasks: list[Task]) -> dict[str, str]:
    """{task id: sha256 of every field of the task (spec, tests, reference, names...)}: what a
    resumed run checks, so its episodes all come from the same tasks."""
    import hashlib

    # Fields added to Task later are hashed only when set, so runs recorded before they
    # existed still resume (their tasks' fingerprints are unchanged).
    later = {"order": None, "created_at": ""}

    def fields(t: Task) -> dict:
        return {k: v for k, v in dataclasses.asdict(t).items()
                if not (k in later and v == later[k])}

    return {t.id: hashlib.sha256(json.dumps(fields(t), sort_keys=True,
                                            default=str).encode()).hexdigest() for t in tasks}


def check_tasks_unchanged(store: Store, tasks: list[Task], out: Path) -> None:
    """Refuse to resume a run whose suite changed since it started (tasks added, removed or
    edited), naming what changed. Runs recorded before fingerprints were kept are not checked.
    Raises TracetuneError."""
    raw = store.get_meta(TASKS_META)
    if raw is None:
        return
    then, now = json.loads(raw), task_fingerprints(tasks)
    changes = [f"{t} removed" for t in sorted(then.keys() - now.keys())] + \
        [f"{t} added" for t in sorted(now.keys() - then.keys())] + \
        [f"{t} edited" for t in sorted(then.keys() & now.keys()) if then[t] != now[t]]
    if changes:
        shown = ", ".join(changes[:5]) + (f" and {len(changes) - 5} more" if len(changes) > 5
                                          else "")
        raise TracetuneError(f"cannot resume {out}: its suite {store.run().suite!r} changed "
                             f"since the run started ({shown}); restore the suite, or start a "
                             "new run with another --out")


def run_eval(config: EvalConfig, out: Path, *, resume: bool = False,
             on_progress: Callable[[int, int], None] | None = None) -> Summary:
    """Run (or continue) an evaluation in `out` (its store: `out/DB_NAME`); returns the run's
    overall Summary (eval.metrics), read from the store while it is open.
    `on_progress(done, total)` counts finished episodes."""
    store, config, model = open_run(config, out, resume=resume)
    try:
        _run(store, config, on_progress, model)
        return summarize_run(store.episodes())[1]
    finally:
        store.close()


def _run(store: Store, config: EvalConfig, on_progress, model: Model | None) -> None:
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
        if model is not None:
            model.close()
        return
    workflow = build_workflow(config.workflow_spec())
    params = config.params()
    model = model if model is not None else load_policy(config.model)
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
        policy = model.bind(task) if hasattr(model, "bind") else model  # a teacher
        try:
            outcome = workflow.run(task, policy, sandbox, params=params, seed=seed,
                                   on_attempt=lambda attempt: store.add_attempt(eid, attempt))
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
