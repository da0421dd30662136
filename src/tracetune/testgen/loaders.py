"""Test-writing training data from public datasets: KodCode-V1-SFT-R1 and TestGenEval -> rows.

Seed 001 ("Testing Agent Fine-Tuning Plan", section 3) gives the mappings and filters; the
datasets' cards give the column layouts:

  KodCode/KodCode-V1-SFT-R1 (stage A; splits train, incorrect, use_with_caution)
    solution            -> the code under test (prompt), imported as module `solution`
    test_code | test    -> the target test file (completion); the card's current layout says
                           test_code, the seed says test: either is accepted (test_code first)
    question            optional, not used (the prompt is tests-only)
    question_id         the row's id, when present
    r1_correctness      rows whose value is not true ("True" in the card, a string) are dropped,
                        when the column exists
  kjain14/testgeneval (stage B; splits train, dev, test: the benchmark's evaluation pairs)
    code_src            -> the code under test
    test_src            -> the full test file (full-file generation only: preds_context's
                           preamble / first / last slices are never used)
    code_file           the module's path in its repository (e.g. src/pkg/mod.py): the prompt
                        names the module `pkg.mod`, as the real test file imports it; "solution"
                        when the column is absent or not a module path
    id, instance_id, repo, test_file   recorded in provenance

Each loader returns `Loaded(rows, report)`: `rows` are `tracetune.datasets.rows.Row`s of kind
"sft", step "testgen", whose prompt is `tracetune.testgen.prompt.render(code, module=...)` as one
user message and whose completion is the dataset's test file, raw (seed 001 section 2: the output
is the raw test_*.py content); `report` (`LoadReport`) counts the rows read and what each filter
dropped. Filters run in this order, each counted under its name:
  empty          the code or the test is missing or blank
  r1_incorrect   KodCode: r1_correctness is not true (only when the column exists)
  duplicate      KodCode: a solution equal to an earlier one once normalized
                 (`tracetune.datasets.mine.normalize_code`); TestGenEval: the same code, module
                 and test file as an earlier row
  too_long       prompt + completion longer than `max_tokens` tokens of `tokenizer` (seed 001:
                 the whole example is measured, not the test alone)
  limit          rows left out of the `limit` subset, drawn at random with `seed`

`write_dataset(rows, out_dir, reports=...)` writes the rows as a tracetune dataset directory (the
layout of `tracetune.datasets.build`: manifest, rows/sft.jsonl, formats/*, hf/sft), which
`tracetune train` reads like a mined one.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tracetune.datasets.mine import code_hash
from tracetune.datasets.rows import Row, row_id
from tracetune.errors import TracetuneError
from tracetune.testgen.prompt import render

log = logging.getLogger(__name__)

KODCODE_ID = "KodCode/KodCode-V1-SFT-R1"
"""KodCode's SFT release on the Hugging Face hub (card: splits train, incorrect,
use_with_caution)."""
TESTGENEVAL_ID = "kjain14/testgeneval"
"""TestGenEval on the Hugging Face hub (facebookresearch/testgeneval's README)."""
TESTGENEVAL_SPLITS = ("train", "dev", "test")
"""TestGenEval's splits (seed 001: train ~15.4k pairs for stage B, dev 210 held out for
evaluation; test: the benchmark's 1,210 pairs). The hub uses the same names."""
STEP = "testgen"
"""The step of every row (the `testgen` workflow's step)."""
FILTERS = ("empty", "r1_incorrect", "duplicate", "too_long", "limit")
"""The filters, in the order they run (module docstring)."""

KODCODE_CODE = "solution"
KODCODE_TESTS = ("test_code", "test")
TESTGENEVAL_CODE = "code_src"
TESTGENEVAL_TEST = "test_src"

_SPLIT_NAMES = ("use_with_caution", "validation", "incorrect", "train", "test", "dev")
_FILE_KINDS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class MissingColumnError(TracetuneError, KeyError):
    """A dataset without a column the loader needs (seed 001: "assert required columns exist;
    raise KeyError"). A KeyError and a TracetuneError, whose message names the column(s) and
    the dataset."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Loaded(NamedTuple):
    """What a loader returns; unpacks as `rows, report = load_kodcode(...)`."""

    rows: list[Row]
    report: LoadReport


@dataclass
class LoadReport:
    """What a loader read and what each filter dropped."""

    dataset: str
    """"kodcode" or "testgeneval"."""
    source: str
    """The source as given: a hub dataset id or a local path."""
    split: str
    columns: dict[str, str] = field(default_factory=dict)
    """role -> the column read for it: code, test, and for KodCode r1_correctness when present."""
    read: int = 0
    """Rows read from the split."""
    dropped: dict[str, int] = field(default_factory=dict)
    """filter name (FILTERS) -> rows it removed, in the order the filters ran."""
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)
    """filter name -> up to 5 of the rows it removed ("row INDEX (TASK)")."""
    kept: int = 0
    """Rows returned."""
    settings: dict = field(default_factory=dict)
    """The filters' settings: r1_correctness, dedup, max_tokens, tokenizer, limit, seed."""

    def drop(self, reason: str, index: int, task: str) -> None:
        """Count source row `index` (task `task`) as removed by filter `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.dropped_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(f"row {index} ({task})")

    def summary(self) -> str:
        """One line: "kodcode SOURCE [split]: N read, M kept (dropped: r1_incorrect 3, ...)"."""
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.items()) or "none"
        return (f"{self.dataset} {self.source} [{self.split}]: {self.read} read, "
                f"{self.kept} kept (dropped: {dropped})")

    def to_dict(self) -> dict:
        """The report as JSON-ready data (what `write_dataset` puts in the manifest's
        "sources")."""
        return {"dataset": self.dataset, "source": self.source, "split": self.split,
                "columns": dict(self.columns), "read": self.read, "kept": self.kept,
                "dropped": dict(self.dropped),
                "dropped_examples": {k: list(v) for k, v in self.dropped_examples.items()},
                "settings": dict(self.settings)}


Tokenizer = Any
"""A Hugging Face tokenizer (its chat template is applied when it has one), a callable
`str -> token ids | int`, or a model spec string (`tracetune mine --tokenizer`'s forms)."""


def load_kodcode(source: str | Path = KODCODE_ID, *, split: str = "train",
                 limit: int | None = None, max_tokens: int | None = None,
                 tokenizer: Tokenizer | None = None, seed: int = 0) -> Loaded:
    """KodCode-V1-SFT-R1 rows -> `Loaded(rows, report)` (seed 001 section 3.1).

    source: a local .jsonl / .json / .parquet file, a directory (a `save_to_disk` dataset or
    dataset dict, or files named by split such as data/train-00000-of-00011.parquet), or a hub
    dataset id read with `datasets.load_dataset(source, split=split)`. Each row: prompt =
    render(solution, module="solution") (KodCode's tests import `from solution import ...`),
    completion = the test file, code = the test file, task = "kodcode/QUESTION_ID" (else
    "kodcode/" + a hash of the solution), tiers = [], provenance = {"source": "kodcode",
    "dataset", "split", "index" (the row's position in the split), "row_id", "task", "step",
    "module", "filters", "attempt": None}.

    Filters (module docstring): empty, r1_incorrect (when r1_correctness exists), duplicate
    (normalized solution), too_long (with `max_tokens` and `tokenizer`), limit (a subset of
    `limit` rows drawn with `seed`, in source order).

    Raises MissingColumnError (a KeyError) when `solution` or both `test_code` and `test` are
    missing; TracetuneError for a source that does not exist or does not load, a file named for
    another split, a negative `limit`, or `max_tokens` without `tokenizer`."""
    _check_settings(limit, max_tokens, tokenizer)
    table = _open(source, split, "KodCode")
    test_col = next((c for c in KODCODE_TESTS if c in table.columns), None)
    _require(table, "KodCode", [KODCODE_CODE] if test_col else [KODCODE_CODE, KODCODE_TESTS])
    r1 = "r1_correctness" if "r1_correctness" in table.columns else None
    report = LoadReport("kodcode", str(source), split,
                        {"code": KODCODE_CODE, "test": test_col,
                         **({"r1_correctness": r1} if r1 else {})})
    filters = _filters(report, r1_correctness=r1 is not None, dedup="normalized solution",
                       limit=limit, max_tokens=max_tokens, tokenizer=tokenizer, seed=seed)
    wanted = [KODCODE_CODE, test_col] + [c for c in ("question_id", r1) if c in table.columns]
    candidates = []
    seen: set[str] = set()
    for index, raw in enumerate(table.rows(wanted)):
        report.read += 1
        code, test = raw.get(KODCODE_CODE), raw.get(test_col)
        qid = raw.get("question_id")
        task = f"kodcode/{qid}" if qid else None
        if not _text(code) or not _text(test):
            report.drop("empty", index, task or f"kodcode/row{index}")
            continue
        key = code_hash(code)
        task = task or f"kodcode/{key[:16]}"
        if r1 and not _truthy(raw.get(r1)):
            report.drop("r1_incorrect", index, task)
            continue
        if key in seen:
            report.drop("duplicate", index, task)
            continue
        seen.add(key)
        candidates.append(_row(code, test, "solution", task, index, {
            "source": "kodcode", "dataset": str(source), "split": split, "index": index,
            "row_id": qid}, filters))
    return _finish(candidates, report, limit, max_tokens, tokenizer, seed)


def load_testgeneval(source: str | Path = TESTGENEVAL_ID, *, split: str = "train",
                     limit: int | None = None, max_tokens: int | None = None,
                     tokenizer: Tokenizer | None = None, seed: int = 0) -> Loaded:
    """TestGenEval rows -> `Loaded(rows, report)` (seed 001 section 3.2: full test file
    generation only).

    split: "train" (stage B), "dev" (held out for evaluation) or "test" (the benchmark); the hub
    dataset's splits have these names. source: as `load_kodcode`'s. Each row: prompt =
    render(code_src, module=M) where M is the module named by `code_file` ("src/pkg/mod.py" ->
    "pkg.mod"; "solution" when there is no such column or it is not a module path), completion
    = code = test_src, task = "testgeneval/ID" (the `id` column, else instance_id + code_file,
    else a hash of the pair), tiers = [], provenance = {"source": "testgeneval", "dataset",
    "split", "index", "row_id", "task", "step", "module", "filters", "attempt": None} plus
    "code_file", "test_file", "repo", "instance_id" where the columns exist.

    Filters (module docstring): empty, duplicate (same code, module and test file), too_long,
    limit.

    Raises MissingColumnError (a KeyError) when `code_src` or `test_src` is missing;
    TracetuneError for an unknown split, a source that does not exist or does not load, a file
    named for another split, a negative `limit`, or `max_tokens` without `tokenizer`."""
    if split not in TESTGENEVAL_SPLITS:
        raise TracetuneError(f"unknown TestGenEval split {split!r} "
                             f"({', '.join(TESTGENEVAL_SPLITS)})")
    _check_settings(limit, max_tokens, tokenizer)
    table = _open(source, split, "TestGenEval")
    _require(table, "TestGenEval", [TESTGENEVAL_CODE, TESTGENEVAL_TEST])
    report = LoadReport("testgeneval", str(source), split,
                        {"code": TESTGENEVAL_CODE, "test": TESTGENEVAL_TEST})
    filters = _filters(report, r1_correctness=False, dedup="code, module and test file",
                       limit=limit, max_tokens=max_tokens, tokenizer=tokenizer, seed=seed)
    extra = [c for c in ("id", "instance_id", "repo", "code_file", "test_file")
             if c in table.columns]
    candidates = []
    seen: set[tuple[str, str, str]] = set()
    for index, raw in enumerate(table.rows([TESTGENEVAL_CODE, TESTGENEVAL_TEST] + extra)):
        report.read += 1
        code, test = raw.get(TESTGENEVAL_CODE), raw.get(TESTGENEVAL_TEST)
        code_file = raw.get("code_file")
        module = module_name(code_file) if isinstance(code_file, str) else None
        module = module or "solution"
        rid = raw.get("id") or (f"{raw['instance_id']}:{code_file}"
                                if raw.get("instance_id") and code_file else None)
        if not _text(code) or not _text(test):
            report.drop("empty", index, f"testgeneval/{rid or f'row{index}'}")
            continue
        key = (code_hash(code), module, code_hash(test))
        task = f"testgeneval/{rid}" if rid else f"testgeneval/{row_id(*key)}"
        if key in seen:
            report.drop("duplicate", index, task)
            continue
        seen.add(key)
        prov = {"source": "testgeneval", "dataset": str(source), "split": split,
                "index": index, "row_id": rid}
        prov.update({c: raw.get(c) for c in ("code_file", "test_file", "repo", "instance_id")
                     if c in raw})
        candidates.append(_row(code, test, module, task, index, prov, filters))
    return _finish(candidates, report, limit, max_tokens, tokenizer, seed)


def module_name(path: str) -> str | None:
    """The dotted module a repository file defines: "src/pkg/mod.py" -> "pkg.mod",
    "lib/pkg/sub/__init__.py" -> "pkg.sub", "pkg/mod.py" -> "pkg.mod". A leading src/ or lib/
    folder is a source root, not a package. None when `path` is not a .py file or a part of it
    is not a Python identifier."""
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or not parts[-1].endswith(".py"):
        return None
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts.pop()
    if len(parts) > 1 and parts[0] in ("src", "lib"):
        parts.pop(0)
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts)


def write_dataset(rows: Sequence[Row], out_dir: str | Path, *,
                  reports: Sequence[LoadReport] = ()) -> Path:
    """Write `rows` as a tracetune dataset directory at `out_dir` and return its path.

    The layout is `tracetune.datasets.build`'s (rows/{kind}.jsonl, formats/sft.*.jsonl,
    hf/{kind}/, manifest.json), so `tracetune train` and `load_manifest` read it as they read a
    mined dataset. The manifest: {"schema_version", "created_at", "sources": [each report's
    `to_dict()`], "config": {"loader": "tracetune.testgen.loaders"}, "counts": {kind: rows},
    "dropped": {filter: rows, summed over the reports}, "dropped_examples"}. The directory
    appears whole or not at all.

    Raises TracetuneError when there is no row, or `out_dir` is a file or a non-empty
    directory."""
    from tracetune.datasets import build
    from tracetune.staging import check_output_dir

    out = Path(out_dir)
    if not rows:
        raise TracetuneError("no rows to write; nothing written")
    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise TracetuneError(f"{out} exists and is not empty; choose another output directory")
    by_kind: dict[str, list[Row]] = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r)
    dropped: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for rep in reports:
        for k, v in rep.dropped.items():
            dropped[k] = dropped.get(k, 0) + v
        for k, v in rep.dropped_examples.items():
            examples.setdefault(k, []).extend(f"{rep.dataset} {e}" for e in v)
    return build.write_dataset(out, by_kind, {
        "sources": [rep.to_dict() for rep in reports], "config": {"loader": __name__},
        "dropped": dropped, "dropped_examples": {k: v[:5] for k, v in examples.items()},
    }, prefix="testgen-data")


# --- rows and filters -------------------------------------------------------------------------


def _row(code: str, test: str, module: str, task: str, index: int, provenance: dict,
         filters: dict) -> Row:
    prompt = [{"role": "user", "content": render(code, module=module)}]
    completion = {"role": "assistant", "content": test}
    # "attempt": the dataset formats (build._formats, alpaca metadata) read it; these rows are
    # not tracetune attempts.
    prov = {**provenance, "task": task, "step": STEP, "module": module, "filters": filters,
            "attempt": None}
    return Row(id=row_id("sft", prompt, completion), kind="sft", step=STEP, task=task, tiers=[],
               prompt=prompt, completion=completion, code=test, provenance=prov)


def _filters(report: LoadReport, *, r1_correctness: bool, dedup: str, limit: int | None,
             max_tokens: int | None, tokenizer: Tokenizer | None, seed: int) -> dict:
    """The filter settings, recorded in the report and in every row's provenance."""
    settings = {"r1_correctness": r1_correctness, "dedup": dedup, "max_tokens": max_tokens,
                "tokenizer": _tokenizer_name(tokenizer) if max_tokens is not None else None,
                "limit": limit, "seed": seed}
    report.settings = settings
    return settings


def _finish(rows: list[Row], report: LoadReport, limit: int | None, max_tokens: int | None,
            tokenizer: Tokenizer | None, seed: int) -> Loaded:
    if max_tokens is not None:
        count = _token_counter(tokenizer)
        kept = []
        for r in rows:
            if count(r.prompt + [r.completion]) > max_tokens:
                report.drop("too_long", r.provenance["index"], r.task)
            else:
                kept.append(r)
        rows = kept
    if limit is not None and limit < len(rows):
        chosen = set(random.Random(seed).sample(range(len(rows)), limit))
        for i, r in enumerate(rows):
            if i not in chosen:
                report.drop("limit", r.provenance["index"], r.task)
        rows = [r for i, r in enumerate(rows) if i in chosen]
    report.kept = len(rows)
    report.dropped = {k: report.dropped[k] for k in FILTERS if k in report.dropped}
    report.dropped_examples = {k: report.dropped_examples[k] for k in FILTERS
                               if k in report.dropped_examples}
    log.info("%s", report.summary())
    return Loaded(rows, report)


def _check_settings(limit: int | None, max_tokens: int | None,
                    tokenizer: Tokenizer | None) -> None:
    if limit is not None and limit < 0:
        raise TracetuneError(f"limit must be 0 or more rows, not {limit}")
    if max_tokens is not None:
        if tokenizer is None:
            raise TracetuneError("max_tokens needs a tokenizer to measure the rows with")
        if max_tokens < 1:
            raise TracetuneError(f"max_tokens must be at least 1, not {max_tokens}")


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _truthy(value: object) -> bool:
    """r1_correctness: the card stores "True" / "False" strings; older copies, booleans."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


def _tokenizer_name(tokenizer: Tokenizer) -> str:
    if isinstance(tokenizer, str):
        return tokenizer
    return (getattr(tokenizer, "name_or_path", None) or getattr(tokenizer, "__name__", None)
            or type(tokenizer).__name__)


def _token_counter(tokenizer: Tokenizer) -> Callable[[list[dict]], int]:
    """count(messages) -> tokens of prompt + completion.

    A model spec string: `tracetune mine`'s counter (the model's tokenizer, chat template
    applied). An object with a chat template (a Hugging Face tokenizer): the chat-templated
    messages, tokenized without special tokens, as `tracetune mine` measures. Any other callable
    (a Hugging Face tokenizer without a chat template too): called on the messages' contents
    joined by newlines; it returns token ids (a list, or a mapping with "input_ids") or a
    count."""
    if isinstance(tokenizer, str):
        from tracetune.datasets.build import _token_counter as spec_counter

        return spec_counter(tokenizer)
    if getattr(tokenizer, "chat_template", None) and hasattr(tokenizer, "apply_chat_template"):
        def templated(messages: list[dict]) -> int:
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        return templated
    if not callable(tokenizer):
        raise TracetuneError(f"tokenizer {tokenizer!r} is neither a tokenizer, a callable nor "
                             "a model spec")
    hf = hasattr(tokenizer, "apply_chat_template")

    def plain(messages: list[dict]) -> int:
        text = "\n".join(m["content"] for m in messages)
        out = tokenizer(text, add_special_tokens=False) if hf else tokenizer(text)
        if isinstance(out, int):
            return out
        if hasattr(out, "keys") and "input_ids" in out:
            out = out["input_ids"]
        return len(out)

    return plain


# --- sources ----------------------------------------------------------------------------------


class _Table:
    """One split of a source: its column names and its rows (dicts of the asked columns)."""

    def __init__(self, name: str, columns: list[str],
                 rows: Callable[[list[str]], Iterator[dict]]) -> None:
        self.name, self.columns, self._rows = name, columns, rows

    def rows(self, columns: list[str]) -> Iterator[dict]:
        return self._rows([c for c in dict.fromkeys(columns) if c in self.columns])


def _require(table: _Table, label: str, required: list[str | tuple[str, ...]]) -> None:
    """Raise MissingColumnError naming every required column (or alternatives) not there."""
    missing = []
    for want in required:
        names = (want,) if isinstance(want, str) else want
        if not any(n in table.columns for n in names):
            missing.append(" or ".join(repr(n) for n in names))
    if missing:
        raise MissingColumnError(
            f"{label} dataset {table.name} has no column {', '.join(missing)} "
            f"(its columns: {', '.join(table.columns) or 'none'})")


def _open(source: str | Path, split: str, label: str) -> _Table:
    """The split `split` of `source` (a file, a directory or a hub dataset id)."""
    path = Path(source)
    if path.is_file():
        _check_split_name(path, split)
        return _files([path], str(source))
    if path.is_dir():
        return _directory(path, split)
    if isinstance(source, str) and _HUB_ID.match(source):
        return _hub(source, split, label)
    raise TracetuneError(f"{label} source {source}: no such file or directory (nor a hub "
                         "dataset id such as owner/name)")


def _split_of_name(name: str) -> str | None:
    """The split a data file's name declares: "train.jsonl", "dev-00000-of-00001.parquet"."""
    stem = name.lower()
    for s in _SPLIT_NAMES:
        if stem == s or (stem.startswith(s) and stem[len(s)] in "-_."):
            return s
    return None


def _check_split_name(path: Path, split: str) -> None:
    named = _split_of_name(path.name)
    if named is not None and named != split:
        raise TracetuneError(f"{path} holds the {named} split, not {split}; pass split="
                             f"{named!r} or the {split} file")


def _directory(path: Path, split: str) -> _Table:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # any failure is the dataset's
            raise TracetuneError(f"cannot load the dataset saved at {path}: {exc}") from exc
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise TracetuneError(f"{path} has no split {split!r} "
                                     f"(its splits: {', '.join(loaded)})")
            loaded = loaded[split]
        return _hf_table(loaded, str(path))
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _FILE_KINDS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise TracetuneError(f"{path} holds no .jsonl, .json or .parquet file")
    named = {p: _split_of_name(p.name) for p in files}
    mine = [p for p in files if named[p] == split]
    if not mine:
        splits = sorted({s for s in named.values() if s})
        if splits:
            raise TracetuneError(f"{path} has no {split} files (its files hold the splits "
                                 f"{', '.join(splits)})")
        mine = files  # no file is named by a split: they are all the split asked for
    return _files(mine, str(path))


def _files(paths: list[Path], name: str) -> _Table:
    columns = _file_columns(paths[0])

    def rows(cols: list[str]) -> Iterator[dict]:
        for p in paths:
            kind = _FILE_KINDS[p.suffix]
            if kind == "parquet":
                import pyarrow.parquet as pq

                f = pq.ParquetFile(p)
                present = [c for c in cols if c in f.schema_arrow.names]
                for batch in f.iter_batches(columns=present, batch_size=1024):
                    yield from batch.to_pylist()
            else:
                for obj in _json_objects(p, kind):
                    yield {c: obj.get(c) for c in cols}

    return _Table(name, columns, rows)


def _file_columns(path: Path) -> list[str]:
    kind = _FILE_KINDS[path.suffix]
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several kinds
            raise TracetuneError(f"cannot read {path} as parquet: {exc}") from exc
    first = next(_json_objects(path, kind), None)
    return list(first) if first else []


def _json_objects(path: Path, kind: str) -> Iterator[dict]:
    """The objects of a JSON lines file, or of a .json file holding a list of objects (or an
    object with one list of them, or JSON lines). Raises TracetuneError naming the file (and
    the line) for what is not JSON objects."""
    if kind == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            data = None  # JSON lines in a .json file
        except (OSError, UnicodeDecodeError) as exc:
            raise TracetuneError(f"cannot read {path}: {exc}") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else [data]
        if isinstance(data, list):
            for n, obj in enumerate(data):
                if not isinstance(obj, dict):
                    raise TracetuneError(f"{path}: item {n} is not a JSON object")
                yield obj
            return
    try:
        with open(path, encoding="utf-8") as f:
            yield from _json_lines(path, f)
    except OSError as exc:
        raise TracetuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TracetuneError(f"{path} is not UTF-8 text ({exc.reason})") from None


def _json_lines(path: Path, lines) -> Iterator[dict]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TracetuneError(f"{path} line {n} is not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise TracetuneError(f"{path} line {n} is not a JSON object")
        yield obj


def _hub(source: str, split: str, label: str) -> _Table:
    """A hub dataset's split, through `datasets.load_dataset` (downloads it once, then reads
    the local cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as exc:  # network, no dataset, no split
        raise TracetuneError(f"cannot load {label} split {split!r} of hub dataset {source}: "
                             f"{exc}") from exc
    return _hf_table(ds, source)


def _hf_table(ds, name: str) -> _Table:
    def rows(cols: list[str]) -> Iterator[dict]:
        yield from ds.select_columns(cols)

    return _Table(name, list(ds.column_names), rows)
