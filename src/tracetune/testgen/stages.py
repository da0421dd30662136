"""Multi-stage training as one stage file and one command: seed 001's A -> B -> C.

Seed 001 ("Testing Agent Fine-Tuning Plan", sections 4-5) trains one LoRA adapter in stages, each
starting from the adapter of the one before: A on KodCode-V1-SFT-R1 (r 16, alpha 32, dropout
0.05, lr 2e-4, 1 epoch), B on TestGenEval's train split from A's adapter (lr 1e-4), and an
optional C on failure -> fix rows from the agent's own runs (lr 5e-5, a few hundred steps), all
as QLoRA (4-bit NF4) on deepseek-coder-6.7b-instruct. A stage file says that once:

    [stages]                     name (a label), base (the model spec every stage trains on),
                                 description (optional)
    [train]                      defaults for every stage: TrainConfig's keys (optional)
    [[stage]]                    one per stage, run in file order
    name = "A"                   the stage's directory under OUT ([A-Za-z0-9_.-]; not "base")
    from = "base"                optional: the adapter the stage starts from: "base" (a fresh
                                 LoRA), or an earlier stage's name; default: the stage before
                                 (the first stage: "base")
    data = { loader = "kodcode", source = "KodCode/KodCode-V1-SFT-R1", split = "train",
             limit = 40000, max_tokens = 2048, tokenizer = SPEC, seed = 0 }
                                 rows from a public dataset (tracetune.testgen.loaders): loader
                                 kodcode or testgeneval; source a hub dataset id (default: the
                                 loader's) or a local file or directory; max_tokens measured with
                                 `tokenizer` (default: the base's)
    data = { runs = ["runs/testgen/baseline"], kinds = ["fix"], ... }
                                 rows mined from tracetune run directories
                                 (tracetune.datasets.build.mine): every other key is MineConfig's;
                                 tokenizer defaults to the base, max_seq_len to the stage's
    train = { learning_rate = 2e-4, epochs = 1 }
                                 this stage's TrainConfig keys, over [train]'s

Relative paths (a local `source`, `runs`) are read from the current directory. `init_adapter` is
never written in the file: the runner sets it to the parent stage's adapter. A stage that
continues another's adapter keeps that adapter's LoRA shape (PEFT loads r, alpha, dropout and
target modules from it), so it may not set them to other values.

Running (`run_stages`) writes, for each stage in order, OUT/NAME/:
    data/        the stage's dataset (tracetune's dataset layout: manifest, rows, formats, hf)
    adapter/     the trained adapter (`tracetune.train.recipe.train`'s output)
    stage.json   the marker, written last (MARKER's keys)
A rerun skips a stage whose marker's hash equals the stage's hash now: a hash of its resolved
settings (base, parent, data, training config; the size and mtime of its local dataset files, or
the finished episodes of its mined runs) and of its parent's marker file, so a changed stage is
redone, and so is every stage that continues from it. A stage killed midway (its PENDING file
there, naming the same hash) keeps its finished data and resumes its training from the last
checkpoint; one whose settings changed is removed and redone from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tracetune.datasets.build import MineConfig
from tracetune.errors import TracetuneError
from tracetune.testgen.loaders import (KODCODE_ID, TESTGENEVAL_ID, TESTGENEVAL_SPLITS,
                                       load_kodcode, load_testgeneval)
from tracetune.tomlconf import build, read_toml
from tracetune.train.config import TrainConfig

LOADERS = {"kodcode": (load_kodcode, KODCODE_ID), "testgeneval": (load_testgeneval,
                                                                  TESTGENEVAL_ID)}
"""loader name -> (loader function, its default hub dataset id)."""
BASE = "base"
"""The `from` value of a stage that starts a fresh LoRA on the base model."""
DATA_DIR = "data"
ADAPTER_DIR = "adapter"
MARKER = "stage.json"
"""A finished stage's marker: {"stage", "hash", "parent", "parent_marker_sha256",
"init_adapter", "base", "seconds" (this stage's wall time in the run that finished it),
"data_seconds", "train_seconds", "rows" (rows in the dataset), "counts" (rows per kind), "report"
(the loader's LoadReport.to_dict(), or a mined dataset's {"runs", "dropped"}), "steps",
"final_loss" (the last logged training loss), "train_loss" (the trainer's mean),
"settings" (what the hash covers), "config" (the TrainConfig trained with, init_adapter
included), "adapter", "data", "finished_at" (Unix seconds)}."""
PENDING = ".stage-pending.json"
"""In a stage directory while the stage runs: {"hash"}; a rerun with the same hash resumes it."""
LORA_SHAPE = ("r", "alpha", "dropout", "target_modules")
"""The TrainConfig keys an adapter fixes: a stage continuing it keeps them."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOP_KEYS = ("stages", "train", "stage")
_STAGE_KEYS = ("name", "from", "data", "train")


@dataclass(frozen=True)
class StagesInfo:
    """The [stages] table."""

    name: str
    """A label for the run (printed, recorded)."""
    base: str
    """The base model spec every stage trains on (as `tracetune train --base`)."""
    description: str = ""


@dataclass(frozen=True)
class LoaderData:
    """A stage's rows from a public dataset (tracetune.testgen.loaders)."""

    loader: str
    """kodcode or testgeneval."""
    source: str = ""
    """Hub dataset id or local file/directory; empty: the loader's hub dataset."""
    split: str = "train"
    limit: int | None = None
    """Rows kept at most (a random subset drawn with `seed`); None: all."""
    max_tokens: int | None = None
    """Rows whose prompt + completion exceed this many tokens of `tokenizer` are dropped."""
    tokenizer: str | None = None
    """Model spec whose tokenizer measures rows; None with max_tokens: the base's."""
    seed: int = 0

    def describe(self) -> str:
        extra = "".join(f", {k} {getattr(self, k)}" for k in ("limit", "max_tokens")
                        if getattr(self, k) is not None)
        return f"{self.loader} {self.source} [{self.split}]{extra}"


@dataclass(frozen=True)
class MinedData:
    """A stage's rows mined from tracetune run directories (seed 001's stage C: kinds = fix)."""

    runs: tuple[str, ...]
    mine: MineConfig

    def describe(self) -> str:
        return f"{'+'.join(self.mine.kinds)} rows mined from {', '.join(self.runs)}"


@dataclass(frozen=True)
class Stage:
    """One [[stage]], every default resolved."""

    name: str
    """Also its directory under OUT."""
    parent: str | None
    """The stage whose adapter this one starts from; None: a fresh LoRA on the base."""
    data: LoaderData | MinedData
    train: TrainConfig
    """The stage's training config, init_adapter None (the runner sets it)."""


@dataclass(frozen=True)
class StageFile:
    """A validated stage file (`load_stages`)."""

    path: Path
    info: StagesInfo
    stages: tuple[Stage, ...]
    """In file order: the order they run in (a stage's parent comes before it)."""

    def stage(self, name: str) -> Stage:
        """The stage named `name`; KeyError when there is none."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


@dataclass
class StageResult:
    """One stage of a run: its directory, its marker and whether this run skipped it."""

    name: str
    dir: Path
    marker: dict
    skipped: bool

    @property
    def adapter(self) -> Path:
        return self.dir / ADAPTER_DIR


# --- the file ---------------------------------------------------------------------------------


def load_stages(path: str | Path) -> StageFile:
    """Parse and validate a stage file (module docstring); reads nothing else and trains nothing.

    Returns a StageFile whose stages have every default resolved (data source, tokenizer, mined
    max_seq_len, the training config merged from [train] and the stage's own table, the base
    spec's device/dtype in it). Raises TracetuneError, one line naming the file, the stage and
    the key, for: a missing file or bad TOML, an unknown table or key, a missing [stages] table
    or base, no [[stage]], a stage without name or data, a bad or duplicate stage name, a `from`
    that names no stage, the stage itself or a later one, an unknown loader or split, a data
    table with both or neither of loader and runs, empty runs, init_adapter anywhere, a value of
    the wrong type or out of range (TrainConfig.validate, MineConfig.validate), or a stage that
    continues an adapter but sets another LoRA shape (LORA_SHAPE)."""
    from tracetune.train.recipe import base_config

    path = Path(path)
    data = read_toml(path)
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise TracetuneError(f"{path}: unknown key(s) or table(s) {', '.join(unknown)} "
                             "(valid: [stages], [train], [[stage]])")
    if "stages" not in data:
        raise TracetuneError(f"{path}: no [stages] table (it needs name and base)")
    table = data["stages"]
    if not isinstance(table, dict):
        raise TracetuneError(f"{path}: stages must be a table ([stages] with name and base)")
    for key in ("name", "base"):
        if key not in table:
            raise TracetuneError(f"{path} [stages]: no {key}")
    info = build(StagesInfo, table, f"{path} [stages]")
    defaults = data.get("train", {})
    _train_table(defaults, f"{path} [train]")

    raw_stages = data.get("stage", [])
    if isinstance(raw_stages, dict):
        raise TracetuneError(f"{path}: write each stage as [[stage]] (an array of tables), "
                             "not [stage]")
    if not raw_stages:
        raise TracetuneError(f"{path}: no stages; add at least one [[stage]] with name and data")
    names: list[str] = []
    for i, raw in enumerate(raw_stages, 1):
        if not isinstance(raw, dict):
            raise TracetuneError(f"{path}: [[stage]] {i} must be a table")
        name = raw.get("name")
        if name is None:
            raise TracetuneError(f"{path}: [[stage]] {i} has no name")
        if not isinstance(name, str) or not _NAME.match(name) or name in (BASE, ".", ".."):
            raise TracetuneError(f"{path}: [[stage]] {i}: name {name!r} is not a stage name "
                                 "(letters, digits, _ . -; not \"base\"); it names the stage's "
                                 "directory")
        if name in names:
            raise TracetuneError(f"{path}: two stages are named {name!r} ([[stage]] "
                                 f"{names.index(name) + 1} and {i})")
        names.append(name)

    stages: list[Stage] = []
    for i, raw in enumerate(raw_stages):
        name = raw["name"]
        where = f"{path} stage {name!r}"
        unknown = sorted(set(raw) - set(_STAGE_KEYS))
        if unknown:
            raise TracetuneError(f"{where}: unknown key(s) {', '.join(unknown)} "
                                 f"(valid: {', '.join(_STAGE_KEYS)})")
        parent = _parent(raw, i, names, where)
        own = raw.get("train", {})
        _train_table(own, f"{where} train")
        try:
            train = build(TrainConfig, {**defaults, **own}, f"{where} train")
            train.validate()
            train = base_config(info.base, train)
        except TracetuneError as exc:
            msg = str(exc)
            raise TracetuneError(msg if msg.startswith(str(path)) else
                                 f"{where} train: {msg}") from None
        if parent is not None:
            before = next(s for s in stages if s.name == parent).train
            for key in LORA_SHAPE:
                mine, theirs = getattr(train, key), getattr(before, key)
                if mine != theirs:
                    raise TracetuneError(
                        f"{where} train: {key} = {_toml(mine)} but stage {parent!r}, whose "
                        f"adapter it continues, has {key} = {_toml(theirs)}; a continued "
                        f"adapter keeps its LoRA shape ({', '.join(LORA_SHAPE)}): drop {key} "
                        "here or start from \"base\"")
        if "data" not in raw:
            raise TracetuneError(f"{where}: no data (data = {{ loader = \"kodcode\", ... }} or "
                                 "data = { runs = [\"RUN_DIR\"], kinds = [\"fix\"] })")
        stage_data = _data(raw["data"], f"{where} data", info.base, train)
        stages.append(Stage(name=name, parent=parent, data=stage_data, train=train))
    return StageFile(path=path, info=info, stages=tuple(stages))


def _train_table(values, where: str) -> None:
    """Check a TrainConfig table's keys and types (not its ranges: the merged config's job)."""
    if not isinstance(values, dict):
        raise TracetuneError(f"{where} must be a table")
    if "init_adapter" in values:
        raise TracetuneError(f"{where}: init_adapter is set by the runner to the parent stage's "
                             "adapter; name the parent with from = \"STAGE\" (or \"base\")")
    build(TrainConfig, values, where)  # raises for unknown keys and wrong types


def _parent(raw: dict, index: int, names: list[str], where: str) -> str | None:
    if "from" not in raw:
        return names[index - 1] if index else None
    ref = raw["from"]
    if not isinstance(ref, str):
        raise TracetuneError(f"{where}: from must be a string (\"base\" or a stage name)")
    if ref == BASE:
        return None
    if ref not in names:
        raise TracetuneError(f"{where}: from = {ref!r} names no stage (stages: "
                             f"{', '.join(names)}; or \"base\")")
    if ref == names[index]:
        raise TracetuneError(f"{where}: from = {ref!r} names the stage itself; start from an "
                             "earlier stage or \"base\"")
    if names.index(ref) > index:
        raise TracetuneError(f"{where}: from = {ref!r} names a later stage (stages run in file "
                             f"order: {' -> '.join(names)}); start from an earlier stage or "
                             "\"base\"")
    return ref


def _data(values, where: str, base: str, train: TrainConfig) -> LoaderData | MinedData:
    if not isinstance(values, dict):
        raise TracetuneError(f"{where} must be a table")
    if ("loader" in values) == ("runs" in values):
        raise TracetuneError(f"{where}: give either loader (a public dataset: "
                             f"{', '.join(LOADERS)}) or runs (run directories to mine), "
                             f"{'not both' if 'loader' in values else 'one of them'}")
    if "loader" in values:
        d = build(LoaderData, values, where)
        if d.loader not in LOADERS:
            raise TracetuneError(f"{where}: unknown loader {d.loader!r} "
                                 f"(loaders: {', '.join(LOADERS)})")
        if d.loader == "testgeneval" and d.split not in TESTGENEVAL_SPLITS:
            raise TracetuneError(f"{where}: split {d.split!r} is not a TestGenEval split "
                                 f"({', '.join(TESTGENEVAL_SPLITS)})")
        if d.limit is not None and d.limit < 1:
            raise TracetuneError(f"{where}: limit must be at least 1 row, not {d.limit}")
        if d.max_tokens is not None and d.max_tokens < 1:
            raise TracetuneError(f"{where}: max_tokens must be at least 1, not {d.max_tokens}")
        return dataclasses.replace(
            d, source=d.source or LOADERS[d.loader][1],
            tokenizer=d.tokenizer or (base if d.max_tokens is not None else None))
    rest = {k: v for k, v in values.items() if k != "runs"}
    runs = values["runs"]
    if isinstance(runs, str):
        runs = [runs]
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        raise TracetuneError(f"{where}: runs must be a list of run directories")
    if not runs:
        raise TracetuneError(f"{where}: runs is empty; name at least one run directory")
    rest.setdefault("tokenizer", base)
    rest.setdefault("max_seq_len", train.max_seq_len)
    mine = build(MineConfig, rest, where)
    try:
        mine.validate()
    except TracetuneError as exc:
        raise TracetuneError(f"{where}: {exc}") from None
    return MinedData(runs=tuple(runs), mine=mine)


def _toml(value) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


# --- checks and hashes ------------------------------------------------------------------------


def check_sources(spec: StageFile) -> list[str]:
    """Check that each stage's inputs are there, without loading them; return one line per
    stage: "NAME: from PARENT|base; DATA (where it is); lr L, epochs E[, qlora][, device D]".

    A local dataset source must exist; a hub dataset id is fetched when the stage runs (not
    checked: no network here). Each mined run directory must hold a trajectory store
    (trajectories.sqlite). Raises TracetuneError naming the stage and the missing path."""
    from tracetune.traces.store import DB_NAME

    lines = []
    for s in spec.stages:
        where = f"{spec.path} stage {s.name!r} data"
        if isinstance(s.data, LoaderData):
            kind = _source_kind(s.data.source)
            if kind == "missing":
                raise TracetuneError(f"{where}: source {s.data.source}: no such file or "
                                     "directory (nor a hub dataset id such as owner/name)")
            where_is = "local" if kind == "local" else "hub dataset, fetched when run"
        else:
            for run in s.data.runs:
                if not Path(run).is_dir():
                    raise TracetuneError(f"{where}: run directory {run} does not exist")
                if not (Path(run) / DB_NAME).is_file():
                    raise TracetuneError(f"{where}: {run} is not a run directory (no {DB_NAME})")
            where_is = "local"
        t = s.train
        flags = "".join([", qlora" if t.qlora else "",
                         f", device {t.device}" if t.device != "auto" else ""])
        lines.append(f"{s.name}: from {s.parent or BASE}; {s.data.describe()} ({where_is}); "
                     f"lr {t.learning_rate:g}, epochs {t.epochs:g}, r {t.r}, alpha {t.alpha}"
                     f"{flags}")
    return lines


def _source_kind(source: str) -> str:
    """local (an existing file or directory), hub (an owner/name id) or missing."""
    if Path(source).exists():
        return "local"
    return "hub" if _HUB_ID.match(source) else "missing"


def stage_settings(spec: StageFile, stage: Stage) -> dict:
    """What a stage's hash covers (JSON-ready): base, parent, data settings with local paths
    resolved, the training config without init_adapter, and "inputs": a digest of the local
    dataset files' sizes and mtimes, or of the mined runs' finished episodes (None when the
    source is on the hub). Raises TracetuneError for a mined run that is not a readable store."""
    train = dataclasses.asdict(stage.train)
    train.pop("init_adapter")
    files: list[Path] = []
    if isinstance(stage.data, LoaderData):
        data = dataclasses.asdict(stage.data)
        if _source_kind(stage.data.source) == "local":
            src = Path(stage.data.source)
            data["source"] = str(src.resolve())
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    else:
        runs = [Path(r).resolve() for r in stage.data.runs]
        data = {"runs": [str(r) for r in runs], "mine": dataclasses.asdict(stage.data.mine)}
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    if isinstance(stage.data, MinedData):
        for run in data["runs"]:
            h.update(_run_fingerprint(Path(run)).encode())
    inputs = h.hexdigest() if files or isinstance(stage.data, MinedData) else None
    return json.loads(json.dumps({"base": spec.info.base, "from": stage.parent, "data": data,
                                  "train": train, "inputs": inputs}, default=str))


def _run_fingerprint(run: Path) -> str:
    """A run's content as mining sees it: its id and its finished episodes (id, finish time).
    Read from the store, not from file times: SQLite rewrites its files when a reader closes."""
    from tracetune.traces.store import Store

    if not run.is_dir():
        return f"{run}: missing\n"
    store = Store(run)
    try:
        episodes = sorted((e["id"], e.get("finished_at")) for e in store.episodes())
        return f"{run}\0{store.run().id}\0{json.dumps(episodes)}\n"
    finally:
        store.close()


def stage_hash(settings: dict, parent_marker: Path | None) -> str:
    """sha256 of the settings (sorted JSON) and of the parent's marker file's bytes."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    if parent_marker is not None:
        h.update(b"\0parent\0" + hashlib.sha256(parent_marker.read_bytes()).digest())
    return h.hexdigest()


def _finished(stage_dir: Path, digest: str) -> dict | None:
    """The stage's marker when it says the stage finished with this hash and its adapter is
    there; else None."""
    from tracetune.train.recipe import META

    marker = stage_dir / MARKER
    if not marker.is_file() or not (stage_dir / ADAPTER_DIR / META).is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("hash") == digest else None


def plan(spec: StageFile, out: str | Path) -> dict[str, str]:
    """stage name -> "done" (its marker matches: a run skips it) or "to run" (new, changed, or
    after a stage it continues from that is to run), for `out` as it is now."""
    out = Path(out)
    status: dict[str, str] = {}
    for s in spec.stages:
        if s.parent is not None and status[s.parent] != "done":
            status[s.name] = "to run"
            continue
        parent_marker = out / s.parent / MARKER if s.parent else None
        digest = stage_hash(stage_settings(spec, s), parent_marker)
        status[s.name] = "done" if _finished(out / s.name, digest) else "to run"
    return status


# --- running ----------------------------------------------------------------------------------


def run_stages(spec: StageFile | str | Path, out: str | Path, *,
               log: Callable[[str], None] = print,
               progress_interval_s: float = 30.0) -> list[StageResult]:
    """Run every stage of `spec` (a StageFile or a stage file's path) in order into OUT/NAME/
    (module docstring): build its dataset, train its adapter from its parent's (init_adapter),
    write its marker. Finished stages whose hash is unchanged are skipped; a stage with changed
    settings (or whose parent was redone) is removed and redone.

    `log` gets progress lines: one when a stage starts, is skipped, has its data and is done,
    and training progress ("[NAME train] STEP/TOTAL steps ...") at most every
    `progress_interval_s` seconds. Returns one StageResult per stage, in order.

    Raises TracetuneError before any work for a bad file, a missing local source or run
    (check_sources), an `out` that is a file, or a stage directory holding files this runner
    did not write; during a stage, whatever building its data or training raises (prefixed
    with the stage), leaving the stage resumable."""
    from tracetune.experiment.progress import ProgressLines
    from tracetune.staging import atomic_file, check_output_dir
    from tracetune.train.recipe import META, train

    spec = spec if isinstance(spec, StageFile) else load_stages(spec)
    out = Path(out)
    check_output_dir(out)
    check_sources(spec)
    for s in spec.stages:
        d = out / s.name
        if d.is_dir() and any(d.iterdir()) and not ((d / MARKER).exists()
                                                    or (d / PENDING).exists()):
            raise TracetuneError(f"{d} holds files `tracetune stages` did not write; remove "
                                 "them or choose another --out")
    total = len(spec.stages)
    results: list[StageResult] = []
    lines = ProgressLines(interval_s=progress_interval_s)
    for n, s in enumerate(spec.stages, 1):
        d = out / s.name
        head = f"stage {s.name} ({n}/{total})"
        parent_marker = out / s.parent / MARKER if s.parent else None
        settings = stage_settings(spec, s)
        digest = stage_hash(settings, parent_marker)
        done = _finished(d, digest)
        if done is not None:
            log(f"{head}: up to date, skipped ({d / ADAPTER_DIR})")
            results.append(StageResult(s.name, d, done, skipped=True))
            continue
        if d.is_dir() and any(d.iterdir()):
            if _read_json(d / PENDING).get("hash") == digest:
                log(f"{head}: resuming an interrupted run")
            else:
                why = ("its adapter is missing" if _read_json(d / MARKER).get("hash") == digest
                       else "its settings, inputs or a stage it continues changed since its "
                       "last run")
                log(f"{head}: {why}; redoing it")
                shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_file(d / PENDING) as f:
            f.write(json.dumps({"hash": digest}))
        t0 = time.perf_counter()
        data_dir = d / DATA_DIR
        try:
            report = _build_data(s, data_dir, head, log)
        except TracetuneError as exc:
            raise TracetuneError(f"stage {s.name}: {exc}") from None
        data_s = time.perf_counter() - t0
        manifest = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
        counts = manifest.get("counts", {})
        rows = sum(counts.values())
        init_adapter = str((out / s.parent / ADAPTER_DIR).resolve()) if s.parent else None
        config = dataclasses.replace(s.train, init_adapter=init_adapter)
        adapter = d / ADAPTER_DIR
        if (adapter / META).is_file():
            log(f"{head}: adapter already trained ({adapter})")
        else:
            log(f"{head}: training from {'stage ' + s.parent if s.parent else 'the base'} "
                f"({rows} rows, lr {config.learning_rate:g}, epochs {config.epochs:g}) "
                f"-> {adapter}")

            def on_progress(step: int, steps: int, loss: float | None, _name=s.name) -> None:
                line = lines.line(f"{_name} train", step, steps,
                                  f"loss {loss:.3f}" if loss is not None else "")
                if line:
                    log(line)

            try:
                train(data_dir, spec.info.base, adapter, config, resume=True,
                      log=lambda text, _h=head: log(f"{_h}: {text}"), on_progress=on_progress)
            except TracetuneError as exc:
                raise TracetuneError(f"stage {s.name}: {exc}") from None
        meta = json.loads((adapter / META).read_text(encoding="utf-8"))
        seconds = time.perf_counter() - t0
        marker = {
            "stage": s.name, "hash": digest, "parent": s.parent,
            "parent_marker_sha256": hashlib.sha256(parent_marker.read_bytes()).hexdigest()
            if parent_marker else None,
            "init_adapter": init_adapter, "base": spec.info.base,
            "seconds": round(seconds, 2), "data_seconds": round(data_s, 2),
            "train_seconds": meta.get("train_seconds"), "rows": rows, "counts": counts,
            "report": report, "steps": meta.get("steps"), "final_loss": meta.get("last_loss"),
            "train_loss": meta.get("train_loss"), "settings": settings,
            "config": dataclasses.asdict(config), "adapter": str(adapter.resolve()),
            "data": str(data_dir.resolve()), "finished_at": time.time(),
        }
        with atomic_file(d / MARKER) as f:
            f.write(json.dumps(marker, indent=2, default=str))
        (d / PENDING).unlink(missing_ok=True)
        loss = marker["final_loss"]
        log(f"{head}: done in {_duration(seconds)}: {rows} rows, {marker['steps']} steps"
            + (f", final loss {loss:.4f}" if loss is not None else ""))
        results.append(StageResult(s.name, d, marker, skipped=False))
    return results


def _build_data(stage: Stage, data_dir: Path, head: str, log: Callable[[str], None]) -> dict:
    """The stage's dataset at `data_dir` (kept when a resumed stage already has it); returns
    the report recorded in the marker."""
    from tracetune.datasets.build import load_manifest, mine

    if (data_dir / "manifest.json").is_file():
        manifest = load_manifest(data_dir)
        log(f"{head}: data already built ({sum(manifest.get('counts', {}).values())} rows)")
        sources = manifest.get("sources", [])
        if isinstance(stage.data, LoaderData) and sources:
            return sources[0]
        return {"runs": sources, "dropped": manifest.get("dropped", {})}
    log(f"{head}: building data: {stage.data.describe()}")
    if isinstance(stage.data, LoaderData):
        from tracetune.testgen.loaders import write_dataset

        d = stage.data
        rows, report = LOADERS[d.loader][0](d.source, split=d.split, limit=d.limit,
                                            max_tokens=d.max_tokens, tokenizer=d.tokenizer,
                                            seed=d.seed)
        log(f"{head}: {report.summary()}")
        write_dataset(rows, data_dir, reports=[report])
        return report.to_dict()
    runs = [Path(r) for r in stage.data.runs]
    mined = mine(runs, data_dir, stage.data.mine)
    counts = {k: len(v) for k, v in mined.rows.items()}
    dropped = ", ".join(f"{k} {v}" for k, v in mined.dropped.items()) or "none"
    log(f"{head}: mined {', '.join(f'{v} {k}' for k, v in counts.items())} rows "
        f"(dropped: {dropped})")
    return {"runs": [str(r.resolve()) for r in runs], "dropped": dict(mined.dropped)}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
