"""`tracetune mine`: runs -> one dataset directory, filtered, in every format, with a manifest.

DATASET_DIR/
  manifest.json        schema version, sources, settings, row counts, what each filter dropped
  rows/{sft,dpo,fix}.jsonl               canonical rows (`Row.to_dict()`, tracetune.datasets.rows)
  formats/sft.messages.jsonl             {"messages": [...]}: TRL chat, Together SFT (seed 002)
  formats/sft.prompt_completion.jsonl    {"prompt": [...], "completion": [...]}: TRL, loss on
                                         the completion only
  formats/sft.alpaca.jsonl               {"instruction", "input", "output", "metadata"} (seed 000)
  formats/dpo.trl.jsonl                  {"prompt", "chosen", "rejected"} (TRL DPOTrainer)
  formats/dpo.together.jsonl             {"input": {"messages"}, "preferred_output",
                                         "non_preferred_output"} (seed 002)
  hf/{sft,dpo,fix}/                      the same rows as HF `datasets` (save_to_disk)
fix rows go to the SFT formats too, marked in metadata: they are SFT rows with a longer prompt.
The names are the constants below (MANIFEST, ROWS_DIR, FORMATS_DIR, HF_DIR, SFT_*, DPO_*);
readers use them, or `load_manifest` / `format_path`, rather than spelling the names again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tracetune.datasets.mine import (DEFAULT_TIERS, TIERS, MineReport, code_hash, dpo_rows,
                                     fix_rows, is_oracle, load_attempts, normalize_code,
                                     sft_rows, unfiltered_rows)
from tracetune.datasets.rows import KINDS, SCHEMA_VERSION, Row
from tracetune.errors import TracetuneError
from tracetune.staging import staging_dir
from tracetune.tasks.splits import in_train

# The dataset directory's layout (module docstring).
MANIFEST = "manifest.json"
ROWS_DIR = "rows"
FORMATS_DIR = "formats"
HF_DIR = "hf"
SFT_MESSAGES = "sft.messages.jsonl"
SFT_PROMPT_COMPLETION = "sft.prompt_completion.jsonl"
SFT_ALPACA = "sft.alpaca.jsonl"
DPO_TRL = "dpo.trl.jsonl"
DPO_TOGETHER = "dpo.together.jsonl"


def rows_path(dataset: Path, kind: str) -> Path:
    """Where a dataset keeps its canonical rows of one kind (sft, dpo, fix)."""
    return Path(dataset) / ROWS_DIR / f"{kind}.jsonl"


def format_path(dataset: Path, name: str) -> Path:
    """Where a dataset keeps one training format (name: SFT_MESSAGES, DPO_TRL, ...)."""
    return Path(dataset) / FORMATS_DIR / name


@dataclass(frozen=True)
class MineConfig:
    """What to mine and how to filter it."""

    kinds: tuple[str, ...] = ("sft",)
    """Row kinds: sft, dpo, fix."""
    tiers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per step, the tiers an SFT row's attempt must all satisfy; a step not listed is not
    mined (empty: the miner's defaults, datasets.mine.DEFAULT_TIERS)."""
    train_pct: int | None = None
    """Tasks with md5(id) % 100 < train_pct are train tasks; only they are mined. None: each
    run's own split (its --train-pct, else its suite's train share: 50, bugs 70)."""
    allow_heldout: bool = False
    """Mine held-out tasks too (refused by default: it leaks the evaluation)."""
    max_seq_len: int = 1024
    """Longest prompt + completion in tokens of `tokenizer`."""
    tokenizer: str | None = "embedded"
    """Model whose tokenizer measures length (embedded, a .gguf, an HF name/dir); None: skip."""
    leakage_suites: tuple[str, ...] = ("humaneval",)
    """Evaluation suites no row may contain (exact or normalized matches)."""
    max_dpo_pairs_per_task: int = 8
    """Cap on DPO pairs from one task and step."""
    dpo_teacher: str | None = None
    """repair steps: "oracle" supplies the preferred message at a bad step's prefix when no
    other rollout has a good one there."""
    unfiltered: int = 0
    """Control data set: this many SFT rows drawn at random from every first attempt, passing or
    not, ignoring the tiers (held-out, leakage and length filters still apply). 0: off."""
    seed: int = 0
    """Seed of the unfiltered draw."""

    def validate(self) -> None:
        for k in self.kinds:
            if k not in KINDS:
                raise TracetuneError(f"unknown row kind {k!r} ({', '.join(KINDS)})")
        for step, tiers in self.tiers.items():
            for t in tiers:
                if t not in TIERS:
                    raise TracetuneError(f"unknown tier {t!r} for step {step} "
                                         f"({', '.join(TIERS)})")
        if self.max_seq_len < 16:
            raise TracetuneError("max_seq_len must be at least 16")
        if self.max_dpo_pairs_per_task < 1:
            raise TracetuneError("max_dpo_pairs_per_task must be at least 1")
        if self.unfiltered < 0:
            raise TracetuneError("unfiltered must be 0 (off) or a number of rows")
        if self.train_pct is not None and not 0 <= self.train_pct <= 100:
            raise TracetuneError(f"train_pct must be within 0..100, not {self.train_pct}")
        if self.dpo_teacher is not None and not is_oracle(self.dpo_teacher):
            raise TracetuneError(f"dpo_teacher {self.dpo_teacher!r}: only the oracle can "
                                 "relabel steps offline")
        if self.tokenizer is not None:
            from tracetune.models.resolve import require_weights

            try:
                require_weights(self.tokenizer)
            except TracetuneError as exc:
                raise TracetuneError(f"tokenizer: {exc}") from None

    def resolved(self) -> MineConfig:
        """The config as mined: empty tiers replaced by the defaults."""
        import dataclasses

        return self if self.tiers else dataclasses.replace(self, tiers=dict(DEFAULT_TIERS))


def mine(runs: list[Path], out: Path, config: MineConfig) -> MineReport:
    """Mine `runs` into `out`; writes nothing unless every row survives to a complete dataset.

    Raises TracetuneError for an invalid config, an `out` that exists and is not empty, a run
    with no store or no finished episode, too few rows for `unfiltered`, or no row left after
    the filters."""
    from tracetune.staging import check_output_dir

    config.validate()
    config = config.resolved()
    check_output_dir(out)
    if out.exists() and any(out.iterdir()):
        raise TracetuneError(f"{out} exists and is not empty; choose another --out")
    attempts = [a for run in runs for a in load_attempts(run)]
    report = MineReport()
    # Passing answers cut at max_tokens are never mined (datasets.mine.complete): say how many.
    cut = [m for m in attempts if m.attempt.passed and m.attempt.finish_reason == "length"]
    if cut:
        report.dropped["truncated"] = len(cut)
    pct = {m.episode.run_id: config.train_pct if config.train_pct is not None
           else m.episode.train_pct for m in attempts}
    suites = {m.episode.run_id: m.episode.suite for m in attempts}
    if config.unfiltered:
        import random

        rows = _filter(unfiltered_rows(attempts), config, report, pct, suites)
        if len(rows) < config.unfiltered:
            raise TracetuneError(f"only {len(rows)} unfiltered rows exist; "
                                 f"{config.unfiltered} were asked for")
        report.rows = {"sft": random.Random(config.seed).sample(rows, config.unfiltered)}
        _write(out, runs, config, report)
        return report
    rows: list[Row] = []
    if "sft" in config.kinds:
        rows += sft_rows(attempts, config.tiers)
    if "fix" in config.kinds:
        rows += fix_rows(attempts)
    if "dpo" in config.kinds:
        rows += dpo_rows(attempts, config.max_dpo_pairs_per_task, config.dpo_teacher)
    rows = _filter(rows, config, report, pct, suites)
    report.rows = {k: [r for r in rows if r.kind == k] for k in config.kinds}
    if not rows:
        raise TracetuneError("no rows left after filtering ("
                             + ", ".join(f"{k}: {v}" for k, v in report.dropped.items())
                             + "); nothing written")
    _write(out, runs, config, report)
    return report


def _filter(rows: list[Row], config: MineConfig, report: MineReport,
            train_pct: dict[str, int], suites: dict[str, str]) -> list[Row]:
    kept = []
    for r in rows:  # split: held-out tasks never reach training data
        if config.allow_heldout or in_train(r.task, train_pct[r.provenance["run_id"]]):
            kept.append(r)
        else:
            report.drop("held_out_task", r)
    rows, kept, seen = kept, [], set()
    for r in rows:  # dedup: the same program (normalized) for the same prompt, task, step, kind
        key = (r.kind, r.task, r.step, code_hash(r.code),
               code_hash(r.rejected["content"]) if r.rejected is not None else "",
               hashlib.sha1(json.dumps(r.prompt, sort_keys=True).encode()).hexdigest())
        if key in seen:
            report.drop("duplicate", r)
        else:
            seen.add(key)
            kept.append(r)
    if not config.allow_heldout:
        # A train task filed twice (under another id on the held-out side, or reworded only in
        # whitespace) would carry the held-out task's answer into training: check every row
        # against its own run's held-out tasks, by default, not only against named suites.
        rows, kept = kept, []
        twins = {run: _leak_index_of(_held_out(suites[run], train_pct[run]))
                 for run in {r.provenance["run_id"] for r in rows}}
        for r in rows:
            if _leaks(r, twins[r.provenance["run_id"]]):
                report.drop("leakage_held_out_twin", r)
            else:
                kept.append(r)
    if config.leakage_suites:
        rows, kept = kept, []
        leaks = _leak_index(config.leakage_suites)
        for r in rows:
            if _leaks(r, leaks):
                report.drop("leakage", r)
            else:
                kept.append(r)
    if config.tokenizer:
        rows, kept = kept, []
        count = _token_counter(config.tokenizer)
        for r in rows:
            # A pair is as long as its longer side.
            target = max(r.targets, key=lambda m: len(m["content"]))
            if count(r.prompt + [target]) > config.max_seq_len:
                report.drop("too_long", r)
            else:
                kept.append(r)
    return kept


def _leak_index(suites: tuple[str, ...]) -> dict[str, set[str]]:
    from tracetune.tasks import load_suite

    return _leak_index_of([t for name in suites for t in load_suite(name).tasks])


def _leak_index_of(tasks) -> dict[str, set[str]]:
    """{"code": normalized reference programs, "text": whitespace-normalized specs} of tasks."""
    index: dict[str, set[str]] = {"code": set(), "text": set()}
    for t in tasks:
        if t.reference:
            index["code"].add(normalize_code(t.reference))
        index["text"].add(" ".join(t.spec.split()))
    return index


def _held_out(suite: str, train_pct: int) -> list:
    """The held-out tasks of a run's suite under the run's split. Raises TracetuneError (one
    line) when the suite no longer loads: mining cannot then prove no row leaks one."""
    from tracetune.tasks import load_suite, split_suffix
    from tracetune.tasks.splits import in_train

    try:
        tasks = load_suite(split_suffix(suite)[0]).tasks
    except TracetuneError as exc:
        raise TracetuneError(f"cannot check rows against the held-out tasks of suite {suite!r} "
                             f"(it does not load: {exc}); run from where the suite path "
                             "resolves, or mine with --allow-heldout to skip the split") from None
    return [t for t in tasks if not in_train(t.id, train_pct)]


def _leaks(row: Row, index: dict[str, set[str]]) -> bool:
    if normalize_code(row.code) in index["code"]:
        return True
    prompt = " ".join(" ".join(m["content"] for m in row.prompt).split())
    return any(spec in prompt for spec in index["text"] if len(spec) > 40)


def _token_counter(spec: str):
    """A model spec with a tokenizer (embedded, gguf:PATH, hf:NAME_OR_DIR, or a bare hub name,
    directory or .gguf path) -> count(messages) = tokens of the chat-templated messages.
    Raises TracetuneError (one line) for a spec without a tokenizer (openai:, replay:, oracle)
    or one that does not load."""
    from tracetune.models.resolve import hf_source, weight_options

    try:
        source = hf_source(spec)
    except TracetuneError as exc:
        raise TracetuneError(f"the tokenizer that measures rows: {exc}") from None
    from tracetune.models.hf import check_reachable

    check_reachable(source)
    from transformers import AutoTokenizer  # after the spec checks: a bad spec fails at once

    try:
        tok = AutoTokenizer.from_pretrained(
            source, trust_remote_code=weight_options(spec).trust_remote_code)
    except OSError as exc:
        raise TracetuneError(f"cannot load the tokenizer of {spec!r}: {exc}") from exc

    def count(messages: list[dict]) -> int:
        text = tok.apply_chat_template(messages, tokenize=False)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count


def _formats(rows: dict[str, list[Row]]) -> dict[str, list[dict]]:
    sft = rows.get("sft", []) + rows.get("fix", [])
    out = {
        SFT_MESSAGES: [{"messages": r.prompt + [r.completion],
                        "metadata": {"kind": r.kind, **r.provenance}} for r in sft],
        SFT_PROMPT_COMPLETION: [{"prompt": r.prompt, "completion": [r.completion]} for r in sft],
        SFT_ALPACA: [{"instruction": "\n\n".join(m["content"] for m in r.prompt
                                                 if m["role"] == "user"),
                      "input": "", "output": r.completion["content"],
                      "metadata": {"task": r.task, "step": r.step,
                                   "original_attempt": r.provenance["attempt"],
                                   "tiers": r.tiers, "kind": r.kind}}
                     for r in sft],
    }
    dpo = rows.get("dpo", [])
    if dpo:
        out[DPO_TRL] = [{"prompt": r.prompt, "chosen": [r.chosen], "rejected": [r.rejected]}
                        for r in dpo]
        out[DPO_TOGETHER] = [{"input": {"messages": r.prompt}, "preferred_output": [r.chosen],
                              "non_preferred_output": [r.rejected]} for r in dpo]
    return {name: items for name, items in out.items() if items}


def _write(out: Path, runs: list[Path], config: MineConfig, report: MineReport) -> None:
    write_dataset(out, report.rows, {
        "sources": [str(Path(r).resolve()) for r in runs],
        "config": {**asdict(config), "tiers": {k: list(v) for k, v in config.tiers.items()}},
        "dropped": report.dropped, "dropped_examples": report.dropped_examples,
    }, prefix="mine")


def write_dataset(out: Path, rows: dict[str, list[Row]], manifest: dict, *,
                  prefix: str = "data") -> Path:
    """Write `rows` (kind -> rows) as a dataset directory at `out` (the layout of the module
    docstring: rows/{kind}.jsonl, formats/, hf/{kind}/, manifest.json) and return `out`.

    `manifest` holds the manifest's "sources", "config", "dropped" and "dropped_examples";
    "schema_version", "created_at" and "counts" are filled in here. The directory is built in
    a staging directory beside `out` (named after `prefix`) and appears whole or not at all;
    the caller checks beforehand that `out` is absent or empty."""
    import datasets

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out.parent, prefix)
    try:
        for sub in (ROWS_DIR, FORMATS_DIR, HF_DIR):
            (tmp / sub).mkdir()
        for kind, items in rows.items():
            dicts = [r.to_dict() for r in items]
            _jsonl(rows_path(tmp, kind), dicts)
            if dicts:
                # Arrow wants one type per column: nested messages and provenance go as JSON text.
                flat = [{**d, "prompt": json.dumps(d["prompt"]),
                         "provenance": json.dumps(d["provenance"]),
                         **{k: json.dumps(d[k]) for k in ("completion", "chosen", "rejected")
                            if k in d}} for d in dicts]
                datasets.Dataset.from_list(flat).save_to_disk(str(tmp / HF_DIR / kind))
        for name, items in _formats(rows).items():
            _jsonl(format_path(tmp, name), items)
        full = {"sources": [], "config": {}, "dropped": {}, "dropped_examples": {}, **manifest,
                "schema_version": SCHEMA_VERSION, "created_at": time.time(),
                "counts": {k: len(v) for k, v in rows.items()}}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True))
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        os.replace(tmp, out)  # the dataset appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _jsonl(path: Path, items: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")


def read_rows(path: Path) -> list[dict]:
    """The JSON objects of a JSONL file, one per line (row i is line i + 1).

    Raises TracetuneError (one line naming the file and the line, and saying that mining again
    rewrites it) for a file that cannot be read, or a line that is empty, not UTF-8, not valid
    JSON or not a JSON object."""
    again = "mine the dataset again with `tracetune mine`"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TracetuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    rows = []
    # bytes.splitlines: only \n and \r end a line (str.splitlines would also cut a row at a
    # U+2028 inside a JSON string, which json.dumps(ensure_ascii=False) writes raw).
    for n, line in enumerate(data.splitlines(), 1):
        try:
            row = json.loads(line.decode("utf-8"))
            problem = None if isinstance(row, dict) else "not a JSON object"
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 text (byte {exc.start + 1} of the line)"
        except json.JSONDecodeError as exc:
            problem = "an empty line" if not line.strip() else \
                f"not valid JSON ({exc.msg} at column {exc.colno})"
        if problem:
            raise TracetuneError(f"{path} line {n} is damaged: {problem}; {again}")
        rows.append(row)
    return rows


def load_manifest(dataset: Path) -> dict:
    """A dataset's manifest (module docstring), as a dict.

    Raises TracetuneError (one line naming the file) when `dataset` has no manifest, or one
    that cannot be read, is not UTF-8, not valid JSON (the line and column say where), not a
    JSON object, or of another dataset schema version."""
    path = Path(dataset) / MANIFEST
    if not path.is_file():
        raise TracetuneError(f"{dataset} is not a tracetune dataset (no {MANIFEST})")
    again = "mine the dataset again with `tracetune mine`"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TracetuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TracetuneError(f"{path} is damaged: not UTF-8 text (byte {exc.start + 1}); "
                             f"{again}") from None
    except json.JSONDecodeError as exc:
        raise TracetuneError(f"{path} is damaged: not valid JSON ({exc.msg} at line "
                             f"{exc.lineno} column {exc.colno}); {again}") from None
    if not isinstance(manifest, dict):
        raise TracetuneError(f"{path} is damaged: its top level is not a JSON object; "
                             f"{again}")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise TracetuneError(f"{dataset} has dataset schema {manifest.get('schema_version')}; "
                             f"this tracetune reads {SCHEMA_VERSION}")
    return manifest
